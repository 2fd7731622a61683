"""RL data: the imitation feature cache plus each scene's NAVSIM metric cache, matched by token.

A batch is the imitation batch of :mod:`training.data` (``features``: a ``PlannerInput`` batch, ``targets``:
``{"trajectory": (B, 8, 3)}``, ``tokens``: ``list[str]``) plus ``metric_cache``: ``list[MetricCache]``, one per
scene in batch order, for the reward (:mod:`rewards.composite`).

Metric caches live in ``metric_cache_dir`` in the benchmarks' layout (``<dir>/<log_name>/<token>.npz``, one folder
per protocol version), so ``diffplan data cache --metric`` and ``diffplan bench metric_cache_dir=...`` share them.
The first run builds the missing ones for the split's tokens with the benchmark's builder
(:class:`simulation.evaluation.sources.MetricCacheProvider`, PDM-Closed as the progress reference), reading the
split's logs once; later runs only list the folder. Caches are loaded lazily, one per sample, by the data loader.
A scene whose cache cannot be built (no such token in the split's logs, an unreadable log, a failing build) is
dropped from the split with a warning naming it.

A split may be a scene list (``configs/data/splits/synth_navtrain.yaml``: the hard scenes of ``synth_train``, as
NAVSIM's ``navtrain`` is a filter of OpenScene's ``trainval``): its scenes are read from the feature cache folder of
its source split, keeping the listed tokens only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from simulation.datasets.splits import available_splits, split_scene_list
from simulation.metric_cache import CACHE_FORMAT_VERSION, MetricCache, MetricCacheError, stored_format_version
from training.data import FeatureCacheDataset, FeatureCacheError, collate

logger = logging.getLogger(__name__)

Version = Literal["v1", "v2"]


def split_cache_source(data_root: str | Path, split: str) -> tuple[str, frozenset[str] | None]:
    """``(feature cache folder, listed tokens)`` of ``split``: a log split is its own folder with every scene
    (``None``); a scene-list split reads its source split's folder, keeping the listed tokens.

    Raises:
        SplitError: the split's scene list is missing or unreadable (the message says how to make it).
    """
    if split not in available_splits():
        return split, None  # a feature cache folder that no split config names: every scene of it
    scene_list = split_scene_list(data_root, split)
    return (split, None) if scene_list is None else (scene_list.source_split, frozenset(scene_list.tokens))


def index_metric_caches(metric_cache_dir: str | Path) -> dict[str, Path]:
    """``token -> file`` of every metric cache stored under ``metric_cache_dir`` (``<log_name>/<token>.npz``)."""
    return {path.stem: path for path in sorted(Path(metric_cache_dir).glob("*/*.npz"))}


@dataclass(frozen=True)
class LogTask:
    """Build the metric caches of ``tokens`` found in one log (a picklable task for a process pool)."""

    log_path: Path
    maps_root: Path
    metric_cache_dir: Path
    version: str
    tokens: frozenset[str]


@dataclass
class LogResult:
    """What one :class:`LogTask` did: ``built`` tokens, ``failed`` ``{token: reason}``, or a ``log_error``."""

    log_name: str
    built: list[str]
    failed: dict[str, str]
    log_error: str | None = None


def build_log_caches(task: LogTask) -> LogResult:
    """Build (and store) the metric caches of the scenes of ``task.log_path`` whose token is in ``task.tokens``."""
    from planners.rule_based import PDMClosedPlanner
    from simulation.datasets.nuplan_db import read_log
    from simulation.datasets.scenes import SceneFilter, extract_scenes
    from simulation.evaluation.sources import MetricCacheProvider
    from simulation.maps.api import MapAPI
    from simulation.maps.fit import check_log_fits_map

    name = task.log_path.stem
    try:
        log = read_log(task.log_path)
        map_api = MapAPI.load(task.maps_root, log.map_location)
        check_log_fits_map(log.log_name, log.map_version, log.ego_states[0, :2], map_api)
        scenes = extract_scenes(log, SceneFilter(frame_interval=1, tokens=sorted(task.tokens)))
    except Exception as err:  # noqa: BLE001 - one unreadable log never stops the others
        return LogResult(name, [], {}, f"{type(err).__name__}: {err}")
    provider = MetricCacheProvider(PDMClosedPlanner(), task.version, str(task.metric_cache_dir))
    result = LogResult(log.log_name, [], {})
    for scene in scenes:
        try:
            provider(scene, map_api)  # builds and stores it
            result.built.append(scene.token)
        except Exception as err:  # noqa: BLE001 - the scene is dropped, the reason reported
            result.failed[scene.token] = f"{type(err).__name__}: {err}"
    return result


def build_metric_caches(
    tokens: Iterable[str],
    data_root: str | Path,
    maps_root: str | Path,
    split: str,
    metric_cache_dir: str | Path,
    version: str,
    workers: int = 1,
) -> dict[str, str]:
    """Build the metric caches of ``tokens`` from the logs of ``split``; returns ``{token: reason}`` of the tokens
    that could not be built (each also named in a warning)."""
    from simulation.datasets.splits import split_log_paths

    wanted = frozenset(tokens)
    if not wanted:
        return {}
    tasks = [
        LogTask(Path(p), Path(maps_root), Path(metric_cache_dir), version, wanted)
        for p in split_log_paths(data_root, split)
    ]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(min(workers, len(tasks))) as pool:
            results = list(pool.map(build_log_caches, tasks))
    else:
        results = [build_log_caches(t) for t in tasks]
    failed: dict[str, str] = {}
    bad_logs = []
    for result in results:
        failed.update(result.failed)
        if result.log_error:
            bad_logs.append(result.log_name)
            logger.warning("metric cache: cannot read log %s of %s: %s", result.log_name, split, result.log_error)
    found = {tok for r in results for tok in r.built} | set(failed)
    where = f" (unreadable logs: {', '.join(bad_logs)})" if bad_logs else ""
    failed.update({tok: f"no scene with this token in the logs of {split}{where}" for tok in wanted - found})
    for token, reason in sorted(failed.items()):
        logger.warning("metric cache: dropped scene %s of %s: %s", token, split, reason)
    return failed


class RLDataset(Dataset):
    """Rows of a feature cache split, each with the path of its scene's metric cache (loaded per sample)."""

    def __init__(
        self, features: FeatureCacheDataset, rows: Sequence[int], caches: Sequence[Path], version: str
    ) -> None:
        self.features = features
        self.rows = list(rows)
        self.caches = list(caches)
        self.version = version

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tokens(self) -> list[str]:
        return [str(self.features.arrays["tokens"][r]) for r in self.rows]

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.features[self.rows[i]]
        cache = MetricCache.load(self.caches[i])
        if cache.version != self.version:
            raise MetricCacheError(
                f"{self.caches[i]}: metric cache of version {cache.version}, this data module serves {self.version} "
                "(keep one metric_cache_dir per version)"
            )
        return {**sample, "metric_cache": cache}


class RLDatasets(ConcatDataset):
    """Several splits' :class:`RLDataset` in the order given (e.g. the logged scenes and the closed-loop states
    of ``diffplan data dagger --metric-cache``)."""

    datasets: list[RLDataset]  # type: ignore[assignment]

    @property
    def tokens(self) -> list[str]:
        return [t for d in self.datasets for t in d.tokens]


def rl_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`training.data.collate` of the imitation part, ``metric_cache`` as a list in batch order."""
    caches = [s["metric_cache"] for s in samples]
    out = collate([{k: v for k, v in s.items() if k != "metric_cache"} for s in samples])
    return {**out, "metric_cache": caches}


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` that depends only on ``seed`` and the epoch (Lightning calls
    :meth:`set_epoch`), so a resumed run sees the batches a run that never stopped would have seen."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


class RLDataModule(pl.LightningDataModule):
    """Train / val scenes with their features, targets and metric caches.

    Args:
        feature_cache_dir: the feature cache (``diffplan data cache``).
        metric_cache_dir: metric caches of ``version`` (built there when missing).
        data_root, maps_root: the nuPlan-format logs and maps the caches are built from.
        train_split, val_split: split names (feature cache folders and ``configs/data/splits`` entries); a list
            concatenates several. A folder that no split config names (``diffplan data dagger``'s) has its metric
            caches made with it: its scenes without one are left out (a warning), never built from the logs.
        batch_size, num_workers: loader settings (metric caches are read by the loader workers).
        version: NAVSIM protocol of the metric caches, ``"v1"`` (PDMS) or ``"v2"`` (EPDMS).
        max_scenes: keep at most this many scenes per split (the first in cache order), e.g. for smoke runs.
        stride: keep every ``stride``-th scene of a split in cache order (before ``max_scenes``): a large split's
            scenes spread over all of its logs, with metric caches built only for those.
        cache_workers: processes building missing metric caches (one log per task).
        shuffle_seed: seed of the training order, which depends only on it and the epoch (exact resume).
    """

    def __init__(
        self,
        feature_cache_dir: str = "outputs/demo/cache",
        metric_cache_dir: str = "outputs/demo/metric_cache/v1",
        data_root: str = "outputs/demo/data",
        maps_root: str = "outputs/demo/data/maps",
        train_split: str | list[str] = "synth_train",
        val_split: str | list[str] = "synth_val",
        batch_size: int = 8,
        num_workers: int = 0,
        version: Version = "v1",
        max_scenes: int | None = None,
        cache_workers: int = 1,
        shuffle_seed: int = 0,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.shuffle_seed = shuffle_seed
        if version not in ("v1", "v2"):
            raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
        self.feature_cache_dir = Path(feature_cache_dir)
        self.metric_cache_dir = Path(metric_cache_dir)
        self.data_root, self.maps_root = Path(data_root), Path(maps_root)
        self.splits = {"train": train_split, "val": val_split}
        self.batch_size, self.num_workers = batch_size, num_workers
        self.version = version
        self.max_scenes = max_scenes
        self.cache_workers = cache_workers
        self._datasets: dict[str, RLDataset | RLDatasets] = {}

    def prepare_data(self) -> None:
        """Build the missing metric caches of both splits (once, on one process per node)."""
        for stage in self.splits:
            self.dataset(stage)

    def setup(self, stage: str | None = None) -> None:
        for name in self.splits if stage in (None, "fit") else ("val",):
            self.dataset(name)

    def dataset(self, stage: str) -> RLDataset | RLDatasets:
        """The ``"train"`` or ``"val"`` scenes that have a metric cache (missing ones built first)."""
        if stage not in self._datasets:
            split = self.splits[stage]
            if isinstance(split, str):
                self._datasets[stage] = self._build_dataset(split)
            else:
                self._datasets[stage] = RLDatasets([self._build_dataset(s) for s in split])
        return self._datasets[stage]

    def _build_dataset(self, split: str) -> RLDataset:
        source, listed = split_cache_source(self.data_root, split)
        features = FeatureCacheDataset(self.feature_cache_dir, source)
        cached = [str(t) for t in features.arrays["tokens"]]
        in_split = [p for p, t in enumerate(cached) if listed is None or t in listed]
        if listed is not None and not in_split:
            raise FeatureCacheError(
                f"{split}: none of its {len(listed)} listed scenes is in the feature cache "
                f"{self.feature_cache_dir / source} (was the list selected from other data?)"
            )
        positions = in_split[:: self.stride][: self.max_scenes]
        tokens = [cached[p] for p in positions]
        index = index_metric_caches(self.metric_cache_dir)
        missing = [t for t in tokens if t not in index or stored_format_version(index[t]) != CACHE_FORMAT_VERSION]
        if missing and split not in available_splits():
            # not a split of the logs (closed-loop states): its metric caches come with it, none can be built here
            logger.warning(
                "%s: %d of its %d samples have no metric cache of this format in %s; left out",
                split,
                len(missing),
                len(tokens),
                self.metric_cache_dir,
            )
            absent = set(missing)
            index = {t: p for t, p in index.items() if t not in absent}
        elif missing:
            logger.info(
                "metric cache: building %d of %d scenes of %s (absent or of an older format)",
                len(missing),
                len(tokens),
                split,
            )
            failed = build_metric_caches(
                missing, self.data_root, self.maps_root, split, self.metric_cache_dir, self.version, self.cache_workers
            )
            index = {t: p for t, p in index_metric_caches(self.metric_cache_dir).items() if t not in failed}
        rows = [i for i, t in enumerate(tokens) if t in index]
        if not rows:
            raise FeatureCacheError(
                f"{split}: none of its {len(tokens)} scenes has a metric cache in {self.metric_cache_dir}; "
                "see the warnings above"
            )
        return RLDataset(features, [positions[i] for i in rows], [index[tokens[i]] for i in rows], self.version)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the tensors to ``device``; the metric caches stay as they are (frozen numpy records)."""
        if not isinstance(batch, dict) or "metric_cache" not in batch:
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        rest = {k: v for k, v in batch.items() if k != "metric_cache"}
        return {**super().transfer_batch_to_device(rest, device, dataloader_idx), "metric_cache": batch["metric_cache"]}

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(stage)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.shuffle_seed) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=rl_collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
