"""Training callbacks: NAVSIM scores of the training planner, BEV plots, and their inputs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from planners.adapter import LearnedPlanner
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from rewards.pdm import PDMScorer
from simulation.datasets.nuplan_db import write_log
from simulation.datasets.scenes import SceneFilter, extract_scenes
from simulation.datasets.testing import make_log_data
from simulation.evaluation.protocols import NAVSIM_V1_COLUMNS, NAVSIM_V2_COLUMNS, get_protocol
from simulation.evaluation.units import observation_from_scene
from simulation.features import PLANNER_RASTER
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map, write_fixture_maps
from simulation.metric_cache import build_metric_cache
from simulation.render import RasterConfig
from training.callbacks import (
    BEVPlotCallback,
    CallbackConfigError,
    ClosedLoopEvalCallback,
    evenly_spaced,
    planner_raster,
    summarize_rows,
)
from training.data import PlannerDataModule
from training.imitation import PlannerModule

SMALL = TruncatedDiffusionConfig(
    bev_channels=12, d_model=32, num_anchors=20, backbone="resnet10t", inference_start_timestep=8, num_inference_steps=2
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Batch-1 inference is fastest on one thread (and the test machine's cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world() -> tuple[list[Any], MapAPI, list[Any]]:
    """Four fixture scenes (2 s apart), the fixture map and their v1 metric caches (PDM-Closed reference)."""
    from planners.rule_based import PDMClosedPlanner

    map_api = MapAPI.from_data(build_fixture_map())
    scenes = extract_scenes(make_log_data(), SceneFilter(frame_interval=4))[:4]
    caches = [build_metric_cache(s, map_api, PDMClosedPlanner(), "v1") for s in scenes]
    return scenes, map_api, caches


def _planner() -> TruncatedDiffusionPlanner:
    """An untrained planner whose anchors are straight runs at 40 speeds (0 - 12 m/s)."""
    torch.manual_seed(0)
    planner = TruncatedDiffusionPlanner(SMALL)
    t = np.arange(1, 9) * 0.5
    planner.init_from_data(np.stack([np.c_[v * t, np.zeros((8, 2))] for v in np.linspace(0, 12, 40)]))
    return planner


def test_fit_logs_pdms_and_writes_bev_images(feature_cache: Path, world: Any, tmp_path: Path) -> None:
    scenes, map_api, caches = world
    evaluation = ClosedLoopEvalCallback(scenes=scenes, map_api=map_api, metric_caches=caches)
    plots = BEVPlotCallback(scenes=scenes, map_api=map_api, num_scenes=2)
    module = PlannerModule(_planner(), lr=1e-3)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path), name="run"),
        callbacks=[evaluation, plots],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, PlannerDataModule(cache_dir=str(feature_cache), batch_size=8))
    logged = trainer.callback_metrics
    assert 0.0 <= float(logged["val/pdms"]) <= 1.0
    assert {f"val/pdms/{c}" for c in NAVSIM_V1_COLUMNS} <= set(logged)
    assert float(logged["val/pdms/failed"]) == 0.0 and len(evaluation.last_rows) == 4
    # The logged scores are those of the trained planner: re-plan and re-score every scene independently.
    planner = module.planner.eval()
    adapter = LearnedPlanner(planner, raster=PLANNER_RASTER, seed=0)
    for scene, cache, row in zip(scenes, caches, evaluation.last_rows, strict=True):
        plan = adapter.plan(observation_from_scene(scene, map_api)).poses
        expected = PDMScorer("v1").score(cache, plan[None])
        assert row["token"] == scene.token and row["score"] == pytest.approx(float(expected["score"][0]))
        assert row["comfort"] == pytest.approx(float(expected["comfort"][0]))
    assert float(logged["val/pdms"]) == pytest.approx(np.mean([r["score"] for r in evaluation.last_rows]))
    # One PNG per plotted scene (the first and third of four), also in TensorBoard.
    log_dir = Path(trainer.log_dir or "")
    pngs = sorted(p.name for p in (log_dir / "bev" / "epoch_000").glob("*.png"))
    assert pngs == [f"00_{scenes[0].token}.png", f"01_{scenes[2].token}.png"] and plots.last_paths
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == [f"bev/{Path(p).stem}" for p in pngs]


def test_evaluate_restores_mode_and_keeps_failed_scenes_at_zero(world: Any) -> None:
    scenes, map_api, caches = world
    callback = ClosedLoopEvalCallback(scenes=scenes[:2], map_api=map_api, metric_caches=caches[:2])
    callback.setup(None, None, "fit")  # type: ignore[arg-type]
    planner = _planner().train()
    metrics = callback.evaluate(planner)
    assert planner.training and callback.caches[scenes[0].token] is caches[0]
    assert metrics["val/pdms/failed"] == 0.0 and 0.0 <= metrics["val/pdms"] <= 1.0
    with torch.no_grad():
        planner.anchors.fill_(float("nan"))  # NaN plans: every scene fails and counts 0
    failed = callback.evaluate(planner.eval())
    assert not planner.training
    assert failed["val/pdms"] == 0.0 and failed["val/pdms/failed"] == 1.0
    assert "NaN" in str(callback.last_rows[0]["error"]) or "non-finite" in str(callback.last_rows[0]["error"])


def test_scenes_from_split_with_v2(tmp_path: Path) -> None:
    log = make_log_data()
    write_log(log, tmp_path / "data" / "splits" / "synth_val" / f"{log.log_name}.db")
    write_fixture_maps(tmp_path / "maps")
    callback = ClosedLoopEvalCallback(
        data_root=str(tmp_path / "data"), maps_root=str(tmp_path / "maps"), max_scenes=2, version="v2"
    )
    callback.setup(None, None, "fit")  # type: ignore[arg-type]
    # 30 s log -> four non-overlapping 7 s scenes; two evenly spaced ones are the first and the third.
    every = extract_scenes(log, SceneFilter())
    assert [s.token for s in callback.scenes] == [every[0].token, every[2].token]
    assert all(c.version == "v2" for c in callback.caches.values())
    metrics = callback.evaluate(_planner())
    required = [c for c in NAVSIM_V2_COLUMNS if c not in get_protocol("navsim_v2").optional_columns]
    assert {f"val/epdms/{c}" for c in required} <= set(metrics) and 0.0 <= metrics["val/epdms"] <= 1.0


def test_summarize_rows_by_hand() -> None:
    protocol = get_protocol("navsim_v2")
    base = {c: 1.0 for c in protocol.columns} | {"two_frame_extended_comfort": math.nan}
    rows = [
        {**base, "valid": True, "ego_progress": 0.2, "score": 0.5},
        {**base, "valid": True, "ego_progress": 0.6, "score": 1.0},
        {**{c: math.nan for c in protocol.columns}, "valid": False, "score": math.nan},
    ]
    out = summarize_rows(rows, protocol, "val/epdms")
    assert out["val/epdms"] == pytest.approx(0.5)  # (0.5 + 1.0 + 0) / 3
    assert out["val/epdms/ego_progress"] == pytest.approx(0.4)  # valid rows only
    assert out["val/epdms/failed"] == pytest.approx(1 / 3)
    assert "val/epdms/two_frame_extended_comfort" not in out  # NaN in every row: not logged


def test_schedule_and_evenly_spaced(world: Any) -> None:
    scenes, map_api, _ = world
    assert evenly_spaced(list(range(10)), 3) == [0, 3, 6] and evenly_spaced([1, 2], 5) == [1, 2]
    callback = BEVPlotCallback(scenes=scenes, map_api=map_api, every_n_epochs=3)
    due = [callback.due(SimpleNamespace(sanity_checking=False, current_epoch=e)) for e in range(6)]  # type: ignore[arg-type]
    assert due == [False, False, True, False, False, True]
    assert not callback.due(SimpleNamespace(sanity_checking=True, current_epoch=2))  # type: ignore[arg-type]


def test_bad_inputs(world: Any) -> None:
    scenes, map_api, caches = world
    with pytest.raises(CallbackConfigError, match="no validation scenes"):
        ClosedLoopEvalCallback()
    with pytest.raises(CallbackConfigError, match="without map_api"):
        BEVPlotCallback(scenes=scenes)
    with pytest.raises(CallbackConfigError, match="3 metric caches for 4 scenes"):
        ClosedLoopEvalCallback(scenes=scenes, map_api=map_api, metric_caches=caches[:3])
    with pytest.raises(CallbackConfigError, match="'v3'"):
        ClosedLoopEvalCallback(scenes=scenes, map_api=map_api, version="v3")  # type: ignore[arg-type]
    with pytest.raises(CallbackConfigError, match="every_n_epochs"):
        BEVPlotCallback(scenes=scenes, map_api=map_api, every_n_epochs=0)
    with pytest.raises(CallbackConfigError, match="expects 12"):
        planner_raster(_planner(), RasterConfig(channels=("drivable_area", "route")))
    with pytest.raises(CallbackConfigError, match=r"no map API for map .* \(have \['elsewhere'\]\)"):
        callback = BEVPlotCallback(scenes=scenes, map_api={"elsewhere": map_api})
        callback.setup(None, None, "fit")  # type: ignore[arg-type]
        callback.draw(_planner(), Path("unused"))


def test_shipped_example_entries_run_in_the_lightning_cli(feature_cache: Path, tmp_path: Path) -> None:
    """The commented-out callbacks of configs/train/truncated_il.yaml, switched on, parse and run (fast_dev_run)."""
    from training.lightning_cli import run_cli

    log = make_log_data()
    write_log(log, tmp_path / "data" / "splits" / "synth_val" / f"{log.log_name}.db")
    write_fixture_maps(tmp_path / "data" / "maps")
    lines = Path("configs/train/truncated_il.yaml").read_text().splitlines()
    enabled = [ln.replace("    # ", "    ", 1) if ln.startswith(("    # -", "    #  ")) else ln for ln in lines]
    text = (
        "\n".join(enabled)
        .replace("outputs/demo/data", str(tmp_path / "data"))
        .replace("max_scenes: 16", "max_scenes: 2")
    )
    assert text.count("class_path: training.callbacks.") == 2
    config = tmp_path / "truncated_il.yaml"
    config.write_text(text)
    args = [
        "fit", "--config", str(config), "--data.cache_dir", str(feature_cache), "--data.batch_size", "8",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--model.planner.init_args.config.d_model", "32",
        "--trainer.fast_dev_run", "true",
    ]  # fmt: skip
    cli = run_cli(args)
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, ClosedLoopEvalCallback))  # type: ignore[attr-defined]
    assert len(evaluation.scenes) == 2 and evaluation.every_n_epochs == 1
    assert 0.0 <= float(cli.trainer.callback_metrics["val/pdms"]) <= 1.0
