"""Closed-loop checks of the vector world in torch, batched over episodes ``B`` (BEV-Warp's judge).

At every log frame a rollout passes, :func:`frame_checks` tests the simulated ego against the logged agents and
the map: at-fault collision (nuPlan's collision types; lateral collisions always count), all four footprint
corners in the drivable area, TTC within 0.95 s (constant velocities, tracks within 30 degrees ahead) and the
deviation from the expert path. :func:`comfortable` checks nuPlan's comfort bounds on raw per-step values, and
:func:`episode_score` aggregates an episode's flags and route progress (nuPlan-like, not nuPlan's CLS):

``score = no_at_fault_collision * drivable * (5 progress_ratio + 5 ttc_ok + 2 comfortable) / 12``.
"""

from __future__ import annotations

import math

import torch

from rewards.comfort import (
    MAX_ABS_LAT_ACCEL,
    MAX_ABS_LON_JERK,
    MAX_ABS_YAW_ACCEL,
    MAX_ABS_YAW_RATE,
    MAX_LON_ACCEL,
    MIN_LON_ACCEL,
)
from rewards.nuplan_collisions import (
    AHEAD_ANGLE_RAD,
    LEAST_MIN_TTC_S,
    REAR_ANGLE_RAD,
    STATIC_TYPES,
    STOPPED_SPEED_THRESHOLD,
)
from rewards.torch.geometry import (
    agent_corners,
    ahead,
    bounding_radius,
    centre_distance,
    compact,
    ego_corners,
    in_grid,
    normalize_angle,
    overlap,
    project,
)
from simulation.types import PACIFICA, AgentIndex, StateIndex

A, S = AgentIndex, StateIndex
#: Radius of the circle around the ego footprint's centre that holds the whole footprint (broad phase).
EGO_RADIUS = 0.5 * math.hypot(PACIFICA.length, PACIFICA.width)
#: The expert path used by the deviation check goes on straight this far past both of its ends (m).
PATH_EXTENSION_M = 100.0
#: Below this expert progress (m) an episode's progress ratio is 1.
MIN_EXPERT_PROGRESS_M = 5.0
#: Time step of the TTC look-ahead (s).
TTC_DT = 0.1


def comfortable(states: torch.Tensor, prev: torch.Tensor, dt: float) -> torch.Tensor:
    """``(B,)`` bool: the ego states ``(B, K, 11)`` (``prev`` ``(B, 11)`` just before) stay in nuPlan's comfort bounds.

    Raw per-step values (no Savitzky-Golay filter): longitudinal / lateral acceleration, longitudinal jerk,
    yaw rate and yaw acceleration.
    """
    seq = torch.cat([prev[:, None], states], 1)
    ax = seq[:, 1:, S.AX]
    lat = seq[:, 1:, S.VX] * seq[:, 1:, S.YAW_RATE]
    jerk = (seq[:, 1:, S.AX] - seq[:, :-1, S.AX]) / dt
    ok = (ax >= MIN_LON_ACCEL) & (ax <= MAX_LON_ACCEL) & (lat.abs() <= MAX_ABS_LAT_ACCEL)
    ok &= (jerk.abs() <= MAX_ABS_LON_JERK) & (seq[:, 1:, S.YAW_RATE].abs() <= MAX_ABS_YAW_RATE)
    ok &= seq[:, 1:, S.YAW_ACCEL].abs() <= MAX_ABS_YAW_ACCEL
    return ok.all(-1)


def nearest_agents(
    ego: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, types: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` valid agents nearest to the ego (centre distance) per frame: boxes ``(B, F, k, 7)``, valid, types.

    Unchanged when there are at most ``k`` agents (a static shape test, no data-dependent branch).
    """
    if boxes.shape[2] <= k:
        return boxes, valid, types
    dist = torch.hypot(boxes[..., A.X] - ego[..., None, 0], boxes[..., A.Y] - ego[..., None, 1])
    idx = torch.where(valid, dist, torch.full_like(dist, math.inf)).topk(k, dim=-1, largest=False).indices
    near = torch.gather(boxes, 2, idx[..., None].expand(*idx.shape, boxes.shape[-1]))
    return near, torch.gather(valid, 2, idx), torch.gather(types, 2, idx)


def at_fault(ego: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``(..., N)`` bool: a collision of the ego ``(..., 11)`` with that box ``(..., N, 7)`` would be its fault.

    nuPlan's collision types: not at fault when the ego is stopped or the track hits it from behind (beyond
    150 degrees); front, lateral and stopped-track collisions count (lateral ones always, a simplification).
    """
    ego_speed = torch.hypot(ego[..., S.VX], ego[..., S.VY])
    d = boxes[..., :2] - ego[..., None, :2]
    ang = normalize_angle(torch.atan2(d[..., 1], d[..., 0]) - ego[..., None, 2]).abs()
    return (ego_speed[..., None] > STOPPED_SPEED_THRESHOLD) & (ang <= REAR_ANGLE_RAD)


def ttc_violation(ego: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: with constant velocities, the ego box ``(B, 11)`` would hit a track ahead within 0.95 s.

    ``boxes`` ``(B, N, 7)``, ``valid`` ``(B, N)``, ``types`` ``(B, N)`` (static types do not move). Tracks that
    cannot reach the ego in that time (centre distance beyond both bounding radii plus both speeds times the
    horizon) are left out before the box tests; the result is the same.
    """
    speed = torch.hypot(ego[:, S.VX], ego[:, S.VY])
    d = boxes[..., :2] - ego[:, None, :2]
    ang = normalize_angle(torch.atan2(d[..., 1], d[..., 0]) - ego[:, None, 2]).abs()
    static = torch.isin(types, torch.tensor([int(t) for t in STATIC_TYPES], device=types.device))
    trk_v = torch.where(static[..., None], torch.zeros_like(boxes[..., 3:5]), boxes[..., 3:5])
    num = int(LEAST_MIN_TTC_S / TTC_DT + 1e-9)
    times = torch.arange(1, num + 1, dtype=ego.dtype, device=ego.device) * TTC_DT  # (K,)
    horizon = float(times[-1])
    reach = EGO_RADIUS + bounding_radius(boxes[..., A.LENGTH], boxes[..., A.WIDTH])
    reach = reach + (speed[:, None] + torch.linalg.norm(trk_v, dim=-1)) * horizon
    relevant = valid & (ang < AHEAD_ANGLE_RAD) & (speed[:, None] > 5e-3) & (centre_distance(ego, boxes) <= reach)
    _, kept, (boxes, trk_v) = compact(relevant, boxes, trk_v)
    pose = ego[:, None, :3].expand(-1, len(times), -1).clone()  # (B, K, 3)
    pose[..., 0] += speed[:, None] * torch.cos(ego[:, None, 2]) * times
    pose[..., 1] += speed[:, None] * torch.sin(ego[:, None, 2]) * times
    moved = boxes[:, None].expand(-1, len(times), -1, -1).clone()  # (B, K, M, 7)
    moved[..., :2] += trk_v[:, None] * times[None, :, None, None]
    hit = overlap(ego_corners(pose)[:, :, None], agent_corners(moved)).any(1)
    return (hit & kept).any(-1)


def deviation(ego: torch.Tensor, expert: torch.Tensor, max_distance_m: float, max_heading_rad: float) -> torch.Tensor:
    """``(B, F)`` bool: ego ``(B, F, 11)`` farther than ``max_distance_m`` from the expert path ``(B, T, 3)`` or
    turned more than ``max_heading_rad`` away from it.

    The path goes on straight for ``PATH_EXTENSION_M`` past both ends (along the first / last logged heading), so
    stopping short of a moving expert's end or creeping past a stopped expert is progress, not a deviation.
    """
    first, last = expert[:, :1], expert[:, -1:]
    path = torch.cat([ahead(first, -PATH_EXTENSION_M), expert, ahead(last, PATH_EXTENSION_M)], 1)
    _, dist, k = project(ego[..., :2], path[..., :2])
    ref_heading = torch.gather(path[..., 2], 1, k)
    head = normalize_angle(ego[..., 2] - ref_heading).abs()
    return (dist > max_distance_m) | (head > max_heading_rad)


def frame_checks(
    ego: torch.Tensor,
    boxes: torch.Tensor,
    valid: torch.Tensor,
    types: torch.Tensor,
    drivable: torch.Tensor,
    grid_origin: torch.Tensor,
    grid_res: float,
    expert: torch.Tensor,
    *,
    max_checked_agents: int,
    max_deviation_m: float,
    max_heading_deviation_rad: float,
) -> dict[str, torch.Tensor]:
    """Collision / drivable / TTC / deviation violations ``(B,)`` over ``F`` log frames of ``B`` episodes.

    Args:
        ego: ``(B, F, 11)`` simulated ego states at the frames.
        boxes / valid / types: the logged agents at those frames, ``(B, F, N, 7)`` / ``(B, F, N)`` / ``(B, F, N)``;
            only the ``max_checked_agents`` nearest per frame are checked.
        drivable: ``(B, GH, GW)`` bool drivable-area grid with cell ``(0, 0)`` at ``grid_origin`` ``(B, 2)``,
            ``grid_res`` metres per cell.
        expert: ``(B, T, 3)`` logged ego poses, the path of the deviation check.

    Returns:
        ``collision`` (at fault), ``drivable_area`` (a footprint corner off the grid's drivable cells), ``ttc``
        and ``deviation``, each ``(B,)`` bool: violated at one of the frames at least.
    """
    boxes, valid, types = nearest_agents(ego, boxes, valid, types, max_checked_agents)
    corners = ego_corners(ego[..., :3])  # (B, F, 4, 2)
    # broad phase: only boxes whose bounding circle meets the ego's go through the separating-axis test
    reach = bounding_radius(boxes[..., A.LENGTH], boxes[..., A.WIDTH]) + EGO_RADIUS
    near = valid & (centre_distance(ego, boxes) <= reach)
    index, kept, (near_boxes,) = compact(near, boxes)
    hit_near = overlap(corners[:, :, None], agent_corners(near_boxes)) & kept
    hit = torch.zeros_like(valid).scatter(2, index, hit_near)
    b, f = ego.shape[:2]
    on_road = in_grid(corners.reshape(b, f * 4, 2), drivable, grid_origin, grid_res)
    flat = (b * f,)
    ttc = ttc_violation(
        ego.reshape(*flat, -1),
        boxes.reshape(*flat, *boxes.shape[2:]),
        (valid & ~hit).reshape(*flat, -1),
        types.reshape(*flat, -1),
    ).reshape(b, f)
    return {
        "collision": (hit_near & at_fault(ego, near_boxes)).any(-1).any(-1),
        "drivable_area": ~on_road.all(-1),
        "ttc": ttc.any(-1),
        "deviation": deviation(ego, expert, max_deviation_m, max_heading_deviation_rad).any(-1),
    }


def progress_ratio(progress: torch.Tensor, expert_progress: torch.Tensor) -> torch.Tensor:
    """``(B,)`` route progress over the expert's, clipped to ``[0, 1]``; 1 where the expert moved at most
    :data:`MIN_EXPERT_PROGRESS_M`."""
    ratio = (progress / expert_progress.clamp_min(1e-6)).clamp(0.0, 1.0)
    return torch.where(expert_progress > MIN_EXPERT_PROGRESS_M, ratio, torch.ones_like(progress))


def episode_score(
    collision: torch.Tensor, off_road: torch.Tensor, ttc: torch.Tensor, uncomfortable: torch.Tensor, ratio: torch.Tensor
) -> torch.Tensor:
    """``(B,)`` float64 episode score from the ``(B,)`` bool flags (violated at some step) and the progress ratio.

    ``score = no_at_fault_collision * drivable * (5 progress_ratio + 5 ttc_ok + 2 comfortable) / 12``.
    """
    no_col = (~collision).double()
    drivable = (~off_road).double()
    ttc_ok = (~ttc).double()
    comfort = (~uncomfortable).double()
    return no_col * drivable * (5 * ratio + 5 * ttc_ok + 2 * comfort) / 12.0
