"""Two benchmark runs on the same scenes, compared scene by scene: the mean difference of a per-scene score and its
paired bootstrap interval (``benchmarks/paired_scores.py`` and the demo's RL-against-imitation table).

The interval resamples the scenes with replacement (percentile bootstrap of the mean difference), so it says how
much the difference would move on another draw of scenes like these, not on another training seed.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Paired:
    """The comparison of ``new`` against ``base`` on their common scenes."""

    scenes: int
    dropped: int
    base: float
    new: float
    diff: float
    low: float
    high: float
    better: int
    worse: int


def read_scores(path: str | Path, column: str = "score") -> dict[str, float]:
    """``token -> column`` of a CSV, without the rows marked invalid, the ``average`` row and empty or NaN values."""
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "token" not in fields or column not in fields:
            raise ValueError(f"{path}: needs the columns 'token' and {column!r}, has {fields}")
        out: dict[str, float] = {}
        for row in reader:
            if row["token"] == "average" or row.get("valid", "True").strip().lower() in ("false", "0"):
                continue  # the benchmark's closing mean row; a failed scene
            value = float(row[column]) if row[column].strip() else float("nan")
            if np.isfinite(value):  # an empty or NaN cell: a metric the scene has no value for
                out[row["token"]] = value
    return out


def paired(
    base: Mapping[str, float], new: Mapping[str, float], level: float = 0.9, resamples: int = 10_000, seed: int = 0
) -> Paired:
    """Mean of ``new - base`` over the common tokens, with its percentile bootstrap interval at ``level``."""
    tokens = sorted(set(base) & set(new))
    if not tokens:
        raise ValueError("the two runs share no valid scene")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    a = np.array([base[t] for t in tokens])
    b = np.array([new[t] for t in tokens])
    d = b - a
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Paired(
        scenes=len(tokens), dropped=len(set(base) ^ set(new)), base=float(a.mean()), new=float(b.mean()),
        diff=float(d.mean()), low=float(low), high=float(high), better=int((d > 0).sum()), worse=int((d < 0).sum()),
    )  # fmt: skip
