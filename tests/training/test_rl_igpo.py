"""Inpainting-guided groups: the trigger rule, the splice, and hinted rollouts in a failed scene's group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from rl_toy import FakeRewardBatch, ToyGaussianPolicy

from planners.masked_diffusion import MaskedDiffusionConfig, MaskedDiffusionPlanner
from planners.masked_policy import MaskedDiffusionPolicy
from planners.tokenizer import CodebookConfig
from simulation.features import PlannerInput
from training.rl import RLModule
from training.rl_igpo import (
    IGPOConfig,
    Inpainted,
    failed_scenes,
    hinted_mask,
    inpaint_failed_groups,
    splice,
)
from training.rl_support import TensorRewards

CODEBOOK = CodebookConfig(resolution=1.0)


def test_trigger_rule_on_a_hand_built_reward_batch() -> None:
    total = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # every sample at the threshold: failed
            [0.0, 0.9, 0.0, 0.0],  # one passes
            [0.8, 0.9, 0.7, 0.6],  # all pass the threshold, but all collide: failed
            [0.8, 0.0, 0.0, 0.0],  # one passes the threshold and does not collide
            [0.8, 0.9, 0.0, 0.0],  # those above the threshold collide: failed
        ]
    )
    failure = torch.tensor([[False] * 4, [False] * 4, [True] * 4, [False] * 4, [True, True, False, False]])
    assert failed_scenes(total, failure, 0.0).tolist() == [True, False, True, False, True]
    # a higher threshold counts low rewards as failures too
    assert failed_scenes(total, failure, 0.85).tolist() == [True, False, True, True, True]


def test_hinted_share_and_options() -> None:
    assert IGPOConfig(fraction=0.5).num_hinted(8) == 4
    assert IGPOConfig(fraction=0.1).num_hinted(8) == 1  # at least one
    assert IGPOConfig(fraction=1.0).num_hinted(4) == 3  # the group keeps one unhinted sample
    assert IGPOConfig(fraction=1.0).num_hinted(1) == 1
    assert IGPOConfig.of(None).enabled is False
    assert IGPOConfig.of({"enabled": True, "fragment": 3}).fragment == 3
    with pytest.raises(ValueError, match="unknown igpo"):
        IGPOConfig.of({"fragmnet": 3})
    with pytest.raises(ValueError, match="fraction"):
        IGPOConfig(fraction=0.0)


def test_splice_replaces_the_last_samples_of_the_chosen_scenes() -> None:
    values = torch.arange(12.0).reshape(3, 4)
    out = splice(values, torch.tensor([0, 2]), torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]))
    assert out.tolist() == [[0, 1, -1, -2], [4, 5, 6, 7], [8, 9, -3, -4]]
    assert values[0, 2] == 2.0  # a copy
    assert hinted_mask(3, 4, torch.tensor([1]), 1, torch.device("cpu")).tolist() == [
        [False] * 4,
        [False, False, False, True],
        [False] * 4,
    ]


class FirstWaypointReward:
    """1 when a plan's first waypoint is within 0.5 m of the scene's target's (the metric cache), else 0 and a
    collision."""

    names: Sequence[str] = ("no_at_fault_collisions", "drivable_area_compliance", "ego_progress")
    version = "v1"

    def score(self, metric_caches: Sequence[Any], plans: np.ndarray) -> FakeRewardBatch:
        target = np.stack([np.asarray(c) for c in metric_caches])[:, None]
        hit = (np.linalg.norm(plans[..., 0, :2] - target[..., 0, :2], axis=-1) < 0.5).astype(np.float64)
        return FakeRewardBatch(hit, {"no_at_fault_collisions": hit, "drivable_area_compliance": np.ones_like(hit),
                                     "ego_progress": hit})  # fmt: skip


def _planner() -> MaskedDiffusionPlanner:
    torch.manual_seed(0)
    cfg = MaskedDiffusionConfig(bev_channels=4, d_model=16, num_heads=2, num_layers=1, codebook=CODEBOOK, num_steps=4)
    return MaskedDiffusionPlanner(cfg).eval()


def _batch(b: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    features = PlannerInput(
        bev=torch.rand(b, 4, 32, 32, generator=g),
        ego_status=torch.randn(b, 8, generator=g),
        agents=torch.randn(b, 5, 11, generator=g),
        agents_mask=torch.rand(b, 5, generator=g) > 0.3,
    )
    traj = torch.stack([torch.arange(1.0, 9.0) * 3.0, torch.zeros(8), torch.zeros(8)], -1)
    trajectory = traj.expand(b, 8, 3).clone()
    return {"features": features, "targets": {"trajectory": trajectory}, "metric_cache": list(trajectory.numpy())}


def test_failed_scenes_get_hinted_rollouts_with_a_learning_signal() -> None:
    planner = _planner()
    policy = MaskedDiffusionPolicy(planner, temperature=1.0, order="causal")
    reference = MaskedDiffusionPolicy(_planner(), temperature=1.0, order="causal")
    batch, reward = _batch(3), FirstWaypointReward()
    rollout = policy.rollout(batch["features"], 4, torch.Generator().manual_seed(0))
    scored = reward.score(batch["metric_cache"], rollout.plans.double().numpy())
    total = torch.as_tensor(scored.total, dtype=torch.float32)
    total[1, 0] = 1.0  # scene 1 has a passing sample: it keeps its rollouts
    terms = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in scored.terms.items()}
    assert float(total[[0, 2]].sum()) == 0.0  # an untrained planner misses the first waypoint: all fail
    ref_lp = reference.log_prob(batch["features"], rollout).detach()
    before = Inpainted(rollout, TensorRewards(total, terms), ref_lp, torch.zeros(()))
    config = IGPOConfig(enabled=True, fraction=0.5, fragment=1)
    after = inpaint_failed_groups(
        config, (policy, reference), reward, batch, before, total < 1, torch.Generator().manual_seed(1)
    )
    assert after.hinted.tolist() == [[False, False, True, True], [False] * 4, [False, False, True, True]]
    hinted = after.hinted
    # the hint (the expert's first waypoint) is kept and earns the reward; the group now has a signal
    tokens, reveal = after.rollout.chains["tokens"], after.rollout.chains["reveal_step"]
    assert torch.equal(
        tokens[hinted][:, :2], planner.tokenizer.encode(batch["targets"]["trajectory"])[:1, :2].expand(4, 2)
    )
    assert bool((reveal[hinted][:, :2] == -1).all()) and bool((reveal[hinted][:, 2:] >= 0).all())
    assert after.rewards.total[hinted].tolist() == [1.0] * 4 and float(after.rewards.total[0].std()) > 0
    # the untouched samples keep everything; the hinted ones carry their own log-probs (policy and reference)
    assert torch.equal(after.rollout.plans[~hinted], rollout.plans[~hinted])
    assert torch.equal(after.rewards.total[~hinted], total[~hinted])
    torch.testing.assert_close(after.ref_lp[~hinted], ref_lp[~hinted])  # type: ignore[index]
    with torch.no_grad():
        torch.testing.assert_close(policy.log_prob(batch["features"], after.rollout), after.rollout.log_prob)
        torch.testing.assert_close(reference.log_prob(batch["features"], after.rollout), after.ref_lp)


def test_no_failed_scene_leaves_the_rollout_alone_and_igpo_needs_the_masked_policy() -> None:
    policy = MaskedDiffusionPolicy(_planner(), order="causal")
    batch = _batch(2)
    rollout = policy.rollout(batch["features"], 3, torch.Generator().manual_seed(0))
    total = torch.ones(2, 3)
    before = Inpainted(rollout, TensorRewards(total, {}), None, torch.zeros(()))
    after = inpaint_failed_groups(IGPOConfig(enabled=True), (policy, policy), FirstWaypointReward(), batch, before,
                                  torch.zeros(2, 3, dtype=torch.bool))  # fmt: skip
    assert after.rollout is rollout and not bool(after.hinted.any())
    with pytest.raises(ValueError, match="igpo needs the masked"):
        RLModule(planner=ToyGaussianPolicy(), reward=FirstWaypointReward(), igpo={"enabled": True})
    module = RLModule(planner=_planner(), reward=FirstWaypointReward(), igpo={"enabled": True, "fragment": 2})
    assert module.igpo.fragment == 2
