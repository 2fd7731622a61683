"""The anchor choice's RL step with and without the rollout (``configs/train/truncated_choice.yaml``).

With ``trainable: [cls_head]`` the sample objective gives the anchor scores no gradient, so ``rollout: false`` skips
the rollout, its scoring and its log-probs and trains the same choice (the tests check that both land on the same
weights when the start noise is zero). This times both in the same run: the config's module on the demo's
truncated imitation checkpoint, ``--steps`` training steps of ``--batch`` scenes of its RL data set after
``--warmup`` untimed ones, each step timed by a callback; the rollout run samples the config's ``num_samples`` per
scene with the ``truncated_ddv2`` config's sampler. Printed: seconds per step of each, candidates scored per
second, and the ratio (the baseline, with the rollout, over the choice alone).

    python benchmarks/bench_anchor_choice.py [--root outputs/demo] [--steps 20] [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, not an installed copy
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rl_exploration import demo_rl_data  # noqa: E402

from training.rl import RLModule  # noqa: E402

CKPT = "train/truncated_il/lightning_logs/version_0/checkpoints/best.ckpt"


class StepTimer(pl.Callback):
    """Wall seconds of every training step (batch start to batch end)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def module_args(rollout: bool) -> dict[str, Any]:
    """``truncated_choice.yaml``'s module arguments; with the rollout, ``truncated_ddv2.yaml``'s sampler."""
    args = yaml.safe_load((ROOT / "configs/train/truncated_choice.yaml").read_text())["model"]["init_args"]
    ddv2 = yaml.safe_load((ROOT / "configs/train/truncated_ddv2.yaml").read_text())["model"]["init_args"]
    return {**args, "rollout": rollout, "policy": ddv2["policy"]}


def time_steps(root: Path, rollout: bool, steps: int, warmup: int, batch: int) -> tuple[list[float], int]:
    """Per-step seconds of ``steps`` steps after ``warmup`` (the whole fit runs ``steps + warmup``), and the
    planner's number of anchors (candidates per scene)."""
    torch.manual_seed(0)
    module = RLModule(**{**module_args(rollout), "init_ckpt": str(root / CKPT)})
    data = demo_rl_data(root, batch_size=batch)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        trainer = pl.Trainer(
            accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, max_epochs=1,
            limit_train_batches=steps + warmup, callbacks=[timer], default_root_dir=out,
        )  # fmt: skip
        trainer.fit(module, data)
    return timer.seconds[warmup:], int(module.planner.config.num_anchors)  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("outputs/demo"), help="a `make demo` output folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    if not (args.root / CKPT).is_file():
        print(f"bench_anchor_choice: skipped, no demo run under {args.root} (make demo, or --root)")
        return 0
    torch.set_num_threads(args.threads)
    samples = int(module_args(True)["num_samples"])
    median: dict[bool, float] = {}
    for rollout in (True, False):
        seconds, anchors = time_steps(args.root, rollout, args.steps, args.warmup, args.batch)
        median[rollout] = float(np.median(seconds))
        scored = args.batch * (anchors + (samples if rollout else 0))  # the choice's candidates, and the rollout's
        label = f"with the rollout ({samples} samples per scene)" if rollout else "the choice alone (rollout: false)"
        print(
            f"{label}: {median[rollout]:.3f} s per step of {args.batch} scenes, {scored / median[rollout]:.0f} "
            "candidates scored/s"
        )
    print(f"ratio (with the rollout / alone): {median[True] / median[False]:.2f}x per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
