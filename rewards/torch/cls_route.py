"""Which lanes the ego drives in, frame by frame, in torch: nuPlan's route extraction batched over episodes.

The torch twin of :mod:`rewards.nuplan_route` on a :class:`~rewards.torch.cls_world.ClsWorld`. Sets of map
objects are ``(B, M)`` masks; the order of a frame's objects (nuPlan keeps lists, and the driving-direction
metric reads the first one) is an ``(B, M)`` key: the object index for a fresh map search, the rank of the id
string for the outgoing edges of a single object (nuPlan sorts them). The frame-to-frame logic loops over the
``T`` frames, vectorised over the episodes.
"""

from __future__ import annotations

import torch

from rewards.torch import cls_polygons
from rewards.torch.cls_world import ClsWorld, project_on_lines


def contains(world: ClsWorld, points: torch.Tensor) -> torch.Tensor:
    """``(B, K, M)`` bool: lane / connector ``m`` contains point ``(B, K, 2)``."""
    return cls_polygons.contains(world.objects, points) & world.obj_mask[:, None]


def route_objects(world: ClsWorld, inside: torch.Tensor) -> torch.Tensor:
    """nuPlan's ``get_current_route_objects`` from ``inside`` ``(B, K, M)``: the first lane, else every connector."""
    lanes = inside & ~world.is_connector[:, None]
    m = inside.shape[-1]
    idx = torch.arange(m, device=inside.device)
    first = torch.where(lanes, idx, m).amin(-1, keepdim=True)
    return torch.where(lanes.any(-1, keepdim=True), idx == first, inside & world.is_connector[:, None])


def first_object(mask: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``(...)`` index of the first object of each set ``(..., M)`` by ``key``; -1 for an empty set."""
    k = torch.where(mask, key, torch.full_like(key, torch.inf))
    return torch.where(mask.any(-1), k.argmin(-1), -1)


def _edges_of(adjacency: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:
    """``(B, ..., M)`` objects reached from the set ``objs`` ``(B, ..., M)`` through ``adjacency`` ``(B, M, M)``."""
    shape = objs.shape
    flat = objs.reshape(shape[0], -1, shape[-1]).to(adjacency.dtype if adjacency.is_floating_point() else torch.float32)
    return (flat @ adjacency.to(flat.dtype) > 0).reshape(shape)


def ego_route(world: ClsWorld, centers: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nuPlan ``get_route`` of ego centres ``(B, T, 2)``: objects ``(B, T, M)`` and their order keys.

    A frame keeps the previous frame's objects that still contain the point (a single object: else its outgoing
    edges that do), else searches the map again; then the backward pass narrows frames with several connectors.
    Frames from ``length`` ``(B,)`` on are not part of the history.
    """
    inside = contains(world, centers)
    fresh = route_objects(world, inside)
    b, t_len, m = inside.shape
    index_key = torch.arange(m, device=inside.device, dtype=world.id_rank.dtype).expand(b, m)
    cur = torch.zeros(b, m, dtype=torch.bool, device=inside.device)
    key = index_key.clone()
    masks, keys = [], []
    for t in range(t_len):
        hits = cur & inside[:, t]
        single = cur.sum(-1) == 1
        out = _edges_of(world.outgoing, cur) & inside[:, t] & single[:, None]
        use_hits = hits.any(-1, keepdim=True)
        cand = torch.where(use_hits, hits, out)
        cand_key = torch.where(use_hits, key, world.id_rank)
        keep = cand.any(-1, keepdim=True)
        cur = torch.where(keep, cand, fresh[:, t])
        key = torch.where(keep, cand_key, index_key)
        masks.append(cur)
        keys.append(key)
    return _remove_extra_connectors(world, torch.stack(masks, 1), torch.stack(keys, 1), length)


def _remove_extra_connectors(
    world: ClsWorld, route: torch.Tensor, keys: torch.Tensor, length: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward pass narrowing frames with several objects to the ones the ego ends up in."""
    route, keys = route.clone(), keys.clone()
    rows = torch.arange(route.shape[0], device=route.device)
    for k in range(route.shape[1] - 2, -1, -1):
        cur, nxt, key, nxt_key = route[:, k], route[:, k + 1], keys[:, k], keys[:, k + 1]
        live = (k + 1 < length) & (cur.sum(-1) > 1)
        subset = live & (cur.sum(-1) > nxt.sum(-1)) & ~(nxt & ~cur).any(-1)
        cur = torch.where(subset[:, None], nxt, cur)
        key = torch.where(subset[:, None], nxt_key, key)
        first = first_object(nxt, nxt_key)
        lane_next = (first >= 0) & ~world.is_connector[rows, first.clamp_min(0)]
        keep = cur & world.incoming[rows, first.clamp_min(0)]
        narrow = live & (cur.sum(-1) > 1) & lane_next & keep.any(-1)
        route[:, k] = torch.where(narrow[:, None], keep, cur)
        keys[:, k] = key
    return route, keys


def in_common_or_connected(world: ClsWorld, corners: torch.Tensor, inside: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T)`` bool: the ego corners ``(B, T, 4, 2)`` (FL, RL, RR, FR) lie in one object or connected ones
    (``inside``: :func:`contains` of the corners ``(B, T * 4, M)`` when already known)."""
    b, t_len = corners.shape[:2]
    if inside is None:
        inside = contains(world, corners.reshape(b, t_len * 4, 2))
    objs = route_objects(world, inside).reshape(b, t_len, 4, -1)
    fl, rl, rr, fr = objs.unbind(2)
    nonempty = objs.any(-1).all(-1)
    common = (fl & rl & rr & fr).any(-1)
    rr_ext = rr | _edges_of(world.outgoing, rr)
    rl_ext = rl | _edges_of(world.outgoing, rl)
    linked = ((rl & rr_ext) | (rr & rl_ext)).any(-1)
    fl_rr = (fl | _edges_of(world.incoming, fl)) & rr_ext
    fr_rl = (fr | _edges_of(world.incoming, fr)) & rl_ext
    return nonempty & (common | (linked & (fl_rr & fr_rl).any(-1)))


def driving_direction_progress(
    world: ClsWorld, centers: torch.Tensor, route: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Per-frame progress ``(B, T)`` along the baseline of each frame's first route object (0 on changes).

    As nuPlan: frames off route are skipped; after a change of object, the first two frames on the new one
    give 0; a projection of exactly 0 gives 0.
    """
    b, t_len, _ = route.shape
    first = first_object(route, keys)  # (B, T)
    rows = torch.arange(b, device=route.device)[:, None]
    lines = world.baselines[rows, first.clamp_min(0)]  # (B, T, L, 2)
    dist = project_on_lines(centers.reshape(b * t_len, 1, 2), lines.reshape(b * t_len, 1, *lines.shape[2:]))
    dist = dist.reshape(b, t_len)
    valid = first >= 0
    idx = torch.arange(t_len, device=route.device).expand(b, t_len)
    last_valid = torch.cummax(torch.where(valid, idx, -1), 1).values
    prev = torch.nn.functional.pad(last_valid[:, :-1], (1, 0), value=-1)  # last on-route frame before t
    prev_first = torch.gather(first, 1, prev.clamp_min(0))
    same = valid & (((prev >= 0) & (prev_first == first)) | ((prev < 0) & (idx == 0)))
    prev_same = torch.gather(same, 1, prev.clamp_min(0)) & (prev >= 0)
    prev_dist = torch.gather(dist, 1, prev.clamp_min(0))
    return torch.where(same & prev_same & (dist != 0), dist - prev_dist, torch.zeros_like(dist))


def progress_along_route(world: ClsWorld, centers: torch.Tensor) -> torch.Tensor:
    """Per-frame progress ``(B, T)`` of centres ``(B, T, 2)`` along the expert's roadblocks (nuPlan's
    ``PerFrameProgressAlongRouteComputer``): within the current block the change of the baseline projection;
    entering a later block adds the rest of the old baseline, the skipped blocks and the start of the new one."""
    b, t_len, _ = centers.shape
    r = world.block_mask.shape[1]
    inside = cls_polygons.contains(world.blocks, centers) & world.block_mask[:, None]
    along = project_on_lines(centers, world.block_baselines)  # (B, T, R)
    cum_skip = torch.cumsum(world.block_skip, 1)
    rows = torch.arange(b, device=centers.device)
    blocks = torch.arange(r, device=centers.device)
    cur = torch.zeros(b, dtype=torch.long, device=centers.device)
    prev = along[:, 0, 0]
    progress = [torch.zeros_like(prev)]
    for t in range(1, t_len):
        in_cur = inside[rows, t, cur]
        later = inside[:, t] & (blocks > cur[:, None])
        found = later.any(-1)
        k = torch.where(later, blocks, r).amin(-1).clamp_max(r - 1)
        skipped = cum_skip[rows, (k - 1).clamp_min(0)] - cum_skip[rows, cur]
        jump = world.block_length[rows, cur] - prev + along[rows, t, k] - world.block_jump[rows, cur, k] + skipped
        step = torch.where(in_cur, along[rows, t, cur] - prev, torch.where(found, jump, torch.zeros_like(prev)))
        prev = torch.where(in_cur, along[rows, t, cur], torch.where(found, along[rows, t, k], prev))
        cur = torch.where(~in_cur & found, k, cur)
        progress.append(step)
    return torch.stack(progress, 1) * world.has_route[:, None]
