"""Advantages and policy-gradient objectives for RL on generator rollouts: pure functions on tensors.

Shapes: ``B`` scenes, ``N`` samples per scene, ``S`` stochastic steps per sample (denoising or unmasking steps).
Rewards come in as ``total (B, N)`` and sub-rewards ``terms[name] (B, N)``; a rollout's per-step log-probs are
``(B, N, S)`` with a ``step_mask (B, N, S)`` that is ``True`` where a step counts.

Group statistics use the unbiased (Bessel-corrected) standard deviation, as ``torch.std`` does in the GRPO /
GDPO / DiffusionDriveV2 reference code; a group of one sample has a zero advantage.

Each objective returns ``(loss, stats)``: a scalar to minimise and a dict of detached scalar statistics
(``ratio_mean``, ``clip_frac``, ``kl``, ``pg_loss``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

#: Sub-rewards whose value below 1 marks a failed sample (DiffusionDriveV2: collision or leaving the drivable area).
FAILURE_TERMS = ("no_at_fault_collisions", "drivable_area_compliance")

Stats = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------
# advantages
# --------------------------------------------------------------------------------------------------


def group_normalize(values: torch.Tensor, groups: torch.Tensor | None = None, eps: float = 1e-4) -> torch.Tensor:
    """``(x - mean_G x) / (std_G x + eps)`` with ``G`` the samples of the same scene and group id.

    Args:
        values: ``(B, N)`` rewards.
        groups: ``(B, N)`` long group ids within each scene (``None``: one group per scene).
        eps: added to the unbiased group standard deviation.

    Returns:
        ``(B, N)`` normalised values (zero for a sample alone in its group).
    """
    b, n = values.shape
    x = values.to(torch.float64)
    if groups is None:
        groups = torch.zeros_like(values, dtype=torch.long)
    _, key = torch.unique(
        (torch.arange(b, device=values.device)[:, None] * (int(groups.max()) + 1) + groups).reshape(-1),
        return_inverse=True,
    )
    k = int(key.max()) + 1
    flat = x.reshape(-1)
    count = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, key, torch.ones_like(flat))
    mean = torch.zeros_like(count).index_add_(0, key, flat) / count
    centred = flat - mean[key]
    var = torch.zeros_like(count).index_add_(0, key, centred**2) / (count - 1).clamp(min=1)
    out = centred / (var.sqrt()[key] + eps)
    return out.reshape(b, n).to(values.dtype)


def grpo_advantages(total: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: ``A_i = (r_i - mean_G r) / (std_G r + eps)`` over a scene's ``N`` samples (methods §7.3).

    Args:
        total: ``(B, N)`` rewards.

    Returns:
        ``(B, N)`` advantages.
    """
    return group_normalize(total, None, eps)


def failure_mask(terms: Mapping[str, torch.Tensor], names: Sequence[str] = FAILURE_TERMS) -> torch.Tensor:
    """``(B, N)`` bool: a sample fails when any of the sub-rewards ``names`` present in ``terms`` is below 1.

    (No-at-fault-collision is 0.5 for a static object: that is a failure too, as ``NC != 1`` in DiffusionDriveV2.)
    """
    present = [terms[name] < 1.0 for name in names if name in terms]
    if not present:
        first = next(iter(terms.values()))
        return torch.zeros_like(first, dtype=torch.bool)
    return torch.stack(present).any(0)


def ddv2_advantages(
    total: torch.Tensor,
    failure: torch.Tensor,
    groups: torch.Tensor,
    eps: float = 1e-4,
    reward_gt: torch.Tensor | None = None,
    penalize_failed_groups: bool = True,
) -> torch.Tensor:
    """DiffusionDriveV2's truncated intra-anchor advantage (methods §1b.1, paper eq. 10).

    ``A = (r - mean_G r) / (std_G r + eps)`` over the samples of the same anchor (``groups``), then
    ``A <- max(A, 0)``; with ``reward_gt`` also ``A <- 0`` where ``r < r_GT - 1e-6`` (the released code keeps only
    samples at least as good as the human trajectory; the paper does not state it); finally ``A = -1`` for every
    failed sample (collision or off-road), whatever its reward. With ``penalize_failed_groups=False`` (ours, not
    DiffusionDriveV2's) a failed sample gets -1 only when a sample of its group did not fail: a group whose every
    sample fails carries no contrast between its samples, and its -1s push the shared decoder in the directions of
    their noise draws, which average out only over large batches.

    Args:
        total: ``(B, N)`` rewards.
        failure: ``(B, N)`` bool failure flags (:func:`failure_mask`).
        groups: ``(B, N)`` long anchor ids (``Rollout.groups``).
        reward_gt: ``(B,)`` reward of each scene's ground-truth plan, or ``None`` to skip that rule.

    Returns:
        ``(B, N)`` advantages in ``{-1} U [0, inf)``.
    """
    adv = group_normalize(total, groups, eps).clamp(min=0.0)
    if reward_gt is not None:
        adv = adv * (total > reward_gt[:, None] - 1e-6).to(adv.dtype)
    penalized = failure
    if not penalize_failed_groups:
        # (B, N, N): sample j is in sample i's group; a failure keeps its -1 where some group member succeeded
        same = groups[:, :, None] == groups[:, None, :]
        penalized = failure & (same & ~failure[:, None, :]).any(-1)
    adv = torch.where(failure, torch.zeros_like(adv), adv)
    return torch.where(penalized, torch.full_like(adv, -1.0), adv)


def gdpo_advantages(
    terms: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | None = None,
    groups: torch.Tensor | None = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """GDPO: each sub-reward normalised in its group, weighted sum, then normalised over the batch (methods §7.5).

    ``A_k = (r_k - mean_G r_k) / (std_G r_k + eps)``, ``A_pre = sum_k w_k A_k``,
    ``A = (A_pre - mean_batch A_pre) / (std_batch A_pre + eps)``.

    Args:
        terms: sub-rewards by name, each ``(B, N)``.
        weights: ``w_k`` by name (``None``: 1 for every term; a term without a weight counts with 0).
        groups: ``(B, N)`` group ids within a scene (``None``: the scene's samples are one group).

    Returns:
        ``(B, N)`` advantages.
    """
    if not terms:
        raise ValueError("GDPO needs at least one sub-reward")
    first = next(iter(terms.values()))
    pre = torch.zeros_like(first, dtype=torch.float64)
    for name, value in terms.items():
        w = 1.0 if weights is None else float(weights.get(name, 0.0))
        if w != 0.0:
            pre = pre + w * group_normalize(value.to(torch.float64), groups, eps)
    flat = pre.reshape(1, -1)
    return group_normalize(flat, None, eps).reshape(first.shape).to(first.dtype)


# --------------------------------------------------------------------------------------------------
# objectives
# --------------------------------------------------------------------------------------------------


def step_discount(num_steps: int, gamma: float, device: torch.device | str | None = None) -> torch.Tensor:
    """``(S,)`` weights ``gamma^(S - 1 - i)`` of step ``i``: the last denoising step (the plan) weighs 1."""
    exponents = torch.arange(num_steps - 1, -1, -1, device=device, dtype=torch.float32)
    return torch.full_like(exponents, float(gamma)) ** exponents


def k3_kl(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """Per-entry k3 estimator of ``KL(pi_theta || pi_ref)``: ``exp(d) - d - 1`` with ``d = log pi_ref - log pi_theta``
    (unbiased, non-negative; methods §7.3)."""
    d = ref_log_prob - log_prob
    return torch.exp(d) - d - 1.0


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def reinforce_loss(
    log_prob: torch.Tensor, advantages: torch.Tensor, step_mask: torch.Tensor, gamma: float = 1.0
) -> tuple[torch.Tensor, Stats]:
    """REINFORCE over the denoising steps with a step discount (DiffusionDriveV2, methods §1b.1).

    ``L = -mean_{(b, n, i): w_i A != 0} gamma^(S-1-i) A_{b,n} exp(lp_{b,n,i} - sg(lp_{b,n,i}))``: the ratio is 1 in
    value and its gradient is ``grad lp``; entries with a zero (discounted) advantage or a ``False`` step mask are
    left out of the mean.

    Args:
        log_prob: ``(B, N, S)`` per-step log-probs with gradients.
        advantages: ``(B, N)``.
        step_mask: ``(B, N, S)`` bool.
        gamma: the step discount.
    """
    discount = step_discount(log_prob.shape[-1], gamma, log_prob.device).to(log_prob.dtype)
    adv = advantages[..., None].to(log_prob.dtype) * discount
    counted = step_mask & (adv != 0)
    ratio = torch.exp(log_prob - log_prob.detach())
    loss = _masked_mean(-adv * ratio, counted)
    stats = {
        "pg_loss": loss.detach(),
        "ratio_mean": _masked_mean(ratio.detach(), step_mask),
        "counted_frac": counted.float().sum() / step_mask.float().sum().clamp(min=1.0),
        "clip_frac": torch.zeros((), device=log_prob.device),
    }
    return loss, stats


def clipped_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    step_mask: torch.Tensor,
    clip_eps: float = 0.2,
    ref_log_prob: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, Stats]:
    """GRPO per step: clipped importance ratio plus ``kl_coef`` times the k3 KL to the reference (methods §7.3).

    ``rho = exp(lp - lp_old)``, ``l = -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + beta k3(lp_ref, lp)`` per counted
    step; averaged over a sample's counted steps, then over the samples that have any.

    Args:
        log_prob: ``(B, N, S)`` current per-step log-probs with gradients.
        old_log_prob: ``(B, N, S)`` the behaviour policy's (``Rollout.log_prob``).
        advantages: ``(B, N)``.
        step_mask: ``(B, N, S)`` bool.
        ref_log_prob: ``(B, N, S)`` the reference policy's, or ``None`` (no KL term, ``kl`` stat 0).
    """
    adv = advantages[..., None].to(log_prob.dtype)
    ratio = torch.exp(log_prob - old_log_prob)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    kl = k3_kl(log_prob, ref_log_prob) if ref_log_prob is not None else torch.zeros_like(log_prob)
    per_step = -surrogate + kl_coef * kl if kl_coef else -surrogate  # a logged-only KL never enters the loss
    m = step_mask.to(log_prob.dtype)
    steps = m.sum(-1)
    per_sample = (per_step * m).sum(-1) / steps.clamp(min=1.0)
    has = (steps > 0).to(log_prob.dtype)
    loss = (per_sample * has).sum() / has.sum().clamp(min=1.0)
    clipped = ((ratio < 1.0 - clip_eps) & (adv < 0)) | ((ratio > 1.0 + clip_eps) & (adv > 0))
    stats = {
        "pg_loss": _masked_mean(-surrogate, step_mask).detach(),
        "ratio_mean": _masked_mean(ratio.detach(), step_mask),
        "clip_frac": _masked_mean(clipped.float(), step_mask),
        "kl": _masked_mean(kl.detach(), step_mask),
    }
    return loss, stats


def gspo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    step_mask: torch.Tensor,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    ref_log_prob: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, Stats]:
    """GSPO: one importance ratio per sample from the mean per-step log-ratio (methods §7.4).

    ``s = exp(mean_{counted i}(lp_i - lp_old_i))``, ``L = -mean_n min(s A, clip(s, 1 - eps_low, 1 + eps_high) A)``
    over the samples with a counted step, plus ``kl_coef`` times the masked mean k3 KL to the reference.

    Args: as :func:`clipped_loss`.
    """
    m = step_mask.to(log_prob.dtype)
    steps = m.sum(-1)
    has = steps > 0
    mean_log_ratio = ((log_prob - old_log_prob) * m).sum(-1) / steps.clamp(min=1.0)
    ratio = torch.exp(mean_log_ratio)
    adv = advantages.to(log_prob.dtype)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv)
    pg = _masked_mean(-surrogate, has)
    kl = k3_kl(log_prob, ref_log_prob) if ref_log_prob is not None else torch.zeros_like(log_prob)
    kl_mean = _masked_mean(kl, step_mask)
    clipped = ((ratio < 1.0 - eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))
    stats = {
        "pg_loss": pg.detach(),
        "ratio_mean": _masked_mean(ratio.detach(), has),
        "clip_frac": _masked_mean(clipped.float(), has),
        "kl": kl_mean.detach(),
    }
    return (pg + kl_coef * kl_mean if kl_coef else pg), stats  # a logged-only KL never enters the loss


# --------------------------------------------------------------------------------------------------
# the choice of mode (truncated diffusion: which anchor's plan the planner executes)
# --------------------------------------------------------------------------------------------------


def mode_advantages(total: torch.Tensor, groups: torch.Tensor, num_modes: int, eps: float = 1e-4) -> torch.Tensor:
    """Each mode's mean reward over its samples, normalised over the scene's modes (:func:`group_normalize`).

    Args:
        total: ``(B, N)`` rewards.
        groups: ``(B, N)`` long mode ids in ``[0, num_modes)`` (the truncated planner's anchor of each sample).
        num_modes: ``K``; every mode must have a sample in every scene (the truncated rollout samples each anchor
            ``N / K`` times).
        eps: added to the standard deviation over the modes.

    Returns:
        ``(B, K)`` advantages.

    Raises:
        ValueError: a mode without a sample.
    """
    onehot = torch.nn.functional.one_hot(groups, num_modes).to(torch.float64)  # (B, N, K)
    count = onehot.sum(1)
    if bool((count == 0).any()):
        raise ValueError(f"every one of the {num_modes} modes needs a sample in every scene (counts {count.tolist()})")
    mean = (total.to(torch.float64)[..., None] * onehot).sum(1) / count
    return group_normalize(mean, None, eps).to(total.dtype)


def mode_choice_loss(logits: torch.Tensor, advantages: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """``-mean_b sum_k softmax(logits_b)_k A_bk``: the mode classifier as a categorical policy over the modes.

    Every mode is rolled out, so the expected advantage of the choice is computed exactly and its gradient is the
    policy gradient without sampling the choice: probability moves towards the modes whose samples scored above the
    scene's average mode.

    Args:
        logits: ``(B, K)`` the planner's mode scores (the executed plan is their argmax), with gradients.
        advantages: ``(B, K)`` from :func:`mode_advantages`.
    """
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    loss = -(p * advantages.to(p.dtype)).sum(-1).mean()
    entropy = -(p * log_p).sum(-1).mean()
    return loss, {"mode_loss": loss.detach(), "mode_entropy": entropy.detach()}
