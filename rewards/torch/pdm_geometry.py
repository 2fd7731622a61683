"""Batched geometry of the torch PDM scorer: map membership of ego points, first contacts with tracks, red-light
polygons and the centre-line projection, over ``S`` scenes of a :class:`MetricCacheBatch`.

Each function reproduces the arithmetic of the numba kernels of :mod:`rewards.pdm_metrics` and
:mod:`simulation.polygon_grid` operation by operation (so float64 results are identical), with masks and
padding instead of loops: a grid cell lookup and a compacted list of (point, polygon) pairs for the even-odd
test, a centre-distance broad phase and a compacted separating-axis test for contacts.
"""

from __future__ import annotations

import math

import torch

from rewards.torch.metric_cache_batch import MetricCacheBatch
from simulation.types import PACIFICA

#: Ego half diagonal, the broad-phase radius of the contact tests (as the numba kernel).
EGO_RADIUS = math.hypot(PACIFICA.length / 2.0, PACIFICA.width / 2.0)
#: Elements per chunk of the large pairwise tensors (bounds memory, not results).
CHUNK_ELEMENTS = 1 << 22
#: Value of "no contact" in the first-contact tensors.
NO_CONTACT = torch.iinfo(torch.int64).max


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


def map_hits(batch: MetricCacheBatch, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map polygons containing points ``(S, P, 2)``: ``(S, P, G)`` polygon indices of the point's grid cell
    (``-1``: none) and ``(S, P, G)`` bool, the point lies in that polygon."""
    meta = batch.grid_meta
    ox, oy, cell = meta[:, 0, None], meta[:, 1, None], meta[:, 2, None]
    nx, ny = meta[:, 3, None].long(), meta[:, 4, None].long()
    ix = torch.floor((points[..., 0] - ox) / cell).long()
    iy = torch.floor((points[..., 1] - oy) / cell).long()
    inside_grid = (ix >= 0) & (iy >= 0) & (ix < nx) & (iy < ny)
    c = torch.where(inside_grid, ix * ny + iy, torch.zeros_like(ix))
    s_count, p_count = c.shape
    g = batch.grid_cells.shape[-1]
    flat_c = (c + torch.arange(s_count, device=c.device)[:, None] * batch.grid_cells.shape[1]).reshape(-1)
    poly = batch.grid_cells.reshape(-1, g)[flat_c].reshape(s_count, p_count, g)
    full = batch.grid_full.reshape(-1, g)[flat_c].reshape(s_count, p_count, g)
    entry = batch.grid_entry.reshape(-1, g)[flat_c].reshape(s_count, p_count, g)
    poly = torch.where(inside_grid[..., None], poly, torch.full_like(poly, -1))
    hit = full & (poly >= 0)
    s_idx, p_idx, g_idx = torch.nonzero((poly >= 0) & ~full, as_tuple=True)
    e_idx = entry[s_idx, p_idx, g_idx]
    start = batch.entry_offsets[s_idx, e_idx]
    count = batch.entry_offsets[s_idx, e_idx + 1] - start
    pair = torch.repeat_interleave(torch.arange(len(count), device=points.device), count)
    first = torch.cumsum(count, 0) - count
    edge = start[pair] + torch.arange(len(pair), device=points.device) - first[pair]
    x1, y1, x2, y2 = batch.cell_edges[s_idx[pair], edge].unbind(-1)
    pts = points[s_idx, p_idx][pair]
    px, py = pts[:, 0], pts[:, 1]
    straddle = (y1 > py) != (y2 > py)
    xc = x1 + (py - y1) * (x2 - x1) / torch.where(straddle, y2 - y1, torch.ones_like(y1))
    crossings = torch.zeros(len(count), dtype=torch.int64, device=points.device)
    crossings.index_add_(0, pair, (straddle & (px < xc)).long())
    hit[s_idx, p_idx, g_idx] = crossings % 2 == 1
    return poly, hit


def ego_area(batch: MetricCacheBatch, points: torch.Tensor) -> torch.Tensor:
    """Ego-area flags ``(S, K, T, 5)`` (:class:`rewards.pdm_metrics.EgoArea`) of ego points ``(S, K, T, 6, 2)``."""
    shape = points.shape[:-2]
    poly, hit = map_hits(batch, points.reshape(shape[0], -1, 2))
    poly = poly.reshape(*shape, 6, -1)
    hit = hit.reshape(*shape, 6, -1)
    cat = torch.gather(batch.map_categories, 1, poly.clamp_min(0).reshape(shape[0], -1)).reshape(poly.shape)
    cat = torch.where(hit, cat, torch.zeros_like(cat))
    drivable_corners = ((cat[..., :4, :] & 1) > 0).any(-1).sum(-1)
    lane = torch.where((cat[..., :4, :] & 2) > 0, poly[..., :4, :], torch.full_like(poly[..., :4, :], -1))
    ids = torch.sort(lane.flatten(-2), dim=-1).values
    new = torch.cat([ids[..., :1] >= 0, (ids[..., 1:] != ids[..., :-1]) & (ids[..., 1:] >= 0)], -1)
    n_lanes = new.sum(-1)
    first = lane[..., 0, :]  # (..., G) lanes of corner 0, each must be held by corners 1, 2, 3
    held = torch.ones_like(first, dtype=torch.bool)
    for p in range(1, 4):
        held = held & (first[..., :, None] == lane[..., p, None, :]).any(-1)
    all_four = ((first >= 0) & held).any(-1)
    return torch.stack(
        [
            (n_lanes > 1) & ~all_four,
            drivable_corners < 4,
            ~((cat[..., 4, :] & 4) > 0).any(-1),
            ((cat[..., 4, :] & 8) > 0).any(-1),
            ((cat[..., 5, :] & 8) > 0).any(-1),
        ],
        -1,
    )


def overlap_shifted(a: torch.Tensor, shift: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Separating-axis test of quads ``a`` ``(..., 4, 2)`` moved by ``shift`` ``(..., 2)`` and ``b`` ``(..., 4, 2)``
    (touching counts); the axes come from the unmoved ``a`` and from ``b``, as the numba kernel."""
    moved = a + shift[..., None, :]
    separated = torch.zeros(a.shape[:-2], dtype=torch.bool, device=a.device)
    for poly in (a, b):
        for e in range(2):
            nx = -(poly[..., e + 1, 1] - poly[..., e, 1])
            ny = poly[..., e + 1, 0] - poly[..., e, 0]
            pa = nx[..., None] * moved[..., 0] + ny[..., None] * moved[..., 1]
            pb = nx[..., None] * b[..., 0] + ny[..., None] * b[..., 1]
            separated |= (pa.amax(-1) < pb.amin(-1)) | (pb.amax(-1) < pa.amin(-1))
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
    only steps ``t < t_count`` where ``active`` ``(S, K, T)``."""
    s_count, k_count = corners.shape[:2]
    n_count = batch.agent_boxes.shape[2]
    first = torch.full((s_count, k_count, n_count), NO_CONTACT, dtype=torch.int64, device=corners.device)
    if n_count == 0:
        return first
    ego = corners[:, :, :t_count]
    ego_c = ego.mean(-2)
    radius = (EGO_RADIUS + batch.agent_radius + 1e-6)[:, None, None, :]  # (S, 1, 1, N)
    t_idx = torch.arange(t_count, device=corners.device)
    for j, step in enumerate(steps):
        shift = velocity[:, :, :t_count] * step * dt  # (S, K, Tc, 2)
        agent_c = batch.agent_boxes[:, step : step + t_count, None, :, :2].transpose(1, 2)  # (S, 1, Tc, N, 2)
        ex = (ego_c[..., 0] + shift[..., 0])[..., None] - agent_c[..., 0]
        ey = (ego_c[..., 1] + shift[..., 1])[..., None] - agent_c[..., 1]
        near = ex * ex + ey * ey <= radius * radius
        near &= active[:, :, :t_count, None] & batch.agent_valid[:, None, step : step + t_count, :]
        s_i, k_i, t_i, n_i = torch.nonzero(near, as_tuple=True)
        touch = overlap_shifted(ego[s_i, k_i, t_i], shift[s_i, k_i, t_i], batch.agent_corners[s_i, t_i + step, n_i])
        event = t_idx[t_i] * len(steps) + j
        event = torch.where(touch, event, torch.full_like(event, NO_CONTACT))
        flat = (s_i * k_count + k_i) * n_count + n_i
        first.view(-1).scatter_reduce_(0, flat, event, reduce="amin")
    return first


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


def project_on_centerline(batch: MetricCacheBatch, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Arc length and distance ``(S, ...)`` of points ``(S, ..., 2)`` on each scene's centre line (nearest point,
    first segment on ties), with the arithmetic of the numba projection kernel."""
    shape = points.shape[:-1]
    pts = points.reshape(shape[0], -1, 2)
    line, cum = batch.centerline, batch.centerline_s
    ax, ay = line[:, None, :-1, 0], line[:, None, :-1, 1]  # (S, 1, C - 1)
    bx, by = line[:, None, 1:, 0] - ax, line[:, None, 1:, 1] - ay
    len2 = torch.clamp_min(bx * bx + by * by, 1e-12)
    seg_len = torch.sqrt(len2)
    invalid = ~batch.segment_valid[:, None]
    s_out, d_out = torch.empty(pts.shape[:2], dtype=pts.dtype, device=pts.device), torch.empty_like(pts[..., 0])
    step = max(1, CHUNK_ELEMENTS // max(1, shape[0] * ax.shape[-1]))
    for a in range(0, pts.shape[1], step):
        px, py = pts[:, a : a + step, 0, None], pts[:, a : a + step, 1, None]
        t = torch.clamp(((px - ax) * bx + (py - ay) * by) / len2, 0.0, 1.0)
        dx, dy = ax + t * bx - px, ay + t * by - py
        d2 = torch.where(invalid, torch.full_like(t, math.inf), dx * dx + dy * dy)
        best, k = d2.min(-1, keepdim=True)
        arc = torch.gather(cum[:, None, :-1].expand_as(t), 2, k)
        s_out[:, a : a + step] = (arc + torch.gather(t, 2, k) * torch.gather(seg_len.expand_as(t), 2, k))[..., 0]
        d_out[:, a : a + step] = torch.sqrt(best[..., 0])
    return s_out.reshape(shape), d_out.reshape(shape)
