"""nuPlan's closed-loop score (CLS-NR / CLS-R metric set) in torch, batched over ``B`` rollouts of ``T`` frames.

The twin of :func:`rewards.nuplan_metrics.compute_closed_loop_metrics` on a :class:`~rewards.torch.cls_world.ClsWorld`
(same thresholds, imported from the numpy modules): at-fault collisions, drivable-area compliance (0.3 m
tolerance), driving-direction compliance, making progress, progress along the expert route, TTC, speed-limit
compliance, comfort (Savitzky-Golay filtered, nuPlan's bounds) and :func:`cls_score`. Rollouts of different
lengths share the padded batch: frames from ``length`` on are ignored. The CLS has no traffic-light metric
(red-light running is not scored by nuPlan's closed-loop aggregate), so there is none here either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rewards.comfort import (
    MAX_ABS_LAT_ACCEL,
    MAX_ABS_LON_JERK,
    MAX_ABS_MAG_JERK,
    MAX_ABS_YAW_ACCEL,
    MAX_ABS_YAW_RATE,
    MAX_LON_ACCEL,
    MIN_LON_ACCEL,
    savgol_matrix,
)
from rewards.nuplan_metrics import (
    CLS_MULTIPLIERS,
    CLS_WEIGHTS,
    DIRECTION_COMPLIANCE_M,
    DIRECTION_HORIZON_S,
    DIRECTION_VIOLATION_M,
    DRIVABLE_MAX_VIOLATION_M,
    MAX_OVERSPEED_MPS,
    MIN_PROGRESS_RATIO,
    PROGRESS_THRESHOLD_M,
)
from rewards.torch import cls_polygons
from rewards.torch.cls_collisions import at_fault_collisions, ttc_violations
from rewards.torch.cls_route import (
    contains,
    driving_direction_progress,
    ego_route,
    in_common_or_connected,
    progress_along_route,
)
from rewards.torch.cls_world import ClsWorld
from rewards.torch.geometry import compact, ego_corners
from simulation.types import PACIFICA, StateIndex

S = StateIndex
_DECIMALS = 8


@dataclass(frozen=True)
class ClsRollout:
    """What the CLS metrics read from ``B`` simulated rollouts (padded to ``T`` frames).

    Attributes:
        ego: ``(B, T, 11)`` simulated rear-axle states at the history samples.
        timestamps_us: ``(B, T)`` int64.
        boxes: ``(B, T, N, 7)`` observed tracks; valid: ``(B, T, N)`` bool; types: ``(B, N)`` long.
        length: ``(B,)`` long, the frames of each rollout.
    """

    ego: torch.Tensor
    timestamps_us: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor
    types: torch.Tensor
    length: torch.Tensor

    def select(self, rows: torch.Tensor) -> ClsRollout:
        """The rollouts ``rows`` ``(B',)`` (long)."""
        t = self.ego.shape[1]
        return ClsRollout(
            self.ego[rows],
            self.timestamps_us[rows, :t],
            self.boxes[rows, :t],
            self.valid[rows, :t],
            self.types[rows],
            self.length[rows],
        )

    @property
    def frame_mask(self) -> torch.Tensor:
        """``(B, T)`` bool, frames that belong to the rollout."""
        return torch.arange(self.ego.shape[1], device=self.ego.device)[None] < self.length[:, None]

    @property
    def dt(self) -> torch.Tensor:
        """``(B,)`` mean sample interval in seconds (0.1 for a single frame)."""
        rows = torch.arange(self.ego.shape[0], device=self.ego.device)
        span = (self.timestamps_us[rows, (self.length - 1).clamp_min(0)] - self.timestamps_us[:, 0]).to(torch.float64)
        n = (self.length - 1).to(torch.float64)
        return torch.where(n > 0, span / n.clamp_min(1.0) * 1e-6, torch.full_like(span, 0.1))


def centres(ego: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` footprint centres of rear-axle states ``(..., >=3)``."""
    off = PACIFICA.rear_axle_to_center
    return torch.stack([ego[..., 0] + off * torch.cos(ego[..., 2]), ego[..., 1] + off * torch.sin(ego[..., 2])], -1)


# ------------------------------------------------------------------------------------------------- metrics


def drivable_violations(
    world: ClsWorld, corners: torch.Tensor, route: torch.Tensor, inside: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, T)`` bool: a corner ``(B, T, 4, 2)`` is off every lane and the drivable area by >= 0.3 m, measured from
    the frame's route objects ``(B, T, M)`` and from the drivable area (``inside``: the corners' :func:`contains`
    ``(B, T * 4, M)`` when already known)."""
    b, t_len = corners.shape[:2]
    pts = corners.reshape(b, t_len * 4, 2)
    in_lane = (contains(world, pts) if inside is None else inside).any(-1)
    in_drivable = cls_polygons.contains(world.drivable, pts)[..., 0]
    index, kept, (out_pts,) = compact(~in_lane & ~in_drivable, pts)
    if index.shape[1] == 0:
        return torch.zeros(b, t_len, dtype=torch.bool, device=corners.device)
    frame_route = torch.gather(route, 1, (index // 4)[..., None].expand(-1, -1, route.shape[-1]))
    near_route = (cls_polygons.within(world.objects, out_pts, DRIVABLE_MAX_VIOLATION_M) & frame_route).any(-1)
    near_drivable = cls_polygons.within(world.drivable, out_pts, DRIVABLE_MAX_VIOLATION_M)[..., 0]
    bad = kept & ~near_route & ~near_drivable
    per_point = torch.zeros(b, t_len * 4, dtype=torch.bool, device=corners.device).scatter(1, index, bad)
    return per_point.reshape(b, t_len, 4).any(-1)


def direction_compliance(progress: torch.Tensor, dt: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` 1 / 0.5 / 0 from the worst backwards progress over 1 s windows of per-frame ``progress`` ``(B, T)``."""
    b, t_len = progress.shape
    n = (DIRECTION_HORIZON_S / dt + 1e-9).floor().long()  # (B,)
    cum = torch.nn.functional.pad(torch.cumsum(progress * frame_mask, 1), (1, 0))
    idx = torch.arange(t_len, device=progress.device)[None]
    window = cum[:, 1:] - torch.gather(cum, 1, (idx - n[:, None]).clamp_min(0))
    worst = torch.where(frame_mask, window, torch.full_like(window, torch.inf)).amin(1)
    worst = torch.where(frame_mask.any(1), worst.abs(), torch.zeros_like(worst))
    one, half = torch.ones_like(worst), torch.full_like(worst, 0.5)
    return torch.where(worst < DIRECTION_COMPLIANCE_M, one, torch.where(worst < DIRECTION_VIOLATION_M, half, 0 * one))


def progress_ratio(ego_progress: torch.Tensor, expert_progress: torch.Tensor, has_route: torch.Tensor) -> torch.Tensor:
    """``(B,)`` nuPlan's ego / expert progress ratio with the 2 m threshold (1 without an expert route)."""
    t = PROGRESS_THRESHOLD_M
    ratio = (ego_progress.clamp_min(t) / expert_progress.clamp_min(t)).clamp_max(1.0)
    ratio = torch.where(ego_progress < -t, torch.zeros_like(ratio), ratio)
    return torch.where(has_route, ratio, torch.ones_like(ratio))


def speed_limit_compliance(
    world: ClsWorld, route: torch.Tensor, ego: torch.Tensor, rollout: ClsRollout
) -> torch.Tensor:
    """``(B,)`` 1 - overspeed integral / (2.23 m/s x duration), floored at 0; frames without a known limit never
    violate (the limit of a frame is the largest of its route objects', unknown if any of them is)."""
    limits = world.speed_limits[:, None].expand_as(route)
    known = torch.isfinite(limits)
    top = torch.where(route & known, limits, torch.full_like(limits, -torch.inf)).amax(-1)
    limit = torch.where(route.any(-1) & ~(route & ~known).any(-1), top, torch.full_like(top, torch.inf))
    speed = torch.hypot(ego[..., S.VX], ego[..., S.VY])
    violation = (speed - limit).clamp_min(0.0) * rollout.frame_mask
    dt = rollout.dt
    rows = torch.arange(ego.shape[0], device=ego.device)
    last = rollout.timestamps_us[rows, (rollout.length - 1).clamp_min(0)]
    duration = (last - rollout.timestamps_us[:, 0]).to(torch.float64) * 1e-6
    score = (1.0 - violation.sum(1) * dt / (MAX_OVERSPEED_MPS * torch.maximum(duration, dt))).clamp_min(0.0)
    return torch.where((violation > 0).any(1), score, torch.ones_like(score))


def _filter(y: torch.Tensor, window: int, poly: int, deriv: int = 0, delta: float = 1.0) -> torch.Tensor:
    mat = torch.tensor(np.array(savgol_matrix(y.shape[-1], window, poly, deriv, delta)), dtype=y.dtype, device=y.device)
    return torch.round(y @ mat.T, decimals=_DECIMALS)


def comfort_signals(states: torch.Tensor, dt: float) -> dict[str, torch.Tensor]:
    """The six filtered comfort signals ``(K, T)`` of states ``(K, T, 11)`` (nuPlan's / EPDMS ``v2`` filters)."""
    n = states.shape[-2]
    delta = float(np.diff(np.arange(n, dtype=np.float64) * dt).mean()) if n > 1 else dt
    d = PACIFICA.rear_axle_to_center
    lon = states[..., S.AX] + d * states[..., S.YAW_RATE] ** 2 + d * states[..., S.YAW_ACCEL]
    lon = _filter(lon, 8, 2)
    mag = _filter(torch.hypot(states[..., S.AX], states[..., S.AY]), 8, 2)
    heading = states[..., S.HEADING]
    turns = torch.round(torch.diff(heading, dim=-1) / (2.0 * torch.pi))
    heading = heading - 2.0 * torch.pi * torch.nn.functional.pad(torch.cumsum(turns, -1), (1, 0))
    return {
        "lon_accel": lon,
        "lat_accel": _filter(states[..., S.AY], 8, 2),
        "jerk": _filter(mag, 15, 2, 1, delta),
        "lon_jerk": _filter(lon, 15, 2, 1, delta),
        "yaw_accel": _filter(heading, 5, 3, 2, delta),
        "yaw_rate": _filter(heading, 5, 2, 1, delta),
    }


def comfortable_states(states: torch.Tensor, dt: float) -> torch.Tensor:
    """``(K,)`` bool: all six bounds hold at every frame of states ``(K, T, 11)`` (``T < 4``: nothing to judge)."""
    if states.shape[-2] < 4:
        return torch.ones(states.shape[0], dtype=torch.bool, device=states.device)
    s = comfort_signals(states, dt)
    ok = (s["lon_accel"] > MIN_LON_ACCEL) & (s["lon_accel"] < MAX_LON_ACCEL)
    ok &= s["lat_accel"].abs() < MAX_ABS_LAT_ACCEL
    ok &= s["jerk"].abs() < MAX_ABS_MAG_JERK
    ok &= s["lon_jerk"].abs() < MAX_ABS_LON_JERK
    ok &= s["yaw_accel"].abs() < MAX_ABS_YAW_ACCEL
    ok &= s["yaw_rate"].abs() < MAX_ABS_YAW_RATE
    return ok.all(-1)


def ego_is_comfortable(rollout: ClsRollout) -> torch.Tensor:
    """``(B,)`` float 1 where the rollout is comfortable; rollouts are grouped by length (the filter matrices
    depend on it), one batched call per group."""
    out = torch.ones(rollout.ego.shape[0], dtype=torch.float64, device=rollout.ego.device)
    lengths, dts = rollout.length.tolist(), rollout.dt.tolist()
    for n, dt in sorted(set(zip(lengths, dts, strict=True))):
        rows = torch.tensor([i for i, k in enumerate(zip(lengths, dts, strict=True)) if k == (n, dt)])
        out[rows.to(out.device)] = comfortable_states(rollout.ego[rows.to(out.device), :n], dt).to(out.dtype)
    return out


def cls_score(metrics: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B,)`` product of the multiplier metrics x weighted mean of the others (every weighted metric present)."""
    multiplier = torch.stack([metrics[k] for k in CLS_MULTIPLIERS]).prod(0)
    weighted = sum(w * metrics[k] for k, w in CLS_WEIGHTS.items())
    return multiplier * weighted / sum(CLS_WEIGHTS.values())


def cls_metrics(world: ClsWorld, rollout: ClsRollout) -> dict[str, torch.Tensor]:
    """Every CLS metric ``(B,)`` float64 of the rollouts, plus ``score``; names as
    :func:`rewards.nuplan_metrics.compute_closed_loop_metrics`."""
    ego, fm = rollout.ego, rollout.frame_mask
    centers = centres(ego)
    corners = ego_corners(ego[..., :3])
    route, keys = ego_route(world, centers, rollout.length)
    inside = contains(world, corners.reshape(corners.shape[0], -1, 2))
    in_route = in_common_or_connected(world, corners, inside)
    valid = rollout.valid & fm[..., None]
    collisions = at_fault_collisions(ego, rollout.boxes, valid, rollout.types, in_route)
    in_junction = cls_polygons.contains(world.intersections, ego[..., :2])
    ttc_bad = ttc_violations(ego, rollout.boxes, valid, rollout.types, collisions, ~in_route | in_junction[..., 0])
    ego_progress = (progress_along_route(world, centers) * fm).sum(1)
    ratio = progress_ratio(ego_progress, world.expert_progress, world.has_route)
    direction = driving_direction_progress(world, centers, route, keys)
    metrics = {
        "no_ego_at_fault_collisions": collisions.score,
        "drivable_area_compliance": (~(drivable_violations(world, corners, route, inside) & fm).any(1)).double(),
        "driving_direction_compliance": direction_compliance(direction, rollout.dt, fm),
        "ego_is_making_progress": (ratio >= MIN_PROGRESS_RATIO).double(),
        "ego_progress_along_expert_route": ratio,
        "time_to_collision_within_bound": (~(ttc_bad & fm).any(1)).double(),
        "speed_limit_compliance": speed_limit_compliance(world, route, ego, rollout),
        "ego_is_comfortable": ego_is_comfortable(rollout),
    }
    metrics["score"] = cls_score(metrics)
    return metrics
