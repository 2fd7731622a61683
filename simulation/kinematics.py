"""Ego tracking and propagation: LQR tracker + kinematic bicycle, vectorised over candidates.

The scorer and the closed loop move the ego the way nuPlan's ``TwoStageController`` and NAVSIM's
batched PDM simulator do (specs/navsim.md §3.2-3.5, specs/nuplan.md §3):

1. :func:`interpolate_trajectory` turns planned poses (current rear-axle frame) into a global
   reference at 10 Hz with the current pose prepended (linear x, y; unwrapped linear heading).
2. :func:`fit_reference_profiles` fits velocity / curvature profiles to the reference once by
   regularised least squares (jerk and curvature-rate penalties). ``LQRParameters.jerk_difference``
   selects the jerk regulariser: ``"nuplan"`` (nuplan-devkit's tracker: the first difference
   ``a[k+1] - a[k]``, the default, used by the nuPlan closed loop) or ``"navsim"`` (NAVSIM's batched
   tracker, v1.1 and v2.x: its banded matrix keeps only ``-a[k]`` on each row but the last, a ridge
   on the accelerations; used by every NAVSIM path through :func:`simulate_proposals`).
3. Each 0.1 s step :func:`lqr_commands` computes acceleration and steering-rate commands (stopping
   P-controller near standstill, else one-step longitudinal and 10-step lateral LQR) and
   :func:`propagate_bicycle` integrates the kinematic bicycle with first-order actuator lags.

The profiles have ``T - 1`` entries (one per displacement), so the reference speed at step ``k`` is
``velocity[min(k + 10, T - 2)]`` and the curvature window is ``curvature[min(k + j, T - 2)]``, j < 10
(NAVSIM's ``BatchLQRTracker`` indexing). :func:`track_and_propagate` runs the same arithmetic as
:func:`lqr_commands` / :func:`propagate_bicycle` in a numba kernel (``compiled=False`` uses the array
functions; the tests check that both agree).

States are ``(..., 11)`` arrays indexed by :class:`~simulation.types.StateIndex` (rear axle,
velocities / accelerations in the ego frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np

from simulation.geometry import local_to_global, normalize_angle
from simulation.types import PACIFICA, STATE_DIM, StateIndex

S = StateIndex

#: Which jerk regulariser the velocity fit uses (see :func:`jerk_difference_matrix`).
JerkDifference = Literal["nuplan", "navsim"]


@dataclass(frozen=True)
class LQRParameters:
    """nuPlan ``lqr_tracker.yaml`` / NAVSIM ``BatchLQRTracker`` defaults.

    ``jerk_difference``: ``"nuplan"`` (the default) penalises the true first difference of the fitted
    accelerations, as nuplan-devkit's ``LQRTracker``; ``"navsim"`` reproduces NAVSIM's batched tracker, whose
    difference matrix keeps ``-a[k]`` only (:func:`jerk_difference_matrix`). Everything else is the same in
    both trackers. :data:`NAVSIM_LQR` / :data:`NUPLAN_LQR` are the two protocol settings.
    """

    q_longitudinal: float = 10.0
    r_longitudinal: float = 1.0
    q_lateral: tuple[float, float, float] = (1.0, 10.0, 0.0)  # lateral error, heading error, steering angle
    r_lateral: float = 1.0
    discretization_time: float = 0.1
    tracking_horizon: int = 10
    jerk_penalty: float = 1e-4
    curvature_rate_penalty: float = 1e-2
    initial_curvature_penalty: float = 1e-10
    stopping_proportional_gain: float = 0.5
    stopping_velocity: float = 0.2
    wheel_base: float = PACIFICA.wheel_base
    jerk_difference: JerkDifference = "nuplan"

    def __post_init__(self) -> None:
        if self.jerk_difference not in ("nuplan", "navsim"):
            raise ValueError(
                f"LQRParameters: jerk_difference must be 'nuplan' or 'navsim', got {self.jerk_difference!r}"
            )


@dataclass(frozen=True)
class BicycleParameters:
    """nuPlan ``kinematic_bicycle_model.yaml`` defaults (Pacifica wheel base)."""

    wheel_base: float = PACIFICA.wheel_base
    max_steering_angle: float = np.pi / 3
    accel_time_constant: float = 0.2
    steering_angle_time_constant: float = 0.05


#: nuPlan's tracker (closed loop, ``simulation.ego_control``); the default of the tracking functions.
NUPLAN_LQR = LQRParameters()
#: NAVSIM's batched tracker (scoring, metric caches, PDM-Closed's proposals; :func:`simulate_proposals`).
NAVSIM_LQR = LQRParameters(jerk_difference="navsim")
DEFAULT_LQR = NUPLAN_LQR
DEFAULT_BICYCLE = BicycleParameters()
#: NAVSIM's scoring sampling: 40 steps of 0.1 s (41 states with the current one).
NUM_STEPS = 40
DT = 0.1


def interpolate_trajectory(
    poses_local: np.ndarray,
    current_state: np.ndarray,
    interval_s: float = 0.5,
    num_steps: int = NUM_STEPS,
    dt: float = DT,
    start_poses: np.ndarray | None = None,
) -> np.ndarray:
    """Global reference poses ``(B, num_steps + 1, 3)`` at ``0, dt, ...`` from planned local poses.

    Args:
        poses_local: ``(B, P, 3)`` (or ``(P, 3)``) poses at ``interval_s, 2 interval_s, ...`` in the current
            rear-axle frame.
        current_state: ``(11,)`` current ego state (its pose is prepended at t = 0).
        start_poses: ``(B, 3)`` or ``(3,)`` local poses at t = 0 instead of the current pose (a trajectory that
            starts elsewhere, e.g. PDM-Closed's, which starts at the ego projected on its centre line).

    x and y are interpolated linearly, the heading linearly after unwrapping (nuPlan's
    ``InterpolatedTrajectory``); query times past the plan's end are clamped to its last pose.
    """
    poses_local = np.asarray(poses_local, dtype=np.float64)
    if poses_local.ndim == 2:
        poses_local = poses_local[None]
    if poses_local.ndim != 3 or poses_local.shape[-1] != 3:
        raise ValueError(f"interpolate_trajectory: poses must be (B, P, 3), got {poses_local.shape}")
    origin = np.asarray(current_state, dtype=np.float64)[:3]
    batch, num_poses = poses_local.shape[:2]
    glob = local_to_global(poses_local.reshape(-1, 3), origin[None]).reshape(batch, num_poses, 3)
    if start_poses is None:
        start = np.broadcast_to(origin, (batch, 1, 3))
    else:
        start = local_to_global(np.broadcast_to(np.asarray(start_poses, np.float64), (batch, 3)), origin[None])
        start = start[:, None]
    knots = np.concatenate([start, glob], axis=1)  # (B, P + 1, 3)
    knots[..., 2] = np.unwrap(knots[..., 2], axis=1)
    times = np.arange(num_poses + 1) * interval_s
    query = np.clip(np.arange(num_steps + 1) * dt, 0.0, times[-1])
    idx = np.clip(np.searchsorted(times, query, side="right") - 1, 0, num_poses - 1)
    frac = ((query - times[idx]) / (times[idx + 1] - times[idx]))[None, :, None]
    out = knots[:, idx] + frac * (knots[:, idx + 1] - knots[:, idx])
    out[..., 2] = normalize_angle(out[..., 2])
    return out


def _design_matrix(num: int, dt: float) -> np.ndarray:
    """``M``: row k = ``[dt, dt^2 (k times), 0, ...]`` (initial value + integrated derivatives)."""
    matrix = np.tril(np.full((num, num), dt * dt))
    matrix[:, 0] = dt
    matrix[0, 1:] = 0.0
    return matrix


def jerk_difference_matrix(rows: int, kind: JerkDifference = "nuplan") -> np.ndarray:
    """``(rows, rows + 1)`` jerk regulariser applied to the ``rows + 1`` fitted accelerations.

    ``"nuplan"``: the first difference, row ``k`` gives ``a[k+1] - a[k]``. ``"navsim"``: NAVSIM's
    ``_make_banded_difference_matrix`` writes the ``+1`` band and then the ``-1`` band over it, so only the
    last row keeps its ``+1``: row ``k < rows - 1`` gives ``-a[k]``, the last row ``a[rows] - a[rows - 1]``.
    """
    minus = -np.eye(rows, rows + 1)
    if kind == "navsim":
        minus[rows - 1, rows] = 1.0
        return minus
    return minus + np.eye(rows, rows + 1, k=1)


def _integrate_profile(initial: np.ndarray, derivatives: np.ndarray, dt: float) -> np.ndarray:
    """``(B, N + 1)`` profile from ``initial (B,)`` and ``derivatives (B, N)``."""
    cumsum = np.cumsum(derivatives * dt, axis=-1)
    return initial[:, None] + np.concatenate([np.zeros_like(initial)[:, None], cumsum], axis=-1)


def fit_reference_profiles(reference: np.ndarray, params: LQRParameters = DEFAULT_LQR) -> tuple[np.ndarray, np.ndarray]:
    """Velocity and curvature profiles ``(B, T - 1)`` each, fitted to reference poses ``(B, T, 3)``.

    Velocity: minimise ``||d_xy - A [v0, a]||^2 + jerk_penalty ||D a||^2`` where each displacement is
    ``dt (v0 + dt sum a) (cos, sin)(heading_k)`` and ``D`` is :func:`jerk_difference_matrix` of
    ``params.jerk_difference`` (nuPlan: ``diff(a)``; NAVSIM: ``-a`` but its last row). Curvature: minimise
    ``||d_psi - A [k0, k']||^2`` with ``A = diag(v) M`` and ridge ``diag(1e-10, curvature_rate_penalty, ...)``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    dt = params.discretization_time
    diffs = np.diff(reference, axis=1)  # (B, N, 3)
    num = diffs.shape[1]
    if num < 3:
        raise ValueError(f"fit_reference_profiles: need at least 4 reference poses, got {num + 1}")
    design = _design_matrix(num, dt)
    heading = reference[:, :-1, 2]
    # The heading rotation drops out of A^T A (cos^2 + sin^2 = 1): only the projected displacement remains.
    along = np.cos(heading) * diffs[..., 0] + np.sin(heading) * diffs[..., 1]  # (B, N)
    jerk = np.concatenate([np.zeros((num - 2, 1)), jerk_difference_matrix(num - 2, params.jerk_difference)], axis=1)
    normal = design.T @ design + params.jerk_penalty * jerk.T @ jerk
    solution = np.linalg.solve(normal, design.T @ along.T).T  # (B, N)
    velocity = _integrate_profile(solution[:, 0], solution[:, 1:], dt)

    heading_steps = normalize_angle(diffs[..., 2])
    # A = diag(v) M: A^T A = M^T diag(v^2) M and A^T y = M^T (v y)
    ridge = np.full(num, params.curvature_rate_penalty)
    ridge[0] = params.initial_curvature_penalty
    normal_c = (design.T[None] * (velocity**2)[:, None, :]) @ design + np.diag(ridge)[None]
    rhs = (velocity * heading_steps) @ design
    sol_c = np.linalg.solve(normal_c, rhs[..., None])[..., 0]
    curvature = _integrate_profile(sol_c[:, 0], sol_c[:, 1:], dt)
    return velocity, curvature


def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    """``out[..., k] = sum(x[..., :k])`` (0 at k = 0)."""
    out = np.zeros_like(x)
    np.cumsum(x[..., :-1], axis=-1, out=out[..., 1:])
    return out


def _lateral_lqr(
    lateral_state: np.ndarray, velocity: np.ndarray, curvature: np.ndarray, params: LQRParameters
) -> np.ndarray:
    """Steering-rate commands ``(B,)`` from lateral states ``(B, 3)`` and profiles ``(B, H)``.

    The Euler-discretised error dynamics over ``H`` steps (``e_lat += v dt e_psi``,
    ``e_psi += v dt (delta / L - kappa)``, ``delta += dt u``, ``u`` held) compose to
    ``x_H = A x_0 + B u + g``; the products of the upper-triangular step matrices are written out with
    cumulative sums. One-step LQR: ``u = -(B' Q B + R)^-1 B' Q wrap(A x_0 + g)``.
    """
    dt, horizon = params.discretization_time, velocity.shape[1]
    lat_gain = velocity * dt  # e_lat <- e_psi coupling per step
    psi_gain = velocity * dt / params.wheel_base  # e_psi <- delta coupling per step
    drift = velocity * curvature * dt  # e_psi affine term per step
    step = np.arange(horizon) * dt  # delta_k = delta_0 + k dt u
    psi_from_delta = _exclusive_cumsum(psi_gain)  # e_psi_k gain on delta_0
    psi_from_u = _exclusive_cumsum(psi_gain * step)  # e_psi_k gain on u
    psi_drift = _exclusive_cumsum(drift)
    e_lat, e_psi, delta = lateral_state[:, 0], lateral_state[:, 1], lateral_state[:, 2]
    free = np.stack(
        [
            e_lat
            + e_psi * lat_gain.sum(-1)
            + delta * (lat_gain * psi_from_delta).sum(-1)
            - (lat_gain * psi_drift).sum(-1),
            e_psi + delta * psi_gain.sum(-1) - drift.sum(-1),
            delta,
        ],
        axis=-1,
    )
    b_total = np.stack(
        [(lat_gain * psi_from_u).sum(-1), (psi_gain * step).sum(-1), np.full(len(e_lat), horizon * dt)], axis=-1
    )
    free[:, 1] = normalize_angle(free[:, 1])
    q = np.asarray(params.q_lateral)
    return -(b_total * q * free).sum(-1) / ((b_total * q * b_total).sum(-1) + params.r_lateral)


def _lateral_lqr_matrices(
    lateral_state: np.ndarray, velocity: np.ndarray, curvature: np.ndarray, params: LQRParameters
) -> np.ndarray:
    """Reference form of :func:`_lateral_lqr`: the step matrices multiplied out one by one (for tests)."""
    dt, batch = params.discretization_time, lateral_state.shape[0]
    a_total = np.broadcast_to(np.eye(3), (batch, 3, 3)).copy()
    b_total = np.zeros((batch, 3))
    g_total = np.zeros((batch, 3))
    step = np.broadcast_to(np.eye(3), (batch, 3, 3)).copy()
    for k in range(velocity.shape[1]):
        step[:, 0, 1] = velocity[:, k] * dt
        step[:, 1, 2] = velocity[:, k] * dt / params.wheel_base
        a_total = np.einsum("bij,bjk->bik", step, a_total)
        b_total = np.einsum("bij,bj->bi", step, b_total)
        b_total[:, 2] += dt
        g_total = np.einsum("bij,bj->bi", step, g_total)
        g_total[:, 1] -= velocity[:, k] * curvature[:, k] * dt
    error = np.einsum("bij,bj->bi", a_total, lateral_state) + g_total
    error[:, 1] = normalize_angle(error[:, 1])
    q = np.asarray(params.q_lateral)
    return -(b_total * q * error).sum(-1) / ((b_total * q * b_total).sum(-1) + params.r_lateral)


def lqr_commands(
    states: np.ndarray,
    reference: np.ndarray,
    time_index: int = 0,
    profiles: tuple[np.ndarray, np.ndarray] | None = None,
    params: LQRParameters = DEFAULT_LQR,
) -> np.ndarray:
    """Commands ``(B, 2)`` (acceleration, steering rate) that track ``reference`` from ``time_index``.

    Args:
        states: ``(B, 11)`` current ego states.
        reference: ``(B, T, 3)`` global reference poses at ``discretization_time`` spacing; index
            ``time_index`` is the reference pose of now.
        profiles: velocity / curvature profiles from :func:`fit_reference_profiles` (fitted here if omitted).
    """
    states = np.asarray(states, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if states.ndim != 2 or reference.ndim != 3 or reference.shape[0] != states.shape[0]:
        raise ValueError(f"lqr_commands: states {states.shape} / reference {reference.shape} do not match")
    velocity_profile, curvature_profile = (
        profiles if profiles is not None else fit_reference_profiles(reference, params)
    )
    horizon, last = params.tracking_horizon, velocity_profile.shape[1] - 1
    ref_pose = reference[:, time_index]
    dx, dy = states[:, S.X] - ref_pose[:, 0], states[:, S.Y] - ref_pose[:, 1]
    lateral_state = np.stack(
        [
            -dx * np.sin(ref_pose[:, 2]) + dy * np.cos(ref_pose[:, 2]),
            normalize_angle(states[:, S.HEADING] - ref_pose[:, 2]),
            states[:, S.STEERING_ANGLE],
        ],
        axis=-1,
    )
    speed = states[:, S.VX]
    ref_speed = velocity_profile[:, min(time_index + horizon, last)]
    curvature = curvature_profile[:, np.minimum(time_index + np.arange(horizon), last)]

    stop = (ref_speed <= params.stopping_velocity) & (speed <= params.stopping_velocity)
    b_long = horizon * params.discretization_time
    accel_lqr = (
        -b_long
        * params.q_longitudinal
        * (speed - ref_speed)
        / (b_long * params.q_longitudinal * b_long + params.r_longitudinal)
    )
    accel = np.where(stop, -params.stopping_proportional_gain * (speed - ref_speed), accel_lqr)
    steering_rate = np.zeros_like(speed)
    move = ~stop
    if move.any():
        predicted = _integrate_profile(
            speed[move], np.repeat(accel[move, None], horizon, axis=1), params.discretization_time
        )
        steering_rate[move] = _lateral_lqr(lateral_state[move], predicted[:, :horizon], curvature[move], params)
    return np.stack([accel, steering_rate], axis=-1)


def propagate_bicycle(
    states: np.ndarray, commands: np.ndarray, dt: float = DT, params: BicycleParameters = DEFAULT_BICYCLE
) -> np.ndarray:
    """Next states ``(B, 11)`` of the kinematic bicycle after ``dt`` under commands ``(B, 2)``.

    The commanded acceleration and steering angle (``old + dt * rate``) pass through first-order lags
    (``new = old + dt / (dt + tau) (ideal - old)``); explicit Euler about the rear axle uses the current
    speed and steering angle; the steering angle is clipped to ``±max_steering_angle``; lateral
    velocity and acceleration are 0; yaw rate = ``v tan(delta) / L`` of the new state, yaw acceleration
    its finite difference.
    """
    states = np.asarray(states, dtype=np.float64)
    commands = np.asarray(commands, dtype=np.float64)
    accel_old, steer_old = states[:, S.AX], states[:, S.STEERING_ANGLE]
    accel = accel_old + dt / (dt + params.accel_time_constant) * (commands[:, 0] - accel_old)
    ideal_steer = steer_old + dt * commands[:, 1]
    steer_lagged = steer_old + dt / (dt + params.steering_angle_time_constant) * (ideal_steer - steer_old)
    steering_rate = (steer_lagged - steer_old) / dt
    speed, heading = states[:, S.VX], states[:, S.HEADING]

    out = np.zeros_like(states)
    out[:, S.X] = states[:, S.X] + dt * speed * np.cos(heading)
    out[:, S.Y] = states[:, S.Y] + dt * speed * np.sin(heading)
    out[:, S.HEADING] = normalize_angle(heading + dt * speed * np.tan(steer_old) / params.wheel_base)
    out[:, S.VX] = speed + dt * accel
    out[:, S.AX] = accel
    out[:, S.STEERING_ANGLE] = np.clip(
        steer_old + dt * steering_rate, -params.max_steering_angle, params.max_steering_angle
    )
    out[:, S.STEERING_RATE] = steering_rate
    out[:, S.YAW_RATE] = out[:, S.VX] * np.tan(out[:, S.STEERING_ANGLE]) / params.wheel_base
    out[:, S.YAW_ACCEL] = (out[:, S.YAW_RATE] - states[:, S.YAW_RATE]) / dt
    return out


@numba.njit(cache=True)
def _wrap(angle: float) -> float:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


@numba.njit(cache=True)
def _lateral_rate(
    e_lat: float,
    e_psi: float,
    delta: float,
    speed: float,
    accel_cmd: float,
    curvature: np.ndarray,
    k: int,
    last: int,
    lqr: np.ndarray,
) -> float:
    """Steering-rate command of the lateral LQR (:func:`_lateral_lqr` for one candidate) at step ``k``: the
    lateral / heading error and steering angle ``delta`` predicted ``horizon`` steps ahead at speeds
    ``speed + j dt accel_cmd`` along the reference curvature ``(T',)`` (held after index ``last``), written out as
    scalar sums; ``lqr`` as in :func:`_track_kernel`."""
    q0, q1, q2, r_lat, dt, lqr_wb = lqr[2], lqr[3], lqr[4], lqr[5], lqr[6], lqr[10]
    horizon = int(lqr[7])
    sum_lat = lat_psi_delta = lat_psi_u = lat_drift = 0.0
    cum_psi_delta = cum_psi_u = cum_drift = 0.0
    for j in range(horizon):
        v_j = speed + j * dt * accel_cmd
        lat_gain = v_j * dt
        psi_gain = v_j * dt / lqr_wb
        drift = v_j * curvature[min(k + j, last)] * dt
        lat_psi_delta += lat_gain * cum_psi_delta
        lat_psi_u += lat_gain * cum_psi_u
        lat_drift += lat_gain * cum_drift
        sum_lat += lat_gain
        cum_psi_delta += psi_gain
        cum_psi_u += psi_gain * j * dt
        cum_drift += drift
    sum_psi, psi_u, drift_sum = cum_psi_delta, cum_psi_u, cum_drift
    free0 = e_lat + e_psi * sum_lat + delta * lat_psi_delta - lat_drift
    free1 = _wrap(e_psi + delta * sum_psi - drift_sum)
    b0, b1, b2 = lat_psi_u, psi_u, horizon * dt
    return -(b0 * q0 * free0 + b1 * q1 * free1 + b2 * q2 * delta) / (b0 * q0 * b0 + b1 * q1 * b1 + b2 * q2 * b2 + r_lat)


@numba.njit(cache=True)
def _bicycle_step(
    st: np.ndarray, nxt: np.ndarray, accel_cmd: float, rate_cmd: float, dt: float, bike: np.ndarray
) -> None:
    """Writes the next state ``nxt`` ``(11,)`` of ``st`` ``(11,)`` under the commands (:func:`propagate_bicycle`
    for one candidate); ``bike`` = (wheel_base, max_steering_angle, accel_tau, steering_tau)."""
    bike_wb, max_steer, tau_a, tau_s = bike[0], bike[1], bike[2], bike[3]
    delta, speed = st[7], st[3]
    accel = st[5] + dt / (dt + tau_a) * (accel_cmd - st[5])
    ideal = delta + dt * rate_cmd
    steer_rate = (delta + dt / (dt + tau_s) * (ideal - delta) - delta) / dt
    nxt[0] = st[0] + dt * speed * np.cos(st[2])
    nxt[1] = st[1] + dt * speed * np.sin(st[2])
    nxt[2] = _wrap(st[2] + dt * speed * np.tan(delta) / bike_wb)
    nxt[3] = speed + dt * accel
    nxt[4] = 0.0
    nxt[5] = accel
    nxt[6] = 0.0
    nxt[7] = min(max(delta + dt * steer_rate, -max_steer), max_steer)
    nxt[8] = steer_rate
    nxt[9] = nxt[3] * np.tan(nxt[7]) / bike_wb
    nxt[10] = (nxt[9] - st[9]) / dt


@numba.njit(cache=True)
def _track_kernel(
    out: np.ndarray,
    reference: np.ndarray,
    velocity: np.ndarray,
    curvature: np.ndarray,
    lqr: np.ndarray,
    bike: np.ndarray,
) -> None:
    """Fills ``out[:, 1:]`` ``(B, T, 11)`` from ``out[:, 0]``: :func:`lqr_commands` + :func:`propagate_bicycle`
    per candidate and step, written out as scalar loops (same arithmetic as the array functions).

    ``lqr`` = (q_lon, r_lon, q_lat_0, q_lat_1, q_lat_2, r_lat, dt, horizon, stop_gain, stop_velocity, wheel_base);
    ``bike`` = (wheel_base, max_steering_angle, accel_tau, steering_tau).
    """
    q_lon, r_lon, dt, stop_gain, stop_v = lqr[0], lqr[1], lqr[6], lqr[8], lqr[9]
    horizon = int(lqr[7])
    last = velocity.shape[1] - 1
    b_long = horizon * dt
    for b in range(out.shape[0]):
        for k in range(out.shape[1] - 1):
            st = out[b, k]
            rx, ry, rh = reference[b, k, 0], reference[b, k, 1], reference[b, k, 2]
            speed = st[3]
            ref_speed = velocity[b, min(k + horizon, last)]
            if ref_speed <= stop_v and speed <= stop_v:
                accel_cmd = -stop_gain * (speed - ref_speed)
                rate_cmd = 0.0
            else:
                accel_cmd = -b_long * q_lon * (speed - ref_speed) / (b_long * q_lon * b_long + r_lon)
                dx, dy = st[0] - rx, st[1] - ry
                e_lat = -dx * np.sin(rh) + dy * np.cos(rh)
                rate_cmd = _lateral_rate(e_lat, _wrap(st[2] - rh), st[7], speed, accel_cmd, curvature[b], k, last, lqr)
            _bicycle_step(st, out[b, k + 1], accel_cmd, rate_cmd, dt, bike)


def track_and_propagate(
    current_state: np.ndarray,
    reference: np.ndarray,
    dt: float = DT,
    lqr: LQRParameters = DEFAULT_LQR,
    bicycle: BicycleParameters = DEFAULT_BICYCLE,
    compiled: bool = True,
) -> np.ndarray:
    """Simulated states ``(B, T, 11)`` tracking global references ``(B, T, 3)`` from ``current_state``.

    ``current_state`` is ``(11,)`` (shared by all candidates) or ``(B, 11)``; state 0 is the current
    state, states ``1 .. T - 1`` follow one LQR + bicycle step of ``dt`` each. The reference profiles
    are fitted once (NAVSIM's batched tracker), with ``lqr.jerk_difference`` (nuPlan's by default).
    ``compiled=False`` runs the array functions :func:`lqr_commands` / :func:`propagate_bicycle` step by step
    instead of the numba kernel (same numbers).
    """
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim != 3 or reference.shape[-1] != 3:
        raise ValueError(f"track_and_propagate: reference must be (B, T, 3), got {reference.shape}")
    current_state = np.asarray(current_state, dtype=np.float64)
    if current_state.shape[-1] != STATE_DIM:
        raise ValueError(f"track_and_propagate: state must have {STATE_DIM} columns, got {current_state.shape}")
    batch, num = reference.shape[:2]
    params = lqr if lqr.discretization_time == dt else LQRParameters(**{**lqr.__dict__, "discretization_time": dt})
    out = np.empty((batch, num, STATE_DIM))
    out[:, 0] = np.broadcast_to(current_state, (batch, STATE_DIM))
    profiles = fit_reference_profiles(reference, params)
    if compiled:
        lqr_vec = np.array(
            [params.q_longitudinal, params.r_longitudinal, *params.q_lateral, params.r_lateral, dt,
             params.tracking_horizon, params.stopping_proportional_gain, params.stopping_velocity, params.wheel_base]
        )  # fmt: skip
        bike_vec = np.array(
            [bicycle.wheel_base, bicycle.max_steering_angle, bicycle.accel_time_constant,
             bicycle.steering_angle_time_constant]
        )  # fmt: skip
        _track_kernel(out, reference, profiles[0], profiles[1], lqr_vec, bike_vec)
        return out
    for k in range(1, num):
        commands = lqr_commands(out[:, k - 1], reference, k - 1, profiles, params)
        out[:, k] = propagate_bicycle(out[:, k - 1], commands, dt, bicycle)
    return out


def simulate_proposals(
    current_state: np.ndarray,
    poses_local: np.ndarray,
    interval_s: float = 0.5,
    lqr: LQRParameters = NAVSIM_LQR,
    start_poses: np.ndarray | None = None,
) -> np.ndarray:
    """States ``(B, 41, 11)``: planned poses ``(B, P, 3)`` at ``interval_s`` (current rear-axle frame) interpolated
    to 10 Hz, tracked and propagated from ``current_state (11,)`` with NAVSIM's tracker (its jerk regulariser,
    :data:`NAVSIM_LQR`) unless ``lqr`` says otherwise. ``start_poses`` ``(B, 3)``: the plans' local poses at t = 0
    when they do not start at the current pose (see :func:`interpolate_trajectory`)."""
    reference = interpolate_trajectory(poses_local, current_state, interval_s=interval_s, start_poses=start_poses)
    return track_and_propagate(current_state, reference, lqr=lqr)
