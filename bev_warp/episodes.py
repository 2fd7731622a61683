"""Episode data of BEV-Warp, precomputed once at reset so that stepping is pure tensor math.

Per scene (a :class:`~simulation.types.Scenario` or :class:`~simulation.types.Scene` log window): the logged
ego states, the agent boxes per frame, the logged rasters at the planning frames (``render_window`` with the
planner raster, optionally encoded once), a boolean drivable-area grid around the episode (nearest-cell
point-in-polygon), and the route centre line as a vertex array. Episodes of different lengths are padded to
the longest one by repeating their last frame; ``num_frames`` says where each one ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import torch

from rewards.torch.cls_world import ClsWorld, world_from_maps
from simulation.maps.protocol import MapProtocol
from simulation.render import RasterConfig, render_window
from simulation.types import Agents, LogWindow, TrafficLights

logger = logging.getLogger(__name__)
_SHIFT = 4


class EpisodeError(ValueError):
    """A scene cannot become a BEV-Warp episode (wrong frame interval, too short, layout mismatch)."""


@dataclass(frozen=True)
class EpisodeBatch:
    """Padded tensors of ``B`` episodes (``T`` log frames from the first simulated one, ``S + 1`` planning frames).

    Attributes:
        tokens: scene tokens.
        log_dt: seconds between log frames.
        frames_per_plan: log frames per planning step.
        num_frames: ``(B,)`` long, log frames of each episode (from its current frame on).
        ego: ``(B, T, 11)`` float64 logged ego states.
        boxes: ``(B, T, N, 7)`` float64 logged agent boxes; ``valid`` ``(B, T, N)`` bool; ``types`` ``(B, N)`` long.
        observations: ``(B, S + 1, C, H, W)`` logged rasters (or encoded features) at the planning frames, or None.
        drivable: ``(B, GH, GW)`` bool grid; cell ``(i, j)`` centre is ``origin + (j + .5, i + .5) * grid_res``.
        grid_origin: ``(B, 2)`` float64; grid_res: metres per cell.
        route: ``(B, M, 2)`` float64 route centre line (padded by repeating the last vertex).
        timestamps_us: ``(B, T)`` int64 log time stamps (padded by repeating the last one).
        world: the map tensors of nuPlan's closed-loop metrics (lanes, connectors, drivable area,
            intersections, speed limits, the expert's roadblock route), float64.
        observation_rows: ``(B,)`` long, the row of ``observations`` each episode reads (``None``: its own);
            repeated episodes (:func:`repeat_episodes`) share one copy of the observations.
    """

    tokens: tuple[str, ...]
    log_dt: float
    frames_per_plan: int
    num_frames: torch.Tensor
    ego: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor
    types: torch.Tensor
    observations: torch.Tensor | None
    drivable: torch.Tensor
    grid_origin: torch.Tensor
    grid_res: float
    route: torch.Tensor
    timestamps_us: torch.Tensor
    world: ClsWorld
    observation_rows: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.tokens)

    @property
    def device(self) -> torch.device:
        return self.ego.device


def repeat_episodes(episodes: EpisodeBatch, repeats: int) -> EpisodeBatch:
    """Each episode ``repeats`` times in a row (episode ``i * repeats + g`` is copy ``g`` of episode ``i``).

    The per-episode tensors are gathered; the observations, the largest of them, are not copied: the copies
    read their source's row through ``observation_rows``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    b = episodes.batch_size
    rows = torch.arange(b, device=episodes.device).repeat_interleave(repeats)
    source = rows if episodes.observation_rows is None else episodes.observation_rows[rows]
    per_episode = {
        f: getattr(episodes, f)[rows]
        for f in ("num_frames", "ego", "boxes", "valid", "types", "drivable", "grid_origin", "route", "timestamps_us")
    }
    return replace(
        episodes,
        tokens=tuple(t for t in episodes.tokens for _ in range(repeats)),
        world=episodes.world.select(rows),
        observation_rows=source if episodes.observations is not None else None,
        **per_episode,
    )


def _window_dt(scene: LogWindow) -> float:
    if scene.num_frames < 2:
        raise EpisodeError(f"scene {scene.token}: needs at least two frames")
    return float(np.median(np.diff(scene.timestamps_us))) * 1e-6


def drivable_grid(
    map_api: MapProtocol, points: np.ndarray, margin_m: float, res: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bool grid ``(GH, GW)`` of the drivable area over the bounds of ``points`` ``(K, 2)`` + margin; origin ``(2,)``.

    The drivable-area polygons are scan-filled (cv2, 1/16 px fixed point): a cell is True when its centre is inside.
    """
    lo = points.min(0) - margin_m
    hi = points.max(0) + margin_m
    nx, ny = np.ceil((hi - lo) / res).astype(int)
    grid = np.zeros((ny, nx), dtype=np.uint8)
    area = map_api.drivable_area((lo + hi) / 2, float(np.hypot(*(hi - lo))) / 2 + 1.0)
    parts = getattr(area, "geoms", [area])
    scale = float(1 << _SHIFT)

    def ring(coords: Any) -> np.ndarray:
        px = (np.asarray(coords, dtype=np.float64)[:, :2] - lo) / res - 0.5
        return np.round(px * scale).astype(np.int32)

    for poly in parts:
        if poly.is_empty or not hasattr(poly, "exterior"):
            continue
        cv2.fillPoly(grid, [ring(poly.exterior.coords)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
        holes = [ring(r.coords) for r in poly.interiors]
        if holes:
            cv2.fillPoly(grid, holes, 0, lineType=cv2.LINE_8, shift=_SHIFT)
    return grid.astype(bool), lo


def route_line(scene: LogWindow, map_api: MapProtocol) -> np.ndarray:
    """``(M, 2)`` route centre line from the episode start, or the logged ego path when the route gives none."""
    start = scene.current_ego[:3]
    line = np.zeros((0, 2))
    if scene.route_roadblock_ids:
        try:
            line = np.asarray(map_api.route_centerline(list(scene.route_roadblock_ids), start), dtype=np.float64)
        except Exception as err:  # noqa: BLE001 - a broken route falls back to the expert path
            logger.warning("scene %s: no route centre line (%s); using the logged path", scene.token, err)
    if len(line) < 2:
        line = scene.ego.states[scene.current_index :, :2]
        if len(line) < 2 or np.hypot(*(line[-1] - line[0])) < 1e-3:
            heading = scene.current_ego[2]
            line = start[None, :2] + np.array([[0.0, 0.0], [np.cos(heading), np.sin(heading)]])
    return line


def _pad_time(a: np.ndarray, t: int) -> np.ndarray:
    if len(a) >= t:
        return a[:t]
    return np.concatenate([a, np.repeat(a[-1:], t - len(a), 0)])


def _pad_axis1(arrays: list[np.ndarray], fill: float | bool = 0) -> np.ndarray:
    n = max(a.shape[1] for a in arrays)
    out = []
    for a in arrays:
        pad = np.full((a.shape[0], n - a.shape[1], *a.shape[2:]), fill, dtype=a.dtype)
        out.append(np.concatenate([a, pad], 1))
    return np.stack(out)


def with_history(scene: LogWindow) -> tuple[np.ndarray, np.ndarray, Agents, TrafficLights, int]:
    """Ego states, timestamps, agents and lights of ``scene`` with a Scenario's pre-window history in front.

    Returns the arrays and the number ``H`` of history frames prepended (window frame ``f`` is row ``H + f``).
    The history has no traffic-light status of its own: it repeats the window's first frame (as the vector
    closed loop does for its history buffer).
    """
    h_ego, h_agents = getattr(scene, "history_ego", None), getattr(scene, "history_agents", None)
    if h_ego is None or h_agents is None or len(h_ego) == 0:
        return scene.ego.states, scene.timestamps_us, scene.agents, scene.traffic_lights, 0
    n = len(h_ego)
    agents = Agents(
        np.concatenate([h_agents.boxes, scene.agents.boxes]),
        scene.agents.types,
        scene.agents.track_ids,
        np.concatenate([h_agents.valid, scene.agents.valid]),
    )
    status = scene.traffic_lights.status
    lights = TrafficLights(
        scene.traffic_lights.lane_connector_ids, np.concatenate([np.repeat(status[:1], n, 0), status])
    )
    ego = np.concatenate([h_ego.states, scene.ego.states])
    return ego, np.concatenate([h_ego.timestamps_us, scene.timestamps_us]), agents, lights, n


def planning_rasters(scene: LogWindow, map_api: MapProtocol, frames: np.ndarray, raster: RasterConfig) -> np.ndarray:
    """``(S + 1, C, H, W)`` float32 logged rasters at the window frames ``frames`` (a Scenario's history drawn)."""
    ego, ts, agents, lights, n = with_history(scene)
    return np.stack(
        [render_window(map_api, ego, ts, agents, lights, scene.route_roadblock_ids, n + int(f), raster) for f in frames]
    )


def _check_scenes(
    scenes: Sequence[LogWindow], map_apis: Sequence[MapProtocol], replan_interval_s: float
) -> tuple[float, int, list[int]]:
    """Log interval, log frames per planning step and episode lengths; :class:`EpisodeError` on bad scenes."""
    if not scenes or len(scenes) != len(map_apis):
        raise EpisodeError(f"need one map per scene, got {len(scenes)} scenes and {len(map_apis)} maps")
    for scene in scenes:
        try:
            scene.validate()
        except ValueError as err:
            raise EpisodeError(f"scene {scene.token}: {err}") from None
    dts = {round(_window_dt(s), 6) for s in scenes}
    if len(dts) != 1:
        raise EpisodeError(f"scenes mix frame intervals {sorted(dts)}; batch scenes of one rate")
    log_dt = dts.pop()
    ratio = replan_interval_s / log_dt
    if ratio < 1 - 1e-6 or abs(ratio - round(ratio)) > 1e-6:
        raise EpisodeError(f"replan interval {replan_interval_s} s is not a multiple of the log interval {log_dt} s")
    fpp = int(round(ratio))
    lengths = [s.num_frames - s.current_index for s in scenes]
    if min(lengths) < fpp + 1:
        raise EpisodeError(f"scene {scenes[int(np.argmin(lengths))].token}: shorter than one planning step")
    return log_dt, fpp, lengths


def build_episodes(
    scenes: Sequence[LogWindow],
    map_apis: Sequence[MapProtocol],
    replan_interval_s: float,
    raster: RasterConfig | None,
    device: torch.device,
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    grid_res: float = 0.25,
    observation_dtype: torch.dtype = torch.float32,
    map_margin_m: float = 100.0,
) -> EpisodeBatch:
    """Precompute the tensors of ``scenes`` (with their maps) on ``device``."""
    log_dt, fpp, lengths = _check_scenes(scenes, map_apis, replan_interval_s)
    t_max = max(lengths)
    ego, boxes, valid, types, obs, grids, origins, routes, stamps = [], [], [], [], [], [], [], [], []
    for scene, map_api, n in zip(scenes, map_apis, lengths, strict=True):
        ci = scene.current_index
        ego.append(_pad_time(scene.ego.states[ci:], t_max))
        stamps.append(_pad_time(scene.timestamps_us[ci:], t_max))
        boxes.append(_pad_time(scene.agents.boxes[ci:], t_max))
        valid.append(_pad_time(scene.agents.valid[ci:], t_max))
        types.append(scene.agents.types[None])
        route = route_line(scene, map_api)
        routes.append(route)
        grid, origin = drivable_grid(map_api, np.concatenate([scene.ego.states[ci:, :2], route]), 30.0, grid_res)
        grids.append(grid)
        origins.append(origin)
        if raster is not None:
            frames = ci + np.arange(0, n, fpp)
            steps = (t_max - 1) // fpp + 1
            rasters = _pad_time(planning_rasters(scene, map_api, frames, raster), steps)
            # encode episode by episode: one batch of every episode's rasters would not fit in memory
            obs.append(rasters if encoder is None else _encode(rasters, encoder, device, observation_dtype))
    return EpisodeBatch(
        tokens=tuple(s.token for s in scenes),
        log_dt=log_dt,
        frames_per_plan=fpp,
        num_frames=torch.tensor(lengths, dtype=torch.long, device=device),
        ego=torch.as_tensor(np.stack(ego), dtype=torch.float64, device=device),
        boxes=torch.as_tensor(_pad_axis1(boxes), dtype=torch.float64, device=device),
        valid=torch.as_tensor(_pad_axis1(valid, False), device=device),
        types=torch.as_tensor(_pad_axis1(types, -1)[:, 0], dtype=torch.long, device=device),
        observations=_observations(obs, encoder, device, observation_dtype) if raster is not None else None,
        drivable=torch.as_tensor(_pad_grids(grids), device=device),
        grid_origin=torch.as_tensor(np.stack(origins), dtype=torch.float64, device=device),
        grid_res=grid_res,
        route=torch.as_tensor(np.stack([_pad_time(r, max(len(x) for x in routes)) for r in routes]), device=device),
        timestamps_us=torch.as_tensor(np.stack(stamps), dtype=torch.int64, device=device),
        world=world_from_maps([s.ego.states[s.current_index :] for s in scenes], map_apis, map_margin_m, device),
    )


def _pad_grids(grids: list[np.ndarray]) -> np.ndarray:
    h = max(g.shape[0] for g in grids)
    w = max(g.shape[1] for g in grids)
    out = np.zeros((len(grids), h, w), dtype=bool)
    for i, g in enumerate(grids):
        out[i, : g.shape[0], : g.shape[1]] = g
    return out


def _encode(
    rasters: np.ndarray,
    encoder: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    chunk: int = 64,
) -> torch.Tensor:
    """Encoder features ``(S, C', H', W')`` of one episode's rasters ``(S, C, H, W)``, ``chunk`` frames at a time."""
    frames = torch.as_tensor(rasters, device=device)
    with torch.no_grad():
        return torch.cat([encoder(frames[i : i + chunk]).to(dtype) for i in range(0, len(frames), chunk)])


def _observations(
    obs: Sequence[np.ndarray | torch.Tensor],
    encoder: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``(B, S + 1, ...)`` observations: the rasters, or the features :func:`_encode` made of them."""
    if encoder is not None:
        return torch.stack([torch.as_tensor(o) for o in obs]).to(device)
    return torch.as_tensor(np.stack(obs), device=device).to(dtype)  # (B, S + 1, C, H, W)
