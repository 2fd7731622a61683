"""Which lanes the ego drives in, frame by frame: nuPlan's route extraction over a :class:`LaneGraphContext`.

Membership of every point is computed once (``LaneGraphContext.contains``); the per-frame logic that
follows nuPlan's ``route_extractor`` (continuity through outgoing edges, common or connected corner
objects, roadblock-by-roadblock progress) then works on small integer sets, ``T`` iterations per
scenario.
"""

from __future__ import annotations

import numpy as np
import shapely

from rewards.nuplan_map_context import LaneGraphContext
from simulation.geometry import project_on_polyline


def _rows_to_lists(mask: np.ndarray) -> list[list[int]]:
    return [np.flatnonzero(row).tolist() for row in mask]


def _with_candidates(ctx: LaneGraphContext, inside_row: np.ndarray, candidates: list[int]) -> list[int]:
    """Candidates containing the point; else, for a single candidate, its outgoing edges containing it."""
    hits = [m for m in candidates if inside_row[m]]
    if not hits and len(candidates) == 1:
        index = ctx.index
        hits = [index[i] for i in sorted(ctx.outgoing[candidates[0]]) if i in index and inside_row[index[i]]]
    return hits


def _remove_extra_connectors(ctx: LaneGraphContext, route: list[list[int]]) -> list[list[int]]:
    """Backward pass narrowing frames with several connectors to the one the ego ends up in."""
    out = [list(r) for r in route]
    index = ctx.index
    for k in range(len(out) - 2, -1, -1):
        cur, nxt = out[k], out[k + 1]
        if len(cur) <= 1:
            continue
        if len(cur) > len(nxt) and all(m in cur for m in nxt):
            out[k] = cur = list(nxt)
        if len(cur) <= 1:
            continue
        if nxt and not ctx.is_connector[nxt[0]]:
            incoming = {index[i] for i in ctx.incoming[nxt[0]] if i in index}
            keep = [m for m in cur if m in incoming]
            if keep:
                out[k] = keep
    return out


def ego_route(ctx: LaneGraphContext, centers: np.ndarray) -> list[list[int]]:
    """Lane / connector indices holding each centre ``(T, 2)`` (nuPlan ``get_route``), ``T`` lists.

    A frame keeps the previous frame's objects that still contain it (or, for a single object, its
    outgoing edges); otherwise the map is searched again (a lane first, else all connectors).
    """
    inside = ctx.contains(centers)
    fresh = ctx.route_objects(centers)
    route: list[list[int]] = []
    current: list[int] = []
    for t in range(len(centers)):
        if current:
            current = _with_candidates(ctx, inside[t], current)
        if not current:
            current = np.flatnonzero(fresh[t]).tolist()
        route.append(current)
    return _remove_extra_connectors(ctx, route)


def _common_or_connected(ctx: LaneGraphContext, corners: list[set[int]]) -> bool:
    """nuPlan ``extract_common_or_connecting_route_objs`` reduced to "is there any" (FL, RL, RR, FR order)."""
    if any(not c for c in corners):
        return False
    if set.intersection(*corners):
        return True
    fl, rl, rr, fr = corners
    index = ctx.index

    def edges(objs: set[int], attr: str) -> set[int]:
        return {index[i] for m in objs for i in getattr(ctx, attr)[m] if i in index}

    rr_ext = rr | edges(rr, "outgoing")
    rl_ext = rl | edges(rl, "outgoing")
    if not ((rl & rr_ext) | (rr & rl_ext)):
        return False
    fl_rr = (fl | edges(fl, "incoming")) & rr_ext
    fr_rl = (fr | edges(fr, "incoming")) & rl_ext
    return bool(fl_rr & fr_rl)


def in_common_or_connected_route_objects(ctx: LaneGraphContext, corners: np.ndarray) -> np.ndarray:
    """``(T,)`` bool: the 4 ego corners ``(T, 4, 2)`` lie in one lane / connector or in connected ones."""
    objs = ctx.route_objects(corners.reshape(-1, 2)).reshape(*corners.shape[:2], -1)
    out = np.zeros(len(corners), dtype=bool)
    prev_key: tuple[bytes, ...] | None = None
    for t in range(len(corners)):
        key = tuple(row.tobytes() for row in objs[t])
        if key != prev_key:
            value = _common_or_connected(ctx, [set(np.flatnonzero(row).tolist()) for row in objs[t]])
            prev_key = key
        out[t] = value
    return out


def _route_blocks(ctx: LaneGraphContext, expert_route: list[list[int]]) -> list[tuple[str, int]]:
    """(roadblock id, index of the first object's baseline) per roadblock change of the expert route."""
    blocks: list[tuple[str, int]] = []
    for objs in expert_route:
        if not objs:
            continue
        rb = ctx.roadblock_ids[objs[0]]
        if (not blocks or blocks[-1][0] != rb) and rb in ctx.roadblock_polygons:
            blocks.append((rb, objs[0]))
    return blocks


def _proj(ctx: LaneGraphContext, m: int, point: np.ndarray) -> float:
    return float(project_on_polyline(point[None], ctx.baselines[m])[0][0])


def progress_along_route(ctx: LaneGraphContext, blocks: list[tuple[str, int]], centers: np.ndarray) -> np.ndarray:
    """Per-frame progress ``(T,)`` along the roadblock route (nuPlan ``PerFrameProgressAlongRouteComputer``)."""
    progress = np.zeros(len(centers))
    if not blocks:
        return progress
    polys = np.asarray([ctx.roadblock_polygons[rb] for rb, _ in blocks], dtype=object)
    inside = shapely.contains_xy(polys[:, None], centers[None, :, 0], centers[None, :, 1])  # (R, T)
    along = np.stack([project_on_polyline(centers, ctx.baselines[m])[0] for _, m in blocks])  # (R, T)
    cur = 0
    prev_dist = float(along[0, 0])
    for t in range(1, len(centers)):
        if inside[cur, t]:
            dist = float(along[cur, t])
            progress[t], prev_dist = dist - prev_dist, dist
            continue
        skipped, nxt, skip_block = 0.0, cur + 1, -1
        while nxt < len(blocks):
            if inside[nxt, t]:
                old = blocks[cur][1]
                last = ctx.baselines[old][-1]
                dist = float(along[nxt, t])
                step = ctx.baseline_length(old) - prev_dist + dist - _proj(ctx, blocks[nxt][1], last)
                progress[t], prev_dist, cur = step + skipped, dist, nxt
                break
            if nxt + 1 >= len(blocks):
                break
            prev_last = ctx.baselines[blocks[skip_block if skip_block >= 0 else cur][1]][-1]
            skip_block = nxt
            first_next = ctx.baselines[blocks[nxt + 1][1]][0]
            skipped += _proj(ctx, blocks[nxt][1], first_next) - _proj(ctx, blocks[nxt][1], prev_last)
            nxt += 1
    return progress


def route_blocks_of_expert(ctx: LaneGraphContext, expert_centers: np.ndarray) -> list[tuple[str, int]]:
    """The expert's simplified route as (roadblock id, baseline object index) pairs."""
    return _route_blocks(ctx, ego_route(ctx, expert_centers))
