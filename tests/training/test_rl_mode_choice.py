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
    mode, extra = module._mode_advantages({"features": features}, rollout, scored, torch.Generator())
    assert mode is not None and extra == {} and not mode.noise.any()  # mode_noise "anchors": no start noise
    for _ in range(40):
        loss, stats = module._mode_choice_loss(features, mode)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert torch.equal(_argmax(planner, features), best)
    assert losses[-1] < losses[0] and float(stats["mode_entropy"]) < math.log(k)


def test_mode_weight_needs_the_truncated_planner() -> None:
    with pytest.raises(ValueError, match="mode_weight needs the truncated diffusion planner"):
        RLModule(planner=ToyGaussianPolicy(), reward=DistanceReward(), mode_weight=0.5)


def test_candidate_rewards_move_the_executed_anchor_to_the_best_candidate() -> None:
    planner = tiny_generator()
    k = planner.config.num_anchors
    module = RLModule(
        planner=planner, reward=DistanceReward(), freeze=["bev_encoder"], mode_weight=1.0, mode_reward="candidates"
    )
    features = _features(planner.config.bev_channels)
    before = _argmax(planner, features)
    best = (before + k // 2) % k
    with torch.no_grad():
        candidates = planner(features, torch.zeros(planner.initial_noise_shape(2))).candidates
    # DistanceReward scores closeness to each scene's "metric cache": here the candidate of anchor `best`
    batch = {"features": features, "metric_cache": [candidates[i, best[i]].numpy() for i in range(2)]}
    rollout = module.policy.rollout(features, k, torch.Generator().manual_seed(0)).detach()
    scored = _Scored(TensorRewards(torch.zeros(2, k), {}), None)  # the rollout's rewards are not used
    opt = torch.optim.Adam([p for p in planner.parameters() if p.requires_grad], lr=1e-2)
    mode, stats = module._mode_advantages(batch, rollout, scored, torch.Generator())
    assert mode is not None and mode.adv.shape == (2, k)
    assert torch.equal(mode.adv.argmax(1), best) and float(stats["mode_best_reward"]) == pytest.approx(1.0)
    assert float(stats["mode_pick_reward"]) < 1.0  # the planner does not pick it yet
    for _ in range(40):
        loss, _ = module._mode_choice_loss(features, mode)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(_argmax(planner, features), best)


def test_mode_reward_is_checked() -> None:
    with pytest.raises(ValueError, match="mode_reward must be"):
        RLModule(planner=tiny_generator(), reward=DistanceReward(), mode_weight=1.0, mode_reward="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode_noise must be"):
        RLModule(planner=tiny_generator(), reward=DistanceReward(), mode_weight=1.0, mode_noise="zeros")  # type: ignore[arg-type]


def test_sampled_mode_noise_trains_on_the_candidates_of_the_drawn_noise() -> None:
    """``mode_noise: sampled``: each step draws the start noise from the rollout generator (a standard normal, as at
    inference); the advantages are those of that noise's candidates, and the loss re-runs the planner on it."""
    planner = tiny_generator()
    k = planner.config.num_anchors
    module = RLModule(
        planner=planner,
        reward=DistanceReward(),
        freeze=["bev_encoder"],
        mode_weight=1.0,
        mode_reward="candidates",
        mode_noise="sampled",
    )
    features = _features(planner.config.bev_channels)
    shape = planner.initial_noise_shape(2)
    drawn = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        candidates = planner(features, drawn).candidates
        anchors_only = planner(features, torch.zeros(shape)).candidates
    assert not torch.allclose(candidates, anchors_only)  # the noise changes the candidates
    target = candidates[:, 1]  # anchor 1's candidate of the drawn noise scores best in both scenes
    batch = {"features": features, "metric_cache": [target[i].numpy() for i in range(2)]}
    rollout = module.policy.rollout(features, k, torch.Generator().manual_seed(0)).detach()
    scored = _Scored(TensorRewards(torch.zeros(2, k), {}), None)
    mode, stats = module._mode_advantages(batch, rollout, scored, torch.Generator().manual_seed(3))
    assert mode is not None and torch.equal(mode.noise, drawn)
    assert mode.adv.argmax(1).tolist() == [1, 1] and float(stats["mode_best_reward"]) == pytest.approx(1.0)
    # the next draw of the generator is another noise
    gen = torch.Generator().manual_seed(3)
    first, second = (module._mode_noise(features, gen) for _ in range(2))
    assert torch.equal(first, drawn) and not torch.allclose(first, second)
    loss, _ = module._mode_choice_loss(features, mode)
    with torch.no_grad():
        scores = planner(features, drawn).scores
    expected = -(torch.softmax(scores, 1) * mode.adv).sum(1).mean()  # the loss is on the drawn noise's scores
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_trainable_keeps_only_the_named_parameters_training() -> None:
    planner = tiny_generator()
    module = RLModule(planner=planner, reward=DistanceReward(), trainable=["cls_head"])
    training = {name for name, p in planner.named_parameters() if p.requires_grad}
    assert training and all("cls_head" in name for name in training)
    assert len(training) == sum("cls_head" in name for name, _ in planner.named_parameters())
    assert all(not p.requires_grad for p in module.reference.parameters())
    with pytest.raises(ValueError, match="trainable 'no_such' matches no parameter"):
        RLModule(planner=tiny_generator(), reward=DistanceReward(), trainable=["no_such"])
