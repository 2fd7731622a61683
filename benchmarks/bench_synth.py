"""Synthetic city generation speed: logs/s and frames/s, one process vs a process pool.

Generation only (simulation + assembly into ``LogData``), no file writing, so that the ratio measures
the parallel speed-up of the generator itself. Usage: ``python benchmarks/bench_synth.py [--logs N]``.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

from simulation.datasets.synthetic.generator import LogSpec, generate_log, make_town, plan_logs


def _frames(spec: LogSpec) -> int:
    log, _ = generate_log(spec)
    return log.num_frames


def _run(specs: list[LogSpec], workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    if workers == 1:
        frames = sum(_frames(s) for s in specs)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            frames = sum(pool.map(_frames, specs))
    return time.perf_counter() - start, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=6)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    args = parser.parse_args()
    specs = plan_logs(args.logs, 2, seed=0, duration_s=args.duration)
    for t in {s.town for s in specs}:
        make_town(0, t)  # build the towns once before timing (the pool's workers inherit them by fork)
    t1, frames = _run(specs, 1)
    tp, _ = _run(specs, args.workers)
    print(f"synthetic city: {args.logs} logs x {args.duration:.0f} s ({frames} frames at 20 Hz)")
    print(f"  1 process    : {t1:7.2f} s  {args.logs / t1:6.2f} logs/s  {frames / t1:8.0f} frames/s")
    print(f"  {args.workers} processes  : {tp:7.2f} s  {args.logs / tp:6.2f} logs/s  {frames / tp:8.0f} frames/s")
    print(f"  speed-up of the pool over one process: {t1 / tp:.2f}x ({os.cpu_count()} CPUs visible)")


if __name__ == "__main__":
    main()
