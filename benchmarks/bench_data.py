"""Data pipeline speed: scenes extracted per second from ``.db`` logs and from the same logs written as
OpenScene pickles, BEV rasters per second, and the raster speed ratio of :func:`simulation.render.render_bev`
against a naive shapely + PIL rasteriser measured in the same run.

Data: ``--data-root`` / ``--maps-root`` (e.g. the output of ``diffplan data synth``) when given, otherwise
the small map and log fixtures of ``simulation.maps.testing`` / ``simulation.datasets.testing`` written
to a temporary folder in nuPlan formats and read back.

    python benchmarks/bench_data.py [--data-root DIR --maps-root DIR] [--max-logs 4] [--max-scenes 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from PIL import Image, ImageDraw
from shapely import affinity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy

from simulation.geometry import polyline_headings
from simulation.maps.layers import SemanticMapLayer
from simulation.maps.protocol import MapProtocol
from simulation.raster_geometry import whole_drivable_area
from simulation.render import (
    AGENT_CHANNEL_TYPES,
    DEFAULT_RASTER,
    RasterConfig,
    ego_boxes,
    history_indices,
    render_bev,
    render_raster,
)
from simulation.types import AgentIndex, LogWindow, StateIndex, TrackedObjectType

# --------------------------------------------------------------------------------------------------
# Naive baseline: per frame, every visible shapely geometry is transformed and drawn with PIL
# --------------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """The arguments of :func:`simulation.render.render_raster` for one raster."""

    map_api: MapProtocol
    ego_pose: np.ndarray
    boxes: np.ndarray
    types: np.ndarray
    red_ids: list[str]
    route_ids: tuple[str, ...]
    history_boxes: np.ndarray
    history_valid: np.ndarray

    @staticmethod
    def of_scene(scene: LogWindow, map_api: MapProtocol, config: RasterConfig) -> Frame:
        i = scene.current_index
        past = history_indices(scene.timestamps_us, i, config)
        ego_past = ego_boxes(scene.ego.states[past, : StateIndex.HEADING + 1])[:, None]
        valid = scene.agents.valid[i]
        return Frame(
            map_api,
            scene.ego.states[i, : StateIndex.HEADING + 1],
            scene.agents.boxes[i][valid],
            scene.agents.types[valid],
            scene.traffic_lights.red_ids(i),
            tuple(scene.route_roadblock_ids),
            np.concatenate([scene.agents.boxes[past], ego_past], 1),
            np.concatenate([scene.agents.valid[past], np.ones((len(past), 1), bool)], 1),
        )

    def render(self, config: RasterConfig) -> np.ndarray:
        return render_raster(
            self.map_api, self.ego_pose, self.boxes, self.types, self.red_ids, self.route_ids, config,
            self.history_boxes, self.history_valid,
        )  # fmt: skip


class NaiveRasterizer:
    """Straightforward rasteriser: shapely objects kept per map, per frame an STRtree query, one
    ``affinity.affine_transform`` per object and one ``ImageDraw`` call per object and channel."""

    def __init__(self, map_api: MapProtocol, config: RasterConfig) -> None:
        self.map_api, self.config = map_api, config
        self.lanes = list(map_api.lanes.values()) + list(map_api.lane_connectors.values())
        self.lane_tree = shapely.STRtree([o.polygon for o in self.lanes])
        crosswalks = map_api.polygons(SemanticMapLayer.CROSSWALK)
        self.crosswalks = list(crosswalks.values())
        self.cross_tree = shapely.STRtree(self.crosswalks)
        bbox = shapely.bounds(np.array([o.polygon for o in self.lanes], dtype=object))
        self.drivable = whole_drivable_area(map_api, bbox, crosswalks)
        self.drivable_tree = shapely.STRtree(self.drivable)

    def _matrix(self, pose: np.ndarray) -> list[float]:
        """Affine global -> pixel (u, v) for shapely: [a, b, d, e, xoff, yoff]."""
        c, s, r = np.cos(pose[2]), np.sin(pose[2]), self.config.resolution_m
        u0, v0 = self.config.ego_pixel
        # local x = c dx + s dy, local y = -s dx + c dy; u = u0 - y / r, v = v0 - x / r
        a, b, d, e = s / r, -c / r, -c / r, -s / r
        return [a, b, d, e, u0 - a * pose[0] - b * pose[1], v0 - d * pose[0] - e * pose[1]]

    @staticmethod
    def _fill(draw: ImageDraw.ImageDraw, geom: Any, m: list[float]) -> None:
        for part in shapely.get_parts(geom):
            g = affinity.affine_transform(part, m)
            draw.polygon(list(g.exterior.coords), fill=1)
            for hole in g.interiors:
                draw.polygon(list(hole.coords), fill=0)

    @staticmethod
    def _line(draw: ImageDraw.ImageDraw, line: np.ndarray, m: list[float]) -> None:
        g = affinity.affine_transform(shapely.LineString(line[:, :2]), m)
        draw.line(list(g.coords), fill=1, width=1)

    @staticmethod
    def _box(draw: ImageDraw.ImageDraw, b: np.ndarray, m: list[float], value: float = 1) -> None:
        half_l, half_w = b[AgentIndex.LENGTH] / 2, b[AgentIndex.WIDTH] / 2
        poly = shapely.Polygon([(-half_l, -half_w), (half_l, -half_w), (half_l, half_w), (-half_l, half_w)])
        poly = affinity.rotate(poly, b[AgentIndex.HEADING], origin=(0, 0), use_radians=True)
        poly = affinity.translate(poly, b[AgentIndex.X], b[AgentIndex.Y])
        draw.polygon(list(affinity.affine_transform(poly, m).exterior.coords), fill=value)

    def render(self, f: Frame) -> np.ndarray:
        cfg = self.config
        m = self._matrix(f.ego_pose)
        view = shapely.Point(f.ego_pose[:2]).buffer(cfg.radius_m)
        images = {c: Image.new("F" if c == "history" else "L", (cfg.width_px, cfg.height_px)) for c in cfg.channels}
        draws = {c: ImageDraw.Draw(im) for c, im in images.items()}
        for k in self.drivable_tree.query(view):
            self._fill(draws["drivable_area"], self.drivable[k], m)
        for k in self.cross_tree.query(view):
            self._fill(draws["crosswalks"], self.crosswalks[k], m)
        route = self.map_api.route_lane_ids(list(f.route_ids)) if f.route_ids else set()
        red = set(f.red_ids)
        for k in self.lane_tree.query(view):
            lane = self.lanes[k]
            self._line(draws["lane_centerlines"], np.asarray(lane.baseline), m)
            if lane.id in self.map_api.lanes:
                self._line(draws["lane_boundaries"], np.asarray(lane.left_boundary), m)
                self._line(draws["lane_boundaries"], np.asarray(lane.right_boundary), m)
            if lane.id in route:
                self._fill(draws["route"], lane.polygon, m)
            if lane.id in red:
                self._fill(draws["red_lights"], lane.polygon, m)
        for b, t in zip(f.boxes, f.types, strict=True):
            for name, kinds in AGENT_CHANNEL_TYPES.items():
                if int(t) in kinds:
                    self._box(draws[name], b, m)
        self._box(draws["ego"], ego_boxes(f.ego_pose[None])[0], m)
        num_past = len(f.history_boxes)
        for j in range(num_past):
            for b in f.history_boxes[j][f.history_valid[j]]:
                self._box(draws["history"], b, m, (j + 1) / (num_past + 1))
        return np.stack([np.asarray(images[c], dtype=np.float32) for c in cfg.channels])


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def _fixture_data(folder: Path) -> tuple[Path, Path]:
    """Write the map and log fixtures in nuPlan formats under ``folder``; returns (data_root, maps_root)."""
    from simulation.datasets.nuplan_db import write_log
    from simulation.datasets.testing import make_log_data
    from simulation.maps.testing import write_fixture_maps

    maps_root, data_root = folder / "maps", folder / "logs"
    data_root.mkdir(parents=True)
    write_fixture_maps(maps_root)
    log = make_log_data()
    for k in range(4):
        write_log(log, data_root / f"{log.log_name}_{k}.db")
    return data_root, maps_root


def _extract(data_root: Path, max_logs: int) -> tuple[list[Any], list[Any], float, int]:
    """Read logs and extract NAVSIM scenes; returns (scenes, logs, seconds, number of logs)."""
    from simulation.datasets.nuplan_db import read_log
    from simulation.datasets.scenes import SceneFilter, extract_scenes

    paths = sorted(data_root.rglob("*.db"))[:max_logs]
    if not paths:
        raise SystemExit(f"no .db logs under {data_root}")
    scenes: list[Any] = []
    logs: list[Any] = []
    t0 = time.perf_counter()
    for p in paths:
        logs.append(read_log(p))
        scenes.extend(extract_scenes(logs[-1], SceneFilter()))
    return scenes, logs, time.perf_counter() - t0, len(paths)


def _extract_overlapping(logs: list[Any], folder: Path) -> None:
    """navtrain-style scenes (``frame_interval=1``) from the logs in memory and from OpenScene pickles of them."""
    from simulation.datasets.openscene import openscene_scenes, read_openscene_log, write_openscene_log
    from simulation.datasets.scenes import SceneFilter, extract_scenes

    sf = SceneFilter(frame_interval=1)
    t0 = time.perf_counter()
    n_db = sum(len(extract_scenes(log, sf)) for log in logs)
    t_db = time.perf_counter() - t0
    paths = [write_openscene_log(log, folder / f"{k:03d}_{log.log_name}.pkl") for k, log in enumerate(logs)]
    t0 = time.perf_counter()
    frames = [read_openscene_log(p) for p in paths]
    t_read = time.perf_counter() - t0
    n_pkl = sum(len(openscene_scenes(f, sf)) for f in frames)
    t_pkl = time.perf_counter() - t0
    print(f"[logs] extract_scenes (frame_interval=1, log in memory): {n_db} scenes in {t_db:.2f} s = "
          f"{n_db / t_db:.1f} scenes/s")  # fmt: skip
    print(f"[logs] OpenScene pickles: {n_pkl} scenes from {len(paths)} logs in {t_pkl:.2f} s = {n_pkl / t_pkl:.1f} "
          f"scenes/s (read_openscene_log {t_read:.2f} s + openscene_scenes)")  # fmt: skip


def _route_from(map_api: MapProtocol, lane_id: str, length: int = 6) -> tuple[str, ...]:
    """The ego lane's roadblock followed by the first successor chain (roadblock, connector, ...)."""
    block = map_api.lanes[lane_id].roadblock_id
    route = [block]
    for _ in range(length):
        obj = map_api.roadblocks.get(block) or map_api.roadblock_connectors.get(block)
        if obj is None or not obj.outgoing_ids:
            break
        block = obj.outgoing_ids[0]
        route.append(block)
    return tuple(route)


def town_frames(map_api: MapProtocol, count: int, rng: np.random.Generator, num_agents: int = 40) -> list[Frame]:
    """Random raster inputs on a map: ego on a lane, agents on nearby lanes, as in logs a few routes (one per
    log) and traffic lights cycling through four phases (each red set recurs)."""
    lanes = list(map_api.lanes.values())
    pts = np.concatenate([np.asarray(o.baseline)[:, :2] for o in lanes])
    heads = np.concatenate([polyline_headings(np.asarray(o.baseline)[:, :2]) for o in lanes])
    owner = np.repeat(np.arange(len(lanes)), [len(o.baseline) for o in lanes])
    lights = [c.id for c in map_api.lane_connectors.values() if c.has_traffic_light]
    phase_of = rng.integers(4, size=len(lights))
    phases = [[c for c, ph in zip(lights, phase_of, strict=True) if ph != k] for k in range(4)]
    kinds = np.array([TrackedObjectType.VEHICLE] * 14 + [TrackedObjectType.PEDESTRIAN] * 4 + [2, 3])
    sizes = {0: (4.8, 2.0), 1: (0.7, 0.7), 2: (1.8, 0.7), 3: (0.5, 0.5)}
    starts = rng.integers(len(pts), size=8)  # eight "logs", one route each; the ego drives on its route
    routes = [_route_from(map_api, lanes[owner[k]].id) for k in starts]
    on_route = [np.flatnonzero(np.isin([o.roadblock_id for o in lanes], r)[owner]) for r in routes]
    frames = []
    for _ in range(count):
        r = int(rng.integers(len(routes)))
        k = int(rng.choice(on_route[r]))
        pose = np.array([*pts[k], heads[k]])
        near = np.flatnonzero(np.hypot(*(pts - pts[k]).T) < 50.0)
        pick = rng.choice(near, size=min(num_agents, len(near)), replace=False)
        types = rng.choice(kinds, size=len(pick))
        boxes = np.zeros((len(pick), 7))
        boxes[:, :2], boxes[:, 2] = pts[pick], heads[pick]
        boxes[:, 5:7] = np.array([sizes[int(t)] for t in types])
        back = np.stack([np.cos(heads[pick]), np.sin(heads[pick])], -1)
        history = np.repeat(boxes[None], 3, 0)
        history[:, :, :2] -= np.array([3.0, 2.0, 1.0])[:, None, None] * 4.0 * back
        red, route = phases[int(rng.integers(4))], routes[r]
        frames.append(Frame(map_api, pose, boxes, types, red, route, history, np.ones(history.shape[:2], bool)))
    return frames


def _best_time(fn: Any, items: list[Any], repeats: int = 2) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t0)
    return float(best)


def _agreement(fast: np.ndarray, naive: np.ndarray) -> float:
    """Fraction of pixels where both rasters agree on occupancy (> 0), over all channels."""
    return float(((fast > 0) == (naive > 0)).mean())


def compare(frames: list[Frame], naive_count: int, cfg: RasterConfig, label: str) -> None:
    """Rasters per second of :func:`render_raster` and of the naive baseline on the same inputs."""
    naive = {id(f.map_api): NaiveRasterizer(f.map_api, cfg) for f in frames}
    t0 = time.perf_counter()
    frames[0].render(cfg)  # builds the per-map geometry cache
    t_cache = time.perf_counter() - t0
    t_fast = _best_time(lambda f: f.render(cfg), frames) / len(frames)
    subset = frames[:naive_count]
    t_naive = _best_time(lambda f: naive[id(f.map_api)].render(f), subset, repeats=1) / len(subset)
    agree = np.mean([_agreement(f.render(cfg), naive[id(f.map_api)].render(f)) for f in subset])
    print(f"[{label}] render_raster: {1.0 / t_fast:8.1f} rasters/s ({1e3 * t_fast:6.2f} ms, {len(frames)} frames; "
          f"map cache built once in {t_cache:.2f} s)")  # fmt: skip
    print(
        f"[{label}] naive shapely + PIL: {1.0 / t_naive:8.1f} rasters/s ({1e3 * t_naive:6.2f} ms, {len(subset)} frames)"
    )
    print(f"[{label}] raster speed ratio (naive / render_raster): {t_naive / t_fast:.1f}x; "
          f"pixel occupancy agreement {100 * agree:.2f} %")  # fmt: skip


def run_logs(data_root: Path | None, maps_root: Path | None, args: argparse.Namespace, cfg: RasterConfig) -> None:
    from simulation.maps.api import MapAPI

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        if data_root is None or maps_root is None:
            data_root, maps_root = _fixture_data(Path(tmp))
            print(f"[logs] fixture map and logs written to {tmp}")
        scenes, logs, t_extract, n_logs = _extract(data_root, args.max_logs)
        print(f"[logs] scene extraction: {len(scenes)} scenes from {n_logs} logs in {t_extract:.2f} s = "
              f"{len(scenes) / t_extract:.1f} scenes/s (read_log + extract_scenes, non-overlapping)")  # fmt: skip
        pickles = Path(tmp) / "navsim_logs"
        pickles.mkdir()
        _extract_overlapping(logs, pickles)
        scenes = scenes[: args.max_scenes]
        if not scenes:
            raise SystemExit("no scenes extracted")
        maps = {s.map_name: MapAPI.load(maps_root, s.map_name) for s in scenes}
        t_bev = _best_time(lambda s: render_bev(s, maps[s.map_name], cfg), scenes) / len(scenes)
        print(f"[logs] render_bev: {1.0 / t_bev:.1f} rasters/s ({1e3 * t_bev:.2f} ms each, {len(scenes)} scenes)")
        compare([Frame.of_scene(s, maps[s.map_name], cfg) for s in scenes], args.naive_frames, cfg, "logs")


def run_town(args: argparse.Namespace, cfg: RasterConfig) -> None:
    from simulation.datasets.synthetic.map_layers import town_to_map
    from simulation.datasets.synthetic.network import TownConfig, build_town
    from simulation.maps.api import MapAPI

    rng = np.random.default_rng(0)
    map_api = MapAPI.from_data(town_to_map(build_town(TownConfig(grid=(5, 5)), rng), 0))
    print(f"[town] synthetic town: {len(map_api.lanes)} lanes, {len(map_api.lane_connectors)} lane connectors")
    compare(town_frames(map_api, args.town_frames, rng), args.naive_frames, cfg, "town")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--data-root", type=Path, default=None, help="folder of .db logs (default: fixtures)")
    p.add_argument("--maps-root", type=Path, default=None, help="nuPlan maps folder (with --data-root)")
    p.add_argument("--max-logs", type=int, default=4)
    p.add_argument("--max-scenes", type=int, default=300, help="scenes rasterised by render_bev")
    p.add_argument("--town-frames", type=int, default=300, help="random frames on a synthetic town")
    p.add_argument("--naive-frames", type=int, default=60, help="frames rasterised by the naive baseline")
    args = p.parse_args(argv)
    cfg = DEFAULT_RASTER
    print(f"raster {cfg.height_px}x{cfg.width_px} px, {cfg.num_channels} channels, {cfg.resolution_m} m/px")
    run_town(args, cfg)
    run_logs(args.data_root, args.maps_root, args, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
