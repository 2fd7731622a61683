"""PDM-Closed's batch IDM policy (NAVSIM's ``BatchIDMPolicy``): one IDM per speed-limit fraction."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numba
import numpy as np


class IDMState(IntEnum):
    """Columns of an IDM state row."""

    PROGRESS = 0
    VELOCITY = 1


class LeaderIndex(IntEnum):
    """Columns of a leading-agent row: its progress along the path, its speed, the length behind its reference."""

    PROGRESS = 0
    VELOCITY = 1
    LENGTH_REAR = 2


#: NAVSIM's IDM acceleration exponent (fixed in its ``propagate``).
ACCELERATION_EXPONENT = 10


@dataclass(frozen=True)
class BatchIDMPolicy:
    """IDM policies sharing their gains, differing in the fraction of the speed limit they aim for.

    Attributes:
        speed_limit_fractions: ``(P,)`` desired speed = fraction x lane speed limit (or ``fallback_target_velocity``).
        fallback_target_velocity: m/s, when the lane has no speed limit.
        min_gap_to_lead_agent: m. headway_time: s. accel_max, decel_max: m/s^2 (both positive).
    """

    speed_limit_fractions: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    fallback_target_velocity: float = 15.0
    min_gap_to_lead_agent: float = 1.0
    headway_time: float = 1.5
    accel_max: float = 1.5
    decel_max: float = 3.0

    @property
    def num_policies(self) -> int:
        return len(self.speed_limit_fractions)

    def target_velocities(self, speed_limit_mps: float | None) -> np.ndarray:
        """``(P,)`` desired speeds for the current lane's speed limit (``None``: unknown)."""
        base = self.fallback_target_velocity if speed_limit_mps is None else speed_limit_mps
        return np.asarray(self.speed_limit_fractions, dtype=np.float64) * base

    def propagate(self, states: np.ndarray, leaders: np.ndarray, targets: np.ndarray, dt: float) -> np.ndarray:
        """One forward-Euler step of ``K`` IDM states.

        Args:
            states: ``(K, 2)`` :class:`IDMState` rows (progress m, velocity m/s).
            leaders: ``(K, 3)`` :class:`LeaderIndex` rows.
            targets: ``(K,)`` desired speeds.
            dt: step (s).

        Returns:
            ``(K, 2)``: progress + dt v, v + dt a with a = a_max (1 - (v / v0)^10 - (s* / s)^2) clipped to
            ``[-decel_max, accel_max]``, s* = s0 + v T + v (v - v_lead) / (2 sqrt(a_max b)),
            s = max(x_lead - x - l_rear, s0). The velocity is not floored (it may turn negative).
        """
        return _propagate_kernel(
            np.ascontiguousarray(states, dtype=np.float64),
            np.ascontiguousarray(leaders, dtype=np.float64),
            np.ascontiguousarray(targets, dtype=np.float64),
            float(dt),
            float(self.accel_max),
            float(self.decel_max),
            float(self.min_gap_to_lead_agent),
            float(self.headway_time),
        )


@numba.njit(cache=True, error_model="numpy")
def _propagate_kernel(
    states: np.ndarray, leaders: np.ndarray, targets: np.ndarray, dt: float, a: float, b: float, s0: float, hw: float
) -> np.ndarray:
    """:meth:`BatchIDMPolicy.propagate`, row by row (compiled; division by a zero target gives inf / nan)."""
    out = np.empty((len(states), 2))
    root = 2.0 * np.sqrt(a * b)
    for i in range(len(states)):
        x, v = states[i, 0], states[i, 1]
        s_star = s0 + v * hw + v * (v - leaders[i, 1]) / root
        gap = max(leaders[i, 0] - x - leaders[i, 2], s0)
        accel = a * (1.0 - (v / targets[i]) ** ACCELERATION_EXPONENT - (s_star / gap) ** 2)
        accel = min(max(accel, -b), a)
        out[i, 0] = x + dt * v
        out[i, 1] = v + dt * accel
    return out
