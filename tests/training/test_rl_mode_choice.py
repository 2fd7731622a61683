"""RLModule's mode-choice term: the truncated planner's anchor scores trained towards the anchors that score best."""

from __future__ import annotations

import math

import pytest
import torch
from closed_loop_fixtures import tiny_generator
from rl_toy import DistanceReward, ToyGaussianPolicy

from planners.truncated_diffusion import TruncatedDiffusionPlanner
from simulation.features import PlannerInput
from training.rl import RLModule, _Scored
from training.rl_support import TensorRewards


def _features(channels: int, b: int = 2) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return PlannerInput(
        bev=torch.rand(b, channels, 64, 64, generator=g),
        ego_status=torch.randn(b, 8, generator=g),
        agents=torch.randn(b, 6, 11, generator=g),
        agents_mask=torch.rand(b, 6, generator=g) > 0.5,
    )


def _argmax(planner: TruncatedDiffusionPlanner, features: PlannerInput[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return planner(features, torch.zeros(planner.initial_noise_shape(features.batch_size))).scores.argmax(1)


def test_the_executed_anchor_moves_to_the_anchor_whose_samples_score_best() -> None:
    planner = tiny_generator()
    k = planner.config.num_anchors
    module = RLModule(planner=planner, reward=DistanceReward(), freeze=["bev_encoder"], mode_weight=1.0)
    features = _features(planner.config.bev_channels)
    rollout = module.policy.rollout(features, 3 * k, torch.Generator().manual_seed(0)).detach()
    before = _argmax(planner, features)
    best = (before + k // 2) % k  # an anchor the planner does not execute yet
    total = (rollout.groups == best[:, None]).float()  # its samples score 1, every other sample 0
    scored = _Scored(TensorRewards(total, {}), None)
    opt = torch.optim.Adam([p for p in planner.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(40):
        loss, stats = module._mode_choice_loss(features, rollout, scored)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert torch.equal(_argmax(planner, features), best)
    assert losses[-1] < losses[0] and float(stats["mode_entropy"]) < math.log(k)


def test_mode_weight_needs_the_truncated_planner() -> None:
    with pytest.raises(ValueError, match="mode_weight needs the truncated diffusion planner"):
        RLModule(planner=ToyGaussianPolicy(), reward=DistanceReward(), mode_weight=0.5)
