"""Traffic agents of the closed loop: log replay (non-reactive) and IDM agents on map rails (reactive).

Reactive mode follows nuPlan's ``idm_agents_observation`` (specs/nuplan.md §5):

- only VEHICLE tracks present at the first iteration become IDM agents, snapped onto the lane or
  lane connector whose baseline heading is closest to theirs; vehicles that appear later are never
  added and bicycles vanish; pedestrians and static objects are replayed from the log;
- each agent follows a path of lane baselines: its lane, then outgoing edges chosen along the
  agent's own logged future where the log says where it went, else the straightest edge;
- the leader is the nearest obstacle on the path ahead (the path buffered by half the agent's
  width): another agent, the ego, a log-replayed object, or the start of a RED lane connector
  (speed 0); without one, the end of the path at speed 0;
- the IDM law (:mod:`simulation.idm`) with nuPlan's parameters, forward Euler, acceleration clipped to
  ``[-decel_max, accel_max]``, speed floored at 0; agents farther than 100 m from the ego are removed.

Everything per step is vectorised over agents (paths are resampled at 1 m and padded).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from simulation.geometry import agent_box_corners, boxes_overlap, ego_box_corners, polyline_lengths, rotate_vectors
from simulation.idm import idm_law
from simulation.maps.layers import SemanticMapLayer
from simulation.maps.protocol import MapProtocol
from simulation.types import AGENT_DIM, AgentIndex, LogWindow, StateIndex, TrackedObjectType

#: Replayed from the log in reactive mode (nuPlan ``open_loop_detections_types``).
OPEN_LOOP_TYPES = (
    TrackedObjectType.PEDESTRIAN,
    TrackedObjectType.BARRIER,
    TrackedObjectType.CZONE_SIGN,
    TrackedObjectType.TRAFFIC_CONE,
    TrackedObjectType.GENERIC_OBJECT,
)
PATH_SPACING_M = 1.0


@dataclass(frozen=True)
class IDMParameters:
    """nuPlan's ``idm_agents_observation`` parameters."""

    target_velocity: float = 10.0
    min_gap_to_lead_agent: float = 1.0
    headway_time: float = 1.5
    accel_max: float = 1.0
    decel_max: float = 2.0
    minimum_path_length: float = 20.0
    radius: float = 100.0
    path_horizon_s: float = 16.0


@dataclass(frozen=True)
class IDMAgentsState:
    """``K`` IDM agents on padded paths of ``P`` points (1 m apart) and ``S`` map segments.

    Attributes:
        track_index: ``(K,)`` column of each agent in the scenario's ``Agents``.
        path_xy: ``(K, P, 2)`` resampled path (last point repeated as padding).
        path_s: ``(K, P)`` arc length of each path point.
        path_heading: ``(K, P)`` heading of the path at each point.
        path_length: ``(K,)`` metres.
        segment_start: ``(K, S)`` arc length where each map segment starts (inf as padding).
        segment_speed: ``(K, S)`` speed limit of each segment (NaN unknown).
        segment_connector: ``(K, S)`` object array of lane-connector ids (``""`` for lanes / padding).
        progress: ``(K,)`` arc length of the box centre on the path.
        speed: ``(K,)`` m/s.
        length, width: ``(K,)`` box size.
        active: ``(K,)`` bool, False once removed (beyond the radius).
    """

    track_index: np.ndarray
    path_xy: np.ndarray
    path_s: np.ndarray
    path_heading: np.ndarray
    path_length: np.ndarray
    segment_start: np.ndarray
    segment_speed: np.ndarray
    segment_connector: np.ndarray
    progress: np.ndarray
    speed: np.ndarray
    length: np.ndarray
    width: np.ndarray
    active: np.ndarray

    @property
    def num_agents(self) -> int:
        return int(self.track_index.shape[0])


# --------------------------------------------------------------------------------------------------
# Log replay
# --------------------------------------------------------------------------------------------------


def log_replay_agents(window: LogWindow, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Logged boxes ``(N, 7)`` and validity ``(N,)`` of every track at ``frame`` (clamped to the window)."""
    f = int(np.clip(frame, 0, window.num_frames - 1))
    return window.agents.boxes[f], window.agents.valid[f]


# --------------------------------------------------------------------------------------------------
# Paths on the map
# --------------------------------------------------------------------------------------------------


def _map_object(map_api: MapProtocol, oid: str) -> Any:
    return map_api.lanes.get(oid) or map_api.lane_connectors.get(oid)


def _start_curvature(baseline: np.ndarray) -> float:
    b = np.asarray(baseline)[:, :2]
    if len(b) < 3:
        return 0.0
    d1, d2 = b[1] - b[0], b[2] - b[1]
    turn = np.arctan2(d1[0] * d2[1] - d1[1] * d2[0], d1 @ d2)
    return float(abs(turn) / max(np.linalg.norm(d1), 1e-6))


def _choose_edge(map_api: MapProtocol, candidates: list[Any], future_xy: np.ndarray) -> Any:
    """The outgoing edge holding most of the agent's logged future, else the straightest."""
    if len(candidates) == 1:
        return candidates[0]
    if len(future_xy):
        hits = [int(shapely.contains_xy(c.polygon, future_xy[:, 0], future_xy[:, 1]).sum()) for c in candidates]
        if max(hits) > 0:
            return candidates[int(np.argmax(hits))]
    return min(candidates, key=lambda c: _start_curvature(c.baseline))


def build_path(map_api: MapProtocol, start: Any, needed_m: float, future_xy: np.ndarray) -> list[Any]:
    """Map objects from ``start`` following outgoing edges until ``needed_m`` metres (or a dead end)."""
    path = [start]
    total = float(polyline_lengths(np.asarray(start.baseline)[:, :2])[-1])
    while total < needed_m and len(path) < 64:
        candidates = [o for o in (_map_object(map_api, i) for i in path[-1].outgoing_ids) if o is not None]
        if not candidates:
            break
        nxt = _choose_edge(map_api, candidates, future_xy)
        path.append(nxt)
        total += float(polyline_lengths(np.asarray(nxt.baseline)[:, :2])[-1])
    return path


def _resample(points: np.ndarray, spacing: float) -> np.ndarray:
    cum = polyline_lengths(points)
    s = np.append(np.arange(0.0, cum[-1], spacing), cum[-1])
    return np.stack([np.interp(s, cum, points[:, 0]), np.interp(s, cum, points[:, 1])], -1)


def _snap_object(map_api: MapProtocol, box: np.ndarray) -> Any | None:
    """The lane / connector containing the box centre whose baseline heading is closest to the box heading."""
    near = map_api.proximal_ids(box[:2], 1.0, [SemanticMapLayer.LANE, SemanticMapLayer.LANE_CONNECTOR])
    best, best_err = None, np.inf
    for oid in [*near.get(SemanticMapLayer.LANE, []), *near.get(SemanticMapLayer.LANE_CONNECTOR, [])]:
        obj = _map_object(map_api, oid)
        if obj is None or not shapely.contains_xy(obj.polygon, box[0], box[1]):
            continue
        b = np.asarray(obj.baseline)[:, :2]
        k = int(np.argmin(np.linalg.norm(b - box[:2], axis=-1)))
        d = b[min(k + 1, len(b) - 1)] - b[max(k - 1, 0)] if len(b) > 1 else np.array([1.0, 0.0])
        err = abs((np.arctan2(d[1], d[0]) - box[AgentIndex.HEADING] + np.pi) % (2 * np.pi) - np.pi)
        if err < best_err:
            best, best_err = obj, err
    return best


def _concat_baselines(objs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Joined baseline ``(P, 2)`` of ``objs`` and the arc length ``(len(objs),)`` where each one starts."""
    parts = [np.asarray(o.baseline, dtype=np.float64)[:, :2] for o in objs]
    lengths = np.array([polyline_lengths(p)[-1] for p in parts])
    pts = [parts[0]] + [p[1:] if np.allclose(p[0], q[-1], atol=1e-3) else p for q, p in zip(parts, parts[1:])]
    return np.concatenate(pts), np.concatenate([[0.0], np.cumsum(lengths)[:-1]])


@dataclass
class _AgentPlan:
    track: int
    path: np.ndarray
    starts: np.ndarray
    speeds: np.ndarray
    connectors: list[str]
    progress: float
    speed: float
    length: float
    width: float


def _plan_agent(window: LogWindow, map_api: MapProtocol, frame: int, n: int, ego_speed: float, params: IDMParameters):
    box = window.agents.boxes[frame, n]
    start = _snap_object(map_api, box)
    if start is None:
        return None
    later = window.agents.valid[frame + 1 :, n]
    future = window.agents.boxes[frame + 1 :, n, :2][later]
    speed = float(np.hypot(box[AgentIndex.VX], box[AgentIndex.VY]))
    speed = ego_speed if not np.isfinite(speed) else speed
    v0 = params.target_velocity if start.speed_limit_mps is None else float(start.speed_limit_mps)
    needed = params.minimum_path_length + v0 * params.headway_time + max(speed, v0) * params.path_horizon_s
    objs = build_path(map_api, start, needed + float(polyline_lengths(np.asarray(start.baseline)[:, :2])[-1]), future)
    path, starts = _concat_baselines(objs)
    path = _resample(path, PATH_SPACING_M)
    s0 = float(_project(path[None], box[None, None, :2])[0][0, 0])
    return _AgentPlan(
        track=n,
        path=path,
        starts=starts,
        speeds=np.array([np.nan if o.speed_limit_mps is None else float(o.speed_limit_mps) for o in objs]),
        connectors=[str(o.id) if o.id in map_api.lane_connectors else "" for o in objs],
        progress=s0,
        speed=speed,
        length=float(box[AgentIndex.LENGTH]),
        width=float(box[AgentIndex.WIDTH]),
    )


def _pad(rows: list[np.ndarray], fill: Any, dtype: Any = np.float64) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width, *np.shape(rows[0])[1:]) if rows else (0, 0), fill, dtype=dtype)
    for k, r in enumerate(rows):
        out[k, : len(r)] = r
        if fill is None and len(r):  # path padding repeats the last point
            out[k, len(r) :] = r[-1]
    return out


def build_idm_agents(
    window: LogWindow, map_api: MapProtocol, ego_state: np.ndarray, frame: int, params: IDMParameters = IDMParameters()
) -> IDMAgentsState:
    """IDM agents from the VEHICLE tracks valid at ``frame``, snapped on the map (nuPlan's rail agents).

    Agents off every lane, or overlapping the ego or an already placed agent once snapped, are dropped.
    """
    types, valid = window.agents.types, window.agents.valid[frame]
    ego_speed = float(np.hypot(ego_state[StateIndex.VX], ego_state[StateIndex.VY]))
    placed: list[_AgentPlan] = []
    occupied = [ego_box_corners(ego_state[:3])]
    for n in np.flatnonzero(valid & (types == TrackedObjectType.VEHICLE)):
        plan = _plan_agent(window, map_api, frame, int(n), ego_speed, params)
        if plan is None:
            continue
        pose = _path_poses(plan.path[None], np.array([plan.progress]))[0]
        corners = agent_box_corners(np.array([*pose, 0.0, 0.0, plan.length, plan.width]))
        if any(bool(boxes_overlap(corners, c)) for c in occupied):
            continue
        occupied.append(corners)
        placed.append(plan)
    if not placed:
        return _empty_state()
    paths = _pad([p.path for p in placed], None)
    return IDMAgentsState(
        track_index=np.array([p.track for p in placed], dtype=np.int64),
        path_xy=paths,
        path_s=polyline_lengths(paths),
        path_heading=_path_headings(paths),
        path_length=np.array([polyline_lengths(p.path)[-1] for p in placed]),
        segment_start=_pad([p.starts for p in placed], np.inf),
        segment_speed=_pad([p.speeds for p in placed], np.nan),
        segment_connector=_pad([np.array(p.connectors, dtype=object) for p in placed], "", dtype=object),
        progress=np.array([p.progress for p in placed]),
        speed=np.array([p.speed for p in placed]),
        length=np.array([p.length for p in placed]),
        width=np.array([p.width for p in placed]),
        active=np.ones(len(placed), dtype=bool),
    )


def _empty_state() -> IDMAgentsState:
    z = np.zeros(0)
    return IDMAgentsState(
        np.zeros(0, dtype=np.int64), np.zeros((0, 1, 2)), np.zeros((0, 1)), np.zeros((0, 1)), z,
        np.zeros((0, 1)), np.zeros((0, 1)),
        np.zeros((0, 1), dtype=object), z, z, z, z, np.zeros(0, dtype=bool),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Batched path geometry
# --------------------------------------------------------------------------------------------------


def _path_headings(paths: np.ndarray) -> np.ndarray:
    """``(K, P)`` heading of padded paths ``(K, P, 2)``; zero-length (padding) steps keep the last heading."""
    d = np.diff(paths, axis=1)
    d = np.concatenate([d, d[:, -1:]], 1) if d.shape[1] else np.zeros_like(paths)
    moving = np.linalg.norm(d, axis=-1) > 1e-9
    idx = np.where(moving, np.arange(paths.shape[1])[None], 0)
    idx = np.maximum.accumulate(idx, axis=1)
    h = np.arctan2(d[..., 1], d[..., 0])
    return np.take_along_axis(h, idx, 1)


def _project(
    paths: np.ndarray, points: np.ndarray, path_s: np.ndarray | None = None, heading: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Arc length and signed lateral offset ``(K, M)`` of points ``(K, M, 2)`` on paths ``(K, P, 2)``.

    Nearest path point, refined along its tangent (paths are sampled every metre).
    """
    s_all = polyline_lengths(paths) if path_s is None else path_s
    heading = _path_headings(paths) if heading is None else heading
    # squared distances (K, M, P) as |p|^2 - 2 p.q + |q|^2 (one batched matmul)
    d2 = (points**2).sum(-1)[..., None] - 2.0 * points @ paths.transpose(0, 2, 1) + (paths**2).sum(-1)[:, None]
    k = d2.argmin(-1)
    base = np.take_along_axis(paths, k[..., None].repeat(2, -1), 1)
    h = np.take_along_axis(heading, k, 1)
    rel = points - base
    along = np.cos(h) * rel[..., 0] + np.sin(h) * rel[..., 1]
    lateral = -np.sin(h) * rel[..., 0] + np.cos(h) * rel[..., 1]
    s = np.take_along_axis(s_all, k, 1) + along
    return s, lateral


def _path_window(state: IDMAgentsState, ks: np.ndarray, lookahead: float) -> tuple[np.ndarray, ...]:
    """Points, arc lengths and headings ``(Q, W, ...)`` of the paths of agents ``ks`` from just behind each
    agent to ``lookahead`` metres ahead (paths are sampled every metre)."""
    width = int(np.ceil(lookahead / PATH_SPACING_M)) + 10
    last = state.path_xy.shape[1] - 1
    start = np.clip((state.progress[ks] / PATH_SPACING_M).astype(np.int64) - 5, 0, last)
    idx = np.minimum(start[:, None] + np.arange(width)[None], last)
    return (
        np.take_along_axis(state.path_xy[ks], idx[..., None].repeat(2, -1), 1),
        np.take_along_axis(state.path_s[ks], idx, 1),
        np.take_along_axis(state.path_heading[ks], idx, 1),
    )


def _path_poses(
    paths: np.ndarray, s: np.ndarray, path_s: np.ndarray | None = None, heading: np.ndarray | None = None
) -> np.ndarray:
    """Poses ``(K, 3)`` at arc lengths ``s`` ``(K,)`` along padded paths ``(K, P, 2)`` (clamped to the ends)."""
    s_all = polyline_lengths(paths) if path_s is None else path_s
    n = paths.shape[1]
    i = np.clip((s_all < s[:, None]).sum(1) - 1, 0, max(n - 2, 0))
    j = np.minimum(i + 1, n - 1)
    rows = np.arange(len(s))
    s0, s1 = s_all[rows, i], s_all[rows, j]
    w = np.clip((s - s0) / np.maximum(s1 - s0, 1e-9), 0.0, 1.0)
    xy = paths[rows, i] + w[:, None] * (paths[rows, j] - paths[rows, i])
    h = (_path_headings(paths) if heading is None else heading)[rows, i]
    return np.concatenate([xy, h[:, None]], -1)


# --------------------------------------------------------------------------------------------------
# One IDM step
# --------------------------------------------------------------------------------------------------


def idm_boxes(state: IDMAgentsState) -> np.ndarray:
    """Current boxes ``(K, 7)`` of the agents (centre on the path, velocity along it)."""
    pose = _path_poses(state.path_xy, state.progress, state.path_s, state.path_heading)
    vel = state.speed[:, None] * np.stack([np.cos(pose[:, 2]), np.sin(pose[:, 2])], -1)
    return np.concatenate([pose, vel, state.length[:, None], state.width[:, None]], -1)


def _obstacles(state: IDMAgentsState, ego_state: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corners ``(O, 4, 2)`` and global velocities ``(O, 2)``: ego, the K agents, then ``others`` ``(J, 7)``."""
    boxes = idm_boxes(state)
    ego_v = rotate_vectors(ego_state[[StateIndex.VX, StateIndex.VY]], ego_state[StateIndex.HEADING])
    corners = np.concatenate(
        [ego_box_corners(ego_state[None, :3]), agent_box_corners(boxes), agent_box_corners(others)], 0
    )
    vel = np.concatenate([ego_v[None], boxes[:, 3:5], others[:, 3:5]], 0)
    return corners, vel


def leader_gaps(
    state: IDMAgentsState, ego_state: np.ndarray, others: np.ndarray, lookahead: float = 60.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gap ``(K,)`` from each agent's front to the nearest obstacle on its path and that obstacle's speed
    along the agent's heading (inf / 0 when none). Obstacles: the ego, the other agents, ``others`` ``(J, 7)``."""
    k_n = state.num_agents
    corners, vel = _obstacles(state, ego_state, others)
    gap, lead_v = np.full(k_n, np.inf), np.zeros(k_n)
    pose = _path_poses(state.path_xy, state.progress, state.path_s, state.path_heading)
    rel = corners.mean(1)[None] - pose[:, None, :2]  # (K, O, 2)
    ahead_x = np.cos(pose[:, 2:3]) * rel[..., 0] + np.sin(pose[:, 2:3]) * rel[..., 1]
    dist = np.linalg.norm(rel, axis=-1)
    candidate = (dist < lookahead) & (ahead_x > -10.0) & state.active[:, None]
    candidate[np.arange(k_n), 1 + np.arange(k_n)] = False  # an agent is not its own leader
    candidate[:, 1 : 1 + k_n] &= state.active[None]
    ks, os_ = np.nonzero(candidate)
    if len(ks) == 0:
        return gap, lead_v
    px, ps, ph = _path_window(state, ks, lookahead)
    s, lat = _project(px, corners[os_], ps, ph)  # (Q, 4)
    front = state.progress[ks] + state.length[ks] / 2.0
    ahead = (s > state.progress[ks, None]) & (s <= state.path_length[ks, None])
    half = state.width[ks, None] / 2.0
    straddle = (np.where(ahead, lat, np.inf).min(1) < 0) & (np.where(ahead, lat, -np.inf).max(1) > 0)
    on_path = ahead & ((np.abs(lat) <= half) | straddle[:, None])
    pair_gap = np.where(on_path, s, np.inf).min(1) - front
    best = np.full(k_n, np.inf)
    np.minimum.at(best, ks, pair_gap)
    win = np.isfinite(pair_gap) & (pair_gap == best[ks])
    gap[ks[win]] = pair_gap[win]
    h = pose[ks[win], 2]
    lead_v[ks[win]] = vel[os_[win], 0] * np.cos(h) + vel[os_[win], 1] * np.sin(h)
    return gap, lead_v


def _red_light_gaps(state: IDMAgentsState, red_ids: set[str]) -> np.ndarray:
    """Gap ``(K,)`` from each agent's front to the start of the next RED lane connector on its path."""
    if not red_ids:
        return np.full(state.num_agents, np.inf)
    red = np.isin(state.segment_connector, list(red_ids))
    front = (state.progress + state.length / 2.0)[:, None]
    ahead = red & (state.segment_start >= front)
    return np.where(ahead, state.segment_start - front, np.inf).min(1, initial=np.inf)


def _target_speed(state: IDMAgentsState, params: IDMParameters) -> np.ndarray:
    seg = np.clip((state.segment_start <= state.progress[:, None]).sum(1) - 1, 0, state.segment_start.shape[1] - 1)
    limit = state.segment_speed[np.arange(state.num_agents), seg]
    return np.where(np.isfinite(limit) & (limit > 0), limit, params.target_velocity)


def idm_acceleration(
    speed: np.ndarray, target: np.ndarray, gap: np.ndarray, lead_speed: np.ndarray, params: IDMParameters
) -> np.ndarray:
    """:func:`idm_law` with ``params`` over ``K`` vehicles: speeds, target speeds, gaps and leader speeds ``(K,)``
    -> accelerations ``(K,)`` in ``[-decel_max, accel_max]``."""
    p = params
    return np.asarray(
        idm_law(speed, target, gap, lead_speed, p.accel_max, p.decel_max, p.min_gap_to_lead_agent, p.headway_time)
    )


def idm_step(
    state: IDMAgentsState,
    ego_state: np.ndarray,
    others: np.ndarray,
    red_ids: set[str],
    dt: float,
    params: IDMParameters = IDMParameters(),
) -> IDMAgentsState:
    """Advance the agents by ``dt`` (forward Euler) given the ego state ``(11,)``, log-replayed obstacles
    ``others`` ``(J, 7)`` and the RED lane-connector ids of the current iteration."""
    if state.num_agents == 0:
        return state
    gap, lead_v = leader_gaps(state, ego_state, others)
    red = _red_light_gaps(state, red_ids)
    end = state.path_length - state.progress - state.length / 2.0
    gaps = np.stack([gap, red, end], 0)
    which = gaps.argmin(0)
    lead_speed = np.where(which == 0, lead_v, 0.0)
    accel = idm_acceleration(state.speed, _target_speed(state, params), gaps.min(0), lead_speed, params)
    progress = state.progress + np.where(state.active, state.speed * dt, 0.0)
    speed = np.where(state.active, np.maximum(0.0, state.speed + accel * dt), state.speed)
    pose = _path_poses(state.path_xy, progress, state.path_s, state.path_heading)
    far = np.linalg.norm(pose[:, :2] - ego_state[:2], axis=-1) > params.radius
    return dataclasses.replace(state, progress=progress, speed=speed, active=state.active & ~far)


def reactive_agent_boxes(window: LogWindow, frame: int, state: IDMAgentsState) -> tuple[np.ndarray, np.ndarray]:
    """All tracks' boxes ``(N, 7)`` and validity ``(N,)`` in reactive mode: IDM agents in their own columns,
    open-loop types replayed from the log, every other track absent."""
    boxes, valid = log_replay_agents(window, frame)
    boxes = boxes.copy()
    valid = valid & np.isin(window.agents.types, OPEN_LOOP_TYPES)
    if state.num_agents:
        boxes[state.track_index] = idm_boxes(state)
        valid[state.track_index] = state.active
    return boxes, valid


def open_loop_obstacles(window: LogWindow, frame: int, state: IDMAgentsState) -> np.ndarray:
    """Log-replayed obstacle boxes ``(J, 7)`` (open-loop types valid at ``frame``) the IDM agents react to."""
    boxes, valid = log_replay_agents(window, frame)
    keep = valid & np.isin(window.agents.types, OPEN_LOOP_TYPES)
    keep[state.track_index] = False
    return boxes[keep].reshape(-1, AGENT_DIM)
