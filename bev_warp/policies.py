"""Planners in the BEV-Warp loop: ``policy(state) -> (plans (B, P, 3), failed (B,))`` for :meth:`BEVWarpEnv.step`.

- :class:`VectorPolicy` runs any :class:`simulation.protocols.Planner` (the rule-based ones) one episode at a
  time on an :class:`~simulation.protocols.Observation` built from the BEV-Warp state: the simulated ego state,
  the logged agents and traffic lights of the current frame, the map and the route (no re-rendering).
- :class:`LearnedPolicy` runs a learned planner (``forward(features, noise) -> PlanOutput``) on the whole
  batch at once: the warped logged raster (:meth:`BEVWarpEnv.observe`), the ego status of the simulated state
  and the logged agents as tokens in the simulated ego frame (the batched torch builders of
  :mod:`simulation.features`, on the episodes' device). Every episode gets the same seeded noise as the
  closed-loop adapter of learned planners draws for one observation, so both loops see the same samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bev_warp.env import BEVWarpEnv, EnvState
from simulation.features import PlannerInput, agent_tokens_torch, ego_status_torch
from simulation.maps.protocol import MapProtocol
from simulation.protocols import Observation, Planner
from simulation.types import DrivingCommand, EgoStates, LogWindow

logger = logging.getLogger(__name__)


def log_frame(state: EnvState, scene: LogWindow, i: int) -> int:
    """Index in ``scene`` of episode ``i``'s current frame."""
    return scene.current_index + int(state.frame[i])


def observation(state: EnvState, i: int, scene: LogWindow, map_api: MapProtocol) -> Observation:
    """What a vector planner sees in episode ``i``: one-sample history (the simulated ego now), logged agents."""
    k = log_frame(state, scene, i)
    ego = EgoStates(state.ego[i].detach().cpu().numpy()[None].copy(), scene.timestamps_us[k : k + 1])
    return Observation.from_window(scene, slice(k, k + 1), map_api, ego_history=ego)


def _maps(maps: Sequence[Any] | Any, n: int) -> list[Any]:
    return list(maps) if isinstance(maps, (list, tuple)) else [maps] * n


class VectorPolicy:
    """One planner per episode (``make_planner()``), called on :func:`observation` while the episode runs.

    A planner that raises, or returns non-finite poses, marks its episode ``failed`` (the env terminates it).
    """

    def __init__(self, make_planner: Callable[[], Planner], scenes: Sequence[LogWindow], maps: Sequence[Any] | Any):
        self.scenes = list(scenes)
        self.maps = _maps(maps, len(self.scenes))
        self.planners = [make_planner() for _ in self.scenes]

    def __call__(self, state: EnvState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Plans ``(B, 8, 3)``, failed ``(B,)`` and the start poses ``(B, 3)`` of the plans' references (a
        trajectory's global ``start_pose``, NaN where it has none): ``env.step(state, *policy(state))``."""
        b = state.episodes.batch_size
        plans = np.zeros((b, 8, 3))
        starts = np.full((b, 3), np.nan)
        failed = np.zeros(b, dtype=bool)
        done = state.done.cpu().numpy()
        for i in range(b):
            if done[i]:
                continue
            try:
                trajectory = self.planners[i].plan(observation(state, i, self.scenes[i], self.maps[i]))
                poses = np.asarray(trajectory.poses)
                if poses.shape != (8, 3) or not np.isfinite(poses).all():
                    raise ValueError(f"plan of shape {poses.shape} (need (8, 3), finite)")
                plans[i] = poses
                start = getattr(trajectory, "start_pose", None)
                if start is not None:
                    starts[i] = np.asarray(start, dtype=np.float64).reshape(3)
            except Exception as err:  # noqa: BLE001 - a failing planner ends its episode only
                logger.warning("episode %s: planner failed: %s", self.scenes[i].token, err)
                failed[i] = True
        dev = state.ego.device
        return torch.as_tensor(plans, device=dev), torch.as_tensor(failed, device=dev), torch.as_tensor(starts, device=dev)


class LearnedPolicy:
    """A learned planner on warped rasters, batched over the episodes (``env.config.observation='raster'``)."""

    def __init__(self, model: Any, env: BEVWarpEnv, scenes: Sequence[LogWindow], seed: int = 0) -> None:
        self.model, self.env, self.scenes, self.seed = model, env, list(scenes), seed
        commands = [int(getattr(s, "driving_command", DrivingCommand.UNKNOWN)) for s in self.scenes]
        self.commands = torch.as_tensor(commands, dtype=torch.long)  # (B,)

    def features(self, state: EnvState) -> PlannerInput[torch.Tensor]:
        """The planner's inputs on the episodes' device: the warped raster ``(B, C, H, W)``, the ego status ``(B, 8)``
        of the simulated state and the logged agents of the current frames as tokens ``(B, A, F)`` in the simulated
        ego frame, with their mask ``(B, A)``."""
        ep = state.episodes
        rows = torch.arange(ep.batch_size, device=ep.device)
        ego = state.ego.detach()
        boxes, valid = ep.boxes[rows, state.frame], ep.valid[rows, state.frame]  # (B, N, 7), (B, N)
        tokens, mask = agent_tokens_torch(boxes, ep.types, valid, ego[:, :3])
        status = ego_status_torch(ego, self.commands.to(ego.device))
        return PlannerInput(bev=self.env.observe(state).float(), ego_status=status, agents=tokens, agents_mask=mask)

    def __call__(self, state: EnvState) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(state)
        b = state.episodes.batch_size
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(self.model.initial_noise_shape(1), generator=g)
        noise = noise.expand(b, *noise.shape[1:]).contiguous().to(state.ego.device)
        with torch.no_grad():
            plans = self.model(feats, noise).trajectory.double()
        failed = ~torch.isfinite(plans).all(-1).all(-1)
        return torch.where(failed[:, None, None], torch.zeros_like(plans), plans), failed
