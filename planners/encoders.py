"""Scene encoders shared by the learned planners: a timm CNN over the BEV raster, agent and ego tokens."""

from __future__ import annotations

import math

import timm
import torch
from torch import nn

from simulation.features import AGENT_FEATURES, EGO_STATUS_DIM


class BEVEncoder(nn.Module):
    """timm CNN backbone over the raster, projected to ``d_model`` channels.

    Input ``(B, C, H, W)``; output ``(B, d_model, H / s, W / s)`` feature map of the backbone stage ``stage``
    (``-1``: the last one, stride ``s = 32``; ``-2``: the one before, ``s = 16``, a finer map for sampling at the
    waypoints, and the last, most expensive stage is not built).
    """

    def __init__(self, in_channels: int, d_model: int = 128, backbone: str = "resnet10t", stage: int = -1) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            backbone, pretrained=False, in_chans=in_channels, features_only=True, out_indices=(stage,)
        )
        channels = int(self.backbone.feature_info.channels()[-1])  # type: ignore[union-attr,operator]
        self.proj = nn.Conv2d(channels, d_model, kernel_size=1)
        self.in_channels = in_channels

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(bev)[-1])


class AgentEncoder(nn.Module):
    """Per-agent MLP: ``(B, N, AGENT_FEATURES)`` -> ``(B, N, d_model)``."""

    def __init__(self, d_model: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(AGENT_FEATURES, d_model), nn.ReLU(), nn.Linear(d_model, d_model), nn.LayerNorm(d_model)
        )

    def forward(self, agents: torch.Tensor) -> torch.Tensor:
        return self.mlp(agents)


class EgoEncoder(nn.Module):
    """Ego status ``(B, 8)`` -> one token ``(B, 1, d_model)``."""

    def __init__(self, d_model: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(EGO_STATUS_DIM, d_model)

    def forward(self, ego_status: torch.Tensor) -> torch.Tensor:
        return self.linear(ego_status).unsqueeze(1)


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``(..., dim)`` of scalar ``values`` ``(...)`` (``dim`` even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    args = values.unsqueeze(-1).float() * freqs
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
