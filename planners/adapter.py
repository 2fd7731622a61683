"""The adapter that lets a learned planner drive in closed loop (``simulation.protocols.Planner``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from simulation.features import PLANNER_RASTER, batch, observation_features
from simulation.protocols import Observation
from simulation.render import RasterConfig
from simulation.types import Trajectory


class LearnedPlanner:
    """Adapter: a torch planner (eager ``nn.Module`` or an exported one) as a ``simulation.protocols.Planner``.

    Args:
        model: eager planner (``forward(inputs: PlannerInput, noise) -> PlanOutput``) or a callable on
            ``(bev, ego_status, agents, agents_mask, noise)`` returning ``(trajectory, candidates, scores)``.
        name: the planner's name in result tables.
        raster: the raster the model was trained on.
        seed: seed of the sampling noise (the same observation gives the same plan).
    """

    def __init__(self, model: Any, name: str = "learned", raster: RasterConfig = PLANNER_RASTER, seed: int = 0) -> None:
        self.model = model
        self.name = name
        self.raster = raster
        self.seed = seed
        self.last_candidates: np.ndarray | None = None

    def plan(self, observation: Observation) -> Trajectory:
        """The model's trajectory ``(8, 3)`` for one observation; raises ``ValueError`` when it is not finite."""
        inputs = batch([observation_features(observation, self.raster)])
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            if isinstance(self.model, torch.nn.Module):
                noise = torch.randn(self.model.initial_noise_shape(1), generator=g)  # type: ignore[operator]
                out = self.model(inputs, noise)
                trajectory, candidates = out.trajectory, out.candidates
            else:
                noise = torch.randn(self.model.noise_shape(1), generator=g)
                trajectory, candidates, _ = self.model(*inputs.tensors(), noise)
        poses = trajectory[0].double().numpy()
        if not np.isfinite(poses).all():
            raise ValueError(f"{self.name}: planner returned a non-finite trajectory")
        self.last_candidates = None if candidates is None else candidates[0].double().numpy()
        return Trajectory(poses)
