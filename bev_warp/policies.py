"""Planners in the BEV-Warp loop: ``policy(state) -> (plans (B, P, 3), failed (B,))`` for :meth:`BEVWarpEnv.step`.

- :class:`VectorPolicy` runs any :class:`simulation.protocols.Planner` (the rule-based ones) one episode at a
  time on an :class:`~simulation.protocols.Observation` built from the BEV-Warp state: the simulated ego state,
  the logged agents and traffic lights of the current frame, the map and the route (no re-rendering).
- :class:`LearnedPolicy` runs a learned planner (``forward(features, noise) -> PlanOutput``, or its head
  ``forward_features`` on warped encoder features) on the whole batch at once: the warped logged raster or
  feature map (:meth:`BEVWarpEnv.observe`), the ego status of the simulated state
  and the logged agents as tokens in the simulated ego frame (the batched torch builders of
  :mod:`simulation.features`, on the episodes' device). Every episode gets the same seeded noise as the
  closed-loop adapter of learned planners draws for one observation, so both loops see the same samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from bev_warp.env import BEVWarpEnv, EnvState
from simulation.commands import command_from_path_torch, fixed_command
from simulation.features import PlannerInput, agent_tokens_torch, ego_status_torch
from simulation.maps.protocol import MapProtocol
from simulation.protocols import Observation, Planner
from simulation.types import EgoStates, LogWindow

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
        return (
            torch.as_tensor(plans, device=dev),
            torch.as_tensor(failed, device=dev),
            torch.as_tensor(starts, device=dev),
        )


class LearnedPolicy:
    """A learned planner batched over the episodes, on warped rasters or on warped encoder features.

    ``warp="raster"`` (``env.config.observation='raster'``): the planner's ``forward`` on the warped logged
    rasters. ``warp="features"`` (``env.config.observation='features'`` with ``encoder=model.encode_bev``): each
    logged planning frame was encoded once at reset; the planner's head (``forward_features``) runs on the
    warped feature map at every step, without re-rendering or re-encoding (RAD-2's BEV-Warp).

    The inputs are built in torch on the episodes' device; the noise and the scenes' fixed driving commands are
    placed on it once, so a call adds no host sync of its own. A scene that carries a driving command (a NAVSIM
    scene) keeps it; a scenario's command is recomputed at every step from the simulated pose on its logged ego path
    (:func:`simulation.commands.command_from_path_torch`), as the vector closed loop does
    (:func:`simulation.commands.window_command`).
    """

    def __init__(
        self,
        model: Any,
        env: BEVWarpEnv,
        scenes: Sequence[LogWindow],
        seed: int = 0,
        warp: Literal["raster", "features"] = "raster",
    ) -> None:
        if warp not in ("raster", "features"):
            raise ValueError(f"warp must be raster or features, got {warp}")
        if env.config.observation != warp:
            raise ValueError(f"warp={warp} needs an environment with observation='{warp}' ({env.config.observation})")
        if warp == "features" and not hasattr(model, "forward_features"):
            raise ValueError(f"{type(model).__name__} has no forward_features (encoder / head split)")
        self.model, self.env, self.scenes, self.seed, self.warp = model, env, list(scenes), seed, warp
        fixed = [fixed_command(s) for s in self.scenes]  # None: computed at every step on the logged path (-1)
        commands = [-1 if c is None else int(c) for c in fixed]
        self.commands = torch.as_tensor(commands, dtype=torch.long)  # (B,)
        self._per_step = bool((self.commands < 0).any())
        self._cache: dict[str, torch.Tensor] = {}

    def _on(self, name: str, make: Callable[[], torch.Tensor], device: torch.device, b: int) -> torch.Tensor:
        """``make()`` moved to ``device`` once per batch size and device."""
        t = self._cache.get(name)
        if t is None or t.device != device or t.shape[0] != b:
            t = self._cache[name] = make().to(device)
        return t

    def features(self, state: EnvState, bev: torch.Tensor | None = None) -> PlannerInput[torch.Tensor]:
        """The planner's inputs on the episodes' device: the warped raster or feature map ``(B, C, H, W)`` (or
        ``bev`` when given), the ego status ``(B, 8)`` of the simulated state and the logged agents of the current
        frames as tokens ``(B, A, F)`` in the simulated ego frame, with their mask ``(B, A)``."""
        ep = state.episodes
        rows = torch.arange(ep.batch_size, device=ep.device)
        ego = state.ego.detach()
        boxes, valid = ep.boxes[rows, state.frame], ep.valid[rows, state.frame]  # (B, N, 7), (B, N)
        tokens, mask = agent_tokens_torch(boxes, ep.types, valid, ego[:, :3])
        commands = self._on("commands", self._commands(ep.batch_size), ego.device, ep.batch_size)
        if self._per_step:
            commands = torch.where(commands < 0, command_from_path_torch(ego[:, :3], ep.ego[..., :2]), commands)
        status = ego_status_torch(ego, commands)
        bev = self.env.observe(state) if bev is None else bev
        return PlannerInput(bev=bev.float(), ego_status=status, agents=tokens, agents_mask=mask)

    def _commands(self, b: int) -> Callable[[], torch.Tensor]:
        """The scenes' driving commands (-1: per step), repeated when the state holds ``G`` branches of each scene
        (:func:`bev_warp.env.repeat_state`)."""
        n = len(self.commands)
        if b % n:
            raise ValueError(f"batch of {b} episodes for {n} scenes")
        return lambda: self.commands.repeat_interleave(b // n)

    def noise(self, batch: int, device: torch.device) -> torch.Tensor:
        """The closed-loop adapter's noise of one observation (seeded), the same for every episode."""

        def make() -> torch.Tensor:
            g = torch.Generator().manual_seed(self.seed)
            noise = torch.randn(self.model.initial_noise_shape(1), generator=g)
            return noise.expand(batch, *noise.shape[1:]).contiguous()

        return self._on("noise", make, device, batch)

    def __call__(self, state: EnvState) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(state)
        noise = self.noise(state.episodes.batch_size, state.ego.device)
        with torch.no_grad():
            if self.warp == "features":
                out = self.model.forward_features(feats, noise)
            else:
                out = self.model(feats, noise)
        plans = out.trajectory.double()
        failed = ~torch.isfinite(plans).all(-1).all(-1)
        return torch.where(failed[:, None, None], torch.zeros_like(plans), plans), failed
