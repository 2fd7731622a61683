"""Data pipeline speed: scenes extracted per second from ``.db`` logs, BEV rasters per second, and the
raster speed ratio of :func:`simulation.render.render_bev` against a naive shapely + PIL rasteriser
measured in the same run.

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
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from PIL import Image, ImageDraw
from shapely import affinity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy

from simulation.maps.layers import SemanticMapLayer
from simulation.raster_geometry import whole_drivable_area
from simulation.render import AGENT_CHANNEL_TYPES, DEFAULT_RASTER, RasterConfig, ego_boxes, render_bev
from simulation.types import AgentIndex, LogWindow, StateIndex

# --------------------------------------------------------------------------------------------------
# Naive baseline: per frame, every visible shapely geometry is transformed and drawn with PIL
# --------------------------------------------------------------------------------------------------


class NaiveRasterizer:
    """Straightforward rasteriser: shapely objects kept per map, per frame an STRtree query, one
    ``affinity.affine_transform`` per object and one ``ImageDraw`` call per object and channel."""

    def __init__(self, map_api: Any, config: RasterConfig) -> None:
        self.map_api, self.config = map_api, config
        lanes = list(map_api.lanes.values()) + list(map_api.lane_connectors.values())
        self.lanes = lanes
        self.lane_polys = [o.polygon for o in lanes]
        self.lane_tree = shapely.STRtree(self.lane_polys)
        self.crosswalks = list(map_api.polygons(SemanticMapLayer.CROSSWALK).values())
        self.cross_tree = shapely.STRtree(self.crosswalks)
        from simulation.raster_geometry import RingSet

        ring_probe = RingSet.from_geometries([o.id for o in lanes], self.lane_polys)
        self.drivable = whole_drivable_area(map_api, ring_probe, map_api.polygons(SemanticMapLayer.CROSSWALK))
        self.drivable_tree = shapely.STRtree(self.drivable)

    def _matrix(self, pose: np.ndarray) -> list[float]:
        """Affine global -> pixel (u, v) for shapely: [a, b, d, e, xoff, yoff]."""
        c, s, r = np.cos(pose[2]), np.sin(pose[2]), self.config.resolution_m
        u0, v0 = self.config.ego_pixel
        # local x = c dx + s dy, local y = -s dx + c dy; u = u0 - y / r, v = v0 - x / r
        a, b = s / r, -c / r
        d, e = -c / r, -s / r
        return [a, b, d, e, u0 - a * pose[0] - b * pose[1], v0 - d * pose[0] - e * pose[1]]

    def _fill(self, draw: ImageDraw.ImageDraw, geom: Any, m: list[float]) -> None:
        for part in shapely.get_parts(geom):
            g = affinity.affine_transform(part, m)
            draw.polygon(list(g.exterior.coords), fill=1)
            for hole in g.interiors:
                draw.polygon(list(hole.coords), fill=0)

    def _line(self, draw: ImageDraw.ImageDraw, line: np.ndarray, m: list[float]) -> None:
        g = affinity.affine_transform(shapely.LineString(line[:, :2]), m)
        draw.line(list(g.coords), fill=1, width=1)

    def render(self, scene: LogWindow) -> np.ndarray:
        cfg, i = self.config, scene.current_index
        pose = scene.ego.states[i, : StateIndex.HEADING + 1]
        m = self._matrix(pose)
        view = shapely.Point(pose[:2]).buffer(cfg.radius_m)
        images = {c: Image.new("F" if c == "history" else "L", (cfg.width_px, cfg.height_px)) for c in cfg.channels}
        draws = {c: ImageDraw.Draw(im) for c, im in images.items()}
        lane_idx = self.lane_tree.query(view)
        for k in self.drivable_tree.query(view):
            self._fill(draws["drivable_area"], self.drivable[k], m)
        for k in self.cross_tree.query(view):
            self._fill(draws["crosswalks"], self.crosswalks[k], m)
        route = self.map_api.route_lane_ids(list(scene.route_roadblock_ids)) if scene.route_roadblock_ids else set()
        red = set(scene.traffic_lights.red_ids(i))
        for k in lane_idx:
            lane = self.lanes[k]
            self._line(draws["lane_centerlines"], np.asarray(lane.baseline), m)
            if lane.id in self.map_api.lanes:
                self._line(draws["lane_boundaries"], np.asarray(lane.left_boundary), m)
                self._line(draws["lane_boundaries"], np.asarray(lane.right_boundary), m)
            if lane.id in route:
                self._fill(draws["route"], lane.polygon, m)
            if lane.id in red:
                self._fill(draws["red_lights"], lane.polygon, m)
        self._agents(draws, scene, m)
        return np.stack([np.asarray(images[c], dtype=np.float32) for c in cfg.channels])

    def _box(self, draw: ImageDraw.ImageDraw, b: np.ndarray, m: list[float], value: float = 1.0) -> None:
        half_l, half_w = b[AgentIndex.LENGTH] / 2, b[AgentIndex.WIDTH] / 2
        poly = shapely.Polygon([(-half_l, -half_w), (half_l, -half_w), (half_l, half_w), (-half_l, half_w)])
        poly = affinity.rotate(poly, b[AgentIndex.HEADING], origin=(0, 0), use_radians=True)
        poly = affinity.translate(poly, b[AgentIndex.X], b[AgentIndex.Y])
        draw.polygon(list(affinity.affine_transform(poly, m).exterior.coords), fill=value)

    def _agents(self, draws: dict[str, ImageDraw.ImageDraw], scene: LogWindow, m: list[float]) -> None:
        i = scene.current_index
        valid = scene.agents.valid[i]
        for b, t in zip(scene.agents.boxes[i][valid], scene.agents.types[valid], strict=True):
            for name, kinds in AGENT_CHANNEL_TYPES.items():
                if int(t) in kinds:
                    self._box(draws[name], b, m)
        self._box(draws["ego"], ego_boxes(scene.ego.states[i : i + 1, :3])[0], m)
        for j in range(i):
            for b in scene.agents.boxes[j][scene.agents.valid[j]]:
                self._box(draws["history"], b, m, (j + 1) / (i + 1))
            self._box(draws["history"], ego_boxes(scene.ego.states[j : j + 1, :3])[0], m, (j + 1) / (i + 1))


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
    for k in range(3):
        write_log(log, data_root / f"{log.log_name}_{k}.db")
    return data_root, maps_root


def _extract(data_root: Path, max_logs: int) -> tuple[list[Any], float, int]:
    """Read logs and extract NAVSIM scenes; returns (scenes, seconds, number of logs)."""
    from simulation.datasets.nuplan_db import read_log
    from simulation.datasets.scenes import SceneFilter, extract_scenes

    paths = sorted(data_root.rglob("*.db"))[:max_logs]
    if not paths:
        raise SystemExit(f"no .db logs under {data_root}")
    scenes: list[Any] = []
    t0 = time.perf_counter()
    for p in paths:
        scenes.extend(extract_scenes(read_log(p), SceneFilter()))
    return scenes, time.perf_counter() - t0, len(paths)


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


def run(data_root: Path | None, maps_root: Path | None, max_logs: int, max_scenes: int, naive_scenes: int) -> None:
    from simulation.maps.api import MapAPI

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        if data_root is None or maps_root is None:
            data_root, maps_root = _fixture_data(Path(tmp))
            print(f"data: fixtures written to {tmp}")
        scenes, t_extract, n_logs = _extract(data_root, max_logs)
        print(f"scene extraction: {len(scenes)} scenes from {n_logs} logs in {t_extract:.2f} s "
              f"= {len(scenes) / t_extract:.1f} scenes/s (read_log + extract_scenes)")  # fmt: skip
        scenes = scenes[:max_scenes]
        if not scenes:
            raise SystemExit("no scenes extracted")
        maps = {s.map_name: MapAPI.load(maps_root, s.map_name) for s in scenes}
        cfg = DEFAULT_RASTER
        t0 = time.perf_counter()
        for s in scenes[:1]:
            render_bev(s, maps[s.map_name], cfg)
        print(f"raster geometry cache (first raster of a map): {time.perf_counter() - t0:.3f} s")
        t_fast = _best_time(lambda s: render_bev(s, maps[s.map_name], cfg), scenes) / len(scenes)
        naive = {name: NaiveRasterizer(m, cfg) for name, m in maps.items()}
        subset = scenes[:naive_scenes]
        t_naive = _best_time(lambda s: naive[s.map_name].render(s), subset, repeats=1) / len(subset)
        agree = np.mean([_agreement(render_bev(s, maps[s.map_name], cfg), naive[s.map_name].render(s)) for s in subset])
        print(f"rasters ({cfg.height_px}x{cfg.width_px}x{cfg.num_channels}, {cfg.resolution_m} m/px): "
              f"{1.0 / t_fast:.1f} rasters/s ({1e3 * t_fast:.2f} ms each, {len(scenes)} scenes)")  # fmt: skip
        print(f"naive shapely + PIL rasteriser: {1.0 / t_naive:.1f} rasters/s ({1e3 * t_naive:.2f} ms each)")
        print(f"raster speed ratio (naive / render_bev): {t_naive / t_fast:.1f}x")
        print(f"pixel occupancy agreement with the naive rasteriser: {100 * agree:.2f} %")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--data-root", type=Path, default=None, help="folder of .db logs (default: fixtures)")
    p.add_argument("--maps-root", type=Path, default=None, help="nuPlan maps folder (with --data-root)")
    p.add_argument("--max-logs", type=int, default=4)
    p.add_argument("--max-scenes", type=int, default=300, help="scenes rasterised by render_bev")
    p.add_argument("--naive-scenes", type=int, default=60, help="scenes rasterised by the naive baseline")
    args = p.parse_args(argv)
    run(args.data_root, args.maps_root, args.max_logs, args.max_scenes, args.naive_scenes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
