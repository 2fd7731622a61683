"""What the route-following planners (IDM, PDM-Closed) read from an observation: the route centre line, its lanes
and speed limit, the current agents and the red on-route lane connectors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from shapely.geometry import Point

from simulation.maps.protocol import MapProtocol
from simulation.protocols import Observation
from simulation.types import TrafficLightStatus


class PlannerInputError(ValueError):
    """The observation lacks what a planner needs (map, route, log)."""


def _current_agents(observation: Observation) -> np.ndarray:
    """``(M, 7)`` boxes of the agents observed at the current frame."""
    agents = observation.agents
    if agents.num_agents == 0:
        return np.zeros((0, 7))
    return agents.boxes[-1][agents.valid[-1]]


def _red_connector_ids(observation: Observation, route_lanes: set[str]) -> list[str]:
    """Ids of the on-route lane connectors whose light is RED at the current frame."""
    lights = observation.traffic_lights
    if lights.status.ndim != 2 or lights.status.shape[-1] == 0:
        return []
    pairs = zip(lights.lane_connector_ids, lights.status[-1])
    return [str(i) for i, s in pairs if s == TrafficLightStatus.RED and str(i) in route_lanes]


def _red_stop_points(observation: Observation, map_api: MapProtocol, route_lanes: set[str]) -> np.ndarray:
    """``(R, 2)`` entry points of the on-route lane connectors that are RED now."""
    red = _red_connector_ids(observation, route_lanes)
    points = [map_api.lane_connectors[i].baseline[0, :2] for i in red if i in map_api.lane_connectors]
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


@dataclass
class _RouteContext:
    """The route path of one planning step."""

    path: np.ndarray  # (N, 2) centre line
    route_lanes: set[str]
    speed_limit: float | None


class _RouteCache:
    """What a planner keeps of the route between calls: the gap-repaired route and its lanes (per map and route),
    and the centre lines already built.

    A centre line depends on the ego pose only through the start lane (the route lane nearest the pose) and the
    order of that lane's route siblings by distance to the pose (``simulation.maps.route.route_centerline``), so
    it is reused when both are the same.
    """

    def __init__(self) -> None:
        self.key: tuple[int, tuple[str, ...]] | None = None
        self.map_api: MapProtocol | None = None
        self.route_ids: list[str] = []
        self.route_lanes: set[str] = set()
        self.paths: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def route(self, map_api: MapProtocol, ids: tuple[str, ...]) -> tuple[list[str], set[str]]:
        key = (id(map_api), tuple(str(i) for i in ids))
        if key != self.key or self.map_api is not map_api:
            self.key, self.map_api, self.paths = key, map_api, {}
            self.route_ids = map_api.route_roadblock_ids(ids)
            self.route_lanes = map_api.route_lane_ids(self.route_ids)
        return self.route_ids, self.route_lanes

    def centerline(self, map_api: MapProtocol, route_ids: list[str], lane_id: str, pose: np.ndarray) -> np.ndarray:
        edge = map_api.lane_edge(lane_id)
        block = map_api.roadblocks.get(edge.roadblock_id) or map_api.roadblock_connectors.get(edge.roadblock_id)
        siblings = [i for i in (block.interior_ids if block is not None else ()) if i != lane_id]
        siblings = [i for i in siblings if i in self.route_lanes]
        here = Point(float(pose[0]), float(pose[1]))
        order = tuple(sorted(siblings, key=lambda i: (map_api.lane_edge(i).polygon.distance(here), i)))
        key = (lane_id, order)
        if key not in self.paths:
            path = np.array(map_api.route_centerline(route_ids, pose), dtype=np.float64)
            path.flags.writeable = False  # shared by the later calls
            self.paths[key] = path
        return self.paths[key]


def _require_map(observation: Observation) -> MapProtocol:
    """The observation's map; ``PlannerInputError`` when it has none."""
    if observation.map_api is None:
        raise PlannerInputError(f"{observation.map_name}: this planner needs the map (observation.map_api is None)")
    return observation.map_api


def _route_context(observation: Observation, cache: _RouteCache | None = None) -> _RouteContext:
    map_api = _require_map(observation)
    if not observation.route_roadblock_ids:
        raise PlannerInputError(f"{observation.map_name}: observation has no route roadblock ids")
    pose = observation.current_state[:3]
    if cache is None:
        route_ids = map_api.route_roadblock_ids(observation.route_roadblock_ids)
        route_lanes = map_api.route_lane_ids(route_ids)
        path = np.asarray(map_api.route_centerline(route_ids, pose), dtype=np.float64)
        lane_id = map_api.nearest_lane_id(pose, route_ids)
    else:
        route_ids, route_lanes = cache.route(map_api, tuple(observation.route_roadblock_ids))
        lane_id = map_api.nearest_lane_id(pose, route_ids)
        path = cache.centerline(map_api, route_ids, lane_id, pose)
    if path.ndim != 2 or len(path) < 2:
        raise PlannerInputError(f"{observation.map_name}: route centre line has fewer than 2 points")
    lane = map_api.lanes.get(lane_id) or map_api.lane_connectors.get(lane_id)
    limit = getattr(lane, "speed_limit_mps", None)
    return _RouteContext(path, set(route_lanes), float(limit) if limit else None)
