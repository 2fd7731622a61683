"""A padded, collated batch of NAVSIM metric caches as torch tensors, for the batched scorer.

:meth:`MetricCacheBatch.collate` turns ``S`` :class:`~simulation.metric_cache.MetricCache` of one version into
padded tensors (agents, map polygons as edge lists, the polygon grid's cells, the centre line, red-light
polygons, the human / reference / history states); :meth:`MetricCacheBatch.to` moves them to a device and float
dtype (below float64 it first re-centres each scene on its ego start, see :meth:`MetricCacheBatch.recentred`);
:meth:`MetricCacheBatch.concat` joins batches (scenes collated one by one and kept, as ``RuleReward`` does).
Collation is numpy work done once per scene; scoring then never touches the caches. Padded
entries are marked by their masks (``agent_valid``, ``segment_valid``, ``red_edge_valid``) or by values that can
never match (polygon index ``-1``, edges of zero height, which no horizontal ray crosses).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from rewards.torch.map_grid import NO_POLYGON_WORD, SUBCELL_SHIFTS, collate_grids, pad_stack, polygon_edges
from simulation.metric_cache import MetricCache
from simulation.polygon_grid import PolygonSet
from simulation.types import DYNAMIC_TYPES, AgentIndex

#: Padding value of the fields that are not padded with zeros / False (the centre line repeats its last point).
PAD_FILLS = {"agent_types": -1, "agent_index": -1, "grid_words": NO_POLYGON_WORD,
             "grid_subcells": -1 << SUBCELL_SHIFTS["lane"], "grid_entry": -1}  # fmt: skip
#: Columns of ``MetricCacheBatch.grid_meta``: origin x, origin y, cell size, cells along x, cells along y.
GRID_META = ("origin_x", "origin_y", "cell_size", "nx", "ny")


@dataclass(frozen=True)
class MetricCacheBatch:
    """``S`` metric caches of one version, padded and stacked (global coordinates, rear-axle ego poses).

    Attributes:
        tokens: ``S`` scene tokens. version: ``"v1"`` or ``"v2"``.
        current_state: ``(S, 11)`` ego state at t = 0.
        agent_boxes: ``(S, T, N, 7)`` agent boxes (:class:`~simulation.types.AgentIndex`), ``T`` = 51 (v1) or 41 (v2),
            ``N`` the most tracks of any scene (padding: zeros).
        agent_valid: ``(S, T, N)`` bool, the track exists at that step (False on padding).
        agent_corners: ``(S, T, N, 4, 2)`` box corners (front-left, rear-left, rear-right, front-right).
        agent_types: ``(S, N)`` int64 ``TrackedObjectType`` (``-1`` on padding).
        agent_index: ``(S, N)`` int64 column of the track in its cache (``-1`` on padding); the track id of
            column ``n`` of scene ``s`` is ``track_ids[s][agent_index[s, n]]``.
        agent_dynamic: ``(S, N)`` bool, vehicle / pedestrian / bicycle (a static object otherwise).
        agent_stopped: ``(S, N)`` bool, static object or speed at first appearance <= 0.05 m/s (NC at-fault rule).
        agent_radius: ``(S, N)`` largest half diagonal of the track's box over its valid steps.
        grid_meta: ``(S, 5)`` the map grid (:data:`GRID_META`); a scene without polygons has 0 cells.
        grid_words: ``(S, C, G)`` int64, one word (:data:`WORD_SHIFTS`) per polygon touching grid cell
            ``ix * ny + iy``; row ``nx * ny`` is empty (points off the grid), padding is :data:`NO_POLYGON_WORD`.
            Over the cell's :data:`SUB_CELLS` x :data:`SUB_CELLS` sub-cells (bit ``sx * SUB_CELLS + sy``), the
            "inside" bits mark those entirely inside the polygon (all for a full cell) and the "test" bits those
            that an edge of the polygon meets, whose points need the exact even-odd test.
        grid_subcells: ``(S, C * SUB_CELLS ** 2)`` int64 word (:data:`SUBCELL_SHIFTS`) of sub-cell ``bit`` of cell
            ``c`` at ``c * SUB_CELLS ** 2 + bit``: the categories and the lane of the polygons containing all of it,
            unless it needs the exact test.
        grid_entry: ``(S, C, G)`` int64 id ``q`` of the entries that are not full (``-1`` otherwise).
        entry_offsets: ``(S, Q * SUB_CELLS + 1)`` int64, the edges of entry ``q`` for points of sub-cell row ``sy``
            are ``cell_edges[s, offsets[r]:offsets[r + 1]]``, ``r = q * SUB_CELLS + sy``.
        cell_edges: ``(S, L, 4)`` ring edges ``(x1, y1, x2, y2)`` of the polygon of each non-full grid entry that a
            point of that row of sub-cells may cross (:func:`cell_edges`, :func:`subrow_edges`; all rings together,
            as the even-odd rule counts crossings over every ring).
        map_categories: ``(S, M)`` int64 bits: 1 drivable, 2 lane, 4 on-route lane, 8 intersection (0 padding).
        centerline: ``(S, C2, 2)`` route centre line (padding repeats the last point).
        centerline_s: ``(S, C2)`` its arc length. segment_valid: ``(S, C2 - 1)`` bool, a real segment.
        red_mask: ``(S, 41, R)`` bool, red-light polygon ``r`` is red at step ``t`` (False on padding).
        red_edges: ``(S, R, E2, 4)`` ring edges of the red on-route connectors. red_edge_valid: ``(S, R, E2)``.
        red_bounds: ``(S, R, 4)`` their bounds (min x, min y, max x, max y).
        reference_states: ``(S, 41, 11)`` simulated PDM-Closed reference. human_states: ``(S, 41, 11)``.
        history_states: ``(S, H, 11)`` logged past states (EPDMS history comfort; every scene has the same ``H``).
        track_ids: ``S`` arrays of track ids (strings stay numpy).
        origin: ``(S, 2)`` float64 (never cast) position subtracted from every x, y of the scene: zeros after
            :meth:`collate` (global coordinates, the numpy scorer's arithmetic), the ego's position at t = 0 after
            :meth:`recentred`, which :meth:`to` applies before casting below float64 (global UTM coordinates,
            around 1e5 to 1e6 m, would lose centimetres in float32).
    """

    tokens: tuple[str, ...]
    version: str
    current_state: torch.Tensor
    agent_boxes: torch.Tensor
    agent_valid: torch.Tensor
    agent_corners: torch.Tensor
    agent_types: torch.Tensor
    agent_index: torch.Tensor
    agent_dynamic: torch.Tensor
    agent_stopped: torch.Tensor
    agent_radius: torch.Tensor
    grid_meta: torch.Tensor
    grid_words: torch.Tensor
    grid_subcells: torch.Tensor
    grid_entry: torch.Tensor
    entry_offsets: torch.Tensor
    cell_edges: torch.Tensor
    map_categories: torch.Tensor
    centerline: torch.Tensor
    centerline_s: torch.Tensor
    segment_valid: torch.Tensor
    red_mask: torch.Tensor
    red_edges: torch.Tensor
    red_edge_valid: torch.Tensor
    red_bounds: torch.Tensor
    reference_states: torch.Tensor
    human_states: torch.Tensor
    history_states: torch.Tensor
    track_ids: tuple[np.ndarray, ...]
    origin: torch.Tensor

    @property
    def num_scenes(self) -> int:
        return len(self.tokens)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MetricCacheBatch:
        """A copy on ``device`` with floating tensors cast to ``dtype`` (integer / bool tensors and ``origin`` keep
        theirs); a cast below float64 re-centres the scenes first (:meth:`recentred`)."""
        batch = self
        if dtype is not None and torch.finfo(dtype).bits < 64 and self.agent_boxes.dtype == torch.float64:
            batch = self.recentred()
        moved = {}
        for f in fields(batch):
            value = getattr(batch, f.name)
            if isinstance(value, torch.Tensor):
                floating = dtype is not None and value.is_floating_point() and f.name != "origin"
                value = value.to(device=device, dtype=dtype if floating else None)
            moved[f.name] = value
        return dataclasses.replace(batch, **moved)

    def recentred(self) -> MetricCacheBatch:
        """The batch with each scene's coordinates relative to its ego position at t = 0 (``origin``), computed in
        float64 (already re-centred scenes are left as they are); the centre line's arc length then starts from its
        vertex nearest to the ego (only differences of arc lengths are used), so it stays small too."""
        if self.agent_boxes.dtype != torch.float64:
            raise ValueError("re-centre a float64 batch (before casting it)")
        shift = self.current_state[:, :2]  # (S, 2) the ego start in the current frame
        xy = shift[:, None]
        edges = torch.cat([xy, xy], -1)  # (S, 1, 4)

        def states(v: torch.Tensor) -> torch.Tensor:
            return torch.cat([v[..., :2] - shift.view(-1, *([1] * (v.dim() - 2)), 2), v[..., 2:]], -1)

        line = self.centerline - xy
        nearest = torch.argmin((line * line).sum(-1), 1, keepdim=True)  # vertex nearest to the ego start
        arc = self.centerline_s - torch.gather(self.centerline_s, 1, nearest)  # progress differences are unchanged
        return dataclasses.replace(
            self,
            centerline_s=arc, current_state=states(self.current_state), reference_states=states(self.reference_states),
            human_states=states(self.human_states), history_states=states(self.history_states),
            agent_boxes=states(self.agent_boxes), agent_corners=self.agent_corners - shift[:, None, None, None],
            grid_meta=torch.cat([self.grid_meta[:, :2] - shift, self.grid_meta[:, 2:]], -1),
            cell_edges=self.cell_edges - edges, centerline=line,
            red_edges=self.red_edges - edges[:, None], red_bounds=self.red_bounds - edges,
            origin=self.origin.to(shift) + shift,
        )  # fmt: skip

    def to_local(self, states: torch.Tensor) -> torch.Tensor:
        """Global states ``(S, ...,  11)`` in the batch's frame and float dtype (the origin is subtracted in the
        states' dtype, before the cast)."""
        origin = self.origin.to(device=states.device, dtype=states.dtype).view(-1, *([1] * (states.dim() - 2)), 2)
        local = torch.cat([states[..., :2] - origin, states[..., 2:]], -1)
        return local.to(self.agent_boxes.dtype)

    def to_global(self, states: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """States ``(S, ..., 11)`` of the batch's frame back in global coordinates, in ``dtype``."""
        origin = self.origin.to(device=states.device, dtype=dtype).view(-1, *([1] * (states.dim() - 2)), 2)
        states = states.to(dtype)
        return torch.cat([states[..., :2] + origin, states[..., 2:]], -1)

    @staticmethod
    def concat(batches: Sequence[MetricCacheBatch]) -> MetricCacheBatch:
        """The scenes of ``batches`` (one version, device, dtype and frame convention) in one batch, padded as
        :meth:`collate` pads: ``concat([collate([a]), collate([b])])`` equals ``collate([a, b])``."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        if len({b.version for b in batches}) != 1:
            raise ValueError("batches of several versions")
        out: dict[str, object] = {"tokens": sum((b.tokens for b in batches), ()), "version": batches[0].version,
                                  "track_ids": sum((b.track_ids for b in batches), ())}  # fmt: skip
        for f in fields(MetricCacheBatch):
            if f.name in out:
                continue
            parts = [getattr(b, f.name) for b in batches]
            shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
            out[f.name] = torch.cat([_pad_to(p, shape, f.name) for p in parts])
        return MetricCacheBatch(**out)  # type: ignore[arg-type]

    @staticmethod
    def collate(caches: Sequence[MetricCache], dtype: torch.dtype = torch.float64) -> MetricCacheBatch:
        """Pad and stack ``caches`` (one version, the same history length) into CPU tensors of ``dtype`` (global
        coordinates in float64; re-centred below, see :meth:`to`)."""
        if not caches:
            raise ValueError("collate needs at least one metric cache")
        versions = {c.version for c in caches}
        if len(versions) != 1:
            raise ValueError(f"metric caches of several versions in one batch: {sorted(versions)}")
        if len({c.history_states.shape for c in caches}) != 1:
            raise ValueError("metric caches with different history lengths in one batch")
        f = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64))  # noqa: E731
        b = lambda x: torch.as_tensor(np.asarray(x, dtype=bool))  # noqa: E731
        i = lambda x: torch.as_tensor(np.asarray(x, dtype=np.int64))  # noqa: E731
        agents = _agents(caches)
        grid = collate_grids(caches)
        line = _centerlines(caches)
        red = _red_lights(caches)
        batch = MetricCacheBatch(
            tokens=tuple(c.token for c in caches), version=versions.pop(),
            current_state=f(np.stack([c.current_state for c in caches])),
            agent_boxes=f(agents["boxes"]), agent_valid=b(agents["valid"]), agent_corners=f(agents["corners"]),
            agent_types=i(agents["types"]), agent_index=i(agents["index"]), agent_dynamic=b(agents["dynamic"]),
            agent_stopped=b(agents["stopped"]), agent_radius=f(agents["radius"]),
            grid_meta=f(grid["meta"]), grid_words=i(grid["words"]),
            grid_subcells=i(grid["subcells"]),
            grid_entry=i(grid["entries"]), entry_offsets=i(grid["offsets"]), cell_edges=f(grid["edges"]),
            map_categories=i(grid["categories"]),
            centerline=f(line["line"]), centerline_s=f(line["s"]), segment_valid=b(line["valid"]),
            red_mask=b(red["mask"]), red_edges=f(red["edges"]), red_edge_valid=b(red["edge_valid"]),
            red_bounds=f(red["bounds"]),
            reference_states=f(np.stack([c.reference_states for c in caches])),
            human_states=f(np.stack([c.human_states for c in caches])),
            history_states=f(np.stack([c.history_states for c in caches])),
            track_ids=tuple(np.asarray(c.agent_track_ids) for c in caches),
            origin=torch.zeros((len(caches), 2), dtype=torch.float64),
        )  # fmt: skip
        return batch if dtype == torch.float64 else batch.to(dtype=dtype)


def _pad_to(value: torch.Tensor, shape: Sequence[int], name: str) -> torch.Tensor:
    """``value`` ``(S, ...)`` padded at the end of every other axis to ``shape`` with the fill of field ``name``."""
    for d, size in enumerate(shape, start=1):
        missing = size - value.shape[d]
        if missing <= 0:
            continue
        if name in ("centerline", "centerline_s"):  # the centre line repeats its last point
            pad = value.narrow(d, value.shape[d] - 1, 1).expand(*value.shape[:d], missing, *value.shape[d + 1 :])
        else:
            pad = torch.full((*value.shape[:d], missing, *value.shape[d + 1 :]), PAD_FILLS.get(name, 0),
                             dtype=value.dtype, device=value.device)  # fmt: skip
        value = torch.cat([value, pad], d)
    return value


def _agents(caches: Sequence[MetricCache]) -> dict[str, np.ndarray]:
    dynamic_types = [int(t) for t in DYNAMIC_TYPES]
    stopped, radius, dynamic = [], [], []
    for c in caches:
        n = c.agent_types.shape[0]
        first = np.argmax(c.agent_valid, axis=0)
        box = c.agent_boxes[first, np.arange(n)]
        speed = np.hypot(box[:, AgentIndex.VX], box[:, AgentIndex.VY])
        dyn = np.isin(c.agent_types, dynamic_types)
        stopped.append(~dyn | (speed <= 0.05))
        dynamic.append(dyn)
        radius.append(c.agent_extent[0])
    return {
        "boxes": pad_stack([c.agent_boxes for c in caches], 0.0, np.float64),
        "valid": pad_stack([c.agent_valid for c in caches], False, bool),
        "corners": pad_stack([c.agent_corners for c in caches], 0.0, np.float64),
        "types": pad_stack([c.agent_types for c in caches], -1, np.int64),
        "index": pad_stack([np.arange(c.agent_types.shape[0]) for c in caches], -1, np.int64),
        "dynamic": pad_stack(dynamic, False, bool),
        "stopped": pad_stack(stopped, False, bool),
        "radius": pad_stack(radius, 0.0, np.float64),
    }


def _centerlines(caches: Sequence[MetricCache]) -> dict[str, np.ndarray]:
    n = max(len(c.centerline) for c in caches)
    line = np.zeros((len(caches), n, 2))
    s = np.zeros((len(caches), n))
    valid = np.zeros((len(caches), n - 1), bool)
    for k, c in enumerate(caches):
        m = len(c.centerline)
        line[k, :m], line[k, m:] = c.centerline[:, :2], c.centerline[-1, :2]
        s[k, :m], s[k, m:] = c.centerline_s, c.centerline_s[-1]
        valid[k, : m - 1] = True
    return {"line": line, "s": s, "valid": valid}


def _red_lights(caches: Sequence[MetricCache]) -> dict[str, np.ndarray]:
    masks, edges, valids, bounds = [], [], [], []
    for c in caches:
        red = c.red_mask if c.red_mask.shape[1] else np.zeros((c.red_mask.shape[0], 1), bool)
        masks.append(red)
        e, v = polygon_edges(c.red_polygons) if c.red_mask.shape[1] else (np.zeros((1, 1, 4)), np.zeros((1, 1), bool))
        edges.append(e)
        valids.append(v)
        bnd = c.red_polygons.bounds if c.red_mask.shape[1] else np.zeros((1, 4))
        bounds.append(bnd)
    return {
        "mask": pad_stack(masks, False, bool),
        "edges": pad_stack(edges, 0.0, np.float64),
        "edge_valid": pad_stack(valids, False, bool),
        "bounds": pad_stack(bounds, 0.0, np.float64),
    }


def translated(cache: MetricCache, dx: float, dy: float) -> MetricCache:
    """``cache`` moved by ``(dx, dy)`` metres (every global x, y: agents, map and red-light polygons, their grid,
    centre line, ego states); the plans in the rear-axle frame are unchanged. For precision tests at UTM offsets."""

    def states(v: np.ndarray) -> np.ndarray:
        out = np.array(v, dtype=np.float64, copy=True)
        out[..., 0] += dx
        out[..., 1] += dy
        return out

    def polygons(p: PolygonSet) -> PolygonSet:
        return dataclasses.replace(p, coords=states(p.coords), bounds=p.bounds + np.array([dx, dy, dx, dy]))

    grid = cache.map_grid
    line = states(cache.centerline)
    return dataclasses.replace(
        cache, current_state=states(cache.current_state), agent_boxes=states(cache.agent_boxes),
        map_grid=dataclasses.replace(grid, polygons=polygons(grid.polygons), origin=grid.origin + np.array([dx, dy])),
        red_polygons=polygons(cache.red_polygons), centerline=line, reference_states=states(cache.reference_states),
        human_states=states(cache.human_states), history_states=states(cache.history_states),
    )  # fmt: skip
