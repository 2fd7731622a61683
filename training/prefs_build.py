"""``diffplan data prefs``: build the preference cache of a split (:mod:`training.prefs` holds the format).

For every scene of the split (its features from the feature cache, its NAVSIM metric cache built when missing, as
the RL data does), the candidates are

1. the generator's own candidates (``forward``: the truncated planner's denoised anchors),
2. ``num_samples`` samples of its policy ``rollout`` (the RL configs' exploration),
3. the expert plan and ``copies`` perturbed copies each of the generator's pick and of the expert plan
   (:func:`training.discriminator.perturb_plans`),

scored by :class:`rewards.composite.RuleReward` (a process pool over the scenes with ``--workers`` > 0, while the
next batch's candidates are drawn) and paired by :func:`training.prefs.label_pairs`. Each scene is written on its
own (atomically); a re-run skips the scenes already written, so an interrupted build resumes.

    diffplan data prefs --generator <truncated_il best.ckpt> --feature-cache outputs/demo/cache \\
        --metric-cache outputs/demo/metric_cache/rl_v2 --data-root outputs/demo/data --split synth_train \\
        --out outputs/demo/prefs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import zlib
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from planners.checkpoint import load_planner
from planners.policy import as_policy
from rewards.composite import RewardBatch, RuleReward
from training.discriminator import Perturbation, perturb_plans
from training.prefs import CACHE_VERSION, ScenePrefs, hard_terms, label_pairs, scene_path, write_scene
from training.rl_data import RLDataModule, rl_collate

logger = logging.getLogger(__name__)

#: The RL configs' exploration of the truncated planner (configs/train/truncated_grpo.yaml).
DEFAULT_POLICY: dict[str, Any] = {
    "schedule": "planner", "eta": 1.0, "noise": "additive", "noise_floor": 0.01, "log_prob_std_floor": 0.01,
}  # fmt: skip


@dataclass
class PrefsConfig:
    """How a preference cache is built (stored in its ``meta.json``)."""

    generator: str
    split: str = "synth_train"
    version: str = "v2"
    num_samples: int = 20
    own_candidates: bool = True
    policy: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_POLICY))
    perturb: dict[str, Any] = field(default_factory=lambda: asdict(Perturbation(copies=3)))
    margin: float = 0.05
    max_pairs: int = 64
    seed: int = 0


def draw_candidates(
    generator: nn.Module, policy: Any, batch: dict[str, Any], config: PrefsConfig, gen: torch.Generator
) -> torch.Tensor:
    """The candidates ``(B, K, 8, 3)`` of a batch of scenes (the module docstring's order), without gradients."""
    features = batch["features"]
    expert = batch["targets"]["trajectory"][:, None].float()
    parts: list[torch.Tensor] = []
    with torch.no_grad():
        noise = torch.randn(generator.initial_noise_shape(features.batch_size), generator=gen)  # type: ignore[operator]
        out = generator(features, noise)
        pick = out.trajectory[:, None].float()
        if config.own_candidates:
            parts.append((pick if out.candidates is None else out.candidates).float())
        if config.num_samples > 0:
            parts.append(policy.rollout(features, config.num_samples, gen).plans.float())
        perturbed = perturb_plans(torch.cat([pick, expert], 1), Perturbation(**config.perturb), gen)
    return torch.cat([*parts, expert, perturbed.float()], 1)


def scene_prefs(token: str, candidates: np.ndarray, rewards: RewardBatch, row: int, config: PrefsConfig) -> ScenePrefs:
    """The labelled pairs of scene ``row`` of a scored batch."""
    total = rewards.total[row]
    hard = {n: rewards.terms[n][row] for n in hard_terms(config.version, list(rewards.terms))}
    rng = np.random.default_rng([config.seed, zlib.crc32(token.encode())])
    valid = np.isfinite(candidates).all(axis=(-2, -1))
    pairs = label_pairs(total, hard, config.margin, config.max_pairs, rng, valid)
    return ScenePrefs(token, config.version, np.nan_to_num(candidates), total, pairs)


def _write_meta(out: Path, config: PrefsConfig) -> None:
    meta = {"format_version": CACHE_VERSION, **asdict(config)}
    path = out / "meta.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("version") != config.version or old.get("format_version") != CACHE_VERSION:
            raise ValueError(f"{path}: a cache of protocol {old.get('version')}, format {old.get('format_version')}")
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".meta.", suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def build_prefs(
    data: RLDataModule, out: str | Path, config: PrefsConfig, workers: int = 0, generator: nn.Module | None = None
) -> dict[str, int]:
    """Build (or complete) the preference cache of ``data``'s ``train`` scenes under ``out``.

    Args:
        data: the scenes (its ``train_split`` is ``config.split``; metric caches of ``config.version``).
        generator: the generator itself instead of loading ``config.generator`` (tests).
        workers: scoring processes (0: in this process).

    Returns:
        ``{"scenes": written now, "skipped": already there, "pairs": pairs written now}``.
    """
    out = Path(out)
    _write_meta(out, config)
    dataset = data.dataset("train")
    tokens = dataset.tokens
    todo = [i for i, t in enumerate(tokens) if not scene_path(out, config.split, t).exists()]
    counts = {"scenes": 0, "skipped": len(tokens) - len(todo), "pairs": 0}
    if not todo:
        return counts
    model = (generator if generator is not None else load_planner(config.generator)).eval()
    policy = as_policy(model, config.policy) if config.num_samples > 0 else None
    loader = DataLoader(Subset(dataset, todo), batch_size=data.batch_size, collate_fn=rl_collate)
    gen = torch.Generator().manual_seed(config.seed)
    pending: tuple[list[str], np.ndarray, Future[RewardBatch]] | None = None
    with RuleReward(config.version, num_workers=workers) as reward:  # type: ignore[arg-type]
        for batch in loader:
            plans = draw_candidates(model, policy, batch, config, gen).numpy().astype(np.float64)
            submitted = (list(batch["tokens"]), plans, reward.submit(batch["metric_cache"], plans))
            if pending is not None:  # the previous batch was scored while this one was drawn
                counts = _store(out, config, *pending, counts)
            pending = submitted
        if pending is not None:
            counts = _store(out, config, *pending, counts)
    return counts


def _store(
    out: Path,
    config: PrefsConfig,
    tokens: list[str],
    plans: np.ndarray,
    future: Future[RewardBatch],
    counts: dict[str, int],
) -> dict[str, int]:
    rewards = future.result()
    for row, token in enumerate(tokens):
        prefs = scene_prefs(token, plans[row], rewards, row, config)
        write_scene(scene_path(out, config.split, token), prefs)
        counts = {**counts, "scenes": counts["scenes"] + 1, "pairs": counts["pairs"] + len(prefs.pairs)}
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffplan data prefs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--generator", required=True, help="generator checkpoint (imitation or RL run)")
    parser.add_argument("--feature-cache", type=Path, required=True)
    parser.add_argument("--metric-cache", type=Path, required=True, help="metric caches of --version (built there)")
    parser.add_argument("--data-root", type=Path, default=os.environ.get("NUPLAN_DATA_ROOT"))
    parser.add_argument("--maps-root", type=Path, default=None, help="default: <data-root>/maps")
    parser.add_argument("--split", default="synth_train")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--version", choices=("v1", "v2"), default="v2", help="labels: PDMS (v1) or EPDMS (v2)")
    parser.add_argument(
        "--num-samples", type=int, default=20, help="policy samples per scene (a multiple of the anchors)"
    )
    parser.add_argument("--copies", type=int, default=3, help="perturbed copies of the pick and of the expert")
    parser.add_argument("--margin", type=float, default=0.05, help="total difference of a pair kept by margin")
    parser.add_argument("--max-pairs", type=int, default=64, help="pairs kept per scene")
    parser.add_argument("--max-scenes", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="scoring processes (and metric cache builders)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.data_root is None:
        parser.error("give --data-root or set NUPLAN_DATA_ROOT")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    perturb = {**asdict(Perturbation()), "copies": args.copies}
    config = PrefsConfig(
        args.generator, args.split, args.version, args.num_samples, policy=dict(DEFAULT_POLICY), perturb=perturb,
        margin=args.margin, max_pairs=args.max_pairs, seed=args.seed,
    )  # fmt: skip
    data = RLDataModule(
        str(args.feature_cache), str(args.metric_cache), str(args.data_root),
        str(args.maps_root or Path(args.data_root) / "maps"), train_split=args.split, val_split=args.split,
        batch_size=args.batch_size, version=args.version, max_scenes=args.max_scenes,
        cache_workers=max(args.workers, 1),
    )  # fmt: skip
    try:
        counts = build_prefs(data, args.out, config, args.workers)
    except (ValueError, FileNotFoundError) as err:
        print(f"diffplan data prefs: {err}", file=sys.stderr)
        return 1
    written, skipped = counts["scenes"], counts["skipped"]
    print(f"{args.split}: {written} scenes written ({counts['pairs']} pairs), {skipped} already there")
    return 0
