"""What a metric cache is made of, read from a log window and its map.

- :func:`interpolate_agents`: the log's agents resampled at 10 Hz as NAVSIM's metric caching does;
  :func:`interpolate_history`: the ego's past at 10 Hz (EPDMS history comfort);
- :func:`drivable_map_polygons` / :class:`MapContext`: PDM's drivable map around the ego, with its grid index;
- :func:`red_light_masks`: the on-route lane connectors that are red, per 0.1 s step;
- :func:`reference_trajectory`: the progress reference, PDM-Closed's own 10 Hz trajectory as NAVSIM caches it.

:mod:`simulation.metric_cache` assembles them into a :class:`~simulation.metric_cache.MetricCache`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulation.geometry import normalize_angle
from simulation.maps.layers import SemanticMapLayer
from simulation.maps.protocol import MapProtocol
from simulation.polygon_grid import PolygonGrid
from simulation.protocols import Observation, Planner
from simulation.types import DYNAMIC_TYPES, AgentIndex, Scene, StateIndex, TrafficLightStatus, Trajectory

#: Scored horizon: 40 steps of 0.1 s after the current state.
NUM_STEPS = 41
DT = 0.1
MAP_RADIUS = 100.0  # m around the ego centre
LOG_INTERVAL_S = 0.5

#: A :class:`~simulation.protocols.Planner` (``plan(observation) -> Trajectory``, and ideally
#: ``reference_trajectory(observation) -> Trajectory``, PDM-Closed's native 10 Hz trajectory) or a callable
#: ``(scene, map_api) -> poses (N, 3) | Trajectory`` in the current rear-axle frame.
ReferencePlanner = Planner | Callable[[Scene, Any], "np.ndarray | Trajectory"]


class MetricCacheError(ValueError):
    """A metric cache file is missing, unreadable, of another format version, or inconsistent."""


def interpolate_agents(
    boxes: np.ndarray, valid: np.ndarray, types: np.ndarray, num_steps: int, log_interval_s: float = LOG_INTERVAL_S
) -> tuple[np.ndarray, np.ndarray]:
    """Log-replay agents at 10 Hz, following NAVSIM's metric caching (specs/navsim.md §3.6).

    Each track is linearly interpolated (x, y, unwrapped heading, velocity) between its first and last
    observed frame; it does not exist outside them. A track seen in a single frame is kept, unmoved, at
    every step. Sizes come from the first observation; static object types get zero velocity.

    Args:
        boxes: ``(F, N, 7)`` global boxes at the log frames, frame 0 = current (t = 0).
        valid: ``(F, N)`` bool.
        types: ``(N,)`` ``TrackedObjectType`` ids.
        num_steps: number of 0.1 s samples (51 for 5 s, 41 for 4 s).

    Returns:
        boxes ``(num_steps, N, 7)`` and valid ``(num_steps, N)``.
    """
    horizon = (num_steps - 1) * DT
    n_frames = min(boxes.shape[0], int(round(horizon / log_interval_s)) + 1)
    frame_t = np.arange(n_frames, dtype=np.float64) * log_interval_s
    step_t = np.arange(num_steps, dtype=np.float64) * DT
    n = boxes.shape[1]
    out = np.zeros((num_steps, n, 7))
    out_valid = np.zeros((num_steps, n), dtype=bool)
    dynamic = np.isin(types, [int(t) for t in DYNAMIC_TYPES])
    for k in range(n):
        f = np.flatnonzero(valid[:n_frames, k])
        if len(f) == 0:
            continue
        first = boxes[f[0], k]
        if len(f) == 1:
            out[:, k] = first
            out_valid[:, k] = True
        else:
            mask = (frame_t[f[0]] <= step_t) & (step_t <= frame_t[f[-1]])
            t, src = step_t[mask], boxes[f, k]
            heading = np.unwrap(src[:, AgentIndex.HEADING])
            out[mask, k, AgentIndex.X] = np.interp(t, frame_t[f], src[:, AgentIndex.X])
            out[mask, k, AgentIndex.Y] = np.interp(t, frame_t[f], src[:, AgentIndex.Y])
            out[mask, k, AgentIndex.HEADING] = normalize_angle(np.interp(t, frame_t[f], heading))
            out[mask, k, AgentIndex.VX] = np.interp(t, frame_t[f], src[:, AgentIndex.VX])
            out[mask, k, AgentIndex.VY] = np.interp(t, frame_t[f], src[:, AgentIndex.VY])
            out[mask, k, AgentIndex.LENGTH] = first[AgentIndex.LENGTH]
            out[mask, k, AgentIndex.WIDTH] = first[AgentIndex.WIDTH]
            out_valid[mask, k] = True
        if not dynamic[k]:
            out[:, k, AgentIndex.VX] = 0.0
            out[:, k, AgentIndex.VY] = 0.0
    return out, out_valid


def interpolate_history(states: np.ndarray, timestamps_us: np.ndarray) -> np.ndarray:
    """Past ego states ``(H, 11)`` at 0.1 s from the oldest history frame, the last sample (t = 0) excluded.

    Linear in every column except the heading (interpolated on the unwrapped angle), from ``states`` ``(F, 11)``
    at ``timestamps_us`` ``(F,)`` (oldest first, current last).
    """
    t_us = np.arange(timestamps_us[0], timestamps_us[-1], 100_000, dtype=np.int64)[:-1]
    out = np.empty((len(t_us), states.shape[1]))
    unwrapped = states.copy()
    unwrapped[:, StateIndex.HEADING] = np.unwrap(states[:, StateIndex.HEADING])
    for c in range(states.shape[1]):
        out[:, c] = np.interp(t_us, timestamps_us, unwrapped[:, c])
    out[:, StateIndex.HEADING] = normalize_angle(out[:, StateIndex.HEADING])
    return out


def drivable_map_polygons(
    map_api: MapProtocol, center: np.ndarray, radius: float = MAP_RADIUS
) -> tuple[list, list, list]:
    """PDM's drivable map around ``center`` ``(2,)``: ``(ids, layers, polygons)`` of the roadblocks, their lanes,
    the lane connectors of the roadblock connectors, intersections and carparks within ``radius``."""
    near = map_api.proximal_ids(
        center,
        radius,
        [
            SemanticMapLayer.ROADBLOCK,
            SemanticMapLayer.ROADBLOCK_CONNECTOR,
            SemanticMapLayer.INTERSECTION,
            SemanticMapLayer.CARPARK_AREA,
        ],
    )
    ids: list[str] = []
    layers: list[int] = []
    polys: list[Any] = []

    def add(i: str, layer: SemanticMapLayer, poly: Any) -> None:
        ids.append(str(i))
        layers.append(int(layer))
        polys.append(poly)

    for rb_id in near[SemanticMapLayer.ROADBLOCK]:
        rb = map_api.roadblocks[rb_id]
        add(rb_id, SemanticMapLayer.ROADBLOCK, rb.polygon)
        for lane_id in rb.interior_ids:
            add(lane_id, SemanticMapLayer.LANE, map_api.lanes[lane_id].polygon)
    for rbc_id in near[SemanticMapLayer.ROADBLOCK_CONNECTOR]:
        for lc_id in map_api.roadblock_connectors[rbc_id].interior_ids:
            add(lc_id, SemanticMapLayer.LANE_CONNECTOR, map_api.lane_connectors[lc_id].polygon)
    for layer in (SemanticMapLayer.INTERSECTION, SemanticMapLayer.CARPARK_AREA):
        geoms = map_api.polygons(layer)
        for i in near[layer]:
            add(i, layer, geoms[i])
    return ids, layers, polys


@dataclass(frozen=True)
class MapContext:
    """PDM's drivable map around a point (:func:`drivable_map_polygons`) with its grid index.

    Attributes:
        map_api: the map it was read from.
        center: ``(2,)`` the point it was read around. radius: its radius (m).
        ids: ``(M,)`` str map ids. layers: ``(M,)`` int64 :class:`SemanticMapLayer` of each polygon.
        grid: the ``M`` polygons with a grid index for point-in-polygon tests.
    """

    map_api: MapProtocol
    center: np.ndarray
    radius: float
    ids: np.ndarray
    layers: np.ndarray
    grid: PolygonGrid

    @staticmethod
    def build(map_api: MapProtocol, center: np.ndarray, radius: float = MAP_RADIUS) -> MapContext:
        """Read the drivable map of ``map_api`` within ``radius`` of ``center`` ``(2,)``."""
        ids, layers, polys = drivable_map_polygons(map_api, center, radius)
        ids_arr, layers_arr = np.array(ids, dtype=str), np.array(layers, dtype=np.int64)
        return MapContext(map_api, center.copy(), radius, ids_arr, layers_arr, PolygonGrid.build(polys))


def red_light_masks(
    scene: Scene, route_lane_ids: set[str], num_steps: int = NUM_STEPS
) -> tuple[np.ndarray, np.ndarray]:
    """On-route red lane connectors per 0.1 s step (status held over each log interval): ``(ids (R,), mask (T, R))``."""
    ci = scene.current_index
    steps_per_frame = int(round(LOG_INTERVAL_S / DT))
    frames = np.minimum(ci + np.arange(num_steps) // steps_per_frame, scene.num_frames - 1)
    tl = scene.traffic_lights
    ids = np.array([str(i) for i in tl.lane_connector_ids])
    on_route = np.isin(ids, sorted(route_lane_ids)) if len(ids) else np.zeros(0, bool)
    red = (tl.status[frames] == TrafficLightStatus.RED) & on_route[None, :]
    keep = red.any(0)
    return ids[keep], red[:, keep]


def reference_trajectory(planner: ReferencePlanner, scene: Scene, map_api: MapProtocol) -> Trajectory:
    """The progress reference of ``scene``: local poses ``(P, 3)`` after t = 0 and their interval.

    NAVSIM's metric caching stores PDM-Closed's own trajectory (10 Hz, 5 s, the current state first) and the
    scorer samples it at 0, 0.1, ... 4 s before tracking it (specs/navsim.md §5.3). So a planner with
    ``reference_trajectory(observation)`` is asked for that trajectory; one with only ``plan(observation)``
    gives its plan (usually 8 poses at 0.5 s); a callable ``planner(scene, map_api)`` returns poses at 0.5 s
    or a :class:`~simulation.types.Trajectory`.
    """
    plan: np.ndarray | Trajectory
    if hasattr(planner, "reference_trajectory"):
        plan = planner.reference_trajectory(Observation.from_window(scene, None, map_api))
    elif hasattr(planner, "plan"):
        plan = planner.plan(Observation.from_window(scene, None, map_api))
    elif callable(planner):
        plan = planner(scene, map_api)
    else:
        raise MetricCacheError(f"{scene.token}: reference planner {planner!r} has no plan() and is not callable")
    poses = np.asarray(plan.poses if isinstance(plan, Trajectory) else plan, dtype=np.float64).reshape(-1, 3)
    interval_s = float(plan.interval_s) if isinstance(plan, Trajectory) else LOG_INTERVAL_S
    if len(poses) == 0 or not np.isfinite(poses).all() or not interval_s > 0.0:
        raise MetricCacheError(f"{scene.token}: reference planner returned no poses, NaN / inf poses or no interval")
    if isinstance(plan, Trajectory):
        return plan  # keeps what a subclass carries (a global ``start_pose``: PDM-Closed's t = 0 state)
    return Trajectory(poses, interval_s)


def reference_poses(
    planner: ReferencePlanner, scene: Scene, map_api: MapProtocol, interval_s: float = LOG_INTERVAL_S
) -> np.ndarray:
    """The reference as ``(8, 3)`` local poses at ``interval_s`` (0.5 s; the agents' format, resampled linearly in
    x, y and the unwrapped heading). Not what the metric cache tracks (:func:`reference_trajectory`)."""
    plan = reference_trajectory(planner, scene, map_api)
    poses, dt = plan.poses, plan.interval_s
    if abs(dt - interval_s) < 1e-9 and len(poses) == 8:
        return poses
    t = np.arange(len(poses) + 1) * dt
    full = np.concatenate([np.zeros((1, 3)), poses])
    full[:, 2] = np.unwrap(full[:, 2])
    want = np.arange(1, 9) * interval_s
    out = np.stack([np.interp(want, t, full[:, c]) for c in range(3)], -1)
    out[:, 2] = normalize_angle(out[:, 2])
    return out
