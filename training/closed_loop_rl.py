"""Closed-loop RL of a discriminator in BEV-Warp with TC-GRPO, and on-policy generator optimisation (RAD-2,
methods §2.2; the pieces in :mod:`training.closed_loop_rl_core` and :mod:`training.ogo`).

The module starts from a supervised discriminator checkpoint (``configs/train/discriminator.yaml``), which holds the
generator + discriminator pair (:class:`~planners.reranked.RerankedPlanner`); a frozen copy of the discriminator is
the KL reference. One training step on ``B`` scenarios::

    state   = branch(env, scenarios, maps, G)             # B x G episodes, one reset
    rollout = closed_loop_rollout(...)                    # decisions every k steps: K proposals (frozen generator),
                                                          # one sampled from softmax(scores / T), held k steps
    R, A    = returns of the episodes, normalised per group
    loss    = tcgrpo_loss(re-scored log-probs of the decisions, A) + kl_coef * k3 KL to the reference
    every ogo.every_n_steps steps: generator.compute_loss on re-timed high-return executed trajectories (OGO)

The discriminator (and the generator) run in eval mode, so the re-scored log-probs of an on-policy update equal the
sampled ones. Every random draw of a step comes from one generator whose state travels with the checkpoint, so
``--ckpt_path last.ckpt`` resumes exactly; the checkpoint is the pair's planner record (``planner=reranked``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pytorch_lightning as pl
import torch

from bev_warp.env import BEVWarpEnv, EnvConfig
from bev_warp.policies import LearnedPolicy
from planners.checkpoint import load_planner
from planners.discriminator import Discriminator, log_probs
from planners.reranked import RerankedPlanner
from simulation.evaluation.report import write_csv
from simulation.features import PlannerInput, raster_from_meta
from training.closed_loop_rl_core import (
    FAILURE_METRICS,
    ClosedLoopRollout,
    branch,
    cat_inputs,
    closed_loop_rollout,
    ddv2_group_advantages,
    episode_failures,
    episode_returns,
    group_advantages,
    tcgrpo_loss,
)
from training.imitation import warmup_cosine
from training.ogo import OGOConfig, ogo_targets
from training.rl_support import SeededCheckpointMixin

#: Key of the training state (sampling generator, step count) in a Lightning checkpoint.
TCGRPO_STATE_KEY = "diffplan_tcgrpo"
#: Episode metrics logged as means (nuPlan's closed-loop metrics, BEV-Warp's flags).
LOGGED_METRICS = (
    "score", "no_ego_at_fault_collisions", "drivable_area_compliance", "driving_direction_compliance",
    "ego_is_making_progress", "ego_progress_along_expert_route", "time_to_collision_within_bound",
    "speed_limit_compliance", "ego_is_comfortable", "collision", "off_road", "progress_m",
)  # fmt: skip


def pair_env_config(pair: RerankedPlanner, fields: Mapping[str, Any] | None) -> EnvConfig:
    """BEV-Warp's configuration for ``pair``: the given :class:`~bev_warp.env.EnvConfig` fields, observations
    rendered in the pair's own raster."""
    fields = dict(fields or {})
    for key in ("terminate_on", "weights"):
        if key in fields:
            fields[key] = tuple(tuple(v) if isinstance(v, list) else v for v in fields[key])
    raster = raster_from_meta(pair.raster_config)
    return EnvConfig(**{**fields, "observation": "raster", "raster": raster})


def pair_rollout(
    pair: RerankedPlanner,
    env_config: EnvConfig,
    batch: Mapping[str, Any],
    gen: torch.Generator,
    *,
    group_size: int,
    horizon: int,
    commit_steps: int,
    temperature: float,
    greedy: bool,
    device: torch.device,
) -> ClosedLoopRollout:
    """BEV-Warp rollouts of ``pair`` on the batch's scenarios (``scenes``, ``maps``), ``group_size`` from each
    reset: at every ``commit_steps``-th step the generator proposes (noise from ``gen``) and the discriminator's
    categorical policy ``softmax(scores / temperature)`` selects, sampled from ``gen`` or, when ``greedy``, its
    highest score (as the pair drives)."""
    env = BEVWarpEnv(env_config, device=device)
    scenes = [s for s in batch["scenes"] for _ in range(group_size)]
    state = branch(env, batch["scenes"], batch["maps"], group_size)
    inputs = LearnedPolicy(pair, env, scenes)

    def propose(features: PlannerInput[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(pair.initial_noise_shape(features.batch_size), generator=gen, device=gen.device)
        candidates, _ = pair.propose(features, noise.to(device), gen)
        return candidates, pair.pickable(candidates)

    def select(
        features: PlannerInput[torch.Tensor], candidates: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = pair.discriminator(features, candidates, mask)
            lp = log_probs(out.scores, out.mask, temperature)
            action = out.best if greedy else torch.multinomial(lp.exp(), 1, generator=gen).squeeze(-1)
        return action, lp.gather(1, action[:, None]).squeeze(-1), out.best

    return closed_loop_rollout(env, state, inputs.features, propose, select, horizon, commit_steps)


class ClosedLoopRLModule(SeededCheckpointMixin, pl.LightningModule):
    """TC-GRPO for the discriminator of a generator + discriminator pair in BEV-Warp (manual optimisation).

    Args:
        init_ckpt: a supervised discriminator checkpoint (the pair, its generator embedded).
        planner: the pair itself instead of ``init_ckpt`` (tests).
        group_size: rollouts per start state (``G``).
        commit_steps: replanning steps a selection is held (``k``; 1: a decision at every step).
        horizon: replanning steps per rollout (episodes also end at their log's end or on a terminal event).
        num_samples, own_candidates: the generator's candidates (``K``; ``None``: as the pair was trained).
        speed_scales: the speed fractions of the slowed copies of every candidate (:func:`planners.reranked.slowed`;
            ``None``: as the pair was trained, ``[]``: none).
        temperature: of the categorical policy ``softmax(scores / temperature)``.
        clip_eps: ratio clip; kl_coef: weight of the k3 KL to the warm-start discriminator.
        num_inner_updates: optimiser steps per rollout batch.
        returns: episode return as weights of the episode's metrics (``{score: 1}``: nuPlan's CLS).
        advantage: ``grpo``, the return normalised in its group; ``ddv2``, DiffusionDriveV2's rule on episodes
            (:func:`training.closed_loop_rl_core.ddv2_group_advantages`: ``max(A, 0)``, -1 for a failed episode).
        failure_metrics: episode metrics whose value below 1 is a failure (``ddv2``; default: an at-fault collision
            or leaving the drivable area).
        adv_eps: added to the group standard deviation.
        env: :class:`bev_warp.env.EnvConfig` fields (``replan_interval_s``, ``terminate_on``, ...).
        ogo: :class:`training.ogo.OGOConfig` fields (on-policy generator optimisation; off by default).
        val_commit_steps: the commitment of the validation rollouts (greedy selection; 1 as the pair drives).
        val_episodes: a CSV file that each validation run rewrites with one row per episode (``token`` and the
            :data:`LOGGED_METRICS`), for paired comparisons of two planners on the same scenarios
            (``benchmarks/paired_scores.py``); ``None``: not written.
        lr, weight_decay, warmup_steps, min_lr, grad_clip: AdamW of the discriminator and its schedule.
        seed: seed of the sampling generator.
    """

    STATE_KEY = TCGRPO_STATE_KEY
    STEPS_ATTR = "_steps"

    def __init__(
        self,
        init_ckpt: str | None = None,
        planner: RerankedPlanner | None = None,
        group_size: int = 4,
        commit_steps: int = 2,
        horizon: int = 8,
        num_samples: int | None = None,
        own_candidates: bool | None = None,
        speed_scales: list[float] | None = None,
        temperature: float = 0.1,
        clip_eps: float = 0.2,
        kl_coef: float = 0.04,
        num_inner_updates: int = 1,
        returns: dict[str, float] | None = None,
        advantage: Literal["grpo", "ddv2"] = "grpo",
        failure_metrics: list[str] | None = None,
        adv_eps: float = 1e-4,
        env: dict[str, Any] | None = None,
        ogo: dict[str, Any] | None = None,
        val_commit_steps: int = 1,
        val_episodes: str | None = None,
        lr: float = 5e-5,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        min_lr: float = 1e-6,
        grad_clip: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if (init_ckpt is None) == (planner is None):
            raise ValueError("give exactly one of init_ckpt (a discriminator checkpoint) and planner")
        if group_size < 2 or commit_steps < 1 or horizon < 1 or num_inner_updates < 1:
            raise ValueError("need group_size >= 2, commit_steps >= 1, horizon >= 1, num_inner_updates >= 1")
        if advantage not in ("grpo", "ddv2"):
            raise ValueError(f"advantage must be 'grpo' or 'ddv2', got {advantage!r}")
        self.save_hyperparameters(ignore=["planner"])
        self.automatic_optimization = False
        pair = planner if planner is not None else load_planner(str(init_ckpt), expect_class="RerankedPlanner")
        if not isinstance(pair, RerankedPlanner):
            raise TypeError(f"{init_ckpt}: holds a {type(pair).__name__}, expected a RerankedPlanner")
        if num_samples is not None or own_candidates is not None or speed_scales is not None:
            cfg = copy.copy(pair.config)
            cfg.num_samples = cfg.num_samples if num_samples is None else num_samples
            cfg.own_candidates = cfg.own_candidates if own_candidates is None else own_candidates
            cfg.speed_scales = cfg.speed_scales if speed_scales is None else [float(c) for c in speed_scales]
            rebuilt = RerankedPlanner(pair.generator, pair.discriminator, cfg)
            rebuilt.raster_config = pair.raster_config
            pair = rebuilt
        self.planner = pair
        self.ogo = OGOConfig(**dict(ogo or {}))
        self.planner.generator.requires_grad_(self.ogo.enabled)
        self.reference = copy.deepcopy(pair.discriminator).requires_grad_(False)
        self.env_config = pair_env_config(self.planner, env)
        self.returns = dict(returns) if returns else {"score": 1.0}
        self.failure_metrics = tuple(FAILURE_METRICS if failure_metrics is None else failure_metrics)
        self._generator: torch.Generator | None = None
        self._pending_rng_state: torch.Tensor | None = None
        self._steps = 0
        self._val_frames: list[pd.DataFrame] = []  # the validation episodes of each batch (val_episodes)
        self.train()

    @property
    def discriminator(self) -> Discriminator:
        return self.planner.discriminator

    def train(self, mode: bool = True) -> ClosedLoopRLModule:
        """As ``nn.Module.train``, but every network stays in eval mode (no dropout: on-policy ratios are 1)."""
        super().train(mode)
        self.planner.eval()
        self.reference.eval()
        return self

    # ------------------------------------------------------------------ rollouts
    def rollout(
        self, batch: Mapping[str, Any], gen: torch.Generator, greedy: bool = False, group_size: int | None = None
    ) -> ClosedLoopRollout:
        """Closed-loop rollouts of the batch's scenarios: ``G`` per scenario (1 when ``greedy``)."""
        hp = self.hparams
        return pair_rollout(
            self.planner, self.env_config, batch, gen,
            group_size=int(hp["group_size"]) if group_size is None else group_size,
            horizon=int(hp["horizon"]),
            commit_steps=int(hp["val_commit_steps"]) if greedy else int(hp["commit_steps"]),
            temperature=float(hp["temperature"]), greedy=greedy, device=self.device,
        )  # fmt: skip

    def decision_log_probs(self, rollout: ClosedLoopRollout, discriminator: Discriminator) -> torch.Tensor:
        """``(E, D)`` log-probabilities of the selected candidates under ``discriminator`` (one batched forward over
        every decision; the pickable masks of the rollout)."""
        ds = rollout.decisions
        features = cat_inputs([d.features for d in ds])
        candidates = torch.cat([d.candidates for d in ds])
        mask = torch.cat([d.mask for d in ds])
        out = discriminator(features, candidates, mask)
        lp = log_probs(out.scores, mask, float(self.hparams["temperature"]))
        picked = lp.gather(1, torch.cat([d.action for d in ds])[:, None]).squeeze(-1)
        return picked.reshape(len(ds), -1).T

    # ------------------------------------------------------------------ a training step
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        gen = self.generator()
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            rollout = self.rollout(batch, gen)
            returns = episode_returns(rollout.metrics, self.returns)
            adv = self.advantages(rollout.metrics, returns)
            stats: dict[str, torch.Tensor] = {}
            for _ in range(int(self.hparams["num_inner_updates"])):
                stats = self._update(rollout, adv)
            if self.ogo.enabled and self._steps % self.ogo.every_n_steps == 0:
                stats.update(self._ogo_update(rollout, adv))
        self._steps += 1
        self._log_step(rollout, returns, adv, stats, len(batch["scenes"]))
        return stats["loss"]

    def advantages(self, metrics: Mapping[str, torch.Tensor], returns: torch.Tensor) -> torch.Tensor:
        """``(E,)`` advantages of the configured scheme from the episodes' metrics and returns."""
        g, eps = int(self.hparams["group_size"]), float(self.hparams["adv_eps"])
        if self.hparams["advantage"] == "ddv2":
            return ddv2_group_advantages(returns, episode_failures(metrics, self.failure_metrics), g, eps)
        return group_advantages(returns, g, eps)

    def _optimizers(self) -> list[Any]:
        opts = self.optimizers()
        return list(opts) if isinstance(opts, (list, tuple)) else [opts]

    def _update(self, rollout: ClosedLoopRollout, adv: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step of the discriminator on the rollout's decisions."""
        hp = self.hparams
        old, valid = rollout.stacked()
        lp = self.decision_log_probs(rollout, self.discriminator)
        with torch.no_grad():
            ref = self.decision_log_probs(rollout, self.reference)
        loss, stats = tcgrpo_loss(
            lp, old, adv.to(lp), valid, int(hp["group_size"]), float(hp["clip_eps"]), ref, float(hp["kl_coef"])
        )
        opt = self._optimizers()[0]
        opt.zero_grad()
        self.manual_backward(loss)
        if float(hp["grad_clip"]) > 0:
            self.clip_gradients(opt, gradient_clip_val=float(hp["grad_clip"]), gradient_clip_algorithm="norm")
        opt.step()
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            (schedulers[0] if isinstance(schedulers, list) else schedulers).step()  # type: ignore[union-attr]
        return {**stats, "loss": loss.detach()}

    def _ogo_update(self, rollout: ClosedLoopRollout, adv: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step of the generator on re-timed high-return trajectories (nothing when none qualifies)."""
        features, targets = ogo_targets(rollout, adv, self.ogo)
        zero = torch.zeros((), device=self.device)
        if targets is None or features is None:
            return {"ogo_loss": zero, "ogo_targets": zero}
        opt = self._optimizers()[1]
        compute_loss: Any = self.planner.generator.compute_loss
        loss = self.ogo.weight * compute_loss(features, {"trajectory": targets.to(self.device).float()})["loss"]
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return {"ogo_loss": loss.detach(), "ogo_targets": torch.tensor(float(targets.shape[0]))}

    def _log_step(
        self,
        rollout: ClosedLoopRollout,
        returns: torch.Tensor,
        adv: torch.Tensor,
        stats: Mapping[str, torch.Tensor],
        batch_size: int,
    ) -> None:
        values = {**self.episode_means(rollout), "return": returns.mean()}
        _, valid = rollout.stacked()
        values.update(
            adv_mean=adv.mean(), adv_std=adv.std(), adv_abs=adv.abs().mean(), adv_zero_frac=(adv == 0).float().mean(),
            decisions=valid.float().sum(1).mean(), steps=torch.tensor(float(rollout.steps)),
            greedy_frac=self._greedy_share(rollout),
        )  # fmt: skip
        values.update(stats)
        values["lr"] = torch.tensor(self._optimizers()[0].param_groups[0]["lr"])
        for name, value in values.items():
            self.log(f"train/{name}", value.float(), prog_bar=name in ("return", "loss"), batch_size=batch_size)

    @staticmethod
    def episode_means(rollout: ClosedLoopRollout) -> dict[str, torch.Tensor]:
        """Means of :data:`LOGGED_METRICS` over the episodes (``collision``: the share with an at-fault one)."""
        return {k: rollout.metrics[k].double().mean() for k in LOGGED_METRICS if k in rollout.metrics}

    @staticmethod
    def _greedy_share(rollout: ClosedLoopRollout) -> torch.Tensor:
        """Share of the valid decisions that selected the highest-scored candidate."""
        hits = sum(((d.action == d.best) & d.active).sum() for d in rollout.decisions)
        count = sum(d.active.sum() for d in rollout.decisions)
        return torch.as_tensor(hits, dtype=torch.float32) / max(float(count), 1.0)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Greedy rollouts (one per scenario, ``val_commit_steps``): ``val/score`` (CLS), ``val/return``, ...."""
        gen = torch.Generator(device=self.device).manual_seed(int(self.hparams["seed"]))
        with torch.no_grad():
            rollout = self.rollout(batch, gen, greedy=True, group_size=1)
        returns = episode_returns(rollout.metrics, self.returns)
        values = {**self.episode_means(rollout), "return": returns.mean()}
        for name, value in values.items():
            self.log(f"val/{name}", value.float(), batch_size=len(batch["scenes"]), sync_dist=True)
        if self.hparams.get("val_episodes"):
            columns = {k: rollout.metrics[k] for k in LOGGED_METRICS if k in rollout.metrics} | {"return": returns}
            frame = pd.DataFrame({k: v.double().cpu().numpy() for k, v in columns.items()})
            self._val_frames.append(frame.assign(token=[s.token for s in batch["scenes"]])[["token", *columns]])

    def on_validation_epoch_start(self) -> None:
        self._val_frames = []

    def on_validation_epoch_end(self) -> None:
        path = self.hparams.get("val_episodes")
        if not path or not self._val_frames or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        write_csv(pd.concat(self._val_frames, ignore_index=True), Path(path))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.discriminator.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        total = max(int(self.trainer.estimated_stepping_batches), 1) * int(hp["num_inner_updates"])
        scheduler = {"scheduler": warmup_cosine(opt, hp, total), "interval": "step"}
        if not self.ogo.enabled:
            return {"optimizer": opt, "lr_scheduler": scheduler}
        gen_opt = torch.optim.AdamW(self.planner.generator.parameters(), lr=self.ogo.lr, weight_decay=0.0)
        return [opt, gen_opt], [scheduler]
