"""Reward curves of RL runs as a PNG: the mean training reward per step (and its moving average) and the validation
PDMS of the deterministic plan, one line per run, read from the runs' TensorBoard logs.

    python benchmarks/rl_curves.py --out docs/figures/rl_truncated.png RUN_DIR [RUN_DIR ...]
    python benchmarks/rl_curves.py --reward-tag train/return --val-tag val/score --out tcgrpo.png RUN_DIR ...

``RUN_DIR``: a ``diffplan fit`` output folder (its ``lightning_logs/version_*/events*`` are read); the legend is
the folder's name. The closed-loop discriminator runs (``configs/train/discriminator_tcgrpo.yaml``) log the episode
return as ``train/return`` and BEV-Warp's episode score as ``val/score``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_scalars(run: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``tag`` over every event file of ``run`` (the latest version wins on a step)."""
    points: dict[int, float] = {}
    for events in sorted(run.glob("lightning_logs/version_*/events*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points.update({e.step: e.value for e in acc.Scalars(tag)})
    steps = np.array(sorted(points), dtype=int)
    return steps, np.array([points[s] for s in steps], dtype=float)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (fewer at the start)."""
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--window", type=int, default=8, help="moving-average window in steps (default 8)")
    parser.add_argument("--reward-tag", default="train/reward", help="training curve's tag (default train/reward)")
    parser.add_argument("--val-tag", default="val/pdms", help="validation curve's tag (default val/pdms)")
    args = parser.parse_args()
    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(11, 4))
    for run in args.runs:
        steps, reward = read_scalars(run, args.reward_tag)
        if len(steps) == 0:
            raise SystemExit(f"{run}: no {args.reward_tag} in its TensorBoard logs")
        (line,) = ax_r.plot(steps, moving_average(reward, args.window), label=run.name)
        ax_r.plot(steps, reward, color=line.get_color(), alpha=0.25, linewidth=0.8)
        v_steps, pdms = read_scalars(run, args.val_tag)
        ax_v.plot(v_steps, pdms, marker="o", color=line.get_color(), label=run.name)
    ax_r.set(
        xlabel="step", ylabel=f"{args.reward_tag} (mean over the rollouts)", title=f"training ({args.window}-step mean)"
    )
    ax_v.set(xlabel="step", ylabel=f"{args.val_tag} (validation split)", title="validation")
    for ax in (ax_r, ax_v):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
