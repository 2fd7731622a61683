"""The truncated diffusion planner as an RL policy: chains, per-step log-probs, schedules, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from planners.anchors import kmeans_anchors
from planners.policy import PlanningPolicy, Rollout
from planners.schedulers import scaled_linear_alphas_cumprod
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from planners.truncated_policy import RolloutConfig, exploration_spread, freeze_encoder, policy_steps
from simulation.features import PlannerInput

K = 4


def _features(b: int = 2, seed: int = 0) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return PlannerInput(
        bev=torch.rand(b, 4, 32, 32, generator=g),
        ego_status=torch.randn(b, 8, generator=g),
        agents=torch.randn(b, 5, 11, generator=g),
        agents_mask=torch.rand(b, 5, generator=g) > 0.5,
    )


def _planner(anchor_offset: bool = True, truncated: bool = True, **overrides: int) -> TruncatedDiffusionPlanner:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t = np.arange(1, 9) * 0.5
    speed, curv = rng.uniform(0, 15, (200, 1)), rng.uniform(-0.05, 0.05, (200, 1))
    trajs = np.stack([speed * t * np.cos(curv * speed * t / 2), speed * t * np.sin(curv * speed * t / 2)], -1)
    anchors = torch.from_numpy(kmeans_anchors(trajs, k=K)).float()
    cfg = TruncatedDiffusionConfig(
        bev_channels=4,
        d_model=16,
        num_heads=2,
        num_anchors=K,
        anchor_offset=anchor_offset,
        truncated=truncated,
        **overrides,  # type: ignore[arg-type]
    )
    return TruncatedDiffusionPlanner(cfg, anchors).eval()


CONFIGS = {"ours": RolloutConfig(), "ddv2": RolloutConfig.ddv2()}


@pytest.fixture(scope="module")
def shared() -> tuple[TruncatedDiffusionPlanner, PlannerInput[torch.Tensor], dict[str, Rollout]]:
    """One planner and one rollout per schedule (``2 K`` samples, seed 1), shared by the read-only tests."""
    planner, inputs = _planner(), _features()
    rollouts = {}
    for name, config in CONFIGS.items():
        planner.rollout_config = config
        rollouts[name] = planner.rollout(inputs, 2 * K, torch.Generator().manual_seed(1))
    planner.rollout_config = RolloutConfig()
    return planner, inputs, rollouts


Shared = tuple[TruncatedDiffusionPlanner, PlannerInput[torch.Tensor], dict[str, Rollout]]


def _by_hand_mean(
    planner: TruncatedDiffusionPlanner,
    context: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    r: Rollout,
    s: int,
    t_prev: int,
    eta: float,
) -> torch.Tensor:
    """Eq. (12) mean of step ``s`` (landing on ``t_prev``), written out from the schedule's alpha table."""
    t = int(r.chains["timesteps"][0, 0, s])
    alphas = scaled_linear_alphas_cumprod()
    a_t = float(alphas[t])
    a_prev = float(alphas[t_prev]) if t_prev >= 0 else 1.0
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    x_t = r.chains["x_t"][:, :, s]
    with torch.no_grad():
        poses, _ = planner.decode(x_t, torch.tensor(t), context, planner.anchors[r.groups])[-1]
    x0 = planner.normalize(poses[..., :2]).clamp(-1, 1)
    eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    return math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps


def test_planner_is_a_planning_policy_and_rollout_shapes() -> None:
    planner, inputs = _planner(), _features()
    assert isinstance(planner, PlanningPolicy)
    r = planner.rollout(inputs, 3 * K, torch.Generator().manual_seed(0))
    r.validate()
    assert r.plans.shape == (2, 3 * K, 8, 3) and r.log_prob.shape == r.step_mask.shape == (2, 3 * K, 2)
    assert r.chains["x_t"].shape == r.chains["x_prev"].shape == (2, 3 * K, 2, 8, 2)
    assert r.groups.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]] * 2
    assert r.chains["timesteps"][0, 0].tolist() == [8, 0]
    assert not r.log_prob.requires_grad
    # the chain is connected: each step starts where the previous one landed
    assert torch.equal(r.chains["x_t"][:, :, 1], r.chains["x_prev"][:, :, 0])
    with pytest.raises(ValueError, match="multiple"):
        planner.rollout(inputs, K + 1)


def test_step_log_probs_match_torch_normal_by_hand(shared: Shared) -> None:
    planner, inputs, rollouts = shared
    a8, a0 = (float(a) for a in scaled_linear_alphas_cumprod()[[8, 0]])
    sigma_8_to_0 = math.sqrt((1 - a0) / (1 - a8)) * math.sqrt(1 - a8 / a0)  # eq. (16), eta = 1
    cases = {
        # ours: the 8 -> 0 step is scored with its own sigma floored at 0.01, the 0 -> clean step is not scored
        "ours": [(0, 0, max(sigma_8_to_0, 0.01))],
        # DiffusionDriveV2: t -> t - 1, every sigma of [18, ..., 0] is below the log-prob floor 0.1
        "ddv2": [(s, 17 - 2 * s, 0.1) for s in range(10)],
    }
    with torch.no_grad():
        context = planner.encode(inputs)
    for name, steps in cases.items():
        r = rollouts[name]
        assert r.step_mask.sum(-1).eq(len(steps)).all()
        for s, t_prev, std in steps:
            mean = _by_hand_mean(planner, context, r, s, t_prev, CONFIGS[name].eta)
            expected = torch.distributions.Normal(mean, std).log_prob(r.chains["x_prev"][:, :, s]).sum((-2, -1))
            torch.testing.assert_close(r.log_prob[..., s], expected, atol=1e-3, rtol=0.0)


@pytest.mark.parametrize("name", ["ours", "ddv2"])
def test_on_policy_ratio_is_one(shared: Shared, name: str) -> None:
    planner, inputs, rollouts = shared
    r = rollouts[name]
    log_prob = planner.log_prob(inputs, r)
    assert log_prob.requires_grad
    torch.testing.assert_close(log_prob.detach(), r.log_prob, atol=1e-6, rtol=0.0)
    ratio = torch.exp(log_prob - r.log_prob)
    torch.testing.assert_close(ratio.detach(), torch.ones_like(ratio), atol=1e-6, rtol=0.0)


def test_sigma_zero_steps_are_excluded_without_nan() -> None:
    planner, inputs = _planner(), _features()
    # ours at eta = 1: the last step lands on alpha = 1, so sigma = 0; with no floor its std would be 0
    planner.rollout_config = RolloutConfig(log_prob_std_floor=0.0)
    r = planner.rollout(inputs, K, torch.Generator().manual_seed(3))
    assert r.step_mask[..., 0].all() and not r.step_mask[..., 1].any()
    assert torch.equal(r.log_prob[..., 1], torch.zeros_like(r.log_prob[..., 1]))
    assert torch.isfinite(r.log_prob).all()
    # eta = 0 is plain DDIM: every step deterministic, the log-prob and its gradient stay finite
    planner.rollout_config = RolloutConfig(eta=0.0, log_prob_std_floor=0.0)
    r = planner.rollout(inputs, K, torch.Generator().manual_seed(3))
    assert not r.step_mask.any()
    log_prob = planner.log_prob(inputs, r)
    assert torch.equal(log_prob.detach(), torch.zeros_like(log_prob))
    log_prob.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in planner.parameters() if p.grad is not None)


def test_eta_zero_rollout_is_the_deterministic_sampler() -> None:
    planner, inputs = _planner(), _features()
    planner.rollout_config = RolloutConfig(eta=0.0)
    r = planner.rollout(inputs, K, torch.Generator().manual_seed(4))
    noise = torch.randn(2, K, 8, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = planner(inputs, noise)
    # the final sample of the deterministic chain is the decoder's last regression (clamped to the box), up to
    # the sampler's float32 rounding of eq. (12) near alpha = 1 (the policy folds it into float64 coefficients)
    clamped = planner.denormalize(planner.normalize(out.candidates[..., :2]).clamp(-1, 1))
    torch.testing.assert_close(r.plans[..., :2], clamped, atol=1e-3, rtol=0.0)
    torch.testing.assert_close(r.plans[..., 2], out.candidates[..., 2], atol=1e-3, rtol=0.0)


@pytest.mark.parametrize("name", ["ours", "ddv2"])
def test_the_executed_plan_is_the_final_sample(shared: Shared, name: str) -> None:
    planner, inputs, rollouts = shared
    r = rollouts[name]
    torch.testing.assert_close(r.plans[..., :2], planner.denormalize(r.chains["x_prev"][:, :, -1]))
    last_step_x_t = r.chains["x_t"][:, :, -1]
    with torch.no_grad():
        t = r.chains["timesteps"][:, 0, -1]
        poses, _ = planner.decode(last_step_x_t, t, planner.encode(inputs), planner.anchors[r.groups])[-1]
    torch.testing.assert_close(r.plans[..., 2], poses[..., 2])  # the decoder's heading of the last step
    if name == "ddv2":  # the last DDv2 step still explores: the plan is not the regression
        assert not torch.allclose(r.plans[..., :2], poses[..., :2], atol=1e-3)


def test_ddv2_schedule_labels_and_noise_floor(shared: Shared) -> None:
    planner = shared[0]
    steps = policy_steps(planner, RolloutConfig.ddv2())
    assert [s.timestep for s in steps] == [18, 16, 14, 12, 10, 8, 6, 4, 2, 0]
    assert [s.prev_timestep for s in steps] == [17, 15, 13, 11, 9, 7, 5, 3, 1, -1]
    assert steps[-1].alpha_prev == 1.0 and steps[-1].sigma == 0.0
    assert all(0.0 < s.sigma < 0.04 for s in steps[:-1])
    assert all(s.noise_std == 0.04 and s.log_prob_std == 0.1 for s in steps)
    ours = policy_steps(planner, RolloutConfig())
    assert [(s.timestep, s.prev_timestep) for s in ours] == [(8, 0), (0, -1)]
    assert ours[0].noise_std == pytest.approx(0.0095, abs=1e-4) and ours[1].noise_std == 0.0
    with pytest.raises(ValueError, match="truncated"):
        policy_steps(_planner(anchor_offset=False, truncated=False), RolloutConfig.ddv2())


def test_multiplicative_noise_is_one_scale_per_trajectory_about_the_ego() -> None:
    planner, inputs = _planner(), _features(b=1)
    planner.rollout_config = RolloutConfig.ddv2()
    r = planner.rollout(inputs, 64 * K, torch.Generator().manual_seed(6))
    s = 3
    with torch.no_grad():
        mean = _by_hand_mean(planner, planner.encode(inputs), r, s, 12 - 1, 1.0)  # step 3 is t = 12 -> 11
    origin = planner.normalize(torch.zeros(2))
    scale = (r.chains["x_prev"][:, :, s] - origin) / (mean - origin) - 1.0  # (1, N, 8, 2)
    torch.testing.assert_close(scale, scale[:, :, :1].expand_as(scale), atol=2e-3, rtol=0.0)
    assert float(scale[:, :, 0].std()) == pytest.approx(0.04, rel=0.1)


def test_seeded_rollouts_are_reproducible(shared: Shared) -> None:
    planner, inputs, rollouts = shared
    planner.rollout_config = CONFIGS["ddv2"]
    again = planner.rollout(inputs, 2 * K, torch.Generator().manual_seed(1))
    other = planner.rollout(inputs, 2 * K, torch.Generator().manual_seed(8))
    planner.rollout_config = RolloutConfig()
    assert torch.equal(again.plans, rollouts["ddv2"].plans) and torch.equal(again.log_prob, rollouts["ddv2"].log_prob)
    assert all(torch.equal(again.chains[k], v) for k, v in rollouts["ddv2"].chains.items())
    assert not torch.equal(again.plans, other.plans)


def test_gradients_reach_the_decoder_not_a_frozen_encoder() -> None:
    planner, inputs = _planner(), _features()
    r = planner.rollout(inputs, K, torch.Generator().manual_seed(9))
    planner.log_prob(inputs, r).sum().backward()
    assert planner.bev_encoder.proj.weight.grad is not None  # not frozen: the encoder learns too
    planner.zero_grad(set_to_none=True)
    freeze_encoder(planner)
    planner.log_prob(inputs, r).sum().backward()
    decoder_grads = [p.grad for p in planner.layers.parameters() if p.grad is not None]
    assert decoder_grads and any(float(g.abs().sum()) > 0 for g in decoder_grads)
    encoders = (planner.bev_encoder, planner.agent_encoder, planner.ego_encoder)
    assert all(p.grad is None for m in encoders for p in m.parameters())


def test_vanilla_planner_rolls_out_one_group() -> None:
    planner = _planner(anchor_offset=False, truncated=False, vanilla_steps=3)
    inputs = _features()
    r = planner.rollout(inputs, 5, torch.Generator().manual_seed(10))
    assert r.log_prob.shape == (2, 5, 3) and torch.equal(r.groups, torch.zeros(2, 5, dtype=torch.long))
    torch.testing.assert_close(planner.log_prob(inputs, r).detach(), r.log_prob, atol=1e-6, rtol=0.0)


def test_exploration_spread_by_hand() -> None:
    plans = torch.zeros(1, 5, 8, 3)
    plans[0, :, 7, :2] = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [5.0, 1.0], [9.0, 9.0]])
    groups = torch.tensor([[0, 0, 1, 1, 2]])  # group 2 has one sample: no spread to measure
    # group 0: mean (1, 0), distances 1, 1 -> 1; group 1: mean (5, 3), distances 2, 2 -> 2
    assert exploration_spread(plans, groups) == pytest.approx(1.5)
    assert exploration_spread(plans.numpy(), groups.numpy()) == pytest.approx(1.5)
    assert exploration_spread(plans, torch.tensor([[0, 1, 2, 3, 4]])) == 0.0


def test_rollout_config_rejects_unknown_options() -> None:
    with pytest.raises(ValueError, match="schedule"):
        RolloutConfig(schedule="ddpm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise"):
        RolloutConfig(noise="pink")  # type: ignore[arg-type]
