"""PDM-Closed's path: a discrete centre line with headings, interpolated by arc length (NAVSIM's ``PDMPath``).

The planner builds it from :func:`simulation.maps.route.route_discrete_path`: the lanes' baseline vertices with the
map's headings (each vertex heading along the segment to the next one of its own lane), joints kept twice.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import shapely
from shapely.geometry import LineString
from shapely.ops import substring

from simulation.geometry import polyline_headings, polyline_lengths


def _linear(progress: np.ndarray, states: np.ndarray, d: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Poses ``(..., 3)`` at clamped arc lengths ``d`` ``(...)`` in the segments ending at vertices ``hi`` ``(...)``
    of ``progress`` ``(N,)`` / ``states`` ``(N, 3)``: scipy's linear ``interp1d`` arithmetic, the heading wrapped
    with ``arctan2(sin, cos)`` (NAVSIM's ``normalize_angle``), NaNs set to 0."""
    lo = hi - 1
    s_lo = progress[lo]
    slope = (states[hi] - states[lo]) / (progress[hi] - s_lo)[..., None]
    out = slope * (d - s_lo)[..., None] + states[lo]
    out[..., 2] = np.arctan2(np.sin(out[..., 2]), np.cos(out[..., 2]))
    out[np.isnan(out)] = 0.0
    return out


class ProposalPath:
    """A path ``(N, 3)`` of (x, y, heading) vertices (headings unwrapped along it; repeated vertices allowed).

    ``interpolate`` clamps distances to ``[1e-5, length]`` and interpolates x, y and the unwrapped heading
    linearly; ``project`` is the arc length of the nearest point (shapely's ``line_locate_point``).
    """

    def __init__(self, states: np.ndarray) -> None:
        states = np.array(states, dtype=np.float64)
        states[:, 2] = np.unwrap(states[:, 2])
        self.states = states
        self.progress = polyline_lengths(states[:, :2])

    @staticmethod
    def from_centerline(xy: np.ndarray) -> ProposalPath:
        """The path of an ``(N, 2)`` polyline, each vertex heading along its outgoing segment (the last along the
        last segment): the heading rule of one lane's discrete path, applied to the whole polyline."""
        xy = np.asarray(xy, dtype=np.float64)
        return ProposalPath(np.concatenate([xy, polyline_headings(xy)[:, None]], -1))

    def parallel(self, offset: float) -> ProposalPath:
        """Every vertex moved ``offset`` m to its left (negative: right), headings kept."""
        normal = self.states[:, 2] + np.pi / 2
        shifted = self.states.copy()
        shifted[:, 0] += np.cos(normal) * offset
        shifted[:, 1] += np.sin(normal) * offset
        return ProposalPath(shifted)

    @property
    def length(self) -> float:
        return float(self.progress[-1])

    @cached_property
    def linestring(self) -> LineString:
        return LineString(self.states[:, :2])

    def project(self, points: np.ndarray) -> np.ndarray:
        """Arc lengths ``(M,)`` of the points of the path nearest to ``points`` ``(M, 2)``."""
        return np.asarray(shapely.line_locate_point(self.linestring, shapely.points(points)), dtype=np.float64)

    def interpolate(self, distances: np.ndarray) -> np.ndarray:
        """Poses ``(..., 3)`` at arc lengths ``distances`` ``(...)``.

        As scipy's linear ``interp1d`` (what NAVSIM's ``PDMPath`` uses): a distance ``d`` falls in the segment
        ``[i - 1, i]`` with ``i`` the first vertex whose arc length is ``>= d`` (so a vertex repeated at a lane joint
        is left by the segment after it), ``slope * (d - s[i - 1]) + value[i - 1]``; the heading is wrapped with
        ``arctan2(sin, cos)``; NaNs become 0.
        """
        d = np.minimum(np.maximum(np.asarray(distances, dtype=np.float64), 1e-5), self.length)
        hi = np.minimum(np.maximum(np.searchsorted(self.progress, d), 1), len(self.progress) - 1)
        return _linear(self.progress, self.states, d, hi)

    def substring(self, start: float, end: float) -> LineString:
        """The vertices with arc length in ``[start, end]`` (clamped to the path), or, with fewer than two of them,
        the exact sub-line between the two distances."""
        start, end = float(np.clip(start, 0.0, self.length)), float(np.clip(end, 0.0, self.length))
        inside = (start <= self.progress) & (self.progress <= end)
        if inside.sum() > 1:
            return LineString(self.states[inside, :2])
        return substring(self.linestring, start, end)


class PathStack:
    """Several :class:`ProposalPath` interpolated in one call: rows ``bounds[p] .. bounds[p + 1]`` of the
    distances belong to path ``p`` (the same arithmetic as :meth:`ProposalPath.interpolate`, element by element).
    """

    def __init__(self, paths: list[ProposalPath]) -> None:
        self.paths = paths
        self.progress = np.concatenate([p.progress for p in paths])
        self.states = np.concatenate([p.states for p in paths])
        sizes = np.array([len(p.progress) for p in paths])
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.sizes = sizes

    def interpolate(self, distances: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """Poses ``(R, 3)`` at arc lengths ``distances`` ``(R,)`` on their paths."""
        counts = np.diff(bounds)
        lengths = np.repeat([p.length for p in self.paths], counts)
        d = np.minimum(np.maximum(np.asarray(distances, dtype=np.float64), 1e-5), lengths)
        found = [np.searchsorted(p.progress, d[bounds[k] : bounds[k + 1]]) for k, p in enumerate(self.paths)]
        hi = np.minimum(np.maximum(np.concatenate(found), 1), np.repeat(self.sizes - 1, counts))
        return _linear(self.progress, self.states, d, hi + np.repeat(self.offsets, counts))
