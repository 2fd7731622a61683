"""Anchor choice of the truncated diffusion planner: what its pick scores against what its candidates could score.

The truncated planner denoises one candidate per anchor and executes the candidate its classifier scores highest.
RL changes both the candidates and, through the shared decoder, the pick. For each checkpoint, on the scenes of a
split, this scores every candidate of the planner's deterministic plan (the same start noise for every checkpoint)
with the rule-based reward on the scenes' metric caches, and prints the mean over the scenes of:

- ``pick``: the reward of the candidate the planner executes (its classifier's argmax);
- ``ref pick``: the reward of this checkpoint's candidate at the anchor the *first* checkpoint picks: the candidates'
  change alone, the choice held fixed;
- ``oracle``: the reward of the scene's best candidate (what a perfect selector would get);
- ``mean``: the reward of the average candidate;
- ``changed``: the share of scenes whose pick differs from the first checkpoint's;
- ``failed``: the share of scenes whose pick collides at fault or leaves the drivable area.

    python benchmarks/anchor_choice.py --root outputs/demo --split synth_navtest \
        --metric-cache outputs/demo/data/scene_lists/.work/synth_navtest/metric_cache --ckpt IL.ckpt --ckpt RL.ckpt

The split's feature cache must exist (``diffplan data cache``); metric caches missing from ``--metric-cache`` are
built there first (the benchmark's builder). Not a timing: the script measures where a score comes from.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy

from planners.checkpoint import load_planner  # noqa: E402
from planners.truncated_diffusion import TruncatedDiffusionPlanner  # noqa: E402
from rewards.composite import RuleReward, failure  # noqa: E402
from training.rl_data import RLDataModule  # noqa: E402


@dataclass(frozen=True)
class ChoiceStats:
    """Means over scenes; see the module doc."""

    scenes: int
    pick: float
    ref_pick: float
    oracle: float
    mean: float
    changed: float
    failed: float

    def markdown(self, name: str) -> str:
        return (
            f"| {name} | {self.scenes} | {100 * self.pick:.1f} | {100 * self.ref_pick:.1f} | {100 * self.oracle:.1f} "
            f"| {100 * self.mean:.1f} | {100 * self.changed:.0f} % | {100 * self.failed:.0f} % |"
        )


HEADER = (
    "| checkpoint | scenes | pick | ref pick | oracle | mean | changed | failed |\n|---|---|---|---|---|---|---|---|"
)


def choice_stats(scores: np.ndarray, logits: np.ndarray, reference: np.ndarray, failed: np.ndarray) -> ChoiceStats:
    """:class:`ChoiceStats` of ``scores`` ``(S, K)`` (each candidate's reward), ``logits`` ``(S, K)`` (the pick is
    their argmax), ``reference`` ``(S,)`` (the reference checkpoint's pick) and ``failed`` ``(S, K)`` (bool)."""
    if scores.shape != logits.shape or scores.shape != failed.shape or reference.shape != scores.shape[:1]:
        raise ValueError(f"shapes differ: scores {scores.shape}, logits {logits.shape}, reference {reference.shape}")
    rows = np.arange(len(scores))
    pick = logits.argmax(1)
    return ChoiceStats(
        scenes=len(scores),
        pick=float(scores[rows, pick].mean()),
        ref_pick=float(scores[rows, reference].mean()),
        oracle=float(scores.max(1).mean()),
        mean=float(scores.mean()),
        changed=float((pick != reference).mean()),
        failed=float(failed[rows, pick].mean()),
    )


def label(path: str) -> str:
    """A run's folder name for a Lightning checkpoint (``RUN/lightning_logs/version_0/checkpoints/best.ckpt``)."""
    parts = Path(path).parts
    return parts[parts.index("lightning_logs") - 1] if "lightning_logs" in parts[1:] else Path(path).name


def candidates(
    planner: TruncatedDiffusionPlanner, data: RLDataModule, reward: RuleReward, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores, logits, failed)`` ``(S, K)`` of the planner's deterministic candidates on ``data``'s val scenes."""
    generator = torch.Generator().manual_seed(seed)
    scores, logits, failed = [], [], []
    for batch in data.val_dataloader():
        features = batch["features"]
        noise = torch.randn(planner.initial_noise_shape(features.ego_status.shape[0]), generator=generator)
        with torch.no_grad():
            out = planner.sample(features, noise)
        if out.candidates is None or out.scores is None:
            raise ValueError("the planner returned no candidates or no candidate scores")
        rewards = reward.score(batch["metric_cache"], out.candidates.double().numpy())
        scores.append(rewards.total)
        failed.append(failure(rewards))
        logits.append(out.scores.numpy())
    return np.concatenate(scores), np.concatenate(logits), np.concatenate(failed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ckpt", action="append", required=True, help="truncated planner checkpoints; the first is the reference"
    )
    parser.add_argument("--root", type=Path, default=Path("outputs/demo"), help="holds cache/ and data/")
    parser.add_argument("--split", default="synth_navtest")
    parser.add_argument("--metric-cache", type=Path, required=True, help="NAVSIM v1 metric caches of the split")
    parser.add_argument("--stride", type=int, default=1, help="every stride-th scene of the split")
    parser.add_argument("--seed", type=int, default=0, help="the start noise, the same for every checkpoint")
    args = parser.parse_args()
    data = RLDataModule(
        feature_cache_dir=str(args.root / "cache"),
        metric_cache_dir=str(args.metric_cache),
        data_root=str(args.root / "data"),
        maps_root=str(args.root / "data" / "maps"),
        train_split=args.split,
        val_split=args.split,
        batch_size=16,
        stride=args.stride,
    )
    reward = RuleReward("v1")
    print(HEADER)
    reference: np.ndarray | None = None
    for path in args.ckpt:
        planner = load_planner(path)
        if not isinstance(planner, TruncatedDiffusionPlanner) or not planner.config.truncated:
            raise SystemExit(f"{path}: not a truncated (anchored) diffusion planner")
        scores, logits, failed = candidates(planner.eval(), data, reward, args.seed)
        reference = logits.argmax(1) if reference is None else reference
        print(choice_stats(scores, logits, reference, failed).markdown(label(path)))


if __name__ == "__main__":
    main()
