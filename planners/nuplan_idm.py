"""nuPlan's ``IDMPlanner`` (``nuplan/planning/simulation/planner/idm_planner.py`` and ``abstract_idm_planner.py``,
the IDM of ``observation/idm/idm_policy.py``), the IDM baseline of the published nuPlan closed-loop scores.

At the first step of a scenario the planner builds its path along the route (:mod:`planners.nuplan_idm_path`) and
fixes its target speed: the speed limit of the path's first edge (``target_velocity`` when it has none), raised to
the ego's speed when that is higher. At every step:

1. the occupancy map holds the observed objects (agents and static objects) whose centre is closer than
   ``occupancy_map_radius`` to the ego centre, and the polygons of the RED lane connectors of the route's
   roadblocks;
2. ``planned_trajectory_samples`` times, ``planned_trajectory_sample_interval`` apart, the leader is chosen and the
   IDM state (progress along the path, speed) takes one forward-Euler step of the whole interval:

   - the expanded path is the path from the ego's progress to ``target speed x horizon`` ahead, buffered by half
     the ego width (square caps), together with the ego footprint;
   - among the objects whose polygon meets it, the one nearest the ego footprint (polygon distance) leads:
     an agent at that distance with its speed projected on the ego heading (``|v| cos(dheading)``, 0 for a static
     object), a red connector at that distance with speed 0 (0 m when the ego is already on the connector);
   - with none, the path end leads at 0 m/s, half the ego length behind it;
   - the ego footprint and heading of the next sample are those of the box centred on the path at the new
     progress; the objects stay where they were observed.

The trajectory's poses are the rear axles of those boxes. Its first pose (t = 0) is the ego's projection onto the
path, which the closed loop's tracker starts from (``start_pose``, as nuPlan's trajectory starts there).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon

from planners.nuplan_idm_path import IDMPath, build_path, route_blocks, route_plan
from planners.route import PlannerInputError
from simulation.geometry import (
    agent_box_corners,
    center_to_rear_axle,
    global_to_local,
    rear_axle_to_center,
)
from simulation.maps.protocol import MapProtocol
from simulation.protocols import Observation
from simulation.types import (
    DYNAMIC_TYPES,
    PACIFICA,
    AgentIndex,
    StateIndex,
    TrafficLightStatus,
    Trajectory,
    VehicleParameters,
)

logger = logging.getLogger(__name__)

__all__ = [
    "IDMPlanner",
    "IDMTrajectory",
    "Leader",
    "NuPlanIDMConfig",
    "PlannerInputError",
    "idm_acceleration",
    "idm_euler_step",
]


@dataclass(frozen=True)
class NuPlanIDMConfig:
    """nuPlan's ``config/simulation/planner/idm_planner.yaml`` (names and defaults)."""

    target_velocity: float = 10.0  # m/s, free-road speed where the path's first edge has no speed limit
    min_gap_to_lead_agent: float = 1.0  # m
    headway_time: float = 1.5  # s
    accel_max: float = 1.0  # m/s^2
    decel_max: float = 3.0  # m/s^2 (positive)
    planned_trajectory_samples: int = 16
    planned_trajectory_sample_interval: float = 0.5  # s
    occupancy_map_radius: float = 40.0  # m, from the ego centre

    @property
    def horizon_s(self) -> float:
        return self.planned_trajectory_samples * self.planned_trajectory_sample_interval


@dataclass(frozen=True)
class Leader:
    """What the IDM follows: ``distance`` (m) to it, its ``speed`` (m/s) and the ``length_rear`` (m) between
    that point and its rear (nuPlan's ``IDMLeadAgentState``: progress, velocity, length_rear)."""

    distance: float
    speed: float
    length_rear: float = 0.0


def idm_acceleration(speed: float, target_speed: float, leader: Leader, config: NuPlanIDMConfig) -> float:
    """nuPlan's ``IDMPolicy.idm_model`` (exponent 4), unclipped.

    ``a (1 - (v / v0)^4 - (s* / s)^2)`` with ``s* = s0 + v T + v (v - v_lead) / (2 sqrt(a b))`` and
    ``s = max(distance - length_rear, s0)``.
    """
    c = config
    desired = c.min_gap_to_lead_agent + speed * c.headway_time
    desired += speed * (speed - leader.speed) / (2.0 * math.sqrt(c.accel_max * c.decel_max))
    gap = max(leader.distance - leader.length_rear, c.min_gap_to_lead_agent)
    return c.accel_max * (1.0 - (speed / target_speed) ** 4 - (desired / gap) ** 2)


def idm_euler_step(
    speed: float, target_speed: float, leader: Leader, dt: float, config: NuPlanIDMConfig
) -> tuple[float, float]:
    """(travelled distance, new speed) of one forward-Euler step of ``dt`` (``solve_forward_euler_idm_policy``
    with the acceleration clipped to ``[-decel_max, accel_max]``, then the speed floored at 0 by ``_propagate``)."""
    accel = idm_acceleration(speed, target_speed, leader, config)
    accel = min(max(accel, -config.decel_max), config.accel_max)
    return dt * speed, max(speed + dt * accel, 0.0)


@dataclass(frozen=True)
class IDMTrajectory(Trajectory):
    """A :class:`Trajectory` whose reference starts at ``start_pose`` ``(3,)`` (global rear axle) at t = 0: the
    ego's projection onto the IDM path (``simulation.ego_control.plan_to_global``)."""

    start_pose: np.ndarray | None = None


@dataclass(frozen=True)
class _Obstacles:
    """The occupancy map of one step: ``M`` polygons with their bounds, their speed and heading (agents), and
    whether each is a red connector (speed 0)."""

    polygons: np.ndarray  # (M,) shapely polygons
    bounds: np.ndarray  # (M, 4) min x, min y, max x, max y
    speed: np.ndarray  # (M,) |v| for agents, 0 for static objects and red connectors
    heading: np.ndarray  # (M,)
    red: np.ndarray  # (M,) bool

    def near(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Indices of the obstacles whose bounds overlap the box ``lo`` ``(2,)`` .. ``hi`` ``(2,)``."""
        b = self.bounds
        return np.flatnonzero((b[:, 0] <= hi[0]) & (b[:, 2] >= lo[0]) & (b[:, 1] <= hi[1]) & (b[:, 3] >= lo[1]))

    def leader(
        self, candidates: np.ndarray, footprint: Polygon, heading: float, path: LineString, half_width: float
    ) -> Leader | None:
        """The obstacle among ``candidates`` ``(C,)`` nearest ``footprint`` (polygon distance) of those meeting
        ``footprint`` or the expanded path (``path`` buffered by ``half_width`` with square caps); ``None`` when
        none does. The buffer is built only for obstacles whose distance to ``path`` leaves the answer open."""
        polygons = self.polygons[candidates]
        meets = shapely.intersects(footprint, polygons)
        distance_to_path = shapely.distance(path, polygons)
        # inside the buffer for sure (its round joins are chords at angles of at most pi / 16), or maybe
        meets |= distance_to_path <= half_width * math.cos(math.pi / 32.0) - 1e-9
        maybe = ~meets & (distance_to_path <= half_width * math.sqrt(2.0) + 1e-9)
        if maybe.any():
            expanded = path.buffer(half_width, cap_style="square")
            meets[maybe] = shapely.intersects(expanded, polygons[maybe])
        if not meets.any():
            return None
        hit = candidates[meets]
        distances = shapely.distance(footprint, self.polygons[hit])
        j = int(np.argmin(distances))
        k, distance = int(hit[j]), float(distances[j])
        if self.red[k]:
            return Leader(distance, 0.0)
        return Leader(distance, float(self.speed[k] * math.cos(self.heading[k] - heading)))


def _footprint_corners(center: np.ndarray, vehicle: VehicleParameters) -> np.ndarray:
    """Corners ``(4, 2)`` of the ego box centred at ``center`` ``(3,)``."""
    c, s = math.cos(center[2]), math.sin(center[2])
    hl, hw = vehicle.length / 2.0, vehicle.width / 2.0
    lon, lat = np.array([hl, -hl, -hl, hl]), np.array([hw, hw, -hw, -hw])
    return np.stack([center[0] + c * lon - s * lat, center[1] + s * lon + c * lat], -1)


def _footprint(center: np.ndarray, vehicle: VehicleParameters) -> Polygon:
    return Polygon(_footprint_corners(center, vehicle))


class IDMPlanner:
    """nuPlan's ``IDMPlanner`` (see the module docstring); constructor arguments as in its config.

    Args:
        num_poses: poses returned, the first of the ``planned_trajectory_samples`` (8 at 0.5 s, the benchmarks'
            plan contract; ``planned_trajectory_samples`` for nuPlan's whole 8 s trajectory).

    The planner keeps its path and target speed from the first step of a scenario (an observation of another log,
    map or route, or an earlier time, starts a new one).
    """

    name = "idm"

    def __init__(
        self,
        target_velocity: float = 10.0,
        min_gap_to_lead_agent: float = 1.0,
        headway_time: float = 1.5,
        accel_max: float = 1.0,
        decel_max: float = 3.0,
        planned_trajectory_samples: int = 16,
        planned_trajectory_sample_interval: float = 0.5,
        occupancy_map_radius: float = 40.0,
        num_poses: int = 8,
    ) -> None:
        self.config = NuPlanIDMConfig(
            float(target_velocity),
            float(min_gap_to_lead_agent),
            float(headway_time),
            float(accel_max),
            float(decel_max),
            int(planned_trajectory_samples),
            float(planned_trajectory_sample_interval),
            float(occupancy_map_radius),
        )
        if not 1 <= num_poses <= planned_trajectory_samples:
            raise ValueError(f"num_poses must be in 1..{planned_trajectory_samples}, got {num_poses}")
        self.num_poses = int(num_poses)
        self.interval_s = self.config.planned_trajectory_sample_interval
        self.vehicle = PACIFICA
        self._key: tuple[object, ...] | None = None
        self._last_time_us = 0
        self._path: IDMPath | None = None
        self._target_speed = self.config.target_velocity
        self._route_edges: set[str] = set()

    # ------------------------------------------------------------------------------------------------

    def _initialize(self, observation: Observation, map_api: MapProtocol) -> IDMPath:
        """Path and target speed at the first step of a scenario (nuPlan's ``_initialize_ego_path``)."""
        state = observation.current_state
        center = rear_axle_to_center(state[:3], self.vehicle)
        edges = route_plan(map_api, observation.route_roadblock_ids, center[:2], _footprint(center, self.vehicle))
        blocks = route_blocks(map_api, observation.route_roadblock_ids)
        self._route_edges = {i for block in blocks if block is not None for i in block.interior_ids}
        limit = map_api.lane_edge(edges[0]).speed_limit_mps or self.config.target_velocity
        speed = float(np.hypot(state[StateIndex.VX], state[StateIndex.VY]))
        self._target_speed = max(float(limit), speed)
        self._path = build_path(map_api, edges)
        return self._path

    def _path_for(self, observation: Observation) -> tuple[IDMPath, MapProtocol]:
        map_api = observation.map_api
        if map_api is None:
            raise PlannerInputError(f"{observation.map_name}: the IDM planner needs the map (map_api is None)")
        if not observation.route_roadblock_ids:
            raise PlannerInputError(f"{observation.map_name}: observation has no route roadblock ids")
        log = observation.log
        key = (id(map_api), tuple(str(i) for i in observation.route_roadblock_ids), None if log is None else log.token)
        now = observation.timestamp_us
        path = self._path
        if path is None or key != self._key or now < self._last_time_us:
            path = self._initialize(observation, map_api)
            self._key = key
        self._last_time_us = now
        return path, map_api

    def _obstacles(self, observation: Observation, map_api: MapProtocol, center: np.ndarray) -> _Obstacles:
        """Objects within the occupancy radius of ``center`` ``(2,)`` and the red route connectors (current frame)."""
        agents = observation.agents
        boxes = agents.boxes[-1][agents.valid[-1]] if agents.num_agents else np.zeros((0, 7))
        types = np.asarray(agents.types)[agents.valid[-1]] if agents.num_agents else np.zeros(0, np.int64)
        near = np.hypot(boxes[:, AgentIndex.X] - center[0], boxes[:, AgentIndex.Y] - center[1])
        near = near < self.config.occupancy_map_radius
        boxes, types = boxes[near], types[near]
        polygons = [shapely.polygons(agent_box_corners(boxes))] if len(boxes) else []
        dynamic = np.isin(types, [int(t) for t in DYNAMIC_TYPES])
        speed = [np.where(dynamic, np.hypot(boxes[:, AgentIndex.VX], boxes[:, AgentIndex.VY]), 0.0)]
        heading = [boxes[:, AgentIndex.HEADING]]
        red = [np.zeros(len(boxes), dtype=bool)]
        red_polygons = [map_api.lane_connector_polygon(i) for i in self._red_route_connectors(observation, map_api)]
        if red_polygons:
            polygons.append(np.asarray(red_polygons, dtype=object))
            speed.append(np.zeros(len(red_polygons)))
            heading.append(np.zeros(len(red_polygons)))
            red.append(np.ones(len(red_polygons), dtype=bool))
        flat = np.concatenate(polygons) if polygons else np.zeros(0, dtype=object)
        bounds = shapely.bounds(flat).reshape(-1, 4)
        return _Obstacles(flat, bounds, np.concatenate(speed), np.concatenate(heading), np.concatenate(red))

    def _red_route_connectors(self, observation: Observation, map_api: MapProtocol) -> list[str]:
        """Ids of the lane connectors of the route's roadblocks that are RED now (``_annotate_occupancy_map``)."""
        lights = observation.traffic_lights
        if lights.status.ndim != 2 or lights.status.shape[-1] == 0:
            return []
        pairs = zip(lights.lane_connector_ids, lights.status[-1])
        ids = [str(i) for i, s in pairs if s == TrafficLightStatus.RED and str(i) in self._route_edges]
        return [i for i in ids if i in map_api.lane_connectors]

    # ------------------------------------------------------------------------------------------------

    def plan(self, observation: Observation) -> Trajectory:
        """``num_poses`` rear-axle poses at ``planned_trajectory_sample_interval`` in the current rear-axle frame."""
        path, map_api = self._path_for(observation)
        state = observation.current_state
        center = rear_axle_to_center(state[:3], self.vehicle)
        obstacles = self._obstacles(observation, map_api, center[:2])
        centers = self.rollout(path, center, float(state[StateIndex.VX]), obstacles)
        rear = center_to_rear_axle(centers, self.vehicle)
        local = global_to_local(rear[1 : self.num_poses + 1], state[:3])
        return IDMTrajectory(local, self.interval_s, start_pose=rear[0])

    def rollout(self, path: IDMPath, center: np.ndarray, speed: float, obstacles: _Obstacles) -> np.ndarray:
        """Box-centre poses ``(S + 1, 3)`` at t = 0, dt, ..., S dt (nuPlan's ``_get_planned_trajectory``).

        Args:
            center: ``(3,)`` the ego's box-centre pose now.
            speed: the ego's longitudinal speed now.
        """
        c = self.config
        progress = path.project(center[:2])
        out = np.empty((c.planned_trajectory_samples + 1, 3))
        out[0] = path.poses_at(progress)
        pose = np.asarray(center, dtype=np.float64)
        for k in range(c.planned_trajectory_samples):
            leader = self.leader(path, progress, pose, obstacles)
            ds, speed = idm_euler_step(speed, self._target_speed, leader, c.planned_trajectory_sample_interval, c)
            progress += ds
            pose = out[k + 1] = path.pose_at(progress)
        return out

    def leader(self, path: IDMPath, progress: float, center: np.ndarray, obstacles: _Obstacles) -> Leader:
        """The leader of an ego with box centre ``center`` ``(3,)`` at ``progress`` (``_get_leading_object``).

        Only obstacles whose bounds overlap those of the expanded path (the trimmed path widened by the square
        caps' reach, half the ego width times sqrt 2) and the footprint are tested exactly.
        """
        free = Leader(path.end_progress - progress, 0.0, self.vehicle.length / 2.0)
        if len(obstacles.polygons) == 0:
            return free
        ahead = path.trimmed(progress, progress + abs(self._target_speed) * self.config.horizon_s)
        corners = _footprint_corners(center, self.vehicle)
        reach = self.vehicle.width / 2.0 * math.sqrt(2.0)
        lo = np.minimum(ahead.min(0) - reach, corners.min(0))
        hi = np.maximum(ahead.max(0) + reach, corners.max(0))
        candidates = obstacles.near(lo, hi)
        if len(candidates) == 0:
            return free
        line = shapely.linestrings(ahead)
        found = obstacles.leader(candidates, Polygon(corners), float(center[2]), line, self.vehicle.width / 2.0)
        return free if found is None else found
