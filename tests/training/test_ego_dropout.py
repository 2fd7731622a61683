"""State dropout of imitation: the ego kinematics of a sample are zeroed with probability p, the command kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from simulation.features import EGO_KINEMATICS, EGO_STATUS_DIM, PlannerInput
from training.imitation import PlannerModule, drop_ego_kinematics
from training.lightning_cli import run_cli


def _features(n: int) -> PlannerInput[torch.Tensor]:
    ego = torch.zeros(n, EGO_STATUS_DIM)
    ego[:, 0], ego[:, 1], ego[:, 2], ego[:, 3] = 7.0, 0.5, -1.0, 0.25
    ego[:, 4 + torch.arange(n) % 4] = 1.0
    return PlannerInput(
        bev=torch.ones(n, 2, 4, 4), ego_status=ego, agents=torch.ones(n, 3, 5), agents_mask=torch.ones(n, 3).bool()
    )


def test_dropout_zeroes_the_kinematics_of_whole_samples_and_keeps_the_command() -> None:
    f = _features(4000)
    out = drop_ego_kinematics(f, 0.3, torch.Generator().manual_seed(0))
    dropped = out.ego_status[:, 0] == 0
    # a dropped sample loses vx, vy, ax, ay together; a kept one keeps all four
    assert torch.equal(out.ego_status[dropped, :EGO_KINEMATICS], torch.zeros(int(dropped.sum()), EGO_KINEMATICS))
    assert torch.equal(out.ego_status[~dropped, :EGO_KINEMATICS], f.ego_status[~dropped, :EGO_KINEMATICS])
    assert torch.equal(out.ego_status[:, EGO_KINEMATICS:], f.ego_status[:, EGO_KINEMATICS:])
    assert 0.27 < float(dropped.float().mean()) < 0.33  # 1200 of 4000 expected, sd 29
    assert out.bev is f.bev and out.agents is f.agents and out.agents_mask is f.agents_mask
    assert f.ego_status[:, 0].eq(7.0).all()  # the input is not modified in place


def test_dropout_extremes_and_a_bad_probability() -> None:
    f = _features(64)
    assert torch.equal(drop_ego_kinematics(f, 0.0).ego_status, f.ego_status)
    assert drop_ego_kinematics(f, 1.0).ego_status[:, :EGO_KINEMATICS].abs().sum() == 0
    with pytest.raises(ValueError, match="ego_dropout must lie in"):
        PlannerModule(torch.nn.Linear(1, 1), ego_dropout=1.5)


def test_fit_with_ego_dropout(feature_cache: Path, tmp_path: Path) -> None:
    args = [
        "fit", "--config", "configs/train/truncated_il.yaml", "--data.cache_dir", str(feature_cache),
        "--data.batch_size", "8", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--model.planner.init_args.config.d_model", "32", "--trainer.fast_dev_run", "true",
        "--model.ego_dropout", "0.5",
    ]  # fmt: skip
    cli = run_cli(args)
    assert cli.model.hparams["ego_dropout"] == 0.5
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
