"""EgoStatusMLP: NAVSIM's blind baseline (ego status in, 8 x 3 trajectory out, L1 loss)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from planners.base import PlanOutput
from simulation.features import EGO_STATUS_DIM, NUM_POSES, PlannerInput


@dataclass
class EgoStatusMLPConfig:
    hidden_dim: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


class EgoStatusMLP(nn.Module):
    """Three-layer MLP from the 8-d ego status to 8 poses (x, y, heading)."""

    def __init__(self, config: EgoStatusMLPConfig | None = None) -> None:
        super().__init__()
        self.config = config or EgoStatusMLPConfig()
        h = self.config.hidden_dim
        self.mlp = nn.Sequential(
            nn.Linear(EGO_STATUS_DIM, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, NUM_POSES * 3)
        )

    @classmethod
    def from_config_dict(cls, config: dict) -> EgoStatusMLP:
        return cls(EgoStatusMLPConfig(**config))

    def sample(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor | None = None) -> PlanOutput:
        """Deterministic planner: ``noise`` is ignored (kept for the export interface)."""
        poses = self.mlp(inputs.ego_status).reshape(-1, NUM_POSES, 3)
        return PlanOutput(trajectory=poses)

    def initial_noise_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, 1)

    def forward(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor | None = None) -> PlanOutput:
        inputs.validate()
        return self.sample(inputs)

    def compute_loss(
        self, inputs: PlannerInput[torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        loss = F.l1_loss(self(inputs).trajectory, targets["trajectory"])
        return {"loss": loss}
