"""Scene sources over nuPlan ``.db`` logs, map access and metric caches for the benchmark workers.

A :class:`LogSource` lists the benchmark's tokens in the driver (``refs``) and loads them in the workers
(``load``), one log file at a time: a worker keeps the windows of the last log it read, and chunks never
mix logs, so each log is read once per worker.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulation.datasets.scenes import scenario_types_at
from simulation.evaluation.refs import SceneRef
from simulation.maps.protocol import MapProtocol
from simulation.types import LogWindow

logger = logging.getLogger(__name__)


class BenchConfigError(ValueError):
    """A benchmark config that cannot run: missing data roots, an empty split."""


#: ``log file path -> windows`` (scenes or scenarios) with their scenario types.
Extractor = Callable[[str], Sequence[tuple[LogWindow, str]]]


@dataclass
class LogSource:
    """Windows extracted from log files; the group of a token is its log file.

    Args:
        log_paths: the split's log files.
        extract: ``path -> [(window, scenario_type)]`` (must be picklable for process / Ray workers).

    Attributes:
        skipped: after :meth:`refs`, ``(path, error text)`` of every log that could not be read (left out
            of the benchmark with a warning, not fatal).
    """

    log_paths: Sequence[str]
    extract: Extractor
    skipped: list[tuple[str, str]] = field(default_factory=list, init=False)
    _group: str | None = field(default=None, init=False, repr=False)
    _windows: dict[str, LogWindow] = field(default_factory=dict, init=False, repr=False)

    def refs(self) -> list[SceneRef]:
        """The tokens of every readable log; an unreadable log is skipped, warned about and kept in ``skipped``."""
        refs: list[SceneRef] = []
        self.skipped = []
        for path in self.log_paths:
            try:
                windows = self._load_group(str(path))
            except BenchConfigError:  # the data do not fit the configuration (e.g. another city's maps): stop
                raise
            except Exception as err:  # noqa: BLE001 - one unreadable log must not abort the benchmark
                logger.warning("skipping unreadable log %s: %s: %s", path, type(err).__name__, err)
                self.skipped.append((str(path), f"{type(err).__name__}: {err}"))
                self._group, self._windows = None, {}
                continue
            refs += [SceneRef(tok, str(path), w.log_name, kind) for tok, (w, kind) in windows.items()]
        return refs

    def _load_group(self, path: str) -> dict[str, tuple[LogWindow, str]]:
        windows = {w.token: (w, kind) for w, kind in self.extract(path)}
        self._group, self._windows = path, {tok: w for tok, (w, _) in windows.items()}
        return windows

    def load(self, ref: SceneRef) -> LogWindow:
        if ref.group != self._group:
            self._load_group(ref.group)
        try:
            return self._windows[ref.token]
        except KeyError:
            raise KeyError(f"{ref.group}: token {ref.token} not found among its {len(self._windows)} windows") from None


@dataclass
class MapProvider:
    """``map_name -> MapAPI``, loaded once per process from ``maps_root``."""

    maps_root: str | None
    _maps: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.maps_root:
            raise BenchConfigError("no maps root: set NUPLAN_MAPS_ROOT or pass maps_root=<nuPlan maps folder>")
        if not Path(self.maps_root).is_dir():
            raise BenchConfigError(f"maps_root={self.maps_root} is not a folder")

    def __call__(self, map_name: str) -> Any:
        if map_name not in self._maps:
            from simulation.maps.api import MapAPI

            self._maps[map_name] = MapAPI.load(str(self.maps_root), map_name)
        return self._maps[map_name]


def metric_cache_path(cache_dir: str | Path, log_name: str, token: str) -> Path:
    """Where a scene's metric cache is stored: ``<cache_dir>/<log_name>/<token>.npz``."""
    return Path(cache_dir) / log_name / f"{token}.npz"


@dataclass
class MetricCacheProvider:
    """``(scene, map_api) -> MetricCache``: loaded from ``cache_dir`` when present, else built (and saved there).

    A stored cache of another format version (an older diffplan: another reference or tracker) is rebuilt and
    overwritten, never reused; the folder's ``meta.json`` records the format and scorer versions
    (:func:`simulation.metric_cache.write_folder_meta`). A folder of the other scorer version is an error.

    Args:
        reference_planner: PDM-Closed, whose trajectory normalises ego progress (a partial of a planner class is
            built first, :func:`resolve_planner`: the protocol configs pass ``version`` that way).
        version: scorer version (``v1`` or ``v2``).
        cache_dir: folder of stored caches, or ``None`` to build every cache in memory.

    Attributes:
        rebuilt: how many stored caches of another format version this provider rebuilt.
    """

    reference_planner: Any
    version: str
    cache_dir: str | None = None
    rebuilt: int = field(default=0, init=False)
    _folder_checked: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.reference_planner = resolve_planner(self.reference_planner)

    def __call__(self, scene: Any, map_api: MapProtocol) -> Any:
        from simulation.metric_cache import MetricCache, MetricCacheVersionError, build_metric_cache

        path = None if self.cache_dir is None else metric_cache_path(self.cache_dir, scene.log_name, scene.token)
        if path is not None:
            self._check_folder()
        if path is not None and path.exists():
            try:
                return self._checked(MetricCache.load(path), path)
            except MetricCacheVersionError as err:
                logger.info("rebuilding metric cache %s (format version %s)", path, err.found)
                self.rebuilt += 1
        cache = build_metric_cache(scene, map_api, self.reference_planner, self.version)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            cache.save(path)
        return cache

    def _checked(self, cache: Any, path: Path) -> Any:
        from simulation.metric_cache import MetricCacheError

        if cache.version != self.version:  # a v1 cache would score v2 without red lights, silently
            raise MetricCacheError(
                f"{path}: metric cache of version {cache.version}, this benchmark scores {self.version} "
                "(keep one metric_cache_dir per version)"
            )
        return cache

    def _check_folder(self) -> None:
        """Once per provider: refuse a folder of the other scorer version; record this format in ``meta.json``."""
        if self._folder_checked or self.cache_dir is None:
            return
        from simulation.metric_cache import CACHE_FORMAT_VERSION, MetricCacheError, read_folder_meta, write_folder_meta

        meta = read_folder_meta(self.cache_dir)
        if meta is not None and meta.get("version") not in (None, self.version):
            raise MetricCacheError(
                f"{self.cache_dir}: metric caches of version {meta.get('version')}, this benchmark scores "
                f"{self.version} (keep one metric_cache_dir per version)"
            )
        if meta is None or meta.get("format_version") != CACHE_FORMAT_VERSION:
            if meta is not None:
                logger.warning(
                    "metric cache folder %s has format version %s, this code writes %s: its caches are rebuilt "
                    "as they are needed", self.cache_dir, meta.get("format_version"), CACHE_FORMAT_VERSION,
                )  # fmt: skip
            write_folder_meta(self.cache_dir, self.version)
        self._folder_checked = True


def build_planner(cls: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)``, leaving out ``version`` when ``cls`` does not accept it (a planner without NAVSIM
    v1 / v2 variants, such as PDM-Closed before it had them, or the log-replay reference)."""
    if "version" in kwargs:
        params = inspect.signature(cls).parameters.values()
        if not any(p.name == "version" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            kwargs.pop("version")
    return cls(*args, **kwargs)


def resolve_planner(planner: Any) -> Any:
    """A planner given as a partial of its class (Hydra ``_partial_: true``) built by :func:`build_planner`;
    anything else as it is."""
    if isinstance(planner, functools.partial) and isinstance(planner.func, type):
        return build_planner(planner.func, *planner.args, **planner.keywords)
    return planner


def split_log_paths(data_root: str | Path, split: str) -> list[str]:
    """The ``.db`` log files of ``split`` under ``data_root`` (split definitions: ``configs/data/splits``)."""
    from simulation.datasets.splits import split_log_paths as _split_log_paths

    return [str(p) for p in _split_log_paths(data_root, split)]


def check_log_map(log: Any, maps_root: str) -> None:
    """Raise :class:`BenchConfigError` naming the log and its map when the map under ``maps_root`` cannot be
    loaded or does not fit the log (:func:`simulation.maps.fit.check_log_fits_map`)."""
    from simulation.maps.api import MapAPI
    from simulation.maps.errors import MapError
    from simulation.maps.fit import check_log_fits_map

    try:
        check_log_fits_map(
            log.log_name, log.map_version, log.ego_states[0, :2], MapAPI.load(maps_root, log.map_location)
        )
    except MapError as exc:
        raise BenchConfigError(f"log {log.log_name} (map {log.map_location} under {maps_root}): {exc}") from None


@dataclass(frozen=True)
class NuplanExtractor:
    """Extract NAVSIM scenes (``kind='navsim'``) or nuPlan scenarios (``kind='closed_loop'``) from a ``.db`` log;
    with ``maps_root``, first check that the log fits its map (:func:`check_log_map`)."""

    kind: str
    scene_filter: Mapping[str, Any] = field(default_factory=dict)
    maps_root: str | None = None

    def __call__(self, path: str) -> list[tuple[LogWindow, str]]:
        from simulation.datasets.nuplan_db import cached_read_log
        from simulation.datasets.scenes import SceneFilter, extract_scenarios, extract_scenes

        log = cached_read_log(path)  # a process that benchmarks a split again decodes its logs once
        if self.maps_root:
            check_log_map(log, self.maps_root)
        if self.kind == "navsim":
            scenes = extract_scenes(log, SceneFilter(**dict(self.scene_filter)))
            types = scenario_types_at(log, [str(s.frame_tokens[s.current_index]) for s in scenes])
            return list(zip(scenes, types, strict=True))
        return [(s, str(s.scenario_type)) for s in extract_scenarios(log)]


def nuplan_log_source(
    data_root: str | None,
    split: str,
    kind: str,
    scene_filter: Mapping[str, Any] | None = None,
    maps_root: str | None = None,
) -> LogSource:
    """Scenes (``kind='navsim'``) or scenarios (``kind='closed_loop'``) of the ``.db`` logs of ``split``; with
    ``maps_root``, a log that does not fit its map is a :class:`BenchConfigError` before anything is scored."""
    if not data_root:
        raise BenchConfigError("no data root: set NUPLAN_DATA_ROOT or pass data_root=<folder of .db logs>")
    if not Path(data_root).is_dir():
        raise BenchConfigError(f"data_root={data_root} is not a folder")
    from simulation.datasets.splits import SplitError, listed_tokens, reject_scene_list, split_scene_tokens

    try:
        if kind != "navsim":
            reject_scene_list(data_root, split)
        listed = split_scene_tokens(data_root, split)
        paths = split_log_paths(data_root, split)
    except SplitError as exc:
        raise BenchConfigError(str(exc)) from None
    if listed is not None and not listed:
        raise BenchConfigError(f"split {split!r}: its scene list under {data_root} selects no scene")
    if not paths:
        raise BenchConfigError(f"split {split!r} has no logs under {data_root}")
    scene_filter = dict(scene_filter or {})
    if listed is not None:
        scene_filter["tokens"] = listed_tokens(listed, scene_filter.get("tokens"))
    return LogSource(paths, NuplanExtractor(kind, scene_filter, maps_root or None))
