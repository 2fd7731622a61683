"""A thin gymnasium-style adapter over :class:`bev_warp.env.BEVWarpEnv` for ``env.step(action)`` users.

The adapter is batched like the environment (one row per scene): ``reset()`` returns ``(obs, info)`` and
``step(action)`` returns ``(obs, reward, terminated, truncated, info)`` as in gymnasium's vector API, with
``terminated`` for collisions / leaving the road / deviating / a failed planner and ``truncated`` at the end
of the log. Actions are ``(B, 8, 3)`` plans in the current rear-axle frames (numpy or torch); NaN rows mark a
failed planner for that episode only. Observations are the warped rasters (or features) as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
import torch

from bev_warp.env import BEVWarpEnv, DoneReason, EnvConfig, EnvState
from simulation.types import NUM_TRAJECTORY_POSES, LogWindow


class BEVWarpGym:
    """``BEVWarpGym(scenes, maps).reset()`` then ``.step(action)`` until ``terminated | truncated`` everywhere."""

    def __init__(
        self,
        scenes: Sequence[LogWindow],
        maps: Sequence[Any] | Any,
        config: EnvConfig | None = None,
        device: str | torch.device = "cpu",
        encoder: Any = None,
    ) -> None:
        self.env = BEVWarpEnv(config, device, encoder)
        self.scenes, self.maps = list(scenes), maps
        self.num_envs = len(self.scenes)
        self.state: EnvState | None = None
        self.action_space = gymnasium.spaces.Box(-np.inf, np.inf, (self.num_envs, NUM_TRAJECTORY_POSES, 3), np.float64)
        self.observation_space: gymnasium.spaces.Box | None = None

    def _obs(self) -> np.ndarray | None:
        if self.env.config.observation == "none" or self.state is None:
            return None
        return self.env.observe(self.state).cpu().numpy()

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start every episode again (``seed`` / ``options``: API compatibility; the env is deterministic)."""
        self.state = self.env.reset(self.scenes, self.maps)
        obs = self._obs()
        if obs is not None:
            self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, obs.shape, np.float32)
        return obs, {"tokens": self.state.episodes.tokens}

    def step(self, action: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One replanning interval for every episode; returns numpy arrays ``(B,)`` for reward / flags."""
        if self.state is None:
            raise RuntimeError("BEVWarpGym.step called before reset()")
        plans = torch.as_tensor(np.asarray(action, dtype=np.float64), device=self.env.device)
        failed = ~torch.isfinite(plans.reshape(plans.shape[0], -1)).all(-1) if plans.dim() == 3 else None
        self.state, reward, done, info = self.env.step(self.state, plans, planner_failed=failed)
        reason = info["reason"].cpu().numpy()
        truncated = done.cpu().numpy() & (reason == DoneReason.END_OF_LOG)
        terminated = done.cpu().numpy() & ~truncated
        out: dict[str, Any] = {
            "rewards": {k: v.cpu().numpy() for k, v in info["rewards"].items()},
            "reason": reason,
        }
        if "episode" in info:  # when an episode ended in this step
            out["episode"] = {k: v.cpu().numpy() for k, v in info["episode"].items()}
        return self._obs(), reward.cpu().numpy(), terminated, truncated, out
