"""BEV-Warp's judge: nuPlan's closed-loop metrics on a batch of rollouts, per step and per episode.

The episode metrics are nuPlan's CLS metrics computed on the recorded history (:mod:`rewards.torch.cls_metrics`,
the twin of :mod:`rewards.nuplan_metrics`). During the rollout, :func:`step_checks` applies the same rules to
the log frames passed in one step, for rewards and termination:

- at-fault collision (nuPlan's collision types and fault rule; a track counts once, tracks already hit are
  passed in ``collided``);
- drivable area with nuPlan's 0.3 m tolerance, measured from the frame's own route objects (the episode metric
  uses nuPlan's route continuity over the whole history, which a single step cannot see);
- TTC within 0.95 s, with nuPlan's relevance rules;
- deviation from the expert path (BEV-Warp's own termination rule, not a nuPlan metric).

:func:`step_comfortable` runs nuPlan's filtered comfort check on the last frames of the history.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from rewards.torch import cls_polygons
from rewards.torch.cls_collisions import at_fault_collisions, ttc_violations
from rewards.torch.cls_metrics import ClsRollout, centres, cls_metrics, comfortable_states, drivable_violations
from rewards.torch.cls_route import contains, in_common_or_connected, route_objects
from rewards.torch.cls_world import ClsWorld
from rewards.torch.geometry import ahead, ego_corners, normalize_angle, project

#: The expert path used by the deviation check goes on straight this far past both of its ends (m).
PATH_EXTENSION_M = 100.0
#: Log frames of history the per-step comfort check looks at (the longest Savitzky-Golay window is 15).
COMFORT_WINDOW = 20

__all__ = [
    "ClsRollout",
    "cls_metrics",
    "deviation",
    "episode_metrics",
    "step_checks",
    "step_comfortable",
]


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


def step_checks(
    world: ClsWorld,
    ego: torch.Tensor,
    boxes: torch.Tensor,
    valid: torch.Tensor,
    types: torch.Tensor,
    collided: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """nuPlan's rules on the ``F`` log frames of one step of ``B`` episodes.

    Args:
        world: the episodes' map tensors.
        ego: ``(B, F, 11)`` simulated ego states at the frames.
        boxes / valid / types: logged agents ``(B, F, N, 7)`` / ``(B, F, N)`` / ``(B, N)``.
        collided: ``(B, N)`` tracks that collided with the ego before (they no longer count, as in nuPlan).

    Returns:
        ``collision`` (a new at-fault collision), ``drivable_area`` (a corner off the road beyond the tolerance),
        ``ttc`` (TTC <= 0.95 s at a frame), each ``(B,)`` bool, and ``collided`` ``(B, N)`` updated.
    """
    valid = valid & ~collided[:, None]
    corners = ego_corners(ego[..., :3])
    b, f = ego.shape[:2]
    inside = contains(world, torch.cat([corners.reshape(b, f * 4, 2), centres(ego)], 1))  # corners, then centres
    in_route = in_common_or_connected(world, corners, inside[:, : f * 4])
    collisions = at_fault_collisions(ego, boxes, valid, types, in_route)
    junction = cls_polygons.contains(world.intersections, ego[..., :2])
    ttc = ttc_violations(ego, boxes, valid, types, collisions, ~in_route | junction[..., 0])
    own_route = route_objects(world, inside[:, f * 4 :])
    return {
        "collision": collisions.at_fault.any(-1),
        "drivable_area": drivable_violations(world, corners, own_route, inside[:, : f * 4]).any(-1),
        "ttc": ttc.any(-1),
        "collided": collided | (collisions.first_frame >= 0),
    }


def step_comfortable(history: torch.Tensor, frame: torch.Tensor, dt: float) -> torch.Tensor:
    """``(B,)`` bool: nuPlan's filtered comfort bounds hold over the last :data:`COMFORT_WINDOW` frames of the
    history ``(B, T, 11)`` up to ``frame`` ``(B,)`` (indices before 0 repeat frame 0)."""
    offsets = torch.arange(-COMFORT_WINDOW + 1, 1, device=frame.device)
    idx = (frame[:, None] + offsets).clamp(0, history.shape[1] - 1)
    window = torch.gather(history, 1, idx[..., None].expand(-1, -1, history.shape[-1]))
    return comfortable_states(window, dt)


def episode_metrics(world: ClsWorld, rollout: ClsRollout) -> dict[str, torch.Tensor]:
    """The CLS metrics ``(B,)`` of each rollout and its ``score`` (:func:`rewards.torch.cls_metrics.cls_metrics`).

    The padded frames past the longest rollout are cut first (they play no part; episodes that end early are
    scored on their own length rather than the whole log's)."""
    t = int(rollout.length.max()) if rollout.length.numel() else 0
    if 0 < t < rollout.ego.shape[1]:
        r = rollout
        rollout = replace(
            r, ego=r.ego[:, :t], timestamps_us=r.timestamps_us[:, :t], boxes=r.boxes[:, :t], valid=r.valid[:, :t]
        )
    return cls_metrics(world, rollout)
