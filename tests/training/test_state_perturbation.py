"""State perturbation for imitation (training.augment): the raster, the agents, the ego speed and the target of a
perturbed sample, against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from random_cache import SIZE, write_random_cache

from simulation.features import EGO_STATUS_DIM, AgentFeature, PlannerInput
from simulation.render import RasterConfig
from training.augment import StatePerturbation, draw_perturbations, perturb_batch, perturb_state
from training.imitation import PlannerModule
from training.lightning_cli import run_cli

RASTER = RasterConfig(height_px=16, width_px=16, resolution_m=0.5, behind_m=4.0)
EGO = RASTER.channels.index("ego")
F = AgentFeature


def _features(n: int = 1, seed: int = 0) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bev = (torch.rand(n, RASTER.num_channels, 16, 16, generator=g) < 0.3).float()
    ego = torch.zeros(n, EGO_STATUS_DIM)
    ego[:, 0], ego[:, 1], ego[:, 2], ego[:, 3], ego[:, 5] = 5.0, 0.2, 1.0, 0.1, 1.0
    agents = torch.zeros(n, 3, len(F))
    agents[:, 0, [F.X, F.Y, F.COS_HEADING, F.SIN_HEADING, F.VX, F.VY, F.LENGTH]] = torch.tensor(
        [0.0, 5.0, 1.0, 0.0, 3.0, 0.0, 4.5]
    )
    mask = torch.tensor([[True, False, False]]).expand(n, -1).clone()
    return PlannerInput(bev=bev, ego_status=ego, agents=agents, agents_mask=mask)


def _straight(n: int = 1, speed: float = 5.0) -> torch.Tensor:
    traj = torch.zeros(n, 8, 3)
    traj[..., 0] = speed * 0.5 * torch.arange(1, 9)
    return traj


def _perturb(deviation, factor=1.0, n=1):
    f = _features(n)
    dev = torch.tensor([deviation], dtype=torch.float64).expand(n, -1)
    return f, perturb_state(f, _straight(n), dev, torch.full((n,), factor), RASTER, StatePerturbation())


def test_a_one_pixel_lateral_shift_moves_the_world_and_not_the_ego() -> None:
    f, (out, _) = _perturb([0.0, 0.5, 0.0])
    # the ego 0.5 m to the left: the world one pixel (0.5 m) to its right, i.e. one column further right
    for c in range(RASTER.num_channels):
        if c != EGO:
            assert torch.equal(out.bev[0, c, :, 1:], f.bev[0, c, :, :-1]), RASTER.channels[c]
            assert out.bev[0, c, :, 0].sum() == 0  # the column the log did not cover is empty
    assert torch.equal(out.bev[0, EGO], f.bev[0, EGO])


def test_agents_move_into_the_perturbed_frame_and_padding_stays_zero() -> None:
    _, (out, _) = _perturb([1.0, 0.5, 0.0])
    a = out.agents[0, 0]
    assert a[[F.X, F.Y, F.VX, F.VY, F.LENGTH]].tolist() == pytest.approx([-1.0, 4.5, 3.0, 0.0, 4.5])
    _, (out, _) = _perturb([0.0, 0.0, math.pi / 2])
    a = out.agents[0, 0]
    # the ego turned left by 90 degrees: the agent 5 m to its left is now 5 m ahead, heading right, moving right
    assert a[[F.X, F.Y, F.COS_HEADING, F.SIN_HEADING, F.VX, F.VY]].tolist() == pytest.approx(
        [5.0, 0.0, 0.0, -1.0, 0.0, -3.0], abs=1e-6
    )
    assert out.agents[0, 1:].abs().sum() == 0


def test_agents_are_nearest_first_in_the_perturbed_frame() -> None:
    f = _features()
    agents, mask = f.agents.clone(), f.agents_mask.clone()
    agents[0, 1, [F.X, F.Y, F.COS_HEADING]] = torch.tensor([-6.0, 0.0, 1.0])  # 6 m behind, 5 m from the first
    mask[0, 1] = True
    f = PlannerInput(bev=f.bev, ego_status=f.ego_status, agents=agents, agents_mask=mask)
    dev = torch.tensor([[-3.0, 0.0, 0.0]], dtype=torch.float64)  # the ego 3 m back: the second agent 3 m away
    out, _ = perturb_state(f, _straight(), dev, torch.ones(1), RASTER, StatePerturbation())
    assert out.agents[0, :2, F.X].tolist() == pytest.approx([-3.0, 3.0])
    assert out.agents_mask[0].tolist() == [True, True, False]


def test_the_target_starts_at_the_perturbed_pose_and_rejoins_the_log_by_rejoin_s() -> None:
    _, (_, target) = _perturb([0.0, 0.5, 0.0])
    # offset -0.5 m in the perturbed frame, faded by 1 - smoothstep(k * 0.5 / 2): 0.15625, 0.5, 0.84375, then 1
    expected_y = [-0.5 * s for s in (0.15625, 0.5, 0.84375, 1.0, 1.0, 1.0, 1.0, 1.0)]
    assert target[0, :, 1].tolist() == pytest.approx(expected_y)
    assert target[0, :, 0].tolist() == pytest.approx(_straight()[0, :, 0].tolist())
    assert target[0, :, 2].abs().max() == 0
    _, (_, target) = _perturb([0.0, 0.0, 0.1])
    assert target[0, :, 2].tolist() == pytest.approx([-0.1 * s for s in (0.15625, 0.5, 0.84375, 1, 1, 1, 1, 1)])
    # 1 m ahead of the log: the plan makes 1 m less progress by the time it has rejoined
    _, (_, target) = _perturb([1.0, 0.0, 0.0])
    assert (_straight()[0, :, 0] - target[0, :, 0]).tolist() == pytest.approx([0.15625, 0.5, 0.84375, 1, 1, 1, 1, 1])


def test_the_speed_factor_scales_the_velocity_only() -> None:
    f, (out, target) = _perturb([0.0, 0.0, 0.0], factor=1.2)
    assert out.ego_status[0, :2].tolist() == pytest.approx([6.0, 0.24])
    assert torch.equal(out.ego_status[0, 2:], f.ego_status[0, 2:])  # accelerations and command
    assert torch.equal(out.bev, f.bev) and torch.equal(out.agents, f.agents)
    assert torch.allclose(target, _straight())  # not re-timed: a faster ego must slow to the log's progress


def test_perturb_batch_touches_only_the_drawn_samples() -> None:
    n = 64
    batch = {"features": _features(n), "targets": {"trajectory": _straight(n)}}
    config = StatePerturbation(probability=0.5)
    out = perturb_batch(batch, config, RASTER, torch.Generator().manual_seed(3))
    deviation, factor = draw_perturbations(n, config, torch.Generator().manual_seed(3))
    drawn = (deviation != 0).any(1) | (factor != 1)
    assert 16 < int(drawn.sum()) < 48
    changed = (out["targets"]["trajectory"] != batch["targets"]["trajectory"]).flatten(1).any(1)
    changed |= (out["features"].ego_status != batch["features"].ego_status).any(1)
    assert torch.equal(changed, drawn)
    kept = ~drawn
    assert torch.equal(out["features"].bev[kept], batch["features"].bev[kept])
    assert perturb_batch(batch, StatePerturbation(probability=0.0), RASTER) is batch
    assert batch["features"].ego_status[:, 0].eq(5.0).all()  # the input is not modified in place


def test_draws_stay_within_their_bounds_and_bad_configs_are_refused() -> None:
    config = StatePerturbation(probability=1.0, longitudinal_m=2.0, lateral_m=0.3, yaw_rad=0.05, speed_frac=0.1)
    deviation, factor = draw_perturbations(2000, config, torch.Generator().manual_seed(0))
    bound = torch.tensor([2.0, 0.3, 0.05], dtype=torch.float64)
    assert (deviation.abs() <= bound).all() and (deviation.abs().amax(0) > 0.9 * bound).all()
    assert ((factor - 1).abs() <= 0.1).all()
    for bad in ({"probability": 1.5}, {"lateral_m": -1.0}, {"speed_frac": 1.0}, {"rejoin_s": 0.0}):
        with pytest.raises(ValueError):
            StatePerturbation(**bad)
    with pytest.raises(ValueError, match="probability"):
        PlannerModule(torch.nn.Linear(1, 1), state_perturbation={"probability": 2.0})


def test_fit_with_state_perturbation(tmp_path: Path) -> None:
    raster = RasterConfig(height_px=SIZE, width_px=SIZE, resolution_m=1.0, behind_m=8.0).to_dict()
    cache = write_random_cache(tmp_path / "cache", {"synth_train": 32, "synth_val": 8}, raster=raster)
    args = [
        "fit", "--config", "configs/train/truncated_il.yaml", "--data.cache_dir", str(cache),
        "--data.batch_size", "8", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--model.planner.init_args.config.d_model", "32", "--trainer.fast_dev_run", "true",
        "--model.state_perturbation", "{probability: 1.0, lateral_m: 1.0}",
    ]  # fmt: skip
    cli = run_cli(args)
    assert cli.model.perturbation == StatePerturbation(probability=1.0, lateral_m=1.0)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_fit_without_a_raster_description_says_so(feature_cache: Path, tmp_path: Path) -> None:
    args = [
        "fit", "--config", "configs/train/truncated_il.yaml", "--data.cache_dir", str(feature_cache),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.fast_dev_run", "true",
        "--model.planner.init_args.config.d_model", "32", "--model.state_perturbation", "{probability: 1.0}",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="state_perturbation needs the feature cache's raster description"):
        run_cli(args)
