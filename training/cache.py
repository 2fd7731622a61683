"""``diffplan data cache``: the feature cache (planner inputs + targets) and the metric cache, in parallel.

    diffplan data cache --data-root DIR --maps-root DIR --splits synth_train synth_val synth_test \\
        --out outputs/cache [--frame-interval 1] [--workers 2]
    diffplan data cache --metric --data-root DIR --maps-root DIR --splits synth_test \\
        --out outputs/metric_cache/v1 [--version v1|v2] [--workers 2]

One task per log: the worker extracts the log's NAVSIM scenes (4 history + 10 future frames at 2 Hz) and
loads its map once. The feature cache writes one shard per log (``<out>/<split>/shard_<log>.npz``); the
metric cache (``--metric``) one file per scene (``<out>/<log>/<token>.npz``, the layout the benchmarks
read through ``metric_cache_dir=``), with PDM-Closed of that version as the progress reference. Files already
present are skipped, so an interrupted run continues where it stopped; metric caches of an older format version are
rebuilt. A log that fails is reported by name and skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from simulation.datasets.nuplan_db import read_log
from simulation.datasets.scenes import SceneFilter, extract_scenes
from simulation.datasets.splits import SplitError, split_log_paths
from simulation.features import PLANNER_RASTER, scene_features, scene_targets
from simulation.maps.api import MapAPI
from simulation.maps.fit import check_log_fits_map
from simulation.render import RasterConfig
from simulation.types import Scene
from training.data import stack_samples, write_meta, write_npz_atomic

logger = logging.getLogger(__name__)


class CacheBuildError(RuntimeError):
    """``diffplan data cache`` cannot run (missing data root, unknown split) or built nothing (every log failed)."""


@dataclass(frozen=True)
class CacheTask:
    log_path: Path
    split: str
    maps_root: Path
    out: Path
    raster: RasterConfig
    frame_interval: int | None = 1
    metric_version: str | None = None  # None: feature cache; "v1" / "v2": metric cache


def _shard_path(task: CacheTask) -> Path:
    return task.out / task.split / f"shard_{task.log_path.stem}.npz"


def cache_log(task: CacheTask) -> tuple[str, int, str | None]:
    """Build the cache files of one log; returns ``(log name, number of scenes, error or None)``."""
    shard = _shard_path(task)
    if task.metric_version is None and shard.exists():
        return task.log_path.stem, -1, None
    try:
        log = read_log(task.log_path)
        map_api = MapAPI.load(task.maps_root, log.map_location)
        check_log_fits_map(log.log_name, log.map_version, log.ego_states[0, :2], map_api)
        scenes = extract_scenes(log, SceneFilter(frame_interval=task.frame_interval))
        if task.metric_version is not None:
            return log.log_name, _metric_caches(scenes, map_api, task.out, task.metric_version), None
        kept = [scene for scene in scenes if scene.num_future_frames >= 8]
        features = [scene_features(scene, map_api, task.raster) for scene in kept]
        if kept:
            targets = [scene_targets(scene) for scene in kept]
            write_npz_atomic(shard, stack_samples(features, targets, [scene.token for scene in kept]))
        return task.log_path.stem, len(kept), None
    except Exception as err:  # one bad log never stops the cache
        return task.log_path.stem, 0, f"{type(err).__name__}: {err}"


def _metric_caches(scenes: Iterable[Scene], map_api: MapAPI, out: Path, version: str) -> int:
    from planners.rule_based import PDMClosedPlanner
    from simulation.evaluation.sources import MetricCacheProvider, build_planner

    # PDM-Closed of the protocol's version (passed only where its constructor takes one)
    reference = build_planner(PDMClosedPlanner, version=version)
    provider = MetricCacheProvider(reference_planner=reference, version=version, cache_dir=str(out))
    n = 0
    for scene in scenes:
        provider(scene, map_api)  # loads when present, else builds and saves
        n += 1
    return n


def build_cache(
    data_root: Path,
    maps_root: Path,
    splits: list[str],
    out: Path,
    workers: int = 1,
    raster: RasterConfig = PLANNER_RASTER,
    frame_interval: int | None = 1,
    metric_version: str | None = None,
) -> dict[str, int]:
    """Build the feature cache (or, with ``metric_version``, the metric cache) of ``splits``; returns scenes
    per split. Logs that fail are skipped and named in a warning.

    Raises:
        CacheBuildError: a missing data / maps root or an unknown split (nothing is written), or every log failed.
    """
    tasks = [
        CacheTask(path, split, maps_root, out, raster, frame_interval, metric_version)
        for split, path in split_logs(data_root, maps_root, splits)
    ]
    if metric_version is None:
        write_meta(out, {"bev_shape": list(raster.shape), "raster": raster.to_dict()})
    counts = dict.fromkeys(splits, 0)
    failed = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(cache_log, tasks))
    else:
        results = [cache_log(t) for t in tasks]
    for task, (name, n, error) in zip(tasks, results):
        if error:
            failed.append(name)
            logger.warning("feature cache: skipped log %s: %s", name, error)
        elif n >= 0:
            counts[task.split] += n
    if failed:
        logger.warning("feature cache: %d of %d logs failed: %s", len(failed), len(tasks), ", ".join(failed))
    if tasks and len(failed) == len(tasks):
        raise CacheBuildError(f"every one of the {len(tasks)} logs failed (first: {failed[0]}); see the warnings above")
    return counts


def split_logs(data_root: Path, maps_root: Path, splits: list[str]) -> list[tuple[str, Path]]:
    """``(split, log path)`` of every log of ``splits``; raises :class:`CacheBuildError` before anything is written."""
    for what, folder in (("data root", data_root), ("maps root", maps_root)):
        if not Path(folder).is_dir():
            raise CacheBuildError(f"{what} {folder} is not a folder")
    try:
        return [(split, path) for split in splits for path in split_log_paths(data_root, split)]
    except SplitError as exc:
        raise CacheBuildError(str(exc)) from None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffplan data cache", description=__doc__)
    parser.add_argument("--data-root", type=Path, default=os.environ.get("NUPLAN_DATA_ROOT"))
    parser.add_argument("--maps-root", type=Path, default=os.environ.get("NUPLAN_MAPS_ROOT"))
    parser.add_argument("--splits", nargs="+", default=["synth_train", "synth_val", "synth_test"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metric", action="store_true", help="build NAVSIM metric caches instead of features")
    parser.add_argument("--version", choices=("v1", "v2"), default="v1", help="metric cache version (--metric)")
    parser.add_argument("--frame-interval", type=int, default=1, help="step between scenes in 2 Hz frames")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.data_root is None or args.maps_root is None:
        parser.error("give --data-root/--maps-root or set NUPLAN_DATA_ROOT/NUPLAN_MAPS_ROOT")
    try:
        counts = build_cache(
            args.data_root,
            args.maps_root,
            args.splits,
            args.out,
            args.workers,
            frame_interval=args.frame_interval,
            metric_version=args.version if args.metric else None,
        )
    except CacheBuildError as err:
        print(f"diffplan data cache: {err}", file=sys.stderr)
        return 1
    for split, n in counts.items():
        print(f"{split}: {n} scenes")
    return 0
