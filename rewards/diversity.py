"""Mode diversity of a set of candidate trajectories.

Two scores:

- :func:`pairwise_diversity` (DiffusionDriveV2's DIVER-inspired metric): per waypoint ``n``, the mean
  pairwise distance between the ``M`` candidates divided by the mean distance of the waypoints from the
  ego (``eps`` avoids a division by zero when every waypoint sits at the origin), clipped to 1, then
  averaged over waypoints. 0 = all candidates identical.
- :func:`footprint_diversity` (DiffusionDrive's mode-diversity score): ``1 - mean_i IoU(F_i, U_j F_j)`` where
  ``F_i`` is the set of raster cells the i-th trajectory's polyline passes within ``half_width`` of.

:class:`CandidateDiversity` is the pairwise score as a benchmark candidate metric
(:class:`simulation.protocols.CandidateMetric`, composed by ``configs/bench/protocol/navsim_*.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pairwise_diversity(candidates: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Diversity in ``[0, 1]`` of candidates ``(..., M, N, 2+)`` (x, y in the ego frame); returns ``(...)``."""
    p = np.asarray(candidates, dtype=np.float64)[..., :2]
    m = p.shape[-3]
    if m < 2:
        return np.zeros(p.shape[:-3])
    diff = p[..., :, None, :, :] - p[..., None, :, :, :]  # (..., M, M, N, 2)
    dist = np.linalg.norm(diff, axis=-1)
    iu = np.triu_indices(m, k=1)
    raw = dist[..., iu[0], iu[1], :].mean(-2)  # (..., N)
    scale = np.linalg.norm(p, axis=-1).mean(-2)  # (..., N)
    return np.minimum(1.0, raw / (eps + scale)).mean(-1)


@dataclass(frozen=True)
class CandidateDiversity:
    """:func:`pairwise_diversity` of one scene's candidates ``(K, N, 2+)``; ``None`` for fewer than two."""

    eps: float = 1e-6

    def __call__(self, candidates: np.ndarray) -> float | None:
        c = np.asarray(candidates, dtype=np.float64)
        if c.ndim != 3 or c.shape[0] < 2:
            return None
        return float(pairwise_diversity(c[None, ..., :2], self.eps)[0])


def _footprints(candidates: np.ndarray, cell: float, half_width: float, samples_per_m: float) -> list[set]:
    out = []
    for traj in candidates:
        pts = np.concatenate([np.zeros((1, 2)), traj[:, :2]])
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        n = max(int(seg.sum() * samples_per_m), 1) + 1
        s = np.linspace(0, seg.sum(), n)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        dense = np.stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])], -1)
        r = int(np.ceil(half_width / cell))
        offs = np.stack(np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1)), -1).reshape(-1, 2)
        offs = offs[np.linalg.norm(offs * cell, axis=1) <= half_width + 1e-9]
        cells = np.floor(dense / cell).astype(np.int64)[:, None, :] + offs[None]
        out.append({tuple(c) for c in cells.reshape(-1, 2)})
    return out


def footprint_diversity(
    candidates: np.ndarray, cell: float = 0.5, half_width: float = 1.0, samples_per_m: float = 4.0
) -> float:
    """``1 - mean_i IoU(F_i, union)`` of the candidates' footprints ``(M, N, 2+)``; 0 when all coincide."""
    feet = _footprints(np.asarray(candidates, dtype=np.float64), cell, half_width, samples_per_m)
    union = set().union(*feet)
    if not union:
        return 0.0
    return float(1.0 - np.mean([len(f) / len(union) for f in feet]))
