"""The previous PDM-Closed proposal stepping, kept as the speed baseline of ``bench_closed_loop.py``: each path
unrolled on its own, step by step, with a corridor test, a centroid projection, a footprint, a distance and a leader
loop per path and search step (the numbers are the same as :class:`planners.pdm_closed.generator.ProposalGenerator`'s).
"""

from __future__ import annotations

import numpy as np
import shapely

from planners.pdm_closed.generator import PathRollout, ProposalGenerator
from planners.pdm_closed.idm_policy import IDMState, LeaderIndex
from planners.pdm_closed.observation import PDMObservation
from simulation.geometry import agent_box_corners, rear_axle_to_center
from simulation.types import PACIFICA, VehicleParameters


def _footprint(poses: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """The previous ego footprint: the centre boxes packed as agent boxes, then their corners."""
    center = rear_axle_to_center(poses, vehicle)
    length = np.full(center.shape[:-1], vehicle.length)
    width = np.full(center.shape[:-1], vehicle.width)
    boxes = np.stack([center[..., 0], center[..., 1], center[..., 2], 0 * length, 0 * length, length, width], -1)
    return np.asarray(shapely.polygons(agent_box_corners(boxes)))


class PathByPathGenerator(ProposalGenerator):
    """:class:`ProposalGenerator` stepping one path after the other (the previous implementation)."""

    def unroll_paths(
        self, rolls: list[PathRollout], obs: PDMObservation, rows: list[np.ndarray], first: int, last: int
    ) -> None:
        for roll, r in zip(rolls, rows, strict=True):
            for k in range(first, last + 1):
                if k % 2 == 0:
                    roll.leaders[r, k] = self._step_leaders(roll, obs, r, k)
                else:
                    roll.leaders[r, k] = roll.leaders[r, k - 1]
                roll.idm[r, k] = self.policy.propagate(roll.idm[r, k - 1], roll.leaders[r, k], roll.targets[r], self.dt)
                roll.poses[r, k] = roll.path.interpolate(roll.idm[r, k, IDMState.PROGRESS])

    def _step_leaders(self, roll: PathRollout, obs: PDMObservation, rows: np.ndarray, k: int) -> np.ndarray:
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
        dist = np.asarray(shapely.distance(_footprint(poses, self.vehicle)[:, None], polys[hit][None]), np.float64)
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
