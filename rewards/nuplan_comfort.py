"""nuPlan's ``ego_is_comfortable`` over a simulated history, on the shared comfort filters of :mod:`rewards.comfort`.

nuPlan's closed-loop comfort uses the same low-level metrics as NAVSIM's EPDMS history comfort
(the ``v2`` filter setting of :mod:`rewards.comfort`): centre-shifted longitudinal acceleration and
lateral acceleration smoothed with Savitzky-Golay window 8 (order 2), jerks differentiated with window
15 (the jerk magnitude from the rear-axle acceleration magnitude), yaw rate (window 5, order 2) and yaw
acceleration (window 5, order 3) of the unwrapped heading. Bounds (strict): lon. acceleration in
(-4.05, 2.40) m/s², |lat. acceleration| < 4.89 m/s², |jerk| < 8.37 m/s³, |lon. jerk| < 4.13 m/s³,
|yaw rate| < 0.95 rad/s, |yaw acceleration| < 1.93 rad/s². Windows are clipped to the series length.
"""

from __future__ import annotations

import numpy as np

from rewards.comfort import COMFORT_CHECKS
from rewards.comfort import comfort_checks as _batched_checks


def _dt(timestamps_us: np.ndarray) -> float:
    return float(np.mean(np.diff(timestamps_us))) * 1e-6 if len(timestamps_us) > 1 else 0.1


def comfort_checks(ego_states: np.ndarray, timestamps_us: np.ndarray) -> dict[str, bool]:
    """Each of the six conditions of ``ego_is_comfortable`` for ego states ``(T, 11)`` (names as ``COMFORT_CHECKS``)."""
    if len(ego_states) < 4:  # too short for the order-3 yaw filter: nothing to judge
        return dict.fromkeys(COMFORT_CHECKS, True)
    checks = _batched_checks(np.asarray(ego_states)[None], "v2", _dt(np.asarray(timestamps_us)))[0]
    return {name: bool(ok) for name, ok in zip(COMFORT_CHECKS, checks)}


def ego_is_comfortable(ego_states: np.ndarray, timestamps_us: np.ndarray) -> float:
    """1 if all six comfort conditions hold over ego states ``(T, 11)``, else 0."""
    return float(all(comfort_checks(ego_states, timestamps_us).values()))
