"""configs/train/masked_il.yaml in the Lightning CLI: fast_dev_run, the checkpoints it keeps (top 3 by val/ade
plus last), and its commented closed-loop variant (best by val/pdms) switched on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from random_cache import CHANNELS, write_random_cache

from planners.checkpoint import load_planner, masked_planner
from planners.masked_closed_loop import MaskedClosedLoopPlanner
from simulation.datasets.nuplan_db import write_log
from simulation.datasets.testing import make_log_data
from simulation.maps.testing import write_fixture_maps
from simulation.render import RasterConfig
from training.lightning_cli import run_cli

CONFIG = Path("configs/train/masked_il.yaml")
SIZE = 32
RASTER = RasterConfig(height_px=SIZE, width_px=SIZE, resolution_m=2.0, behind_m=16.0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random feature cache at the raster of RASTER: straight-ish trajectories at random speeds."""
    assert len(RASTER.channels) == CHANNELS
    root = tmp_path_factory.mktemp("masked_cache")
    return write_random_cache(root, {"synth_train": 16, "synth_val": 8}, SIZE, 8, RASTER.to_dict(), curve=0.1)


def _args(config: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(config), "--data.cache_dir", str(cache), "--data.batch_size", "8",
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.planner.init_args.config.d_model", "32", "--model.planner.init_args.config.num_layers", "1",
        *extra,
    ]  # fmt: skip


def test_fast_dev_run(cache: Path, tmp_path: Path) -> None:
    cli = run_cli(_args(CONFIG, cache, tmp_path, "--trainer.fast_dev_run", "true"))
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert type(cli.model.planner).__name__ == "MaskedDiffusionPlanner"


def test_keeps_the_best_by_val_ade_and_the_true_last(cache: Path, tmp_path: Path) -> None:
    cli = run_cli(_args(CONFIG, cache, tmp_path, "--trainer.max_epochs", "4", "--trainer.limit_train_batches", "1"))
    checkpoint = cli.trainer.checkpoint_callback
    assert checkpoint is not None and checkpoint.monitor == "val/ade" and checkpoint.mode == "min"  # type: ignore[attr-defined]
    folder = Path(checkpoint.dirpath)  # type: ignore[attr-defined]
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    best = Path(checkpoint.best_model_path)  # type: ignore[attr-defined]
    assert best == folder / "best.ckpt"
    assert float(torch.load(best, weights_only=True)["callbacks"][checkpoint.state_key]["best_model_score"]) == float(
        checkpoint.best_model_score  # type: ignore[attr-defined]
    )
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 3  # the end of the last epoch
    assert load_planner(best).tokenizer.config == cli.model.planner.tokenizer.config


def test_closed_loop_variant_keeps_the_best_by_val_pdms(cache: Path, tmp_path: Path) -> None:
    """The commented lines switched on as the config says: ClosedLoopEvalCallback, monitor val/pdms (max)."""
    log = make_log_data()
    write_log(log, tmp_path / "data" / "splits" / "synth_val" / f"{log.log_name}.db")
    write_fixture_maps(tmp_path / "data" / "maps")
    lines = CONFIG.read_text().splitlines()
    enabled = [ln.replace("    # ", "    ", 1) if ln.startswith(("    # -", "    #  ")) else ln for ln in lines]
    text = (
        "\n".join(enabled)
        .replace("outputs/demo/data", str(tmp_path / "data"))
        .replace("max_scenes: 16", "max_scenes: 2")
    )
    text = text.replace("monitor: val/ade", "monitor: val/pdms").replace("mode: min", "mode: max")
    assert text.count("class_path: training.callbacks.ClosedLoopEvalCallback") == 1 and "val/pdms" in text
    config = tmp_path / "masked_il_closed_loop.yaml"
    config.write_text(text)
    cli = run_cli(
        _args(config, cache, tmp_path / "out", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1")
    )
    assert 0.0 <= float(cli.trainer.callback_metrics["val/pdms"]) <= 1.0
    best = Path(cli.trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    assert best.name == "best.ckpt" and (best.parent / "last.ckpt").exists()
    planner = masked_planner(str(best), order="causal", reflect=True)
    assert isinstance(planner, MaskedClosedLoopPlanner) and planner.order == "causal" and planner.reflect
    assert planner.raster == RASTER
