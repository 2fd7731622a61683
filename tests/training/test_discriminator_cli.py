"""The discriminator stage through ``diffplan fit`` on the fixture city (a tiny generator checkpoint, candidates
labelled on the scenes' metric caches), its exact resume, and the trained pair benchmarked as one planner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from planners.checkpoint import CheckpointRecord, load_planner, write
from planners.reranked import RerankedPlanner
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from simulation.datasets.testing import write_fixture_data
from simulation.features import PLANNER_RASTER
from training.cache import build_cache
from training.callbacks import BEVWarpEvalCallback
from training.cli import main as diffplan
from training.discriminator import Perturbation, perturb_plans, spearman
from training.lightning_cli import run_cli

CONFIG = Path("configs/train/discriminator.yaml")
CLOSED_LOOP_VAL = Path("configs/train/discriminator_closed_loop_val.yaml")


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture log in the train and val splits, its feature cache and a small generator checkpoint."""
    root = tmp_path_factory.mktemp("disc_city")
    for split in ("synth_train", "synth_val"):
        data_root, maps_root = write_fixture_data(root, split=split, duration_s=12.0, num_scenes=2)
    cache = root / "features"
    build_cache(data_root, maps_root, ["synth_train", "synth_val"], cache, frame_interval=1)
    torch.manual_seed(0)
    t = torch.arange(1, 9) * 0.5
    anchors = torch.stack([torch.outer(torch.tensor([2.0, 5.0, 8.0, 11.0]), t), torch.zeros(4, 8)], -1)
    generator = TruncatedDiffusionPlanner(TruncatedDiffusionConfig(d_model=32, num_anchors=4), anchors)
    generator.raster_config = PLANNER_RASTER.to_dict()  # type: ignore[assignment]
    ckpt = write(root / "generator.ckpt", CheckpointRecord.of(generator))
    return {"data_root": data_root, "maps_root": maps_root, "cache": cache, "metric": root / "metric", "gen": ckpt}


def _small_config(tmp_path: Path, coarse_to_fine: bool = False) -> Path:
    """The shipped config, small, with one more checkpoint callback keeping every epoch (``epoch=N.ckpt``)."""
    text = yaml.safe_load(CONFIG.read_text())
    args = text["model"]["init_args"]
    args["discriminator"].update(d_model=32, coarse_to_fine=coarse_to_fine, top_k=6, fine_layers=1)
    args.update(num_samples=8, perturb={"copies": 2, "lateral_std": 1.0, "longitudinal_std": 0.1, "heading_std": 0.05})
    keep = {"filename": "{epoch}", "monitor": "train/loss", "mode": "min", "save_top_k": -1,
            "enable_version_counter": False}  # fmt: skip
    callback = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": keep}
    text["trainer"]["callbacks"].append(callback)
    path = tmp_path / CONFIG.name
    path.write_text(yaml.safe_dump(text))
    return path


def _args(config: Path, city: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(config), "--model.init_ckpt", str(city["gen"]),
        "--data.feature_cache_dir", str(city["cache"]), "--data.metric_cache_dir", str(city["metric"]),
        "--data.data_root", str(city["data_root"]), "--data.maps_root", str(city["maps_root"]),
        "--data.batch_size", "2", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip


def test_config_fast_dev_run(city: dict[str, Path], tmp_path: Path) -> None:
    extra = ("--trainer.fast_dev_run", "1", "--model.speed_scales", "[0.5, 0.0]")
    cli = run_cli(_args(_small_config(tmp_path, coarse_to_fine=True), city, tmp_path, *extra))
    metrics = cli.trainer.callback_metrics
    assert cli.model.planner.config.speed_scales == [0.5, 0.0]  # trained with the slowed copies of every candidate
    assert torch.isfinite(metrics["train/loss"]) and float(metrics["train/rank"]) >= 0
    assert 0.0 <= float(metrics["val/pdms_picked"]) <= float(metrics["val/pdms_oracle"]) <= 1.0
    assert 0.0 <= float(metrics["val/pdms_generator"]) <= 1.0 and -1.0 <= float(metrics["val/spearman"]) <= 1.0
    assert 0.0 <= float(metrics["val/acc/no_at_fault_collisions"]) <= 1.0
    assert not any(p.requires_grad for p in cli.model.planner.generator.parameters())


def test_resumes_exactly_and_the_pair_benchmarks(city: dict[str, Path], tmp_path: Path) -> None:
    config = _small_config(tmp_path)
    continuous = run_cli(_args(config, city, tmp_path / "a", "--trainer.max_epochs", "2"))
    assert continuous.trainer.state.finished
    first = next((tmp_path / "a").rglob("epoch=0.ckpt"))
    resumed = run_cli(_args(config, city, tmp_path / "c", "--trainer.max_epochs", "2", "--ckpt_path", str(first)))
    assert resumed.model.global_step == continuous.model.global_step == 2
    for (name, a), b in zip(continuous.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    # the checkpoint is the pair, generator embedded, loaded with weights_only=True
    last = Path(resumed.trainer.checkpoint_callback.dirpath) / "last.ckpt"  # type: ignore[union-attr]
    pair = load_planner(last)
    assert isinstance(pair, RerankedPlanner) and pair.config.generator_ckpt == str(city["gen"])
    for (name, a), b in zip(pair.state_dict().items(), resumed.model.planner.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # ... and drives in the benchmark like any learned planner
    common = [
        "protocol=navsim_v1", f"data_root={city['data_root']}", f"maps_root={city['maps_root']}", "split=synth_val",
        "max_scenes=2", f"metric_cache_dir={tmp_path / 'bench_metric'}", "progress=false", "report.num_worst=1",
    ]  # fmt: skip
    bench = ["bench", *common, "planner=reranked", f"planner.ckpt_path={last}", f"output_dir={tmp_path / 'b'}"]
    assert diffplan(bench) == 0
    scores = pd.read_csv(tmp_path / "b" / "scores.csv")
    assert len(scores) == 3 and scores["valid"].iloc[:2].all()


def test_closed_loop_validation_keeps_the_epoch_that_drives_best(city: dict[str, Path], tmp_path: Path) -> None:
    """The overlay config: BEV-Warp episodes on validation scenarios at every validation, and best.ckpt the pair
    whose episodes scored best (scoring it again gives the monitored value). The scenarios come from a city of
    their own (the fixture city above is too short for closed-loop scenarios)."""
    data_root, maps_root = write_fixture_data(tmp_path / "scenarios", split="synth_val", duration_s=20.0, num_scenes=6)
    overlay = yaml.safe_load(CLOSED_LOOP_VAL.read_text())
    callbacks = overlay["trainer"]["callbacks"]
    assert callbacks[0]["class_path"] == "training.callbacks.BEVWarpEvalCallback"
    callbacks[0]["init_args"].update(
        data_root=str(data_root), maps_root=str(maps_root), duration_s=3.0, spacing_s=2.0, max_scenarios=2, horizon=3
    )
    small = tmp_path / CLOSED_LOOP_VAL.name
    small.write_text(yaml.safe_dump(overlay))
    args = _args(_small_config(tmp_path), city, tmp_path / "a", "--config", str(small), "--trainer.max_epochs", "2")
    cli = run_cli(args)
    evaluator = next(c for c in cli.trainer.callbacks if isinstance(c, BEVWarpEvalCallback))  # type: ignore[attr-defined]
    assert len(evaluator.dataset) == 2 and 0.0 <= float(cli.trainer.callback_metrics["val/closed_loop/score"]) <= 1.0
    keep = [c for c in cli.trainer.checkpoint_callbacks if getattr(c, "monitor", None) == "val/closed_loop/score"]
    assert len(keep) == 1 and len(cli.trainer.checkpoint_callbacks) == 2  # the overlay replaced the callbacks
    best = Path(keep[0].best_model_path)
    assert best.name == "best.ckpt" and (best.parent / "last.ckpt").exists()
    rescored = evaluator.evaluate(load_planner(best))["val/closed_loop/score"]
    assert rescored == pytest.approx(float(keep[0].best_model_score), abs=1e-6)


def test_perturbations_keep_shape_and_spread() -> None:
    t = torch.arange(1, 9, dtype=torch.float64) * 0.5
    plan = torch.stack([10 * t, torch.zeros(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)], -1)
    gen = torch.Generator().manual_seed(0)
    out = perturb_plans(plan[None, None].repeat(2, 3, 1, 1), Perturbation(copies=4), gen)
    assert out.shape == (2, 12, 8, 3) and torch.isfinite(out).all()
    assert out[..., -1, 1].std() > 0.3 and out[..., -1, 0].std() > 1.0  # lateral and longitudinal spread
    none = perturb_plans(plan[None, None], Perturbation(1, 0.0, 0.0, 0.0), gen)
    torch.testing.assert_close(none[0, 0], plan)


def test_spearman_with_ties_and_padding() -> None:
    a = torch.tensor([[0.1, 0.4, 0.3, 9.0], [1.0, 1.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.5, -5.0], [0.2, 0.3, 0.1, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    rho = spearman(a, b, mask)
    assert float(rho[0]) == pytest.approx(1.0) and np.isnan(float(rho[1]))  # constant scores: undefined
