"""Rule-based planners: constant velocity, IDM and log replay (the expert); PDM-Closed lives in
:mod:`planners.pdm_closed` and is re-exported here.

Each implements :class:`simulation.protocols.Planner`: ``plan(observation) -> Trajectory`` with, by
default, 8 poses at 0.5 s in the current rear-axle frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from planners.nuplan_idm import IDMPlanner
from planners.pdm_closed import PDMClosedPlanner
from planners.route import PlannerInputError, _red_connector_ids, _route_context, _RouteCache, _RouteContext
from simulation.geometry import (
    global_to_local,
    interpolate_polyline,
    normalize_angle,
)
from simulation.protocols import Observation
from simulation.types import StateIndex, Trajectory

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
]

logger = logging.getLogger(__name__)


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
