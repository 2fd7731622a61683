"""RL reward speed: candidates scored per second by :class:`rewards.composite.RuleReward` in the calling process
(``num_workers=0``, the baseline) and in a process pool (``--workers``, default 2), on the same batch, in the same
process. Prints both rates and their ratio, and checks that both give the same rewards. Then the torch backend
(``backend="torch"``, the whole batch in one call, one CPU thread unless ``--threads``): its scenes are collated on
the warm-up call and kept (``RuleReward``'s scene cache), so the timed calls pay only for the candidates; the line
also gives a first call's rate (collation included) and the largest reward difference to numpy; the last line compares
the numpy and torch backends in process CPU time (calls in alternation), which a loaded machine leaves intact.

Scenes: ``bench_scoring.py``'s synthetic four-lane road with a junction and 40 agents (one metric cache each, v1);
candidates are kinematic rollouts with random accelerations, yaw rates and lateral offsets, as local poses.

    python benchmarks/bench_rl_reward.py [--scenes 32] [--candidates 16] [--workers 2] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scoring import make_scene, rollout  # noqa: E402

from rewards.composite import RuleReward  # noqa: E402
from simulation.metric_cache import MetricCache  # noqa: E402


def make_batch(scenes: int, candidates: int, seed: int) -> tuple[list[MetricCache], np.ndarray]:
    """``scenes`` metric caches and plans ``(scenes, candidates, 8, 3)`` in each scene's local frame."""
    rng = np.random.default_rng(seed)
    caches = [make_scene(rng) for _ in range(scenes)]
    plans = np.empty((scenes, candidates, 8, 3))
    for b, cache in enumerate(caches):
        params = np.stack(
            [rng.uniform(-3, 2, candidates), rng.uniform(-0.15, 0.15, candidates), rng.uniform(-3, 3, candidates),
             np.zeros(candidates)], -1)  # fmt: skip
        poses = rollout(params)[:, 5::5, :3]  # 0.5 ... 4.0 s
        poses[..., :2] -= cache.current_state[:2]  # the start pose has heading 0: a translation to the local frame
        plans[b] = poses
    return caches, plans


def rate(reward: RuleReward, caches: list[MetricCache], plans: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """Best candidates-per-second over ``repeats`` calls (after one warm-up call) and the rewards ``(B, N)``."""
    total = reward.score(caches, plans).total  # warm-up: numba kernels, pool start
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        reward.score(caches, plans)
        best = min(best, time.perf_counter() - start)
    return plans.shape[0] * plans.shape[1] / best, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    caches, plans = make_batch(args.scenes, args.candidates, args.seed)
    serial_rate, serial = rate(RuleReward("v1"), caches, plans, args.repeats)
    with RuleReward("v1", num_workers=args.workers) as pooled:
        pool_rate, parallel = rate(pooled, caches, plans, args.repeats)
    print(f"{args.scenes} scenes x {args.candidates} candidates (v1), mean reward {serial.mean():.3f}")
    print(f"num_workers=0: {serial_rate:8.1f} candidates/s")
    print(f"num_workers={args.workers}: {pool_rate:8.1f} candidates/s")
    same = np.array_equal(serial, parallel)
    print(f"ratio (pool / in-process): {pool_rate / serial_rate:.2f}x; identical rewards: {same}")
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    fresh = RuleReward("v1", backend="torch")
    fresh.score(caches, plans)
    first_rate = plans.shape[0] * plans.shape[1] / (time.perf_counter() - start)
    torch_rate, torch_total = rate(fresh, caches, plans, args.repeats)
    diff = float(np.abs(torch_total - serial).max())
    print(f"backend=torch ({args.threads} CPU thread(s), scenes collated once): {torch_rate:8.1f} candidates/s, "
          f"x{torch_rate / serial_rate:.2f} numpy in-process; first call (collation included) {first_rate:.1f}/s; "
          f"max reward difference {diff:.1e}")  # fmt: skip
    numpy_cpu, torch_cpu = cpu_rates(RuleReward("v1"), fresh, caches, plans, args.repeats)
    print(f"in process CPU time (alternating calls): numpy {numpy_cpu:8.1f} candidates/s, torch {torch_cpu:8.1f}/s, "
          f"x{torch_cpu / numpy_cpu:.2f} numpy")  # fmt: skip
    return 0


def cpu_rates(
    numpy_reward: RuleReward, torch_reward: RuleReward, caches: list[MetricCache], plans: np.ndarray, repeats: int
) -> tuple[float, float]:
    """Candidates per CPU second of two in-process rewards (warm), called in alternation ``repeats`` times each."""
    numpy_reward.score(caches, plans)
    spent = [0.0, 0.0]
    for _ in range(repeats):
        for i, reward in enumerate((numpy_reward, torch_reward)):
            start = time.process_time()
            reward.score(caches, plans)
            spent[i] += time.process_time() - start
    n = plans.shape[0] * plans.shape[1] * repeats
    return n / spent[0], n / spent[1]


if __name__ == "__main__":
    raise SystemExit(main())
