"""Batched geometry of the torch PDM scorer over ``S`` scenes of a :class:`MetricCacheBatch`: ego points, red-light
polygons, the centre-line projection, and the entry points of the contact search (:mod:`rewards.torch.pdm_contacts`;
map membership is :mod:`rewards.torch.pdm_map`).

Each function reproduces the arithmetic of the numba kernels of :mod:`rewards.pdm_metrics` operation by operation
(so float64 results are identical), with masks and compaction instead of loops; the centre-line projection only
tests the segment groups that its bounding boxes do not rule out. Compactions (``nonzero``) are the only
data-dependent host syncs, a few per call, none per time step.
"""

from __future__ import annotations

import math

import torch

from rewards.torch.metric_cache_batch import MetricCacheBatch
from rewards.torch.pdm_contacts import ContactQuery, first_events
from simulation.types import PACIFICA

#: Elements per chunk of the large pairwise tensors (bounds memory, not results).
CHUNK_ELEMENTS = 1 << 22


def ego_points(states: torch.Tensor) -> torch.Tensor:
    """``(..., 6, 2)`` ego corners (front-left, rear-left, rear-right, front-right), centre and rear axle of
    rear-axle states ``(..., 11)``, with the arithmetic of :func:`simulation.geometry.ego_box_corners`."""
    x, y, h = states[..., 0], states[..., 1], states[..., 2]
    d = PACIFICA.rear_axle_to_center
    cx, cy = x + d * torch.cos(h), y + d * torch.sin(h)
    c, s = torch.cos(h)[..., None], torch.sin(h)[..., None]
    hl, hw = PACIFICA.length / 2.0, PACIFICA.width / 2.0
    lon = torch.tensor([hl, -hl, -hl, hl], dtype=states.dtype, device=states.device)
    lat = torch.tensor([hw, hw, -hw, -hw], dtype=states.dtype, device=states.device)
    corners = torch.stack([cx[..., None] + c * lon - s * lat, cy[..., None] + s * lon + c * lat], -1)
    return torch.cat([corners, torch.stack([cx, cy], -1)[..., None, :], torch.stack([x, y], -1)[..., None, :]], -2)


def _crossings(px: torch.Tensor, py: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Even-odd test of points ``(P,)`` against edge lists ``(P, E, 4)`` (:func:`point_in_rings`' arithmetic)."""
    x1, y1, x2, y2 = edges.unbind(-1)
    px, py = px[:, None], py[:, None]
    straddle = (y1 > py) != (y2 > py)
    xc = x1 + (py - y1) * (x2 - x1) / torch.where(straddle, y2 - y1, torch.ones_like(y1))
    return ((straddle & (px < xc)).sum(-1) % 2) == 1


def _padded_by_scene(s_i: torch.Tensor, s_count: int) -> tuple[torch.Tensor, int]:
    """Slot ``(R,)`` of each selected item within its scene ``s_i`` (items of a scene in order) and the most items of
    any scene, to lay the items out as ``(S, width, ...)``."""
    per_scene = torch.bincount(s_i, minlength=s_count)
    width = int(per_scene.max()) if len(s_i) else 0
    start = torch.cumsum(per_scene, 0) - per_scene
    return torch.arange(len(s_i), device=s_i.device) - start[s_i], width


def _span(
    x: tuple[torch.Tensor, ...], y: tuple[torch.Tensor, ...], nx: torch.Tensor, ny: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of the projections ``nx * x + ny * y`` of four corners (given as columns)."""
    p = [nx * xi + ny * yi for xi, yi in zip(x, y, strict=True)]
    return torch.minimum(torch.minimum(p[0], p[1]), torch.minimum(p[2], p[3])), torch.maximum(
        torch.maximum(p[0], p[1]), torch.maximum(p[2], p[3])
    )


def overlap_shifted(a: torch.Tensor, shift: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Separating-axis test of quads ``a`` ``(..., 4, 2)`` moved by ``shift`` ``(..., 2)`` and ``b`` ``(..., 4, 2)``
    (touching counts); the axes come from the unmoved ``a`` and from ``b``, as the numba kernel."""
    moved = a + shift[..., None, :]
    mx, my = moved[..., 0].unbind(-1), moved[..., 1].unbind(-1)
    bx, by = b[..., 0].unbind(-1), b[..., 1].unbind(-1)
    separated = torch.zeros(a.shape[:-2], dtype=torch.bool, device=a.device)
    for px, py in ((a[..., 0].unbind(-1), a[..., 1].unbind(-1)), (bx, by)):
        for e in range(2):
            nx, ny = -(py[e + 1] - py[e]), px[e + 1] - px[e]
            a_lo, a_hi = _span(mx, my, nx, ny)
            b_lo, b_hi = _span(bx, by, nx, ny)
            separated |= (a_hi < b_lo) | (b_hi < a_lo)
    return ~separated


def first_contacts(
    batch: MetricCacheBatch,
    corners: torch.Tensor,
    velocity: torch.Tensor,
    active: torch.Tensor,
    t_count: int,
    steps: tuple[int, ...],
    dt: float = 0.1,
) -> torch.Tensor:
    """``(S, K, N)`` first event ``t * len(steps) + j`` at which the ego box ``(S, K, T, 4, 2)`` of step ``t``
    moved by ``velocity * steps[j] * dt`` touches track ``n`` at step ``t + steps[j]`` (:data:`NO_CONTACT`: none);
    only steps ``t < t_count`` where ``active`` ``(S, K, T)`` (:func:`rewards.torch.pdm_contacts.first_events`)."""
    return first_events(batch, corners, velocity, [ContactQuery(active, t_count, tuple(steps))], dt)[0]


def relative_angle(poses: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Angle ``[0, pi]`` between the heading of poses ``(..., 3)`` and the vector from their position to points
    ``(..., 2)`` (NaN where they coincide), as :func:`rewards.pdm_metrics.relative_angle`."""
    v = points - poses[..., :2]
    norm = torch.sqrt(v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1])
    dot = (torch.cos(poses[..., 2]) * v[..., 0] + torch.sin(poses[..., 2]) * v[..., 1]) / norm
    return torch.arccos(dot)


def sat_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Separating-axis test of quads ``(..., 4, 2)`` (broadcast), as :func:`simulation.geometry.boxes_overlap`."""
    a, b = torch.broadcast_tensors(a, b)
    return overlap_shifted(a, torch.zeros_like(a[..., 0, :]), b)


def _box_hits_polygon(corners: torch.Tensor, edges: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Quads ``(P, 4, 2)`` against polygons given by edges ``(P, E, 4)`` / ``(P, E)`` validity, as
    :func:`simulation.polygon_grid.box_intersects_polygon`: a corner inside, a polygon vertex inside the quad, or
    two edges crossing."""
    edges = torch.where(valid[..., None], edges, torch.zeros_like(edges))
    corner_in = torch.stack([_crossings(corners[:, i, 0], corners[:, i, 1], edges) for i in range(4)], -1).any(-1)
    x1, y1, x2, y2 = (e[:, None, :] for e in edges.unbind(-1))  # (P, 1, E)
    ci = corners[:, :, None, :]  # (P, 4, 1, 2)
    cj = torch.roll(corners, -1, dims=1)[:, :, None, :]
    cross = (cj[..., 0] - ci[..., 0]) * (y1 - ci[..., 1]) - (cj[..., 1] - ci[..., 1]) * (x1 - ci[..., 0])
    vertex_in = (valid & ~(cross < 0).any(1)).any(-1)
    ax, ay, bx, by = ci[..., 0], ci[..., 1], cj[..., 0], cj[..., 1]
    d1 = (x2 - x1) * (ay - y1) - (y2 - y1) * (ax - x1)
    d2 = (x2 - x1) * (by - y1) - (y2 - y1) * (bx - x1)
    d3 = (bx - ax) * (y1 - ay) - (by - ay) * (x1 - ax)
    d4 = (bx - ax) * (y2 - ay) - (by - ay) * (x2 - ax)
    crosses = (((d1 > 0) != (d2 > 0)) | (d1 == 0) | (d2 == 0)) & (((d3 > 0) != (d4 > 0)) | (d3 == 0) | (d4 == 0))
    edge_cross = (crosses & valid[:, None, :]).any(-1).any(-1)
    return corner_in | vertex_in | edge_cross


def red_light_contacts(batch: MetricCacheBatch, corners: torch.Tensor) -> torch.Tensor:
    """``(S, K)`` bool: the ego box ``(S, K, T, 4, 2)`` touches a red connector at some step ``t < 41``."""
    s_count, k_count, t_count = corners.shape[:3]
    out = torch.zeros((s_count, k_count), dtype=torch.bool, device=corners.device)
    if batch.red_mask.shape[2] == 0:
        return out
    lo, hi = corners.amin(-2), corners.amax(-2)  # (S, K, T, 2)
    bnd = batch.red_bounds[:, None, None]  # (S, 1, 1, R, 4)
    near = batch.red_mask[:, None, :t_count] & ~(
        (hi[..., 0, None] < bnd[..., 0]) | (lo[..., 0, None] > bnd[..., 2])
        | (hi[..., 1, None] < bnd[..., 1]) | (lo[..., 1, None] > bnd[..., 3])
    )  # fmt: skip
    s_i, k_i, t_i, r_i = torch.nonzero(near, as_tuple=True)
    hit = _box_hits_polygon(corners[s_i, k_i, t_i], batch.red_edges[s_i, r_i], batch.red_edge_valid[s_i, r_i])
    out.view(-1).scatter_reduce_(0, s_i * k_count + k_i, hit, reduce="amax")
    return out


#: Centre-line segments per bounding box of the projection's broad phase (as the numba kernel).
SEGMENT_CHUNK = 16


def _chunk_boxes(batch: MetricCacheBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, C, 4)`` bounds (min x, min y, max x, max y) of each group of :data:`SEGMENT_CHUNK` centre-line segments
    (padding segments repeat the last point, so they never widen a box) and ``(S, C + 1, 2)`` the first vertex of
    each group and the line's last vertex."""
    line = batch.centerline
    n_seg = line.shape[1] - 1
    n_chunks = -(-n_seg // SEGMENT_CHUNK)
    pad = n_chunks * SEGMENT_CHUNK - n_seg
    a, b = line[:, :-1], line[:, 1:]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    if pad:
        lo = torch.cat([lo, lo[:, -1:].expand(-1, pad, -1)], 1)
        hi = torch.cat([hi, hi[:, -1:].expand(-1, pad, -1)], 1)
    boxes = torch.cat(
        [lo.reshape(len(line), n_chunks, -1, 2).amin(2), hi.reshape(len(line), n_chunks, -1, 2).amax(2)], -1
    )
    return boxes, torch.cat([line[:, :-1:SEGMENT_CHUNK], line[:, -1:]], 1)


def _chunk_bounds(batch: MetricCacheBatch, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Of points ``(S, P, 2)``: ``(S, P, C)`` squared distance to each segment group's bounding box (at most that of
    any of its segments) and ``(S, P, 1)`` squared distance to the nearest group start vertex (at least that of the
    nearest segment)."""
    boxes, starts = _chunk_boxes(batch)
    px, py = pts[..., 0, None], pts[..., 1, None]  # (S, P, 1)
    gx = torch.clamp_min(torch.maximum(boxes[:, None, :, 0] - px, px - boxes[:, None, :, 2]), 0.0)
    gy = torch.clamp_min(torch.maximum(boxes[:, None, :, 1] - py, py - boxes[:, None, :, 3]), 0.0)
    vx, vy = starts[:, None, :, 0] - px, starts[:, None, :, 1] - py
    return gx * gx + gy * gy, (vx * vx + vy * vy).amin(-1, keepdim=True)


def centerline_distance_exceeds(batch: MetricCacheBatch, points: torch.Tensor, limit: float) -> torch.Tensor:
    """``(S, ...)`` bool: the distance of points ``(S, ..., 2)`` to each scene's centre line (that of
    :func:`project_on_centerline`) exceeds ``limit``. The bounds of :func:`_chunk_bounds` decide, with a relative
    margin far above rounding; only the points between them are projected."""
    shape = points.shape[:-1]
    s_count = shape[0]
    pts = points.reshape(s_count, -1, 2)
    lower, upper = _chunk_bounds(batch, pts)
    lim2 = limit * limit
    out = lower.amin(-1) > lim2 * (1.0 + 1e-9) + 1e-12  # (S, P)
    unsure = ~out & (upper[..., 0] >= lim2 * (1.0 - 1e-9) - 1e-12)
    s_i, p_i = torch.nonzero(unsure, as_tuple=True)
    if len(s_i):
        slot, width = _padded_by_scene(s_i, s_count)
        rows = torch.zeros((s_count, width, 2), dtype=pts.dtype, device=pts.device)
        rows[s_i, slot] = pts[s_i, p_i]
        _, distance = project_on_centerline(batch, rows)
        out[s_i, p_i] = distance[s_i, slot] > limit
    return out.reshape(shape)


def project_on_centerline(batch: MetricCacheBatch, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Arc length and distance ``(S, ...)`` of points ``(S, ..., 2)`` on each scene's centre line (nearest point,
    first segment on ties), with the arithmetic of the numba projection kernel.

    Broad phase: a group of :data:`SEGMENT_CHUNK` segments is skipped when its bounding box lies farther from the
    point than the nearest group start vertex (with a relative margin far above rounding); the segments of the
    other groups (at most ``W`` per point, the largest count) are tested in order."""
    shape = points.shape[:-1]
    s_count = shape[0]
    pts = points.reshape(s_count, -1, 2)
    p_count = pts.shape[1]
    line, cum = batch.centerline, batch.centerline_s
    n_seg = line.shape[1] - 1
    px, py = pts[..., 0, None], pts[..., 1, None]  # (S, P, 1)
    lower, upper = _chunk_bounds(batch, pts)
    keep = lower <= upper * (1.0 + 1e-9) + 1e-9  # (S, P, C)
    width = max(int(keep.sum(-1).max()), 1) if keep.numel() else 1
    chunk = torch.sort(keep.to(torch.uint8), dim=-1, descending=True, stable=True).indices[..., :width]
    kept = torch.gather(keep, -1, chunk)  # (S, P, W), kept groups first, in order
    seg = (chunk[..., None] * SEGMENT_CHUNK + torch.arange(SEGMENT_CHUNK, device=pts.device)).flatten(-2)
    ok = kept.repeat_interleave(SEGMENT_CHUNK, -1) & (seg < n_seg)
    seg = torch.where(ok, seg, torch.zeros_like(seg))
    ok = ok & torch.gather(batch.segment_valid[:, None].expand(-1, p_count, -1), 2, seg)
    flat = seg.reshape(s_count, -1)

    def at(v: torch.Tensor) -> torch.Tensor:
        return torch.gather(v, 1, flat).reshape(seg.shape)

    ax, ay = at(line[:, :-1, 0]), at(line[:, :-1, 1])
    bx, by = at(line[:, 1:, 0]) - ax, at(line[:, 1:, 1]) - ay
    len2 = torch.clamp_min(bx * bx + by * by, 1e-12)
    t = torch.clamp(((px - ax) * bx + (py - ay) * by) / len2, 0.0, 1.0)
    dx, dy = ax + t * bx - px, ay + t * by - py
    d2 = torch.where(ok, dx * dx + dy * dy, torch.full_like(t, math.inf))
    best = d2.amin(-1, keepdim=True)
    first = torch.where(d2 == best, seg, torch.full_like(seg, n_seg)).amin(-1, keepdim=True)  # first on ties
    pick = torch.where(seg == first, torch.arange(seg.shape[-1], device=pts.device), seg.shape[-1]).amin(-1, True)
    arc = torch.gather(cum[:, :-1], 1, first.reshape(s_count, -1)).reshape(first.shape)
    s_out = arc + torch.gather(t, 2, pick) * torch.sqrt(torch.gather(len2, 2, pick))
    return s_out[..., 0].reshape(shape), torch.sqrt(best[..., 0]).reshape(shape)
