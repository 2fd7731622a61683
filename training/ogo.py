"""On-policy generator optimisation (OGO, RAD-2; our reading in methods §2.2): executed closed-loop trajectories
with a high return are re-timed longitudinally and become imitation targets for the generator.

Re-timing keeps the geometric path the ego drove and changes only the arc length travelled over time:

* **slower before a conflict**: where a collision or a TTC violation happened within the plan's 4 s, the speed is
  capped by a braking curve ``v <= sqrt(2 b (s_c - margin - s))`` that stops ``margin`` metres before the arc length
  ``s_c`` the ego had reached at that step;
* **faster where progress was low**: where the executed path covered less than ``progress_tolerance`` of the
  expert's distance over the same time, the executed speeds are scaled up by ``expert / executed`` (at most
  ``max_speedup``).

The new speed profile follows that target speed with a first-order tracking law (time constant ``tau``, looking
``v tau`` ahead along the path) under the kinematic limits: speed in ``[0, max_speed]``, longitudinal acceleration
within nuPlan's comfort bounds and longitudinal jerk within its bound (:mod:`rewards.comfort`), integrated at the
tracker's 0.1 s. Poses are read off the path at the new arc lengths (past the path's end it is continued straight
along its last heading).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from rewards.comfort import MAX_ABS_LON_JERK, MAX_LON_ACCEL, MIN_LON_ACCEL
from simulation.features import PlannerInput

if TYPE_CHECKING:
    from training.closed_loop_rl_core import ClosedLoopRollout

#: The tracker's integration step (s).
SUBSTEP_S = 0.1


@dataclass(frozen=True)
class Limits:
    """Kinematic limits of a re-timed profile: speed (m/s), longitudinal acceleration (m/s^2, nuPlan's comfort
    bounds) and longitudinal jerk (m/s^3)."""

    max_speed: float = 20.0
    min_accel: float = MIN_LON_ACCEL
    max_accel: float = MAX_LON_ACCEL
    max_jerk: float = MAX_ABS_LON_JERK


@dataclass(frozen=True)
class OGOConfig:
    """OGO settings (the closed-loop RL module's ``ogo`` entry).

    Attributes:
        enabled: run OGO updates of the generator.
        every_n_steps: an OGO update after the discriminator update of every n-th training step.
        min_advantage: rollouts whose group advantage exceeds this give targets (high return within the group).
        min_future_s: a decision gives a target only when at least this much executed future follows it.
        slow_margin_m, brake_decel: the braking curve before a conflict (stop that far before it, at that rate).
        progress_tolerance, max_speedup: speed up when the executed distance is below tolerance x the expert's.
        tau: time constant of the speed tracking (s).
        max_speed: speed limit of the re-timed profile (m/s).
        weight, lr: the generator's imitation loss weight and learning rate.
    """

    enabled: bool = False
    every_n_steps: int = 2
    min_advantage: float = 0.0
    min_future_s: float = 2.0
    slow_margin_m: float = 4.0
    brake_decel: float = 2.0
    progress_tolerance: float = 0.9
    max_speedup: float = 1.5
    tau: float = 1.0
    max_speed: float = 20.0
    weight: float = 1.0
    lr: float = 1e-5

    def __post_init__(self) -> None:
        if self.every_n_steps < 1:
            raise ValueError(f"ogo.every_n_steps must be at least 1, got {self.every_n_steps}")

    @property
    def limits(self) -> Limits:
        return Limits(max_speed=self.max_speed)


@dataclass
class Retimed:
    """A re-timed trajectory: ``poses`` ``(P, 3)`` at ``interval`` s, and the profile at 0.1 s (``t``, arc length
    ``s``, speed ``v``, acceleration ``a``, each ``(N + 1,)``)."""

    poses: np.ndarray
    t: np.ndarray
    s: np.ndarray
    v: np.ndarray
    a: np.ndarray


def arc_length(xy: np.ndarray) -> np.ndarray:
    """``(P,)`` cumulative arc length of a polyline ``(P, 2)`` (0 at its first point)."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])


def poses_at(path: np.ndarray, s_path: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Poses ``(Q, 3)`` at arc lengths ``s`` ``(Q,)`` along ``path`` ``(P, 3)`` (linear between its points; past the
    end, straight on along the last heading)."""
    keep = np.concatenate([[True], np.diff(s_path) > 1e-9])  # drop repeated points (a standing ego)
    path, s_path = path[keep], s_path[keep]
    heading = np.unwrap(path[:, 2])
    if len(s_path) == 1:
        x, y, h = (np.full(len(s), path[0, i]) for i in range(3))
    else:
        x, y, h = (np.interp(s, s_path, v) for v in (path[:, 0], path[:, 1], heading))
    beyond = np.maximum(s - s_path[-1], 0.0)
    x = x + beyond * np.cos(heading[-1])
    y = y + beyond * np.sin(heading[-1])
    return np.stack([x, y, np.arctan2(np.sin(h), np.cos(h))], -1)


def speed_profile(
    v0: float, s_path: np.ndarray, target: np.ndarray, horizon_s: float, limits: Limits, tau: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integrate a speed profile at 0.1 s from ``v0`` following ``target`` ``(P,)`` (speeds at the path's arc lengths
    ``s_path``, read ``v tau`` ahead) with ``a = (v_target - v) / tau`` limited in acceleration and jerk (the
    acceleration starts at 0); returns ``t, s, v, a`` ``(N + 1,)``."""
    n = int(round(horizon_s / SUBSTEP_S))
    t = np.arange(n + 1) * SUBSTEP_S
    s, v, a = np.zeros(n + 1), np.zeros(n + 1), np.zeros(n + 1)
    v[0] = min(max(v0, 0.0), limits.max_speed)
    dj = limits.max_jerk * SUBSTEP_S
    for i in range(n):
        goal = min(float(np.interp(s[i] + v[i] * tau, s_path, target)), limits.max_speed)
        want = (goal - v[i]) / tau
        acc = float(np.clip(want, a[i] - dj, a[i] + dj))
        acc = float(np.clip(acc, limits.min_accel, limits.max_accel))
        acc = max(acc, -v[i] / SUBSTEP_S)  # never backwards
        a[i + 1] = acc
        v[i + 1] = min(v[i] + acc * SUBSTEP_S, limits.max_speed)
        s[i + 1] = s[i] + 0.5 * (v[i] + v[i + 1]) * SUBSTEP_S
    return t, s, v, a


def target_speeds(
    speeds: np.ndarray, s_path: np.ndarray, conflict_s: float | None, speedup: float, config: OGOConfig
) -> np.ndarray:
    """``(P,)`` target speeds along the path: the executed ``speeds`` x ``speedup``, capped by the braking curve
    before ``conflict_s`` (when given) and by the speed limit."""
    target = speeds * speedup
    if conflict_s is not None:
        room = np.maximum(conflict_s - config.slow_margin_m - s_path, 0.0)
        target = np.minimum(target, np.sqrt(2.0 * config.brake_decel * room))
    return np.minimum(target, config.max_speed)


def retime(
    path: np.ndarray,
    dt: float,
    conflict_s: float | None,
    speedup: float,
    config: OGOConfig,
    num_poses: int = 8,
    interval: float = 0.5,
) -> Retimed:
    """Re-time an executed path.

    Args:
        path: ``(P, 3)`` the executed poses every ``dt`` seconds, the first at the start (any frame).
        conflict_s: arc length where a collision / TTC violation happened (``None``: none).
        speedup: factor on the executed speeds (1: none).

    Returns:
        The re-timed trajectory: ``num_poses`` poses ``interval`` s apart on the same path.
    """
    s_path = arc_length(path[:, :2])
    speeds = np.concatenate([[0.0], np.diff(s_path) / dt])
    speeds[0] = speeds[1] if len(speeds) > 1 else 0.0
    target = target_speeds(speeds, s_path, conflict_s, speedup, config)
    t, s, v, a = speed_profile(float(speeds[0]), s_path, target, num_poses * interval, config.limits, config.tau)
    at = np.round(np.arange(1, num_poses + 1) * interval / SUBSTEP_S).astype(int)
    return Retimed(poses_at(path, s_path, s[at]), t, s, v, a)


def _local(poses: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Global poses ``(P, 3)`` in the frame of ``origin`` ``(3,)``."""
    c, s = np.cos(origin[2]), np.sin(origin[2])
    d = poses[:, :2] - origin[:2]
    h = poses[:, 2] - origin[2]
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], np.arctan2(np.sin(h), np.cos(h))], -1)


def _episode_target(
    rollout: ClosedLoopRollout, frames: np.ndarray, e: int, d: int, config: OGOConfig
) -> np.ndarray | None:
    """The re-timed 4 s target ``(8, 3)`` of episode ``e`` from decision ``d`` (``None``: too little future)."""
    state, decision = rollout.state, rollout.decisions[d]
    dt = state.episodes.log_dt
    f0, last = int(decision.frame[e]), int(state.frame[e])
    if (last - f0) * dt < config.min_future_s - 1e-9:
        return None
    history = state.history[e, f0 : last + 1].detach().cpu().numpy().astype(np.float64)
    path = _local(history[:, :3], history[0, :3])
    s_path = arc_length(path[:, :2])
    window = min(int(round(4.0 / dt)), len(path) - 1)
    conflict_s = None
    for j in np.nonzero(rollout.conflict[e].cpu().numpy())[0]:
        end = int(frames[e, j + 1])
        if f0 < end <= f0 + window:
            conflict_s = float(s_path[end - f0])
            break
    expert = decision.expert[e].detach().cpu().numpy()
    expert_len = float(arc_length(np.concatenate([np.zeros((1, 2)), expert[:, :2]]))[-1]) * window * dt / 4.0
    executed = float(s_path[window])
    speedup = 1.0
    if executed < config.progress_tolerance * expert_len:
        speedup = float(np.clip(expert_len / max(executed, 1e-3), 1.0, config.max_speedup))
    return retime(path, dt, conflict_s, speedup, config).poses


def _row(inputs: PlannerInput[torch.Tensor], i: int) -> PlannerInput[torch.Tensor]:
    """Scene ``i`` of a batch of planner inputs (a batch of one)."""
    return PlannerInput.from_dict({k: v[i : i + 1] for k, v in inputs.as_dict().items()})


def ogo_targets(
    rollout: ClosedLoopRollout, advantages: torch.Tensor, config: OGOConfig
) -> tuple[PlannerInput[torch.Tensor] | None, torch.Tensor | None]:
    """Imitation pairs from the rollouts with an advantage above ``config.min_advantage``: the planner inputs at
    each of their decisions ``(N, ...)`` and the re-timed executed trajectory from there ``(N, 8, 3)``
    (``(None, None)`` when none qualifies)."""
    from training.closed_loop_rl_core import cat_inputs

    frames = rollout.frames.cpu().numpy()
    good = (advantages > config.min_advantage).cpu().numpy()
    inputs: list[PlannerInput[torch.Tensor]] = []
    targets: list[np.ndarray] = []
    for d, decision in enumerate(rollout.decisions):
        active = decision.active.cpu().numpy()
        for e in np.nonzero(good & active)[0]:
            target = _episode_target(rollout, frames, int(e), d, config)
            if target is not None:
                inputs.append(_row(decision.features, int(e)))
                targets.append(target)
    if not targets:
        return None, None
    return cat_inputs(inputs), torch.as_tensor(np.stack(targets))
