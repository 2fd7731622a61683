"""RL fine-tuning of a generator (:class:`~planners.policy.PlanningPolicy`) on the scorer's reward.

One training step, on a batch of scenes (``features``, ``targets``, ``metric_cache``)::

    rollout = policy.rollout(features, N, generator)       # no grad; N plans per scene, per-step log-probs
    rewards = reward.score(metric_caches, rollout.plans)   # (B, N) total + sub-rewards (in a pool when it can)
    A       = advantages(rewards)                          # grpo | ddv2 | gdpo           (training.rl_objectives)
    repeat num_inner_updates times:                        # 1 = on-policy
        loss = objective(policy.log_prob(features, rollout), A)   # reinforce | grpo | gspo
             + il_weight * policy.compute_loss(features, targets)  # the imitation regulariser

The policy is warm-started from an imitation checkpoint (``init_ckpt``); parameters under the ``freeze`` prefixes
stay in eval mode without gradients; a frozen copy of the initial policy is the reference for the KL term and its
statistic. Every random draw of a step comes from one generator whose state travels with the checkpoint, so
``--ckpt_path last.ckpt`` resumes the run exactly. The checkpoint holds the planner's record
(:mod:`planners.checkpoint`): the benchmarks load it like an imitation checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from planners.checkpoint import CheckpointRecord, load_planner, write
from planners.policy import PlanningPolicy, Rollout
from simulation.features import PlannerInput
from training.imitation import warmup_cosine
from training.rl_igpo import IGPOConfig, Inpainted, inpaint_failed_groups, supports_hints
from training.rl_objectives import (
    FAILURE_TERMS,
    Stats,
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
)
from training.rl_support import (
    RewardLike,
    SampledRewardMixin,
    TensorRewards,
    exploration_spread,
    make_policy,
    rule_reward_of,
    select_scenes,
    submit,
    to_tensors,
)

logger = logging.getLogger(__name__)

#: Key of the RL state (rollout generator) in a Lightning checkpoint.
RL_STATE_KEY = "diffplan_rl"
Advantage = Literal["grpo", "ddv2", "gdpo"]
Objective = Literal["reinforce", "grpo", "gspo"]
ADVANTAGES: tuple[str, ...] = get_args(Advantage)
OBJECTIVES: tuple[str, ...] = get_args(Objective)


class RLModule(SampledRewardMixin, pl.LightningModule):
    """RL for a generator with group rollouts, selectable advantages and objectives (manual optimisation).

    Args:
        init_ckpt: imitation checkpoint (a ``PlannerModule`` Lightning ``.ckpt`` or a planner record) to start from.
        planner: the policy itself instead of ``init_ckpt`` (tests).
        reward: ``rewards.composite.RuleReward`` arguments (``{version: v1, num_workers: 0}``, the default), a dict
            with ``class_path`` / ``init_args``, a reward object, or a mix with a learned reward (``learned:
            {checkpoint: ...}``, ``weights: {rule: .., learned: ..}``; :func:`training.rl_support.build_reward`).
            The reward is given the batch's features (a learned reward reads them). Validation always scores with
            the rule-based part (:func:`training.rl_support.rule_reward_of`), so ``val/pdms`` is the rule-based
            score whatever the training reward.
        policy: how the generator samples in RL (:func:`training.rl_support.make_policy`): the truncated
            planner's ``RolloutConfig`` fields, the masked planner's ``MaskedDiffusionPolicy`` arguments.
        freeze: parameter-name prefixes (e.g. ``bev_encoder``) kept in eval mode with ``requires_grad`` False.
        trainable: when set, only the parameters whose name contains one of these strings train (e.g.
            ``[cls_head]``: the truncated planner's anchor scores alone); the others keep ``requires_grad`` False
            (their modules stay in train mode unless ``freeze`` lists them).
        num_samples: rollouts per scene (``N``).
        advantage: ``grpo`` (scene-normalised), ``ddv2`` (intra-group truncated, failures -1) or ``gdpo``.
        objective: ``reinforce`` (step-discounted, DiffusionDriveV2), ``grpo`` (clipped ratio + k3 KL per step) or
            ``gspo`` (clipped sequence ratio).
        adv_eps: added to the group standard deviations.
        failure_terms: sub-rewards whose value below 1 is a failure (``ddv2``: advantage -1).
        ddv2_beat_gt: ``ddv2`` keeps a positive advantage only where the reward is at least the ground-truth plan's
            (the released DiffusionDriveV2 code; the paper does not state it); scores the ground truth too.
        ddv2_penalize_failed_groups: ``ddv2`` gives -1 to every failed sample (DiffusionDriveV2); ``False``: only to
            those whose anchor group has a sample that did not fail (ours; see :func:`ddv2_advantages`).
        gdpo_weights: sub-reward weights of ``gdpo`` (``None``: 1 each).
        gamma: step discount ``gamma^(S-1-i)`` of ``reinforce``.
        clip_eps: ratio clip of ``grpo``; ``eps_low`` / ``eps_high``: sequence-ratio clip of ``gspo``.
        kl_coef: weight of the k3 KL to the reference (``grpo``, ``gspo``).
        il_weight: weight of the imitation loss ``policy.compute_loss`` (0: none).
        il_weight_positive: when set, the imitation weight of a scene with a positive advantage (DiffusionDriveV2:
            0.1, with ``il_weight`` 1.0 for the others).
        mode_weight: weight of the mode-choice loss (truncated diffusion only; 0: none). The policy gradient trains
            the plans of every anchor, not which anchor's plan is executed (the argmax of the planner's mode
            scores); this term treats those scores as a categorical policy over the anchors, with each anchor's
            advantage (see ``mode_reward``) normalised over the scene's anchors
            (:func:`training.rl_objectives.mode_choice_loss`). Not in DiffusionDriveV2, which trains a separate
            selector instead.
        mode_reward: what an anchor's advantage is made of: ``"samples"``, the mean reward of its rollout samples;
            ``"candidates"``, the reward of the candidate the planner itself would execute for that anchor (its
            deterministic plan's denoised anchor, scored once per step): the exact reward of each action of the
            categorical policy, so the expected advantage is exact.
        mode_noise: the start noise of the candidates the anchor choice is trained on: ``"anchors"``, none (the
            anchors themselves: a scene has the same candidates at every epoch); ``"sampled"``, a fresh standard
            normal draw per step from the rollout generator, the distribution the planner starts from at inference
            (the benchmarks draw it from a seeded generator), so the choice learns on the candidates it will choose
            among, and the RL seed matters.
        mode_advantage: how the candidates' rewards become the anchors' advantages (``mode_reward: candidates``):
            ``"normalized"``, normalised over the scene's candidates; ``"ddv2"``, DiffusionDriveV2's rule applied
            to them (:func:`training.rl_objectives.ddv2_advantages` with the scene as the group: ``max(A, 0)``,
            and -1 for a candidate that fails one of ``failure_terms``), so the choice is pushed off the
            colliding and off-road candidates harder than off the merely slow ones.
        mode_detach: the anchor choice's gradient stops at the anchor-score heads (every ``cls_head``): its loss
            trains those heads alone, and the shared decoder, which also makes the candidates, trains only from the
            sample objective and the imitation term. ``False`` (the default): it reaches the whole trainable policy.
        rollout: ``False``: no rollout and no sample objective; each step trains the anchor choice alone
            (``mode_weight > 0``, ``mode_reward: candidates``, no imitation term, no IGPO). With only ``cls_head``
            trainable the sample objective has no gradient to give, and skipping it saves its sampling, scoring
            and log-probs; ``train/reward`` is then the candidates' mean reward.
        num_inner_updates: optimiser steps per rollout (PPO-style epochs; 1 = on-policy).
        lr, weight_decay, warmup_steps, min_lr: AdamW and its warm-up + cosine schedule (optimiser steps).
        grad_clip: gradient-norm clip (0: none); the trainer's own clipping does not apply to manual optimisation.
        log_kl: compute the reference's log-probs every step to log the KL even when ``kl_coef`` is 0.
        train_mode: run the trainable modules in train mode (dropout, batch-norm statistics); by default the whole
            policy runs in eval mode, so that re-scored log-probs equal the rollout's (on-policy ratio 1).
        val_every_n_steps: every that many training steps, score the deterministic plan on the val loader
            (``val/pdms`` and ``val/<term>``; 0: only in Lightning's own validation loop); an ``EarlyStopping``
            callback checks after each of these validations as well.
        val_max_batches: batches of that periodic validation (``None``: all).
        igpo: inpainting-guided groups (:class:`training.rl_igpo.IGPOConfig` fields: ``enabled``, ``fraction``,
            ``fragment``, ``fragment_end``, ``threshold``; masked diffusion policy only): a scene whose samples all
            fail has a share of its rollouts re-sampled around an expert fragment before the advantages.
        seed: seed of the rollout generator (offset by the process rank).
    """

    STATE_KEY = RL_STATE_KEY
    STEPS_ATTR = "_rl_steps"

    def __init__(
        self,
        init_ckpt: str | None = None,
        planner: nn.Module | None = None,
        reward: dict[str, Any] | Any = None,
        policy: dict[str, Any] | None = None,
        freeze: list[str] | None = None,
        trainable: list[str] | None = None,
        num_samples: int = 16,
        advantage: Advantage = "grpo",
        objective: Objective = "reinforce",
        adv_eps: float = 1e-4,
        failure_terms: list[str] | None = None,
        ddv2_beat_gt: bool = False,
        ddv2_penalize_failed_groups: bool = True,
        gdpo_weights: dict[str, float] | None = None,
        gamma: float = 1.0,
        clip_eps: float = 0.2,
        eps_low: float = 3e-4,
        eps_high: float = 4e-4,
        kl_coef: float = 0.0,
        il_weight: float = 0.0,
        il_weight_positive: float | None = None,
        mode_weight: float = 0.0,
        mode_reward: Literal["samples", "candidates"] = "samples",
        mode_noise: Literal["anchors", "sampled"] = "anchors",
        mode_advantage: Literal["normalized", "ddv2"] = "normalized",
        mode_detach: bool = False,
        rollout: bool = True,
        num_inner_updates: int = 1,
        lr: float = 2e-4,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        min_lr: float = 1e-6,
        grad_clip: float = 1.0,
        log_kl: bool = True,
        train_mode: bool = False,
        val_every_n_steps: int = 0,
        val_max_batches: int | None = None,
        igpo: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if (init_ckpt is None) == (planner is None):
            raise ValueError("give exactly one of init_ckpt (an imitation checkpoint, --model.init_ckpt) and planner")
        if num_inner_updates < 1 or num_samples < 1:
            raise ValueError("num_inner_updates and num_samples must be at least 1")
        if advantage not in ADVANTAGES or objective not in OBJECTIVES:
            choices = f"choose from {ADVANTAGES} and {OBJECTIVES}"
            raise ValueError(f"advantage {advantage!r}, objective {objective!r}: {choices}")
        self.save_hyperparameters(ignore=["planner", "reward"])
        self.automatic_optimization = False
        self.planner = planner if planner is not None else load_planner(str(init_ckpt)).train()
        if mode_weight > 0 and not getattr(getattr(self.planner, "config", None), "truncated", False):
            raise ValueError(f"mode_weight needs the truncated diffusion planner, not {type(self.planner).__name__}")
        if mode_reward not in ("samples", "candidates"):
            raise ValueError(f"mode_reward must be 'samples' or 'candidates', got {mode_reward!r}")
        if mode_noise not in ("anchors", "sampled"):
            raise ValueError(f"mode_noise must be 'anchors' or 'sampled', got {mode_noise!r}")
        if mode_advantage not in ("normalized", "ddv2"):
            raise ValueError(f"mode_advantage must be 'normalized' or 'ddv2', got {mode_advantage!r}")
        if mode_advantage == "ddv2" and mode_reward != "candidates":
            raise ValueError("mode_advantage 'ddv2' needs mode_reward 'candidates' (a failure is a candidate's)")
        self._score_heads = [m for n, m in self.planner.named_modules() if n.split(".")[-1] == "cls_head"]
        if mode_detach and not self._score_heads:
            raise ValueError(f"mode_detach needs anchor-score heads (cls_head) in {type(self.planner).__name__}")
        if not rollout:
            _check_choice_only(mode_weight, mode_reward, il_weight, il_weight_positive, igpo)
        self.frozen_prefixes = list(freeze or [])
        self._freeze(self.frozen_prefixes)
        if trainable is not None:
            self._train_only(list(trainable))
        self.reference = copy.deepcopy(self.planner).eval().requires_grad_(False)
        # the sampling wrappers share the modules' parameters; kept out of the module tree (no duplicate state)
        # (a planner without the policy API can still be loaded and saved; using it as a policy raises)
        for name, module in (("_policy", self.planner), ("_reference_policy", self.reference)):
            try:
                object.__setattr__(self, name, make_policy(module, policy))
            except TypeError as err:
                object.__setattr__(self, name, err)
        self.train()  # the frozen modules in eval mode (Lightning keeps the modes it finds)
        self.igpo = IGPOConfig.of(igpo)
        if self.igpo.enabled and not supports_hints(self.__dict__["_policy"]):
            raise ValueError(f"igpo needs the masked diffusion policy, not {type(self.planner).__name__}'s")
        self._reward_spec = reward
        self._reward: RewardLike | None = None
        self.failure_terms = tuple(FAILURE_TERMS if failure_terms is None else failure_terms)
        self._generator: torch.Generator | None = None
        self._pending_rng_state: torch.Tensor | None = None
        self._rl_steps = 0

    # ------------------------------------------------------------------ set-up
    def _stop_gradients(self, patterns: list[str], matches: Callable[[str, str], bool], what: str, keep: bool) -> None:
        """``requires_grad`` False for the parameters that match one of ``patterns`` (``keep=False``) or none of
        them (``keep=True``); a pattern that matches no parameter is an error naming ``what`` it was."""
        named = list(self.planner.named_parameters())
        for pattern in patterns:
            if not any(matches(name, pattern) for name, _ in named):
                raise ValueError(f"{what} {pattern!r} matches no parameter of {type(self.planner).__name__}")
        for name, param in named:
            if any(matches(name, pattern) for pattern in patterns) != keep:
                param.requires_grad_(False)

    def _train_only(self, parts: list[str]) -> None:
        self._stop_gradients(parts, lambda name, part: part in name, "trainable", keep=True)

    def _freeze(self, prefixes: list[str]) -> None:
        self._stop_gradients(prefixes, str.startswith, "freeze prefix", keep=False)

    def _frozen_modules(self) -> Iterable[nn.Module]:
        for name, module in self.planner.named_modules():
            if name and any(name.startswith(p.rstrip(".")) for p in self.frozen_prefixes):
                yield module

    def train(self, mode: bool = True) -> RLModule:
        """As ``nn.Module.train``, but the reference and the frozen modules stay in eval mode (the whole policy too
        unless ``train_mode``)."""
        super().train(mode)
        self.reference.eval()
        if not self.hparams.get("train_mode", False):
            self.planner.eval()
        for module in self._frozen_modules():
            module.eval()
        return self

    @property
    def policy(self) -> PlanningPolicy:
        return self._policy_named("_policy")

    @property
    def reference_policy(self) -> PlanningPolicy:
        return self._policy_named("_reference_policy")

    def _policy_named(self, name: str) -> PlanningPolicy:
        policy = self.__dict__[name]
        if isinstance(policy, TypeError):
            raise policy
        result: PlanningPolicy = policy
        return result

    # ------------------------------------------------------------------ a training step
    def forward(self, inputs: PlannerInput[torch.Tensor]) -> Any:
        return self.planner(inputs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        gen = self.generator()
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            loss = self._rl_step(batch, gen)
        self._rl_steps += 1
        return loss

    def _rl_step(self, batch: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
        hp = self.hparams
        if not bool(hp["rollout"]):
            return self._choice_step(batch, gen)
        features, targets = batch["features"], batch["targets"]
        with torch.no_grad():
            rollout = self.policy.rollout(features, int(hp["num_samples"]), gen).detach()
        rollout.validate()
        scored = self._score_rollout(batch, rollout)
        if self.igpo.enabled:
            rollout, scored = self._inpaint(batch, rollout, scored, gen)
        adv = self.advantages(scored.rewards, rollout.groups)
        mode, mode_stats, _ = self._mode_advantages(batch, rollout, scored, gen)
        stats: Stats = {}
        for _ in range(int(hp["num_inner_updates"])):
            loss, stats = self._update(features, targets, rollout, adv, scored, mode)
        stats = {**stats, **mode_stats}
        self._log_step(scored, adv, rollout, stats, features.batch_size)
        return loss

    def _choice_step(self, batch: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
        """A step of the anchor choice alone (``rollout: False``): its candidates scored, its loss, no rollout."""
        features = batch["features"]
        mode, mode_stats, rewards = self._mode_advantages(batch, None, None, gen)
        assert mode is not None and rewards is not None  # _check_choice_only
        stats: Stats = {}
        total = torch.zeros(())
        for _ in range(int(self.hparams["num_inner_updates"])):
            mode_loss, stats = self._mode_choice_loss(features, mode)
            total = float(self.hparams["mode_weight"]) * mode_loss
            self._optimizer_step(total)
        values: Stats = {**_reward_stats(rewards, self.failure_terms), **stats, **mode_stats, "loss": total.detach()}
        self._log_values(values, features.batch_size)
        return total.detach()

    def _score_rollout(self, batch: dict[str, Any], rollout: Rollout) -> _Scored:
        hp = self.hparams
        with_gt = hp["advantage"] == "ddv2" and bool(hp["ddv2_beat_gt"])
        plans = rollout.plans
        if with_gt:
            plans = torch.cat([plans, batch["targets"]["trajectory"][:, None].to(plans)], 1)
        plans_np = plans.detach().cpu().numpy().astype(np.float64)
        pending = submit(self.reward, batch["metric_cache"], plans_np, batch["features"])
        ref_lp = None
        if float(hp["kl_coef"]) > 0 or bool(hp["log_kl"]):
            with torch.no_grad():  # while the reward is scored
                ref_lp = self.reference_policy.log_prob(batch["features"], rollout)
        rewards = to_tensors(pending.result(), self.device, with_gt)
        if rewards.total.shape != rollout.plans.shape[:2]:
            raise ValueError(f"reward of shape {tuple(rewards.total.shape)} for plans {tuple(rollout.plans.shape)}")
        return _Scored(rewards, ref_lp)

    def _inpaint(
        self, batch: dict[str, Any], rollout: Rollout, scored: _Scored, gen: torch.Generator
    ) -> tuple[Rollout, _Scored]:
        """IGPO (:mod:`training.rl_igpo`): failed scenes get hinted rollouts in place of their last samples."""
        before = Inpainted(rollout, scored.rewards, scored.ref_lp, torch.zeros(()))
        failure = failure_mask(scored.rewards.terms, self.failure_terms)
        policies = (self.policy, self.reference_policy)
        after = inpaint_failed_groups(self.igpo, policies, self.reward, batch, before, failure, gen)
        after.rollout.validate()
        return after.rollout, _Scored(after.rewards, after.ref_lp, after.hinted)

    def advantages(self, rewards: TensorRewards, groups: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` advantages of the configured scheme."""
        hp = self.hparams
        eps = float(hp["adv_eps"])
        if hp["advantage"] == "grpo":
            return grpo_advantages(rewards.total, eps)
        if hp["advantage"] == "ddv2":
            failure = failure_mask(rewards.terms, self.failure_terms)
            penalize = bool(hp["ddv2_penalize_failed_groups"])
            return ddv2_advantages(rewards.total, failure, groups, eps, rewards.total_gt, penalize)
        if hp["advantage"] == "gdpo":
            return gdpo_advantages(rewards.terms, hp["gdpo_weights"], None, eps)
        raise ValueError(f"unknown advantage {hp['advantage']!r} (grpo, ddv2, gdpo)")

    def _objective(
        self, lp: torch.Tensor, rollout: Rollout, adv: torch.Tensor, ref_lp: torch.Tensor | None
    ) -> tuple[torch.Tensor, Stats]:
        hp = self.hparams
        old, mask, kl_coef = rollout.log_prob, rollout.step_mask, float(hp["kl_coef"])
        if hp["objective"] == "reinforce":
            return reinforce_loss(lp, adv, mask, float(hp["gamma"]))
        if hp["objective"] == "grpo":
            return clipped_loss(lp, old, adv, mask, float(hp["clip_eps"]), ref_lp, kl_coef)
        if hp["objective"] == "gspo":
            return gspo_loss(lp, old, adv, mask, float(hp["eps_low"]), float(hp["eps_high"]), ref_lp, kl_coef)
        raise ValueError(f"unknown objective {hp['objective']!r} (reinforce, grpo, gspo)")

    def _update(
        self,
        features: PlannerInput[torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        rollout: Rollout,
        adv: torch.Tensor,
        scored: _Scored,
        mode: _ModeTargets | None = None,
    ) -> tuple[torch.Tensor, Stats]:
        """One optimiser step on the rollout (and the anchor choice, with ``mode``); returns the loss and the
        statistics."""
        lp = self.policy.log_prob(features, rollout)
        loss, stats = self._objective(lp, rollout, adv, scored.ref_lp)
        il = self._imitation_loss(features, targets, adv)
        total = loss + il
        if mode is not None:
            mode_loss, mode_stats = self._mode_choice_loss(features, mode)
            total = total + float(self.hparams["mode_weight"]) * mode_loss
            stats = {**stats, **mode_stats}
        self._optimizer_step(total)
        if scored.ref_lp is not None:
            stats["kl"] = (k3_kl(lp.detach(), scored.ref_lp) * rollout.step_mask).sum() / rollout.step_mask.sum().clamp(
                min=1
            )
        return total.detach(), {**stats, "il_loss": il.detach(), "loss": total.detach()}

    def _optimizer_step(self, total: torch.Tensor) -> None:
        """Backward ``total``, clip, one optimiser and one scheduler step."""
        opt = self.optimizers()
        opt.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(total)
        if float(self.hparams["grad_clip"]) > 0:
            self.clip_gradients(opt, gradient_clip_val=float(self.hparams["grad_clip"]), gradient_clip_algorithm="norm")  # type: ignore[arg-type]
        opt.step()  # type: ignore[union-attr]
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()  # type: ignore[union-attr]

    def _mode_noise(self, features: PlannerInput[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        """The start noise of the mode-choice term's candidates (``mode_noise``): zeros or a draw from ``gen``."""
        planner: Any = self.planner
        shape = planner.initial_noise_shape(features.batch_size)
        if self.hparams["mode_noise"] == "anchors":
            return torch.zeros(shape, device=features.ego_status.device)
        return torch.randn(shape, generator=gen, device=gen.device).to(features.ego_status.device)

    def _mode_advantages(
        self, batch: dict[str, Any], rollout: Rollout | None, scored: _Scored | None, gen: torch.Generator
    ) -> tuple[_ModeTargets | None, Stats, TensorRewards | None]:
        """The anchor choice's ``(B, K)`` advantages and start noise (``None`` without ``mode_weight``), their
        statistics and the candidates' rewards (``None`` with ``mode_reward: samples``).

        ``mode_reward: samples``: each anchor's samples' mean reward, normalised over the scene's anchors;
        ``candidates``: the reward of the planner's own candidate for each anchor (the plans it chooses among, from
        the noise of :meth:`_mode_noise`), made an advantage by ``mode_advantage``. The candidates' forward pass
        keeps its graph: the first update's loss reuses its scores instead of running the planner again."""
        hp = self.hparams
        if float(hp["mode_weight"]) <= 0:
            return None, {}, None
        planner: Any = self.planner
        k, eps = int(planner.config.num_anchors), float(hp["adv_eps"])
        features = batch["features"]
        noise = self._mode_noise(features, gen)
        if hp["mode_reward"] == "samples":
            if rollout is None or scored is None:
                raise ValueError("mode_reward 'samples' needs the rollout")
            return _ModeTargets(mode_advantages(scored.rewards.total, rollout.groups, k, eps), noise), {}, None
        with self._choice_forward():
            out = planner(features, noise)
        plans = out.candidates.detach().cpu().numpy().astype(np.float64)
        rewards = to_tensors(submit(self.reward, batch["metric_cache"], plans, features).result(), self.device)
        total = rewards.total
        pick = total.gather(1, out.scores.detach().argmax(1, keepdim=True).to(total.device))
        stats = {"mode_pick_reward": pick.mean(), "mode_best_reward": total.max(1).values.mean()}
        if hp["mode_advantage"] == "ddv2":
            failure = failure_mask(rewards.terms, self.failure_terms)
            adv = ddv2_advantages(total, failure, torch.zeros_like(total, dtype=torch.long), eps)
            stats["mode_failure"] = failure.float().mean()
        else:
            adv = group_normalize(total, None, eps).to(total.dtype)  # one candidate per anchor
        return _ModeTargets(adv, noise, out.scores), stats, rewards

    def _mode_choice_loss(self, features: PlannerInput[torch.Tensor], mode: _ModeTargets) -> tuple[torch.Tensor, Stats]:
        """The planner's mode scores (from the advantages' start noise), with gradients, against the advantages:
        the scores of the advantages' own forward pass on first use, a new forward pass after that."""
        scores = mode.scores if mode.scores is not None and mode.scores.requires_grad else None
        mode.scores = None
        if scores is None:
            with self._choice_forward():
                scores = self.planner(features, mode.noise).scores
        return mode_choice_loss(scores, mode.adv)

    @contextlib.contextmanager
    def _choice_forward(self) -> Iterator[None]:
        """A forward pass of the anchor choice: with ``mode_detach``, the score heads see detached inputs."""
        if not self.hparams.get("mode_detach", False):
            yield
            return
        hooks = [head.register_forward_pre_hook(_detach_inputs) for head in self._score_heads]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def _imitation_loss(
        self, features: PlannerInput[torch.Tensor], targets: Mapping[str, torch.Tensor], adv: torch.Tensor
    ) -> torch.Tensor:
        """``il_weight * compute_loss``; with ``il_weight_positive``, scenes with a positive advantage weigh that."""
        hp = self.hparams
        w_neg = float(hp["il_weight"])
        w_pos = w_neg if hp["il_weight_positive"] is None else float(hp["il_weight_positive"])
        zero = torch.zeros((), device=adv.device)
        if w_neg == 0 and w_pos == 0:
            return zero
        compute_loss: Any = self.planner.compute_loss
        if w_pos == w_neg:
            return w_neg * compute_loss(features, dict(targets))["loss"]
        positive = (adv > 0).any(-1)
        out = zero
        for weight, chosen in ((w_pos, positive), (w_neg, ~positive)):
            index = chosen.nonzero().squeeze(-1)
            if weight == 0 or index.numel() == 0:
                continue
            sub_features, sub_targets = select_scenes(features, targets, index)
            out = out + weight * compute_loss(sub_features, sub_targets)["loss"] * index.numel() / adv.shape[0]
        return out

    # ------------------------------------------------------------------ logging
    def _log_step(self, scored: _Scored, adv: torch.Tensor, rollout: Rollout, stats: Stats, batch_size: int) -> None:
        rewards = scored.rewards
        values = _reward_stats(rewards, self.failure_terms)
        values.update(
            adv_mean=adv.mean(),
            adv_std=adv.std() if adv.numel() > 1 else torch.zeros(()),
            adv_pos_frac=(adv > 0).float().mean(),
            adv_zero_frac=(adv == 0).float().mean(),
            spread=exploration_spread(rollout.plans, rollout.groups),
        )
        if scored.hinted is not None:
            values["igpo_scenes"] = scored.hinted.any(-1).float().mean()
            values["igpo_reward"] = rewards.total[scored.hinted].mean() if scored.hinted.any() else torch.zeros(())
        greedy = int(getattr(self.policy, "greedy_members", 0))
        if greedy > 0:  # the deployed (argmax) decode, the first members of every group
            values["greedy_reward"] = rewards.total[:, :greedy].mean()
            values["greedy_failure"] = failure_mask(rewards.terms, self.failure_terms)[:, :greedy].float().mean()
        values.update(stats)
        self._log_values(values, batch_size)

    def _log_values(self, values: Stats, batch_size: int) -> None:
        """Log ``train/<name>`` for every value, and the learning rate."""
        opt = self.optimizers()
        values = {**values, "lr": torch.tensor(opt.param_groups[0]["lr"])}  # type: ignore[union-attr]
        for name, value in values.items():
            self.log(f"train/{name}", value.float(), prog_bar=name in ("reward", "loss"), batch_size=batch_size)

    # ------------------------------------------------------------------ validation
    def score_deterministic(self, batch: dict[str, Any]) -> TensorRewards:
        """Rewards ``(B, 1)`` of the planner's deterministic plan (``forward``, fixed noise seed, eval mode)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.hparams["seed"]))
                plans = self.planner(batch["features"]).trajectory[:, None]
        finally:
            self.train(was_training)
        result = rule_reward_of(self.reward).score(batch["metric_cache"], plans.cpu().numpy().astype(np.float64))
        return to_tensors(result, self.device)

    def _log_validation(self, rewards: TensorRewards, batch_size: int, **kwargs: Any) -> None:
        self.log("val/pdms", rewards.total.mean(), batch_size=batch_size, **kwargs)
        for name, term in rewards.terms.items():
            self.log(f"val/{name}", term.mean(), batch_size=batch_size, **kwargs)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        rewards = self.score_deterministic(batch)
        self._log_validation(rewards, rewards.total.shape[0], sync_dist=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = int(self.hparams["val_every_n_steps"])
        if every > 0 and self._rl_steps % every == 0:
            self.periodic_validation()

    def periodic_validation(self) -> None:
        """Log ``val/pdms`` and ``val/<term>``: :meth:`validation_scores` of the val loader."""
        datamodule = getattr(self.trainer, "datamodule", None)
        loader = datamodule.val_dataloader() if datamodule is not None else self.trainer.val_dataloaders
        if loader is None:
            raise ValueError("val_every_n_steps needs a val loader (the data module's val_dataloader)")
        limit = self.hparams["val_max_batches"]
        scores = self.validation_scores(loader, None if limit is None else int(limit))
        metrics = {f"val/{name}": value for name, value in scores.items()}
        # written once, at this step: ``self.log(on_step=True)`` from a batch hook would be re-written at every
        # later step of the epoch (flat runs in the curves); callbacks (checkpoints, early stopping) still see them
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)
        self.trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        # early stopping on the rule-based score counts these validations too (reward hacking shows between epochs)
        for callback in self.trainer.early_stopping_callbacks:
            callback._run_early_stopping_check(self.trainer)

    def validation_scores(self, loader: Iterable[Any], max_batches: int | None = None) -> dict[str, float]:
        """Mean reward (``pdms``) and sub-rewards of the deterministic plan over ``loader`` (up to ``max_batches``)."""
        sums: dict[str, float] = {}
        count = 0
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            rewards = self.score_deterministic(self._batch_to_device(batch))
            for name, term in {"pdms": rewards.total, **rewards.terms}.items():
                sums[name] = sums.get(name, 0.0) + float(term.sum())
            count += int(rewards.total.shape[0])
        return {name: value / max(count, 1) for name, value in sums.items()}

    def _batch_to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch the loop did not move (periodic validation) on this module's device; the metric caches, frozen
        numpy records, stay as they are (Lightning's generic transfer cannot rebuild frozen dataclasses)."""
        rest = {k: v for k, v in batch.items() if k != "metric_cache"}
        moved = self.transfer_batch_to_device(rest, self.device, 0)
        return moved if "metric_cache" not in batch else {**moved, "metric_cache": batch["metric_cache"]}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.planner.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        total = max(int(self.trainer.estimated_stepping_batches), 1) * int(hp["num_inner_updates"])
        return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, hp, total)}

    # ------------------------------------------------------------------ checkpoints
    def planner_record(self) -> CheckpointRecord:
        """The trained policy as a planner record (weights only; the reference and the RL state are left out)."""
        return CheckpointRecord.of(self.planner)

    def save_planner(self, path: str | Path) -> Path:
        """Write the trained policy as a bare planner checkpoint that :func:`planners.checkpoint.load_planner` reads."""
        return write(path, self.planner_record())


@dataclass
class _Scored:
    """Rewards of a rollout, the reference's per-step log-probs ``(B, N, S)`` (``None`` when not computed) and the
    samples decoded from an IGPO hint."""

    rewards: TensorRewards
    ref_lp: torch.Tensor | None
    hinted: torch.Tensor | None = None  # (B, N) bool: samples decoded from an IGPO hint


@dataclass
class _ModeTargets:
    """What the anchor choice trains on in one step: the ``(B, K)`` advantages of the anchors and the start noise
    ``(B, K, T, 2)`` of the candidates they were computed for (the loss re-runs the planner on the same noise)."""

    adv: torch.Tensor
    noise: torch.Tensor
    scores: torch.Tensor | None = None  # (B, K) of that noise, with gradients, until the first loss uses them


def _reward_stats(rewards: TensorRewards, failure_terms: tuple[str, ...]) -> Stats:
    """The mean reward, each sub-reward's mean and share of failures (below 1), and the share of failed plans."""
    values: Stats = {"reward": rewards.total.mean()}
    for name, term in rewards.terms.items():
        values[f"reward/{name}"] = term.mean()
        values[f"fail/{name}"] = (term < 1.0).float().mean()
    values["failure"] = failure_mask(rewards.terms, failure_terms).float().mean()
    return values


def _check_choice_only(
    mode_weight: float, mode_reward: str, il_weight: float, il_weight_positive: float | None, igpo: Any
) -> None:
    """``rollout: False`` trains the anchor choice alone: refuse the options that need a rollout."""
    needs = []
    if mode_weight <= 0 or mode_reward != "candidates":
        needs.append("mode_weight > 0 with mode_reward 'candidates' (the anchor choice is all it trains)")
    if il_weight != 0 or (il_weight_positive is not None and il_weight_positive != 0):
        needs.append("il_weight 0 and il_weight_positive 0 or unset (the imitation term weighs scenes by advantage)")
    if IGPOConfig.of(igpo).enabled:
        needs.append("igpo off (it hints failed rollouts)")
    if needs:
        raise ValueError("rollout: false needs " + "; ".join(needs))


def _detach_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: the module's tensor inputs without their graph (its gradient stops at the module)."""
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
