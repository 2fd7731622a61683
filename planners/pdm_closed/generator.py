"""PDM-Closed's proposals (NAVSIM's ``PDMGenerator``): IDM unrolled along each path at 10 Hz.

Per path (the centre line first, then its lateral offsets) and per step ``k = 1 ..``:

1. the leading obstacle of step ``k`` is searched only on even ``k`` (odd steps copy the row of ``k - 1``; the row
   of step 0 is all zeros, so step 1 sees a leader at progress 0 and every moving proposal brakes once);
2. the search: obstacles of the observation at step ``k`` (forecast every 0.2 s) meeting the driving corridor
   (the path from the start progress over ``max target speed x trajectory horizon``, buffered by half the ego width
   with square caps), not collided, whose centroid projects ahead of the ego's progress at ``k - 1``; the nearest
   by polygon distance to the ego footprint at ``k - 1`` is the leader at progress ``ego progress + distance``, with
   its speed projected on the ego heading (``|v| cos(heading difference)``, may be negative; 0 for static objects
   and red connectors); with none, the path end is a leader at 0 m/s with half the ego length behind it;
3. :meth:`BatchIDMPolicy.propagate` over 0.1 s, then the pose at the new progress along the path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon

from planners.pdm_closed.idm_policy import BatchIDMPolicy, IDMState, LeaderIndex
from planners.pdm_closed.observation import PDMObservation, ego_footprint
from planners.pdm_closed.path import ProposalPath
from simulation.types import PACIFICA, VehicleParameters


@dataclass
class PathRollout:
    """The unrolled proposals of one path: ``poses (P, T + 1, 3)``, ``idm (P, T + 1, 2)``, ``leaders (P, T + 1, 3)``
    (global poses, IDM states, leader rows per step; step 0 = the ego projected on the path)."""

    path: ProposalPath
    targets: np.ndarray
    corridor: Polygon
    poses: np.ndarray
    idm: np.ndarray
    leaders: np.ndarray


class ProposalGenerator:
    """Unrolls :class:`BatchIDMPolicy` along paths against a :class:`PDMObservation`.

    Args:
        policy: the IDM policies (one proposal per policy and path).
        trajectory_steps: steps of the final trajectory (NAVSIM: 50 at 0.1 s); sets the corridor length.
        dt: step (s).
    """

    def __init__(
        self, policy: BatchIDMPolicy, trajectory_steps: int = 50, dt: float = 0.1, vehicle: VehicleParameters = PACIFICA
    ) -> None:
        self.policy, self.trajectory_steps, self.dt, self.vehicle = policy, trajectory_steps, dt, vehicle

    def start(self, path: ProposalPath, state: np.ndarray, targets: np.ndarray, steps: int) -> PathRollout:
        """Step 0 of the proposals of ``path`` for the ego ``state`` ``(11,)``, room for ``steps`` steps."""
        num = len(targets)
        progress = float(path.project(np.asarray(state[:2])[None])[0])
        idm = np.zeros((num, steps + 1, 2))
        idm[:, 0] = (progress, float(state[3]))  # rear-axle longitudinal velocity (may be negative)
        poses = np.zeros((num, steps + 1, 3))
        poses[:, 0] = path.interpolate(np.array([progress]))[0]
        end = progress + abs(float(np.max(targets))) * self.trajectory_steps * self.dt
        corridor = path.substring(progress, end).buffer(self.vehicle.width / 2.0, cap_style="square")
        shapely.prepare(corridor)
        return PathRollout(path, targets, corridor, poses, idm, np.zeros((num, steps + 1, 3)))

    def unroll(self, roll: PathRollout, obs: PDMObservation, rows: np.ndarray, first: int, last: int) -> None:
        """Steps ``first .. last`` (inclusive) of the proposals ``rows`` of ``roll``, in place."""
        for k in range(first, last + 1):
            if k % 2 == 0:
                roll.leaders[rows, k] = self._leaders(roll, obs, rows, k)
            else:
                roll.leaders[rows, k] = roll.leaders[rows, k - 1]
            roll.idm[rows, k] = self.policy.propagate(roll.idm[rows, k - 1], roll.leaders[rows, k], roll.targets[rows],
                                                      self.dt)  # fmt: skip
            roll.poses[rows, k] = roll.path.interpolate(roll.idm[rows, k, IDMState.PROGRESS])

    def _leaders(self, roll: PathRollout, obs: PDMObservation, rows: np.ndarray, k: int) -> np.ndarray:
        """``(len(rows), 3)`` leader rows of step ``k``.

        As in NAVSIM, one row buffer is carried from proposal to proposal of the path and only the fields of the
        case at hand are written: a free proposal keeps the speed written for an earlier one, a proposal behind
        a red connector keeps an earlier speed, one behind an obstacle keeps an earlier rear length.
        """
        polys = obs.polygons(k)
        out = np.zeros((len(rows), 3))
        out[:, LeaderIndex.PROGRESS] = roll.path.length
        out[:, LeaderIndex.LENGTH_REAR] = self.vehicle.length / 2.0
        if len(polys) == 0:
            return out
        hit = np.flatnonzero(np.asarray(shapely.intersects(roll.corridor, polys)) & ~obs.collided)
        if len(hit) == 0:
            return out
        ego_progress = roll.idm[rows, k - 1, IDMState.PROGRESS]
        ahead = roll.path.project(shapely.get_coordinates(shapely.centroid(polys[hit])))[None] > ego_progress[:, None]
        if not ahead.any():
            return out
        poses = roll.poses[rows, k - 1]
        dist = np.asarray(shapely.distance(ego_footprint(poses, self.vehicle)[:, None], polys[hit][None]), np.float64)
        nearest = np.argmin(np.where(ahead, dist, np.inf), axis=1)
        index = hit[nearest]
        speed = obs.speed_along(index, poses[:, 2])
        row = np.zeros(3)
        for i in range(len(rows)):
            if ahead[i].any():
                row[LeaderIndex.PROGRESS] = ego_progress[i] + dist[i, nearest[i]]
                if index[i] < obs.num_agents:  # not a red connector
                    row[LeaderIndex.VELOCITY] = speed[i]
            else:
                row[LeaderIndex.PROGRESS] = roll.path.length
                row[LeaderIndex.LENGTH_REAR] = self.vehicle.length / 2.0
            out[i] = row
        return out
