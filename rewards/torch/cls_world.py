"""The map around a batch of closed-loop episodes as padded tensors, for the torch CLS metrics.

One :class:`~rewards.nuplan_map_context.LaneGraphContext` per episode (the lanes, lane connectors, roadblocks,
drivable area and intersections near it) becomes a :class:`ClsWorld`: polygons as padded edge lists (point in
polygon by the crossing number, distances to polygons as distances to their edges), baselines as padded
polylines, the lane graph as ``(M, M)`` adjacency masks, and the expert's roadblock route (the only part of
nuPlan's progress metric that depends on the log alone, gathered once with :mod:`rewards.nuplan_route`).
Everything is built once at reset; the metrics then run on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from rewards.nuplan_map_context import LaneGraphContext, build_lane_graph_context
from rewards.nuplan_route import progress_along_route, route_blocks_of_expert
from rewards.torch.cls_polygons import PolygonSet, polygon_set, ring_edges
from simulation.geometry import project_on_polyline, rear_axle_to_center
from simulation.maps.protocol import MapProtocol


@dataclass(frozen=True)
class ClsWorld:
    """Map tensors of ``B`` episodes (``M`` lanes / connectors, ``R`` expert route blocks), padded.

    Attributes:
        objects: polygons of the lanes and connectors (``M``); ``obj_mask`` ``(B, M)`` real objects.
        is_connector: ``(B, M)`` bool; ``id_rank`` ``(B, M)`` rank of the object's id string (nuPlan sorts
            outgoing ids as strings).
        baselines: ``(B, M, L, 2)`` (padded by repeating the last vertex); ``baseline_length`` ``(B, M)``.
        speed_limits: ``(B, M)`` m/s, NaN where unknown.
        outgoing / incoming: ``(B, M, M)`` bool, ``[b, m, k]``: object ``k`` is an outgoing / incoming edge of ``m``.
        drivable / intersections: the drivable area and the intersections, one polygon each (all their rings).
        blocks: polygons of the expert's route roadblocks (``R``); ``block_mask`` ``(B, R)``.
        block_baselines: ``(B, R, L, 2)`` baseline of each block's first route object; ``block_length`` ``(B, R)``.
        block_skip: ``(B, R)`` length credited for passing block ``r`` without being seen in it.
        block_jump: ``(B, R, R)`` ``[b, i, k]`` projection of the last vertex of block ``i``'s baseline on ``k``'s.
        expert_progress: ``(B,)`` metres; has_route: ``(B,)`` bool (an empty expert route scores ratio 1).
    """

    objects: PolygonSet
    obj_mask: torch.Tensor
    is_connector: torch.Tensor
    id_rank: torch.Tensor
    baselines: torch.Tensor
    baseline_length: torch.Tensor
    speed_limits: torch.Tensor
    outgoing: torch.Tensor
    incoming: torch.Tensor
    drivable: PolygonSet
    intersections: PolygonSet
    blocks: PolygonSet
    block_mask: torch.Tensor
    block_baselines: torch.Tensor
    block_length: torch.Tensor
    block_skip: torch.Tensor
    block_jump: torch.Tensor
    expert_progress: torch.Tensor
    has_route: torch.Tensor

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ClsWorld:
        """The world on ``device``, floating tensors in ``dtype``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if isinstance(t, PolygonSet):
                out[f.name] = t.to(device, dtype)
            else:
                floating = dtype is not None and t.is_floating_point()
                out[f.name] = t.to(device=device, dtype=dtype if floating else t.dtype)
        return ClsWorld(**out)

    def select(self, rows: torch.Tensor) -> ClsWorld:
        """The episodes ``rows`` ``(B',)`` (long) of the world."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.select(rows) if isinstance(v, PolygonSet) else v[rows]
        return ClsWorld(**out)


# ----------------------------------------------------------------------------------------------- geometry


def project_on_lines(points: torch.Tensor, lines: torch.Tensor) -> torch.Tensor:
    """Arc length ``(B, K, G)`` of points ``(B, K, 2)`` on polylines ``(B, G, L, 2)`` (nearest segment, clamped),
    as :func:`simulation.geometry.project_on_polyline`."""
    p = points[:, :, None, None, :]  # (B, K, 1, 1, 2)
    a, ab = lines[:, None, :, :-1], (lines[:, None, :, 1:] - lines[:, None, :, :-1])  # (B, 1, G, L-1, 2)
    seg2 = (ab * ab).sum(-1).clamp_min(1e-12)
    t = (((p - a) * ab).sum(-1) / seg2).clamp(0.0, 1.0)
    dist2 = ((p - (a + t[..., None] * ab)) ** 2).sum(-1)
    k = dist2.argmin(-1, keepdim=True)
    cum = torch.nn.functional.pad(torch.cumsum(torch.linalg.norm(ab, dim=-1), -1), (1, 0))  # (B, 1, G, L)
    seg = seg2.sqrt().expand_as(t)
    s = torch.gather(cum.expand(*dist2.shape[:-1], -1), -1, k) + torch.gather(t, -1, k) * torch.gather(seg, -1, k)
    return s[..., 0]


# ----------------------------------------------------------------------------------------------- building


def _pad(arrays: Sequence[np.ndarray], length: int | None = None, repeat_last: bool = False) -> np.ndarray:
    """Stack ``(n_i, ...)`` arrays to ``(len, max n, ...)`` with zeros (or the last row repeated)."""
    n = max([len(a) for a in arrays] + [1]) if length is None else length
    shape = next((a.shape[1:] for a in arrays if a.ndim > 1), ())
    out = np.zeros((len(arrays), n, *shape))
    for i, a in enumerate(arrays):
        if len(a):
            out[i, : len(a)] = a
            if repeat_last:
                out[i, len(a) :] = a[-1]
    return out


def _pad_mask(sizes: Sequence[int], n: int) -> np.ndarray:
    return np.arange(n)[None] < np.asarray(sizes)[:, None]


def _blocks(ctx: LaneGraphContext, expert_centers: np.ndarray) -> dict[str, Any]:
    """The expert's route blocks and the constants of nuPlan's per-frame progress along them."""
    blocks = route_blocks_of_expert(ctx, expert_centers)
    lines = [ctx.baselines[m] for _, m in blocks]
    r = len(blocks)
    skip = np.zeros(r)
    for j in range(1, r - 1):  # passing block j unseen: from the end of block j-1 to the start of block j+1
        along = project_on_polyline(np.stack([lines[j + 1][0], lines[j - 1][-1]]), lines[j])[0]
        skip[j] = along[0] - along[1]
    jump = np.zeros((r, r))
    for k in range(r):
        if r:
            jump[:, k] = project_on_polyline(np.stack([line[-1] for line in lines]), lines[k])[0]
    return {
        "edges": [ring_edges(ctx.roadblock_polygons[rb]) for rb, _ in blocks],
        "lines": lines,
        "length": np.array([ctx.baseline_length(m) for _, m in blocks]),
        "skip": skip,
        "jump": jump,
        "expert": float(progress_along_route(ctx, blocks, expert_centers).sum()),
    }


def _adjacency(ctx: LaneGraphContext, attr: str) -> np.ndarray:
    index = ctx.index
    adj = np.zeros((ctx.num_objects, ctx.num_objects), dtype=bool)
    for m, ids in enumerate(getattr(ctx, attr)):
        for i in ids:
            if i in index:
                adj[m, index[i]] = True
    return adj


def build_cls_world(
    contexts: Sequence[LaneGraphContext],
    expert_states: Sequence[np.ndarray],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> ClsWorld:
    """Tensors of ``B`` episodes from their map contexts and logged (expert) ego states ``(T_b, 11)``."""
    centers = [rear_axle_to_center(np.asarray(e)[:, :3])[:, :2] for e in expert_states]
    blocks = [_blocks(c, x) for c, x in zip(contexts, centers, strict=True)]
    m = max([c.num_objects for c in contexts] + [1])
    r = max([len(x["lines"]) for x in blocks] + [1])
    line_len = max([len(b) for c in contexts for b in c.baselines] + [len(v) for x in blocks for v in x["lines"]] + [2])

    def lines(ls: Sequence[np.ndarray], n: int) -> np.ndarray:
        out = np.zeros((n, line_len, 2))
        for i, line in enumerate(ls):
            out[i] = _pad([line], line_len, repeat_last=True)[0]
        return out

    def square(mats: list[np.ndarray], n: int) -> np.ndarray:
        out = np.zeros((len(mats), n, n), dtype=mats[0].dtype if mats else bool)
        for b, a in enumerate(mats):
            out[b, : len(a), : len(a)] = a
        return out

    def rank(c: LaneGraphContext) -> np.ndarray:
        order = sorted(range(c.num_objects), key=lambda i: c.ids[i])
        out = np.zeros(c.num_objects)
        out[order] = np.arange(c.num_objects)
        return out

    def fl(a: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype, device=device)

    def bo(a: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=bool), device=device)

    return ClsWorld(
        objects=polygon_set([[ring_edges(p) for p in c.polygons] for c in contexts], device, dtype),
        obj_mask=bo(_pad_mask([c.num_objects for c in contexts], m)),
        is_connector=bo(_pad([c.is_connector.astype(float) for c in contexts], m) > 0),
        id_rank=fl(_pad([rank(c) for c in contexts], m)),
        baselines=fl(np.stack([lines(c.baselines, m) for c in contexts])),
        baseline_length=fl(_pad([np.array([c.baseline_length(i) for i in range(c.num_objects)]) for c in contexts], m)),
        speed_limits=fl(_pad([c.speed_limits for c in contexts], m)),
        outgoing=bo(square([_adjacency(c, "outgoing") for c in contexts], m)),
        incoming=bo(square([_adjacency(c, "incoming") for c in contexts], m)),
        drivable=polygon_set([[ring_edges(c.drivable_area)] for c in contexts], device, dtype),
        intersections=polygon_set([[ring_edges(c.intersections)] for c in contexts], device, dtype),
        blocks=polygon_set([x["edges"] for x in blocks], device, dtype),
        block_mask=bo(_pad_mask([len(x["lines"]) for x in blocks], r)),
        block_baselines=fl(np.stack([lines(x["lines"], r) for x in blocks])),
        block_length=fl(_pad([x["length"] for x in blocks], r)),
        block_skip=fl(_pad([x["skip"] for x in blocks], r)),
        block_jump=fl(square([x["jump"] for x in blocks], r)),
        expert_progress=fl([x["expert"] for x in blocks]),
        has_route=bo([bool(x["lines"]) for x in blocks]),
    )


def world_from_maps(
    expert_states: Sequence[np.ndarray],
    maps: Sequence[MapProtocol],
    margin_m: float = 100.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> ClsWorld:
    """:func:`build_cls_world` with each episode's map gathered within ``margin_m`` of its expert path."""
    contexts = []
    for states, map_api in zip(expert_states, maps, strict=True):
        contexts.append(build_lane_graph_context(map_api, np.asarray(states)[:, :2], margin=margin_m))
    return build_cls_world(contexts, expert_states, device, dtype)
