"""Vectorised SE2 geometry: frame transforms, oriented boxes, separating-axis overlap.

All functions broadcast over leading dimensions. Poses are ``(..., 3)`` = (x, y, heading).
"""

from __future__ import annotations

import numpy as np

from simulation.types import PACIFICA, AgentIndex, VehicleParameters


def normalize_angle(angle: np.ndarray | float) -> np.ndarray:
    """Wrap angles to ``[-pi, pi)``."""
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


def rotation_matrices(heading: np.ndarray) -> np.ndarray:
    """``(..., 2, 2)`` rotation matrices for ``(...)`` headings."""
    c, s = np.cos(heading), np.sin(heading)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def transform_points_to_local(points: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Express global points ``(..., 2)`` in the frame of ``origin`` ``(..., 3)``.

    Leading dimensions broadcast: for ``(B, N, 2)`` points of ``B`` frames pass ``origin[:, None]``.
    """
    dx, dy = points[..., 0] - origin[..., 0], points[..., 1] - origin[..., 1]
    c, s = np.cos(origin[..., 2]), np.sin(origin[..., 2])
    return np.stack([c * dx + s * dy, -s * dx + c * dy], -1)


def transform_points_to_global(points: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Inverse of :func:`transform_points_to_local` (same broadcasting)."""
    c, s = np.cos(origin[..., 2]), np.sin(origin[..., 2])
    x, y = points[..., 0], points[..., 1]
    return np.stack([c * x - s * y + origin[..., 0], s * x + c * y + origin[..., 1]], -1)


def global_to_local(poses: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Express global poses ``(..., 3)`` in the frame of ``origin`` ``(..., 3)`` (leading dims broadcast)."""
    xy = transform_points_to_local(poses[..., :2], origin)
    return np.concatenate([xy, normalize_angle(poses[..., 2] - origin[..., 2])[..., None]], -1)


def local_to_global(poses: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Inverse of :func:`global_to_local`."""
    xy = transform_points_to_global(poses[..., :2], origin)
    return np.concatenate([xy, normalize_angle(poses[..., 2] + origin[..., 2])[..., None]], -1)


def rotate_vectors(vectors: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Rotate 2D vectors ``(..., 2)`` by ``angle`` (broadcast against ``vectors[..., 0]``)."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = vectors[..., 0], vectors[..., 1]
    return np.stack([c * x - s * y, s * x + c * y], -1)


def rear_axle_to_center(poses: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """Shift rear-axle poses ``(..., 3)`` forward to the box centre."""
    d = vehicle.rear_axle_to_center
    out = np.array(poses, dtype=np.float64, copy=True)
    out[..., 0] += d * np.cos(poses[..., 2])
    out[..., 1] += d * np.sin(poses[..., 2])
    return out


def center_to_rear_axle(poses: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """Inverse of :func:`rear_axle_to_center`."""
    d = vehicle.rear_axle_to_center
    out = np.array(poses, dtype=np.float64, copy=True)
    out[..., 0] -= d * np.cos(poses[..., 2])
    out[..., 1] -= d * np.sin(poses[..., 2])
    return out


def box_corners(x: np.ndarray, y: np.ndarray, heading: np.ndarray, length: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Corners ``(..., 4, 2)`` of oriented boxes, counter-clockwise from front-left.

    Order: front-left, rear-left, rear-right, front-right.
    """
    c, s = np.cos(heading), np.sin(heading)
    hl, hw = np.asarray(length) / 2.0, np.asarray(width) / 2.0
    lon = np.stack([hl, -hl, -hl, hl], -1)
    lat = np.stack([hw, hw, -hw, -hw], -1)
    cx = np.asarray(x)[..., None] + c[..., None] * lon - s[..., None] * lat
    cy = np.asarray(y)[..., None] + s[..., None] * lon + c[..., None] * lat
    return np.stack([cx, cy], -1)


def agent_box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners ``(..., 4, 2)`` of agent boxes ``(..., 7)`` packed by :class:`AgentIndex`."""
    return box_corners(
        boxes[..., AgentIndex.X],
        boxes[..., AgentIndex.Y],
        boxes[..., AgentIndex.HEADING],
        boxes[..., AgentIndex.LENGTH],
        boxes[..., AgentIndex.WIDTH],
    )


def ego_box_corners(poses: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """Corners ``(..., 4, 2)`` of the ego footprint for rear-axle poses ``(..., 3)``."""
    c = rear_axle_to_center(poses, vehicle)
    shape = poses.shape[:-1]
    return box_corners(c[..., 0], c[..., 1], c[..., 2], np.full(shape, vehicle.length), np.full(shape, vehicle.width))


def boxes_overlap(corners_a: np.ndarray, corners_b: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Separating-axis test between oriented rectangles ``(..., 4, 2)`` (broadcast).

    Two rectangles intersect (touching counts, within ``eps``) unless one of their four edge normals
    separates the projections. Returns a bool array of the broadcast leading shape.
    """
    a, b = np.broadcast_arrays(corners_a, corners_b)
    edges = np.concatenate([a[..., 1:3, :] - a[..., 0:2, :], b[..., 1:3, :] - b[..., 0:2, :]], -2)  # (..., 4, 2)
    axes = np.stack([-edges[..., 1], edges[..., 0]], -1)  # (..., 4, 2) normals
    proj_a = np.einsum("...kd,...cd->...kc", axes, a)  # (..., 4 axes, 4 corners)
    proj_b = np.einsum("...kd,...cd->...kc", axes, b)
    norm = np.linalg.norm(axes, axis=-1)
    tol = eps * norm
    separated = (proj_a.max(-1) < proj_b.min(-1) - tol) | (proj_b.max(-1) < proj_a.min(-1) - tol)
    return ~separated.any(-1)


def polyline_lengths(points: np.ndarray) -> np.ndarray:
    """Cumulative arc length ``(..., N)`` of polylines ``(..., N, 2)`` (starting at 0)."""
    seg = np.linalg.norm(np.diff(points[..., :2], axis=-2), axis=-1)
    return np.concatenate([np.zeros(seg.shape[:-1] + (1,)), np.cumsum(seg, -1)], -1)


def polyline_headings(points: np.ndarray) -> np.ndarray:
    """Heading ``(N,)`` of a polyline ``(N, 2)`` at each vertex (last segment repeated)."""
    d = np.diff(points[:, :2], axis=0)
    h = np.arctan2(d[:, 1], d[:, 0])
    return np.concatenate([h, h[-1:]]) if len(h) else np.zeros(len(points))


def project_on_polyline(points: np.ndarray, polyline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc-length and signed lateral offset (left positive) of points ``(..., 2)`` on a polyline ``(N, 2)``.

    Vectorised over points and segments: each point takes its nearest segment.
    """
    p = points[..., None, :2]  # (..., 1, 2)
    a, b = polyline[:-1, :2], polyline[1:, :2]
    ab = b - a
    seg_len2 = np.maximum((ab**2).sum(-1), 1e-12)
    t = np.clip(((p - a) * ab).sum(-1) / seg_len2, 0.0, 1.0)  # (..., S)
    closest = a + t[..., None] * ab
    dist2 = ((p - closest) ** 2).sum(-1)
    k = dist2.argmin(-1)
    cum = polyline_lengths(polyline)
    tk = np.take_along_axis(t, k[..., None], -1)[..., 0]
    s = cum[k] + tk * np.sqrt(seg_len2[k])
    rel = points[..., :2] - a[k]
    cross = ab[k, 0] * rel[..., 1] - ab[k, 1] * rel[..., 0]
    lateral = np.sign(cross) * np.sqrt(np.take_along_axis(dist2, k[..., None], -1)[..., 0])
    return s, lateral


def interpolate_polyline(polyline: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Poses ``(..., 3)`` at arc lengths ``s`` along a polyline ``(N, 2)`` (clamped to its ends)."""
    cum = polyline_lengths(polyline)
    s = np.clip(s, 0.0, cum[-1])
    x = np.interp(s, cum, polyline[:, 0])
    y = np.interp(s, cum, polyline[:, 1])
    k = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(polyline) - 2)
    d = polyline[k + 1, :2] - polyline[k, :2]
    return np.stack([x, y, np.arctan2(d[..., 1], d[..., 0])], -1)
