"""PDM-Closed's path: a discrete centre line with headings, interpolated by arc length (NAVSIM's ``PDMPath``)."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import shapely
from shapely.geometry import LineString
from shapely.ops import substring

from simulation.geometry import normalize_angle, polyline_headings, polyline_lengths


class ProposalPath:
    """A path ``(N, 3)`` of (x, y, heading) vertices (headings unwrapped along it).

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
        """The path of an ``(N, 2)`` centre line, each vertex heading along its outgoing segment."""
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
        """Poses ``(..., 3)`` at arc lengths ``distances`` ``(...)``."""
        d = np.clip(np.asarray(distances, dtype=np.float64), 1e-5, self.length)
        out = np.stack([np.interp(d, self.progress, self.states[:, c]) for c in range(3)], -1)
        out[..., 2] = normalize_angle(out[..., 2])
        return out

    def substring(self, start: float, end: float) -> LineString:
        """The vertices with arc length in ``[start, end]`` (clamped to the path), or, with fewer than two of them,
        the exact sub-line between the two distances."""
        start, end = float(np.clip(start, 0.0, self.length)), float(np.clip(end, 0.0, self.length))
        inside = (start <= self.progress) & (self.progress <= end)
        if inside.sum() > 1:
            return LineString(self.states[inside, :2])
        return substring(self.linestring, start, end)
