"""Training of the learned scene reward (:class:`planners.reward_model.RewardModel`) on preference pairs.

One training step, on a batch of scenes of the preference cache (:mod:`training.prefs_data`)::

    scores = model(features, candidates)                        # (B, K), each scene encoded once
    loss   = mean over pairs of -log sigmoid(s_winner - s_loser)  # Bradley-Terry

Validation on held-out scenes: ``val/pair_acc`` (the winner scored higher), ``val/bt_loss`` and ``val/spearman``
(per scene, the rank correlation of the score with the rule-based total across its candidates, averaged over the
scenes where it is defined). With a generator checkpoint (``init_ckpt``) the module's planner is the pair
:class:`~planners.reranked.RerankedPlanner` (generator + reward model), so the checkpoint is also a reranker that
``diffplan bench planner=reranked`` drives; without one it is the reward model alone. Either way
:func:`load_learned_reward` makes a :class:`rewards.learned.LearnedReward` of it. Dropout draws come from one
generator whose state travels with the checkpoint, so ``--ckpt_path last.ckpt`` resumes the run exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from planners.checkpoint import CheckpointError, load_planner
from planners.reranked import RerankedConfig, RerankedPlanner, generator_fields
from planners.reward_model import RewardModel, reward_model_config
from rewards.learned import LearnedReward
from simulation.features import PLANNER_RASTER, raster_from_meta
from training.discriminator import spearman
from training.imitation import warmup_cosine
from training.rl_support import SeededCheckpointMixin

#: Key of the training state (dropout generator, step count) in a Lightning checkpoint.
REWARD_STATE_KEY = "diffplan_reward_model"


def bradley_terry_loss(winner: torch.Tensor, loser: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(-log sigmoid(winner - loser))`` over the pairs under ``mask`` (all shapes equal; 0 without pairs)."""
    loss = F.softplus(loser - winner)
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def pair_scores(scores: torch.Tensor, winner: torch.Tensor, loser: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores ``(B, P)`` of each pair's winner and loser (indices ``(B, P)`` into ``scores`` ``(B, K)``)."""
    return scores.gather(1, winner), scores.gather(1, loser)


def load_learned_reward(
    checkpoint: str, temperature: float = 1.0, device: str = "cpu", version: str | None = None
) -> LearnedReward:
    """A :class:`~rewards.learned.LearnedReward` from a reward-model run's checkpoint (the reward model alone or its
    reranker pair); ``version`` defaults to the labels' protocol."""
    planner = load_planner(checkpoint)
    model = planner.discriminator if isinstance(planner, RerankedPlanner) else planner
    if not isinstance(model, RewardModel):
        raise CheckpointError(f"{checkpoint}: holds a {type(model).__name__}, not a reward model")
    model = model.to(device).eval()
    return LearnedReward(model.score_plans, version or model.config.version, temperature, device)


class RewardModelModule(SeededCheckpointMixin, pl.LightningModule):
    """Bradley-Terry training of a reward model on preference pairs.

    Args:
        scorer: the reward model's :class:`~planners.discriminator.DiscriminatorConfig` fields (the defaults of
            :func:`planners.reward_model.reward_model_config`: a scalar head, no attention between candidates);
            ``version`` is the labels' protocol.
        init_ckpt: a generator checkpoint: the planner becomes the reranker pair (generator frozen, embedded).
        num_samples, own_candidates, policy: the pair's candidates at inference (as the discriminator's).
        lr, weight_decay, warmup_steps, min_lr: AdamW and its warm-up + cosine schedule.
        seed: seed of the dropout generator.
    """

    STATE_KEY = REWARD_STATE_KEY

    def __init__(
        self,
        scorer: dict[str, Any] | None = None,
        init_ckpt: str | None = None,
        num_samples: int = 0,
        own_candidates: bool = True,
        policy: dict[str, Any] | None = None,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        min_lr: float = 1e-6,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        fields = dict(scorer or {})
        gen: nn.Module | None = None
        if init_ckpt is not None:
            gen = load_planner(init_ckpt).eval().requires_grad_(False)
            fields.setdefault("bev_channels", int(getattr(getattr(gen, "config", None), "bev_channels", 12)))
            fields.setdefault("bev_extent", raster_from_meta(getattr(gen, "raster_config", None)).extent)
        reward_model = RewardModel(reward_model_config(fields))
        self.planner: nn.Module = reward_model
        if gen is not None:
            config = RerankedConfig(
                **generator_fields(gen), discriminator=reward_model.config.to_dict(), num_samples=num_samples,
                own_candidates=own_candidates, policy=dict(policy or {}), seed=seed, generator_ckpt=init_ckpt,
                scorer_class=f"{RewardModel.__module__}.{RewardModel.__qualname__}",
            )  # fmt: skip
            self.planner = RerankedPlanner(gen, reward_model, config)
        raster = getattr(gen, "raster_config", None) if gen is not None else PLANNER_RASTER.to_dict()
        self.planner.raster_config = raster
        self._generator: torch.Generator | None = None
        self._pending_rng_state: torch.Tensor | None = None

    @property
    def reward_model(self) -> RewardModel:
        model = self.planner.discriminator if isinstance(self.planner, RerankedPlanner) else self.planner
        assert isinstance(model, RewardModel)
        return model

    def train(self, mode: bool = True) -> RewardModelModule:
        """As ``nn.Module.train``; a pair's generator stays in eval mode."""
        super().train(mode)
        if isinstance(self.planner, RerankedPlanner):
            self.planner.generator.eval()
        return self

    def generator(self) -> torch.Generator:
        """The dropout generator (seeded, or restored from the checkpoint)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(int(self.hparams["seed"]) + self.global_rank)
            if self._pending_rng_state is not None:
                self._generator.set_state(self._pending_rng_state)
                self._pending_rng_state = None
        return self._generator

    # ------------------------------------------------------------------ steps
    def scores(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The model's scores ``(B, K)`` of the batch's candidates."""
        return self.reward_model(batch["features"], batch["candidates"], batch["candidate_mask"]).scores

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator()).item())
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            scores = self.scores(batch)
        win, lose = pair_scores(scores, batch["winner"], batch["loser"])
        loss = bradley_terry_loss(win, lose, batch["pair_mask"])
        b = batch["features"].batch_size
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=b)
        self.log("train/pair_acc", self._accuracy(win, lose, batch["pair_mask"]), batch_size=b)
        return loss

    @staticmethod
    def _accuracy(win: torch.Tensor, lose: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return ((win > lose) & mask).sum() / mask.sum().clamp(min=1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """``val/pair_acc``, ``val/bt_loss`` (per pair) and ``val/spearman`` (per scene)."""
        scores = self.scores(batch)
        win, lose = pair_scores(scores, batch["winner"], batch["loser"])
        mask = batch["pair_mask"]
        pairs = int(mask.sum())
        self.log("val/pair_acc", self._accuracy(win, lose, mask), batch_size=max(pairs, 1), sync_dist=True)
        self.log("val/bt_loss", bradley_terry_loss(win, lose, mask), batch_size=max(pairs, 1), sync_dist=True)
        rho = spearman(scores, batch["total"], batch["candidate_mask"])
        defined = torch.isfinite(rho)
        if bool(defined.any()):
            self.log("val/spearman", rho[defined].mean(), batch_size=int(defined.sum()), sync_dist=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.reward_model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = warmup_cosine(opt, hp, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
