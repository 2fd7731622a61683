"""Rule-based planners: constant velocity, IDM, PDM-Closed and log replay (the expert).

Each implements :class:`simulation.protocols.Planner`: ``plan(observation) -> Trajectory`` with, by
default, 8 poses at 0.5 s in the current rear-axle frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from shapely.geometry import Point

from planners.idm import (
    PDM_IDM_PARAMETERS,
    Leader,
    agent_box_polygons,
    find_leader,
    idm_rollout,
    offset_path,
)
from planners.nuplan_idm import IDMPlanner as IDMPlanner  # re-exported: nuPlan's IDM planner
from planners.nuplan_idm import PlannerInputError
from simulation.agents import IDMParameters
from simulation.geometry import (
    global_to_local,
    interpolate_polyline,
    normalize_angle,
    project_on_polyline,
    rear_axle_to_center,
)
from simulation.kinematics import simulate_proposals
from simulation.maps.protocol import MapProtocol
from simulation.metric_cache import MAP_RADIUS, OBSERVATION_STEPS, MapContext, build_observation_metric_cache
from simulation.protocols import Observation
from simulation.types import AgentIndex, StateIndex, TrafficLightStatus, Trajectory

logger = logging.getLogger(__name__)

#: Integration step of the IDM rollouts (s).
ROLLOUT_DT = 0.1


def _times(num_poses: int, interval_s: float) -> np.ndarray:
    return np.arange(1, num_poses + 1) * interval_s


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


def _poses_along(path: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Global poses ``(..., 3)`` at arc lengths ``s`` on ``path``; beyond its end the last heading is kept."""
    return interpolate_polyline(path, s)


class ConstantVelocityPlanner:
    """Holds the current speed along the current heading (NAVSIM's ``ConstantVelocityAgent``)."""

    name = "constant_velocity"

    def __init__(self, num_poses: int = 8, interval_s: float = 0.5) -> None:
        self.num_poses, self.interval_s = num_poses, interval_s

    def plan(self, observation: Observation) -> Trajectory:
        state = observation.current_state
        speed = float(np.hypot(state[StateIndex.VX], state[StateIndex.VY]))
        t = _times(self.num_poses, self.interval_s)
        poses = np.stack([speed * t, np.zeros_like(t), np.zeros_like(t)], -1)
        return Trajectory(poses, self.interval_s)


@dataclass(frozen=True)
class LoggedTrajectory(Trajectory):
    """A :class:`Trajectory` that also gives the logged global rear-axle pose at the current time (``start_pose``
    ``(3,)``); the closed loop starts the tracking reference there (see ``simulation.ego_control``)."""

    start_pose: np.ndarray | None = None


class LogReplayPlanner:
    """The logged future of ``observation.log`` (the human expert), in the current rear-axle frame.

    The logged global poses are expressed in the frame of the observed ego state (nuPlan's log future planner
    returns global poses), so in closed loop the tracker is drawn back to the log rather than drifting away.

    Poses are interpolated at ``interval_s`` steps from the log timestamps (x, y linear, heading unwrapped).
    Past the end of the log (a closed-loop scenario's last 4 s) the ego goes on straight at its last logged
    speed: the expert kept driving after the window ends, and holding the last pose would make the tracker
    brake hard for no reason (nuPlan's log future comes from the whole log, not the scenario window).
    """

    name = "log_replay"

    def __init__(self, num_poses: int = 8, interval_s: float = 0.5) -> None:
        self.num_poses, self.interval_s = num_poses, interval_s

    def plan(self, observation: Observation) -> Trajectory:
        log = observation.log
        if log is None:
            raise PlannerInputError(f"{observation.map_name}: log replay needs observation.log")
        i = observation.log_index
        states = log.ego.states[i:]
        t = (np.asarray(log.timestamps_us[i:], dtype=np.int64) - int(log.timestamps_us[i])) * 1e-6
        if len(t) < 2:
            raise PlannerInputError(f"{log.token}: no logged future after frame {i}")
        want = _times(self.num_poses, self.interval_s)
        heading = np.unwrap(states[:, StateIndex.HEADING])
        glob = np.stack(
            [
                np.interp(want, t, states[:, StateIndex.X]),
                np.interp(want, t, states[:, StateIndex.Y]),
                np.interp(want, t, heading),
            ],
            -1,
        )
        beyond = np.clip(want - t[-1], 0.0, None)
        speed = float(np.hypot(states[-1, StateIndex.VX], states[-1, StateIndex.VY]))
        glob[:, 0] += beyond * speed * np.cos(heading[-1])
        glob[:, 1] += beyond * speed * np.sin(heading[-1])
        glob[:, 2] = normalize_angle(glob[:, 2])
        # in the frame of the observed (in closed loop: simulated) ego, so that the plan leads back to the logged
        # poses instead of replaying the logged motion from wherever the ego drifted to
        local = global_to_local(glob, observation.current_state[:3])
        return LoggedTrajectory(local, self.interval_s, start_pose=states[0, :3].copy())


def _rollout(
    speed: np.ndarray, target: np.ndarray, leaders: list[Leader], horizon_s: float, params: IDMParameters
) -> np.ndarray:
    gap = np.array([ld.gap for ld in leaders])
    lead_speed = np.array([ld.speed for ld in leaders])
    return idm_rollout(speed, target, gap, lead_speed, horizon_s, ROLLOUT_DT, params)


def constant_velocity_forecast(boxes: np.ndarray, num_steps: int, dt: float = ROLLOUT_DT) -> np.ndarray:
    """``(num_steps, M, 7)`` boxes moved at their current global velocity (PDM-Closed's observation)."""
    t = np.arange(num_steps)[:, None] * dt
    out = np.repeat(boxes[None], num_steps, axis=0)
    out[..., AgentIndex.X] += t * boxes[None, :, AgentIndex.VX]
    out[..., AgentIndex.Y] += t * boxes[None, :, AgentIndex.VY]
    return out


#: PDM-Closed reuses its drivable-map context while the ego stays this close (m) to where it was built; the
#: context then covers MAP_RADIUS + this around the build point, so at least MAP_RADIUS around the ego.
MAP_CONTEXT_REUSE_M = 20.0


def _map_context(map_api: MapProtocol, center: np.ndarray, previous: MapContext | None) -> MapContext:
    """Drivable-map polygons and their grid around ``center`` ``(2,)``, reusing ``previous`` when still valid."""
    if (
        previous is not None
        and previous.map_api is map_api
        and float(np.hypot(*(center - previous.center))) <= MAP_CONTEXT_REUSE_M
    ):
        return previous
    return MapContext.build(map_api, center, MAP_RADIUS + MAP_CONTEXT_REUSE_M)


class PDMClosedPlanner:
    """PDM-Closed (specs/navsim.md §3.8): IDM proposals along laterally offset centre lines, simulated with
    the LQR tracker + bicycle and scored on the planner's own observation; the best proposal is returned.

    Args:
        scorer: an object with ``score_states(metric_cache, states (K, 41, 11)) -> {"score": (K,), ...}``;
            by default :func:`rewards.pdm.score_states` (PDMS v1, progress normalised over the proposals).
        lateral_offsets: centre-line offsets (m, left positive).
        speed_fractions: fractions of the lane speed limit (``params.target_velocity`` when unknown).
    """

    name = "pdm_closed"

    def __init__(
        self,
        scorer: Any = None,
        num_poses: int = 8,
        interval_s: float = 0.5,
        lateral_offsets: tuple[float, ...] = (-1.0, 0.0, 1.0),
        speed_fractions: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0),
        params: IDMParameters = PDM_IDM_PARAMETERS,
    ) -> None:
        self.scorer = scorer
        self.num_poses, self.interval_s = num_poses, interval_s
        self.lateral_offsets, self.speed_fractions, self.params = lateral_offsets, speed_fractions, params
        self.last_scores: dict[str, np.ndarray] = {}
        self._map_context: MapContext | None = None
        self._route_cache = _RouteCache()

    def proposals(self, observation: Observation, ctx: _RouteContext) -> np.ndarray:
        """Global proposal poses ``(K, num_poses, 3)``, K = offsets x fractions (offset-major)."""
        state = observation.current_state
        speed = float(max(state[StateIndex.VX], 0.0))
        limit = ctx.speed_limit or self.params.target_velocity
        horizon = self.num_poses * self.interval_s
        boxes = _current_agents(observation)
        stops = _red_stop_points(observation, _require_map(observation), ctx.route_lanes)
        polys = agent_box_polygons(boxes) if len(boxes) else None  # once for all the offset paths
        paths, starts, leaders = [], [], []
        for offset in self.lateral_offsets:
            path = offset_path(ctx.path, offset)
            s0 = float(project_on_polyline(state[:2], path)[0])
            lookahead = max(speed, limit) * horizon + 50.0
            leader = find_leader(path, s0, boxes, stops, lookahead=lookahead, box_polygons=polys)
            paths.append(path)
            starts.append(s0)
            leaders.extend([leader] * len(self.speed_fractions))
        n_frac = len(self.speed_fractions)
        speeds = np.full(len(leaders), speed)
        targets = np.tile(np.asarray(self.speed_fractions) * limit, len(paths))
        progress = _rollout(speeds, targets, leaders, horizon, self.params)
        steps = int(round(self.interval_s / ROLLOUT_DT))
        sampled = progress[:, steps::steps][:, : self.num_poses]
        out = np.empty((len(leaders), self.num_poses, 3))
        for p, (path, s0) in enumerate(zip(paths, starts)):
            rows = slice(p * n_frac, (p + 1) * n_frac)
            out[rows] = _poses_along(path, s0 + sampled[rows])
        return out

    def _score(self, cache: Any, states: np.ndarray) -> np.ndarray:
        if self.scorer is not None and hasattr(self.scorer, "score_states"):
            return np.asarray(self.scorer.score_states(cache, states)["score"], dtype=np.float64)
        from rewards.pdm import score_states

        return np.asarray(score_states(cache, states, "v1", "batch")["score"], dtype=np.float64)

    def plan(self, observation: Observation) -> Trajectory:
        state = observation.current_state
        ctx = _route_context(observation, self._route_cache)
        glob = self.proposals(observation, ctx)
        local = global_to_local(glob.reshape(-1, 3), state[:3]).reshape(glob.shape)
        states = simulate_proposals(state, local, self.interval_s)
        center = rear_axle_to_center(state[:3])[:2]
        self._map_context = _map_context(_require_map(observation), center, self._map_context)
        cache = build_observation_metric_cache(
            observation,
            ctx.path,
            ctx.route_lanes,
            constant_velocity_forecast(_current_agents(observation), OBSERVATION_STEPS["v1"]),
            _red_connector_ids(observation, ctx.route_lanes),
            self._map_context,
        )
        scores = self._score(cache, states)
        self.last_scores = {"score": scores}
        best = int(np.argmax(scores))
        logger.debug("pdm_closed: proposal %d of %d, score %.3f", best, len(scores), scores[best])
        return Trajectory(local[best], self.interval_s)
