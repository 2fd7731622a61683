"""The policy API that RL trains: a generator as a stochastic policy over plans.

A generator samples ``N`` plans per scene with :meth:`PlanningPolicy.rollout`; each plan is reached through ``S``
stochastic steps (denoising steps for the truncated diffusion planner, unmasking steps for the masked one), and the
rollout records what is needed to re-score those steps later. :meth:`PlanningPolicy.log_prob` re-computes the
per-step log-probabilities of a stored rollout **with gradients** under the current weights; at the weights that
produced the rollout it returns ``rollout.log_prob`` (the on-policy ratio is 1).

The executed plan is the final sample of the chain (not a deterministic decoding of it), so the reward is a function
of the sampled actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import torch

from simulation.features import PlannerInput


@dataclass
class Rollout:
    """``N`` sampled plans for each of ``B`` scenes and how they were reached.

    Attributes:
        plans: ``(B, N, 8, 3)`` executed plans (x, y, heading) at 0.5 s in the current rear-axle frame.
        log_prob: ``(B, N, S)`` log-probability of each stochastic step, detached (the behaviour policy).
        step_mask: ``(B, N, S)`` bool, ``True`` where a step is stochastic and counts in the objective
            (deterministic steps, e.g. ``sigma = 0``, are ``False`` and carry ``log_prob = 0``).
        groups: ``(B, N)`` long, a sub-group id within a scene's samples (the anchor / mode a sample came from
            for the truncated planner; zeros when there is no finer grouping).
        chains: what :meth:`PlanningPolicy.log_prob` needs to re-score the steps (e.g. ``x_t``, ``x_prev``,
            ``timesteps`` for diffusion; revealed tokens per step for masked diffusion), each tensor batch-first
            ``(B, N, ...)``.
    """

    plans: torch.Tensor
    log_prob: torch.Tensor
    step_mask: torch.Tensor
    groups: torch.Tensor
    chains: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.plans.shape[1])

    def sequence_log_prob(self) -> torch.Tensor:
        """``(B, N)`` the sum of the counted per-step log-probs."""
        return (self.log_prob * self.step_mask).sum(-1)

    def detach(self) -> Rollout:
        return replace(
            self,
            plans=self.plans.detach(),
            log_prob=self.log_prob.detach(),
            chains={k: v.detach() for k, v in self.chains.items()},
        )

    def to(self, device: torch.device | str) -> Rollout:
        return Rollout(
            self.plans.to(device),
            self.log_prob.to(device),
            self.step_mask.to(device),
            self.groups.to(device),
            {k: v.to(device) for k, v in self.chains.items()},
        )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field whose shape disagrees with ``plans``."""
        b, n = self.plans.shape[:2]
        if self.plans.dim() != 4 or self.plans.shape[-1] != 3:
            raise ValueError(f"rollout plans must be (B, N, T, 3), got {tuple(self.plans.shape)}")
        if self.log_prob.shape[:2] != (b, n) or self.log_prob.shape != self.step_mask.shape:
            raise ValueError(
                f"rollout log_prob {tuple(self.log_prob.shape)} / step_mask {tuple(self.step_mask.shape)} "
                f"do not match plans (B={b}, N={n})"
            )
        if self.groups.shape != (b, n):
            raise ValueError(f"rollout groups must be ({b}, {n}), got {tuple(self.groups.shape)}")
        for key, value in self.chains.items():
            if value.shape[:2] != (b, n):
                raise ValueError(f"rollout chain {key!r} must start with ({b}, {n}), got {tuple(value.shape)}")


@runtime_checkable
class PlanningPolicy(Protocol):
    """A generator that RL can train (the truncated and the masked diffusion planners)."""

    def rollout(
        self, inputs: PlannerInput[torch.Tensor], num_samples: int, generator: torch.Generator | None = None
    ) -> Rollout:
        """Sample ``num_samples`` plans per scene; no gradients are kept (``log_prob`` detached)."""
        ...

    def log_prob(self, inputs: PlannerInput[torch.Tensor], rollout: Rollout) -> torch.Tensor:
        """``(B, N, S)`` per-step log-probs of ``rollout``'s steps under the current weights, with gradients
        (zeros where ``rollout.step_mask`` is ``False``)."""
        ...


def as_policy(planner: Any, options: Mapping[str, Any] | None = None) -> Any:
    """The planner as a :class:`PlanningPolicy` sampling as ``options`` say.

    * truncated diffusion: ``options`` are :class:`planners.truncated_policy.RolloutConfig` fields (``schedule``,
      ``eta``, ``noise``, ``noise_floor``, ``log_prob_std_floor``, ...); the planner itself is the policy;
    * masked diffusion: :class:`planners.masked_policy.MaskedDiffusionPolicy` arguments (``temperature``,
      ``top_k``, ``order``, ``num_steps``, ``cfg_scale``, ``greedy_members``), a wrapper sharing the planner's
      parameters;
    * anything already offering ``rollout`` / ``log_prob`` (and no options): itself.

    Raises:
        ValueError: options for a policy that takes none.
        TypeError: the planner has no policy API.
    """
    from planners.masked_diffusion import MaskedDiffusionPlanner  # the planners import this module
    from planners.masked_policy import MaskedDiffusionPolicy
    from planners.truncated_diffusion import TruncatedDiffusionPlanner
    from planners.truncated_policy import RolloutConfig

    opts = dict(options or {})
    if isinstance(planner, TruncatedDiffusionPlanner):
        planner.rollout_config = RolloutConfig(**opts)
        return planner
    if isinstance(planner, MaskedDiffusionPlanner):
        return MaskedDiffusionPolicy(planner, **opts)
    if hasattr(planner, "rollout") and hasattr(planner, "log_prob"):
        if opts:
            raise ValueError(f"policy options {sorted(opts)} for {type(planner).__name__}, which takes none")
        return planner
    raise TypeError(f"{type(planner).__name__} has no policy API (rollout, log_prob)")
