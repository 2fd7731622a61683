"""Batched torch twin of :mod:`rewards.comfort`: PDMS comfort, EPDMS history comfort and two-frame extended comfort.

The Savitzky-Golay filters (scipy ``savgol_filter``, mode ``interp``) are linear maps along time: each is applied
as the ``(T, T)`` matrix of :func:`rewards.comfort.savgol_matrix` (a convolution in the interior, polynomial fits
over the first and last half windows), to every scene and candidate in one matmul. Rounding to 8 decimals and
the strict bounds follow the numpy code.
"""

from __future__ import annotations

import torch

from rewards import comfort as nc
from simulation.types import PACIFICA, StateIndex

S = StateIndex


def _filter(y: torch.Tensor, window: int, poly: int, deriv: int = 0, delta: float = 1.0) -> torch.Tensor:
    """Savitzky-Golay filter of ``y`` ``(..., T)`` along its last axis, rounded to 8 decimals."""
    mat = torch.tensor(nc.savgol_matrix(y.shape[-1], window, poly, deriv, delta), dtype=y.dtype, device=y.device)
    return torch.round(y @ mat.T, decimals=8)


def phase_unwrap(headings: torch.Tensor) -> torch.Tensor:
    """Headings ``(..., T)`` shifted by multiples of 2 pi so successive steps differ by at most pi."""
    jumps = torch.round(torch.diff(headings, dim=-1) / (2.0 * torch.pi))
    adjust = torch.nn.functional.pad(torch.cumsum(jumps, -1), (1, 0))
    return headings - 2.0 * torch.pi * adjust


def _accel(states: torch.Tensor, which: str, variant: str, window: int) -> torch.Tensor:
    if which == "magnitude":
        a = torch.hypot(states[..., S.AX], states[..., S.AY])
    elif which == "x" and variant == "v2":
        d = PACIFICA.rear_axle_to_center
        a = states[..., S.AX] + d * states[..., S.YAW_RATE] ** 2 + d * states[..., S.YAW_ACCEL]
    else:
        a = states[..., S.AX] if which == "x" else states[..., S.AY]
    return _filter(a, window, 2)


def _jerk(states: torch.Tensor, which: str, variant: str, dt: float) -> torch.Tensor:
    n = states.shape[-2]
    return _filter(_accel(states, which, variant, 8), 15 if variant == "v2" else n, 2, 1, nc._delta(n, dt))


def _yaw(states: torch.Tensor, deriv: int, poly: int, dt: float) -> torch.Tensor:
    return _filter(phase_unwrap(states[..., S.HEADING]), 5, poly, deriv, nc._delta(states.shape[-2], dt))


def is_comfortable(states: torch.Tensor, variant: str = "v1", dt: float = 0.1) -> torch.Tensor:
    """``(...)`` 1.0 where the six comfort bounds hold at every step of states ``(..., T, 11)``, else 0.0."""
    n = states.shape[-2]
    acc_window = 8 if variant == "v2" else n
    lon = _accel(states, "x", variant, acc_window)
    checks = [
        (lon > nc.MIN_LON_ACCEL) & (lon < nc.MAX_LON_ACCEL),
        _accel(states, "y", variant, acc_window).abs() < nc.MAX_ABS_LAT_ACCEL,
        _jerk(states, "magnitude", variant, dt).abs() < nc.MAX_ABS_MAG_JERK,
        _jerk(states, "x", variant, dt).abs() < nc.MAX_ABS_LON_JERK,
        _yaw(states, 2, 3, dt).abs() < nc.MAX_ABS_YAW_ACCEL,
        _yaw(states, 1, 2, dt).abs() < nc.MAX_ABS_YAW_RATE,
    ]
    return torch.stack([c.all(-1) for c in checks], -1).all(-1).to(states.dtype)


def extended_comfort_features(states: torch.Tensor, dt: float = 0.1) -> torch.Tensor:
    """``(..., 4, T)``: acceleration magnitude, jerk magnitude, yaw rate, yaw acceleration (EPDMS filters)."""
    return torch.stack(
        [_accel(states, "magnitude", "v2", 8), _jerk(states, "magnitude", "v2", dt), _yaw(states, 1, 2, dt),
         _yaw(states, 2, 2, dt)], -2,
    )  # fmt: skip


def two_frame_extended_comfort(
    states_now: torch.Tensor, states_prev: torch.Tensor, frame_interval_s: float = 0.5, dt: float = 0.1
) -> torch.Tensor:
    """EPDMS extended comfort ``(...)`` between plans ``(..., T, 11)`` and the plans made ``frame_interval_s``
    earlier (broadcast), as :func:`rewards.comfort.two_frame_extended_comfort`."""
    shift = int(round(frame_interval_s / dt))
    if shift <= 0 or shift >= states_now.shape[-2]:
        raise ValueError(f"frame interval {frame_interval_s} s leaves no overlap at dt {dt} s")
    prev = states_prev.expand_as(states_now)
    f_now = extended_comfort_features(states_now[..., :-shift, :], dt)
    f_prev = extended_comfort_features(prev[..., shift:, :], dt)
    rms = torch.sqrt(torch.mean((f_now - f_prev) ** 2, dim=-1))
    bounds = torch.tensor([nc.EC_MAX_ACCEL_RMS, nc.EC_MAX_JERK_RMS, nc.EC_MAX_YAW_RATE_RMS, nc.EC_MAX_YAW_ACCEL_RMS],
                          dtype=rms.dtype, device=rms.device)  # fmt: skip
    return (rms <= bounds).all(-1).to(states_now.dtype)
