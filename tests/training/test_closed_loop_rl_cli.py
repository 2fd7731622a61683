"""The TC-GRPO config through ``diffplan fit`` on the fixture city (a tiny generator + discriminator pair as the
supervised checkpoint): fast_dev_run, and a run stopped after one epoch resumes to the weights of one that never
stopped; the checkpoint is the pair, one planner."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from closed_loop_fixtures import write_pair  # noqa: E402

from planners.checkpoint import load_planner  # noqa: E402
from planners.reranked import RerankedPlanner  # noqa: E402
from simulation.datasets.testing import write_fixture_data  # noqa: E402
from training.lightning_cli import run_cli  # noqa: E402

CONFIG = Path("configs/train/discriminator_tcgrpo.yaml")


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tcgrpo_city")
    for split in ("synth_train", "synth_val"):
        data_root, maps_root = write_fixture_data(root, split=split, duration_s=20.0, num_scenes=6)
    return {"data_root": data_root, "maps_root": maps_root, "pair": write_pair(root / "pair.ckpt")}


def _config(tmp_path: Path) -> Path:
    """The shipped config with one more checkpoint callback keeping every epoch (``epoch=N.ckpt``)."""
    text = yaml.safe_load(CONFIG.read_text())
    keep = {"filename": "{epoch}", "monitor": "train/loss", "mode": "min", "save_top_k": -1,
            "enable_version_counter": False}  # fmt: skip
    callback = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": keep}
    text["trainer"]["callbacks"].append(callback)
    path = tmp_path / CONFIG.name
    path.write_text(yaml.safe_dump(text))
    return path


def _args(config: Path, city: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(config), "--model.init_ckpt", str(city["pair"]),
        "--model.group_size", "4", "--model.horizon", "2", "--model.commit_steps", "1",
        "--model.num_inner_updates", "1",
        "--data.data_root", str(city["data_root"]), "--data.maps_root", str(city["maps_root"]),
        "--data.batch_size", "1", "--data.duration_s", "3.0", "--data.spacing_s", "2.0",
        "--data.max_scenarios", "2", "--data.max_val_scenarios", "1",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0", *extra,
    ]  # fmt: skip


def test_config_fast_dev_run(city: dict[str, Path], tmp_path: Path) -> None:
    cli = run_cli(_args(CONFIG, city, tmp_path, "--trainer.fast_dev_run", "1"))
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["train/kl"])
    assert 0.0 <= float(metrics["train/score"]) <= 1.0 and 0.0 <= float(metrics["val/score"]) <= 1.0
    assert 0.0 <= float(metrics["train/collision"]) <= 1.0 and float(metrics["train/decisions"]) >= 1
    assert not any(p.requires_grad for p in cli.model.planner.generator.parameters())


def test_resumes_exactly(city: dict[str, Path], tmp_path: Path) -> None:
    config = _config(tmp_path)
    continuous = run_cli(_args(config, city, tmp_path / "a", "--trainer.max_epochs", "2"))
    first = next((tmp_path / "a").rglob("epoch=0.ckpt"))
    resumed = run_cli(_args(config, city, tmp_path / "b", "--trainer.max_epochs", "2", "--ckpt_path", str(first)))
    assert resumed.model._steps == continuous.model._steps == 2
    assert resumed.model.global_step == continuous.model.global_step == 2
    for (name, a), b in zip(continuous.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    # the discriminator moved away from the reference, which stayed the warm start
    start = load_planner(city["pair"])
    assert isinstance(start, RerankedPlanner)
    for name, value in start.discriminator.state_dict().items():
        torch.testing.assert_close(resumed.model.reference.state_dict()[name], value, rtol=0, atol=0)
    moved = [
        float((p - start.discriminator.state_dict()[n]).abs().max())
        for n, p in resumed.model.discriminator.state_dict().items()
    ]
    assert max(moved) > 0
    # the checkpoint is the pair (generator embedded), as planner=reranked loads it
    last = Path(resumed.trainer.checkpoint_callback.dirpath) / "last.ckpt"  # type: ignore[union-attr]
    pair = load_planner(last)
    assert isinstance(pair, RerankedPlanner)
    for (name, a), b in zip(pair.state_dict().items(), resumed.model.planner.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
