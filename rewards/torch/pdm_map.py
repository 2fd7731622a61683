"""Map membership of ego points for the batched torch PDM scorer: the ego-area flags of
:func:`rewards.pdm_metrics.ego_area` over ``S`` scenes of a :class:`MetricCacheBatch`.

A point reads one word, that of its sub-cell (precomputed at collation: the categories and the lane of the polygons
covering it); only the points of sub-cells that an edge meets (or that several lanes cover) take the even-odd test,
and only against the polygons whose edges meet the sub-cell, with the edges that the ray of its sub-cell row may
cross. The points are handled as flat lists (scene index, point), so nothing is padded per scene. The arithmetic is
that of the numba grid lookup, so float64 results are identical.
"""

from __future__ import annotations

import torch

from rewards.torch.map_grid import SUB_CELLS, SUBCELL_SHIFTS, WORD_SHIFTS
from rewards.torch.metric_cache_batch import MetricCacheBatch


def grid_cells(
    batch: MetricCacheBatch, s_i: torch.Tensor | None, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid cell ``(R,)`` (``nx * ny`` off the grid) and sub-cell bit ``(R,)`` of points ``(R, 2)`` of scenes
    ``s_i`` ``(R,)`` (or of points ``(S, P, 2)`` of every scene, ``s_i`` None: ``(S * P,)`` each), with the
    arithmetic of the numba grid lookup."""
    if s_i is None:
        ox, oy, cell, nx, ny = (v[:, None] for v in batch.grid_meta.unbind(-1))
        c, bit = _cells(points[..., 0], points[..., 1], ox, oy, cell, nx.long(), ny.long())
        return c.reshape(-1), bit.reshape(-1)
    ox, oy, cell, nx, ny = batch.grid_meta.index_select(0, s_i).unbind(-1)
    return _cells(points[:, 0], points[:, 1], ox, oy, cell, nx.long(), ny.long())


def _cells(
    x: torch.Tensor, y: torch.Tensor, ox: torch.Tensor, oy: torch.Tensor, cell: torch.Tensor, nx: torch.Tensor,
    ny: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    fx, fy = (x - ox) / cell, (y - oy) / cell
    ix, iy = torch.floor(fx).long(), torch.floor(fy).long()
    inside_grid = (ix >= 0) & (iy >= 0) & (ix < nx) & (iy < ny)
    c = torch.where(inside_grid, ix * ny + iy, nx * ny)
    sx = ((fx - ix) * SUB_CELLS).long().clamp(0, SUB_CELLS - 1)
    sy = ((fy - iy) * SUB_CELLS).long().clamp(0, SUB_CELLS - 1)
    return c, sx * SUB_CELLS + sy


def polygon_hits(
    batch: MetricCacheBatch,
    s_i: torch.Tensor,
    points: torch.Tensor,
    cells: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map polygons containing points ``(R, 2)`` of scenes ``s_i``: ``(R, G)`` the polygon indices of the point's
    grid cell (``-1``: none) and ``(R, G)`` their category bits where the point lies in the polygon (0 elsewhere).
    ``cells``: :func:`grid_cells` of the points when already known.

    The sub-cell of the point decides (the "inside" bits of :attr:`MetricCacheBatch.grid_words`) unless an edge of
    the polygon meets it (the "test" bits); only those (point, polygon) pairs go through the even-odd test."""
    c, bit = grid_cells(batch, s_i, points) if cells is None else cells
    g = batch.grid_words.shape[-1]
    flat_c = s_i * batch.grid_words.shape[1] + c
    word = batch.grid_words.reshape(-1, g).index_select(0, flat_c)  # (R, G)
    hit = (word >> bit[:, None]) & 1
    r_i, g_i = torch.nonzero((word >> (bit[:, None] + WORD_SHIFTS["test"])) & 1, as_tuple=True)
    if len(r_i):
        entry = batch.grid_entry.reshape(-1).index_select(0, flat_c[r_i] * g + g_i)
        rows = entry * SUB_CELLS + bit[r_i] % SUB_CELLS  # the edge list of the entry for the sub-cell's row
        inside = _entry_crossings(batch, s_i[r_i], rows, points.index_select(0, r_i))
        hit.view(-1).index_copy_(0, r_i * g + g_i, inside.long())
    cat = torch.where(hit.bool(), (word >> WORD_SHIFTS["category"]) & 15, torch.zeros_like(word))
    return word >> WORD_SHIFTS["poly"], cat


def _entry_crossings(batch: MetricCacheBatch, s_i: torch.Tensor, rows: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Even-odd test of points ``(Q, 2)`` of scenes ``s_i`` against the edge lists ``rows`` (entry ``q``, sub-cell
    row ``sy``: ``q * SUB_CELLS + sy``)."""
    width = batch.entry_offsets.shape[1]
    start = batch.entry_offsets.reshape(-1).index_select(0, s_i * width + rows)
    count = batch.entry_offsets.reshape(-1).index_select(0, s_i * width + rows + 1) - start
    total = int(count.sum())
    base = s_i * batch.cell_edges.shape[1] + start - (torch.cumsum(count, 0) - count)
    edge = torch.repeat_interleave(base, count, output_size=total) + torch.arange(total, device=pts.device)
    x1, y1, x2, y2 = batch.cell_edges.reshape(-1, 4).index_select(0, edge).unbind(-1)
    pair = torch.repeat_interleave(torch.arange(len(count), device=pts.device), count, output_size=total)
    px, py = pts[:, 0].index_select(0, pair), pts[:, 1].index_select(0, pair)
    straddle = (y1 > py) != (y2 > py)
    xc = x1 + (py - y1) * (x2 - x1) / torch.where(straddle, y2 - y1, torch.ones_like(y1))
    crossings = torch.zeros(len(count), dtype=torch.int64, device=pts.device)
    crossings.index_add_(0, pair, (straddle & (px < xc)).long())
    return crossings % 2 == 1


def _categories(cat: torch.Tensor) -> torch.Tensor:
    """``(...)`` bitwise or over the last axis of category bits ``(..., G)``."""
    return sum(((cat & b).amax(-1) > 0).long() * b for b in (1, 2, 4, 8))  # type: ignore[return-value]


def point_classes(
    batch: MetricCacheBatch, points: torch.Tensor, bits: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of points ``(S, P, 2)``: ``(S, P)`` category bits of the map polygons containing each, the lane containing it
    (``-1``: none or several) and whether several lanes do. Only the category ``bits`` are sure to be exact, and the
    lanes only when ``bits`` has the lane bit 2: the others may be missing where an edge is near.

    A point reads its sub-cell's word (:attr:`MetricCacheBatch.grid_subcells`); the points of sub-cells that need the
    exact test go through :func:`polygon_hits`."""
    s_count, p_count = points.shape[:2]
    s_all = torch.arange(s_count, device=points.device).repeat_interleave(p_count)
    c, bit = grid_cells(batch, None, points)
    sub = batch.grid_subcells
    word = sub.reshape(-1).index_select(0, s_all * sub.shape[1] + c * (SUB_CELLS * SUB_CELLS) + bit)
    cat = (word >> SUBCELL_SHIFTS["category"]) & 15
    lane = word >> SUBCELL_SHIFTS["lane"]
    several = torch.zeros_like(word, dtype=torch.bool)
    if bits & 2:
        exact = (word >> SUBCELL_SHIFTS["exact"]) & 1
    else:
        exact = (word >> SUBCELL_SHIFTS["exact_category"]) & bits
    (r_i,) = torch.nonzero(exact, as_tuple=True)
    if len(r_i):
        poly, hit_cat = polygon_hits(batch, s_all[r_i], points.reshape(-1, 2).index_select(0, r_i), (c[r_i], bit[r_i]))
        cat[r_i] = _categories(hit_cat)
        is_lane = (hit_cat & 2) > 0
        count = is_lane.sum(-1)
        lane[r_i] = torch.where(count == 1, torch.where(is_lane, poly, -1).amax(-1), -1)
        several[r_i] = count > 1
    return cat.reshape(s_count, p_count), lane.reshape(s_count, p_count), several.reshape(s_count, p_count)


def ego_area(batch: MetricCacheBatch, points: torch.Tensor, contact_columns: bool = True) -> torch.Tensor:
    """Ego-area flags ``(S, K, T, 5)`` (:class:`rewards.pdm_metrics.EgoArea`) of ego points ``(S, K, T, 6, 2)``
    (:func:`point_classes`; the rows with a corner in several lanes compare the corners' lane sets).

    Without ``contact_columns`` the columns that only matter at contacts, MULTIPLE_LANES and
    REAR_AXLE_IN_INTERSECTION, are left False (:func:`ego_area_rows` gives them for chosen rows), and the corners
    are only tested exactly near the edges of drivable polygons."""
    lead = points.shape[:-2]
    corners = points[..., :4, :].flatten(1, -2)
    cat, lane, several_at = (v.reshape(*lead, 4) for v in point_classes(batch, corners, 15 if contact_columns else 1))
    centre = point_classes(batch, points[..., 4, :].flatten(1, -2), 4 | 8)[0].reshape(lead)
    drivable = cat[..., 0] & cat[..., 1] & cat[..., 2] & cat[..., 3] & 1
    if not contact_columns:
        false = torch.zeros_like(drivable, dtype=torch.bool)
        return torch.stack([false, drivable == 0, (centre & 4) == 0, (centre & 8) > 0, false], -1)
    rear = point_classes(batch, points[..., 5, :].flatten(1, -2), 8)[0].reshape(lead)
    big = torch.iinfo(lane.dtype).max
    l0, l1, l2, l3 = (lane[..., p] for p in range(4))
    some = [torch.where(v >= 0, v, big) for v in (l0, l1, l2, l3)]
    several = torch.minimum(torch.minimum(some[0], some[1]), torch.minimum(some[2], some[3])) < torch.maximum(
        torch.maximum(l0, l1), torch.maximum(l2, l3)
    )
    all_four = (l0 >= 0) & (l0 == l1) & (l0 == l2) & (l0 == l3)
    out = torch.stack([several & ~all_four, drivable == 0, (centre & 4) == 0, (centre & 8) > 0, (rear & 8) > 0], -1)
    (r_i,) = torch.nonzero(several_at.any(-1).reshape(-1), as_tuple=True)
    if len(r_i):
        out.view(-1, 5)[r_i] = _exact_area(batch, points, r_i)
    return out


def ego_area_rows(
    batch: MetricCacheBatch, points: torch.Tensor, s_i: torch.Tensor, k_i: torch.Tensor, t_i: torch.Tensor
) -> torch.Tensor:
    """Ego-area flags ``(R, 5)`` of the rows ``(s_i, k_i, t_i)`` ``(R,)`` of points ``(S, K, T, 6, 2)``, all columns
    (those of :func:`ego_area`)."""
    if len(s_i) == 0:
        return torch.zeros((0, 5), dtype=torch.bool, device=points.device)
    return _exact_area(batch, points, (s_i * points.shape[1] + k_i) * points.shape[2] + t_i)


def _exact_area(batch: MetricCacheBatch, points: torch.Tensor, r_i: torch.Tensor) -> torch.Tensor:
    """Ego-area flags ``(R, 5)`` of the flat rows ``r_i`` of points ``(S, K, T, 6, 2)``, polygon by polygon."""
    per_scene = points.shape[1] * points.shape[2]
    s_i = (r_i // per_scene).repeat_interleave(6)
    poly, cat = polygon_hits(batch, s_i, points.reshape(-1, 6, 2).index_select(0, r_i).reshape(-1, 2))
    poly, cat = poly.reshape(len(r_i), 6, -1), cat.reshape(len(r_i), 6, -1)  # (R, 6, G)
    corner_cat = cat[:, :4, :]
    lane = torch.where((corner_cat & 2) > 0, poly[:, :4, :], torch.full_like(poly[:, :4, :], -1)).flatten(-2)
    big = torch.iinfo(lane.dtype).max
    several = torch.where(lane >= 0, lane, torch.full_like(lane, big)).amin(-1) < lane.amax(-1)
    return torch.stack(
        [
            several & ~_lane_in_all_corners(lane.reshape(-1, 4, poly.shape[-1]), several),
            (corner_cat & 1).amax(-1).amin(-1) == 0,
            (cat[:, 4, :] & 4).amax(-1) == 0,
            (cat[:, 4, :] & 8).amax(-1) > 0,
            (cat[:, 5, :] & 8).amax(-1) > 0,
        ],
        -1,
    )


def _lane_in_all_corners(lane: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(...)`` bool: a lane id of corner 0 is also among those of corners 1, 2 and 3 (``lane`` ``(..., 4, G)``,
    ``-1`` for none); only evaluated where ``rows``, False elsewhere."""
    out = torch.zeros_like(rows)
    idx = torch.nonzero(rows.reshape(-1), as_tuple=True)[0]
    sub = lane.reshape(-1, *lane.shape[-2:])[idx]  # (R, 4, G)
    first = sub[:, 0, :]
    held = first >= 0
    for p in range(1, 4):
        held = held & (first[:, :, None] == sub[:, p, None, :]).any(-1)
    out.view(-1)[idx] = held.any(-1)
    return out
