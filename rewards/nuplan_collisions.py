"""nuPlan's collision and time-to-collision metrics, vectorised over frames and tracks.

``no_ego_at_fault_collisions``: a collision is an overlap of the ego footprint with a track box; each
track counts once, at its first overlapping frame. The collision type is decided in nuPlan's order
(stopped ego, stopped track, active rear, active front, active lateral) and the at-fault rule keeps
ACTIVE_FRONT, STOPPED_TRACK, and ACTIVE_LATERAL when the ego is not within common or connected lane
objects. ``time_to_collision_within_bound`` projects ego and tracks at constant velocity in 0.1 s
steps up to 3 s and requires TTC > 0.95 s at every frame (TTC is 0 at at-fault collision frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from simulation.geometry import agent_box_corners, box_corners, boxes_overlap, ego_box_corners, rear_axle_to_center
from simulation.types import PACIFICA, AgentIndex, StateIndex, TrackedObjectType

STOPPED_SPEED_THRESHOLD = 5e-2
REAR_ANGLE_RAD = np.deg2rad(150.0)
AHEAD_ANGLE_RAD = np.deg2rad(30.0)
TTC_STEP_S = 0.1
TTC_HORIZON_S = 3.0
LEAST_MIN_TTC_S = 0.95
TTC_MIN_EGO_SPEED = 5e-3

STATIC_TYPES = (
    TrackedObjectType.TRAFFIC_CONE,
    TrackedObjectType.BARRIER,
    TrackedObjectType.CZONE_SIGN,
    TrackedObjectType.GENERIC_OBJECT,
)
VRU_TYPES = (TrackedObjectType.PEDESTRIAN, TrackedObjectType.BICYCLE)
#: Allowed at-fault collisions per category before the score drops to 0 (nuPlan thresholds).
CATEGORY_THRESHOLDS = {"vru": 0, "vehicle": 0, "object": 1}


class CollisionType(IntEnum):
    """nuPlan's ``CollisionType``."""

    STOPPED_EGO = 0
    STOPPED_TRACK = 1
    ACTIVE_FRONT = 2
    ACTIVE_REAR = 3
    ACTIVE_LATERAL = 4


@dataclass(frozen=True)
class CollisionResult:
    """Collisions of one rollout.

    Attributes:
        first_collision_frame: ``(N,)`` first frame each track overlaps the ego, -1 if never.
        collision_type: ``(N,)`` :class:`CollisionType` at that frame, -1 if never.
        at_fault: ``(N,)`` bool.
        at_fault_frames: ``(T,)`` bool, frames with at least one at-fault collision.
        score: nuPlan's ``no_ego_at_fault_collisions`` (1, 0.5 or 0).
    """

    first_collision_frame: np.ndarray
    collision_type: np.ndarray
    at_fault: np.ndarray
    at_fault_frames: np.ndarray
    score: float


def _relative_angle(ego_poses: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``|angle|`` between the ego heading and the direction rear axle -> point (broadcast)."""
    d = points - ego_poses[..., :2]
    ang = np.arctan2(d[..., 1], d[..., 0]) - ego_poses[..., 2]
    return np.abs((ang + np.pi) % (2 * np.pi) - np.pi)


def classify_collisions(ego_states: np.ndarray, tracks: np.ndarray, track_static: np.ndarray) -> np.ndarray:
    """Collision types ``(K,)`` for ``K`` (ego state ``(K, 11)``, track box ``(K, 7)``) pairs that overlap."""
    ego_speed = np.hypot(ego_states[:, StateIndex.VX], ego_states[:, StateIndex.VY])
    track_speed = np.hypot(tracks[:, AgentIndex.VX], tracks[:, AgentIndex.VY])
    rear = _relative_angle(ego_states[:, :3], tracks[:, :2]) > REAR_ANGLE_RAD
    ego_corners = ego_box_corners(ego_states[:, :3])
    bumper = ego_corners[:, [0, 0, 3, 3]]  # degenerate rectangle = the FL-FR segment
    front = boxes_overlap(bumper, agent_box_corners(tracks))
    out = np.full(len(tracks), CollisionType.ACTIVE_LATERAL, dtype=np.int64)
    out[front] = CollisionType.ACTIVE_FRONT
    out[rear] = CollisionType.ACTIVE_REAR
    out[(track_speed <= STOPPED_SPEED_THRESHOLD) | track_static] = CollisionType.STOPPED_TRACK
    out[ego_speed <= STOPPED_SPEED_THRESHOLD] = CollisionType.STOPPED_EGO
    return out


def _category_score(types: np.ndarray, at_fault: np.ndarray) -> float:
    categories = {
        "vru": np.isin(types, VRU_TYPES),
        "vehicle": types == TrackedObjectType.VEHICLE,
        "object": np.isin(types, STATIC_TYPES),
    }
    score = 1.0
    for name, mask in categories.items():
        n = int((at_fault & mask).sum())
        score *= max(0.0, 1.0 - n / (CATEGORY_THRESHOLDS[name] + 1))
    return score


def at_fault_collisions(
    ego_states: np.ndarray, boxes: np.ndarray, types: np.ndarray, valid: np.ndarray, in_route: np.ndarray
) -> CollisionResult:
    """Collisions of ego states ``(T, 11)`` with tracks ``(T, N, 7)``/``valid (T, N)``; ``in_route (T,)`` bool."""
    t_len, n = valid.shape
    first = np.full(n, -1, dtype=np.int64)
    ctype = np.full(n, -1, dtype=np.int64)
    at_fault = np.zeros(n, dtype=bool)
    frames = np.zeros(t_len, dtype=bool)
    if n == 0:
        return CollisionResult(first, ctype, at_fault, frames, 1.0)
    overlap = boxes_overlap(ego_box_corners(ego_states[:, :3])[:, None], agent_box_corners(boxes)) & valid
    hit = overlap.any(0)
    tracks = np.flatnonzero(hit)
    first[tracks] = overlap[:, tracks].argmax(0)
    static = np.isin(types, STATIC_TYPES)
    ctype[tracks] = classify_collisions(ego_states[first[tracks]], boxes[first[tracks], tracks], static[tracks])
    lateral_fault = (ctype == CollisionType.ACTIVE_LATERAL) & ~in_route[np.maximum(first, 0)]
    at_fault = hit & ((ctype == CollisionType.ACTIVE_FRONT) | (ctype == CollisionType.STOPPED_TRACK) | lateral_fault)
    frames[first[at_fault]] = True
    return CollisionResult(first, ctype, at_fault, frames, _category_score(types, at_fault))


@dataclass(frozen=True)
class TTCResult:
    """``ttc``: ``(T,)`` seconds (inf when nothing is hit); ``score``: 1 if every frame has TTC > 0.95 s."""

    ttc: np.ndarray
    score: float


def _moved_corners(poses: np.ndarray, speed: np.ndarray, size: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Corners ``(K, S, 4, 2)`` of boxes (centre poses ``(K, 3)``, ``size`` ``(K, 2)`` length / width) moved
    ``speed * shift`` ``(K,) x (S,)`` metres along their heading."""
    move = speed[:, None] * shift[None]
    c, s = np.cos(poses[:, 2])[:, None], np.sin(poses[:, 2])[:, None]
    ones = np.ones_like(move)
    return box_corners(
        poses[:, None, 0] + c * move,
        poses[:, None, 1] + s * move,
        poses[:, None, 2] * ones,
        size[:, None, 0] * ones,
        size[:, None, 1] * ones,
    )


def _swept_overlap(
    ego: np.ndarray, ego_v: np.ndarray, trk: np.ndarray, trk_v: np.ndarray, horizon: float
) -> np.ndarray:
    """nuPlan's pre-filter: boxes elongated by their travel over ``horizon`` overlap, ``(K,)`` bool."""

    def elongated(poses: np.ndarray, v: np.ndarray, size: np.ndarray) -> np.ndarray:
        grown = np.stack([size[:, 0] + v * horizon, size[:, 1]], -1)
        return _moved_corners(poses, v, grown, np.array([horizon / 2.0]))[:, 0]

    ego_size = np.tile([PACIFICA.length, PACIFICA.width], (len(ego), 1))
    trk_size = trk[:, [AgentIndex.LENGTH, AgentIndex.WIDTH]]
    return boxes_overlap(elongated(ego, ego_v, ego_size), elongated(trk[:, :3], trk_v, trk_size))


def time_to_collision(
    ego_states: np.ndarray,
    boxes: np.ndarray,
    valid: np.ndarray,
    first_collision_frame: np.ndarray,
    at_fault_frames: np.ndarray,
    wide_search: np.ndarray,
    types: np.ndarray | None = None,
    full_horizon: bool = False,
) -> TTCResult:
    """nuPlan's TTC per frame.

    Args:
        ego_states: ``(T, 11)``.
        boxes / valid: tracks ``(T, N, 7)`` / ``(T, N)``.
        first_collision_frame: ``(N,)``; a track is ignored from that frame on (-1: never).
        at_fault_frames: ``(T,)`` frames where TTC is 0.
        wide_search: ``(T,)`` ego off common/connected lanes or in an intersection: every track not
            behind (within 150 deg) is relevant, otherwise only tracks ahead (within 30 deg).
        types: ``(N,)`` track types; static objects are projected with speed 0 (as nuPlan does for
            non-agent tracks).
        full_horizon: search the whole 3 s; by default only the steps up to 0.95 s are searched
            (all the score needs; larger TTCs are then reported as inf).
    """
    t_len = valid.shape[0]
    ttc = np.full(t_len, np.inf)
    steps = np.arange(1, int(round(TTC_HORIZON_S / TTC_STEP_S))) * TTC_STEP_S  # 0.1 ... 2.9
    if not full_horizon:
        steps = steps[steps <= LEAST_MIN_TTC_S]
    ego_speed = np.hypot(ego_states[:, StateIndex.VX], ego_states[:, StateIndex.VY])
    collided = (first_collision_frame[None] >= 0) & (np.arange(t_len)[:, None] >= first_collision_frame[None])
    angle = _relative_angle(ego_states[:, None, :3], boxes[..., :2])
    limit = np.asarray(np.where(wide_search, REAR_ANGLE_RAD, AHEAD_ANGLE_RAD)).reshape(-1, 1)
    speed = np.hypot(boxes[..., AgentIndex.VX], boxes[..., AgentIndex.VY])
    if types is not None:
        speed = np.where(np.isin(types, STATIC_TYPES)[None], 0.0, speed)
    relevant = valid & ~collided & (angle < limit) & (ego_speed[:, None] > TTC_MIN_EGO_SPEED)
    ts, ns = np.nonzero(relevant)
    center = rear_axle_to_center(ego_states[ts, :3])
    keep = _swept_overlap(center, ego_speed[ts], boxes[ts, ns], speed[ts, ns], float(steps[-1]))
    ts, ns, center = ts[keep], ns[keep], center[keep]
    if len(ts):
        ego_size = np.tile([PACIFICA.length, PACIFICA.width], (len(ts), 1))
        ego_c = _moved_corners(center, ego_speed[ts], ego_size, steps)
        trk = boxes[ts, ns]
        trk_c = _moved_corners(trk[:, :3], speed[ts, ns], trk[:, [AgentIndex.LENGTH, AgentIndex.WIDTH]], steps)
        hits = boxes_overlap(ego_c, trk_c)  # (K, S)
        pair_ttc = np.where(hits.any(1), steps[hits.argmax(1)], np.inf)
        np.minimum.at(ttc, ts, pair_ttc)
    ttc[at_fault_frames] = 0.0
    return TTCResult(ttc, float(np.all(ttc > LEAST_MIN_TTC_S)))
