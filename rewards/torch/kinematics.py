"""Torch twin of the two-stage ego controller: LQR tracker + kinematic bicycle (specs/navsim.md §3.3-3.4).

Batched over proposals / episodes, device-agnostic, float64 by default so that it agrees with the numpy
tracker of :mod:`simulation.kinematics` to 1e-5. States are ``(B, 11)`` by :class:`~simulation.types.StateIndex`
(rear axle, ego-frame dynamics); references are ``(B, P, 3)`` global rear-axle poses at ``dt`` spacing, the
first one at the current time.

Tracker: velocity / curvature profiles are fitted once per reference by regularised least squares (the jerk
regulariser chosen by ``TrackerParameters.jerk_difference``: nuPlan's first difference by default, BEV-Warp being a
nuPlan-style closed loop, or NAVSIM's, as :func:`simulation.kinematics.jerk_difference_matrix`); each step
uses a one-step longitudinal LQR towards the reference speed ``horizon`` steps ahead and a lateral LQR on the
Euler-discretised linear time-varying error dynamics over ``horizon`` steps (a P controller near standstill).
Bicycle: first-order lags on acceleration and steering, explicit Euler, steering clipped to +-pi/3.

:func:`simulate_proposals` is the NAVSIM scorer's tracker: local plans ``(B, P, 3)`` at 0.5 s interpolated to 10 Hz
(:func:`interpolate_trajectory`) and tracked with NAVSIM's jerk regulariser (:data:`NAVSIM_TRACKER`), as
:func:`simulation.kinematics.simulate_proposals`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch

from simulation.types import PACIFICA, StateIndex

S = StateIndex


@dataclass(frozen=True)
class TrackerParameters:
    """LQR tracker and bicycle parameters (NAVSIM / nuPlan defaults).

    ``jerk_difference``: ``"nuplan"`` (default) or ``"navsim"``, as ``simulation.kinematics.LQRParameters``.
    """

    q_longitudinal: float = 10.0
    r_longitudinal: float = 1.0
    q_lateral: tuple[float, float, float] = (1.0, 10.0, 0.0)
    r_lateral: float = 1.0
    horizon: int = 10
    jerk_penalty: float = 1e-4
    curvature_rate_penalty: float = 1e-2
    initial_curvature_penalty: float = 1e-10
    stopping_gain: float = 0.5
    stopping_velocity: float = 0.2
    wheel_base: float = PACIFICA.wheel_base
    max_steering_angle: float = torch.pi / 3
    accel_time_constant: float = 0.2
    steering_time_constant: float = 0.05
    jerk_difference: Literal["nuplan", "navsim"] = "nuplan"

    def __post_init__(self) -> None:
        if self.jerk_difference not in ("nuplan", "navsim"):
            raise ValueError(f"jerk_difference must be 'nuplan' or 'navsim', got {self.jerk_difference!r}")


DEFAULT_TRACKER = TrackerParameters()
#: NAVSIM's scorer tracker (its jerk regulariser).
NAVSIM_TRACKER = TrackerParameters(jerk_difference="navsim")


def normalize_angle(angle: torch.Tensor) -> torch.Tensor:
    """Wrap to ``[-pi, pi]``."""
    return torch.atan2(torch.sin(angle), torch.cos(angle))


def _integrate(initial: torch.Tensor, derivatives: torch.Tensor, dt: float) -> torch.Tensor:
    """``(B, M + 1)`` profile from ``(B,)`` initial values and ``(B, M)`` derivatives."""
    cum = torch.cumsum(derivatives * dt, dim=-1)
    return initial[:, None] + torch.nn.functional.pad(cum, (1, 0))


@lru_cache(maxsize=16)
def _design(
    m: int, dt: float, jerk_penalty: float, jerk_difference: str, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Constant parts of the two least-squares fits for ``m`` displacements.

    Displacement ``k`` along its heading is ``D[k] @ (v0, a_1 .. a_{m-1})`` with ``D`` = ``dt`` in column 0 and
    ``dt^2`` in columns ``1..k``; as the heading directions are unit vectors, the normal matrix of the 2-D fit is
    ``D^T D`` whatever the headings, so its regularised inverse is computed once. The curvature design is
    ``v[:, :, None] * W`` with ``W`` the same lower-triangular pattern. The jerk band acts on the ``m - 1``
    accelerations: ``a[k+1] - a[k]`` per row (nuPlan) or ``-a[k]`` but on the last row (NAVSIM).
    """
    cols = torch.full((m,), dt**2, dtype=torch.float64)
    cols[0] = dt
    pattern = torch.tril(torch.ones(m, m, dtype=torch.float64)) * cols  # (M, M)
    band = torch.zeros(m - 2, m, dtype=torch.float64)
    idx = torch.arange(m - 2)
    band[idx, idx + 1] = -1.0
    if jerk_difference == "navsim":  # NAVSIM's banded matrix: the -1 band overwrites the +1 band but on the last row
        band[m - 3, m - 1] = 1.0
    else:
        band[idx, idx + 2] = 1.0
    normal_inv = torch.linalg.inv(pattern.T @ pattern + jerk_penalty * (band.T @ band))
    return normal_inv.to(dtype=dtype, device=device), pattern.to(dtype=dtype, device=device)


def _suffix_sum(x: torch.Tensor) -> torch.Tensor:
    """``out[..., k] = sum(x[..., k:])``."""
    return torch.flip(torch.cumsum(torch.flip(x, [-1]), -1), [-1])


def fit_profiles(poses: torch.Tensor, dt: float, p: TrackerParameters = DEFAULT_TRACKER) -> tuple[torch.Tensor, ...]:
    """Velocity ``(B, P-1)`` and curvature ``(B, P-1)`` profiles of reference poses ``(B, P, 3)``."""
    m = poses.shape[1] - 1
    normal_inv, pattern = _design(m, dt, p.jerk_penalty, p.jerk_difference, poses.dtype, poses.device)
    diff = poses[:, 1:] - poses[:, :-1]
    heading = poses[:, :-1, 2]
    along = diff[..., 0] * torch.cos(heading) + diff[..., 1] * torch.sin(heading)  # (B, M)
    x = (along @ pattern) @ normal_inv.T  # normal_inv @ D^T @ along, per row
    velocity = _integrate(x[:, 0], x[:, 1:], dt)  # (B, M)

    yaw = normalize_angle(diff[..., 2])
    # design = v[:, :, None] * pattern with pattern[k, i] = c_i for i <= k: design^T design [i, j] = c_i c_j
    # sum_{k >= max(i, j)} v_k^2 and design^T yaw [i] = c_i sum_{k >= i} v_k yaw_k (suffix sums, no (M, M) products)
    c = torch.diagonal(pattern)
    idx = torch.arange(m, device=poses.device)
    reg = p.curvature_rate_penalty * torch.eye(m, dtype=poses.dtype, device=poses.device)
    reg[0, 0] = p.initial_curvature_penalty
    tail = _suffix_sum(velocity * velocity)
    lhs = torch.where(idx[:, None] >= idx, tail[:, :, None], tail[:, None, :]) * (c[:, None] * c) + reg
    chol, info = torch.linalg.cholesky_ex(lhs)
    rhs = (c * _suffix_sum(velocity * yaw))[..., None]
    if bool(info.any()):
        k = torch.linalg.solve(lhs, rhs)[..., 0]
    else:
        k = torch.cholesky_solve(rhs, chol)[..., 0]
    curvature = _integrate(k[:, 0], k[:, 1:], dt)
    return velocity, curvature


def lqr_command(
    state: torch.Tensor,
    reference: torch.Tensor,
    velocity: torch.Tensor,
    curvature: torch.Tensor,
    step: int,
    dt: float,
    p: TrackerParameters = DEFAULT_TRACKER,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Acceleration and steering-rate commands ``(B,)`` at reference index ``step`` (profiles ``(B, M)``)."""
    ref = reference[:, step]
    ex, ey = state[:, S.X] - ref[:, 0], state[:, S.Y] - ref[:, 1]
    lat = -ex * torch.sin(ref[:, 2]) + ey * torch.cos(ref[:, 2])
    head = normalize_angle(state[:, S.HEADING] - ref[:, 2])
    v0 = state[:, S.VX]
    m, h = velocity.shape[1], p.horizon
    ridx = min(step + h, m - 1)
    v_ref = velocity[:, ridx]
    length = ridx - step
    kappa = torch.cat([curvature[:, step:ridx], curvature[:, ridx : ridx + 1].expand(-1, h - length)], 1)

    stop = (v_ref <= p.stopping_velocity) & (v0 <= p.stopping_velocity)
    gain_b = h * dt
    accel_lqr = -(gain_b * p.q_longitudinal * (v0 - v_ref)) / (gain_b * p.q_longitudinal * gain_b + p.r_longitudinal)
    accel = torch.where(stop, -p.stopping_gain * (v0 - v_ref), accel_lqr)

    steer_rate = _lateral_rate(torch.stack([lat, head, state[:, S.STEERING_ANGLE]], -1), v0, accel_lqr, kappa, dt, p)
    steer_rate = torch.where(stop, torch.zeros_like(steer_rate), steer_rate)
    return accel, steer_rate


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """``out[..., k] = sum(x[..., :k])`` (0 at k = 0)."""
    return torch.nn.functional.pad(torch.cumsum(x[..., :-1], -1), (1, 0))


def _lateral_rate(
    lateral: torch.Tensor, v0: torch.Tensor, accel: torch.Tensor, kappa: torch.Tensor, dt: float, p: TrackerParameters
) -> torch.Tensor:
    """Steering-rate command ``(B,)`` of the lateral LQR from lateral errors / steering ``(B, 3)``, speeds ``(B,)``
    growing by ``accel * dt`` per step and curvatures ``(B, H)`` over the horizon.

    The Euler-discretised error dynamics (``e_lat += v dt e_psi``, ``e_psi += v dt (delta / L - kappa)``,
    ``delta += dt u``, ``u`` held) compose over ``H`` steps to ``x_H = A x_0 + B u + g``; the products of the
    upper-triangular step matrices are written out with cumulative sums (as :mod:`simulation.kinematics`)."""
    h = kappa.shape[1]
    step = torch.arange(h, dtype=lateral.dtype, device=lateral.device) * dt
    vel = v0[:, None] + accel[:, None] * step  # (B, H)
    lat_gain = vel * dt
    psi_gain = vel * dt / p.wheel_base
    drift = vel * kappa * dt
    e_lat, e_psi, delta = lateral.unbind(-1)
    free = torch.stack(
        [
            e_lat + e_psi * lat_gain.sum(-1) + delta * (lat_gain * _exclusive_cumsum(psi_gain)).sum(-1)
            - (lat_gain * _exclusive_cumsum(drift)).sum(-1),
            normalize_angle(e_psi + delta * psi_gain.sum(-1) - drift.sum(-1)),
            delta,
        ],
        -1,
    )  # fmt: skip
    b_total = torch.stack(
        [(lat_gain * _exclusive_cumsum(psi_gain * step)).sum(-1), (psi_gain * step).sum(-1),
         torch.full_like(e_lat, h * dt)], -1,
    )  # fmt: skip
    q = torch.tensor(p.q_lateral, dtype=lateral.dtype, device=lateral.device)
    btq = b_total * q
    return -(btq * free).sum(-1) / ((btq * b_total).sum(-1) + p.r_lateral)


def propagate(
    state: torch.Tensor,
    accel_cmd: torch.Tensor,
    steer_rate_cmd: torch.Tensor,
    dt: float,
    p: TrackerParameters = DEFAULT_TRACKER,
) -> torch.Tensor:
    """One kinematic-bicycle step of states ``(B, 11)`` under commands ``(B,)``; returns ``(B, 11)``."""
    accel0, steer0 = state[:, S.AX], state[:, S.STEERING_ANGLE]
    accel = dt / (dt + p.accel_time_constant) * (accel_cmd - accel0) + accel0
    ideal_steer = dt * steer_rate_cmd + steer0
    new_steer_lag = dt / (dt + p.steering_time_constant) * (ideal_steer - steer0) + steer0
    steer_rate = (new_steer_lag - steer0) / dt
    v, psi = state[:, S.VX], state[:, S.HEADING]
    new_v = v + accel * dt
    steer = torch.clamp(steer0 + steer_rate * dt, -p.max_steering_angle, p.max_steering_angle)
    yaw_rate = new_v * torch.tan(steer) / p.wheel_base
    zero = torch.zeros_like(v)
    columns = {
        S.X: state[:, S.X] + v * torch.cos(psi) * dt,
        S.Y: state[:, S.Y] + v * torch.sin(psi) * dt,
        S.HEADING: normalize_angle(psi + v * torch.tan(steer0) / p.wheel_base * dt),
        S.VX: new_v,
        S.VY: zero,
        S.STEERING_ANGLE: steer,
        S.YAW_RATE: yaw_rate,
        S.AX: accel,
        S.AY: zero,
        S.YAW_ACCEL: (yaw_rate - state[:, S.YAW_RATE]) / dt,
        S.STEERING_RATE: steer_rate,
    }
    out = torch.stack([columns[i] for i in StateIndex], -1)
    return out


def track_and_propagate(
    current_state: torch.Tensor,
    reference_poses: torch.Tensor,
    dt: float = 0.1,
    steps: int | None = None,
    params: TrackerParameters = DEFAULT_TRACKER,
) -> torch.Tensor:
    """Follow references ``(B, P, 3)`` from states ``(B, 11)`` (or one ``(11,)``) for ``steps`` (default ``P - 1``).

    Returns:
        ``(B, steps + 1, 11)`` states, the initial one first.
    """
    if reference_poses.dim() != 3 or reference_poses.shape[-1] != 3 or reference_poses.shape[1] < 4:
        raise ValueError(f"reference poses must be (B, P >= 4, 3), got {tuple(reference_poses.shape)}")
    state = current_state.to(reference_poses.dtype)
    if state.dim() == 1:
        state = state.expand(reference_poses.shape[0], -1)
    if state.shape != (reference_poses.shape[0], len(StateIndex)):
        raise ValueError(f"current state must be (B, 11) matching the references, got {tuple(state.shape)}")
    n = reference_poses.shape[1] - 1 if steps is None else steps
    velocity, curvature = fit_profiles(reference_poses, dt, params)
    m, h = velocity.shape[1], params.horizon
    k_idx = torch.clamp(torch.arange(n, device=state.device), max=m - 1)  # reference index of each step
    window = torch.clamp(k_idx[:, None] + torch.arange(h, device=state.device), max=m - 1)  # (n, H)
    coef = _lateral_coefficients(curvature[:, window], dt)  # (B, n, 5)
    ref = reference_poses[:, k_idx]  # (B, n, 3)
    ref_cos, ref_sin = torch.cos(ref[..., 2]), torch.sin(ref[..., 2])
    v_ref = velocity[:, torch.clamp(k_idx + h, max=m - 1)]  # (B, n)
    out = [state]
    for k in range(n):
        st = out[-1]
        ex, ey = st[:, S.X] - ref[:, k, 0], st[:, S.Y] - ref[:, k, 1]
        lateral = torch.stack(
            [-ex * ref_sin[:, k] + ey * ref_cos[:, k], normalize_angle(st[:, S.HEADING] - ref[:, k, 2]),
             st[:, S.STEERING_ANGLE]], -1,
        )  # fmt: skip
        accel, rate = _commands(lateral, st[:, S.VX], v_ref[:, k], coef[:, k], h, dt, params)
        out.append(propagate(st, accel, rate, dt, params))
    return torch.stack(out, 1)


@lru_cache(maxsize=16)
def _horizon_sums(h: int, dt: float) -> tuple[tuple[float, ...], torch.Tensor]:
    """Constants of the lateral LQR sums over ``h`` steps at speeds ``v0 + a s_k`` (``s_k = k dt``) and the
    ``(h, 5)`` weights of the curvatures in the others (:func:`_lateral_coefficients`)."""
    s = torch.arange(h, dtype=torch.float64) * dt
    k = torch.arange(h, dtype=torch.float64)
    before = torch.cumsum(s, 0) - s  # sum_{i < k} s_i
    before2 = torch.cumsum(s * s, 0) - s * s
    after = s.sum() - torch.cumsum(s, 0)  # sum_{j > i} s_j
    consts = (s.sum(), (s * s).sum(), k.sum(), (k * s + before).sum(), (s * before).sum(), before.sum(),
              (s * before + before2).sum(), (s * before2).sum())  # fmt: skip
    rest = h - 1 - k
    weights = torch.stack([torch.ones(h, dtype=torch.float64), s, rest, after + rest * s, s * after], -1)
    return tuple(float(c) for c in consts), weights


def _lateral_coefficients(kappa: torch.Tensor, dt: float) -> torch.Tensor:
    """``(B, n, 5)`` curvature sums of the lateral LQR for the horizon windows ``kappa`` ``(B, n, H)``:
    ``sum kappa_i``, ``sum s_i kappa_i`` and the weights of ``v0^2``, ``v0 a``, ``a^2`` in
    ``sum_k (v0 + a s_k) sum_{i < k} (v0 + a s_i) kappa_i``."""
    weights = _horizon_sums(kappa.shape[-1], dt)[1].to(kappa)
    return kappa @ weights


def _commands(
    lateral: torch.Tensor,
    v0: torch.Tensor,
    v_ref: torch.Tensor,
    coef: torch.Tensor,
    h: int,
    dt: float,
    p: TrackerParameters,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lqr_command` from lateral errors / steering ``(B, 3)``, speeds and reference speeds ``(B,)`` and the
    curvature sums ``(B, 5)`` of :func:`_lateral_coefficients`: the horizon sums of :func:`_lateral_rate` written
    as polynomials in the speed ``v0`` and the acceleration ``a`` of the longitudinal LQR."""
    stop = (v_ref <= p.stopping_velocity) & (v0 <= p.stopping_velocity)
    gain_b = h * dt
    a = -(gain_b * p.q_longitudinal * (v0 - v_ref)) / (gain_b * p.q_longitudinal * gain_b + p.r_longitudinal)
    accel = torch.where(stop, -p.stopping_gain * (v0 - v_ref), a)
    (s1, s2, a00, a01, a11, b0, b1, b2), _ = _horizon_sums(h, dt)
    e_lat, e_psi, delta = lateral.unbind(-1)
    k0, k1, d0, d1, d2 = coef.unbind(-1)
    vv, va, aa = v0 * v0, v0 * a, a * a
    dt2_l = dt * dt / p.wheel_base
    sum_lat = dt * (h * v0 + s1 * a)
    drift = dt * (v0 * k0 + a * k1)
    free0 = e_lat + e_psi * sum_lat + delta * (dt2_l * (a00 * vv + a01 * va + a11 * aa))
    free0 = free0 - dt * dt * (d0 * vv + d1 * va + d2 * aa)
    free1 = normalize_angle(e_psi + delta * (sum_lat / p.wheel_base) - drift)
    bl = dt2_l * (b0 * vv + b1 * va + b2 * aa)
    bp = dt / p.wheel_base * (s1 * v0 + s2 * a)
    q0, q1, q2 = p.q_lateral
    bd = h * dt
    rate = -(bl * q0 * free0 + bp * q1 * free1 + bd * q2 * delta) / (
        bl * q0 * bl + bp * q1 * bp + bd * q2 * bd + p.r_lateral
    )
    return accel, torch.where(stop, torch.zeros_like(rate), rate)


def local_to_global(poses: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """Poses ``(..., 3)`` in the frames of ``origin`` ``(..., 3)`` (broadcast) to the global frame."""
    c, s = torch.cos(origin[..., 2:3]), torch.sin(origin[..., 2:3])
    x, y = poses[..., 0:1], poses[..., 1:2]
    gx = origin[..., 0:1] + c * x - s * y
    gy = origin[..., 1:2] + s * x + c * y
    return torch.cat([gx, gy, normalize_angle(poses[..., 2:3] + origin[..., 2:3])], -1)


def _unwrap(angles: torch.Tensor) -> torch.Tensor:
    """``numpy.unwrap`` along the last axis (period 2 pi, discontinuity pi)."""
    d = torch.diff(angles, dim=-1)
    dd = torch.remainder(d + torch.pi, 2 * torch.pi) - torch.pi
    dd = torch.where((dd == -torch.pi) & (d > 0), torch.full_like(dd, torch.pi), dd)
    correct = torch.where(d.abs() < torch.pi, torch.zeros_like(d), dd - d)
    return torch.cat([angles[..., :1], angles[..., 1:] + torch.cumsum(correct, -1)], -1)


def interpolate_trajectory(
    poses_local: torch.Tensor, current_state: torch.Tensor, interval_s: float = 0.5, num_steps: int = 40,
    dt: float = 0.1,
) -> torch.Tensor:  # fmt: skip
    """Global reference poses ``(B, num_steps + 1, 3)`` at ``0, dt, ...`` from local plans ``(B, P, 3)`` at
    ``interval_s, 2 interval_s, ...`` and current states ``(B, 11)`` (or one ``(11,)``), as
    :func:`simulation.kinematics.interpolate_trajectory`: the current pose prepended, x / y linear, the heading
    linear after unwrapping, times past the plan's end clamped to its last pose."""
    batch, num_poses = poses_local.shape[:2]
    origin = current_state[..., :3].to(poses_local.dtype).expand(batch, 3)
    glob = local_to_global(poses_local, origin[:, None])
    knots = torch.cat([origin[:, None], glob], 1)  # (B, P + 1, 3)
    knots = torch.cat([knots[..., :2], _unwrap(knots[..., 2])[..., None]], -1)
    times = torch.arange(num_poses + 1, dtype=torch.float64) * interval_s
    query = torch.clamp(torch.arange(num_steps + 1, dtype=torch.float64) * dt, 0.0, float(times[-1]))
    idx = torch.clamp(torch.searchsorted(times, query, right=True) - 1, 0, num_poses - 1)
    frac = ((query - times[idx]) / (times[idx + 1] - times[idx])).to(knots)[None, :, None]
    out = knots[:, idx] + frac * (knots[:, idx + 1] - knots[:, idx])
    return torch.cat([out[..., :2], normalize_angle(out[..., 2:3])], -1)


def simulate_proposals(
    current_state: torch.Tensor, poses_local: torch.Tensor, interval_s: float = 0.5,
    params: TrackerParameters = NAVSIM_TRACKER,
) -> torch.Tensor:  # fmt: skip
    """States ``(B, 41, 11)`` of local plans ``(B, P, 3)`` at ``interval_s`` tracked from ``current_state``
    ``(B, 11)`` or ``(11,)`` with NAVSIM's tracker (:func:`simulation.kinematics.simulate_proposals`)."""
    reference = interpolate_trajectory(poses_local, current_state, interval_s)
    return track_and_propagate(current_state, reference, 0.1, None, params)
