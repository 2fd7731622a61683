"""Tracking speed: proposals simulated per second by :func:`simulation.kinematics.simulate_proposals`
(10 Hz interpolation, least-squares reference profiles, 40 LQR + kinematic bicycle steps) for a batch of
B = 1, 15, 64, 256 proposals, against the same code called once per proposal, in the same run.

    python benchmarks/bench_kinematics.py [--repeats 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy

from simulation.kinematics import simulate_proposals  # noqa: E402

BATCHES = (1, 15, 64, 256)


def random_proposals(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A current state at 8 m/s and ``(batch, 8, 3)`` smooth local plans (random speed, curvature, offset)."""
    state = np.zeros(11)
    state[3] = 8.0
    t = np.arange(1, 9) * 0.5
    speed = rng.uniform(0.0, 15.0, (batch, 1))
    curvature = rng.uniform(-0.05, 0.05, (batch, 1))
    heading = curvature * speed * t
    x = speed * t * np.cos(heading / 2.0)
    y = speed * t * np.sin(heading / 2.0) + rng.uniform(-1.0, 1.0, (batch, 1)) * np.minimum(t / 2.0, 1.0)
    return state, np.stack([x, y, heading], -1)


def per_candidate(state: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """The baseline: the same code called once per proposal, ``(B, 41, 11)``."""
    return np.concatenate([simulate_proposals(state, poses[i : i + 1]) for i in range(len(poses))])


def best_time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Fastest of ``repeats`` timings (seconds) of ``fn()``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    simulate_proposals(*random_proposals(rng, 2))  # warm-up
    print(f"{'B':>5} {'batched /s':>12} {'looped /s':>12} {'ratio':>7} {'max |diff|':>11}")
    for batch in BATCHES:
        state, poses = random_proposals(rng, batch)
        batched = best_time(lambda s=state, p=poses: simulate_proposals(s, p), args.repeats)
        looped = best_time(lambda s=state, p=poses: per_candidate(s, p), args.repeats)
        diff = float(np.abs(simulate_proposals(state, poses) - per_candidate(state, poses)).max())
        print(f"{batch:>5} {batch / batched:>12.0f} {batch / looped:>12.0f} {looped / batched:>6.1f}x {diff:>11.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
