"""Lightning CLI: every shipped training config runs (fast_dev_run), checkpoints round-trip and export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from planners.checkpoint import CheckpointError, load_planner
from planners.export import ExportedPlanner, example_inputs
from simulation.features import PlannerInput
from training.cli import main as diffplan
from training.data import FeatureCacheError, PlannerDataModule
from training.lightning_cli import run_cli

# the imitation configs; the RL configs (model training.rl.RLModule) are checked by test_rl_configs.py, the
# discriminator's (training.discriminator.DiscriminatorModule) by test_discriminator_cli.py, the closed-loop one
# (training.closed_loop_rl.ClosedLoopRLModule) by test_closed_loop_rl_cli.py, the reward model's by
# test_reward_model.py; the discriminator's closed-loop validation overlay (no model of its own) by
# test_discriminator_cli.py
OTHER_MODULES = (
    "training.rl.RLModule",
    "training.callbacks.BEVWarpEvalCallback",
    "training.discriminator.",
    "training.closed_loop_rl.",
    "training.reward_model.",
)
CONFIGS = sorted(p for p in Path("configs/train").glob("*.yaml") if not any(m in p.read_text() for m in OTHER_MODULES))
SMALL = ["--model.planner.init_args.config.d_model", "32"]


def _args(config: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    args = [
        "--config", str(config),
        "--data.cache_dir", str(cache),
        "--data.batch_size", "8",
        "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    if "ego_mlp" not in config.name:
        args += SMALL
    return [*args, *extra]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_fast_dev_run_every_config(config: Path, feature_cache: Path, tmp_path: Path) -> None:
    cli = run_cli(["fit", *_args(config, feature_cache, tmp_path, "--trainer.fast_dev_run", "true")])
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_fit_checkpoint_resume_load_and_export(feature_cache: Path, tmp_path: Path) -> None:
    config = Path("configs/train/truncated_il.yaml")
    fit = ["fit", *_args(config, feature_cache, tmp_path, "--trainer.max_epochs", "1")]
    cli = run_cli(fit)
    ckpt = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"  # type: ignore[union-attr]
    assert ckpt.exists() and not list(ckpt.parent.glob(".*.tmp"))
    planner = load_planner(ckpt)
    # Anchors were computed from the training split and travel with the checkpoint.
    assert bool(planner.anchors_ready) and float(planner.anchors.abs().sum()) > 0
    torch.testing.assert_close(planner.anchors, cli.model.planner.anchors)
    # Resume one more epoch from the checkpoint.
    resumed = run_cli(
        ["fit", *_args(config, feature_cache, tmp_path, "--trainer.max_epochs", "2"), "--ckpt_path", str(ckpt)]
    )
    assert resumed.trainer.current_epoch == 2
    # Export through the CLI and check parity against the loaded planner.
    out = tmp_path / "planner.pt"
    assert diffplan(["export", "--ckpt", str(ckpt), "--out", str(out), "--bev-size", "64", "64"]) == 0
    inputs = example_inputs(planner, batch=2, bev_size=(64, 64))
    with torch.no_grad():
        eager = planner.sample(PlannerInput(*inputs[:4]), inputs[4])
    # the file's module matches eager to 1e-5 m; the CPU-optimised copy (folded batch norms, oneDNN kernels)
    # to float32 rounding of waypoints tens of metres long
    torch.testing.assert_close(ExportedPlanner(out, optimize=False)(*inputs)[0], eager.trajectory, atol=1e-5, rtol=0)
    torch.testing.assert_close(ExportedPlanner(out)(*inputs)[0], eager.trajectory, atol=1e-4, rtol=0)
    with pytest.raises(CheckpointError, match="expected a EgoStatusMLP"):
        load_planner(ckpt, expect_class="EgoStatusMLP")


def test_last_ckpt_is_the_last_epoch_and_best_ckpt_the_best(feature_cache: Path, tmp_path: Path) -> None:
    """The shipped checkpointing with a monitored value that never improves after the first epoch (``epoch``,
    minimised): best.ckpt stays at epoch 0 while last.ckpt follows every epoch, and resuming from it continues
    after the last one."""
    text = Path("configs/train/ego_mlp.yaml").read_text()
    assert text.count("monitor: val/loss") == 1
    config = tmp_path / "ego_mlp_epoch_monitor.yaml"
    config.write_text(text.replace("monitor: val/loss", "monitor: epoch"))
    cli = run_cli(["fit", *_args(config, feature_cache, tmp_path, "--trainer.max_epochs", "3")])
    folder = Path(cli.trainer.checkpoint_callback.dirpath)  # type: ignore[union-attr]
    last, best = folder / "last.ckpt", folder / "best.ckpt"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert torch.load(best, weights_only=True)["epoch"] == 0
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert torch.load(last, weights_only=True)["global_step"] == cli.trainer.global_step
    resumed = run_cli(
        ["fit", *_args(config, feature_cache, tmp_path, "--trainer.max_epochs", "4"), "--ckpt_path", str(last)]
    )
    assert resumed.trainer.current_epoch == 4
    assert resumed.trainer.global_step == cli.trainer.global_step * 4 // 3


def test_bad_inputs(feature_cache: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.ckpt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(CheckpointError, match="not a diffplan planner checkpoint"):
        load_planner(bogus)
    with pytest.raises(FeatureCacheError, match="no feature cache"):
        PlannerDataModule(cache_dir=str(tmp_path)).train_trajectories()
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", "configs/train/ego_mlp.yaml", "--model.not_a_key", "1"])


def test_default_logger_follows_default_root_dir(feature_cache: Path, tmp_path: Path) -> None:
    args = [
        "fit", "--config", "configs/train/ego_mlp.yaml", "--data.cache_dir", str(feature_cache),
        "--data.batch_size", "8", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
    ]  # fmt: skip
    cli = run_cli(args)
    assert cli.trainer.logger is not None and cli.trainer.logger.save_dir == str(tmp_path / "run")
