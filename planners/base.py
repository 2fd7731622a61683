"""What every learned planner returns: :class:`PlanOutput`.

Learned planners are ``nn.Module``\\ s over :class:`simulation.features.PlannerInput` (the planner-input contract:
raster, ego status, agent tokens); ``forward(inputs, noise) -> PlanOutput``, ``compute_loss(inputs, targets)``.
Targets: ``trajectory`` ``(B, 8, 3)`` future poses (x, y, heading) at 0.5 s in the current rear-axle frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
