"""Rule-based planners: constant velocity, IDM and log replay (the expert); PDM-Closed lives in
:mod:`planners.pdm_closed` and is re-exported here.

Each implements :class:`simulation.protocols.Planner`: ``plan(observation) -> Trajectory`` with, by
default, 8 poses at 0.5 s in the current rear-axle frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from planners.idm import IDM_PLANNER_PARAMETERS, Leader, find_leader, idm_rollout
from planners.pdm_closed import PDMClosedPlanner
from planners.route import (
    PlannerInputError,
    _current_agents,
    _red_connector_ids,
    _red_stop_points,
    _require_map,
    _route_context,
    _RouteCache,
    _RouteContext,
)
from simulation.agents import IDMParameters
from simulation.geometry import (
    global_to_local,
    interpolate_polyline,
    normalize_angle,
    project_on_polyline,
)
from simulation.protocols import Observation
from simulation.types import AgentIndex, StateIndex, Trajectory

__all__ = [
    "ConstantVelocityPlanner",
    "IDMPlanner",
    "LogReplayPlanner",
    "LoggedTrajectory",
    "PDMClosedPlanner",
    "PlannerInputError",
    "_RouteCache",
    "_RouteContext",
    "_red_connector_ids",
    "_route_context",
    "constant_velocity_forecast",
]

logger = logging.getLogger(__name__)

#: Integration step of the IDM rollouts (s).
ROLLOUT_DT = 0.1


def _times(num_poses: int, interval_s: float) -> np.ndarray:
    return np.arange(1, num_poses + 1) * interval_s


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


class IDMPlanner:
    """nuPlan's ``IDMPlanner``: IDM along the route centre line, stopping behind leaders and at red lights.

    The target speed is the speed limit of the current route lane (``target_velocity`` when unknown), raised
    to the current speed when that is higher (nuPlan). The leader is the nearest agent whose box meets the
    path corridor ahead, or the entry of a red on-route lane connector, or else the end of the path.
    """

    name = "idm"

    def __init__(
        self, num_poses: int = 8, interval_s: float = 0.5, params: IDMParameters = IDM_PLANNER_PARAMETERS
    ) -> None:
        self.num_poses, self.interval_s, self.params = num_poses, interval_s, params

    def plan(self, observation: Observation) -> Trajectory:
        state = observation.current_state
        ctx = _route_context(observation)
        speed = float(max(state[StateIndex.VX], 0.0))
        target = max(ctx.speed_limit or self.params.target_velocity, speed)
        s0 = float(project_on_polyline(state[:2], ctx.path)[0])
        horizon = self.num_poses * self.interval_s
        leader = find_leader(
            ctx.path,
            s0,
            _current_agents(observation),
            _red_stop_points(observation, _require_map(observation), ctx.route_lanes),
            lookahead=max(speed, target) * horizon + 50.0,
        )
        progress = _rollout(np.array([speed]), np.array([target]), [leader], horizon, self.params)
        steps = int(round(self.interval_s / ROLLOUT_DT))
        glob = _poses_along(ctx.path, s0 + progress[0, steps::steps][: self.num_poses])
        return Trajectory(global_to_local(glob, state[:3]), self.interval_s)


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
