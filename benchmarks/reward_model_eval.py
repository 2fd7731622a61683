"""A trained reward model on held-out preference pairs: pairwise accuracy, per-scene Spearman correlation of its score
with the rule-based total (EPDMS / PDMS, as the cache was labelled) across the scene's candidates, and a calibration
plot of the Bradley-Terry probability ``sigmoid(s_a - s_b)`` against how often ``a`` is the preferred one.

    python benchmarks/reward_model_eval.py --ckpt <reward_model best.ckpt> --prefs outputs/demo/prefs \\
        --features outputs/demo/cache --split synth_val --png docs/figures/reward_model_calibration.png

Prints one JSON line (``pairs``, ``scenes``, ``pair_acc``, ``spearman``, ``ece``, and the accuracy of the pairs kept
by dominance and by margin).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from training.discriminator import spearman  # noqa: E402
from training.prefs_data import PrefsDataset, prefs_collate  # noqa: E402
from training.reward_model import load_learned_reward  # noqa: E402


def evaluate(ckpt: str, prefs: Path, features: Path, split: str, batch_size: int = 8) -> dict[str, Any]:
    """Scores of every pair and scene of ``split``: ``{"p_win": (P,), "dominance": (P,), "rho": (S,)}`` (``p_win``:
    the model's probability that the preferred side wins)."""
    reward = load_learned_reward(ckpt)
    dataset = PrefsDataset(prefs, features, split)
    dominance = np.concatenate([p.pairs.dominance for p in dataset.prefs])
    p_win, rho = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=prefs_collate):
        logits = reward.logits(batch["features"], batch["candidates"])
        mask = batch["candidate_mask"]
        win, lose = logits.gather(1, batch["winner"]), logits.gather(1, batch["loser"])
        p_win.append(torch.sigmoid(win - lose)[batch["pair_mask"]].numpy())
        rho.append(spearman(logits.masked_fill(~mask, 0.0), batch["total"], mask).numpy())
    return {"p_win": np.concatenate(p_win), "dominance": dominance, "rho": np.concatenate(rho)}


def calibration(p_win: np.ndarray, bins: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability of ``P(a beats b)``: each pair seen from a random side (so that both halves of [0, 1] are
    filled); per bin the mean predicted probability, the share where ``a`` is the preferred side, and the count."""
    flip = np.random.default_rng(seed).random(p_win.shape[0]) < 0.5
    prob = np.where(flip, 1.0 - p_win, p_win)
    outcome = (~flip).astype(float)
    which = np.clip((prob * bins).astype(int), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_p = np.bincount(which, prob, bins) / np.maximum(count, 1)
    freq = np.bincount(which, outcome, bins) / np.maximum(count, 1)
    return mean_p, freq, count


def plot(mean_p: np.ndarray, freq: np.ndarray, count: np.ndarray, title: str, png: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    used = count > 0
    ax.plot(mean_p[used], freq[used], marker="o", label="reward model")
    for x, y, n in zip(mean_p[used], freq[used], count[used], strict=True):
        ax.annotate(str(int(n)), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("predicted P(a preferred) = sigmoid(s_a - s_b)")
    ax.set_ylabel("observed share a preferred")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--prefs", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--split", default="synth_val")
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--bins", type=int, default=10)
    args = parser.parse_args(argv)
    out = evaluate(args.ckpt, args.prefs, args.features, args.split)
    p_win, dom, rho = out["p_win"], out["dominance"], out["rho"]
    mean_p, freq, count = calibration(p_win, args.bins)
    ece = float((np.abs(mean_p - freq) * count).sum() / max(count.sum(), 1))
    summary = {
        "split": args.split, "pairs": int(p_win.shape[0]), "scenes": int(rho.shape[0]),
        "pair_acc": float((p_win > 0.5).mean()), "pair_acc_dominance": float((p_win[dom] > 0.5).mean()),
        "pair_acc_margin": float((p_win[~dom] > 0.5).mean()), "spearman": float(np.nanmean(rho)),
        "spearman_scenes": int(np.isfinite(rho).sum()), "ece": ece,
    }  # fmt: skip
    print(json.dumps(summary))
    if args.png is not None:
        title = f"{args.split}: {summary['pairs']} pairs, accuracy {100 * summary['pair_acc']:.1f} %, ECE {ece:.3f}"
        plot(mean_p, freq, count, title, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
