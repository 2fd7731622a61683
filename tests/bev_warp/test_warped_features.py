"""Warped features for learned planners: the encoder runs once per logged frame at reset, the head on the warped
feature map at every step, batched; the same plans as one episode at a time and as re-encoding at zero deviation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from scenes import eastbound, fixture_map  # noqa: E402

from bev_warp.env import BEVWarpEnv, EnvConfig, repeat_state  # noqa: E402
from bev_warp.policies import LearnedPolicy  # noqa: E402
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner  # noqa: E402
from simulation.features import PLANNER_RASTER  # noqa: E402


def _planner() -> TruncatedDiffusionPlanner:
    torch.manual_seed(0)
    t = torch.arange(1, 9) * 0.5
    anchors = torch.stack([torch.outer(torch.tensor([2.0, 5.0, 8.0, 11.0]), t), torch.zeros(4, 8)], -1)
    config = TruncatedDiffusionConfig(d_model=32, num_anchors=4, backbone_stage=-2)
    return TruncatedDiffusionPlanner(config, anchors).eval()


SCENES = [eastbound(frames=31, obstacle_x=-20.0), eastbound(frames=31, token="b", speed=6.0, obstacle_x=30.0)]


def _features_env(model: TruncatedDiffusionPlanner) -> BEVWarpEnv:
    return BEVWarpEnv(EnvConfig(observation="features", terminate_on=()), encoder=model.encode_bev)


def test_head_on_logged_features_equals_the_whole_planner_on_the_raster() -> None:
    model = _planner()
    env = _features_env(model)
    state = env.reset(SCENES, fixture_map())
    assert state.episodes.observations is not None
    assert state.episodes.observations.shape[2:] == (32, PLANNER_RASTER.height_px // 16, PLANNER_RASTER.width_px // 16)
    warped = LearnedPolicy(model, env, SCENES, seed=1, warp="features")
    plans, failed = warped(state)
    raster_env = BEVWarpEnv(EnvConfig(observation="raster", terminate_on=()))
    raster_state = raster_env.reset(SCENES, fixture_map())
    want, _ = LearnedPolicy(model, raster_env, SCENES, seed=1)(raster_state)  # encoder + head on the raster
    assert not bool(failed.any())
    torch.testing.assert_close(plans, want, atol=1e-4, rtol=0)


def test_features_policy_batched_matches_one_episode_at_a_time() -> None:
    model = _planner()
    env = _features_env(model)
    batch = env.reset(SCENES, fixture_map())
    singles = [env.reset([s], fixture_map()) for s in SCENES]
    policy = LearnedPolicy(model, env, SCENES, warp="features")
    single_policies = [LearnedPolicy(model, env, [s], warp="features") for s in SCENES]
    for _ in range(4):  # the ego leaves the log: the features are warped
        plans, failed = policy(batch)
        for i, (single, p) in enumerate(zip(singles, single_policies, strict=True)):
            one, _ = p(single)
            torch.testing.assert_close(plans[i : i + 1], one, atol=1e-4, rtol=0)
            singles[i], *_ = env.step(single, one, None)
        batch, *_ = env.step(batch, plans, failed)
    assert float((batch.ego[:, :2] - batch.episodes.ego[torch.arange(2), batch.frame, :2]).norm(dim=-1).max()) > 0.1
    # branches of a repeated state plan as their scene does (the same noise, the commands repeated)
    branched = repeat_state(batch, 3)
    plans3, _ = policy(branched)
    torch.testing.assert_close(plans3, policy(batch)[0].repeat_interleave(3, 0), atol=1e-4, rtol=0)


def test_features_policy_needs_a_features_environment() -> None:
    model = _planner()
    with pytest.raises(ValueError, match="observation='features'"):
        LearnedPolicy(model, BEVWarpEnv(EnvConfig(observation="raster")), SCENES, warp="features")
    assert np.isfinite(model.encode_bev(torch.zeros(1, 12, 128, 128)).detach().numpy()).all()


def test_masked_planner_head_on_its_encoder_features_is_its_forward() -> None:
    from planners.masked_diffusion import MaskedDiffusionConfig, MaskedDiffusionPlanner
    from simulation.features import AGENT_FEATURES, PlannerInput

    torch.manual_seed(0)
    model = MaskedDiffusionPlanner(MaskedDiffusionConfig(bev_channels=4, d_model=32, num_layers=1, num_steps=2)).eval()
    inputs = PlannerInput(
        bev=torch.rand(2, 4, 64, 64),
        ego_status=torch.rand(2, 8),
        agents=torch.rand(2, 3, AGENT_FEATURES),
        agents_mask=torch.ones(2, 3, dtype=torch.bool),
    )
    with torch.no_grad():
        want = model(inputs)
        got = model.forward_features(PlannerInput(model.encode_bev(inputs.bev), *inputs.tensors()[1:]))
    assert model.encode_bev(inputs.bev).shape == (2, 32, 2, 2)
    torch.testing.assert_close(got.trajectory, want.trajectory)
    torch.testing.assert_close(got.candidates, want.candidates)
