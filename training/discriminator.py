"""Supervised warm start of the discriminator (:mod:`planners.discriminator`) on the scorer's sub-metrics.

One training step, on a batch of scenes (``features``, ``targets``, ``metric_cache``)::

    candidates = generator's own candidates + policy.rollout(features, N)        # frozen generator, no grad
               + the expert plan + perturbed copies of the generator's pick and of the expert plan
    terms      = reward.score(metric_caches, candidates).terms                     # (B, K) per sub-metric
    loss       = BCE per sub-metric head (soft targets for EP, TTC) + rank_weight * margin-ranking on EP

The generator comes from an imitation (or RL) checkpoint (``init_ckpt``) and is frozen; the module's planner is the
pair :class:`~planners.reranked.RerankedPlanner`, so the checkpoint is a planner record that embeds the generator and
that ``diffplan bench planner=reranked`` drives. Validation scores the candidates the pair sees at inference (no
perturbations): per-head accuracy, the rank correlation of the aggregate with the PDMS, and the PDMS of the
discriminator's pick against the generator's own pick. Every random draw of a step comes from one generator whose
state travels with the checkpoint, so ``--ckpt_path last.ckpt`` resumes the run exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from planners.checkpoint import load_planner
from planners.discriminator import Discriminator, DiscriminatorConfig, head_targets, supervised_loss
from planners.reranked import RerankedConfig, RerankedPlanner, generator_fields
from simulation.features import raster_from_meta
from training.imitation import warmup_cosine
from training.rl_support import RewardLike, SampledRewardMixin, to_tensors

#: Key of the training state (sampling generator, step count) in a Lightning checkpoint.
DISC_STATE_KEY = "diffplan_discriminator"
SOFT_TERMS = ("ego_progress", "time_to_collision_within_bound")


@dataclass(frozen=True)
class Perturbation:
    """Augmentation of a plan: ``copies`` perturbed copies, each with a longitudinal stretch ``(1 + e)`` of its
    poses, ``e ~ N(0, longitudinal_std)``; a lateral offset ``d ~ N(0, lateral_std)`` metres at 4 s, growing
    linearly from 0 along the plan, normal to each pose's heading; and a rotation ``r ~ N(0, heading_std)`` rad of
    the whole plan about the rear axle."""

    copies: int = 2
    lateral_std: float = 1.0
    longitudinal_std: float = 0.15
    heading_std: float = 0.05


def perturb_plans(plans: torch.Tensor, config: Perturbation, generator: torch.Generator | None = None) -> torch.Tensor:
    """``config.copies`` perturbed copies of each plan: ``(B, M, 8, 3)`` -> ``(B, M * copies, 8, 3)``."""
    b, m, t, _ = plans.shape
    x = plans.repeat_interleave(config.copies, dim=1)
    shape = (b, m * config.copies, 1)

    def draw(std: float) -> torch.Tensor:
        return std * torch.randn(shape, generator=generator, device=generator.device if generator else None).to(x)

    stretch = (1.0 + draw(config.longitudinal_std)).clamp(min=0.1)
    offset = draw(config.lateral_std) * torch.arange(1, t + 1, device=x.device, dtype=x.dtype) / t
    rotation = draw(config.heading_std)
    px = x[..., 0] * stretch - offset * torch.sin(x[..., 2])
    py = x[..., 1] * stretch + offset * torch.cos(x[..., 2])
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    return torch.stack([cos * px - sin * py, sin * px + cos * py, x[..., 2] + rotation], dim=-1)


def spearman(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation ``(B,)`` of ``a`` and ``b`` ``(B, K)`` over the valid candidates (``mask``),
    ties at their average rank; NaN for a scene where either is constant."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        pair = mask[:, None, :]
        less = ((x[:, None, :] < x[:, :, None]) & pair).sum(-1)
        equal = ((x[:, None, :] == x[:, :, None]) & pair).sum(-1)
        return less + 0.5 * (equal - 1)

    n = mask.sum(-1, keepdim=True).clamp(min=1)
    ra, rb = ranks(a.double()), ranks(b.double())
    ra = (ra - (ra * mask).sum(-1, keepdim=True) / n) * mask
    rb = (rb - (rb * mask).sum(-1, keepdim=True) / n) * mask
    return (ra * rb).sum(-1) / ((ra**2).sum(-1) * (rb**2).sum(-1)).sqrt()


class DiscriminatorModule(SampledRewardMixin, pl.LightningModule):
    """Supervised warm start of a discriminator over a frozen generator's candidates.

    Args:
        init_ckpt: the generator's checkpoint (a learned planner with the policy API when ``num_samples > 0``).
        generator: the generator itself instead of ``init_ckpt`` (tests).
        discriminator: :class:`~planners.discriminator.DiscriminatorConfig` fields (``bev_channels`` and
            ``bev_extent`` default to the generator's raster; ``version`` to the reward's).
        policy: how the generator samples (:func:`planners.policy.as_policy` options).
        num_samples: policy samples per scene (training and the pair at inference).
        own_candidates: include the generator's own candidates (``forward``).
        speed_scales: also every candidate at these fractions of its own speed along its own path
            (:func:`planners.reranked.slowed`), labelled like the rest; the pair keeps them at inference.
        perturb: :class:`Perturbation` fields; the generator's pick and the expert plan are perturbed.
        reward: the labels' scorer (``rewards.composite.RuleReward`` arguments; see
            :func:`training.rl_support.build_reward`).
        soft_terms: heads trained on the sub-metric's value (the others on ``value >= 1``).
        rank_weight, margin: weight and margin of the EP margin-ranking loss.
        lr, weight_decay, warmup_steps, min_lr: AdamW and its warm-up + cosine schedule (optimiser steps).
        seed: seed of the sampling generator (offset by the process rank).
    """

    STATE_KEY = DISC_STATE_KEY
    STEPS_ATTR = "_steps"

    def __init__(
        self,
        init_ckpt: str | None = None,
        generator: nn.Module | None = None,
        discriminator: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
        num_samples: int = 16,
        own_candidates: bool = True,
        speed_scales: list[float] | None = None,
        perturb: dict[str, Any] | None = None,
        reward: dict[str, Any] | Any = None,
        soft_terms: list[str] | None = None,
        rank_weight: float = 2.0,
        margin: float = 0.05,
        lr: float = 2e-4,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        min_lr: float = 1e-6,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if (init_ckpt is None) == (generator is None):
            raise ValueError("give exactly one of init_ckpt (the generator's checkpoint) and generator")
        self.save_hyperparameters(ignore=["generator", "reward"])
        gen = generator if generator is not None else load_planner(str(init_ckpt))
        gen.eval().requires_grad_(False)
        self._reward_spec = reward
        self._reward: RewardLike | None = None
        disc_fields = dict(discriminator or {})
        disc_fields.setdefault("bev_channels", int(getattr(getattr(gen, "config", None), "bev_channels", 12)))
        disc_fields.setdefault("bev_extent", raster_from_meta(getattr(gen, "raster_config", None)).extent)
        version = reward.get("version", "v1") if isinstance(reward, Mapping) else getattr(reward, "version", "v1")
        disc_fields.setdefault("version", str(version))
        disc = Discriminator(DiscriminatorConfig.from_dict(disc_fields))
        config = RerankedConfig(
            **generator_fields(gen),
            discriminator=disc.config.to_dict(),
            num_samples=num_samples,
            own_candidates=own_candidates,
            speed_scales=[float(c) for c in speed_scales or []],
            policy=dict(policy or {}),
            seed=seed,
            generator_ckpt=init_ckpt,
        )
        self.planner = RerankedPlanner(gen, disc, config)
        self.planner.raster_config = getattr(gen, "raster_config", None)
        self.perturbation = Perturbation(**dict(perturb or {}))
        self.soft_terms = tuple(SOFT_TERMS if soft_terms is None else soft_terms)
        self._generator: torch.Generator | None = None
        self._pending_rng_state: torch.Tensor | None = None
        self._steps = 0

    # ------------------------------------------------------------------ set-up
    def train(self, mode: bool = True) -> DiscriminatorModule:
        """As ``nn.Module.train``; the generator stays in eval mode."""
        super().train(mode)
        self.planner.generator.eval()
        return self

    @property
    def discriminator(self) -> Discriminator:
        return self.planner.discriminator

    # ------------------------------------------------------------------ candidates and labels
    def candidates(
        self, batch: dict[str, Any], gen: torch.Generator, augment: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates ``(B, K, 8, 3)`` (the pair's own, then with ``augment`` the expert plan and the perturbed
        copies of the generator's pick and of the expert plan) and the generator's pick's index ``(B,)``."""
        features = batch["features"]
        noise = torch.randn(self.planner.initial_noise_shape(features.batch_size), generator=gen, device=gen.device)
        cands, own = self.planner.propose(features, noise.to(self.device), gen)
        if not augment:
            return cands, own
        if int((own < 0).sum()):
            raise ValueError("augmentation perturbs the generator's pick: own_candidates must be on")
        expert = batch["targets"]["trajectory"][:, None].to(cands)
        pick = cands[torch.arange(cands.shape[0], device=cands.device), own][:, None]
        perturbed = perturb_plans(torch.cat([pick, expert], 1), self.perturbation, gen)
        return torch.cat([cands, expert, perturbed.to(cands)], 1), own

    def label(self, batch: dict[str, Any], candidates: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scorer's ``total`` and sub-metrics ``(B, K)`` of the candidates."""
        plans = candidates.detach().cpu().numpy().astype(np.float64)
        rewards = to_tensors(self.reward.score(batch["metric_cache"], plans), self.device)
        missing = [h for h in self.discriminator.heads if h not in rewards.terms]
        if missing:
            raise ValueError(f"the reward has no term for the heads {missing}; its terms: {sorted(rewards.terms)}")
        return rewards.total, rewards.terms

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        gen = self.generator()
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            candidates, _ = self.candidates(batch, gen, augment=True)
            _, terms = self.label(batch, candidates)
            mask = torch.isfinite(candidates).all(-1).all(-1)
            out = self.discriminator(batch["features"], candidates, mask)
            losses = supervised_loss(
                out, terms, self.soft_terms, rank_weight=float(self.hparams["rank_weight"]),
                margin=float(self.hparams["margin"]),
            )  # fmt: skip
        self._steps += 1
        b = batch["features"].batch_size
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=b)
        for name, value in self.head_accuracy(out.stages[0].logits, terms, mask).items():
            self.log(f"train/acc/{name}", value, batch_size=b)
        return losses["loss"]

    def head_accuracy(
        self, logits: Mapping[str, torch.Tensor], terms: Mapping[str, torch.Tensor], mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per head, the share of valid candidates whose probability is on the target's side of 0.5."""
        targets = head_targets({n: terms[n] for n in logits}, self.soft_terms)
        count = mask.sum().clamp(min=1)
        return {n: (((v > 0) == (targets[n] > 0.5)) & mask).sum() / count for n, v in logits.items()}

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The pair as it drives (no augmentation, seeded sampling, the pickable candidates only): per-head accuracy,
        ``val/spearman`` (aggregate vs PDMS), ``val/pdms_picked`` (the discriminator's pick), ``val/pdms_generator``
        (the generator's own pick), ``val/pdms_oracle`` (the best candidate) and ``val/pdms_mean``."""
        gen = torch.Generator(device=self.device).manual_seed(int(self.hparams["seed"]))
        with torch.no_grad():
            candidates, own = self.candidates(batch, gen, augment=False)
            total, terms = self.label(batch, candidates)
            mask = self.planner.pickable(candidates)
            out = self.discriminator(batch["features"], candidates, mask)
        b = total.shape[0]
        rows = torch.arange(b, device=total.device)
        values: dict[str, torch.Tensor] = {
            "pdms_picked": total[rows, out.best].mean(),
            "pdms_oracle": total.masked_fill(~mask, 0).max(-1).values.mean(),
            "pdms_mean": (total * mask).sum() / mask.sum().clamp(min=1),
        }
        if bool((own >= 0).all()):
            values["pdms_generator"] = total[rows, own].mean()
        rho = spearman(out.stages[0].scores, total, mask)
        values["spearman"] = rho.nan_to_num(0.0).sum() / torch.isfinite(rho).sum().clamp(min=1)
        for name, value in self.head_accuracy(out.stages[0].logits, terms, mask).items():
            values[f"acc/{name}"] = value
        for name, value in values.items():
            self.log(f"val/{name}", value.float(), batch_size=b, sync_dist=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.discriminator.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = warmup_cosine(opt, hp, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
