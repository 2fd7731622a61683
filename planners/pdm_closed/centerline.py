"""PDM-Closed's route context: NAVSIM's starting lane, the discrete centre line from it and the lane speed limit.

NAVSIM (``AbstractPDMPlanner``) starts the centre line on ``_get_starting_lane`` (on-route lanes under the rear axle
by heading error, then the first route edge containing the ego centre, then the one nearest the ego footprint:
:func:`simulation.maps.route.starting_lane_id`), follows its Dijkstra search over the route lanes up to 30 route
entries ahead (:func:`simulation.maps.route.pdm_lane_path`) and builds the line from the lanes'
``baseline_path.discrete_path`` states (:func:`simulation.maps.route.pdm_discrete_centerline`); the IDM policies take
the starting lane's speed limit. The route-following planners of :mod:`planners.route` (nuPlan's IDM) keep their own
rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planners.route import PlannerInputError, _require_map
from simulation.maps.protocol import MapProtocol
from simulation.maps.route import pdm_discrete_centerline, starting_lane_id
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

    A centre line depends on the ego pose only through the starting lane (NAVSIM's lane search,
    ``simulation.maps.route.pdm_lane_path``), so it is built once per starting lane.
    """

    def __init__(self) -> None:
        self.key: tuple[int, tuple[str, ...]] | None = None
        self.map_api: MapProtocol | None = None
        self.route_ids: list[str] = []
        self.route_lanes: set[str] = set()
        self.paths: dict[str, np.ndarray] = {}

    def route(self, map_api: MapProtocol, ids: tuple[str, ...]) -> tuple[list[str], set[str]]:
        """The gap-repaired route and its lanes, rebuilt when the map or the route changes."""
        key = (id(map_api), tuple(str(i) for i in ids))
        if key != self.key or self.map_api is not map_api:
            self.key, self.map_api, self.paths = key, map_api, {}
            self.route_ids = map_api.route_roadblock_ids(ids)
            self.route_lanes = map_api.route_lane_ids(self.route_ids)
        return self.route_ids, self.route_lanes

    def discrete_path(self, map_api: MapProtocol, lane_id: str) -> np.ndarray:
        """``(N, 3)`` the discrete centre line from the starting lane ``lane_id`` (read-only, shared)."""
        if lane_id not in self.paths:
            states = pdm_discrete_centerline(map_api, self.route_ids, lane_id)
            states.flags.writeable = False  # shared by the later calls
            self.paths[lane_id] = states
        return self.paths[lane_id]


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
    states = cache.discrete_path(map_api, lane_id)
    if len(states) < 2:
        raise PlannerInputError(f"{observation.map_name}: route centre line has fewer than 2 points")
    limit = getattr(map_api.lanes.get(lane_id) or map_api.lane_connectors.get(lane_id), "speed_limit_mps", None)
    return PDMRouteContext(states, lane_id, set(route_lanes), None if limit is None else float(limit))
