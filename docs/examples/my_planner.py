"""An example of your own planner: speed up (or slow down) towards a cruise speed, straight ahead.

Any class with a ``name`` and ``plan(observation) -> Trajectory`` is a planner (``simulation.protocols.Planner``);
``diffplan bench`` builds it from a Hydra config whose ``_target_`` names the class. Run it with
(from the repository root; ``PYTHONPATH`` makes ``my_planner`` importable)::

    PYTHONPATH=docs/examples diffplan bench "hydra.searchpath=[file://docs/examples/configs]" planner=cruise

``configs/planner/cruise.yaml`` next to this file is the config; ``planner._target_=my_planner.CruisePlanner``
on the command line works as well.
"""

from __future__ import annotations

import numpy as np

from simulation.protocols import Observation
from simulation.types import StateIndex, Trajectory


class CruisePlanner:
    """Change speed at ``accel_mps2`` until ``cruise_speed_mps``, then hold it; keep the current heading.

    Args:
        cruise_speed_mps: the speed to reach (m/s).
        accel_mps2: magnitude of the acceleration (or deceleration) towards it (m/s^2).
        num_poses, interval_s: the plan's sampling (NAVSIM: 8 poses at 0.5 s).
    """

    name = "cruise"

    def __init__(
        self, cruise_speed_mps: float = 10.0, accel_mps2: float = 1.0, num_poses: int = 8, interval_s: float = 0.5
    ) -> None:
        self.cruise_speed_mps, self.accel_mps2 = cruise_speed_mps, accel_mps2
        self.num_poses, self.interval_s = num_poses, interval_s

    def plan(self, observation: Observation) -> Trajectory:
        """``(8, 3)`` poses (x, y, heading) in the current rear-axle frame: x forward, y = heading = 0."""
        state = observation.current_state  # (11,) columns by StateIndex; velocities in the ego frame
        v0 = float(np.hypot(state[StateIndex.VX], state[StateIndex.VY]))
        t = np.arange(1, self.num_poses + 1) * self.interval_s  # (8,)
        a = np.copysign(self.accel_mps2, self.cruise_speed_mps - v0)
        t_reach = abs(self.cruise_speed_mps - v0) / self.accel_mps2 if self.accel_mps2 > 0 else np.inf
        ramp = np.minimum(t, t_reach)  # time spent changing speed
        x = v0 * ramp + 0.5 * a * ramp**2 + self.cruise_speed_mps * (t - ramp)
        poses = np.stack([x, np.zeros_like(t), np.zeros_like(t)], axis=-1)
        return Trajectory(poses, self.interval_s)
