"""Inpainting-guided groups (IGPO) for the masked diffusion planner.

When every sample of a scene fails, group-normalised advantages are all zero and the scene teaches nothing. IGPO
then re-samples a share of that scene's rollouts from a hint: a fragment of the expert (ground-truth) trajectory is
inpainted (its tokens fixed, :func:`planners.masked_policy.fragment_tokens`) and the policy decodes the rest
(:meth:`planners.masked_policy.MaskedDiffusionPolicy.rollout` ``fixed``). The hinted rollouts are scored and take
the place of the last samples of the scene, so the mixed group carries a learning signal. A hinted rollout's
log-prob covers only the tokens the policy revealed (``log pi(rest | hint)``): the objective never pushes the
policy towards the hint tokens themselves, only towards what it decoded around them.

The trigger: a scene's group has failed when each of its ``N`` samples has a total reward at most ``threshold``
or a hard failure (a failure term below 1: a collision, leaving the drivable area).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import torch

from planners.masked_policy import MaskedDiffusionPolicy, fragment_tokens
from planners.policy import Rollout
from simulation.features import PlannerInput
from training.rl_support import RewardLike, TensorRewards, select_scenes, submit, to_tensors


@dataclass(frozen=True)
class IGPOConfig:
    """The ``igpo`` option of :class:`training.rl.RLModule`.

    Attributes:
        enabled: re-sample failed groups with a hint.
        fraction: share of a failed scene's ``N`` rollouts replaced by hinted ones (at least 1, at most ``N - 1``
            when ``N > 1``, so that the group keeps unhinted samples too).
        fragment: expert waypoints given as the hint (of 8).
        fragment_end: ``"first"`` (the near waypoints) or ``"last"`` (the far ones, the goal).
        threshold: a sample whose total reward is at most this has failed (besides the hard failures).
    """

    enabled: bool = False
    fraction: float = 0.5
    fragment: int = 2
    fragment_end: Literal["first", "last"] = "first"
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"igpo fraction must be in (0, 1], got {self.fraction}")
        if self.fragment_end not in ("first", "last"):
            raise ValueError(f"igpo fragment_end must be 'first' or 'last', got {self.fragment_end!r}")
        if self.fragment < 1:
            raise ValueError(f"igpo fragment must give at least one waypoint, got {self.fragment}")

    @classmethod
    def of(cls, spec: IGPOConfig | Mapping[str, Any] | None) -> IGPOConfig:
        """The config of a module argument (``None``: disabled; a dict of the fields)."""
        if spec is None or isinstance(spec, IGPOConfig):
            return spec or cls()
        unknown = set(spec) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown igpo options {sorted(unknown)}")
        return cls(**dict(spec))

    def num_hinted(self, n: int) -> int:
        """How many of a failed scene's ``n`` rollouts are re-sampled with the hint."""
        upper = n - 1 if n > 1 else 1
        return min(max(1, math.ceil(self.fraction * n)), upper)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def supports_hints(policy: object) -> bool:
    """Whether ``policy`` can decode from an inpainted hint (the masked diffusion policy)."""
    return isinstance(policy, MaskedDiffusionPolicy)


def failed_scenes(total: torch.Tensor, failure: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(B,)`` bool: scenes whose every sample failed (``total <= threshold`` or ``failure``), ``(B, N)`` inputs."""
    return ((total <= threshold) | failure).all(-1)


def hinted_rollout(
    policy: MaskedDiffusionPolicy,
    features: PlannerInput[torch.Tensor],
    trajectory: torch.Tensor,
    num_samples: int,
    config: IGPOConfig,
    generator: torch.Generator | None = None,
) -> Rollout:
    """``num_samples`` rollouts per scene of ``features`` decoded around the expert fragment of ``trajectory``
    ``(B, 8, 2+)`` (metres, the scenes' ground truth)."""
    if not isinstance(policy, MaskedDiffusionPolicy):
        raise TypeError(f"igpo needs the masked diffusion policy, got {type(policy).__name__}")
    hint = fragment_tokens(policy.planner.tokenizer, trajectory.detach().float(), config.fragment, config.fragment_end)
    with torch.no_grad():
        return policy.rollout(features, num_samples, generator, fixed=hint, greedy=0)


def splice(values: torch.Tensor, scenes: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """``values`` ``(B, N, ...)`` with the last ``M`` samples of the ``scenes`` ``(K,)`` replaced by ``part``
    ``(K, M, ...)`` (a new tensor)."""
    out = values.clone()
    m = part.shape[1]
    out[scenes, values.shape[1] - m :] = part.to(out.dtype)
    return out


def splice_rollout(rollout: Rollout, scenes: torch.Tensor, hinted: Rollout) -> Rollout:
    """``rollout`` with the last samples of ``scenes`` replaced by the ``hinted`` rollout's (same steps and
    chains; see :func:`splice`)."""
    missing = set(rollout.chains) ^ set(hinted.chains)
    if missing or rollout.log_prob.shape[-1] != hinted.log_prob.shape[-1]:
        raise ValueError(f"hinted rollout of another shape (chains differ: {sorted(missing)})")
    return replace(
        rollout,
        plans=splice(rollout.plans, scenes, hinted.plans),
        log_prob=splice(rollout.log_prob, scenes, hinted.log_prob),
        step_mask=splice(rollout.step_mask, scenes, hinted.step_mask),
        groups=splice(rollout.groups, scenes, hinted.groups),
        chains={k: splice(v, scenes, hinted.chains[k]) for k, v in rollout.chains.items()},
    )


def hinted_mask(b: int, n: int, scenes: torch.Tensor, m: int, device: torch.device) -> torch.Tensor:
    """``(B, N)`` bool: the samples :func:`splice` replaced."""
    mask = torch.zeros(b, n, dtype=torch.bool, device=device)
    mask[scenes, n - m :] = True
    return mask


@dataclass
class Inpainted:
    """A rollout after IGPO: the mixed rollout, its rewards, the reference's log-probs ``(B, N, S)`` (``None`` when
    not computed) and ``hinted`` ``(B, N)`` bool, the samples decoded from a hint."""

    rollout: Rollout
    rewards: TensorRewards
    ref_lp: torch.Tensor | None
    hinted: torch.Tensor


def inpaint_failed_groups(
    config: IGPOConfig,
    policies: tuple[Any, Any],
    reward: RewardLike,
    batch: Mapping[str, Any],
    scored: Inpainted,
    failure: torch.Tensor,
    generator: torch.Generator | None = None,
) -> Inpainted:
    """Re-sample a share of the rollouts of every failed scene with the expert hint, score them and splice them in.

    Args:
        config: the IGPO option.
        policies: the policy and the reference policy (whose log-probs of the hinted samples replace the old ones
            in ``scored.ref_lp`` when that is not ``None``).
        reward: the reward object (``submit`` when it has one: the reference scores while it runs).
        batch: the RL batch (``features``, ``targets["trajectory"]``, ``metric_cache``).
        scored: the rollout, its rewards and reference log-probs before IGPO (``hinted`` ignored).
        failure: ``(B, N)`` bool hard failures of the samples.
        generator: the rollout generator.
    """
    rollout, rewards = scored.rollout, scored.rewards
    b, n = rollout.plans.shape[:2]
    scenes = failed_scenes(rewards.total, failure, config.threshold).nonzero().squeeze(-1)
    m = config.num_hinted(n)
    if scenes.numel() == 0:
        return replace(scored, hinted=torch.zeros(b, n, dtype=torch.bool, device=rewards.total.device))
    policy, reference = policies
    features, targets = select_scenes(batch["features"], batch["targets"], scenes)
    hinted = hinted_rollout(policy, features, targets["trajectory"], m, config, generator).detach()
    caches = [batch["metric_cache"][i] for i in scenes.tolist()]
    pending = submit(reward, caches, hinted.plans.cpu().numpy().astype(np.float64))
    ref_lp = scored.ref_lp
    if ref_lp is not None:
        with torch.no_grad():  # while the hinted plans are scored
            ref_lp = splice(ref_lp, scenes, reference.log_prob(features, hinted))
    part = to_tensors(pending.result(), rewards.total.device)
    mixed = TensorRewards(
        splice(rewards.total, scenes, part.total),
        {k: splice(v, scenes, part.terms[k]) for k, v in rewards.terms.items()},
        rewards.total_gt,
    )
    mask = hinted_mask(b, n, scenes, m, rewards.total.device)
    return Inpainted(splice_rollout(rollout, scenes, hinted), mixed, ref_lp, mask)
