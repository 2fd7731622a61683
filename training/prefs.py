"""Preference pairs of candidate plans, labelled by the rule-based scorer: the pair rule and the cache format.

The pair rule (:func:`label_pairs`), over the candidates of one scene with the scorer's ``total`` (PDMS / EPDMS) and
sub-metrics:

1. a pair where one candidate dominates the other on the hard constraints (every multiplier term, e.g. NC, DAC,
   DDC, TLC under v2, at least as good and one strictly better) is kept, the dominating one preferred, whatever the
   totals say;
2. otherwise a pair whose totals differ by at least ``margin`` is kept, the higher total preferred;
3. every other pair is a tie and is dropped.

At most ``max_pairs`` of the kept pairs of a scene are stored (drawn without replacement), each in a random order
(the label says which side is preferred).

The cache (``diffplan data prefs``, :mod:`training.prefs_build`) is one ``.npz`` per scene,
``<out>/<split>/<token>.npz``, written atomically (a temporary file, then a rename), plus ``<out>/meta.json`` (how
it was built). A scene file holds (``K`` candidates, ``P`` pairs; see ``docs/reward_model.md``)::

    format_version ()        int     CACHE_VERSION
    token          ()        str     the scene token (the feature cache's)
    protocol       ()        str     "v1" (PDMS) or "v2" (EPDMS) labels
    candidates     (K, 8, 3) float32 the scene's candidate plans (local x, y, heading at 0.5 s)
    total          (K,)      float32 their rule-based total
    traj_a, traj_b (P, 8, 3) float32 the two trajectories of each pair (candidates[index_a], candidates[index_b])
    index_a, index_b (P,)    int32   their indices among the candidates
    label          (P,)      int8    1: a is preferred, 0: b is preferred
    margin         (P,)      float32 |total_a - total_b|
    dominance      (P,)      bool    kept by the hard-constraint rule (else by the margin)
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rewards.pdm import EPDMS_MULTIPLIERS, PDMS_MULTIPLIERS

#: Version of the scene file layout; a file of another version is refused.
CACHE_VERSION = 1
ARRAY_KEYS = ("candidates", "total", "traj_a", "traj_b", "index_a", "index_b", "label", "margin", "dominance")


class PrefsCacheError(ValueError):
    """A preference cache file that cannot be read or does not hold the expected layout (the message names it)."""


def hard_terms(version: str, names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The multiplier terms of ``version``'s aggregate among ``names`` (v1: NC, DAC; v2: NC, DAC, DDC, TLC)."""
    multipliers = PDMS_MULTIPLIERS if version == "v1" else EPDMS_MULTIPLIERS
    return tuple(m for m in multipliers if m in names)


@dataclass(frozen=True)
class Pairs:
    """Labelled pairs of one scene's candidates, each ``(P,)``: ``a``, ``b`` indices, ``label`` (1: a preferred),
    ``margin`` ``|total_a - total_b|`` and ``dominance`` (kept by the hard-constraint rule)."""

    a: np.ndarray
    b: np.ndarray
    label: np.ndarray
    margin: np.ndarray
    dominance: np.ndarray

    def __len__(self) -> int:
        return int(self.a.shape[0])


def label_pairs(
    total: np.ndarray,
    hard: Mapping[str, np.ndarray],
    margin: float,
    max_pairs: int | None = None,
    rng: np.random.Generator | None = None,
    valid: np.ndarray | None = None,
) -> Pairs:
    """The pairs of one scene's candidates kept by the pair rule (module docstring).

    Args:
        total: ``(K,)`` rule-based totals.
        hard: ``{term: (K,)}`` the hard-constraint (multiplier) terms.
        margin: minimum total difference of a pair kept without dominance.
        max_pairs: keep at most this many (drawn with ``rng``); ``None``: all.
        rng: order of the sides and the draw (``None``: winner first, no shuffling).
        valid: ``(K,)`` bool, candidates that may be paired (``None``: all).

    Returns:
        :class:`Pairs` (the winner is ``a`` where ``label`` is 1).
    """
    total = np.asarray(total, dtype=np.float64)
    k = total.shape[0]
    i, j = np.triu_indices(k, 1)
    if valid is not None:
        keep = np.asarray(valid, dtype=bool)
        i, j = i[keep[i] & keep[j]], j[keep[i] & keep[j]]
    if hard:
        h = np.stack([np.asarray(v, dtype=np.float64) for v in hard.values()], -1)  # (K, H)
        i_geq, j_geq = (h[i] >= h[j]).all(-1), (h[j] >= h[i]).all(-1)
        i_dom, j_dom = i_geq & ~j_geq, j_geq & ~i_geq
    else:
        i_dom = j_dom = np.zeros(i.shape[0], dtype=bool)
    diff = total[i] - total[j]
    dominance: np.ndarray = np.asarray(i_dom | j_dom)
    by_margin = ~dominance & (np.abs(diff) >= margin)
    i_wins = i_dom | (by_margin & (diff > 0))
    kept = dominance | by_margin
    winner = np.where(i_wins, i, j)[kept]
    loser = np.where(i_wins, j, i)[kept]
    dom, gap = dominance[kept], np.abs(diff)[kept]
    if max_pairs is not None and winner.shape[0] > max_pairs:
        chosen = np.sort((rng or np.random.default_rng(0)).choice(winner.shape[0], max_pairs, replace=False))
        winner, loser, dom, gap = winner[chosen], loser[chosen], dom[chosen], gap[chosen]
    swap = rng.random(winner.shape[0]) < 0.5 if rng is not None else np.zeros(winner.shape[0], dtype=bool)
    a, b = np.where(swap, loser, winner), np.where(swap, winner, loser)
    return Pairs(a, b, (~swap).astype(np.int8), gap.astype(np.float32), dom)


# --------------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class ScenePrefs:
    """One scene's cache entry (see the module docstring): its candidates ``(K, 8, 3)``, their ``total`` ``(K,)``
    and the labelled :class:`Pairs`."""

    token: str
    protocol: str
    candidates: np.ndarray
    total: np.ndarray
    pairs: Pairs

    def arrays(self) -> dict[str, np.ndarray]:
        p = self.pairs
        cands = self.candidates.astype(np.float32)
        return {
            "format_version": np.asarray(CACHE_VERSION),
            "token": np.asarray(self.token),
            "protocol": np.asarray(self.protocol),
            "candidates": cands,
            "total": self.total.astype(np.float32),
            "traj_a": cands[p.a],
            "traj_b": cands[p.b],
            "index_a": p.a.astype(np.int32),
            "index_b": p.b.astype(np.int32),
            "label": p.label.astype(np.int8),
            "margin": p.margin.astype(np.float32),
            "dominance": p.dominance.astype(bool),
        }


def scene_path(root: str | Path, split: str, token: str) -> Path:
    """Where the cache of ``token`` of ``split`` lives."""
    return Path(root) / split / f"{token}.npz"


def write_scene(path: str | Path, prefs: ScenePrefs) -> Path:
    """Write a scene file atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **prefs.arrays())  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_scene(path: str | Path) -> ScenePrefs:
    """Read a scene file; :class:`PrefsCacheError` naming the file when it is unreadable, of another format version
    or inconsistent."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise PrefsCacheError(f"{path}: unreadable preference cache file ({type(err).__name__}: {err})") from None
    missing = [k for k in ("format_version", "token", "protocol", *ARRAY_KEYS) if k not in raw]
    if missing:
        raise PrefsCacheError(f"{path}: not a preference cache file (missing {missing})")
    if int(raw["format_version"]) != CACHE_VERSION:
        raise PrefsCacheError(f"{path}: format version {int(raw['format_version'])}, this reader has {CACHE_VERSION}")
    k, p = raw["candidates"].shape[0], raw["label"].shape[0]
    ia, ib = raw["index_a"].astype(np.int64), raw["index_b"].astype(np.int64)
    if raw["candidates"].shape[1:] != (8, 3) or raw["total"].shape != (k,) or raw["traj_a"].shape != (p, 8, 3):
        raise PrefsCacheError(f"{path}: inconsistent shapes")
    if p and (ia.max() >= k or ib.max() >= k or ia.min() < 0 or ib.min() < 0):
        raise PrefsCacheError(f"{path}: pair indices outside the {k} candidates")
    pairs = Pairs(ia, ib, raw["label"].astype(np.int8), raw["margin"].astype(np.float32), raw["dominance"])
    return ScenePrefs(str(raw["token"]), str(raw["protocol"]), raw["candidates"], raw["total"], pairs)


def read_split(root: str | Path, split: str) -> dict[str, ScenePrefs]:
    """``token -> ScenePrefs`` of every scene file of ``split`` under ``root`` (sorted by token)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise PrefsCacheError(f"{folder}: no preference cache of split {split} (build it with `diffplan data prefs`)")
    return {path.stem: read_scene(path) for path in sorted(folder.glob("*.npz"))}
