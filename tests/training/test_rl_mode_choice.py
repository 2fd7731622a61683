"""RLModule's mode-choice term: the truncated planner's anchor scores trained towards the anchors that score best."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rl_toy import DistanceReward, ToyGaussianPolicy

from planners.anchors import kmeans_anchors
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from simulation.features import PlannerInput
from training.rl import RLModule, _Scored
from training.rl_support import TensorRewards


def _planner(k: int = 6) -> TruncatedDiffusionPlanner:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t = np.arange(1, 9) * 0.5
    s = rng.uniform(0, 15, (200, 1)) * t
    heading = rng.uniform(-0.05, 0.05, (200, 1)) * s
    trajectories = np.stack([s * np.cos(heading / 2), s * np.sin(heading / 2), heading], -1)
    anchors = torch.from_numpy(kmeans_anchors(trajectories, k=k)).float()
    cfg = TruncatedDiffusionConfig(bev_channels=4, d_model=32, num_anchors=k, backbone="resnet10t")
    return TruncatedDiffusionPlanner(cfg, anchors)


def _features(b: int = 2) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return PlannerInput(
        bev=torch.rand(b, 4, 64, 64, generator=g),
        ego_status=torch.randn(b, 8, generator=g),
        agents=torch.randn(b, 6, 11, generator=g),
        agents_mask=torch.rand(b, 6, generator=g) > 0.5,
    )


def _argmax(planner: TruncatedDiffusionPlanner, features: PlannerInput[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return planner(features, torch.zeros(planner.initial_noise_shape(features.batch_size))).scores.argmax(1)


def test_the_executed_anchor_moves_to_the_anchor_whose_samples_score_best() -> None:
    planner = _planner()
    module = RLModule(planner=planner, reward=DistanceReward(), freeze=["bev_encoder"], mode_weight=1.0)
    features = _features()
    rollout = module.policy.rollout(features, 12, torch.Generator().manual_seed(0)).detach()
    before = _argmax(planner, features)
    best = (before + 3) % 6  # an anchor the planner does not execute yet
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
    assert losses[-1] < losses[0] and float(stats["mode_entropy"]) < float(np.log(6))


def test_mode_weight_needs_the_truncated_planner() -> None:
    with pytest.raises(ValueError, match="mode_weight needs the truncated diffusion planner"):
        RLModule(planner=ToyGaussianPolicy(), reward=DistanceReward(), mode_weight=0.5)
