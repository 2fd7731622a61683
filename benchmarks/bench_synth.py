"""Synthetic city generation: speed (logs/s, frames/s, one process vs a process pool), the compiled corridor
search and path interpolation of the traffic model against their array formulations, and data quality (nuPlan
scenarios per log, share of the log the ego is stopped).

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
from simulation.datasets.synthetic.paths import PathBank, build_bank, random_route
from simulation.datasets.synthetic.traffic import INF, PROBES, corridor_obstacles
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


def _poses_arrays(bank: PathBank, s: np.ndarray) -> np.ndarray:
    """Baseline: path poses at arc lengths ``s`` ``(N, M)`` as whole-array numpy (one search over the rows'
    concatenated arc lengths, then a gather per quantity), the formulation the compiled interpolation replaced."""
    flat, base = bank._flat_cum()
    q = (np.clip(s, 0.0, bank.cum[:, -1:]) + base[:, None]).ravel()
    i = np.clip(np.searchsorted(flat, q, side="right") - 1, 0, len(flat) - 2)
    lo, hi = flat[i], flat[i + 1]
    w = np.clip((q - lo) / (hi - lo), 0.0, 1.0)
    out = np.empty(s.shape + (3,))
    for c, name in enumerate(("x", "y", "hdg")):
        v = bank._values(name)
        out[..., c] = ((1.0 - w) * v[i] + w * v[i + 1]).reshape(s.shape)
    return out


def _corridor_arrays(bank: PathBank, s, front, radius, owner, boxes, box_owner, probes=PROBES):
    """Baseline: the corridor search as whole-array numpy (every row against every box, then every candidate
    pair against every probe), the formulation the compiled search replaced."""
    n = len(s)
    q = _poses_arrays(bank, s[:, None] + front[:, None] + probes[None, :])
    mid = q[:, len(probes) // 2, :2]
    reach = probes[-1] / 2 + radius + 1.0
    dx, dy = mid[:, 0, None] - boxes[None, :, 0], mid[:, 1, None] - boxes[None, :, 1]
    limit = reach[:, None] + np.hypot(boxes[:, 5], boxes[:, 6])[None, :] / 2
    ii, aa = np.nonzero((dx * dx + dy * dy < limit * limit) & (box_owner[None, :] != owner[:, None]))
    gap, v_out, who = np.full(n, INF), np.zeros(n), np.full(n, -1)
    if len(ii) == 0:
        return gap, v_out, who
    dx = q[ii, :, 0] - boxes[aa, None, 0]
    dy = q[ii, :, 1] - boxes[aa, None, 1]
    c, sn = np.cos(boxes[aa, 2])[:, None], np.sin(boxes[aa, 2])[:, None]
    r = radius[ii][:, None]
    hit = (np.abs(dx * c + dy * sn) < boxes[aa, 5, None] / 2 + r) & (
        np.abs(-dx * sn + dy * c) < boxes[aa, 6, None] / 2 + r
    )
    m = np.where(hit.any(1), hit.argmax(1), len(probes))
    order = np.lexsort((m, ii))
    ii, aa, m = ii[order], aa[order], m[order]
    first = np.concatenate([[True], ii[1:] != ii[:-1]])
    ii, aa, m = ii[first], aa[first], m[first]
    ok = m < len(probes)
    ii, aa, m = ii[ok], aa[ok], m[ok]
    h = q[ii, m, 2]
    gap[ii] = np.maximum(probes[m] - 0.25, 0.0)
    v_out[ii] = np.maximum(boxes[aa, 3] * np.cos(h) + boxes[aa, 4] * np.sin(h), 0.0)
    who[ii] = box_owner[aa]
    return gap, v_out, who


def _bench_corridor(rows: int = 120, boxes_n: int = 250, reps: int = 200) -> None:
    """One traffic step's corridor search (``rows`` vehicles, ``boxes_n`` boxes around them), both ways."""
    town = make_town(0, 0)
    rng = np.random.default_rng(0)
    lanes = sorted(p.fid for p in town.lanes)
    starts = rng.choice(lanes, rows)
    bank = build_bank(town, [random_route(town, int(f), 250.0, rng) for f in starts], {})
    s = rng.uniform(0.0, 0.5, rows) * bank.length
    near = bank.poses(s[:, None])[:, 0, :2]
    centre = near[rng.integers(0, rows, boxes_n)] + rng.normal(0.0, 6.0, (boxes_n, 2))
    boxes = np.column_stack(
        [
            centre,
            rng.uniform(-np.pi, np.pi, boxes_n),
            rng.normal(0.0, 3.0, (boxes_n, 2)),
            rng.uniform(0.6, 12.0, boxes_n),
            rng.uniform(0.6, 2.6, boxes_n),
        ]
    )
    args = (bank, s, np.full(rows, 2.4), np.full(rows, 1.3), np.arange(rows), boxes, rng.integers(-2, rows, boxes_n))
    for a, b in zip(corridor_obstacles(*args), _corridor_arrays(*args)):
        assert np.array_equal(a, b), "compiled corridor search differs from the array formulation"
    timings = {}
    for name, fn in (("compiled", corridor_obstacles), ("arrays", _corridor_arrays)):
        start = time.perf_counter()
        for _ in range(reps):
            fn(*args)
        timings[name] = (time.perf_counter() - start) / reps
    fast, slow = timings["compiled"], timings["arrays"]
    print(f"corridor search ({rows} vehicles, {boxes_n} boxes, {len(PROBES)} probes per step):")
    print(f"  compiled {fast * 1e3:.2f} ms, arrays {slow * 1e3:.2f} ms, {slow / fast:.1f}x (same results)")


def _bench_poses(rows: int = 120, probes: int = 9, reps: int = 2000) -> None:
    """Poses of ``probes`` points ahead of each of ``rows`` vehicles (one corridor search's worth), both ways."""
    town = make_town(0, 0)
    rng = np.random.default_rng(1)
    lanes = sorted(p.fid for p in town.lanes)
    bank = build_bank(town, [random_route(town, int(f), 250.0, rng) for f in rng.choice(lanes, rows)], {})
    s = rng.uniform(-5.0, 1.1, (rows, 1)) * bank.length[:, None] + np.linspace(0.0, 30.0, probes)[None, :]
    assert np.array_equal(bank.poses(s), _poses_arrays(bank, s)), "compiled interpolation differs from the arrays"
    timings = {}
    for name, fn in (("compiled", bank.poses), ("arrays", lambda x: _poses_arrays(bank, x))):
        start = time.perf_counter()
        for _ in range(reps):
            fn(s)
        timings[name] = (time.perf_counter() - start) / reps
    fast, slow = timings["compiled"], timings["arrays"]
    print(f"path poses ({rows} vehicles x {probes} arc lengths, bit-identical):")
    print(f"  compiled {fast * 1e6:.0f} us, arrays {slow * 1e6:.0f} us, {slow / fast:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=6)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--towns", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    args = parser.parse_args()
    _bench_corridor()
    _bench_poses()
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
