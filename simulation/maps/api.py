"""``MapAPI``: the lane graph, polygon layers and spatial queries of one map.

Build it from a :class:`~simulation.maps.layers.MapData` (:meth:`MapAPI.from_data`) or from a maps root
(:meth:`MapAPI.load`, cached per process). Spatial queries use one shapely ``STRtree`` per layer, built on
first use. Everything is in the map's projected metric CRS.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Point, Polygon
from shapely.geometry.base import BaseGeometry

from simulation.maps import route as _route
from simulation.maps.errors import MapError, UnknownMapObjectError
from simulation.maps.gpkg import find_map_file, read_map
from simulation.maps.layers import DRIVABLE_AREA_LAYERS, GPKG_LAYERS, LAYER_NAMES, MapData, SemanticMapLayer
from simulation.maps.objects import (
    Lane,
    LaneConnector,
    LaneGraphEdge,
    Roadblock,
    RoadblockConnector,
    build_lane_graph,
)

__all__ = ["Lane", "LaneConnector", "MapAPI", "Roadblock", "RoadblockConnector"]

logger = logging.getLogger(__name__)

_Tree = tuple[np.ndarray, np.ndarray, shapely.STRtree]


class MapAPI:
    """Lane graph, polygons and spatial queries of one map.

    Attributes:
        map_name: the map location (``MapData.location``).
        data: the underlying :class:`MapData`.
        lanes, lane_connectors, roadblocks, roadblock_connectors: ``id -> object`` (ids are ``str(fid)``).
    """

    def __init__(self, data: MapData) -> None:
        self.data = data
        self.map_name = data.location
        self.lanes: dict[str, Lane]
        self.lane_connectors: dict[str, LaneConnector]
        self.roadblocks: dict[str, Roadblock]
        self.roadblock_connectors: dict[str, RoadblockConnector]
        self.lanes, self.lane_connectors, self.roadblocks, self.roadblock_connectors = build_lane_graph(data)
        self._polygons: dict[SemanticMapLayer, dict[str, BaseGeometry]] = {}
        self._trees: dict[SemanticMapLayer, _Tree] = {}
        self._lane_tree: tuple[np.ndarray, shapely.STRtree] | None = None

    @classmethod
    def from_data(cls, data: MapData) -> MapAPI:
        """A MapAPI over an in-memory map."""
        return cls(data)

    @classmethod
    def load(cls, maps_root: str | Path, location: str) -> MapAPI:
        """The MapAPI of ``location`` under ``maps_root`` (read once per process, then cached)."""
        return _load_cached(str(Path(maps_root).resolve()), location)

    @staticmethod
    def clear_cache() -> None:
        """Forget the maps :meth:`load` has cached in this process."""
        _load_cached.cache_clear()

    def __repr__(self) -> str:
        return (
            f"MapAPI({self.map_name!r}, lanes={len(self.lanes)}, lane_connectors={len(self.lane_connectors)}, "
            f"roadblocks={len(self.roadblocks)}, roadblock_connectors={len(self.roadblock_connectors)})"
        )

    # ------------------------------------------------------------------------------------------- objects

    def lane_edge(self, object_id: str) -> LaneGraphEdge:
        """The lane or lane connector with this id."""
        edge = self.lanes.get(object_id) or self.lane_connectors.get(object_id)
        if edge is None:
            raise UnknownMapObjectError(f"map {self.map_name}: no lane or lane connector {object_id!r}")
        return edge

    def lane_connector_polygon(self, connector_id: str) -> BaseGeometry:
        """Polygon of a lane connector (``gen_lane_connectors_scaled_width_polygons``)."""
        conn = self.lane_connectors.get(str(connector_id))
        if conn is None:
            raise UnknownMapObjectError(f"map {self.map_name}: no lane connector {connector_id!r}")
        return conn.polygon

    def red_light_polygons(self, red_ids: Iterable[str | int]) -> list[BaseGeometry]:
        """Polygons of the lane connectors among ``red_ids`` (ids not in this map are skipped)."""
        out = []
        for cid in red_ids:
            conn = self.lane_connectors.get(str(cid))
            if conn is not None:
                out.append(conn.polygon)
        return out

    # ------------------------------------------------------------------------------------------- polygons

    def _layer_polygons(self, layer: SemanticMapLayer) -> dict[str, BaseGeometry]:
        if layer == SemanticMapLayer.LANE:
            return {k: v.polygon for k, v in self.lanes.items()}
        if layer == SemanticMapLayer.LANE_CONNECTOR:
            return {k: v.polygon for k, v in self.lane_connectors.items()}
        if layer == SemanticMapLayer.ROADBLOCK:
            return {k: v.polygon for k, v in self.roadblocks.items()}
        if layer == SemanticMapLayer.ROADBLOCK_CONNECTOR:
            return {k: v.polygon for k, v in self.roadblock_connectors.items()}
        if layer == SemanticMapLayer.DRIVABLE_AREA:
            names: Sequence[str] = DRIVABLE_AREA_LAYERS
        elif layer in LAYER_NAMES:
            names = (LAYER_NAMES[layer],)
        else:
            raise MapError(f"map {self.map_name}: layer {layer.name} has no geometry in a nuPlan map")
        out: dict[str, BaseGeometry] = {}
        for name in names:
            vector = self.data.layers.get(name)
            for fid, geom in zip(vector.fids, vector.geometries) if vector is not None else ():
                if geom is not None:
                    key = str(int(fid))
                    out[f"{name}:{key}" if key in out else key] = geom  # fids may repeat across layers
        return out

    def polygons(self, layer: SemanticMapLayer) -> dict[str, BaseGeometry]:
        """``id -> geometry`` of a layer (LANE, LANE_CONNECTOR, ROADBLOCK, ROADBLOCK_CONNECTOR, INTERSECTION,
        CROSSWALK, WALKWAYS, CARPARK_AREA, STOP_LINE, DRIVABLE_AREA, BASELINE_PATHS, BOUNDARIES); cached."""
        layer = SemanticMapLayer(layer)
        if layer not in self._polygons:
            self._polygons[layer] = self._layer_polygons(layer)
        return self._polygons[layer]

    def _tree(self, layer: SemanticMapLayer) -> _Tree:
        layer = SemanticMapLayer(layer)
        if layer not in self._trees:
            polys = self.polygons(layer)
            ids = np.array(list(polys), dtype=object)
            geoms = np.array(list(polys.values()), dtype=object)
            self._trees[layer] = (ids, geoms, shapely.STRtree(geoms))
        return self._trees[layer]

    def lane_polygon_tree(self) -> tuple[np.ndarray, shapely.STRtree]:
        """``(ids (M,), STRtree)`` over the polygons of all lanes and lane connectors."""
        if self._lane_tree is None:
            edges = [*self.lanes.values(), *self.lane_connectors.values()]
            ids = np.array([e.id for e in edges], dtype=object)
            self._lane_tree = (ids, shapely.STRtree(np.array([e.polygon for e in edges], dtype=object)))
        return self._lane_tree

    # ------------------------------------------------------------------------------------------- queries

    def proximal_ids(
        self, point: np.ndarray, radius: float, layers: Iterable[SemanticMapLayer]
    ) -> dict[SemanticMapLayer, list[str]]:
        """Ids of the objects of each layer within ``radius`` metres of ``point`` ``(2,)`` (sorted by tree order)."""
        p = np.asarray(point, dtype=np.float64).reshape(-1)
        query = Point(float(p[0]), float(p[1]))
        out: dict[SemanticMapLayer, list[str]] = {}
        for layer in layers:
            ids, _, tree = self._tree(layer)
            hits = tree.query(query, predicate="dwithin", distance=float(radius)) if len(ids) else []
            out[SemanticMapLayer(layer)] = [str(ids[k]) for k in np.sort(hits)]
        return out

    def query_polygons(
        self, layer: SemanticMapLayer, geometry: BaseGeometry, predicate: str = "intersects"
    ) -> list[str]:
        """Ids of a layer's objects for which ``geometry <predicate> object`` holds (default: they intersect)."""
        ids, _, tree = self._tree(layer)
        if len(ids) == 0:
            return []
        return [str(ids[k]) for k in np.sort(tree.query(geometry, predicate=predicate))]

    def drivable_area(self, center: np.ndarray, radius: float) -> BaseGeometry:
        """Union of the road segments, intersections, generic drivable areas and carparks within ``radius`` of
        ``center`` ``(2,)`` (an empty Polygon if there are none)."""
        ids, geoms, tree = self._tree(SemanticMapLayer.DRIVABLE_AREA)
        if len(ids) == 0:
            return Polygon()
        c = np.asarray(center, dtype=np.float64).reshape(-1)
        hits = tree.query(Point(float(c[0]), float(c[1])), predicate="dwithin", distance=float(radius))
        return shapely.union_all(geoms[np.sort(hits)]) if len(hits) else Polygon()

    def is_in_drivable_area(self, points: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: whether each point of ``points`` ``(N, 2)`` lies in (or on the edge of) a drivable-area
        polygon; all points are tested in one tree query."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        out = np.zeros(len(pts), dtype=bool)
        ids, _, tree = self._tree(SemanticMapLayer.DRIVABLE_AREA)
        if len(ids) and len(pts):
            hits = tree.query(shapely.points(pts), predicate="intersects")
            out[hits[0]] = True
        return out

    # ------------------------------------------------------------------------------------------- routes

    def route_roadblock_ids(self, ids: Iterable[str | int]) -> list[str]:
        """The route with gaps between consecutive entries filled by the shortest connecting chain (BFS)."""
        return _route.route_roadblock_ids(self, ids)

    def route_lane_ids(self, route_ids: Iterable[str | int]) -> set[str]:
        """Lanes and lane connectors inside the route's roadblocks / roadblock connectors."""
        return _route.route_lane_ids(self, route_ids)

    def route_centerline(self, route_ids: Sequence[str | int], start_pose: np.ndarray) -> np.ndarray:
        """``(N, 2)`` centre line along the route starting at the lane nearest ``start_pose`` ``(3,)``."""
        return _route.route_centerline(self, route_ids, start_pose)

    def nearest_lane_id(self, pose: np.ndarray, route_ids: Sequence[str | int] | None = None) -> str:
        """Lane or lane connector nearest ``pose`` ``(3,)`` (heading breaks ties), optionally within a route."""
        return _route.nearest_lane_id(self, pose, route_ids)


#: Layers :meth:`MapAPI.load` reads (those missing from a file are skipped, except the lane-graph layers).
LOAD_LAYERS = GPKG_LAYERS


@lru_cache(maxsize=8)
def _load_cached(maps_root: str, location: str) -> MapAPI:
    path = find_map_file(maps_root, location)
    logger.info("loading map %s from %s", location, path)
    return MapAPI(read_map(path, layers=LOAD_LAYERS))
