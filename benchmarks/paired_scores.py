"""Two runs on the same scenes, compared scene by scene: the mean difference of a per-scene score and its paired
bootstrap interval.

    python benchmarks/paired_scores.py BASE.csv NEW.csv [NEW2.csv ...] [--column score] [--level 0.9] [--plot OUT.png]

Each file is a CSV with a ``token`` column: a benchmark's ``scores.csv`` (``diffplan bench``; rows whose
``valid`` is False and its closing ``average`` row are left out) or the per-episode file of a closed-loop
validation (``--model.val_episodes``). Only the tokens present and valid in both runs are compared; how many were
dropped is printed. The interval resamples the scenes with replacement (percentile bootstrap of the mean
difference), so it says how much the difference would move on another draw of scenes like these, not on another
training seed. ``--plot`` also draws the differences and their intervals, one row per run, labelled by the part of
its path that the runs do not share (``runs/a_s0/bench/scores.csv`` and ``runs/a_s1/bench/scores.csv``: ``a_s0``,
``a_s1``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy

from simulation.evaluation.compare import Paired, paired, read_scores  # noqa: E402


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """Each path without the leading and trailing folders that every path shares (the whole path if only one)."""
    parts = [Path(p).parts for p in paths]
    if len(parts) < 2:
        return [str(p) for p in paths]
    shortest = min(len(p) for p in parts)
    head = 0
    while head < shortest - 1 and len({p[head] for p in parts}) == 1:
        head += 1
    tail = 0
    while tail < shortest - head - 1 and len({p[len(p) - 1 - tail] for p in parts}) == 1:
        tail += 1
    return [str(Path(*p[head : len(p) - tail])) for p in parts]


def plot_paired(results: Sequence[tuple[str, Paired]], out: str | Path, title: str = "") -> None:
    """The mean differences and their intervals as a PNG: one row per run, a line at zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 0.26 * len(results) + 1.2))
    y = np.arange(len(results))[::-1]
    diffs = np.array([r.diff for _, r in results])
    err = np.array([[r.diff - r.low for _, r in results], [r.high - r.diff for _, r in results]])
    ax.errorbar(diffs, y, xerr=err, fmt="o", color="tab:blue", ecolor="tab:gray", capsize=3)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(y, [label for label, _ in results])
    ax.set_xlabel("mean difference to the base run, per scene")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("new", type=Path, nargs="+")
    parser.add_argument("--column", default="score")
    parser.add_argument("--level", type=float, default=0.9)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, help="also draw the differences and intervals into this PNG")
    parser.add_argument("--title", default="", help="the plot's title")
    args = parser.parse_args(argv)
    try:
        _print_table(args)
    except (OSError, ValueError) as err:
        raise SystemExit(f"paired_scores: {err}") from None


def _print_table(args: argparse.Namespace) -> None:
    base = read_scores(args.base, args.column)
    print(f"| run | scenes | {args.column} | base | difference | {args.level:.0%} interval | better / worse |")
    print("|---|---:|---:|---:|---:|---|---|")
    results = []
    for path, label in zip(args.new, run_labels(args.new), strict=True):
        r = paired(base, read_scores(path, args.column), args.level, args.resamples, args.seed)
        results.append((label, r))
        note = f" ({r.dropped} not in both)" if r.dropped else ""
        print(
            f"| {path} | {r.scenes}{note} | {r.new:.4f} | {r.base:.4f} | {r.diff:+.4f} | [{r.low:+.4f}, {r.high:+.4f}]"
            f" | {r.better} / {r.worse} |"
        )
    if args.plot is not None:
        plot_paired(results, args.plot, args.title or f"{args.column}: paired against {args.base}")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
