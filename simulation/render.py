"""Ego-centric BEV raster: a fast rasteriser of the layout declared once in :mod:`simulation.raster_config`
(channels, resolution, extent; its names are importable from here too).

Frame and pixel conventions (the planners and ``bev_warp`` rely on them):

- The raster is ego-centric on the current **rear axle**: ego +x (forward) points **up** the image
  (towards row 0) and ego +y (left) points **left** (towards column 0).
- Pixel ``(row, col)`` covers the continuous square ``[col, col + 1) x [row, row + 1)``; the rear axle
  sits at continuous ``(u, v) = (width / 2, height - behind_m / resolution)``, so by default the raster
  sees 48 m ahead, 16 m behind and 32 m to each side (256 x 256 px at 0.25 m/px).
  :attr:`RasterConfig.extent` gives ``(x_min, x_max, y_min, y_max)`` in metres.
- A pixel of a filled channel is set when its **centre** lies inside the object: exactly for edges along
  the pixel grid, to about 0.2 px for slanted edges (coordinates carry 1/16 px). cv2's scan-line fill is
  inclusive (it also sets pixels whose centre is up to half a pixel outside), so polygons are eroded by
  half a pixel before filling: map polygons once per map, boxes per frame. Every box still covers at
  least one pixel. Lines are 1 px wide (8-connected). The lanes of a route are united (sub-pixel gaps
  closed) before erosion, so no seam opens between neighbours; red-light connectors are eroded by a
  twentieth of a pixel only, so neighbouring red connectors leave no seam either (they may spill up to
  0.45 px over their edges).
- Channel values are in ``[0, 1]`` (float32). All channels are binary except ``history``: the boxes of
  the agents and the ego at past frames, oldest faintest: past frame ``j`` of ``P`` (0 = oldest) has
  intensity ``(j + 1) / (P + 1)``, newer frames drawn over older ones.

Speed: the map's polygons and polylines are flattened once per map into vertex arrays (cached per
``MapAPI`` object and resolution; the drivable area and route areas cut into 32 m tiles); each frame is a
view cull on bounding boxes, one vectorised SE2 transform of the visible vertices and cv2 fills on int32
fixed-point coordinates (``benchmarks/bench_data.py`` compares it with a shapely + PIL rasteriser).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import cv2
import numpy as np

from simulation.geometry import box_corners, global_to_local, transform_points_to_global, transform_points_to_local
from simulation.maps.protocol import MapProtocol
from simulation.raster_config import AGENT_CHANNEL_TYPES, CHANNELS, DEFAULT_RASTER, RasterConfig, RenderError
from simulation.raster_geometry import MapRasterGeometry, RingSet
from simulation.types import (
    PACIFICA,
    AgentIndex,
    Agents,
    LogWindow,
    StateIndex,
    TrafficLights,
    VehicleParameters,
)

logger = logging.getLogger(__name__)

#: Sub-pixel precision of the cv2 fixed-point coordinates (1/16 px).
SHIFT_BITS = 4
_ONE = float(1 << SHIFT_BITS)


# --------------------------------------------------------------------------------------------------
# Coordinates
# --------------------------------------------------------------------------------------------------


def ego_to_pixel(points: np.ndarray, config: RasterConfig = DEFAULT_RASTER) -> np.ndarray:
    """Continuous pixel coordinates ``(..., 2)`` = (u = column, v = row) of ego-frame points ``(..., 2)``."""
    u0, v0 = config.ego_pixel
    return np.stack([u0 - points[..., 1] / config.resolution_m, v0 - points[..., 0] / config.resolution_m], -1)


def pixel_to_ego(pixels: np.ndarray, config: RasterConfig = DEFAULT_RASTER) -> np.ndarray:
    """Inverse of :func:`ego_to_pixel`: ego-frame points ``(..., 2)`` of continuous ``(u, v)``."""
    u0, v0 = config.ego_pixel
    return np.stack([(v0 - pixels[..., 1]) * config.resolution_m, (u0 - pixels[..., 0]) * config.resolution_m], -1)


def _fixed_point(pixels: np.ndarray) -> np.ndarray:
    """cv2 fixed-point int32 coordinates of continuous pixels (cv2 puts integers at pixel centres)."""
    return np.rint((pixels - 0.5) * _ONE).astype(np.int32)


def _view_bbox(ego_pose: np.ndarray, config: RasterConfig) -> np.ndarray:
    """Global axis-aligned ``(4,)`` bbox (xmin, ymin, xmax, ymax) of the raster footprint."""
    x_min, x_max, y_min, y_max = config.extent
    corners = np.array([[x_min, y_min], [x_min, y_max], [x_max, y_min], [x_max, y_max]])
    g = transform_points_to_global(corners, ego_pose)
    return np.concatenate([g.min(0), g.max(0)])


# --------------------------------------------------------------------------------------------------
# Drawing primitives
# --------------------------------------------------------------------------------------------------


def _draw_rings(
    plane: np.ndarray,
    rings: RingSet,
    object_mask: np.ndarray,
    ego_pose: np.ndarray,
    config: RasterConfig,
    value: float = 1.0,
) -> None:
    """Fill (closed sets, per object, even-odd within an object) or stroke (open sets) selected objects."""
    if not object_mask.any():
        return
    vertex_index, lengths, objects = rings.select(object_mask)
    if len(lengths) == 0:
        return
    local = transform_points_to_local(rings.vertices[vertex_index], ego_pose)
    pts = _fixed_point(ego_to_pixel(local, config))
    polys = np.split(pts, np.cumsum(lengths)[:-1])
    if not rings.closed:
        cv2.polylines(plane, polys, False, value, 1, cv2.LINE_8, SHIFT_BITS)
        return
    starts = np.flatnonzero(np.r_[True, objects[1:] != objects[:-1]])
    ends = np.r_[starts[1:], len(objects)]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        cv2.fillPoly(plane, polys[a:b], value, cv2.LINE_8, SHIFT_BITS)


def _box_quads(boxes: np.ndarray, ego_pose: np.ndarray, config: RasterConfig) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point pixel corners ``(N, 4, 2)`` int32 of global boxes ``(N, 7)`` (sizes eroded by one pixel, at
    least 1e-3 m) and ``(N,)`` whether each box can touch the raster."""
    local = _boxes_to_local(boxes, ego_pose)
    shrink = config.resolution_m
    corners = box_corners(
        local[:, AgentIndex.X],
        local[:, AgentIndex.Y],
        local[:, AgentIndex.HEADING],
        np.maximum(local[:, AgentIndex.LENGTH] - shrink, 1e-3),
        np.maximum(local[:, AgentIndex.WIDTH] - shrink, 1e-3),
    )
    return _fixed_point(ego_to_pixel(corners, config)), _visible(local, config)


def _fill_quads(plane: np.ndarray, quads: np.ndarray, value: float = 1.0) -> None:
    for quad in quads:
        cv2.fillConvexPoly(plane, quad, value, cv2.LINE_8, SHIFT_BITS)


def _boxes_to_local(boxes: np.ndarray, ego_pose: np.ndarray) -> np.ndarray:
    """Agent boxes ``(N, 7)`` (global) with pose columns in the ego frame."""
    out = np.array(boxes, dtype=np.float64, copy=True)
    out[:, : AgentIndex.HEADING + 1] = global_to_local(boxes[:, : AgentIndex.HEADING + 1], ego_pose)
    return out


def _visible(boxes_local: np.ndarray, config: RasterConfig) -> np.ndarray:
    """``(N,)`` boxes whose centre is within the raster (plus their half diagonal)."""
    x_min, x_max, y_min, y_max = config.extent
    r = 0.5 * np.hypot(boxes_local[:, AgentIndex.LENGTH], boxes_local[:, AgentIndex.WIDTH])
    x, y = boxes_local[:, AgentIndex.X], boxes_local[:, AgentIndex.Y]
    return (x > x_min - r) & (x < x_max + r) & (y > y_min - r) & (y < y_max + r)


def ego_box(vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """``(7,)`` ego footprint box in its own rear-axle frame."""
    box = np.zeros(len(AgentIndex))
    box[AgentIndex.X] = vehicle.rear_axle_to_center
    box[AgentIndex.LENGTH] = vehicle.length
    box[AgentIndex.WIDTH] = vehicle.width
    return box


def ego_boxes(poses: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """``(T, 7)`` global ego boxes (centre pose, size) of rear-axle poses ``(T, 3)``."""
    out = np.zeros((len(poses), len(AgentIndex)))
    out[:, AgentIndex.X] = poses[:, 0] + vehicle.rear_axle_to_center * np.cos(poses[:, 2])
    out[:, AgentIndex.Y] = poses[:, 1] + vehicle.rear_axle_to_center * np.sin(poses[:, 2])
    out[:, AgentIndex.HEADING] = poses[:, 2]
    out[:, AgentIndex.LENGTH] = vehicle.length
    out[:, AgentIndex.WIDTH] = vehicle.width
    return out


# --------------------------------------------------------------------------------------------------
# Map geometry cache
# --------------------------------------------------------------------------------------------------

_CACHE: OrderedDict[tuple[int, float], tuple[Any, MapRasterGeometry]] = OrderedDict()
_CACHE_SIZE = 8


def map_geometry(map_api: MapProtocol, resolution_m: float) -> MapRasterGeometry:
    """Flattened raster geometry of ``map_api`` (polygons eroded by half a pixel), cached per map and resolution."""
    key = (id(map_api), float(resolution_m))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is map_api:
        _CACHE.move_to_end(key)
        return hit[1]
    geometry = MapRasterGeometry.from_map_api(map_api, erode_m=resolution_m / 2.0)
    _CACHE[key] = (map_api, geometry)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    logger.debug("raster geometry of %s cached (%d vertices)", getattr(map_api, "map_name", "?"), geometry.num_vertices)
    return geometry


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _check_inputs(ego_pose, boxes, types, history_boxes, history_valid) -> None:
    if ego_pose.shape != (3,) or not np.isfinite(ego_pose).all():
        raise RenderError(f"ego_pose must be a finite (3,) array, got shape {ego_pose.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != len(AgentIndex) or types.shape != (len(boxes),):
        raise RenderError(f"boxes must be (N, 7) with types (N,), got {boxes.shape} and {types.shape}")
    if not np.isfinite(boxes).all():
        raise RenderError("agent boxes contain NaN or inf")
    if history_boxes is not None:
        if history_boxes.ndim != 3 or history_boxes.shape[2] != len(AgentIndex):
            raise RenderError(f"history_boxes must be (H, M, 7), got {history_boxes.shape}")
        if history_valid is not None and history_valid.shape != history_boxes.shape[:2]:
            raise RenderError(f"history_valid shape {history_valid.shape} != {history_boxes.shape[:2]}")


def _render_map(
    planes: dict[str, np.ndarray], geometry: MapRasterGeometry, ego_pose, red_ids, route_ids, map_api, config
) -> None:
    view = _view_bbox(ego_pose, config)
    sets = {
        "drivable_area": geometry.drivable,
        "crosswalks": geometry.crosswalks,
        "lane_centerlines": geometry.centerlines,
        "lane_boundaries": geometry.boundaries,
    }
    if "route" in planes and len(route_ids):
        sets["route"] = geometry.route(map_api, tuple(str(i) for i in route_ids))
    for name, rings in sets.items():
        if name in planes:
            _draw_rings(planes[name], rings, rings.in_view(view), ego_pose, config)
    if "red_lights" in planes and len(red_ids):
        red = geometry.connectors
        _draw_rings(planes["red_lights"], red, red.in_view(view) & red.id_mask(map(str, red_ids)), ego_pose, config)


def _render_agents(planes, ego_pose, boxes, types, history_boxes, history_valid, config) -> None:
    quads, visible = _box_quads(boxes, ego_pose, config)
    for name, kinds in AGENT_CHANNEL_TYPES.items():
        if name in planes:
            _fill_quads(planes[name], quads[visible & np.isin(types, kinds)])
    if "ego" in planes:
        _fill_quads(planes["ego"], _box_quads(ego_box()[None], np.zeros(3), config)[0])
    if "history" in planes and history_boxes is not None and len(history_boxes):
        num_past, num_boxes = history_boxes.shape[:2]
        keep = np.isfinite(history_boxes).all(-1)
        if history_valid is not None:
            keep &= history_valid
        frame = np.repeat(np.arange(num_past), num_boxes).reshape(num_past, num_boxes)[keep]
        quads, visible = _box_quads(history_boxes[keep], ego_pose, config)
        for j in range(num_past):  # oldest first: newer frames are drawn over older ones
            _fill_quads(planes["history"], quads[visible & (frame == j)], (j + 1) / (num_past + 1))


def render_raster(
    map_api: MapProtocol | None,
    ego_pose: np.ndarray,
    boxes: np.ndarray,
    types: np.ndarray,
    red_connector_ids: Any = (),
    route_ids: Any = (),
    config: RasterConfig = DEFAULT_RASTER,
    history_boxes: np.ndarray | None = None,
    history_valid: np.ndarray | None = None,
) -> np.ndarray:
    """Render one ego-centric raster.

    Args:
        map_api: a :class:`~simulation.maps.api.MapAPI` (``None`` renders empty map channels).
        ego_pose: ``(3,)`` global rear-axle pose (x, y, heading).
        boxes: ``(N, 7)`` global agent boxes at the current frame (:class:`AgentIndex` columns).
        types: ``(N,)`` :class:`TrackedObjectType` ids.
        red_connector_ids: ids of lane connectors whose light is red.
        route_ids: route roadblock (and roadblock-connector) ids.
        config: the raster layout.
        history_boxes: ``(P, M, 7)`` global boxes at past frames, oldest first (agents and ego), or ``None``.
        history_valid: ``(P, M)`` bool, or ``None`` (non-finite rows are skipped either way).

    Returns:
        ``(C, H, W)`` float32 raster in ``config.channels`` order.
    """
    ego_pose = np.asarray(ego_pose, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, len(AgentIndex))
    types = np.asarray(types, dtype=np.int64).reshape(-1)
    _check_inputs(ego_pose, boxes, types, history_boxes, history_valid)
    planes = {
        c: np.zeros((config.height_px, config.width_px), np.float32 if c == "history" else np.uint8)
        for c in config.channels
    }
    if map_api is not None:
        geometry = map_geometry(map_api, config.resolution_m)
        _render_map(planes, geometry, ego_pose, red_connector_ids, route_ids, map_api, config)
    _render_agents(planes, ego_pose, boxes, types, history_boxes, history_valid, config)
    out = np.empty(config.shape, np.float32)
    for k, c in enumerate(config.channels):
        out[k] = planes[c]
    return out


def history_indices(timestamps_us: np.ndarray, current_index: int, config: RasterConfig = DEFAULT_RASTER) -> np.ndarray:
    """Indices (oldest first, current excluded) of the frames nearest to ``t - k * history_interval_s``."""
    steps = int(np.floor(config.history_s / config.history_interval_s + 1e-9))
    if steps == 0 or current_index == 0:
        return np.zeros(0, dtype=np.int64)
    past_t = timestamps_us[:current_index].astype(np.float64)
    targets = timestamps_us[current_index] - 1e6 * config.history_interval_s * np.arange(steps, 0, -1)
    idx = np.abs(past_t[None, :] - targets[:, None]).argmin(1)
    tol = 0.5e6 * config.history_interval_s
    keep = np.abs(past_t[idx] - targets) <= tol
    return np.unique(idx[keep])


def _history_arrays(ego_states: np.ndarray, agents: Agents, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Past boxes ``(P, N + 1, 7)`` (agents then ego) and validity ``(P, N + 1)``."""
    ego = ego_boxes(ego_states[frames, : StateIndex.HEADING + 1])[:, None]
    boxes = np.concatenate([agents.boxes[frames], ego], 1)
    valid = np.concatenate([agents.valid[frames], np.ones((len(frames), 1), bool)], 1)
    return boxes, valid


def render_window(
    map_api: MapProtocol | None,
    ego_states: np.ndarray,
    timestamps_us: np.ndarray,
    agents: Agents,
    traffic_lights: TrafficLights,
    route_ids: Any,
    current_index: int,
    config: RasterConfig = DEFAULT_RASTER,
) -> np.ndarray:
    """Raster ``(C, H, W)`` of frame ``current_index`` of a window of ``T`` frames (ego ``(T, 11)``)."""
    frames = history_indices(np.asarray(timestamps_us), current_index, config)
    valid = agents.valid[current_index]
    history_boxes, history_valid = _history_arrays(ego_states, agents, frames)
    return render_raster(
        map_api,
        ego_states[current_index, : StateIndex.HEADING + 1],
        agents.boxes[current_index][valid],
        agents.types[valid],
        traffic_lights.red_ids(current_index),
        route_ids,
        config,
        history_boxes,
        history_valid,
    )


def render_bev(scene: LogWindow, map_api: MapProtocol, config: RasterConfig = DEFAULT_RASTER) -> np.ndarray:
    """Raster ``(C, H, W)`` float32 of a :class:`Scene` (or any log window) at its current frame."""
    return render_window(
        map_api,
        scene.ego.states,
        scene.timestamps_us,
        scene.agents,
        scene.traffic_lights,
        scene.route_roadblock_ids,
        scene.current_index,
        config,
    )


def render_observation(observation: Any, config: RasterConfig = DEFAULT_RASTER) -> np.ndarray:
    """Raster ``(C, H, W)`` of a closed-loop :class:`~simulation.protocols.Observation` (last frame = current)."""
    ego = observation.ego_history
    return render_window(
        observation.map_api,
        ego.states,
        ego.timestamps_us,
        observation.agents,
        observation.traffic_lights,
        observation.route_roadblock_ids,
        len(ego) - 1,
        config,
    )


__all__ = [
    "AGENT_CHANNEL_TYPES",
    "CHANNELS",
    "DEFAULT_RASTER",
    "RasterConfig",
    "RenderError",
    "ego_box",
    "ego_boxes",
    "ego_to_pixel",
    "history_indices",
    "map_geometry",
    "pixel_to_ego",
    "render_bev",
    "render_observation",
    "render_raster",
    "render_window",
]
