"""The learned planners' interface: tensor features in, :class:`PlanOutput` out.

``PlannerInput`` is a dict of batch-first tensors:

- ``bev``: ``(B, C, H, W)`` float32 ego-centric raster (channels / extent declared in ``simulation.render``).
- ``ego_status``: ``(B, 8)`` = ego-frame velocity (vx, vy), acceleration (ax, ay), driving command one-hot (4).
- ``agents``: ``(B, N, AGENT_FEATURES)`` agent tokens in the current rear-axle frame (see :class:`AgentFeature`).
- ``agents_mask``: ``(B, N)`` bool, True where an agent is present.

Targets: ``trajectory`` ``(B, 8, 3)`` future poses (x, y, heading) at 0.5 s in the current rear-axle frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

EGO_STATUS_DIM = 8
NUM_POSES = 8
MAX_AGENTS = 32


class AgentFeature(IntEnum):
    """Columns of an agent token: pose and motion in the ego frame, size, coarse type one-hot."""

    X = 0
    Y = 1
    COS_HEADING = 2
    SIN_HEADING = 3
    VX = 4
    VY = 5
    LENGTH = 6
    WIDTH = 7
    IS_VEHICLE = 8
    IS_VULNERABLE = 9  # pedestrian or bicycle
    IS_STATIC = 10


AGENT_FEATURES = len(AgentFeature)


@dataclass
class PlanOutput:
    """What every learned planner returns.

    Attributes:
        trajectory: ``(B, 8, 3)`` the chosen trajectory.
        candidates: ``(B, K, 8, 3)`` all candidates, or ``None`` for single-mode planners.
        scores: ``(B, K)`` candidate scores (logits or probabilities), or ``None``.
    """

    trajectory: torch.Tensor
    candidates: torch.Tensor | None = None
    scores: torch.Tensor | None = None


class PlannerInputError(ValueError):
    """Features that a planner cannot take: wrong shapes, NaN, a raster of another layout."""


def check_features(features: dict[str, torch.Tensor], bev_channels: int | None = None) -> None:
    """Raise :class:`PlannerInputError` on missing keys, wrong shapes or non-finite values."""
    for key in ("ego_status", "agents", "agents_mask"):
        if key not in features:
            raise PlannerInputError(f"missing feature {key!r}")
    ego = features["ego_status"]
    if ego.dim() != 2 or ego.shape[-1] != EGO_STATUS_DIM:
        raise PlannerInputError(f"ego_status must be (B, {EGO_STATUS_DIM}), got {tuple(ego.shape)}")
    agents = features["agents"]
    if agents.dim() != 3 or agents.shape[-1] != AGENT_FEATURES:
        raise PlannerInputError(f"agents must be (B, N, {AGENT_FEATURES}), got {tuple(agents.shape)}")
    if bev_channels is not None:
        bev = features.get("bev")
        if bev is None or bev.dim() != 4 or bev.shape[1] != bev_channels:
            got = None if bev is None else tuple(bev.shape)
            raise PlannerInputError(f"bev must be (B, {bev_channels}, H, W) for this planner, got {got}")
    for key, value in features.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise PlannerInputError(f"feature {key!r} contains NaN or inf")
