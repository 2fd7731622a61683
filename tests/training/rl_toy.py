"""A toy Gaussian policy over 8 x 3 plans, a fake reward and scene loaders for the RL module tests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from planners.base import PlanOutput
from planners.policy import Rollout
from simulation.features import PlannerInput, batch

#: The plan every scene rewards: 2 m/s straight ahead.
TARGET = np.stack([np.arange(1, 9) * 1.0, np.zeros(8), np.zeros(8)], -1).astype(np.float32)


class ToyGaussianPolicy(nn.Module):
    """``plan = sum_i (mu / S + sigma z_i)`` over ``S`` steps; step ``i`` has the Gaussian log-density of its
    increment, summed over the 8 x 3 coordinates. ``mu = head(encoder(ego_status))``."""

    def __init__(self, steps: int = 2, sigma: float = 0.3, groups: int = 2) -> None:
        super().__init__()
        self.steps, self.sigma, self.groups = steps, sigma, groups
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.0))
        self.head = nn.Linear(16, 24)

    def mean(self, inputs: PlannerInput[torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(inputs.ego_status)).reshape(-1, 8, 3)

    def forward(self, inputs: PlannerInput[torch.Tensor]) -> PlanOutput:
        return PlanOutput(self.mean(inputs))

    def _log_prob(self, mu: torch.Tensor, increments: torch.Tensor) -> torch.Tensor:
        z = (increments - mu[:, None, None] / self.steps) / self.sigma
        return (-0.5 * z**2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)).sum((-2, -1))

    def rollout(
        self, inputs: PlannerInput[torch.Tensor], num_samples: int, generator: torch.Generator | None = None
    ) -> Rollout:
        mu = self.mean(inputs)
        b = mu.shape[0]
        noise = torch.randn((b, num_samples, self.steps, 8, 3), generator=generator, device=mu.device)
        increments = mu[:, None, None] / self.steps + self.sigma * noise
        groups = (torch.arange(num_samples, device=mu.device) % self.groups).expand(b, num_samples)
        return Rollout(
            increments.sum(2),
            self._log_prob(mu, increments).detach(),
            torch.ones(b, num_samples, self.steps, dtype=torch.bool, device=mu.device),
            groups,
            {"increments": increments},
        )

    def log_prob(self, inputs: PlannerInput[torch.Tensor], rollout: Rollout) -> torch.Tensor:
        return self._log_prob(self.mean(inputs), rollout.chains["increments"])

    def compute_loss(self, inputs: PlannerInput[torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, Any]:
        jitter = 0.01 * torch.randn_like(targets["trajectory"])  # uses the global RNG, as diffusion losses do
        return {"loss": F.mse_loss(self.mean(inputs), targets["trajectory"] + jitter)}


@dataclass
class FakeRewardBatch:
    total: np.ndarray
    terms: dict[str, np.ndarray]


class DistanceReward:
    """``exp(-mean distance to the scene's target / 2)``; a sample more than 1.5 m off laterally at 4 s "collides"."""

    names = ("no_at_fault_collisions", "drivable_area_compliance", "ego_progress")
    version = "v1"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, metric_caches: Sequence[Any], plans: np.ndarray) -> FakeRewardBatch:
        self.calls += 1
        target = np.stack([np.asarray(c) for c in metric_caches])[:, None]
        dist = np.linalg.norm(plans[..., :2] - target[..., :2], axis=-1)
        total = np.exp(-dist.mean(-1) / 2.0)
        collision = (np.abs(plans[..., -1, 1] - target[..., -1, 1]) > 1.5).astype(np.float64)
        terms = {
            "no_at_fault_collisions": 1.0 - collision,
            "drivable_area_compliance": np.ones_like(total),
            "ego_progress": total,
        }
        return FakeRewardBatch(total, terms)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Scene dicts (``features``, ``trajectory``, ``token``, ``metric_cache``) -> an RL batch."""
    return {
        "features": batch([s["features"] for s in samples]),
        "targets": {"trajectory": torch.stack([torch.from_numpy(s["trajectory"]) for s in samples])},
        "tokens": [s["token"] for s in samples],
        "metric_cache": [s["metric_cache"] for s in samples],
    }


def scenes(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ego = rng.normal(size=8).astype(np.float32)
        features = PlannerInput(np.zeros((1, 4, 4), np.float32), ego, np.zeros((2, 11), np.float32), np.zeros(2, bool))
        out.append({"features": features, "trajectory": TARGET, "token": f"{i:04d}", "metric_cache": TARGET})
    return out


def loader(n: int, batch_size: int, seed: int = 0) -> DataLoader:
    """Scene batches in a fixed order (``features``, ``targets``, ``tokens``, ``metric_cache``)."""
    return DataLoader(scenes(n, seed), batch_size=batch_size, shuffle=False, collate_fn=collate)  # type: ignore[arg-type]


class StopAfterFirstEpoch(pl.Callback):
    """Stops a fit after its first epoch: a run killed there, for the resume tests."""

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        trainer.should_stop = True
