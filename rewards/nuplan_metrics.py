"""nuPlan's closed-loop metrics (CLS-NR / CLS-R) as pure functions over a simulated history.

All metrics are computed on the history samples at 0.1 s (specs/nuplan.md §4). The map is queried
once per scenario (:func:`~rewards.nuplan_map_context.build_lane_graph_context`), then every metric is
array code over the ``T`` frames (and ``N`` tracks). Thresholds are nuPlan's configured values:

=================================== ==========================================================
no_ego_at_fault_collisions          multiplier; per category max(0, 1 - n / (thr + 1)),
                                    thr: VRU 0, vehicle 0, object 1
drivable_area_compliance            multiplier; corner violation distance 0.3 m
driving_direction_compliance        multiplier; 1 s window, |min progress| < 2 m -> 1, < 6 m -> 0.5
ego_is_making_progress              multiplier; progress ratio >= 0.2
ego_progress_along_expert_route     weight 5; ratio with 2 m threshold
time_to_collision_within_bound      weight 5; 0.1 s steps up to 3 s, TTC must stay > 0.95 s
speed_limit_compliance              weight 4; overspeed integral normalised by 2.23 m/s x duration
ego_is_comfortable                  weight 2; Savitzky-Golay bounds (see :func:`ego_is_comfortable`)
=================================== ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from rewards.nuplan_collisions import CollisionResult, at_fault_collisions, time_to_collision
from rewards.nuplan_comfort import ego_is_comfortable
from rewards.nuplan_map_context import LaneGraphContext, build_lane_graph_context
from rewards.nuplan_route import (
    ego_route,
    in_common_or_connected_route_objects,
    progress_along_route,
    route_blocks_of_expert,
)
from simulation.geometry import ego_box_corners, rear_axle_to_center
from simulation.maps.protocol import MapProtocol
from simulation.types import StateIndex

#: Multiplier metrics of CLS (nuPlan ``closed_loop_*_weighted_average.yaml``).
CLS_MULTIPLIERS: tuple[str, ...] = (
    "no_ego_at_fault_collisions",
    "drivable_area_compliance",
    "ego_is_making_progress",
    "driving_direction_compliance",
)
#: Weighted metrics of CLS and their weights.
CLS_WEIGHTS: dict[str, float] = {
    "ego_progress_along_expert_route": 5.0,
    "time_to_collision_within_bound": 5.0,
    "speed_limit_compliance": 4.0,
    "ego_is_comfortable": 2.0,
}

DRIVABLE_MAX_VIOLATION_M = 0.3
DIRECTION_COMPLIANCE_M = 2.0
DIRECTION_VIOLATION_M = 6.0
DIRECTION_HORIZON_S = 1.0
PROGRESS_THRESHOLD_M = 2.0
MIN_PROGRESS_RATIO = 0.2
MAX_OVERSPEED_MPS = 2.23


@dataclass(frozen=True)
class ClosedLoopRollout:
    """What the closed-loop metrics read from a simulation.

    Attributes:
        ego_states: ``(T, 11)`` simulated rear-axle states at the history samples.
        timestamps_us: ``(T,)`` int64.
        agent_boxes: ``(T, N, 7)`` observed tracks by ``AgentIndex``.
        agent_types: ``(N,)`` ``TrackedObjectType`` ids.
        agent_valid: ``(T, N)`` bool.
        expert_states: ``(T_e, 11)`` the logged (expert) ego states of the scenario.
    """

    ego_states: np.ndarray
    timestamps_us: np.ndarray
    agent_boxes: np.ndarray
    agent_types: np.ndarray
    agent_valid: np.ndarray
    expert_states: np.ndarray

    @property
    def dt(self) -> float:
        return float(np.mean(np.diff(self.timestamps_us))) * 1e-6 if len(self.timestamps_us) > 1 else 0.1

    @property
    def ego_speed(self) -> np.ndarray:
        """``(T,)`` rear-axle speed."""
        return np.hypot(self.ego_states[:, StateIndex.VX], self.ego_states[:, StateIndex.VY])


def drivable_area_compliance(ctx: LaneGraphContext, ego_states: np.ndarray, route: list[list[int]]) -> float:
    """1 unless some ego corner is off lanes and drivable area by >= 0.3 m (``route``: centre objects per frame)."""
    corners = ego_box_corners(ego_states[:, :3])  # (T, 4, 2)
    in_lane = ctx.contains(corners).any(-1)
    in_drivable = shapely.contains_xy(ctx.drivable_area, corners[..., 0], corners[..., 1])
    outside = np.argwhere(~in_lane & ~in_drivable)
    for t, c in outside:
        point = shapely.Point(corners[t, c])
        to_route = min((float(shapely.distance(ctx.polygons[m], point)) for m in route[t]), default=np.inf)
        to_drivable = np.inf if ctx.drivable_area.is_empty else ctx.drivable_area.distance(point)
        if to_route >= DRIVABLE_MAX_VIOLATION_M and to_drivable >= DRIVABLE_MAX_VIOLATION_M:
            return 0.0
    return 1.0


def driving_direction_progress(ctx: LaneGraphContext, centers: np.ndarray, route: list[list[int]]) -> np.ndarray:
    """Per-frame progress ``(T,)`` along the baseline of the frame's first route object (0 on changes)."""
    first = np.array([r[0] if r else -1 for r in route])
    dist = ctx.project(centers, first)
    progress = np.zeros(len(centers))
    prev_id = first[0] if first[0] >= 0 else None
    prev_dist: float | None = None
    for t in range(len(centers)):
        if first[t] < 0:
            continue
        if prev_id is not None and first[t] == prev_id:
            d = float(dist[t])
            progress[t] = d - prev_dist if prev_dist is not None and d else 0.0
            prev_dist = d
        else:
            prev_dist, prev_id = None, first[t]
    return progress


def driving_direction_compliance(progress: np.ndarray, dt: float) -> float:
    """1 / 0.5 / 0 from the worst backwards progress over 1 s windows of per-frame ``progress`` ``(T,)``."""
    n = int(DIRECTION_HORIZON_S / dt + 1e-9)
    cum = np.concatenate([[0.0], np.cumsum(progress)])
    idx = np.arange(len(progress))
    window = cum[idx + 1] - cum[np.maximum(0, idx - n)]
    worst = abs(float(window.min())) if len(window) else 0.0
    if worst < DIRECTION_COMPLIANCE_M:
        return 1.0
    return 0.5 if worst < DIRECTION_VIOLATION_M else 0.0


def progress_ratio(ego_progress: float, expert_progress: float, has_route: bool = True) -> float:
    """nuPlan's ego / expert progress ratio with the 2 m threshold."""
    if not has_route:
        return 1.0
    if ego_progress < -PROGRESS_THRESHOLD_M:
        return 0.0
    t = PROGRESS_THRESHOLD_M
    return float(min(1.0, max(ego_progress, t) / max(expert_progress, t)))


def ego_is_making_progress(ratio: float) -> float:
    """1 if the progress ratio reaches 0.2."""
    return float(ratio >= MIN_PROGRESS_RATIO)


def speed_limit_compliance(
    ctx: LaneGraphContext, route: list[list[int]], speed: np.ndarray, dt: float, duration_s: float
) -> float:
    """1 - overspeed integral / (2.23 m/s x duration), floored at 0; frames without a known limit never violate."""
    limits = np.array(
        [float(np.max(ctx.speed_limits[r])) if r and np.isfinite(ctx.speed_limits[r]).all() else np.inf for r in route]
    )
    violation = np.maximum(0.0, speed - limits)
    if not violation.any():
        return 1.0
    return float(max(0.0, 1.0 - violation.sum() * dt / (MAX_OVERSPEED_MPS * max(duration_s, dt))))


def _in_intersection(ctx: LaneGraphContext, points: np.ndarray) -> np.ndarray:
    if ctx.intersections.is_empty:
        return np.zeros(len(points), dtype=bool)
    return shapely.contains_xy(ctx.intersections, points[:, 0], points[:, 1])


def rollout_collisions(rollout: ClosedLoopRollout, ctx: LaneGraphContext) -> tuple[CollisionResult, np.ndarray]:
    """nuPlan's at-fault collisions of a rollout and the ``(T,)`` "ego in the route's lanes" mask that decides the
    fault of a lateral collision (what ``no_ego_at_fault_collisions`` and TTC read)."""
    ego = rollout.ego_states
    in_route = in_common_or_connected_route_objects(ctx, ego_box_corners(ego[:, :3]))
    collisions = at_fault_collisions(ego, rollout.agent_boxes, rollout.agent_types, rollout.agent_valid, in_route)
    return collisions, in_route


def compute_closed_loop_metrics(rollout: ClosedLoopRollout, ctx: LaneGraphContext) -> dict[str, float]:
    """Every CLS metric of one rollout, plus ``score`` (:func:`cls_score`)."""
    ego = rollout.ego_states
    centers = rear_axle_to_center(ego[:, :3])[:, :2]
    expert_centers = rear_axle_to_center(rollout.expert_states[:, :3])[:, :2]
    route = ego_route(ctx, centers)
    collisions, in_route = rollout_collisions(rollout, ctx)
    ttc = time_to_collision(
        ego,
        rollout.agent_boxes,
        rollout.agent_valid,
        collisions.first_collision_frame,
        collisions.at_fault_frames,
        ~in_route | _in_intersection(ctx, ego[:, :2]),
        rollout.agent_types,
    )
    blocks = route_blocks_of_expert(ctx, expert_centers)
    ego_progress = float(progress_along_route(ctx, blocks, centers).sum())
    expert_progress = float(progress_along_route(ctx, blocks, expert_centers).sum())
    ratio = progress_ratio(ego_progress, expert_progress, has_route=bool(blocks))
    dt = rollout.dt
    duration = float(rollout.timestamps_us[-1] - rollout.timestamps_us[0]) * 1e-6
    metrics = {
        "no_ego_at_fault_collisions": collisions.score,
        "drivable_area_compliance": drivable_area_compliance(ctx, ego, route),
        "driving_direction_compliance": driving_direction_compliance(
            driving_direction_progress(ctx, centers, route), dt
        ),
        "ego_is_making_progress": ego_is_making_progress(ratio),
        "ego_progress_along_expert_route": ratio,
        "time_to_collision_within_bound": float(ttc.score),
        "speed_limit_compliance": speed_limit_compliance(ctx, route, rollout.ego_speed, dt, duration),
        "ego_is_comfortable": ego_is_comfortable(ego, rollout.timestamps_us),
    }
    metrics["score"] = cls_score(metrics)
    return metrics


def _value(metrics: Mapping[str, float | None], name: str) -> float:
    value = metrics[name]
    if value is None:
        raise KeyError(f"metric {name!r} has no score")
    return float(value)


def cls_score(metrics: Mapping[str, float | None]) -> float:
    """nuPlan's weighted-average aggregation: product of multipliers x weighted mean of the others.

    Weighted metrics that are missing or ``None`` are dropped and the weights renormalise (nuPlan's
    aggregator does the same); a missing multiplier raises ``KeyError``.
    """
    multiplier = float(np.prod([_value(metrics, name) for name in CLS_MULTIPLIERS]))
    present = {k: w for k, w in CLS_WEIGHTS.items() if metrics.get(k) is not None}
    if not present:
        return multiplier
    weighted = sum(w * _value(metrics, k) for k, w in present.items()) / sum(present.values())
    return multiplier * weighted


def simulation_rollout(scenario: Any, history: Any) -> ClosedLoopRollout:
    """The :class:`ClosedLoopRollout` of a ``simulation.closed_loop.SimulationHistory`` run on ``scenario``."""
    return ClosedLoopRollout(
        ego_states=np.asarray(history.ego_states),
        timestamps_us=np.asarray(history.timestamps_us),
        agent_boxes=np.asarray(history.agent_boxes),
        agent_types=np.asarray(history.agent_types),
        agent_valid=np.asarray(history.agent_valid),
        expert_states=np.asarray(scenario.ego.states[scenario.current_index :]),
    )


def rollout_context(rollout: ClosedLoopRollout, map_api: MapProtocol) -> LaneGraphContext:
    """The lane graph around the driven and the logged path (what the benchmark's metrics read)."""
    points = np.concatenate([rollout.ego_states[:, :2], rollout.expert_states[:, :2]])
    return build_lane_graph_context(map_api, points)


def score_simulation(scenario: Any, history: Any, map_api: MapProtocol) -> dict[str, float]:
    """CLS metrics of a ``simulation.closed_loop.SimulationHistory`` run on ``scenario`` (benchmark entry point)."""
    rollout = simulation_rollout(scenario, history)
    return compute_closed_loop_metrics(rollout, rollout_context(rollout, map_api))
