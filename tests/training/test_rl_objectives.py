"""training.rl_objectives against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.rl_objectives import (
    clipped_loss,
    ddv2_advantages,
    failure_mask,
    gdpo_advantages,
    group_normalize,
    grpo_advantages,
    gspo_loss,
    k3_kl,
    mode_advantages,
    mode_choice_loss,
    reinforce_loss,
    step_discount,
)


def _t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_grpo_normalises_each_scene_with_the_unbiased_std() -> None:
    # scene 0: mean 2, std 1; scene 1: mean 4/3, var ((4/3)^2 * 2 + (8/3)^2) / 2 = 16/3, std 4/sqrt(3)
    adv = grpo_advantages(_t([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]]), eps=0.0)
    s3 = math.sqrt(3.0)
    expected = _t([[-1.0, 0.0, 1.0], [-s3 / 3, -s3 / 3, 2 * s3 / 3]])
    torch.testing.assert_close(adv, expected)


def test_group_of_one_sample_has_zero_advantage_and_groups_are_per_scene() -> None:
    values = _t([[5.0, 1.0, 3.0], [7.0, 7.0, 9.0]])
    groups = torch.tensor([[0, 1, 1], [0, 0, 1]])
    # scene 0: group 0 alone -> 0; group 1 {1, 3}: mean 2, std sqrt(2); scene 1: group 0 equal -> 0; group 1 alone
    r2 = 1 / math.sqrt(2.0)
    torch.testing.assert_close(group_normalize(values, groups, eps=1e-9), _t([[0.0, -r2, r2], [0.0, 0.0, 0.0]]))


def test_ddv2_truncates_within_anchor_groups_and_penalises_failures() -> None:
    total = _t([[0.2, 0.6, 0.5, 0.5, 0.9, 0.1]])
    groups = torch.tensor([[0, 0, 1, 1, 2, 2]])
    failure = torch.tensor([[False, False, True, False, False, False]])
    a = 0.2 / (math.sqrt(0.08) + 1e-4)  # group 0: mean 0.4, unbiased std sqrt(0.08); group 2: mean 0.5, std 0.4*sqrt(2)
    b = 0.4 / (0.4 * math.sqrt(2.0) + 1e-4)
    adv = ddv2_advantages(total, failure, groups, eps=1e-4)
    # negatives -> 0 (truncation); sample 2 failed -> -1 although its group-normalised advantage is 0
    torch.testing.assert_close(adv, _t([[0.0, a, -1.0, 0.0, b, 0.0]]))


def test_ddv2_can_leave_groups_whose_every_sample_failed_unpenalised() -> None:
    total = _t([[0.2, 0.6, 0.5, 0.5, 0.9, 0.1]])
    groups = torch.tensor([[0, 0, 1, 1, 2, 2]])
    failure = torch.tensor([[True, False, True, True, False, False]])  # group 0 mixed, group 1 all failed
    b = 0.4 / (0.4 * math.sqrt(2.0) + 1e-4)
    adv = ddv2_advantages(total, failure, groups, eps=1e-4, penalize_failed_groups=False)
    # group 0: the failure keeps -1 and the success its positive advantage; group 1: no contrast -> 0
    a = 0.2 / (math.sqrt(0.08) + 1e-4)
    torch.testing.assert_close(adv, _t([[-1.0, a, 0.0, 0.0, b, 0.0]]))
    torch.testing.assert_close(ddv2_advantages(total, failure, groups, eps=1e-4), _t([[-1.0, a, -1.0, -1.0, b, 0.0]]))


def test_ddv2_keeps_only_samples_at_least_as_good_as_the_ground_truth() -> None:
    total = _t([[0.2, 0.6, 0.5, 0.5, 0.9, 0.1]])
    groups = torch.tensor([[0, 0, 1, 1, 2, 2]])
    failure = torch.zeros(1, 6, dtype=torch.bool)
    b = 0.4 / (0.4 * math.sqrt(2.0) + 1e-4)
    adv = ddv2_advantages(total, failure, groups, eps=1e-4, reward_gt=_t([0.7]))
    torch.testing.assert_close(adv, _t([[0.0, 0.0, 0.0, 0.0, b, 0.0]]))  # 0.6 < 0.7: its positive advantage goes


def test_failure_mask_counts_static_collisions_and_ignores_missing_terms() -> None:
    terms = {
        "no_at_fault_collisions": _t([[1.0, 0.5, 1.0, 0.0]]),
        "drivable_area_compliance": _t([[1.0, 1.0, 0.0, 1.0]]),
        "ego_progress": _t([[0.1, 0.1, 0.1, 0.1]]),
    }
    assert failure_mask(terms).tolist() == [[False, True, True, True]]
    assert failure_mask({"ego_progress": _t([[0.0, 1.0]])}).tolist() == [[False, False]]


def test_gdpo_normalises_each_sub_reward_before_summing() -> None:
    # (a, b) = (1, 0), (0, 0), (0, 2): the summed reward (1, 0, 2) ranks the third first; GDPO ranks the first
    # and the third even. a: mean 1/3, std 1/sqrt(3) -> (2, -1, -1)/sqrt(3);
    # b: mean 2/3, std 2/sqrt(3) -> (-1, -1, 2)/sqrt(3); sum (1, -2, 1)/sqrt(3): batch mean 0, std 1
    terms = {"a": _t([[1.0, 0.0, 0.0]]), "b": _t([[0.0, 0.0, 2.0]])}
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(gdpo_advantages(terms, eps=0.0), _t([[1.0, -2.0, 1.0]]) / s3)
    torch.testing.assert_close(grpo_advantages(terms["a"] + terms["b"], eps=0.0), _t([[0.0, -1.0, 1.0]]))
    # weights a: 2, b: 1 -> A_pre = (3, -3, 0)/sqrt(3): batch mean 0, std sqrt(18 / 3 / 2) = sqrt(3)
    torch.testing.assert_close(gdpo_advantages(terms, {"a": 2.0, "b": 1.0}, eps=0.0), _t([[1.0, -1.0, 0.0]]))


def test_gdpo_batch_normalisation_spans_scenes() -> None:
    terms = {"a": _t([[0.0, 1.0], [0.0, 3.0]])}  # both scenes normalise to (-0.707, 0.707) in their group
    r2 = 1 / math.sqrt(2.0)
    # batch: values (-r2, r2, -r2, r2): mean 0, unbiased std sqrt(4 * 0.5 / 3) = sqrt(2/3)
    expected = _t([[-r2, r2], [-r2, r2]]) / math.sqrt(2.0 / 3.0)
    torch.testing.assert_close(gdpo_advantages(terms, eps=0.0), expected)


def test_step_discount_weighs_the_last_step_one() -> None:
    torch.testing.assert_close(step_discount(3, 0.8), torch.tensor([0.64, 0.8, 1.0]))


def test_k3_kl() -> None:
    lp = _t([0.0, -1.0])
    ref = _t([math.log(2.0), -1.0])
    torch.testing.assert_close(k3_kl(lp, ref), _t([2.0 - math.log(2.0) - 1.0, 0.0]))  # exp(d) - d - 1
    torch.testing.assert_close(k3_kl(ref, lp), _t([0.5 + math.log(2.0) - 1.0, 0.0]))


def test_reinforce_discounts_steps_and_leaves_zero_advantages_out_of_the_mean() -> None:
    lp = _t([[[-1.0, -2.0], [-3.0, -4.0]]]).requires_grad_(True)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    loss, stats = reinforce_loss(lp, _t([[1.0, 0.0]]), mask, gamma=0.5)
    # counted: sample 0 at weights (0.5, 1); sample 1 (A = 0) left out: -(0.5 + 1) / 2
    torch.testing.assert_close(loss, torch.tensor(-0.75, dtype=torch.float64))
    loss.backward()
    torch.testing.assert_close(lp.grad, _t([[[-0.25, -0.5], [0.0, 0.0]]]))
    assert float(stats["ratio_mean"]) == 1.0 and float(stats["counted_frac"]) == 0.5
    # a masked step is left out as well
    mask[0, 0, 0] = False
    loss, _ = reinforce_loss(lp, _t([[1.0, 0.0]]), mask, gamma=0.5)
    torch.testing.assert_close(loss, torch.tensor(-1.0, dtype=torch.float64))


def test_clipped_ratio_per_step_and_k3_kl() -> None:
    old = _t([[[0.0]]])
    lp = _t([[[math.log(1.5)]]]).requires_grad_(True)
    mask = torch.ones(1, 1, 1, dtype=torch.bool)
    loss, stats = clipped_loss(lp, old, _t([[1.0]]), mask, clip_eps=0.2)
    torch.testing.assert_close(loss, torch.tensor(-1.2, dtype=torch.float64))  # min(1.5, 1.2) * 1
    loss.backward()
    assert float(lp.grad) == 0.0 and float(stats["clip_frac"]) == 1.0
    loss, stats = clipped_loss(lp, old, _t([[-1.0]]), mask, clip_eps=0.2)
    torch.testing.assert_close(loss, torch.tensor(1.5, dtype=torch.float64))  # min(-1.5, -1.2): not clipped
    assert float(stats["clip_frac"]) == 0.0
    ref = _t([[[math.log(1.5) + math.log(2.0)]]])
    loss, stats = clipped_loss(lp, old, _t([[-1.0]]), mask, clip_eps=0.2, ref_log_prob=ref, kl_coef=0.1)
    kl = 2.0 - math.log(2.0) - 1.0
    torch.testing.assert_close(loss, torch.tensor(1.5 + 0.1 * kl, dtype=torch.float64))
    torch.testing.assert_close(stats["kl"], torch.tensor(kl, dtype=torch.float64))


def test_clipped_loss_averages_steps_within_a_sample_first() -> None:
    old = torch.zeros(1, 2, 2, dtype=torch.float64)
    lp = torch.log(_t([[[1.1, 5.0], [1.0, 1.1]]]))
    mask = torch.tensor([[[True, False], [True, True]]])
    loss, _ = clipped_loss(lp, old, _t([[1.0, 1.0]]), mask, clip_eps=0.2)
    # sample 0: -1.1 (the masked ratio 5 is ignored); sample 1: -(1.0 + 1.1) / 2 = -1.05; mean -1.075
    torch.testing.assert_close(loss, torch.tensor(-1.075, dtype=torch.float64))


def test_gspo_uses_the_sequence_ratio_and_its_asymmetric_clip() -> None:
    old = torch.zeros(3, 1, 2, dtype=torch.float64)
    lp = _t([[[0.001, 0.003]], [[0.0001, 0.0003]], [[-0.001, -0.001]]]).requires_grad_(True)
    adv = _t([[1.0], [1.0], [-1.0]])
    mask = torch.ones(3, 1, 2, dtype=torch.bool)
    loss, stats = gspo_loss(lp, old, adv, mask, eps_low=3e-4, eps_high=4e-4)
    # s = exp(0.002) > 1.0004 -> clipped to 1.0004; s = exp(0.0002) inside; s = exp(-0.001) < 0.9997 with A < 0 ->
    # min(-s, -0.9997) = -0.9997 (clipped)
    expected = (-1.0004 - math.exp(0.0002) + 0.9997) / 3
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    assert float(stats["clip_frac"]) == pytest.approx(2 / 3)
    loss.backward()
    # only the unclipped sequence has a gradient: d(-s/3)/d lp_i = -s / 3 / 2
    g = -math.exp(0.0002) / 6
    torch.testing.assert_close(lp.grad, _t([[[0.0, 0.0]], [[g, g]], [[0.0, 0.0]]]))


@pytest.mark.parametrize("objective", ["grpo", "gspo"])
def test_on_policy_ratio_is_one(objective: str) -> None:
    torch.manual_seed(0)
    lp = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(2, 3, dtype=torch.float64)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    if objective == "grpo":
        loss, stats = clipped_loss(lp, lp.detach(), adv, mask)
    else:
        loss, stats = gspo_loss(lp, lp.detach(), adv, mask)
    assert float(stats["ratio_mean"]) == pytest.approx(1.0, abs=1e-12) and float(stats["clip_frac"]) == 0.0
    torch.testing.assert_close(loss, -adv.mean())  # every ratio 1: the loss is -mean(A)
    loss.backward()
    torch.testing.assert_close(lp.grad, (-adv / (6 * 4))[..., None].expand(2, 3, 4))  # REINFORCE with baseline


@pytest.mark.parametrize("objective", ["grpo", "gspo"])
def test_a_logged_only_kl_never_enters_the_loss(objective: str) -> None:
    # a sample whose reference log-prob is -inf (an id outside a top-k): its k3 KL is inf / NaN, which must stay in the
    # logged statistic only when kl_coef is 0
    lp = torch.tensor([[[-1.0, -2.0], [-0.5, -0.7]]], requires_grad=True)
    old = lp.detach().clone()
    ref = torch.tensor([[[float("-inf"), -2.0], [-0.5, -0.7]]])
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    if objective == "grpo":
        loss, stats = clipped_loss(lp, old, adv, mask, 0.2, ref, kl_coef=0.0)
        expected, _ = clipped_loss(lp, old, adv, mask, 0.2, None, kl_coef=0.0)
    else:
        loss, stats = gspo_loss(lp, old, adv, mask, 3e-4, 4e-4, ref, kl_coef=0.0)
        expected, _ = gspo_loss(lp, old, adv, mask, 3e-4, 4e-4, None, kl_coef=0.0)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) == pytest.approx(float(expected.detach()))
    assert lp.grad is not None and torch.isfinite(lp.grad).all()
    assert not torch.isfinite(stats["kl"])


def test_mode_advantages_normalise_each_anchor_mean_over_the_anchors() -> None:
    # anchor 0: samples 1.0 and 0.6 (mean 0.8); anchor 1: 0.2; anchor 2: 0.0 and 0.4 (mean 0.2)
    # centre 0.4, unbiased std sqrt((0.4^2 + 0.2^2 + 0.2^2) / 2) = sqrt(0.12)
    total = torch.tensor([[1.0, 0.6, 0.2, 0.0, 0.4]])
    groups = torch.tensor([[0, 0, 1, 2, 2]])
    adv = mode_advantages(total, groups, num_modes=3, eps=0.0)
    std = math.sqrt(0.12)
    assert torch.allclose(adv, torch.tensor([[0.4 / std, -0.2 / std, -0.2 / std]]), atol=1e-6)
    # a scene whose anchors all score alike carries no signal
    assert torch.equal(mode_advantages(torch.ones(1, 5), groups, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="every one of the 4 modes needs a sample"):
        mode_advantages(total, groups, num_modes=4)


def test_mode_choice_loss_is_the_expected_advantage_of_the_softmax_choice() -> None:
    logits = torch.zeros(1, 2, requires_grad=True)
    loss, stats = mode_choice_loss(logits, torch.tensor([[1.0, -1.0]]))
    assert float(loss) == 0.0  # p = (1/2, 1/2): 1/2 - 1/2
    loss.backward()
    # d/dl_k of -sum_j p_j A_j = -p_k (A_k - sum_j p_j A_j) = (-1/2, 1/2): descent raises the better anchor
    assert logits.grad is not None and torch.allclose(logits.grad, torch.tensor([[-0.5, 0.5]]))
    assert abs(float(stats["mode_entropy"]) - math.log(2.0)) < 1e-6
