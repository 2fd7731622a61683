"""PDM-Closed's route context: NAVSIM's starting lane, the discrete centre line from it and the lane speed limit.

NAVSIM (``AbstractPDMPlanner``) starts the centre line on ``_get_starting_lane`` (on-route lanes under the rear axle
by heading error, then the first route edge containing the ego centre, then the one nearest the ego footprint:
:func:`simulation.maps.route.starting_lane_id`) and builds it from the lanes' ``baseline_path.discrete_path`` states
(:func:`simulation.maps.route.route_discrete_path`); the IDM policies take that lane's speed limit. The
route-following planners of :mod:`planners.route` (nuPlan's IDM) keep their own rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from shapely.geometry import Point

from planners.route import PlannerInputError, _require_map
from simulation.maps.protocol import MapProtocol
from simulation.maps.route import route_discrete_path, starting_lane_id
from simulation.protocols import Observation


@dataclass
class PDMRouteContext:
    """The route of one PDM-Closed call.

    Attributes:
        states: ``(N, 3)`` the discrete centre line (x, y, heading), read-only.
        lane_id: the starting lane. route_lanes: ids of the on-route lanes and lane connectors.
        speed_limit: the starting lane's speed limit (m/s), ``None`` when unknown (a 0 limit is kept, as NAVSIM's
            ``BatchIDMPolicy.update`` does).
    """

    states: np.ndarray
    lane_id: str
    route_lanes: set[str]
    speed_limit: float | None


class PDMRouteCache:
    """What PDM-Closed keeps between calls: the gap-repaired route and its lanes (per map and route) and the
    discrete centre lines already built.

    A centre line depends on the ego pose only through the starting lane and the order of that lane's route
    siblings by distance to the rear axle (``simulation.maps.route.route_lane_chain``), so it is reused when both
    are the same.
    """

    def __init__(self) -> None:
        self.key: tuple[int, tuple[str, ...]] | None = None
        self.map_api: MapProtocol | None = None
        self.route_ids: list[str] = []
        self.route_lanes: set[str] = set()
        self.paths: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def route(self, map_api: MapProtocol, ids: tuple[str, ...]) -> tuple[list[str], set[str]]:
        """The gap-repaired route and its lanes, rebuilt when the map or the route changes."""
        key = (id(map_api), tuple(str(i) for i in ids))
        if key != self.key or self.map_api is not map_api:
            self.key, self.map_api, self.paths = key, map_api, {}
            self.route_ids = map_api.route_roadblock_ids(ids)
            self.route_lanes = map_api.route_lane_ids(self.route_ids)
        return self.route_ids, self.route_lanes

    def discrete_path(self, map_api: MapProtocol, lane_id: str, pose: np.ndarray) -> np.ndarray:
        """``(N, 3)`` the discrete centre line from ``lane_id`` for the rear axle ``pose`` ``(3,)``."""
        edge = map_api.lane_edge(lane_id)
        block = map_api.roadblocks.get(edge.roadblock_id) or map_api.roadblock_connectors.get(edge.roadblock_id)
        siblings = [i for i in (block.interior_ids if block is not None else ()) if i != lane_id]
        here = Point(float(pose[0]), float(pose[1]))
        order = tuple(sorted((i for i in siblings if i in self.route_lanes),
                             key=lambda i: (map_api.lane_edge(i).polygon.distance(here), i)))  # fmt: skip
        key = (lane_id, order)
        if key not in self.paths:
            states = route_discrete_path(map_api, self.route_ids, pose, lane_id)
            states.flags.writeable = False  # shared by the later calls
            self.paths[key] = states
        return self.paths[key]


def pdm_route_context(observation: Observation, cache: PDMRouteCache | None = None) -> PDMRouteContext:
    """The route context of ``observation`` (``cache`` reuses the route and the centre lines between calls).

    Raises:
        PlannerInputError: no map, no route, or a centre line of fewer than 2 points.
    """
    map_api = _require_map(observation)
    if not observation.route_roadblock_ids:
        raise PlannerInputError(f"{observation.map_name}: observation has no route roadblock ids")
    pose = np.asarray(observation.current_state[:3], dtype=np.float64)
    cache = cache if cache is not None else PDMRouteCache()
    route_ids, route_lanes = cache.route(map_api, tuple(observation.route_roadblock_ids))
    lane_id = starting_lane_id(map_api, route_ids, pose)
    states = cache.discrete_path(map_api, lane_id, pose)
    if len(states) < 2:
        raise PlannerInputError(f"{observation.map_name}: route centre line has fewer than 2 points")
    limit = getattr(map_api.lanes.get(lane_id) or map_api.lane_connectors.get(lane_id), "speed_limit_mps", None)
    return PDMRouteContext(states, lane_id, set(route_lanes), None if limit is None else float(limit))
