"""Feature caches of random samples for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulation.features import PlannerInput
from training.data import stack_samples, write_meta, write_npz_atomic

CHANNELS, SIZE = 12, 64


def _samples(
    n: int, rng: np.random.Generator, size: int = SIZE, num_agents: int = 32, curve: float | None = None
) -> tuple[list[PlannerInput[np.ndarray]], list[np.ndarray], list[str]]:
    """Straight-ish trajectories at random speeds; ``curve`` fixes the lateral t^2 term (random when None)."""
    features, targets, tokens = [], [], []
    for i in range(n):
        speed = rng.uniform(0, 12)
        t = np.arange(1, 9) * 0.5
        lateral = rng.uniform(-0.3, 0.3) if curve is None else curve
        traj = np.stack([speed * t, lateral * t**2, np.zeros(8)], -1)
        ego = np.zeros(8, np.float32)
        ego[0], ego[5] = speed, 1.0
        bev = rng.uniform(0, 1, (CHANNELS, size, size)).astype(np.float32)
        agents = rng.normal(size=(num_agents, 11)).astype(np.float32)
        features.append(PlannerInput(bev, ego, agents, rng.uniform(size=num_agents) > 0.5))
        targets.append(traj.astype(np.float32))
        tokens.append(f"{i:016x}")
    return features, targets, tokens


def write_random_cache(
    root: Path,
    splits: dict[str, int],
    size: int = SIZE,
    num_agents: int = 32,
    raster: dict | None = None,
    curve: float | None = None,
) -> Path:
    """A feature cache of random samples under ``root``: ``splits`` maps split -> samples; ``raster`` is the
    raster description stored in the meta file (a real :class:`RasterConfig` dict when planners render)."""
    rng = np.random.default_rng(0)
    write_meta(root, {"bev_shape": [CHANNELS, size, size], "raster": raster or {"channels": CHANNELS}})
    for split, n in splits.items():
        samples = _samples(n, rng, size, num_agents, curve)
        write_npz_atomic(root / split / "shard_00000.npz", stack_samples(*samples))
    return root
