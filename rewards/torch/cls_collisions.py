"""nuPlan's at-fault collisions and time to collision in torch, batched over episodes ``B`` (``T`` frames,
``N`` tracks): the twin of :mod:`rewards.nuplan_collisions`, with its constants.

A track collides once, at its first overlapping frame; its collision type (stopped ego, stopped track, active
rear, active front, active lateral) decides the fault (front, stopped track, and lateral when the ego is not
within common or connected lane objects). TTC projects the ego (box centre, heading, speed) and the tracks
(box heading, speed; static objects stand still) at constant velocity in 0.1 s steps and needs TTC > 0.95 s at
every frame; only the steps up to 0.95 s are searched (all the score needs), and a bounding-circle broad phase
drops pairs that cannot meet within them (the result is the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rewards.nuplan_collisions import (
    AHEAD_ANGLE_RAD,
    CATEGORY_THRESHOLDS,
    LEAST_MIN_TTC_S,
    REAR_ANGLE_RAD,
    STATIC_TYPES,
    STOPPED_SPEED_THRESHOLD,
    TTC_HORIZON_S,
    TTC_MIN_EGO_SPEED,
    TTC_STEP_S,
    VRU_TYPES,
    CollisionType,
)
from rewards.torch.geometry import agent_corners, bounding_radius, box_corners, compact, ego_corners, overlap
from simulation.types import PACIFICA, AgentIndex, StateIndex, TrackedObjectType

A, S = AgentIndex, StateIndex
EGO_RADIUS = 0.5 * math.hypot(PACIFICA.length, PACIFICA.width)


@dataclass(frozen=True)
class Collisions:
    """Collisions of ``B`` rollouts.

    Attributes:
        first_frame: ``(B, N)`` first overlapping frame of each track, -1 if never.
        collision_type: ``(B, N)`` :class:`~rewards.nuplan_collisions.CollisionType` there, -1 if never.
        at_fault: ``(B, N)`` bool; at_fault_frames: ``(B, T)`` bool.
        score: ``(B,)`` ``no_ego_at_fault_collisions`` (1, 0.5 or 0).
    """

    first_frame: torch.Tensor
    collision_type: torch.Tensor
    at_fault: torch.Tensor
    at_fault_frames: torch.Tensor
    score: torch.Tensor


def _type_mask(types: torch.Tensor, members: tuple[TrackedObjectType, ...]) -> torch.Tensor:
    return torch.isin(types, torch.tensor([int(m) for m in members], device=types.device))


def _relative_angle(ego: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``|angle|`` between the ego heading (rear-axle poses ``(..., 3)``) and the direction to ``points``."""
    d = points - ego[..., :2]
    ang = torch.atan2(d[..., 1], d[..., 0]) - ego[..., 2]
    return torch.remainder(ang + math.pi, 2 * math.pi).sub(math.pi).abs()


def classify(ego: torch.Tensor, boxes: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
    """Collision types ``(...)`` of overlapping (ego state ``(..., 11)``, track box ``(..., 7)``) pairs."""
    ego_speed = torch.hypot(ego[..., S.VX], ego[..., S.VY])
    track_speed = torch.hypot(boxes[..., A.VX], boxes[..., A.VY])
    rear = _relative_angle(ego[..., :3], boxes[..., :2]) > REAR_ANGLE_RAD
    corners = ego_corners(ego[..., :3])
    bumper = corners[..., [0, 0, 3, 3], :]  # the FL-FR segment as a degenerate quad
    front = overlap(bumper, agent_corners(boxes))
    out = torch.full_like(ego_speed, int(CollisionType.ACTIVE_LATERAL), dtype=torch.long)
    out = torch.where(front, int(CollisionType.ACTIVE_FRONT), out)
    out = torch.where(rear, int(CollisionType.ACTIVE_REAR), out)
    out = torch.where((track_speed <= STOPPED_SPEED_THRESHOLD) | static, int(CollisionType.STOPPED_TRACK), out)
    return torch.where(ego_speed <= STOPPED_SPEED_THRESHOLD, int(CollisionType.STOPPED_EGO), out)


def overlaps(ego: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, T, N)`` bool: the ego footprint (``(B, T, 11)``) overlaps the valid track boxes ``(B, T, N, 7)``."""
    reach = bounding_radius(boxes[..., A.LENGTH], boxes[..., A.WIDTH]) + EGO_RADIUS
    off = PACIFICA.rear_axle_to_center
    cx = ego[..., 0] + off * torch.cos(ego[..., 2])
    cy = ego[..., 1] + off * torch.sin(ego[..., 2])
    near = valid & (torch.hypot(boxes[..., A.X] - cx[..., None], boxes[..., A.Y] - cy[..., None]) <= reach)
    index, kept, (near_boxes,) = compact(near, boxes)
    hit = overlap(ego_corners(ego[..., :3])[..., None, :, :], agent_corners(near_boxes)) & kept
    return torch.zeros_like(valid).scatter(-1, index, hit)


def category_score(types: torch.Tensor, at_fault: torch.Tensor) -> torch.Tensor:
    """``(B,)`` product over VRU / vehicle / object of ``max(0, 1 - n / (threshold + 1))``."""
    score = torch.ones(types.shape[0], dtype=torch.float64, device=types.device)
    vehicle = types == int(TrackedObjectType.VEHICLE)
    for name, mask in (
        ("vru", _type_mask(types, VRU_TYPES)),
        ("vehicle", vehicle),
        ("object", _type_mask(types, STATIC_TYPES)),
    ):
        n = (at_fault & mask).sum(-1).to(torch.float64)
        score = score * (1.0 - n / (CATEGORY_THRESHOLDS[name] + 1)).clamp_min(0.0)
    return score


def at_fault_collisions(
    ego: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, types: torch.Tensor, in_route: torch.Tensor
) -> Collisions:
    """Collisions of ego states ``(B, T, 11)`` with tracks ``(B, T, N, 7)`` / ``valid`` ``(B, T, N)`` (frames past
    an episode's end already invalid), ``types`` ``(B, N)``; ``in_route`` ``(B, T)``."""
    hit = overlaps(ego, boxes, valid)
    collided = hit.any(1)  # (B, N)
    first = torch.where(collided, hit.to(torch.uint8).argmax(1), -1)
    f = first.clamp_min(0)
    ego_at = torch.gather(ego, 1, f[..., None].expand(-1, -1, ego.shape[-1]))  # (B, N, 11)
    box_at = torch.gather(boxes, 1, f[:, None, :, None].expand(-1, 1, -1, boxes.shape[-1]))[:, 0]  # (B, N, 7)
    static = _type_mask(types, STATIC_TYPES)
    ctype = torch.where(collided, classify(ego_at, box_at, static), -1)
    lateral = (ctype == int(CollisionType.ACTIVE_LATERAL)) & ~torch.gather(in_route, 1, f)
    fault = collided & (
        (ctype == int(CollisionType.ACTIVE_FRONT)) | (ctype == int(CollisionType.STOPPED_TRACK)) | lateral
    )
    frames = _frames_of(fault, f, in_route.shape[1])
    return Collisions(first, ctype, fault, frames, category_score(types, fault))


def _frames_of(fault: torch.Tensor, first: torch.Tensor, t_len: int) -> torch.Tensor:
    """``(B, T)`` bool: frames holding the first collision of an at-fault track."""
    frames = torch.zeros(fault.shape[0], t_len, dtype=torch.int64, device=fault.device)
    return frames.scatter_add(1, first, fault.to(torch.int64)) > 0


def _moved(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, speed: torch.Tensor, steps: torch.Tensor) -> tuple:
    """Centres moved ``speed * step`` along ``h``: ``(..., S)`` x and y."""
    move = speed[..., None] * steps
    return x[..., None] + torch.cos(h)[..., None] * move, y[..., None] + torch.sin(h)[..., None] * move


def ttc_violations(
    ego: torch.Tensor,
    boxes: torch.Tensor,
    valid: torch.Tensor,
    types: torch.Tensor,
    collisions: Collisions,
    wide_search: torch.Tensor,
) -> torch.Tensor:
    """``(B, T)`` bool: TTC <= 0.95 s at that frame (a hit within the look-ahead, or an at-fault collision).

    ``wide_search`` ``(B, T)``: every track within 150 degrees counts (ego off common / connected lanes or in an
    intersection), otherwise only those within 30 degrees ahead; tracks are dropped from their first collision on.
    """
    t_len = ego.shape[1]
    n_steps = int(round(TTC_HORIZON_S / TTC_STEP_S))
    steps = torch.arange(1, n_steps, dtype=ego.dtype) * TTC_STEP_S  # on the host: no device sync to read it
    steps = steps[steps <= LEAST_MIN_TTC_S]
    horizon = float(steps[-1])
    steps = steps.to(ego.device)
    ego_speed = torch.hypot(ego[..., S.VX], ego[..., S.VY])
    frame = torch.arange(t_len, device=ego.device)[None, :, None]
    first = collisions.first_frame[:, None]
    collided = (first >= 0) & (frame >= first)
    limit = torch.where(wide_search, REAR_ANGLE_RAD, AHEAD_ANGLE_RAD)[..., None]
    speed = torch.hypot(boxes[..., A.VX], boxes[..., A.VY])
    speed = torch.where(_type_mask(types, STATIC_TYPES)[:, None], torch.zeros_like(speed), speed)
    off = PACIFICA.rear_axle_to_center
    cx, cy = ego[..., 0] + off * torch.cos(ego[..., 2]), ego[..., 1] + off * torch.sin(ego[..., 2])
    reach = EGO_RADIUS + bounding_radius(boxes[..., A.LENGTH], boxes[..., A.WIDTH])
    reach = reach + (ego_speed[..., None] + speed) * horizon
    near = torch.hypot(boxes[..., A.X] - cx[..., None], boxes[..., A.Y] - cy[..., None]) <= reach
    relevant = valid & ~collided & (_relative_angle(ego[..., None, :3], boxes[..., :2]) < limit) & near
    relevant &= (ego_speed > TTC_MIN_EGO_SPEED)[..., None]
    _, kept, (trk, trk_speed) = compact(relevant, boxes, speed)
    ex, ey = _moved(cx, cy, ego[..., 2], ego_speed, steps)  # (B, T, S)
    full = torch.ones_like(ex)
    ego_c = box_corners(ex, ey, ego[..., 2, None] * full, full * PACIFICA.length, full * PACIFICA.width)
    tx, ty = _moved(trk[..., A.X], trk[..., A.Y], trk[..., A.HEADING], trk_speed, steps)  # (B, T, K, S)
    ones = torch.ones_like(tx)
    trk_c = box_corners(
        tx, ty, trk[..., A.HEADING, None] * ones, trk[..., A.LENGTH, None] * ones, trk[..., A.WIDTH, None] * ones
    )
    hit = overlap(ego_c[:, :, None], trk_c).any(-1) & kept  # (B, T, K)
    return hit.any(-1) | collisions.at_fault_frames
