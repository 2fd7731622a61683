"""IDM longitudinal rollouts along a path, shared by the IDM and PDM-Closed planners.

A path is an ``(N, 2)`` global polyline; the ego (rear axle) sits at arc length ``s0`` on it. Obstacles on
the path (agents whose box meets the corridor of half the ego width around the path ahead, and the entry of
red lane connectors crossed by it) give the leader; with none the path end is the leader at 0 m/s (nuPlan's
``IDMPlanner``). The IDM law is :func:`simulation.idm.idm_law` (compiled).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import shapely
from shapely.geometry import LineString

from simulation.agents import IDMParameters
from simulation.geometry import agent_box_corners, interpolate_polyline, polyline_lengths, project_on_polyline
from simulation.idm import idm_law_compiled
from simulation.types import PACIFICA, AgentIndex

#: nuPlan ``config/simulation/planner/idm_planner.yaml``.
IDM_PLANNER_PARAMETERS = IDMParameters(
    target_velocity=10.0, min_gap_to_lead_agent=1.0, headway_time=1.5, accel_max=1.0, decel_max=3.0
)
#: PDM-Closed's IDM (specs/navsim.md §3.8).
PDM_IDM_PARAMETERS = IDMParameters(
    target_velocity=15.0, min_gap_to_lead_agent=1.0, headway_time=1.5, accel_max=1.5, decel_max=3.0
)


@dataclass(frozen=True)
class Leader:
    """Nearest obstacle ahead: ``gap`` (m, ego front bumper to its rear) and its speed along the path."""

    gap: float
    speed: float


def offset_path(path: np.ndarray, offset: float) -> np.ndarray:
    """``(N, 2)`` polyline shifted ``offset`` metres to the left (negative: right) of ``path``."""
    if offset == 0.0:
        return path
    tangent = np.gradient(path, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=-1, keepdims=True), 1e-9)
    return path + offset * np.stack([-tangent[:, 1], tangent[:, 0]], -1)


def find_leader(
    path: np.ndarray,
    s0: float,
    boxes: np.ndarray,
    stop_points: np.ndarray,
    lookahead: float,
    ego_width: float = PACIFICA.width,
    front_length: float = PACIFICA.front_length,
    box_polygons: np.ndarray | None = None,
) -> Leader:
    """Leader of an ego at ``s0`` on ``path`` ``(N, 2)``.

    Args:
        boxes: ``(M, 7)`` agent boxes (:class:`AgentIndex`, global).
        stop_points: ``(R, 2)`` entry points of red lane connectors (leaders at 0 m/s when on the path).
        lookahead: metres of path searched ahead of the rear axle.
        box_polygons: ``(M,)`` shapely polygons of ``boxes`` when the caller already has them (several paths).
    """
    cum = polyline_lengths(path)
    end = min(float(cum[-1]), s0 + lookahead)
    best = Leader(gap=float(cum[-1]) - s0 - front_length, speed=0.0)
    if end <= s0 + 1e-3:
        return best
    window = cum[(cum > s0) & (cum < end)]
    ahead = interpolate_polyline(path, np.concatenate([[s0], window, [end]]))[:, :2]
    corridor = LineString(ahead).buffer(ego_width / 2.0, cap_style="flat")
    if len(boxes):
        polys = box_polygons if box_polygons is not None else agent_box_polygons(boxes)
        hit = np.flatnonzero(shapely.intersects(corridor, polys))
        if len(hit):
            s, _ = project_on_polyline(boxes[hit, :2], path)
            gap = s - boxes[hit, AgentIndex.LENGTH] / 2.0 - s0 - front_length
            tangent = interpolate_polyline(path, s)[:, 2]
            along = boxes[hit, AgentIndex.VX] * np.cos(tangent) + boxes[hit, AgentIndex.VY] * np.sin(tangent)
            front = s > s0
            if front.any():
                k = np.flatnonzero(front)[np.argmin(gap[front])]
                if gap[k] < best.gap:
                    best = Leader(float(gap[k]), float(max(along[k], 0.0)))
    if len(stop_points):
        s, lateral = project_on_polyline(stop_points, path)
        on = (np.abs(lateral) < ego_width / 2.0 + 1.0) & (s > s0) & (s < end)
        if on.any():
            gap = float(s[on].min() - s0 - front_length)
            if gap < best.gap:
                best = Leader(gap, 0.0)
    return best


def agent_box_polygons(boxes: np.ndarray) -> np.ndarray:
    """``(M,)`` shapely polygons of agent boxes ``(M, 7)``."""
    return np.asarray(shapely.polygons(agent_box_corners(boxes)))


def idm_rollout(
    speed: np.ndarray,
    target: np.ndarray,
    gap: np.ndarray,
    lead_speed: np.ndarray,
    horizon_s: float,
    dt: float,
    params: IDMParameters,
) -> np.ndarray:
    """Travelled distance ``(K, S + 1)`` at ``0, dt, ... horizon_s`` of ``K`` IDM rollouts (forward Euler).

    The leader moves on at its constant speed; the ego speed is floored at 0.
    """
    steps = int(round(horizon_s / dt))
    speed = np.ascontiguousarray(speed, dtype=np.float64).reshape(-1)
    target, gap, lead_speed = (
        np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=np.float64), speed.shape))
        for x in (target, gap, lead_speed)
    )
    p = params
    return _idm_rollout_kernel(
        speed,
        target,
        gap,
        lead_speed,
        steps,
        float(dt),
        float(p.accel_max),
        float(p.decel_max),
        float(p.min_gap_to_lead_agent),
        float(p.headway_time),
    )


@numba.njit(cache=True)
def _idm_rollout_kernel(
    speed: np.ndarray,
    target: np.ndarray,
    gap: np.ndarray,
    lead_speed: np.ndarray,
    steps: int,
    dt: float,
    a: float,
    b: float,
    s0: float,
    headway: float,
) -> np.ndarray:
    """:func:`idm_rollout` rollout by rollout, with :func:`simulation.idm.idm_law` (compiled) at every step."""
    out = np.zeros((len(speed), steps + 1))
    for i in range(len(speed)):
        v, progress = speed[i], 0.0
        for k in range(steps):
            current_gap = gap[i] + lead_speed[i] * k * dt - progress
            accel = idm_law_compiled(v, target[i], current_gap, lead_speed[i], a, b, s0, headway)
            progress = progress + v * dt
            v = max(v + accel * dt, 0.0)
            out[i, k + 1] = progress
    return out
