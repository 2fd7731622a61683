"""Map geometry flattened for rasterisation: every ring of every object in one vertex array.

Built once per map (see :func:`simulation.render.map_geometry`); per frame the rasteriser only culls
objects by bounding box, transforms the visible vertices and fills them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from simulation.maps.layers import SemanticMapLayer
from simulation.maps.protocol import MapProtocol

logger = logging.getLogger(__name__)

_UNION_CACHE_SIZE = 64
#: Large areas (drivable area, route) are cut into tiles of this size (metres) so frames cull them.
TILE_M = 32.0


@dataclass
class RingSet:
    """Rings (polygon rings or polylines) of map objects, flattened.

    Attributes:
        object_ids: ``(O,)`` str map ids.
        object_bbox: ``(O, 4)`` float64 (xmin, ymin, xmax, ymax), NaN for objects without rings.
        vertices: ``(V, 2)`` float64 global coordinates of all rings, ring after ring.
        vertex_ring: ``(V,)`` int64 ring of each vertex.
        ring_lengths: ``(R,)`` int64 vertices per ring.
        ring_object: ``(R,)`` int64 object of each ring (non-decreasing).
        closed: True for polygons (filled, even-odd within an object), False for polylines (stroked).
    """

    object_ids: np.ndarray
    object_bbox: np.ndarray
    vertices: np.ndarray
    vertex_ring: np.ndarray
    ring_lengths: np.ndarray
    ring_object: np.ndarray
    closed: bool
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _object_rings: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64), repr=False)
    _ring_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64), repr=False)

    def __post_init__(self) -> None:
        self._index = {str(k): i for i, k in enumerate(self.object_ids.tolist())}
        counts = np.bincount(self.ring_object, minlength=self.num_objects) if len(self.ring_object) else None
        self._object_rings = np.r_[0, np.cumsum(counts)] if counts is not None else np.zeros(self.num_objects + 1)
        self._object_rings = self._object_rings.astype(np.int64)
        self._ring_starts = np.r_[0, np.cumsum(self.ring_lengths)].astype(np.int64)

    def select(self, object_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rings of the objects in ``object_mask`` ``(O,)``: (vertex indices ``(n,)``, ring lengths ``(r,)``,
        ring objects ``(r,)``), touching only the selected objects' data."""
        objects = np.flatnonzero(object_mask)
        rings = _ranges(self._object_rings[objects], self._object_rings[objects + 1])
        vertices = _ranges(self._ring_starts[rings], self._ring_starts[rings + 1])
        return vertices, self.ring_lengths[rings], self.ring_object[rings]

    @property
    def num_objects(self) -> int:
        return int(self.object_ids.shape[0])

    def in_view(self, bbox: np.ndarray) -> np.ndarray:
        """``(O,)`` bool: objects whose bbox overlaps ``bbox`` (xmin, ymin, xmax, ymax)."""
        b = self.object_bbox
        return (b[:, 0] <= bbox[2]) & (b[:, 2] >= bbox[0]) & (b[:, 1] <= bbox[3]) & (b[:, 3] >= bbox[1])

    def id_mask(self, ids: Any) -> np.ndarray:
        """``(O,)`` bool: objects whose id is in ``ids`` (unknown ids are ignored)."""
        mask = np.zeros(self.num_objects, dtype=bool)
        hits = [self._index[i] for i in ids if i in self._index]
        mask[hits] = True
        return mask

    @staticmethod
    def from_polylines(ids: list[str], lines: list[np.ndarray]) -> RingSet:
        """One open ring per object from polylines ``(n_i, 2)`` (lines with fewer than 2 points are dropped)."""
        keep = [k for k, line in enumerate(lines) if len(line) >= 2]
        arrays = [np.asarray(lines[k], dtype=np.float64)[:, :2] for k in keep]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        vertices = np.concatenate(arrays) if arrays else np.zeros((0, 2))
        ring_object = np.array(keep, dtype=np.int64)
        return _assemble(np.asarray(ids, dtype=object), vertices, lengths, ring_object, closed=False)

    @staticmethod
    def from_geometries(
        ids: list[str], geometries: list[Any], erode_m: float = 0.0, tile_m: float | None = None
    ) -> RingSet:
        """Polygon rings (exteriors and holes) of shapely (multi)polygons, each eroded by ``erode_m``.

        With ``tile_m``, each eroded geometry is cut into ``tile_m`` square tiles (one object per tile, same
        id) so that a frame only transforms the tiles in view; tiles overlap by nothing and, as cut edges are
        not eroded, the inclusive fill leaves no gap between them.
        """
        geoms = np.empty(len(geometries), dtype=object)
        geoms[:] = list(geometries)
        geoms = _valid(geoms)
        if len(geoms) and erode_m > 0:
            geoms = shapely.buffer(geoms, -erode_m, join_style="mitre")
        ids_arr = np.asarray(ids, dtype=object)
        if len(geoms) and tile_m is not None:
            geoms, ids_arr = _tiles(geoms, ids_arr, tile_m)
        if len(geoms) == 0:
            return _assemble(ids_arr, np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64), True)
        parts, part_obj = shapely.get_parts(geoms, return_index=True)
        keep = (shapely.get_type_id(parts) == shapely.GeometryType.POLYGON) & ~shapely.is_empty(parts)
        parts, part_obj = parts[keep], part_obj[keep]
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        coords, vertex_ring = shapely.get_coordinates(rings, return_index=True)
        lengths = np.bincount(vertex_ring, minlength=len(rings)).astype(np.int64)
        return _assemble(ids_arr, coords, lengths, part_obj[ring_part].astype(np.int64), True)


def _tiles(geoms: np.ndarray, ids: np.ndarray, tile_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut geometries ``(G,)`` into grid tiles of ``tile_m`` metres; returns (pieces, their ids)."""
    pieces, piece_ids = [], []
    for geom, gid in zip(geoms, ids, strict=True):
        if geom is None or geom.is_empty:
            continue
        x0, y0, x1, y1 = geom.bounds
        xs = np.arange(np.floor(x0 / tile_m), np.ceil(x1 / tile_m) + 1) * tile_m
        ys = np.arange(np.floor(y0 / tile_m), np.ceil(y1 / tile_m) + 1) * tile_m
        gx, gy = np.meshgrid(xs[:-1], ys[:-1])
        cells = shapely.box(gx.ravel(), gy.ravel(), gx.ravel() + tile_m, gy.ravel() + tile_m)
        cut = shapely.intersection(geom, cells)
        cut = cut[~shapely.is_empty(cut)]
        pieces.extend(cut.tolist())
        piece_ids.extend([gid] * len(cut))
    out = np.empty(len(pieces), dtype=object)
    out[:] = pieces
    return out, np.asarray(piece_ids, dtype=object)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[k], ends[k])`` over ``k``, vectorised."""
    lengths = ends - starts
    if len(lengths) == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))


def _assemble(
    ids: np.ndarray, vertices: np.ndarray, lengths: np.ndarray, ring_object: np.ndarray, closed: bool
) -> RingSet:
    """Build a :class:`RingSet` (computes vertex -> ring and object bounding boxes)."""
    order = np.argsort(ring_object, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        vertices = np.concatenate([vertices[s : s + n] for s, n in zip(starts[order], lengths[order], strict=True)])
        lengths, ring_object = lengths[order], ring_object[order]
    vertex_ring = np.repeat(np.arange(len(lengths)), lengths)
    bbox = np.full((len(ids), 4), np.nan)
    if len(vertices):
        obj = ring_object[vertex_ring]
        for col, (fn, axis) in enumerate(((np.fmin, 0), (np.fmin, 1), (np.fmax, 0), (np.fmax, 1))):
            fn.at(bbox[:, col], obj, vertices[:, axis])
    return RingSet(
        ids, bbox, np.ascontiguousarray(vertices, dtype=np.float64), vertex_ring, lengths, ring_object, closed
    )


@dataclass
class MapRasterGeometry:
    """All map geometry the raster draws, flattened (global coordinates).

    Polygons are eroded by ``erode_m`` (half a pixel). Objects that share edges within one channel (the lanes
    of a route) are united before erosion, so no seam opens between them: the route area is built once per
    route and cached.

    Attributes:
        drivable: drivable-area polygons.
        centerlines: baselines of lanes and lane connectors.
        boundaries: left and right boundaries of lanes.
        crosswalks: crosswalk polygons.
        connectors: lane-connector polygons for the red-light channel, eroded by only ``erode_m / 10``: red
            connectors are drawn one by one (no union per frame), and this small erosion opens no seam between
            neighbours while pixel-aligned edges stay exact (areas are dilated by at most 0.45 px).
        lane_ids: ``(M,)`` ids of lanes then lane connectors; ``lane_geoms`` ``(M,)`` their polygons (not eroded).
        lane_bbox: ``(M, 4)`` their bounding boxes.
        erode_m: erosion applied to polygons.
    """

    drivable: RingSet
    centerlines: RingSet
    boundaries: RingSet
    crosswalks: RingSet
    connectors: RingSet
    lane_ids: np.ndarray
    lane_geoms: np.ndarray
    lane_bbox: np.ndarray
    erode_m: float
    _unions: OrderedDict[tuple[str, frozenset[str]], RingSet] = field(default_factory=OrderedDict, repr=False)
    _route_lanes: dict[tuple[str, ...], frozenset[str]] = field(default_factory=dict, repr=False)
    _lane_index: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def num_vertices(self) -> int:
        sets = (self.drivable, self.centerlines, self.boundaries, self.crosswalks)
        return int(sum(len(s.vertices) for s in sets))

    def united(self, kind: str, ids: Any, view: np.ndarray | None = None) -> RingSet:
        """Union of the lanes / connectors ``ids`` (those overlapping the bbox ``view`` (4,) when given) as one
        eroded object; LRU-cached per ``(kind, ids)``."""
        if not self._lane_index:
            self._lane_index = {k: i for i, k in enumerate(self.lane_ids.tolist())}
        mask = np.zeros(len(self.lane_ids), dtype=bool)
        mask[[self._lane_index[i] for i in ids if i in self._lane_index]] = True
        if view is not None:
            b = self.lane_bbox
            mask &= (b[:, 0] <= view[2]) & (b[:, 2] >= view[0]) & (b[:, 1] <= view[3]) & (b[:, 3] >= view[1])
        key = (kind, frozenset(self.lane_ids[mask].tolist()))
        rings = self._unions.get(key)
        if rings is None:
            geoms = [_closed_union(self.lane_geoms[mask], self.erode_m)] if mask.any() else []
            rings = RingSet.from_geometries([kind] * len(geoms), geoms, self.erode_m, TILE_M)
            self._unions[key] = rings
            if len(self._unions) > _UNION_CACHE_SIZE:
                self._unions.popitem(last=False)
        else:
            self._unions.move_to_end(key)
        return rings

    def route(self, map_api: MapProtocol, route_ids: tuple[str, ...]) -> RingSet:
        """Lanes and connectors inside the route roadblocks ``route_ids``, united and eroded (cached)."""
        lane_ids = self._route_lanes.get(route_ids)
        if lane_ids is None:
            lane_ids = frozenset(str(i) for i in map_api.route_lane_ids(list(route_ids))) if route_ids else frozenset()
            if len(self._route_lanes) > _UNION_CACHE_SIZE:
                self._route_lanes.clear()
            self._route_lanes[route_ids] = lane_ids
        return self.united("route", lane_ids)

    @staticmethod
    def from_map_api(map_api: MapProtocol, erode_m: float) -> MapRasterGeometry:
        """Flatten a :class:`~simulation.maps.api.MapAPI` (uses lanes, lane_connectors, polygons, drivable_area)."""
        lanes = list(map_api.lanes.values())
        both = lanes + list(map_api.lane_connectors.values())
        lane_ids = np.array([str(o.id) for o in both], dtype=object)
        lane_geoms = np.empty(len(both), dtype=object)
        lane_geoms[:] = [o.polygon for o in both]
        lane_geoms = _valid(lane_geoms, map_api)
        lane_bbox = shapely.bounds(lane_geoms).reshape(-1, 4)
        crosswalks = map_api.polygons(SemanticMapLayer.CROSSWALK)
        drivable = whole_drivable_area(map_api, lane_bbox, crosswalks)
        boundary_ids = [f"{o.id}:{side}" for o in lanes for side in ("left", "right")]
        boundary_lines = [line for o in lanes for line in (o.left_boundary, o.right_boundary)]
        return MapRasterGeometry(
            drivable=RingSet.from_geometries(["drivable_area"] * len(drivable), drivable, erode_m, TILE_M),
            centerlines=RingSet.from_polylines(list(lane_ids), [np.asarray(o.baseline) for o in both]),
            boundaries=RingSet.from_polylines(boundary_ids, [np.asarray(b) for b in boundary_lines]),
            crosswalks=RingSet.from_geometries([str(k) for k in crosswalks], list(crosswalks.values()), erode_m),
            connectors=RingSet.from_geometries(
                list(lane_ids[len(lanes) :]), list(lane_geoms[len(lanes) :]), erode_m / 10.0
            ),
            lane_ids=lane_ids,
            lane_geoms=lane_geoms,
            lane_bbox=lane_bbox,
            erode_m=erode_m,
        )


def _closed_union(geoms: np.ndarray, gap_m: float) -> Any:
    """Union of polygons ``(G,)`` with slivers and holes narrower than ``2 * gap_m`` closed (lanes of real and
    synthetic maps meet with tiny gaps, which erosion would widen into visible holes)."""
    union = shapely.union_all(geoms)
    return shapely.buffer(shapely.buffer(union, gap_m, join_style="mitre"), -gap_m, join_style="mitre")


def _valid(geoms: np.ndarray, source: Any = None) -> np.ndarray:
    """``geoms`` with invalid polygons (self-intersections, ...) repaired by ``shapely.make_valid``."""
    bad = ~shapely.is_valid(geoms) if len(geoms) else np.zeros(0, dtype=bool)
    if bad.any():
        name = getattr(source, "map_name", "map")
        logger.warning("%s: %d invalid polygons repaired for rasterisation", name, int(bad.sum()))
        geoms = geoms.copy()
        geoms[bad] = shapely.make_valid(geoms[bad])
    return geoms


def whole_drivable_area(map_api: MapProtocol, lane_bbox: np.ndarray, crosswalks: Mapping[str, Any]) -> list[Any]:
    """The drivable area of the whole map (bounded by its lanes ``(M, 4)`` and crosswalks), as disjoint polygons."""
    boxes = [lane_bbox.reshape(-1, 4), np.array([shapely.bounds(g) for g in crosswalks.values()]).reshape(-1, 4)]
    bbox = np.concatenate(boxes)
    bbox = bbox[np.isfinite(bbox).all(1)]
    if len(bbox) == 0:
        return []
    lo, hi = bbox[:, :2].min(0), bbox[:, 2:].max(0)
    centre, radius = (lo + hi) / 2.0, float(np.hypot(*(hi - lo)) / 2.0 + 100.0)
    area = map_api.drivable_area(centre, radius)
    if area is None or area.is_empty:
        return []
    return list(shapely.get_parts(area))
