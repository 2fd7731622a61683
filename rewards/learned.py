"""A learned scene reward: a trained model's score of each candidate plan, as a reward object.

:class:`LearnedReward` has the interface of :class:`rewards.composite.RuleReward` (``names``, ``version``,
``score``, ``submit``), so :class:`rewards.composite.MixedReward` and the RL module take it. Unlike the rule reward it
reads the scene's planner features (the ``features`` keyword of ``score``; the metric caches are not used). The
model itself lives above this package (:class:`planners.reward_model.RewardModel`, loaded by
:func:`training.reward_model.load_learned_reward`): this wrapper receives it as a callable

    scorer(features: PlannerInput[Tensor] (B scenes), plans: Tensor (B, N, 8, 3)) -> Tensor (B, N)

returning logits (higher is better, ``-inf`` allowed for invalid plans). The reward is ``sigmoid(logit /
temperature)`` in [0, 1] (the Bradley-Terry probability of beating a plan of logit 0); non-finite plans get 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from rewards.composite import TERMS, RewardBatch, check_plans, valid_plans
from simulation.features import PlannerInput

Scorer = Callable[[PlannerInput[torch.Tensor], torch.Tensor], torch.Tensor]
#: The term name of a learned reward.
LEARNED_TERM = "learned_score"


class LearnedReward:
    """A trained scorer of candidate plans as a reward (see the module docstring).

    Args:
        scorer: ``(features, plans (B, N, 8, 3)) -> logits (B, N)``, e.g. ``RewardModel.score_plans``.
        version: the NAVSIM protocol its labels came from (a :class:`~rewards.composite.MixedReward` mixes rewards
            of one version).
        temperature: the logits are divided by it before the sigmoid.
        device: where the scorer runs (features and plans are moved there).
        name: its term name.
        chunk: plans per scene scored in one call (``None``: all); bounds the scorer's memory.
    """

    def __init__(
        self,
        scorer: Scorer,
        version: str = "v2",
        temperature: float = 1.0,
        device: str | torch.device = "cpu",
        name: str = LEARNED_TERM,
        chunk: int | None = None,
    ) -> None:
        if version not in TERMS:
            raise ValueError(f"version must be one of {sorted(TERMS)}, got {version!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.scorer = scorer
        self._version = version
        self.temperature = float(temperature)
        self.device = torch.device(device)
        self.name = name
        self.chunk = chunk

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    @property
    def version(self) -> str:
        return self._version

    def logits(self, features: PlannerInput[torch.Tensor], plans: Any) -> torch.Tensor:
        """The scorer's logits ``(B, N)`` (on CPU) of ``plans`` ``(B, N, 8, 3)`` (numpy or tensor)."""
        inputs = features.apply(lambda t: torch.as_tensor(t).to(self.device))
        array = torch.as_tensor(np.asarray(plans, dtype=np.float32), device=self.device)
        step = array.shape[1] if self.chunk is None else max(int(self.chunk), 1)
        parts = []
        with torch.no_grad():
            for start in range(0, max(array.shape[1], 1), step):
                parts.append(self.scorer(inputs, array[:, start : start + step]).float().cpu())
        return torch.cat(parts, dim=1)

    def score(
        self, metric_caches: Sequence[Any], plans: np.ndarray, features: PlannerInput[Any] | None = None
    ) -> RewardBatch:
        """Rewards of ``plans`` ``(B, N, 8, 3)`` of the ``B`` scenes of ``features`` (required; ``metric_caches``
        only fixes ``B``)."""
        if features is None:
            raise ValueError("LearnedReward scores from the scenes' planner features: pass features=")
        array = check_plans(metric_caches, plans)
        if features.batch_size != array.shape[0]:
            raise ValueError(f"{features.batch_size} scenes of features for {array.shape[0]} scenes of plans")
        valid = valid_plans(array)
        if array.shape[1] == 0:
            total = np.zeros(array.shape[:2])
        else:
            logits = self.logits(features, np.where(valid[..., None, None], array, 0.0)).double().numpy()
            with np.errstate(over="ignore"):
                total = 1.0 / (1.0 + np.exp(-logits / self.temperature))
        total = np.where(valid, np.nan_to_num(total, nan=0.0), 0.0)
        return RewardBatch(total, {self.name: total.copy()})

    def submit(
        self, metric_caches: Sequence[Any], plans: np.ndarray, features: PlannerInput[Any] | None = None
    ) -> Future[RewardBatch]:
        """:meth:`score`, done now (the scorer runs in the calling process), as a future."""
        done: Future[RewardBatch] = Future()
        done.set_result(self.score(metric_caches, plans, features))
        return done

    def __repr__(self) -> str:
        return f"LearnedReward(version={self._version!r}, temperature={self.temperature}, device={str(self.device)!r})"
