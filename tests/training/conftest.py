"""A tiny random feature cache shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import stack_samples, write_meta, write_npz_atomic

CHANNELS, SIZE = 12, 64


def _samples(n: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(n):
        speed = rng.uniform(0, 12)
        t = np.arange(1, 9) * 0.5
        traj = np.stack([speed * t, rng.uniform(-0.3, 0.3) * t**2, np.zeros(8)], -1)
        ego = np.zeros(8, np.float32)
        ego[0], ego[5] = speed, 1.0
        out.append(
            {
                "bev": rng.uniform(0, 1, (CHANNELS, SIZE, SIZE)).astype(np.float32),
                "ego_status": ego,
                "agents": rng.normal(size=(32, 11)).astype(np.float32),
                "agents_mask": rng.uniform(size=32) > 0.5,
                "trajectory": traj.astype(np.float32),
                "tokens": np.array(f"{i:016x}"),
            }
        )
    return out


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    write_meta(root, {"bev_shape": [CHANNELS, SIZE, SIZE], "raster": {"channels": CHANNELS}})
    for split, n in (("synth_train", 48), ("synth_val", 16), ("synth_test", 16)):
        write_npz_atomic(root / split / "shard_00000.npz", stack_samples(_samples(n, rng)))
    return root
