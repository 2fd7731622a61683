"""Lightning callbacks that look at the planner while it trains: NAVSIM scores, BEV plots and, for a generator +
discriminator pair, BEV-Warp closed-loop episodes (:class:`BEVWarpEvalCallback`, on the split's nuPlan scenarios).

The first two work on a fixed set of validation scenes, chosen once at ``setup``, given either

* in Python: ``scenes`` (:class:`~simulation.types.Scene` list) and ``map_api`` (one ``MapAPI`` for every
  scene, or a ``map_name -> MapAPI`` mapping), or
* as a split of ``.db`` logs: ``data_root``, ``maps_root`` and ``split`` (``configs/data/splits``); every log
  of the split is read once with :func:`~simulation.datasets.splits.load_scenes` (non-overlapping NAVSIM
  scenes) and ``max_scenes`` of them are kept, evenly spaced over the split.

Every ``every_n_epochs`` epochs, at the end of validation (never in the sanity check), the module's current
planner (``pl_module.planner``) is wrapped in a :class:`~planners.adapter.LearnedPlanner`, exactly as the
benchmark drives it, and run in eval mode without gradients; the previous train / eval mode is restored.

- :class:`ClosedLoopEvalCallback` scores the plans with the NAVSIM protocol of ``diffplan bench``
  (the benchmark's :class:`~simulation.evaluation.units.NavsimUnit` and ``rewards.pdm.PDMScorer``; the
  metric caches, PDM-Closed as reference, are built once at setup) and logs ``val/pdms`` and
  ``val/pdms/<sub-metric>`` (``val/epdms...`` for v2).
- :class:`BEVPlotCallback` draws each scene with the planner's candidates, its chosen trajectory and the
  logged future (:func:`simulation.visualize.save_scene_png`) to PNG files under the run's log folder and
  to TensorBoard.

Example (``configs/train/*.yaml``)::

    trainer:
      callbacks:
        - class_path: training.callbacks.ClosedLoopEvalCallback
          init_args: {data_root: outputs/demo/data, maps_root: outputs/demo/data/maps, split: synth_val}
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from planners.adapter import LearnedPlanner
from planners.base import PlanOutput
from simulation import visualize
from simulation.evaluation.evaluator import SceneEvaluator
from simulation.evaluation.protocols import BenchmarkProtocol, get_protocol
from simulation.evaluation.refs import InMemorySource
from simulation.evaluation.sources import MapProvider, MetricCacheProvider, build_planner
from simulation.evaluation.units import NavsimUnit
from simulation.features import PLANNER_RASTER, PlannerInput, raster_from_meta
from simulation.maps.protocol import MapProtocol
from simulation.render import RasterConfig, RenderError
from simulation.types import Scene

logger = logging.getLogger(__name__)

MapArg = Any  # a MapAPI, or a mapping map_name -> MapAPI


class CallbackConfigError(ValueError):
    """A callback without scenes, or with a source it cannot use."""


# --------------------------------------------------------------------------------------------------
# Validation scenes
# --------------------------------------------------------------------------------------------------


def evenly_spaced(items: Sequence[Any], count: int | None) -> list[Any]:
    """``count`` items spread evenly over ``items`` (first one included), in order; all when ``count`` is None."""
    if count is None or count >= len(items):
        return list(items)
    if count <= 0:
        return []
    picks = np.linspace(0, len(items), num=count, endpoint=False).astype(int)
    return [items[i] for i in picks]


def map_lookup(map_api: MapArg) -> Callable[[str], Any]:
    """``map_name -> MapAPI`` from one ``MapAPI`` (used for every scene) or a mapping by map name."""
    if isinstance(map_api, Mapping):
        maps = dict(map_api)

        def lookup(name: str) -> Any:
            try:
                return maps[name]
            except KeyError:
                raise CallbackConfigError(f"no map API for map {name!r} (have {sorted(maps)})") from None

        return lookup
    return lambda name: map_api


def validation_scenes(
    scenes: Sequence[Scene] | None,
    map_api: MapArg,
    data_root: str | None,
    maps_root: str | None,
    split: str,
    max_scenes: int | None,
) -> tuple[list[Scene], Callable[[str], Any]]:
    """The callbacks' scenes and ``map_name -> MapAPI``: the ones given in Python, else loaded from ``split``."""
    from simulation.datasets.scenes import SceneFilter
    from simulation.datasets.splits import load_scenes

    if scenes is not None:
        if map_api is None:
            raise CallbackConfigError("scenes given without map_api: pass the scenes' MapAPI (or a name -> API map)")
        return evenly_spaced(list(scenes), max_scenes), map_lookup(map_api)
    if not data_root or not maps_root:
        raise CallbackConfigError(
            "no validation scenes: pass scenes + map_api, or data_root and maps_root (got "
            f"data_root={data_root!r}, maps_root={maps_root!r})"
        )
    loaded = load_scenes(data_root, split, SceneFilter(frame_interval=None, has_route=True))
    if not loaded:
        raise CallbackConfigError(f"split {split!r} under {data_root} has no scenes with a route")
    chosen = evenly_spaced(loaded, max_scenes)
    logger.info("validation scenes: %d of the %d scenes of %s", len(chosen), len(loaded), split)
    return chosen, MapProvider(str(maps_root))


# --------------------------------------------------------------------------------------------------
# The module's planner as a closed-loop planner
# --------------------------------------------------------------------------------------------------


class _OnDevice(nn.Module):
    """Runs a planner on its own device for inputs built on the CPU; returns CPU outputs."""

    def __init__(self, planner: nn.Module) -> None:
        super().__init__()
        self.planner = planner

    def initial_noise_shape(self, batch: int) -> Any:
        return self.planner.initial_noise_shape(batch)  # type: ignore[operator]

    def forward(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor) -> PlanOutput:
        param = next(self.planner.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        out = self.planner(inputs.to(device), noise.to(device))

        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().float().cpu()

        return PlanOutput(out.trajectory.detach().float().cpu(), cpu(out.candidates), cpu(out.scores))


def planner_raster(planner: nn.Module, raster: RasterConfig | Mapping[str, Any] | None = None) -> RasterConfig:
    """The raster to render for ``planner``: ``raster`` if given, else the one stored with the planner
    (``raster_config``, set from the feature cache), else the default
    (:func:`~simulation.features.raster_from_meta`).

    Raises :class:`CallbackConfigError` when its channel count is not the planner's ``bev_channels``.
    """
    if raster is None:
        stored = getattr(planner, "raster_config", None)
        try:
            raster = raster_from_meta(stored)
        except RenderError as err:
            logger.warning("planner's stored raster %s is unusable (%s); rendering PLANNER_RASTER", stored, err)
            raster = PLANNER_RASTER
    elif not isinstance(raster, RasterConfig):
        raster = RasterConfig.from_dict(dict(raster))
    expected = getattr(getattr(planner, "config", None), "bev_channels", None)
    if expected is not None and raster.num_channels != expected:
        raise CallbackConfigError(
            f"raster has {raster.num_channels} channels, {type(planner).__name__} expects {expected}: pass raster="
        )
    return raster


def module_planner(pl_module: pl.LightningModule) -> nn.Module:
    planner = getattr(pl_module, "planner", None)
    if not isinstance(planner, nn.Module):
        raise CallbackConfigError(f"{type(pl_module).__name__} has no `planner` module to evaluate")
    return planner


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode without gradients; its previous mode is restored on exit."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


class _ScenesCallback(pl.Callback):
    """Scene source, schedule and planner adapter shared by the callbacks below."""

    def __init__(
        self,
        scenes: Sequence[Scene] | None,
        map_api: MapArg,
        data_root: str | None,
        maps_root: str | None,
        split: str,
        max_scenes: int | None,
        every_n_epochs: int,
        raster: RasterConfig | Mapping[str, Any] | None,
        seed: int,
    ) -> None:
        if every_n_epochs < 1:
            raise CallbackConfigError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if scenes is None and not data_root:
            raise CallbackConfigError("no validation scenes: pass scenes + map_api, or data_root and maps_root")
        if scenes is not None and map_api is None:
            raise CallbackConfigError("scenes given without map_api: pass the scenes' MapAPI (or a name -> API map)")
        self._source = (scenes, map_api, data_root, maps_root, split, max_scenes)
        self.every_n_epochs = every_n_epochs
        self.raster = raster
        self.seed = seed
        self.scenes: list[Scene] = []
        self.maps: Callable[[str], Any] = map_lookup(None)
        self._ready = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._ready:
            self.scenes, self.maps = validation_scenes(*self._source)
            self._prepare()
            self._ready = True

    def _prepare(self) -> None:
        """Work done once after the scenes are chosen."""

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether this validation end is one the callback runs at."""
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def learned_planner(self, planner: nn.Module) -> LearnedPlanner:
        """``planner`` as the benchmark drives it (features from the observation, seeded noise)."""
        return LearnedPlanner(
            _OnDevice(planner), name="validation", raster=planner_raster(planner, self.raster), seed=self.seed
        )


# --------------------------------------------------------------------------------------------------
# NAVSIM scores
# --------------------------------------------------------------------------------------------------


def summarize_rows(rows: Sequence[Mapping[str, Any]], protocol: BenchmarkProtocol, prefix: str) -> dict[str, float]:
    """Logged values of benchmark rows: ``prefix`` = mean score over all rows, a failed row counting 0;
    ``prefix/<column>`` = mean of each sub-metric over the valid rows (NaN entries skipped); ``prefix/failed``
    = fraction of failed rows."""
    valid = [r for r in rows if r.get("valid")]
    out = {prefix: float(sum(float(r["score"]) for r in valid) / len(rows)) if rows else math.nan}
    for col in protocol.columns:
        values = np.array([float(r[col]) for r in valid], dtype=np.float64)
        if np.isfinite(values).any():
            out[f"{prefix}/{col}"] = float(np.nanmean(values))
    out[f"{prefix}/failed"] = 1.0 - len(valid) / len(rows) if rows else math.nan
    return out


def _caches_by_token(
    scenes: Sequence[Scene] | None, caches: Sequence[Any] | Mapping[str, Any] | None
) -> dict[str, Any]:
    if caches is None:
        return {}
    if isinstance(caches, Mapping):
        return dict(caches)
    if scenes is None or len(caches) != len(scenes):
        count = "no" if scenes is None else len(scenes)
        raise CallbackConfigError(f"{len(caches)} metric caches for {count} scenes: give one per scene, in order")
    return {scene.token: cache for scene, cache in zip(scenes, caches)}


class ClosedLoopEvalCallback(_ScenesCallback):
    """NAVSIM one-shot scores (PDMS or EPDMS) of the training planner on fixed validation scenes.

    Args:
        scenes, map_api: validation scenes and their map API (option a), or
        data_root, maps_root, split: a split of ``.db`` logs (option b; read once at setup).
        max_scenes: scenes kept (evenly spaced); ``None`` keeps all.
        metric_caches: with ``scenes``: their metric caches (a list in scene order, or ``token -> cache``);
            missing ones are built at setup.
        version: ``v1`` (PDMS, protocol ``navsim_v1``) or ``v2`` (EPDMS, ``navsim_v2``).
        every_n_epochs: run at the end of every n-th validation epoch.
        metric_cache_dir: folder where built caches are stored and looked up (as ``diffplan bench``).
        raster: raster to render for the planner (default: the planner's own, see :func:`planner_raster`).
        seed: seed of the planner's sampling noise.
        prefix: logged name of the score (default ``val/pdms`` for v1, ``val/epdms`` for v2).

    Scenes whose metric cache cannot be built are dropped at setup (logged). After each run, ``last_rows``
    holds the benchmark rows and ``last_seconds`` the evaluation time.
    """

    def __init__(
        self,
        scenes: Sequence[Scene] | None = None,
        map_api: MapArg = None,
        metric_caches: Sequence[Any] | Mapping[str, Any] | None = None,
        data_root: str | None = None,
        maps_root: str | None = None,
        split: str = "synth_val",
        max_scenes: int | None = 16,
        version: Literal["v1", "v2"] = "v1",
        every_n_epochs: int = 1,
        metric_cache_dir: str | None = None,
        raster: RasterConfig | Mapping[str, Any] | None = None,
        seed: int = 0,
        prefix: str | None = None,
    ) -> None:
        super().__init__(scenes, map_api, data_root, maps_root, split, max_scenes, every_n_epochs, raster, seed)
        if version not in ("v1", "v2"):
            raise CallbackConfigError(f"version must be 'v1' (PDMS) or 'v2' (EPDMS), got {version!r}")
        self.version = version
        self.protocol = get_protocol(f"navsim_{version}")
        self.prefix = prefix or ("val/pdms" if version == "v1" else "val/epdms")
        self.metric_cache_dir = metric_cache_dir
        self._given_caches = _caches_by_token(scenes, metric_caches)
        self.caches: dict[str, Any] = {}
        self.last_rows: list[dict[str, Any]] = []
        self.last_seconds = math.nan

    def _prepare(self) -> None:
        from planners.rule_based import PDMClosedPlanner

        version = self.protocol.pdm_version
        build = MetricCacheProvider(build_planner(PDMClosedPlanner, version=version), version, self.metric_cache_dir)
        kept: list[Scene] = []
        for scene in self.scenes:
            cache = self._given_caches.get(scene.token)
            if cache is None:
                try:
                    cache = build(scene, self.maps(scene.map_name))
                except Exception as err:  # noqa: BLE001 - a scene without a cache is left out, not the run
                    logger.warning(
                        "scene %s left out of closed-loop eval: %s: %s", scene.token, type(err).__name__, err
                    )
                    continue
            self.caches[scene.token] = cache
            kept.append(scene)
        if not kept:
            raise CallbackConfigError("no validation scene has a metric cache")
        self.scenes = kept

    def _cache(self, scene: Scene, map_api: MapProtocol) -> Any:
        return self.caches[scene.token]

    def evaluate(self, planner: nn.Module) -> dict[str, float]:
        """Score ``planner`` on the validation scenes; returns the values :meth:`on_validation_epoch_end` logs."""
        from rewards.pdm import PDMScorer

        start = time.perf_counter()
        source = InMemorySource(self.scenes)
        with eval_mode(planner):
            unit = NavsimUnit(self.learned_planner(planner), PDMScorer(self.version), self._cache, self.maps)
            self.last_rows = SceneEvaluator(source, unit, self.protocol)(source.refs())
        self.last_seconds = time.perf_counter() - start
        return summarize_rows(self.last_rows, self.protocol, self.prefix)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer):
            return
        metrics = self.evaluate(module_planner(pl_module))
        for name, value in metrics.items():
            pl_module.log(name, value, prog_bar=name == self.prefix, sync_dist=False)
        logger.info(
            "%s %.4f on %d scenes (%.1f s)", self.prefix, metrics[self.prefix], len(self.scenes), self.last_seconds
        )


# --------------------------------------------------------------------------------------------------
# BEV plots
# --------------------------------------------------------------------------------------------------


class BEVPlotCallback(_ScenesCallback):
    """BEV images of the planner's candidates and chosen trajectory (with the logged future) on fixed scenes.

    Args:
        scenes, map_api, data_root, maps_root, split: the scenes, as :class:`ClosedLoopEvalCallback`.
        num_scenes: scenes drawn (evenly spaced over the source).
        every_n_epochs: draw at the end of every n-th validation epoch.
        out_dir: PNG folder (default ``<trainer.log_dir>/bev``); files ``epoch_<e>/<i>_<token>.png``.
        raster, seed: as :class:`ClosedLoopEvalCallback`.

    The images also go to every TensorBoard logger (``bev/<i>_<token>``, step = global step).
    ``last_paths`` holds the PNG files of the last run.
    """

    def __init__(
        self,
        scenes: Sequence[Scene] | None = None,
        map_api: MapArg = None,
        data_root: str | None = None,
        maps_root: str | None = None,
        split: str = "synth_val",
        num_scenes: int = 4,
        every_n_epochs: int = 1,
        out_dir: str | None = None,
        raster: RasterConfig | Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(scenes, map_api, data_root, maps_root, split, num_scenes, every_n_epochs, raster, seed)
        self.out_dir = out_dir
        self.last_paths: list[Path] = []

    def folder(self, trainer: pl.Trainer) -> Path:
        if self.out_dir is not None:
            return Path(self.out_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "bev"

    def draw(self, planner: nn.Module, folder: Path) -> list[Path]:
        """Plan every scene with ``planner`` and write one PNG per scene into ``folder``."""
        from simulation.evaluation.units import observation_from_scene

        paths: list[Path] = []
        with eval_mode(planner):
            adapter = self.learned_planner(planner)
            for i, scene in enumerate(self.scenes):
                map_api = self.maps(scene.map_name)
                chosen = adapter.plan(observation_from_scene(scene, map_api)).poses
                path = folder / f"{i:02d}_{scene.token}.png"
                visualize.save_scene_png(scene, map_api, path, candidates=adapter.last_candidates, chosen=chosen)
                paths.append(path)
        return paths

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer) or not trainer.is_global_zero:
            return
        folder = self.folder(trainer) / f"epoch_{trainer.current_epoch:03d}"
        self.last_paths = self.draw(module_planner(pl_module), folder)
        experiments: list[Any] = [getattr(lg, "experiment", None) for lg in trainer.loggers]
        writers = [e for e in experiments if hasattr(e, "add_image")]
        if not writers:
            return
        from PIL import Image

        for path in self.last_paths:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
            for writer in writers:
                writer.add_image(f"bev/{path.stem}", pixels, trainer.global_step, dataformats="HWC")


# --------------------------------------------------------------------------------------------------
# Closed-loop episodes in BEV-Warp
# --------------------------------------------------------------------------------------------------


class BEVWarpEvalCallback(pl.Callback):
    """BEV-Warp closed-loop episodes of the generator + discriminator pair under training, the validation of
    TC-GRPO (``configs/train/discriminator_tcgrpo.yaml``): one greedy rollout per scenario, the discriminator's
    highest-scored candidate driven and replanned every ``commit_steps`` steps, judged by nuPlan's CLS rules.
    Logs ``<prefix>/score`` (CLS) and the other episode means of
    :data:`training.closed_loop_rl.LOGGED_METRICS`, so that a ``ModelCheckpoint`` can keep the supervised
    discriminator's epoch that drives best (``configs/train/discriminator_closed_loop_val.yaml``) rather than the
    one whose one-shot pick scores best.

    Args:
        data_root, maps_root: nuPlan-format logs and maps (default: the datamodule's ``data_root`` / ``maps_root``).
        split, duration_s, spacing_s, max_scenarios, stride: the scenarios
            (:func:`training.closed_loop_rl_data.load_scenarios`, read once at setup).
        batch_size: scenarios rolled out together (the sampling noise of a scenario depends on its batch).
        horizon: replanning steps per episode; commit_steps: steps a selection is held (1: the pair as it drives).
        env: :class:`bev_warp.env.EnvConfig` fields (default: TC-GRPO's, replanning every 0.5 s).
        every_n_epochs: run at the end of every n-th validation epoch; seed: the proposals' noise (per batch).
        prefix: logged names' prefix.

    With ``batch_size``, ``horizon``, ``env`` and ``seed`` as a TC-GRPO run's validation, the values are that
    run's ``val/*`` for the same pair. After each run ``last_metrics`` holds the per-episode metrics and
    ``last_seconds`` the time taken.
    """

    def __init__(
        self,
        data_root: str | None = None,
        maps_root: str | None = None,
        split: str = "synth_val",
        duration_s: float = 8.0,
        spacing_s: float = 8.0,
        max_scenarios: int | None = None,
        stride: int = 1,
        batch_size: int = 4,
        horizon: int = 12,
        commit_steps: int = 1,
        env: Mapping[str, Any] | None = None,
        every_n_epochs: int = 1,
        seed: int = 0,
        prefix: str = "val/closed_loop",
    ) -> None:
        if every_n_epochs < 1 or batch_size < 1 or horizon < 1 or commit_steps < 1:
            raise CallbackConfigError("every_n_epochs, batch_size, horizon and commit_steps must be >= 1")
        self.data_root, self.maps_root = data_root, maps_root
        self.split, self.duration_s, self.spacing_s = split, duration_s, spacing_s
        self.max_scenarios, self.stride, self.batch_size = max_scenarios, stride, batch_size
        self.horizon, self.commit_steps, self.every_n_epochs, self.seed = horizon, commit_steps, every_n_epochs, seed
        self.env = dict(env) if env is not None else {"replan_interval_s": 0.5, "terminate_on": []}
        self.prefix = prefix
        self.dataset: Any = None
        self.last_metrics: dict[str, torch.Tensor] = {}
        self.last_seconds = math.nan

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dataset is not None:
            return
        from training.closed_loop_rl_data import load_scenarios

        datamodule = getattr(trainer, "datamodule", None)
        data_root = self.data_root or getattr(datamodule, "data_root", None)
        maps_root = self.maps_root or getattr(datamodule, "maps_root", None)
        if not data_root or not maps_root:
            raise CallbackConfigError(
                f"BEVWarpEvalCallback: no scenarios: pass data_root and maps_root (got {data_root!r}, {maps_root!r})"
            )
        self.dataset = load_scenarios(
            str(data_root), str(maps_root), self.split, self.duration_s, self.max_scenarios, self.spacing_s,
            self.stride,
        )  # fmt: skip

    def evaluate(self, pair: nn.Module) -> dict[str, float]:
        """Roll ``pair`` (a :class:`~planners.reranked.RerankedPlanner`) out on the scenarios; the episode means.

        Runs in eval mode without gradients and with the global random state untouched; every module's previous
        mode is restored."""
        from planners.reranked import RerankedPlanner
        from training.closed_loop_rl import LOGGED_METRICS, pair_env_config, pair_rollout
        from training.closed_loop_rl_data import scenario_collate

        if not isinstance(pair, RerankedPlanner):
            raise CallbackConfigError(f"BEVWarpEvalCallback drives a RerankedPlanner, got {type(pair).__name__}")
        if self.dataset is None:
            raise CallbackConfigError("BEVWarpEvalCallback: evaluate before setup (no scenarios loaded)")
        start = time.perf_counter()
        param = next(pair.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        env_config = pair_env_config(pair, self.env)
        modes = {m: m.training for m in pair.modules()}
        episodes: dict[str, list[torch.Tensor]] = {}
        devices = [device.index or 0] if device.type == "cuda" else []
        try:
            pair.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                for first in range(0, len(self.dataset), self.batch_size):
                    items = [self.dataset[i] for i in range(first, min(first + self.batch_size, len(self.dataset)))]
                    gen = torch.Generator(device=device).manual_seed(self.seed)
                    rollout = pair_rollout(
                        pair, env_config, scenario_collate(items), gen, group_size=1, horizon=self.horizon,
                        commit_steps=self.commit_steps, temperature=1.0, greedy=True, device=device,
                    )  # fmt: skip
                    for key in LOGGED_METRICS:
                        if key in rollout.metrics:
                            episodes.setdefault(key, []).append(rollout.metrics[key].double().cpu())
        finally:
            for module, training in modes.items():
                module.training = training
        self.last_metrics = {k: torch.cat(v) for k, v in episodes.items()}
        self.last_seconds = time.perf_counter() - start
        return {f"{self.prefix}/{k}": float(v.mean()) for k, v in self.last_metrics.items()}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        metrics = self.evaluate(module_planner(pl_module))
        for name, value in metrics.items():
            pl_module.log(name, value, prog_bar=name == f"{self.prefix}/score", sync_dist=False)
        logger.info(
            "%s/score %.4f on %d scenarios (%.1f s)",
            self.prefix, metrics[f"{self.prefix}/score"], len(self.dataset), self.last_seconds,
        )  # fmt: skip
