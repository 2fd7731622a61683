"""BEV plots of scenes (PNG) and logs (GIF), and the ``diffplan viz`` command.

Plots are ego-centric like the raster (:mod:`simulation.render`): the current rear axle at the origin,
ego forward pointing **up** and ego left pointing **left**; axes are in metres. Matplotlib runs on the
Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import shapely  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, PathPatch  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402
from PIL import Image  # noqa: E402

from simulation.geometry import agent_box_corners, global_to_local, transform_points_to_local  # noqa: E402
from simulation.io import atomic_path  # noqa: E402
from simulation.maps.layers import SemanticMapLayer  # noqa: E402
from simulation.maps.protocol import MapProtocol
from simulation.render import ego_box  # noqa: E402
from simulation.types import (  # noqa: E402
    AgentIndex,
    Agents,
    EgoStates,
    LogWindow,
    StateIndex,
    TrackedObjectType,
    TrafficLights,
)

logger = logging.getLogger(__name__)

#: (x_min, x_max, y_min, y_max) of the plotted ego frame, metres.
DEFAULT_VIEW = (-16.0, 48.0, -32.0, 32.0)

COLORS = {
    "drivable": "#e8e8e8",
    "lane": "#d0d0d0",
    "connector": "#dcdcdc",
    "centerline": "#9a9a9a",
    "route": "#9ecae1",
    "red_light": "#d62728",
    "crosswalk": "#f2d98c",
    "ego": "#ff7f0e",
    "future": "#222222",
    "candidate": "#7f7f7f",
    "chosen": "#2ca02c",
}
TYPE_COLORS = {
    TrackedObjectType.VEHICLE: "#1f77b4",
    TrackedObjectType.PEDESTRIAN: "#9467bd",
    TrackedObjectType.BICYCLE: "#17becf",
}
STATIC_COLOR = "#8c564b"
#: Ego history and ground-truth future drawn around the current frame, seconds.
PAST_S, FUTURE_S = 2.0, 8.0


class VisualizationError(ValueError):
    """Bad input to a plot (shapes, missing files, unknown tokens)."""


def _to_plot(local: np.ndarray) -> np.ndarray:
    """Ego-frame points ``(..., 2)`` -> plot coordinates (horizontal = -y, vertical = x)."""
    return np.stack([-local[..., 1], local[..., 0]], -1)


# --------------------------------------------------------------------------------------------------
# Map layer
# --------------------------------------------------------------------------------------------------


def _polygons_path(geoms: Sequence[Any], origin: np.ndarray) -> MplPath | None:
    """One compound path of (multi)polygons (holes kept) in plot coordinates of the frame ``origin``."""
    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        return None
    parts = shapely.get_parts(np.asarray(geoms, dtype=object))
    parts = shapely.orient_polygons(parts[shapely.get_type_id(parts) == shapely.GeometryType.POLYGON])
    rings = shapely.get_rings(parts)
    verts, codes = [], []
    for ring in rings:
        xy = _to_plot(transform_points_to_local(shapely.get_coordinates(ring), origin))
        c = np.full(len(xy), MplPath.LINETO, dtype=np.uint8)
        c[0], c[-1] = MplPath.MOVETO, MplPath.CLOSEPOLY
        verts.append(xy)
        codes.append(c)
    return MplPath(np.concatenate(verts), np.concatenate(codes)) if verts else None


def _add_polygons(ax: Axes, geoms: Sequence[Any], origin: np.ndarray, z: float, **style: Any) -> None:
    path = _polygons_path(geoms, origin)
    if path is not None:
        ax.add_patch(PathPatch(path, zorder=z, **style))


def plot_map(
    ax: Axes,
    map_api: MapProtocol,
    origin: np.ndarray,
    radius: float,
    route_ids: Sequence[str] = (),
    red_ids: Sequence[str] = (),
) -> None:
    """Drivable area, lanes, connectors (route tinted, red lights red), centrelines and crosswalks near ``origin``."""
    centre = np.asarray(origin[:2], dtype=np.float64)
    layers = [SemanticMapLayer.LANE, SemanticMapLayer.LANE_CONNECTOR, SemanticMapLayer.CROSSWALK]
    near = map_api.proximal_ids(centre, radius, layers)
    lanes = [map_api.lanes[i] for i in near.get(SemanticMapLayer.LANE, [])]
    connectors = [map_api.lane_connectors[i] for i in near.get(SemanticMapLayer.LANE_CONNECTOR, [])]
    crosswalk_polys = map_api.polygons(SemanticMapLayer.CROSSWALK)
    crosswalks = [crosswalk_polys[i] for i in near.get(SemanticMapLayer.CROSSWALK, []) if i in crosswalk_polys]
    on_route = set(map_api.route_lane_ids(list(route_ids))) if route_ids else set()
    red = {str(i) for i in red_ids}
    _add_polygons(ax, [map_api.drivable_area(centre, radius)], origin, 0, facecolor=COLORS["drivable"], lw=0)
    _add_polygons(ax, [o.polygon for o in lanes], origin, 1, facecolor=COLORS["lane"], edgecolor="white", lw=0.6)
    _add_polygons(ax, [o.polygon for o in connectors], origin, 1, facecolor=COLORS["connector"], lw=0)
    route_polys = [o.polygon for o in lanes + connectors if o.id in on_route]
    _add_polygons(ax, route_polys, origin, 2, facecolor=COLORS["route"], alpha=0.6, lw=0)
    red_polys = [o.polygon for o in connectors if o.id in red]
    _add_polygons(ax, red_polys, origin, 3, facecolor=COLORS["red_light"], alpha=0.5, lw=0)
    _add_polygons(ax, crosswalks, origin, 3, facecolor=COLORS["crosswalk"], edgecolor="#c9a227", hatch="///", lw=0.5)
    lines = [_to_plot(transform_points_to_local(np.asarray(o.baseline)[:, :2], origin)) for o in lanes + connectors]
    if lines:  # one artist for every centreline: a plot call each costs more than drawing them
        ax.add_collection(
            LineCollection(lines, colors=COLORS["centerline"], linewidths=0.6, linestyles=[(0, (4, 4))], zorder=4)
        )


# --------------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------------


def _draw_boxes(ax: Axes, boxes_local: np.ndarray, colors: Sequence[str], z: float = 6) -> None:
    """Oriented boxes ``(N, 7)`` in the ego frame with a heading tick from the centre to the front."""
    if len(boxes_local) == 0:
        return
    corners = _to_plot(agent_box_corners(boxes_local))
    ax.add_collection(PolyCollection(list(corners), facecolors=colors, edgecolors="black", linewidths=0.6, zorder=z))
    centre = _to_plot(boxes_local[:, :2])
    front = (corners[:, 0] + corners[:, 3]) / 2.0
    ax.add_collection(
        LineCollection(list(np.stack([centre, front], 1)), colors="black", linewidths=0.8, zorder=z + 0.1)
    )


def _agent_colors(types: np.ndarray) -> list[str]:
    return [TYPE_COLORS.get(TrackedObjectType(int(t)), STATIC_COLOR) for t in types]


def _plot_path(ax: Axes, local_xy: np.ndarray, z: float, **style: Any) -> None:
    xy = _to_plot(local_xy)
    ax.plot(xy[:, 0], xy[:, 1], zorder=z, **style)


def plot_frame(
    ax: Axes,
    window: LogWindow,
    index: int,
    map_api: MapProtocol | None,
    candidates: np.ndarray | None = None,
    chosen: np.ndarray | None = None,
    view: tuple[float, float, float, float] = DEFAULT_VIEW,
) -> None:
    """Draw frame ``index`` of ``window`` into ``ax`` (ego-centric, forward up).

    Args:
        candidates: ``(K, 8, 3)`` trajectories in the rear-axle frame of that frame, or ``None``.
        chosen: ``(8, 3)`` the selected trajectory, or ``None``.
    """
    origin = window.ego.states[index, : StateIndex.HEADING + 1]
    radius = float(np.hypot(max(-view[0], view[1]), max(-view[2], view[3])))
    if map_api is not None:
        plot_map(ax, map_api, origin, radius, window.route_roadblock_ids, window.traffic_lights.red_ids(index))
    valid = window.agents.valid[index]
    boxes = window.agents.boxes[index][valid].copy()
    boxes[:, :3] = global_to_local(boxes[:, :3], origin)
    _draw_boxes(ax, boxes, _agent_colors(window.agents.types[valid]))
    t = (window.timestamps_us - window.timestamps_us[index]) * 1e-6
    every = max(1, int(round(0.5 / float(np.median(np.diff(t))) if len(t) > 1 else 1)))  # a marker every 0.5 s
    past_idx = np.flatnonzero((t >= -PAST_S) & (np.arange(len(t)) <= index))
    future_idx = np.flatnonzero((t <= FUTURE_S) & (np.arange(len(t)) >= index))
    past = transform_points_to_local(window.ego.states[past_idx, :2], origin)
    future = transform_points_to_local(window.ego.states[future_idx, :2], origin)
    mark_past = slice((len(past) - 1) % every, None, every)  # keep a marker on the current pose
    _plot_path(ax, past, 7, color=COLORS["ego"], lw=2.0, marker="o", ms=3, markevery=mark_past)
    if len(future) > 1:
        _plot_path(ax, future, 7, color=COLORS["future"], lw=1.5, ls="--", marker=".", ms=4, markevery=every)
    if candidates is not None:
        for traj in np.asarray(candidates).reshape(-1, np.asarray(candidates).shape[-2], 3):
            _plot_path(ax, np.vstack([[0.0, 0.0], traj[:, :2]]), 8, color=COLORS["candidate"], lw=0.8, alpha=0.6)
    if chosen is not None:
        traj = np.asarray(chosen).reshape(-1, 3)
        _plot_path(ax, np.vstack([[0.0, 0.0], traj[:, :2]]), 9, color=COLORS["chosen"], lw=2.5, marker="o", ms=3)
    _draw_boxes(ax, ego_box()[None], [COLORS["ego"]], z=10)
    ax.set_xlim(-view[3], -view[2])
    ax.set_ylim(view[0], view[1])
    ax.set_aspect("equal")
    ax.set_xlabel("lateral (m, right +)")
    ax.set_ylabel("ahead (m)")


def _legend(ax: Axes, with_candidates: bool, with_chosen: bool) -> None:
    handles: list[Any] = [
        Patch(facecolor=COLORS["route"], label="route"),
        Patch(facecolor=COLORS["red_light"], alpha=0.5, label="red light"),
        Patch(facecolor=COLORS["crosswalk"], hatch="///", edgecolor="#c9a227", label="crosswalk"),
        Patch(facecolor=TYPE_COLORS[TrackedObjectType.VEHICLE], edgecolor="black", label="vehicle"),
        Patch(facecolor=TYPE_COLORS[TrackedObjectType.PEDESTRIAN], edgecolor="black", label="pedestrian"),
        Patch(facecolor=TYPE_COLORS[TrackedObjectType.BICYCLE], edgecolor="black", label="cyclist"),
        Patch(facecolor=STATIC_COLOR, edgecolor="black", label="static object"),
        Patch(facecolor=COLORS["ego"], edgecolor="black", label="ego"),
        Line2D([], [], color=COLORS["ego"], marker="o", ms=3, lw=2, label="ego history"),
        Line2D([], [], color=COLORS["future"], ls="--", marker=".", label="ground truth"),
    ]
    if with_candidates:
        handles.append(Line2D([], [], color=COLORS["candidate"], lw=0.8, label="candidates"))
    if with_chosen:
        handles.append(Line2D([], [], color=COLORS["chosen"], lw=2.5, marker="o", ms=3, label="chosen"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


# --------------------------------------------------------------------------------------------------
# Figures and files
# --------------------------------------------------------------------------------------------------


def _title(window: LogWindow, index: int) -> str:
    t = (int(window.timestamps_us[index]) - int(window.timestamps_us[0])) * 1e-6
    speed = float(np.hypot(*window.ego.states[index, [StateIndex.VX, StateIndex.VY]]))
    return f"{window.log_name}\ntoken {window.frame_tokens[index]}  t={t:+.1f} s  v={speed:.1f} m/s"


def plot_scene(
    scene: LogWindow,
    map_api: MapProtocol | None,
    ax: Axes | None = None,
    candidates: np.ndarray | None = None,
    chosen: np.ndarray | None = None,
    view: tuple[float, float, float, float] = DEFAULT_VIEW,
) -> Figure:
    """BEV plot of a scene at its current frame: map, agents, ego history, ground-truth future, candidates.

    Args:
        scene: a :class:`~simulation.types.Scene` (or any log window; its ``current_index`` is drawn).
        map_api: the scene's :class:`~simulation.maps.api.MapAPI`, or ``None`` for agents only.
        ax: axes to draw into (a new 7 x 6 inch figure when ``None``).
        candidates: ``(K, 8, 3)`` candidate trajectories in the current rear-axle frame.
        chosen: ``(8, 3)`` the selected trajectory.
    """
    if candidates is not None and (np.ndim(candidates) != 3 or np.shape(candidates)[-1] != 3):
        raise VisualizationError(f"candidates must be (K, T, 3), got {np.shape(candidates)}")
    if chosen is not None and (np.ndim(chosen) != 2 or np.shape(chosen)[-1] != 3):
        raise VisualizationError(f"chosen must be (T, 3), got {np.shape(chosen)}")
    if ax is None:
        fig = plt.figure(figsize=(7.5, 6.0), dpi=100)
        ax = fig.add_axes((0.1, 0.08, 0.62, 0.82))
    plot_frame(ax, scene, scene.current_index, map_api, candidates, chosen, view)
    ax.set_title(_title(scene, scene.current_index), fontsize=9)
    _legend(ax, candidates is not None, chosen is not None)
    fig_out = ax.get_figure()
    assert isinstance(fig_out, Figure)
    return fig_out


def save_scene_png(scene: LogWindow, map_api: MapProtocol | None, path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`plot_scene` to ``path`` (PNG, atomic). Keyword arguments go to :func:`plot_scene`."""
    path = Path(path)
    fig = plot_scene(scene, map_api, **kwargs)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def window_from_log(log: Any, start: int = 0, stop: int | None = None, step: int = 1) -> LogWindow:
    """A :class:`LogWindow` over frames ``start:stop:step`` of a :class:`~simulation.datasets.log_data.LogData`."""
    frames = np.arange(log.num_frames)[start:stop:step]
    if len(frames) == 0:
        raise VisualizationError(f"{log.log_name}: no frames in [{start}:{stop}:{step}] of {log.num_frames}")
    pos = np.full(log.num_frames, -1, dtype=np.int64)
    pos[frames] = np.arange(len(frames))
    sel = pos[log.box_frame] >= 0
    tracks, column = np.unique(log.box_track[sel], return_inverse=True)
    boxes = np.zeros((len(frames), len(tracks), len(AgentIndex)))
    valid = np.zeros((len(frames), len(tracks)), dtype=bool)
    boxes[pos[log.box_frame[sel]], column] = log.box_states[sel]
    valid[pos[log.box_frame[sel]], column] = True
    agents = Agents(boxes, np.asarray(log.track_types)[tracks], np.asarray(log.track_tokens)[tracks], valid)
    tl_sel = pos[log.tl_frame] >= 0
    connectors, tl_col = np.unique(log.tl_lane_connector[tl_sel], return_inverse=True)
    status = np.full((len(frames), len(connectors)), 3, dtype=np.int8)  # UNKNOWN
    status[pos[log.tl_frame[tl_sel]], tl_col] = log.tl_status[tl_sel]
    lights = TrafficLights(connectors.astype(str), status)
    scene_index = int(log.frame_scene[frames[0]]) if len(log.frame_scene) else -1
    route = tuple(log.scene_roadblock_ids[scene_index]) if 0 <= scene_index < len(log.scene_roadblock_ids) else ()
    stamps = np.asarray(log.timestamps_us)[frames]
    return LogWindow(
        log.log_name,
        str(log.frame_tokens[frames[0]]),
        log.map_location,
        np.asarray(log.frame_tokens)[frames],
        stamps,
        EgoStates(np.asarray(log.ego_states)[frames], stamps),
        agents,
        lights,
        route,
        0,
    )


def log_gif(
    source: Any,
    map_api: MapProtocol | None,
    path: str | Path,
    start: int = 0,
    num_frames: int = 40,
    step: int = 10,
    fps: float = 4.0,
    view: tuple[float, float, float, float] = DEFAULT_VIEW,
    dpi: int = 70,
) -> Path:
    """Write an animated GIF of a log segment, ego-centric (forward up), one plot per sampled frame.

    Args:
        source: a :class:`~simulation.datasets.log_data.LogData` (sampled every ``step`` frames from
            ``start``) or a :class:`LogWindow` / ``Scenario`` (every ``step`` of its frames).
        num_frames: at most this many GIF frames.
        fps: GIF frames per second.
    """
    window = source if isinstance(source, LogWindow) else window_from_log(source, start, None, 1)
    first = start if isinstance(source, LogWindow) else 0
    indices = np.arange(first, window.num_frames, max(step, 1))[:num_frames]
    if len(indices) == 0:
        raise VisualizationError(f"{window.log_name}: no frames to animate from {start}")
    fig = plt.figure(figsize=(6.5, 5.5), dpi=dpi)
    ax = fig.add_axes((0.1, 0.08, 0.6, 0.82))
    images: list[Image.Image] = []
    try:
        for i in indices.tolist():
            ax.clear()
            plot_frame(ax, window, i, map_api, view=view)
            ax.set_title(_title(window, i), fontsize=8)
            _legend(ax, False, False)
            fig.canvas.draw()
            rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
            images.append(Image.fromarray(rgba[..., :3].copy()))
    finally:
        plt.close(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


# --------------------------------------------------------------------------------------------------
# diffplan viz
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffplan viz", description="BEV plots (PNG) of scenes, GIF of a log segment.")
    p.add_argument("--data-root", default=None, help="folder of nuPlan .db logs (default: $NUPLAN_DATA_ROOT)")
    p.add_argument("--maps-root", default=None, help="nuPlan maps folder (default: $NUPLAN_MAPS_ROOT)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--log", help="log name (the .db file name without extension)")
    which.add_argument("--split", help="split name (configs/data/splits/<name>.yaml)")
    p.add_argument("--token", default=None, help="plot only the scene with this token")
    p.add_argument("--max-scenes", type=int, default=4, help="scenes to plot when no token is given")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--gif", action="store_true", help="also write a GIF of the (first) log")
    p.add_argument("--gif-frames", type=int, default=40, help="GIF frames (every 0.5 s of a 20 Hz log)")
    return p


def _find_log(data_root: Path, name: str) -> Path:
    hits = sorted(data_root.rglob(f"{name}.db"))
    if not hits:
        raise VisualizationError(f"no log {name}.db under {data_root}")
    return hits[0]


def _pick(scenes: list[Any], token: str | None, max_scenes: int) -> list[Any]:
    if token is not None:
        picked = [s for s in scenes if s.token == token]
        if not picked:
            raise VisualizationError(f"no scene with token {token} ({len(scenes)} scenes searched)")
        return picked
    if not scenes:
        raise VisualizationError("no scenes found")
    idx = np.unique(np.linspace(0, len(scenes) - 1, min(max_scenes, len(scenes))).round().astype(int))
    return [scenes[i] for i in idx]


def _run(args: argparse.Namespace) -> list[Path]:
    data_root = Path(args.data_root or os.environ.get("NUPLAN_DATA_ROOT", ""))
    maps_root = Path(args.maps_root or os.environ.get("NUPLAN_MAPS_ROOT", ""))
    if not str(data_root) or not data_root.is_dir():
        raise VisualizationError(f"data root {data_root!s} is not a folder (use --data-root)")
    from simulation.datasets.nuplan_db import read_log
    from simulation.datasets.scenes import SceneFilter, extract_scenes
    from simulation.datasets.splits import load_scenes
    from simulation.maps.api import MapAPI

    out = Path(args.out)
    if args.log:
        logs = [read_log(_find_log(data_root, args.log))]
        scenes = extract_scenes(logs[0], SceneFilter())
    else:
        scenes = load_scenes(data_root, args.split, SceneFilter())
        logs = []
    written = []
    for scene in _pick(scenes, args.token, args.max_scenes):
        map_api = MapAPI.load(maps_root, scene.map_name)
        written.append(save_scene_png(scene, map_api, out / f"{scene.log_name}_{scene.token}.png"))
    if args.gif:
        log = logs[0] if logs else read_log(_find_log(data_root, scenes[0].log_name))
        map_api = MapAPI.load(maps_root, log.map_location)
        written.append(log_gif(log, map_api, out / f"{log.log_name}.gif", num_frames=args.gif_frames))
    return written


def main(argv: list[str] | None = None) -> int:
    """``diffplan viz --data-root DIR --maps-root DIR --log NAME|--split NAME [--token T] --out DIR [--gif]``."""
    args = _parser().parse_args(argv)
    try:
        written = _run(args)
    except (VisualizationError, ValueError, OSError, ImportError) as err:
        print(f"diffplan viz: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
