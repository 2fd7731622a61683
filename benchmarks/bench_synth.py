"""Synthetic city generation: speed (logs/s, frames/s, one process vs a process pool) and data quality
(nuPlan scenarios per log, share of the log the ego is stopped).

Generation only (simulation + assembly into ``LogData``), no file writing, so that the ratio measures
the parallel speed-up of the generator itself. Usage: ``python benchmarks/bench_synth.py [--logs N]``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from simulation.datasets.scenes import extract_scenarios
from simulation.datasets.synthetic.generator import LogSpec, generate_log, make_town, plan_logs
from simulation.types import StateIndex


def _one(spec: LogSpec) -> tuple[int, float, Counter, float]:
    """Frames, CPU seconds, scenario types and stopped share of one log."""
    start = time.process_time()
    log, _ = generate_log(spec)
    seconds = time.process_time() - start
    kinds = Counter(s.scenario_type for s in extract_scenarios(log))
    stopped = float(np.mean(log.ego_states[:, StateIndex.VX] < 0.5))
    return log.num_frames, seconds, kinds, stopped


def _run(specs: list[LogSpec], workers: int) -> tuple[float, list[tuple[int, float, Counter, float]]]:
    start = time.perf_counter()
    if workers == 1:
        out = [_one(s) for s in specs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = list(pool.map(_one, specs))
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=6)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--towns", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    args = parser.parse_args()
    specs = plan_logs(args.logs, args.towns, seed=0, duration_s=args.duration)
    for t in {s.town for s in specs}:
        make_town(0, t)  # build the towns once before timing (the pool's workers inherit them by fork)
    t1, runs = _run(specs, 1)
    tp, _ = _run(specs, args.workers)
    frames = sum(r[0] for r in runs)
    print(f"synthetic city: {args.logs} logs x {args.duration:.0f} s ({frames} frames at 20 Hz)")
    print(f"  1 process    : {t1:7.2f} s  {args.logs / t1:6.2f} logs/s  {frames / t1:8.0f} frames/s")
    print(f"  {args.workers} processes  : {tp:7.2f} s  {args.logs / tp:6.2f} logs/s  {frames / tp:8.0f} frames/s")
    print(f"  speed-up of the pool over one process: {t1 / tp:.2f}x ({os.cpu_count()} CPUs visible)")
    print("  per log: CPU s, nuPlan scenarios, share of frames with the ego stopped (< 0.5 m/s)")
    total: Counter = Counter()
    for spec, (_, sec, kinds, stopped) in zip(specs, runs):
        total.update(kinds)
        print(f"    {spec.name:<32} {sec:6.1f} s  {sum(kinds.values()):3d} scenarios  stopped {stopped:.2f}")
    print(f"  scenarios per type: {dict(sorted(total.items()))}")


if __name__ == "__main__":
    main()
