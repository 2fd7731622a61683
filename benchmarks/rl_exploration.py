"""RL exploration: how much the generators' rollouts spread, and whether the reward then carries a signal.

For a grid of rollout settings of each generator, on the training scenes of an RL data set (the demo's by default),
it samples ``G`` rollouts per scene and prints, per setting:

- ``spread``: :func:`planners.truncated_policy.exploration_spread`, the mean distance (m) of a sample's 4 s position
  to its group's mean 4 s position (group = the anchor for the truncated planner, the scene for the masked one);
- ``reward``: the mean rule-based reward (PDMS, v1) of the samples;
- ``std``: the mean within-group standard deviation of the reward (what group-normalised advantages feed on);
- ``flat``: the share of groups whose rewards are all equal (no learning signal);
- ``fail``: the share of samples that collide or leave the drivable area;
- ``top-group reward``: the mean reward of the samples of the group the planner itself picks (its top-scored
  anchor; the scene for the masked planner), against the deterministic plan's reward printed after the table;
- ``scene std``, ``flat scenes``: ``std`` and ``flat`` over each scene's samples (what scene-normalised GRPO sees);
- ``failed scenes``: the share of scenes whose every sample fails (a hard failure or reward 0), IGPO's trigger.

Truncated settings: our ``planner`` schedule (2 steps from ``t = 8``) at larger ``eta`` / with a noise floor
(additive or multiplicative), the ``ddv2`` schedule, and a larger start timestep for the anchors (``start_t``).
Masked settings: temperature x top-k.

    python benchmarks/rl_exploration.py [--root outputs/demo] [--scenes 64] [--generator both]

Nothing is written under ``--root`` (the metric caches are read where they are).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy

from planners.checkpoint import load_planner  # noqa: E402
from planners.masked_policy import MaskedDiffusionPolicy  # noqa: E402
from planners.policy import Rollout  # noqa: E402
from planners.truncated_diffusion import TruncatedDiffusionPlanner  # noqa: E402
from planners.truncated_policy import RolloutConfig, exploration_spread  # noqa: E402
from rewards.composite import RuleReward  # noqa: E402
from training.rl_data import RLDataModule, rl_collate  # noqa: E402

CKPT = "train/{name}/lightning_logs/version_0/checkpoints/best.ckpt"

#: (label, RolloutConfig fields, anchor start timestep or None for the planner's own)
TRUNCATED_GRID: list[tuple[str, dict[str, Any], int | None]] = [
    ("planner eta=1 (old default)", {"schedule": "planner", "eta": 1.0}, None),
    ("planner eta=4", {"schedule": "planner", "eta": 4.0}, None),
    ("planner add floor=0.01", {"schedule": "planner", "noise_floor": 0.01}, None),
    ("planner add floor=0.02", {"schedule": "planner", "noise_floor": 0.02}, None),
    ("planner add floor=0.04", {"schedule": "planner", "noise_floor": 0.04}, None),
    ("planner mult floor=0.02", {"schedule": "planner", "noise": "multiplicative", "noise_floor": 0.02}, None),
    ("planner mult floor=0.04", {"schedule": "planner", "noise": "multiplicative", "noise_floor": 0.04}, None),
    ("planner mult floor=0.08", {"schedule": "planner", "noise": "multiplicative", "noise_floor": 0.08}, None),
    ("planner eta=1 start_t=50", {"schedule": "planner"}, 50),
    ("planner eta=1 start_t=200", {"schedule": "planner"}, 200),
    ("ddv2 (mult floor=0.04)", RolloutConfig.ddv2().to_dict(), None),
]

#: (temperature, top_k)
MASKED_GRID: list[tuple[float, int]] = [
    (1.0, 0),
    (1.0, 20),
    (0.7, 0),
    (0.7, 10),
    (0.5, 0),
    (0.5, 10),
    (0.5, 5),
    (0.3, 0),
    (0.3, 5),
    (0.3, 3),
    (0.2, 3),
    (0.1, 0),
]


@dataclass
class Row:
    """One setting's figures (see the module docstring)."""

    label: str
    spread: float
    reward: float
    std: float
    flat: float
    fail: float
    top_reward: float
    scene_std: float
    scene_flat: float
    scene_failed: float
    seconds: float

    def markdown(self) -> str:
        return (
            f"| {self.label} | {self.spread:.3f} | {self.reward:.3f} | {self.std:.3f} | {self.flat:.2f} | "
            f"{self.fail:.2f} | {self.top_reward:.3f} | {self.scene_std:.3f} | {self.scene_flat:.2f} | "
            f"{self.scene_failed:.2f} | {self.seconds:.1f} |"
        )


def group_stats(total: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Mean within-group std of ``total`` ``(B, N)`` (unbiased) and the share of groups whose values are all equal.

    Groups are the (scene, ``groups`` id) pairs with at least two samples.
    """
    stds, flats = [], []
    for b in range(total.shape[0]):
        for g in np.unique(groups[b]):
            values = total[b][groups[b] == g]
            if values.size < 2:
                continue
            stds.append(values.std(ddof=1))
            flats.append(bool(np.ptp(values) == 0.0))
    return float(np.mean(stds)) if stds else 0.0, float(np.mean(flats)) if flats else 0.0


def measure(
    label: str, rollout: Rollout, batch: dict[str, Any], reward: RuleReward, seconds: float, top: np.ndarray
) -> Row:
    """The figures of one rollout ``(B, N)`` of ``batch``'s scenes; ``top`` ``(B,)`` the group id the planner
    itself would pick in each scene (its ``top_reward`` is the mean reward of that group's samples)."""
    plans = rollout.plans.double().numpy()
    scored = reward.score(batch["metric_cache"], plans)
    groups = rollout.groups.numpy()
    std, flat = group_stats(scored.total, groups)
    scene_std, scene_flat = group_stats(scored.total, np.zeros_like(groups))
    failed = (scored.terms["no_at_fault_collisions"] < 1) | (scored.terms["drivable_area_compliance"] < 1)
    spread = exploration_spread(rollout.plans, rollout.groups)
    chosen = groups == top[:, None]
    top_reward = float(scored.total[chosen].mean())
    mean = float(scored.total.mean())
    all_failed = float(((scored.total <= 0.0) | failed).all(-1).mean())  # what triggers IGPO (training.rl_igpo)
    row = (spread, mean, std, flat, float(failed.mean()), top_reward, scene_std, scene_flat, all_failed)
    return Row(label, *row, seconds)


def deterministic_reward(planner: torch.nn.Module, batch: dict[str, Any], reward: RuleReward) -> float:
    """Mean reward of the planner's own (deterministic) plan."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plans = planner(batch["features"]).trajectory[:, None]
    return float(reward.score(batch["metric_cache"], plans.double().numpy()).total.mean())


@contextmanager
def start_timestep(planner: TruncatedDiffusionPlanner, timestep: int | None) -> Iterator[None]:
    """Noise the anchors to ``timestep`` instead of the planner's inference start (the steps stay the planner's:
    the first step goes from ``timestep`` to the planner's next timestep)."""
    if timestep is None:
        yield
        return
    saved = (list(planner.inference_timesteps), list(planner.alpha_pairs), list(planner.scheduler.timesteps))
    steps = [timestep, *saved[0][1:]]
    planner.inference_timesteps = steps
    planner.scheduler.timesteps = steps
    sched = planner.scheduler
    planner.alpha_pairs = [(float(sched.alpha(t)), float(sched.alpha(sched.previous_timestep(t)))) for t in steps]
    try:
        yield
    finally:
        planner.inference_timesteps, planner.alpha_pairs, planner.scheduler.timesteps = saved


def truncated_rows(root: Path, batch: dict[str, Any], reward: RuleReward, per_anchor: int, seed: int) -> list[Row]:
    planner = load_planner(root / CKPT.format(name="truncated_il"))
    assert isinstance(planner, TruncatedDiffusionPlanner)
    n = per_anchor * planner.config.num_anchors
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        top = planner(batch["features"]).scores.argmax(1).numpy()  # the anchor the planner picks
    rows = []
    for label, fields, start in TRUNCATED_GRID:
        planner.rollout_config = RolloutConfig(**fields)
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        with start_timestep(planner, start), torch.no_grad():
            rollout = planner.rollout(batch["features"], n, gen)
        rows.append(measure(label, rollout, batch, reward, time.perf_counter() - t0, top))
        logging.info("%s", rows[-1].markdown())
    logging.info("truncated_il deterministic plan: reward %.3f", deterministic_reward(planner, batch, reward))
    return rows


def masked_rows(
    root: Path, batch: dict[str, Any], reward: RuleReward, samples: int, seed: int, grid: list[tuple[float, int]]
) -> list[Row]:
    planner = load_planner(root / CKPT.format(name="masked_il"))
    rows = []
    for temperature, top_k in grid:
        policy = MaskedDiffusionPolicy(planner, temperature=temperature, top_k=top_k)  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        rollout = policy.rollout(batch["features"], samples, gen)
        label = f"T={temperature:g} top_k={top_k or 'all'}"
        top = np.zeros(len(batch["metric_cache"]), dtype=np.int64)
        rows.append(measure(label, rollout, batch, reward, time.perf_counter() - t0, top))
        logging.info("%s", rows[-1].markdown())
    logging.info("masked_il deterministic plan: reward %.3f", deterministic_reward(planner, batch, reward))
    return rows


def demo_rl_data(root: Path, **kwargs: Any) -> RLDataModule:
    """The RL data module of a ``make demo`` output folder (its caches, data and maps); ``kwargs`` go to it."""
    return RLDataModule(
        feature_cache_dir=str(root / "cache"),
        metric_cache_dir=str(root / "metric_cache" / "rl_v1"),
        data_root=str(root / "data"),
        maps_root=str(root / "data" / "maps"),
        **kwargs,
    )


def load_batch(root: Path, scenes: int) -> dict[str, Any]:
    """The first ``scenes`` training scenes of the RL data set under ``root`` as one batch."""
    dataset = demo_rl_data(root, max_scenes=scenes).dataset("train")
    return rl_collate([dataset[i] for i in range(len(dataset))])


HEADER = (
    "| setting | spread 4 s (m) | reward | group std | flat groups | failures | top-group reward | scene std "
    "| flat scenes | failed scenes | sample s |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("outputs/demo"), help="a `make demo` output folder")
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--generator", choices=("truncated", "masked", "both"), default="both")
    parser.add_argument("--per-anchor", type=int, default=4, help="truncated: samples per anchor (G)")
    parser.add_argument("--samples", type=int, default=16, help="masked: samples per scene (G)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masked-grid", nargs="+", metavar="T:K", help="masked settings (default: the module's grid)")
    args = parser.parse_args(argv)
    grid = MASKED_GRID
    if args.masked_grid:
        grid = [(float(t), int(k)) for t, k in (item.split(":") for item in args.masked_grid)]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    batch = load_batch(args.root, args.scenes)
    reward = RuleReward("v1")
    b = len(batch["metric_cache"])
    if args.generator in ("truncated", "both"):
        rows = truncated_rows(args.root, batch, reward, args.per_anchor, args.seed)
        print(f"\ntruncated_il: {b} scenes x 20 anchors x G = {args.per_anchor} (groups: the anchor)\n{HEADER}")
        print("\n".join(r.markdown() for r in rows))
    if args.generator in ("masked", "both"):
        rows = masked_rows(args.root, batch, reward, args.samples, args.seed, grid)
        print(f"\nmasked_il: {b} scenes x G = {args.samples} (groups: the scene)\n{HEADER}")
        print("\n".join(r.markdown() for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
