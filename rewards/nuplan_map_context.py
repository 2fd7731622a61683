"""The map around one closed-loop scenario, gathered once for nuPlan's closed-loop metrics.

nuPlan's metrics ask the map one point at a time (``get_one_map_object``, ``is_in_layer``). Here the
lanes, lane connectors, roadblocks and drivable area near the scenario are fetched once into a
:class:`LaneGraphContext`; membership of many points is then one vectorised shapely call
(``contains_xy`` over a ``(M, P)`` grid).

The map object passed to :func:`build_lane_graph_context` needs only the attributes of
``simulation.maps.api.MapAPI`` used here: ``lanes``, ``lane_connectors``, ``roadblocks``,
``roadblock_connectors`` (dicts of objects with ``id``, ``polygon``, ``baseline``, ``roadblock_id``,
``speed_limit_mps``, ``incoming_ids``, ``outgoing_ids``), ``proximal_ids(point, radius, layers)``,
``drivable_area(center, radius)`` and ``polygons(layer)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from simulation.geometry import polyline_lengths, project_on_polyline
from simulation.maps.layers import SemanticMapLayer
from simulation.maps.protocol import MapProtocol


@dataclass(frozen=True)
class LaneGraphContext:
    """Lanes and lane connectors near a scenario (``M`` objects), plus the polygons the metrics need.

    Attributes:
        ids: ``M`` map ids, lanes first, then lane connectors.
        is_connector: ``(M,)`` bool.
        polygons: ``(M,)`` object array of prepared shapely polygons.
        baselines: ``M`` baselines ``(P_i, 2)``.
        roadblock_ids: ``M`` ids of the roadblock / roadblock connector holding each object.
        speed_limits: ``(M,)`` m/s; NaN where unknown. For a connector: the max over its incoming and
            outgoing lanes (NaN if any of them is unknown), as nuPlan's speed-limit metric does.
        outgoing: ``M`` sets of outgoing ids; ``incoming``: ``M`` sets of incoming ids.
        roadblock_polygons: roadblock (connector) id -> polygon, for the roadblocks of these objects.
        drivable_area: union of the drivable layers around the scenario (may be empty).
        intersections: union of the intersection polygons around the scenario (may be empty).
    """

    ids: tuple[str, ...]
    is_connector: np.ndarray
    polygons: np.ndarray
    baselines: tuple[np.ndarray, ...]
    roadblock_ids: tuple[str, ...]
    speed_limits: np.ndarray
    outgoing: tuple[frozenset[str], ...]
    incoming: tuple[frozenset[str], ...]
    roadblock_polygons: dict[str, BaseGeometry]
    drivable_area: BaseGeometry
    intersections: BaseGeometry

    @property
    def num_objects(self) -> int:
        return len(self.ids)

    @property
    def index(self) -> dict[str, int]:
        """Map id -> position in ``ids``."""
        return {i: k for k, i in enumerate(self.ids)}

    def contains(self, points: np.ndarray) -> np.ndarray:
        """``(..., M)`` bool: object ``m`` contains point ``(..., 2)`` (boundary excluded, as nuPlan)."""
        pts = np.asarray(points, dtype=np.float64)
        flat = pts.reshape(-1, 2)
        if self.num_objects == 0:
            return np.zeros((*pts.shape[:-1], 0), dtype=bool)
        inside = shapely.contains_xy(self.polygons[:, None], flat[None, :, 0], flat[None, :, 1])  # (M, P)
        return inside.T.reshape(*pts.shape[:-1], self.num_objects)

    def route_objects(self, points: np.ndarray) -> np.ndarray:
        """nuPlan's ``get_current_route_objects`` for points ``(P, 2)``: ``(P, M)`` bool.

        A point inside a lane gets that lane only (the first one); otherwise every lane connector
        containing it.
        """
        inside = self.contains(points)
        in_lane = inside & ~self.is_connector
        has_lane = in_lane.any(-1)
        first_lane = np.zeros_like(inside)
        rows = np.flatnonzero(has_lane)
        first_lane[rows, in_lane[rows].argmax(-1)] = True
        return np.where(has_lane[:, None], first_lane, inside & self.is_connector)

    def project(self, points: np.ndarray, object_index: np.ndarray) -> np.ndarray:
        """Arc length ``(P,)`` of each point ``(P, 2)`` on the baseline of ``object_index[p]`` (NaN if < 0)."""
        out = np.full(len(points), np.nan)
        for m in np.unique(object_index[object_index >= 0]):
            sel = object_index == m
            out[sel] = project_on_polyline(points[sel], self.baselines[m])[0]
        return out

    def baseline_length(self, m: int) -> float:
        return float(polyline_lengths(self.baselines[m])[-1])


def _union(geoms: list[Any]) -> BaseGeometry:
    return shapely.union_all(np.asarray(geoms, dtype=object)) if geoms else shapely.Polygon()


def _connector_speed_limit(map_api: MapProtocol, connector: Any) -> float:
    lanes = [map_api.lanes.get(i) for i in (*connector.incoming_ids, *connector.outgoing_ids)]
    limits = [lane.speed_limit_mps if lane is not None else None for lane in lanes]
    known = [float(v) for v in limits if v is not None]
    if not limits or len(known) < len(limits):
        return float("nan")
    return max(known)


def build_lane_graph_context(map_api: MapProtocol, points: np.ndarray, margin: float = 30.0) -> LaneGraphContext:
    """Gather the map near ``points`` ``(P, 2)`` (ego and expert positions of a scenario) once.

    Everything within the bounding circle of the points plus ``margin`` metres is fetched.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lo, hi = pts.min(0), pts.max(0)
    center = (lo + hi) / 2.0
    radius = float(np.linalg.norm(hi - lo) / 2.0 + margin)
    near = map_api.proximal_ids(
        center, radius, [SemanticMapLayer.LANE, SemanticMapLayer.LANE_CONNECTOR, SemanticMapLayer.INTERSECTION]
    )
    lanes = [map_api.lanes[i] for i in near.get(SemanticMapLayer.LANE, [])]
    connectors = [map_api.lane_connectors[i] for i in near.get(SemanticMapLayer.LANE_CONNECTOR, [])]
    objects = lanes + connectors
    polygons = np.asarray([o.polygon for o in objects], dtype=object)
    shapely.prepare(polygons)
    speed = [float("nan") if o.speed_limit_mps is None else float(o.speed_limit_mps) for o in lanes] + [
        _connector_speed_limit(map_api, c) for c in connectors
    ]
    roadblock_polygons: dict[str, BaseGeometry] = {}
    for o in objects:
        block = map_api.roadblocks.get(o.roadblock_id) or map_api.roadblock_connectors.get(o.roadblock_id)
        if block is not None:
            roadblock_polygons[o.roadblock_id] = block.polygon
    shapely.prepare(np.asarray(list(roadblock_polygons.values()), dtype=object))
    inter_polys = map_api.polygons(SemanticMapLayer.INTERSECTION) if near.get(SemanticMapLayer.INTERSECTION) else {}
    intersections = _union([inter_polys[i] for i in near.get(SemanticMapLayer.INTERSECTION, []) if i in inter_polys])
    drivable = map_api.drivable_area(center, radius)
    shapely.prepare(drivable)
    shapely.prepare(intersections)
    return LaneGraphContext(
        ids=tuple(str(o.id) for o in objects),
        is_connector=np.array([False] * len(lanes) + [True] * len(connectors), dtype=bool),
        polygons=polygons,
        baselines=tuple(np.asarray(o.baseline, dtype=np.float64)[:, :2] for o in objects),
        roadblock_ids=tuple(str(o.roadblock_id) for o in objects),
        speed_limits=np.asarray(speed, dtype=np.float64),
        outgoing=tuple(frozenset(map(str, o.outgoing_ids)) for o in objects),
        incoming=tuple(frozenset(map(str, o.incoming_ids)) for o in objects),
        roadblock_polygons=roadblock_polygons,
        drivable_area=drivable,
        intersections=intersections,
    )
