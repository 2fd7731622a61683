"""Every shipped RL config through ``diffplan fit`` on the fixture city: an imitation checkpoint warm-starts the
real generator, rollouts are scored on the scenes' metric caches, and a run stopped after one epoch resumes to
the same weights as a run that never stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from planners.checkpoint import CheckpointRecord, load_planner, write
from planners.reward_model import RewardModel, reward_model_config
from simulation.datasets.testing import write_fixture_data
from training.cache import build_cache
from training.lightning_cli import run_cli

RL_CONFIGS = sorted(p for p in Path("configs/train").glob("*.yaml") if "training.rl.RLModule" in p.read_text())
SMALL = {
    "truncated": [
        "--model.planner.init_args.config.d_model",
        "32",
        "--model.planner.init_args.config.num_anchors",
        "4",
    ],
    "masked": [],
}
#: rollouts per scene in the tests: two per anchor of the truncated planner, a group of 4 for the masked one
SAMPLES = {"truncated": "8", "masked": "4"}


@pytest.fixture(scope="module")
def rl_city(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture log in the train and val splits, its feature cache, and an imitation checkpoint per generator."""
    root = tmp_path_factory.mktemp("rl_city")
    for split in ("synth_train", "synth_val"):
        data_root, maps_root = write_fixture_data(root, split=split, duration_s=12.0, num_scenes=2)
    cache = root / "features"
    build_cache(data_root, maps_root, ["synth_train", "synth_val"], cache, frame_interval=1)
    paths = {"data_root": data_root, "maps_root": maps_root, "cache": cache, "metric": root / "metric"}
    for kind in ("truncated", "masked"):
        out = root / f"il_{kind}"
        run_cli(
            [
                "fit",
                "--config",
                f"configs/train/{kind}_il.yaml",
                "--data.cache_dir",
                str(cache),
                "--data.batch_size",
                "4",
                "--trainer.max_epochs",
                "1",
                "--trainer.limit_train_batches",
                "1",
                "--trainer.limit_val_batches",
                "1",
                "--trainer.default_root_dir",
                str(out),
                "--trainer.logger.init_args.save_dir",
                str(out),
                "--trainer.enable_progress_bar",
                "false",
                *SMALL[kind],
            ]  # fmt: skip
        )
        paths[kind] = next(out.rglob("last.ckpt"))
    # a small (untrained) learned scene reward for the *_learned / *_mixed configs
    reward_model = RewardModel(reward_model_config({"d_model": 32, "version": "v1"}))
    paths["reward_model"] = write(root / "reward_model.ckpt", CheckpointRecord.of(reward_model))
    return paths


def _args(config: Path, city: dict[str, Path], out: Path, *extra: str) -> list[str]:
    kind = config.stem.split("_")[0]  # truncated_* / masked_*
    if "learned" in config.stem or "mixed" in config.stem:
        extra = (*extra, "--model.reward.learned.checkpoint", str(city["reward_model"]))
    if "igpo" in config.stem:  # every sample counts as failed: the hinted rollouts run in every step
        extra = (*extra, "--model.igpo.threshold", "1.0")
    return [
        "fit", "--config", str(config), "--model.init_ckpt", str(city[kind]),
        "--model.num_samples", SAMPLES[kind], "--model.reward.num_workers", "0",
        "--data.feature_cache_dir", str(city["cache"]), "--data.metric_cache_dir", str(city["metric"]),
        "--data.data_root", str(city["data_root"]), "--data.maps_root", str(city["maps_root"]),
        "--data.batch_size", "2", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip


def _every_epoch(config: Path, tmp_path: Path) -> Path:
    """``config`` with one more checkpoint callback keeping every epoch's state (``epoch=N.ckpt``)."""
    text = yaml.safe_load(config.read_text())
    keep = {
        "filename": "{epoch}",
        "monitor": "train/reward",
        "mode": "max",
        "save_top_k": -1,
        "enable_version_counter": False,
    }
    text["trainer"]["callbacks"].append(
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": keep}
    )
    path = tmp_path / config.name
    path.write_text(yaml.safe_dump(text))
    return path


@pytest.mark.parametrize("config", RL_CONFIGS, ids=[c.stem for c in RL_CONFIGS])
def test_rl_config_trains_and_resumes_exactly(config: Path, rl_city: dict[str, Path], tmp_path: Path) -> None:
    """A 2-epoch run, and the same run killed after its first epoch and resumed from that epoch's checkpoint."""
    config = _every_epoch(config, tmp_path)
    continuous = run_cli(_args(config, rl_city, tmp_path / "a", "--trainer.max_epochs", "2"))
    metrics = continuous.trainer.callback_metrics
    assert continuous.trainer.state.finished
    assert 0.0 <= float(metrics["train/reward"]) <= 1.0 and torch.isfinite(metrics["train/loss"])
    assert 0.0 <= float(metrics["val/pdms"]) <= 1.0

    first = next((tmp_path / "a").rglob("epoch=0.ckpt"))
    resumed = run_cli(_args(config, rl_city, tmp_path / "c", "--trainer.max_epochs", "2", "--ckpt_path", str(first)))
    assert resumed.model.global_step == continuous.model.global_step > 0
    for (name, a), b in zip(continuous.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    # the RL checkpoint is a planner record: the benchmarks load the trained generator from it
    trained = load_planner(Path(resumed.trainer.checkpoint_callback.dirpath) / "last.ckpt")  # type: ignore[union-attr]
    for (name, a), b in zip(trained.state_dict().items(), resumed.model.planner.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
