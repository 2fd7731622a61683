"""A learned scene reward (Gen-Drive's scene evaluator, methods.md §5): the discriminator's network with one scalar
``score`` head, trained on preference pairs with the Bradley-Terry loss (:mod:`training.reward_model`).

The scene (BEV features, agents, ego) is encoded once; each candidate trajectory ``(8, 3)`` is a query that reads
the BEV map at its waypoints and attends to the scene tokens (:class:`planners.discriminator.ScorerLayer`). By
default the candidates do not attend to each other, so a candidate's score does not depend on the other plans it
is scored with (as a reward must not). The sub-metric heads of the discriminator remain as an auxiliary output.

The model is a :class:`~planners.discriminator.Discriminator` (``scalar_head=True``): a
:class:`~planners.reranked.RerankedPlanner` takes it as its scorer unchanged, and
:class:`rewards.learned.LearnedReward` takes :meth:`RewardModel.score_plans` as its scorer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from planners.discriminator import Discriminator, DiscriminatorConfig
from simulation.features import PlannerInput

#: Defaults of a reward model's config (the rest as :class:`DiscriminatorConfig`).
REWARD_MODEL_DEFAULTS: dict[str, Any] = {"scalar_head": True, "self_attention": False}


def reward_model_config(fields: Mapping[str, Any] | None = None) -> DiscriminatorConfig:
    """A :class:`DiscriminatorConfig` of a reward model: :data:`REWARD_MODEL_DEFAULTS` under ``fields``
    (``scalar_head`` is forced on)."""
    merged = {**REWARD_MODEL_DEFAULTS, **dict(fields or {}), "scalar_head": True}
    return DiscriminatorConfig.from_dict(merged)


class RewardModel(Discriminator):
    """A scalar score per candidate trajectory of a scene (see the module docstring).

    Args:
        config: a :class:`DiscriminatorConfig` (``None``: :func:`reward_model_config` defaults); it must have
            ``scalar_head``.
    """

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        config = config or reward_model_config()
        if not config.scalar_head:
            raise ValueError("a reward model needs scalar_head=True (see reward_model_config)")
        super().__init__(config)

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> RewardModel:
        return cls(DiscriminatorConfig.from_dict(config))

    def score_plans(self, inputs: PlannerInput[torch.Tensor], plans: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, N)`` (logits, higher is better) of plans ``(B, N, 8, 3)``, without gradients; non-finite plans
        get ``-inf``."""
        mask = torch.isfinite(plans).all(-1).all(-1)
        with torch.no_grad():
            scores = self(inputs, plans, mask).scores
        return scores.masked_fill(~mask, float("-inf"))
