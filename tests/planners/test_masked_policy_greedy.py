"""The masked diffusion policy's greedy group members: the deployed argmax decode inside a sampled group."""

from __future__ import annotations

import math

import pytest
import torch
from test_masked_policy import _features

from planners.masked_diffusion import MaskedDiffusionConfig, MaskedDiffusionPlanner
from planners.masked_policy import MaskedDiffusionPolicy, attention_fast_path_off, fragment_tokens
from planners.tokenizer import CodebookConfig
from training.rl import RLModule, _Scored
from training.rl_igpo import IGPOConfig, hinted_mask, hinted_rollout
from training.rl_support import TensorRewards

ORDERS = ("confidence", "causal", "reverse_causal")


def _planner(num_steps: int = 4) -> MaskedDiffusionPlanner:
    torch.manual_seed(0)
    cfg = MaskedDiffusionConfig(
        bev_channels=4,
        d_model=16,
        num_heads=2,
        num_layers=1,
        codebook=CodebookConfig(resolution=1.0),
        num_steps=num_steps,
    )
    planner = MaskedDiffusionPlanner(cfg).eval()
    with torch.no_grad():
        planner.head.weight.mul_(2.0)
    return planner


@pytest.mark.parametrize("order", ORDERS)
def test_greedy_members_are_the_argmax_decode_and_the_others_unchanged(order: str) -> None:
    planner = _planner(num_steps=4)
    feats = _features(b=2)
    policy = MaskedDiffusionPolicy(planner, temperature=0.7, order=order, greedy_members=2)
    mixed = policy.rollout(feats, 5, torch.Generator().manual_seed(4))
    sampled = policy.rollout(feats, 5, torch.Generator().manual_seed(4), greedy=0)
    with torch.no_grad():
        argmax = planner.generate(feats, temperature=0.0, order=order)  # (2, 16)
    tokens = mixed.chains["tokens"]
    assert torch.equal(tokens[:, :2], argmax[:, None].expand(2, 2, 16))
    # the sampled members draw what they would draw without greedy members (same generator stream)
    for key in ("tokens", "reveal_step"):
        assert torch.equal(mixed.chains[key][:, 2:], sampled.chains[key][:, 2:])
    assert torch.equal(mixed.log_prob[:, 2:], sampled.log_prob[:, 2:])
    # the sampled members are samples, not the argmax (temperature 0.7 over 11-101 ids a position)
    assert not bool((tokens[:, 2:] == argmax[:, None]).all())
    # on-policy ratio 1 for every member, greedy ones included
    with torch.no_grad():
        rescored = policy.log_prob(feats, mixed)
    torch.testing.assert_close(rescored, mixed.log_prob, atol=1e-6, rtol=0)


def test_a_greedy_members_log_prob_is_the_sampling_probability_of_its_argmax_path() -> None:
    """Causal order (the positions do not depend on the draws): sum over steps of log q(argmax) at T, by hand."""
    planner = _planner(num_steps=4)
    feats = _features(b=1)
    temperature = 0.5
    policy = MaskedDiffusionPolicy(planner, temperature=temperature, order="causal", greedy_members=1)
    rollout = policy.rollout(feats, 3, torch.Generator().manual_seed(0))
    tok = planner.tokenizer
    expected = []
    with torch.no_grad(), attention_fast_path_off():
        memory, pad = planner.encode(feats)
        tokens = torch.full((1, tok.seq_len), tok.mask_id, dtype=torch.long)
        for step in range(4):
            logits = planner.logits(tokens, memory, pad)[0]  # (16, V)
            pos = list(range(4 * step, 4 * step + 4))  # causal, 4 tokens a step
            log_q = torch.log_softmax(logits / temperature, -1)
            ids = logits.argmax(-1)
            expected.append(sum(float(log_q[j, ids[j]]) for j in pos))
            tokens[0, pos] = ids[pos]
    assert torch.equal(rollout.chains["tokens"][0, 0], tokens[0])
    torch.testing.assert_close(rollout.log_prob[0, 0], torch.tensor(expected), atol=1e-5, rtol=0)
    assert all(math.isfinite(v) and v < 0 for v in expected)


def test_hinted_rollouts_are_all_sampled_and_never_replace_the_greedy_member() -> None:
    planner = _planner(num_steps=4)
    feats = _features(b=2)
    policy = MaskedDiffusionPolicy(planner, temperature=0.7, order="reverse_causal", greedy_members=1)
    expert = torch.tensor([[[2.0 * i, 0.1 * i] for i in range(1, 9)]] * 2)
    config = IGPOConfig(fragment=2)
    hinted = hinted_rollout(policy, feats, expert, 4, config, torch.Generator().manual_seed(0))
    hint = fragment_tokens(planner.tokenizer, expert, 2)
    for greedy, same in ((0, True), (1, False)):
        direct = policy.rollout(feats, 4, torch.Generator().manual_seed(0), fixed=hint, greedy=greedy)
        assert torch.equal(hinted.chains["tokens"], direct.chains["tokens"]) == same
    # IGPO splices hinted rollouts over the last members of a failed group: never over the first (greedy) one
    for fraction in (0.5, 1.0):
        for n in range(1, 17):
            m = IGPOConfig(fraction=fraction).num_hinted(n)
            assert not bool(hinted_mask(1, n, torch.tensor([0]), m, torch.device("cpu"))[0, 0]) or n == 1


def test_bad_greedy_settings_are_errors() -> None:
    planner = _planner(num_steps=4)
    with pytest.raises(ValueError, match="greedy_members must be >= 0"):
        MaskedDiffusionPolicy(planner, greedy_members=-1)
    policy = MaskedDiffusionPolicy(planner, greedy_members=3)
    with pytest.raises(ValueError, match="3 greedy members in groups of 2"):
        policy.rollout(_features(b=2), 2)


def test_the_rl_module_logs_the_greedy_members_reward_and_failures() -> None:
    """``train/greedy_reward`` / ``train/greedy_failure``: the first member of each group, by hand."""
    module = RLModule(planner=_planner(num_steps=4), reward=_Unused(), policy={"temperature": 0.7, "greedy_members": 1})
    assert isinstance(module.policy, MaskedDiffusionPolicy) and module.policy.greedy_members == 1
    rollout = module.policy.rollout(_features(b=2), 3, torch.Generator().manual_seed(0))
    total = torch.tensor([[0.2, 1.0, 0.6], [1.0, 0.0, 0.4]])
    nc = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    rewards = TensorRewards(total, {"no_at_fault_collisions": nc, "drivable_area_compliance": torch.ones(2, 3)})
    logged: dict[str, float] = {}
    module._log_values = lambda values, batch_size: logged.update({k: float(v) for k, v in values.items()})  # type: ignore[method-assign]
    module._log_step(_Scored(rewards, None), torch.zeros(2, 3), rollout, {}, 2)
    assert logged["greedy_reward"] == pytest.approx(0.6)  # (0.2 + 1.0) / 2
    assert logged["greedy_failure"] == pytest.approx(0.5)  # scene 0's greedy member collides
    assert logged["reward"] == pytest.approx(float(total.mean()))
    module_without = RLModule(planner=_planner(num_steps=4), reward=_Unused(), policy={"temperature": 0.7})
    logged.clear()
    module_without._log_values = lambda values, batch_size: logged.update({k: float(v) for k, v in values.items()})  # type: ignore[method-assign]
    module_without._log_step(_Scored(rewards, None), torch.zeros(2, 3), rollout, {}, 2)
    assert "greedy_reward" not in logged and "reward" in logged


class _Unused:
    """A reward object the logging test never calls."""

    version = "v1"

    def score(self, metric_caches: object, plans: object) -> None:
        raise AssertionError("not scored in this test")


def test_the_greedy_member_is_the_plan_the_planner_drives_but_for_the_first_pose_x() -> None:
    """``reverse_causal`` (the shipped order): the goal first, then the same argmax tokens as ``goal_candidates``'
    chosen plan; only the first pose's ``x``, decoded last, sees that pose's ``y`` in the planner and not here."""
    planner = _planner(num_steps=8)
    feats = _features(b=3)
    policy = MaskedDiffusionPolicy(planner, temperature=0.3, order="reverse_causal", greedy_members=1)
    greedy = policy.rollout(feats, 2, torch.Generator().manual_seed(0)).plans[:, 0, :, :2]  # (3, 8, 2)
    with torch.no_grad():
        driven = planner(feats).trajectory[..., :2]
    torch.testing.assert_close(greedy[:, 1:], driven[:, 1:], atol=0, rtol=0)
    torch.testing.assert_close(greedy[:, 0, 1], driven[:, 0, 1], atol=0, rtol=0)
