"""nuPlan's ``ego_is_comfortable``: Savitzky-Golay filtered accelerations, jerks and yaw dynamics within bounds.

Bounds (strict) and filters, from nuPlan's low-level metric configs:

==================== =========================================== ===============
quantity             signal                                       bound
==================== =========================================== ===============
lon acceleration     SG(window 8, poly 2) of centre acc. x        (-4.05, 2.40)
lat acceleration     SG(window 8, poly 2) of centre acc. y        |.| < 4.89
jerk magnitude       SG derivative (15, 2) of filtered |a|         |.| < 8.37
lon jerk             SG derivative (15, 2) of filtered lon acc.    |.| < 4.13
yaw rate             SG derivative (5, 2) of unwrapped heading     |.| < 0.95
yaw acceleration     SG 2nd derivative (5, 3) of unwrapped heading |.| < 1.93
==================== =========================================== ===============

Windows are clipped to the series length (and kept above the polynomial order).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import savgol_filter

from simulation.types import PACIFICA, StateIndex

MIN_LON_ACCEL = -4.05
MAX_LON_ACCEL = 2.40
MAX_ABS_LAT_ACCEL = 4.89
MAX_ABS_JERK = 8.37
MAX_ABS_LON_JERK = 4.13
MAX_ABS_YAW_RATE = 0.95
MAX_ABS_YAW_ACCEL = 1.93


def _savgol(y: np.ndarray, window: int, poly: int, deriv: int = 0, delta: float = 1.0) -> np.ndarray:
    window = min(window, len(y))
    if window <= poly:
        return np.zeros_like(y) if deriv else y.copy()
    return savgol_filter(y, window_length=window, polyorder=poly, deriv=deriv, delta=delta)


def comfort_signals(ego_states: np.ndarray, timestamps_us: np.ndarray) -> dict[str, np.ndarray]:
    """The six filtered signals ``(T,)`` of ego states ``(T, 11)``, keyed by quantity."""
    dt = float(np.mean(np.diff(timestamps_us))) * 1e-6 if len(timestamps_us) > 1 else 0.1
    d = PACIFICA.rear_axle_to_center
    yaw_rate, yaw_acc = ego_states[:, StateIndex.YAW_RATE], ego_states[:, StateIndex.YAW_ACCEL]
    ax = ego_states[:, StateIndex.AX] + d * yaw_rate**2 + d * yaw_acc
    ay = ego_states[:, StateIndex.AY]
    lon = _savgol(ax, 8, 2)
    lat = _savgol(ay, 8, 2)
    magnitude = _savgol(np.hypot(ego_states[:, StateIndex.AX], ego_states[:, StateIndex.AY]), 8, 2)
    heading = np.unwrap(ego_states[:, StateIndex.HEADING])
    return {
        "lon_acceleration": lon,
        "lat_acceleration": lat,
        "jerk": _savgol(magnitude, 15, 2, deriv=1, delta=dt),
        "lon_jerk": _savgol(lon, 15, 2, deriv=1, delta=dt),
        "yaw_rate": _savgol(heading, 5, 2, deriv=1, delta=dt),
        "yaw_acceleration": _savgol(heading, 5, 3, deriv=2, delta=dt),
    }


def comfort_checks(ego_states: np.ndarray, timestamps_us: np.ndarray) -> dict[str, bool]:
    """Each of the six conditions of ``ego_is_comfortable``."""
    s = comfort_signals(ego_states, timestamps_us)
    return {
        "lon_acceleration": bool(
            np.all((s["lon_acceleration"] > MIN_LON_ACCEL) & (s["lon_acceleration"] < MAX_LON_ACCEL))
        ),
        "lat_acceleration": bool(np.all(np.abs(s["lat_acceleration"]) < MAX_ABS_LAT_ACCEL)),
        "jerk": bool(np.all(np.abs(s["jerk"]) < MAX_ABS_JERK)),
        "lon_jerk": bool(np.all(np.abs(s["lon_jerk"]) < MAX_ABS_LON_JERK)),
        "yaw_rate": bool(np.all(np.abs(s["yaw_rate"]) < MAX_ABS_YAW_RATE)),
        "yaw_acceleration": bool(np.all(np.abs(s["yaw_acceleration"]) < MAX_ABS_YAW_ACCEL)),
    }


def ego_is_comfortable(ego_states: np.ndarray, timestamps_us: np.ndarray) -> float:
    """1 if all six comfort conditions hold over ego states ``(T, 11)``, else 0."""
    return float(all(comfort_checks(ego_states, timestamps_us).values()))
