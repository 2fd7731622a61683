"""Small polyline helpers for the synthetic city: Bezier curves, offsets and resampling."""

from __future__ import annotations

import numpy as np

from simulation.geometry import polyline_lengths


def unit(angle: float | np.ndarray) -> np.ndarray:
    """Unit vector(s) ``(..., 2)`` of heading(s)."""
    a = np.asarray(angle, dtype=np.float64)
    return np.stack([np.cos(a), np.sin(a)], -1)


def cubic_bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, n: int) -> np.ndarray:
    """``(n, 2)`` points of the cubic Bezier curve with control points ``(2,)`` each."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    u = 1.0 - t
    return u**3 * p0 + 3 * u**2 * t * p1 + 3 * u * t**2 * p2 + t**3 * p3


def hermite_turn(p0: np.ndarray, h0: float, p3: np.ndarray, h3: float, step: float = 1.0) -> np.ndarray:
    """Smooth curve ``(N, 2)`` from ``p0`` leaving with heading ``h0`` to ``p3`` arriving with heading ``h3``.

    The tangent length follows the circular-arc approximation ``4/3 tan(theta/4) r`` so that a 90 degree
    turn between points on a circle is close to that circle.
    """
    chord = float(np.linalg.norm(p3 - p0))
    theta = abs(float(np.angle(np.exp(1j * (h3 - h0)))))
    if theta < 1e-3:
        k = chord / 3.0
    elif theta > np.pi - 0.2:  # hairpin (U-turn): loop out ahead of both ends
        k = max(chord, 4.0) * 1.6
    else:
        r = chord / (2.0 * np.sin(theta / 2.0))
        k = 4.0 / 3.0 * np.tan(theta / 4.0) * r
    n = max(int(np.ceil((chord + 2 * k) / step)), 8)
    return resample(cubic_bezier(p0, p0 + k * unit(h0), p3 - k * unit(h3), p3, 4 * n), step)


def resample(points: np.ndarray, step: float) -> np.ndarray:
    """Resample a polyline ``(N, 2)`` at (nearly) uniform arc-length spacing ``step`` keeping both ends."""
    cum = polyline_lengths(points)
    n = max(int(np.ceil(cum[-1] / step)), 1) + 1
    s = np.linspace(0.0, cum[-1], n)
    return np.stack([np.interp(s, cum, points[:, 0]), np.interp(s, cum, points[:, 1])], -1)


def vertex_normals(points: np.ndarray) -> np.ndarray:
    """Left unit normals ``(N, 2)`` at the vertices of a polyline ``(N, 2)`` (mean of adjacent segments)."""
    d = np.diff(points, axis=0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    t = np.concatenate([d[:1], d[:-1] + d[1:], d[-1:]], 0)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return np.stack([-t[:, 1], t[:, 0]], -1)


def offset(points: np.ndarray, distance: float | np.ndarray) -> np.ndarray:
    """Polyline ``(N, 2)`` shifted left by ``distance`` (scalar or ``(N,)``; negative = right)."""
    return points + vertex_normals(points) * np.asarray(distance, dtype=np.float64).reshape(-1, 1)


def headings(points: np.ndarray) -> np.ndarray:
    """Heading ``(N,)`` at each vertex of a polyline ``(N, 2)`` (tangent direction)."""
    n = vertex_normals(points)
    return np.arctan2(-n[:, 0], n[:, 1])


def curvature(points: np.ndarray) -> np.ndarray:
    """Unsigned curvature ``(N,)`` at the vertices of a polyline ``(N, 2)`` (heading change per metre)."""
    h = np.unwrap(headings(points))
    s = polyline_lengths(points)
    k = np.abs(np.gradient(h, np.maximum(s, np.arange(len(s)) * 1e-9))) if len(s) > 2 else np.zeros(len(s))
    return np.nan_to_num(k)


def strip_polygon(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Closed ring ``(M, 2)`` of the area between a left and a right polyline of the same direction."""
    return np.concatenate([left, right[::-1], left[:1]], 0)
