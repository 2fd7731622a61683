"""Ego controllers of the closed loop: how a planned trajectory moves the ego by one step.

- two-stage (nuPlan's ``TwoStageController``, the default): the LQR tracker of
  :mod:`simulation.kinematics` turns the reference into acceleration and steering-rate commands and
  the kinematic bicycle propagates the state by ``dt``;
- perfect tracking (nuPlan's ``PerfectTrackingController``): the ego jumps to the reference at
  ``t + dt``;
- log playback: the ego takes the logged state of the next frame.

References are global rear-axle poses ``(P, 3)`` at times ``(P,)`` in seconds relative to now.
"""

from __future__ import annotations

import numpy as np

from simulation.geometry import local_to_global, normalize_angle
from simulation.kinematics import lqr_commands, propagate_bicycle
from simulation.types import LogWindow, StateIndex, Trajectory

#: nuPlan's ``PerfectTrackingController`` refuses speeds above this.
MAX_PERFECT_TRACKING_SPEED = 50.0


def plan_to_global(trajectory: Trajectory, current_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Times ``(P + 1,)`` (0 first) and global poses ``(P + 1, 3)`` of a plan in the current rear-axle frame.

    The current pose is prepended at t = 0, as nuPlan's ML planners prepend the current state. A trajectory
    with a global ``start_pose`` ``(3,)`` (log replay: the logged pose now, as nuPlan's log-future planner
    starts its trajectory at the logged state) starts there instead, so the tracker sees the ego's offset
    from the log and removes it.
    """
    poses = np.asarray(trajectory.poses, dtype=np.float64).reshape(-1, 3)
    glob = local_to_global(poses, current_state[None, :3])
    times = np.arange(len(poses) + 1) * float(trajectory.interval_s)
    start = getattr(trajectory, "start_pose", None)
    first = current_state[None, :3] if start is None else np.asarray(start, dtype=np.float64).reshape(1, 3)
    return times, np.concatenate([first, glob])


def sample_reference(times: np.ndarray, poses: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Poses ``(Q, 3)`` at ``query`` times ``(Q,)`` (linear, unwrapped heading, clamped to the ends)."""
    heading = np.unwrap(poses[:, 2])
    out = np.stack([np.interp(query, times, poses[:, i]) for i in (0, 1)] + [np.interp(query, times, heading)], -1)
    out[:, 2] = normalize_angle(out[:, 2])
    return out


def perfect_tracking(state: np.ndarray, times: np.ndarray, poses: np.ndarray, dt: float) -> np.ndarray:
    """Next state ``(11,)``: the reference pose at ``dt``; velocities / accelerations by finite differences."""
    pose = sample_reference(times, poses, np.array([dt]))[0]
    delta = pose[:2] - state[:2]
    c, s = np.cos(pose[2]), np.sin(pose[2])
    vx, vy = (c * delta[0] + s * delta[1]) / dt, (-s * delta[0] + c * delta[1]) / dt
    if np.hypot(vx, vy) >= MAX_PERFECT_TRACKING_SPEED:
        raise ValueError(f"perfect tracking: reference speed {np.hypot(vx, vy):.1f} m/s is above 50 m/s")
    yaw_rate = float(normalize_angle(pose[2] - state[StateIndex.HEADING])) / dt
    out = np.zeros_like(state)
    out[:3] = pose
    out[StateIndex.VX], out[StateIndex.VY] = vx, vy
    out[StateIndex.AX] = (vx - state[StateIndex.VX]) / dt
    out[StateIndex.AY] = (vy - state[StateIndex.VY]) / dt
    out[StateIndex.YAW_RATE] = yaw_rate
    out[StateIndex.YAW_ACCEL] = (yaw_rate - state[StateIndex.YAW_RATE]) / dt
    return out


def two_stage_tracking(state: np.ndarray, times: np.ndarray, poses: np.ndarray, dt: float) -> np.ndarray:
    """Next state ``(11,)``: one LQR command (acceleration, steering rate) and one kinematic-bicycle step of ``dt``.

    As nuPlan's ``LQRTracker``, the reference is the plan resampled every ``dt`` from now to its end (at
    least 4 poses, holding the last one), its pose at now being the tracking reference.
    """
    steps = max(int(np.floor(float(times[-1]) / dt + 1e-9)), 3)
    reference = sample_reference(times, poses, np.arange(steps + 1) * dt)
    commands = lqr_commands(state[None], reference[None])
    return propagate_bicycle(state[None], commands, dt)[0]


def log_playback(window: LogWindow, frame: int) -> np.ndarray:
    """The logged ego state ``(11,)`` at ``frame`` (clamped to the window)."""
    return window.ego.states[int(np.clip(frame, 0, window.num_frames - 1))].copy()
