"""One generic LightningModule that trains any learned planner by imitation.

A planner is an ``nn.Module`` with ``forward(inputs: PlannerInput) -> PlanOutput`` and
``compute_loss(inputs, targets) -> {"loss": ..., ...}``. Planners that need statistics of the
training split before the first step (the truncated diffusion planner's K-means anchors) expose
``needs_data_init()`` and ``init_from_data(trajectories)``; the module calls them once in ``setup``
and the result travels with the checkpoint (buffers), so resumed and loaded runs do not recompute it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from planners.checkpoint import CHECKPOINT_KEY, planner_header
from simulation.features import EGO_KINEMATICS, PlannerInput, raster_from_meta
from training.augment import StatePerturbation, perturb_batch

logger = logging.getLogger(__name__)


class PlannerModule(pl.LightningModule):
    """Imitation learning for any planner.

    Args:
        planner: the planner network (composed from YAML by the Lightning CLI with ``class_path``).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps before a cosine decay to ``min_lr`` over the run (at most a tenth
            of the run's optimiser steps, so that a short run is not spent warming up).
        min_lr: final learning rate.
        ego_dropout: probability that a training sample's ego kinematics (velocity and acceleration in
            ``ego_status``; the driving command stays) are zeroed, as state dropout: a planner that always sees its
            own speed learns to copy it (stopped stays stopped, moving keeps moving), which a closed loop
            compounds; with dropout it must also read the speed it should drive from the scene. 0 disables it.
        state_perturbation: :class:`training.augment.StatePerturbation` fields (``None``: off): training samples
            whose ego pose and speed are moved off the log, with a target that drives back onto the logged
            future (ChauffeurNet's synthesised perturbations, made from the cached features).
    """

    def __init__(
        self,
        planner: nn.Module,
        lr: float = 6e-4,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        min_lr: float = 1e-6,
        ego_dropout: float = 0.0,
        state_perturbation: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= ego_dropout <= 1.0:
            raise ValueError(f"ego_dropout must lie in [0, 1], got {ego_dropout}")
        self.perturbation = None if state_perturbation is None else StatePerturbation(**dict(state_perturbation))
        self.planner = planner
        self.save_hyperparameters(ignore=["planner"])

    # ------------------------------------------------------------------ data-dependent initialisation
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        meta = getattr(datamodule, "meta", None)
        if meta is not None:
            self._check_raster(meta)
        needs = getattr(self.planner, "needs_data_init", None)
        if stage == "fit" and callable(needs) and needs() and datamodule is not None:
            trajectories = datamodule.train_trajectories()
            self.planner.init_from_data(trajectories)  # type: ignore[operator]
            logger.info("initialised %s from %d training trajectories", type(self.planner).__name__, len(trajectories))

    def _check_raster(self, meta: dict[str, Any]) -> None:
        """The cache's raster must be the one the planner is built for; remember it for the checkpoint."""
        raster = meta.get("raster", {})
        expected = getattr(getattr(self.planner, "config", None), "bev_channels", None)
        channels = meta.get("bev_shape", [None])[0]
        if expected is not None and channels != expected:
            raise ValueError(
                f"feature cache has {channels} raster channels ({raster.get('channels')}), "
                f"the planner expects {expected}: rebuild the cache or change the planner config"
            )
        self.planner.raster_config = raster  # type: ignore[assignment]
        if self.perturbation is not None:
            try:
                raster_from_meta(raster)
            except ValueError as err:
                raise ValueError(f"state_perturbation needs the feature cache's raster description: {err}") from None

    # ------------------------------------------------------------------ steps
    def forward(self, inputs: PlannerInput[torch.Tensor]) -> Any:
        return self.planner(inputs)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        if stage == "train" and self.perturbation is not None and self.perturbation.probability > 0:
            raster = raster_from_meta(getattr(self.planner, "raster_config", None))
            batch = perturb_batch(batch, self.perturbation, raster)
        features = batch["features"]
        if stage == "train" and self.hparams["ego_dropout"] > 0:
            features = drop_ego_kinematics(features, self.hparams["ego_dropout"])
        losses = self.planner.compute_loss(features, batch["targets"])  # type: ignore[operator]
        bs = batch["targets"]["trajectory"].shape[0]
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss", batch_size=bs, sync_dist=stage != "train")
        if stage != "train":
            with torch.no_grad():
                pred = self.planner(batch["features"]).trajectory
            err = (pred[..., :2] - batch["targets"]["trajectory"][..., :2]).norm(dim=-1)
            self.log(f"{stage}/ade", err.mean(), batch_size=bs, sync_dist=True)
            self.log(f"{stage}/fde", err[:, -1].mean(), batch_size=bs, sync_dist=True)
        return losses["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        out = self.planner(batch["features"])
        return {"tokens": batch.get("tokens"), "trajectory": out.trajectory, "candidates": out.candidates}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = warmup_cosine(opt, hp, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the planner's record (class, config, raster; see :mod:`planners.checkpoint`)."""
        checkpoint[CHECKPOINT_KEY] = planner_header(self.planner)


def drop_ego_kinematics(
    features: PlannerInput[torch.Tensor], p: float, generator: torch.Generator | None = None
) -> PlannerInput[torch.Tensor]:
    """``features`` with the ego kinematics (the first :data:`EGO_KINEMATICS` columns of ``ego_status``) zeroed
    in each sample with probability ``p``; the command columns and every other input are untouched."""
    ego = features.ego_status
    drop = torch.rand(ego.shape[0], device=ego.device, generator=generator) < p
    keep = torch.ones_like(ego)
    keep[:, :EGO_KINEMATICS] = (~drop).to(ego.dtype)[:, None]
    return dataclasses.replace(features, ego_status=ego * keep)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, hparams: Any, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The step-wise :func:`lr_factor` schedule of ``optimizer`` from the ``warmup_steps``, ``lr`` and ``min_lr``
    hyper-parameters, over ``total_steps`` optimiser steps (at least 1). A zero ``lr`` (a run that must not move
    the weights) stays zero.

    Raises:
        ValueError: a negative ``lr`` or ``min_lr``.
    """
    lr, min_lr = float(hparams["lr"]), float(hparams["min_lr"])
    if lr < 0 or min_lr < 0:
        raise ValueError(f"learning rates must not be negative (lr {lr}, min_lr {min_lr})")
    schedule = functools.partial(
        lr_factor,
        warmup_steps=int(hparams["warmup_steps"]),
        total_steps=max(int(total_steps), 1),
        floor=min_lr / lr if lr > 0 else 0.0,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def lr_factor(step: int, warmup_steps: int, total_steps: int, floor: float) -> float:
    """Learning-rate multiplier at optimiser ``step``: linear warm-up, then a cosine decay to ``floor``.

    The warm-up lasts ``warmup_steps``, but at most a tenth of ``total_steps``.
    """
    warmup = min(warmup_steps, total_steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
