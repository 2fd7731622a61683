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

from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import Polygon

from planners.pdm_closed.idm_policy import BatchIDMPolicy, IDMState, LeaderIndex
from planners.pdm_closed.observation import PDMObservation, ego_footprint
from planners.pdm_closed.path import PathStack, ProposalPath
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
    #: per leader-search step ``k``: the obstacles meeting the corridor and not collided ``(H,)`` and the arc length
    #: of their centroids on the path ``(H,)`` (they depend on ``k`` only, so they are found for all steps at once)
    candidates: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


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
        self.unroll_paths([roll], obs, [rows], first, last)

    def unroll_paths(
        self, rolls: list[PathRollout], obs: PDMObservation, rows: list[np.ndarray], first: int, last: int
    ) -> None:
        """Steps ``first .. last`` (inclusive) of the proposals ``rows[p]`` of each path rollout ``rolls[p]``, in
        place. The paths are independent; they are stepped together on stacked ``(R, .)`` arrays (one footprint,
        distance and IDM call per step) and written back at the end."""
        searches = [k for k in range(first, last + 1) if k % 2 == 0]
        for roll in rolls:
            self._find_candidates(roll, obs, searches)
        pairs = list(zip(rolls, rows, strict=True))
        bounds = np.cumsum([0] + [len(r) for r in rows])
        targets = np.concatenate([roll.targets[r] for roll, r in pairs])
        idm = np.concatenate([roll.idm[r, first - 1] for roll, r in pairs])
        lead = np.concatenate([roll.leaders[r, first - 1] for roll, r in pairs])
        pose = np.concatenate([roll.poses[r, first - 1] for roll, r in pairs])
        n = last - first + 1
        out_idm, out_lead, out_pose = np.empty((n, len(idm), 2)), np.empty((n, len(idm), 3)), np.empty((n, len(idm), 3))
        stack = PathStack([roll.path for roll in rolls])
        for j, k in enumerate(range(first, last + 1)):
            if k % 2 == 0:
                lead = self._leaders_paths(rolls, obs, bounds, k, idm[:, IDMState.PROGRESS], pose)
            idm = self.policy.propagate(idm, lead, targets, self.dt)
            pose = stack.interpolate(idm[:, IDMState.PROGRESS], bounds)
            out_idm[j], out_lead[j], out_pose[j] = idm, lead, pose
        for p, (roll, r) in enumerate(pairs):
            block = slice(bounds[p], bounds[p + 1])
            roll.idm[r, first : last + 1] = out_idm[:, block].swapaxes(0, 1)
            roll.leaders[r, first : last + 1] = out_lead[:, block].swapaxes(0, 1)
            roll.poses[r, first : last + 1] = out_pose[:, block].swapaxes(0, 1)

    def _find_candidates(self, roll: PathRollout, obs: PDMObservation, steps: list[int]) -> None:
        """:attr:`PathRollout.candidates` of the leader-search ``steps`` not found yet: one corridor test over the
        obstacles of all of them and one projection of the centroids that pass."""
        steps = [k for k in steps if k not in roll.candidates]
        width = len(obs.polygons(0)) if steps else 0
        if width == 0:
            roll.candidates.update({k: (np.zeros(0, np.int64), np.zeros(0)) for k in steps})
            return
        polys = np.stack([obs.polygons(k) for k in steps])  # (K, N)
        meets = np.asarray(shapely.intersects(roll.corridor, polys), dtype=bool) & ~obs.collided[None]
        step_of, index = np.nonzero(meets)
        centroids = shapely.get_coordinates(shapely.centroid(polys[step_of, index]))
        progress = roll.path.project(centroids) if len(index) else np.zeros(0)
        bounds = np.searchsorted(step_of, np.arange(len(steps) + 1))
        for j, k in enumerate(steps):
            roll.candidates[k] = (index[bounds[j] : bounds[j + 1]], progress[bounds[j] : bounds[j + 1]])

    def _leaders_paths(
        self, rolls: list[PathRollout], obs: PDMObservation, bounds: np.ndarray, k: int, progress: np.ndarray,
        poses: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        """``(R, 3)`` leader rows of step ``k`` of the stacked proposals (path ``p``: rows ``bounds[p] ..
        bounds[p + 1]``) at ``progress`` ``(R,)`` and ``poses`` ``(R, 3)`` of step ``k - 1``.

        Per proposal, the candidate obstacles of its path (:meth:`_find_candidates`) whose centroid lies ahead of
        its progress; the nearest by distance to its footprint (first on ties) leads. The footprints of the
        proposals with an obstacle ahead, their distances to the obstacles any path meets and the leaders' speeds
        are computed in one call each; :func:`_leader_rows` writes the rows.
        """
        out = np.zeros((len(progress), 3))
        out[:, LeaderIndex.PROGRESS] = np.repeat([roll.path.length for roll in rolls], np.diff(bounds))
        out[:, LeaderIndex.LENGTH_REAR] = self.vehicle.length / 2.0
        ahead: dict[int, np.ndarray] = {}
        for p, roll in enumerate(rolls):
            hit, hit_progress = roll.candidates[k]
            if len(hit):
                a = hit_progress[None] > progress[bounds[p] : bounds[p + 1], None]
                if a.any():
                    ahead[p] = a
        if not ahead:
            return out
        union = np.unique(np.concatenate([rolls[p].candidates[k][0] for p in ahead]))
        sel = np.concatenate([np.arange(bounds[p], bounds[p + 1]) for p in ahead])
        table = np.asarray(shapely.distance(ego_footprint(poses[sel], self.vehicle)[:, None],
                                            obs.polygons(k)[union][None]), np.float64)  # fmt: skip
        start, found = 0, {}
        for p, a in ahead.items():
            dist = table[start : start + len(a)][:, np.searchsorted(union, rolls[p].candidates[k][0])]
            nearest = np.argmin(np.where(a, dist, np.inf), axis=1)
            found[p] = (dist[np.arange(len(a)), nearest], rolls[p].candidates[k][0][nearest])
            start += len(a)
        speed = obs.speed_along(np.concatenate([f[1] for f in found.values()]), poses[sel, 2])
        start, rear = 0, self.vehicle.length / 2.0
        for p, a in ahead.items():
            block = slice(bounds[p], bounds[p + 1])
            gap, index = found[p]
            has = np.asarray(np.any(a, axis=1), dtype=bool)
            out[block] = _leader_rows(has, progress[block] + gap, index < obs.num_agents,
                                      speed[start : start + len(a)], rolls[p].path.length, rear)  # fmt: skip
            start += len(a)
        return out


def _leader_rows(
    has: np.ndarray, lead_progress: np.ndarray, is_agent: np.ndarray, speed: np.ndarray, length: float, rear: float
) -> np.ndarray:
    """``(P, 3)`` leader rows of the ``P`` proposals of one path, in order, with NAVSIM's one row buffer carried
    from proposal to proposal and only the fields of the case at hand written: a proposal with an obstacle ahead
    (``has``) writes its progress ``lead_progress`` and, for an agent, its ``speed``; one without writes the path
    ``length`` and the ``rear`` length. So a free proposal keeps the speed written for an earlier one, a proposal
    behind a red connector keeps an earlier speed, one behind an obstacle keeps an earlier rear length (0 at first).
    """
    count = np.arange(len(has))
    out = np.zeros((len(has), 3))
    out[:, LeaderIndex.PROGRESS] = np.where(has, lead_progress, length)
    wrote_speed = np.maximum.accumulate(np.where(has & is_agent, count, -1))
    out[:, LeaderIndex.VELOCITY] = np.where(wrote_speed >= 0, speed[np.maximum(wrote_speed, 0)], 0.0)
    wrote_rear = np.maximum.accumulate(np.where(~has, count, -1)) >= 0
    out[:, LeaderIndex.LENGTH_REAR] = np.where(wrote_rear, rear, 0.0)
    return out
