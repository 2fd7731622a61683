"""NAVSIM's comfort checks (PDMS comfort, EPDMS history comfort and two-frame extended comfort).

Signals are smoothed / differentiated with Savitzky-Golay filters (scipy ``savgol_filter``, mode
``interp``). The filter is linear, so each configuration is applied as one ``(T, T)`` matrix to all
candidates at once; values are rounded to 8 decimals before the strict bound checks, as in NAVSIM.

Two filter settings exist (specs/navsim.md §1.7, §2.2):

* ``v1`` (PDMS, NAVSIM v1.1): accelerations at the rear axle smoothed over the whole horizon; jerks from
  accelerations smoothed with window 8, differentiated with a window over the whole horizon.
* ``v2`` (EPDMS): longitudinal / lateral accelerations shifted to the vehicle centre, smoothed with window
  8; jerks differentiated with window 15; the jerk magnitude still uses the rear-axle accelerations.

Yaw rate (order 2) and yaw acceleration (order 3) use window 5 in both.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from scipy.signal import savgol_filter

from simulation.types import PACIFICA, StateIndex, VehicleParameters

#: nuPlan comfort bounds (strict): lon. accel (min, max), |lat. accel|, |jerk|, |lon. jerk|, |yaw rate|, |yaw accel|.
MIN_LON_ACCEL = -4.05  # m/s^2
MAX_LON_ACCEL = 2.40  # m/s^2
MAX_ABS_LAT_ACCEL = 4.89  # m/s^2
MAX_ABS_MAG_JERK = 8.37  # m/s^3
MAX_ABS_LON_JERK = 4.13  # m/s^3
MAX_ABS_YAW_RATE = 0.95  # rad/s
MAX_ABS_YAW_ACCEL = 1.93  # rad/s^2

#: Extended comfort: RMS bounds (inclusive) on the difference between two consecutive plans.
EC_MAX_ACCEL_RMS = 0.7  # m/s^2
EC_MAX_JERK_RMS = 0.5  # m/s^3
EC_MAX_YAW_RATE_RMS = 0.1  # rad/s
EC_MAX_YAW_ACCEL_RMS = 0.1  # rad/s^2

#: Names of the six checks, in the order of :func:`comfort_checks`' last axis.
COMFORT_CHECKS = ("lon_accel", "lat_accel", "jerk", "lon_jerk", "yaw_accel", "yaw_rate")

_DECIMALS = 8
Variant = Literal["v1", "v2"]


@lru_cache(maxsize=64)
def savgol_matrix(n: int, window: int, poly: int, deriv: int = 0, delta: float = 1.0) -> np.ndarray:
    """``(n, n)`` matrix ``F`` with ``savgol_filter(y, ...) == F @ y`` along time (window clipped to ``n``)."""
    window = min(window, n)
    if poly >= window:
        raise ValueError(f"Savitzky-Golay polynomial order {poly} needs a window > {poly}, got {window}")
    mat = savgol_filter(np.eye(n), window_length=window, polyorder=poly, deriv=deriv, delta=delta, axis=0)
    mat.setflags(write=False)
    return mat


def _filter(y: np.ndarray, window: int, poly: int, deriv: int = 0, delta: float = 1.0) -> np.ndarray:
    """Apply the Savitzky-Golay filter to ``y`` ``(..., T)`` along its last axis."""
    return y @ savgol_matrix(y.shape[-1], window, poly, deriv, delta).T


def phase_unwrap(headings: np.ndarray) -> np.ndarray:
    """Headings ``(..., T)`` shifted by multiples of 2 pi so successive steps differ by at most pi."""
    adjust = np.zeros_like(headings)
    adjust[..., 1:] = np.cumsum(np.round(np.diff(headings, axis=-1) / (2.0 * np.pi)), axis=-1)
    return headings - 2.0 * np.pi * adjust


def center_acceleration_x(states: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """Longitudinal acceleration ``(..., T)`` moved from the rear axle to the centre (nuPlan's rigid-body shift:
    ``a_x + d (omega^2 + alpha)``; the lateral component is unchanged because the shift is purely longitudinal)."""
    d = vehicle.rear_axle_to_center
    omega, alpha = states[..., StateIndex.YAW_RATE], states[..., StateIndex.YAW_ACCEL]
    return states[..., StateIndex.AX] + d * omega**2 + d * alpha


def _accel(states: np.ndarray, which: str, variant: Variant, window: int) -> np.ndarray:
    if which == "magnitude":
        a = np.hypot(states[..., StateIndex.AX], states[..., StateIndex.AY])
    elif which == "x":
        a = center_acceleration_x(states) if variant == "v2" else states[..., StateIndex.AX]
    else:
        a = states[..., StateIndex.AY]
    return np.round(_filter(a, window, 2), _DECIMALS)


def _delta(n: int, dt: float) -> float:
    """Mean spacing of the time stamps ``arange(n) * dt``, as the reference derives the filter's ``delta``."""
    return float(np.diff(np.arange(n, dtype=np.float64) * dt).mean())


def _jerk(states: np.ndarray, which: str, variant: Variant, dt: float) -> np.ndarray:
    n = states.shape[-2]
    accel = _accel(states, which, variant, 8)
    return np.round(_filter(accel, 15 if variant == "v2" else n, 2, 1, _delta(n, dt)), _DECIMALS)


def _yaw_derivative(states: np.ndarray, deriv: int, poly: int, dt: float) -> np.ndarray:
    heading = phase_unwrap(states[..., StateIndex.HEADING])
    return np.round(_filter(heading, 5, poly, deriv, _delta(states.shape[-2], dt)), _DECIMALS)


def comfort_signals(states: np.ndarray, variant: Variant = "v1", dt: float = 0.1) -> dict[str, np.ndarray]:
    """The six filtered signals ``(K, T)`` of :data:`COMFORT_CHECKS` for states ``(K, T, 11)``."""
    n = states.shape[-2]
    acc_window = 8 if variant == "v2" else n
    return {
        "lon_accel": _accel(states, "x", variant, acc_window),
        "lat_accel": _accel(states, "y", variant, acc_window),
        "jerk": _jerk(states, "magnitude", variant, dt),
        "lon_jerk": _jerk(states, "x", variant, dt),
        "yaw_accel": _yaw_derivative(states, 2, 3, dt),
        "yaw_rate": _yaw_derivative(states, 1, 2, dt),
    }


def comfort_checks(states: np.ndarray, variant: Variant = "v1", dt: float = 0.1) -> np.ndarray:
    """``(K, 6)`` bool: each comfort bound of :data:`COMFORT_CHECKS` holds at every step of states ``(K, T, 11)``."""
    s = comfort_signals(states, variant, dt)
    checks = [
        (s["lon_accel"] > MIN_LON_ACCEL) & (s["lon_accel"] < MAX_LON_ACCEL),
        np.abs(s["lat_accel"]) < MAX_ABS_LAT_ACCEL,
        np.abs(s["jerk"]) < MAX_ABS_MAG_JERK,
        np.abs(s["lon_jerk"]) < MAX_ABS_LON_JERK,
        np.abs(s["yaw_accel"]) < MAX_ABS_YAW_ACCEL,
        np.abs(s["yaw_rate"]) < MAX_ABS_YAW_RATE,
    ]
    return np.stack([c.all(-1) for c in checks], -1)


def is_comfortable(states: np.ndarray, variant: Variant = "v1", dt: float = 0.1) -> np.ndarray:
    """``(K,)`` float 1.0 where all six comfort bounds hold for states ``(K, T, 11)``, else 0.0."""
    return np.asarray(comfort_checks(states, variant, dt).all(-1), dtype=np.float64)


def extended_comfort_features(states: np.ndarray, dt: float = 0.1) -> np.ndarray:
    """``(K, 4, T)``: acceleration magnitude, jerk magnitude, yaw rate, yaw acceleration (EPDMS filters)."""
    return np.stack(
        [
            _accel(states, "magnitude", "v2", 8),
            _jerk(states, "magnitude", "v2", dt),
            _yaw_derivative(states, 1, 2, dt),
            _yaw_derivative(states, 2, 2, dt),
        ],
        1,
    )


def two_frame_extended_comfort(
    states_now: np.ndarray, states_prev: np.ndarray, frame_interval_s: float = 0.5, dt: float = 0.1
) -> np.ndarray:
    """EPDMS extended comfort ``(K,)`` between each plan made now and the plan made ``frame_interval_s`` earlier.

    Args:
        states_now: ``(K, T, 11)`` simulated states of the current plans (start at the current time).
        states_prev: ``(K, T, 11)`` (or ``(T, 11)``) simulated states of the previous frame's plans.
        frame_interval_s: time between the two frames; the overlap drops ``round(interval / dt)`` steps.
    """
    shift = int(round(frame_interval_s / dt))
    if shift <= 0 or shift >= states_now.shape[-2]:
        raise ValueError(f"frame interval {frame_interval_s} s leaves no overlap at dt {dt} s")
    prev = np.broadcast_to(states_prev, states_now.shape)
    f_now = extended_comfort_features(states_now[:, :-shift], dt)
    f_prev = extended_comfort_features(prev[:, shift:], dt)
    rms = np.sqrt(np.mean((f_now - f_prev) ** 2, axis=-1))  # (K, 4)
    bounds = np.array([EC_MAX_ACCEL_RMS, EC_MAX_JERK_RMS, EC_MAX_YAW_RATE_RMS, EC_MAX_YAW_ACCEL_RMS])
    return (rms <= bounds).all(-1).astype(np.float64)
