"""Feature cache and the LightningDataModule that reads it.

Cache layout (plain ``.npz`` shards, written atomically)::

    <cache_dir>/meta.json                 raster config, shapes, format version
    <cache_dir>/<split>/shard_00000.npz   the features by simulation.features.FEATURE_KEYS (bev (n,C,H,W)
                                          uint8, ego_status (n,8), agents (n,N,F), agents_mask (n,N)),
                                          trajectory (n,8,3), tokens (n,)

The raster is stored as ``uint8`` (channel values in [0, 1] quantised to 1/255, :func:`simulation.features.
quantize_bev`) and turned back into float32 in the dataset. A sample is ``{"features": PlannerInput, "targets":
{"trajectory": ...}, "tokens": str}``; :func:`collate` batches them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from simulation.features import BEV_KEY, FEATURE_KEYS, PlannerInput, batch, cache_arrays, from_cache_arrays
from simulation.io import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
TARGET_KEYS = ("trajectory",)


class FeatureCacheError(ValueError):
    """A missing, incomplete or incompatible feature cache."""


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` via a temporary file and a rename."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def write_meta(cache_dir: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(cache_dir / "meta.json", json.dumps({"version": CACHE_VERSION, **meta}, indent=2, sort_keys=True))


def read_meta(cache_dir: Path) -> dict[str, Any]:
    path = Path(cache_dir) / "meta.json"
    if not path.exists():
        raise FeatureCacheError(f"{cache_dir}: no feature cache here (missing meta.json); run `diffplan data cache`")
    meta = json.loads(path.read_text())
    if meta.get("version") != CACHE_VERSION:
        raise FeatureCacheError(f"{path}: cache format {meta.get('version')} != {CACHE_VERSION}; rebuild the cache")
    return meta


def stack_samples(
    features: Sequence[PlannerInput[np.ndarray]], targets: Sequence[np.ndarray], tokens: Sequence[str]
) -> dict[str, np.ndarray]:
    """Shard arrays of ``n`` samples: the features (bev quantised to uint8), ``trajectory`` ``(n, 8, 3)`` targets
    and ``tokens`` ``(n,)``."""
    return {
        **cache_arrays(features),
        "trajectory": np.stack(targets),
        "tokens": np.stack([np.asarray(t) for t in tokens]),
    }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch dataset samples: features with :func:`simulation.features.batch`, the rest with ``default_collate``."""
    rest = default_collate([{k: v for k, v in s.items() if k != "features"} for s in samples])
    return {"features": batch([s["features"] for s in samples]), **rest}


class FeatureCacheDataset(Dataset):
    """All shards of one split, or of several concatenated in the order given (a list: the logged scenes and the
    closed-loop states of ``diffplan data dagger``, say), loaded into memory."""

    def __init__(self, cache_dir: str | Path, split: str | Sequence[str]) -> None:
        self.cache_dir = Path(cache_dir)
        self.meta = read_meta(self.cache_dir)
        splits = [split] if isinstance(split, str) else list(split)
        if not splits:
            raise FeatureCacheError(f"{self.cache_dir}: no split given")
        shards = []
        for name in splits:
            found = sorted((self.cache_dir / name).glob("shard_*.npz"))
            if not found:
                raise FeatureCacheError(f"{self.cache_dir}: split {name!r} has no shards")
            shards += found
        parts: dict[str, list[np.ndarray]] = {}
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as data:
                    for key in (*FEATURE_KEYS, *TARGET_KEYS, "tokens"):
                        parts.setdefault(key, []).append(data[key])
            except (OSError, ValueError, KeyError) as err:
                raise FeatureCacheError(f"{shard}: unreadable shard ({err})") from None
        self.arrays = {k: np.concatenate(v) for k, v in parts.items()}
        expected = tuple(self.meta["bev_shape"])
        shape = self.arrays[BEV_KEY].shape[1:]
        if shape != expected:
            raise FeatureCacheError(f"{self.cache_dir}/{'+'.join(splits)}: bev {shape} != meta {expected}")

    def __len__(self) -> int:
        return int(self.arrays["tokens"].shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        a = self.arrays
        targets = {"trajectory": torch.from_numpy(a["trajectory"][i].astype(np.float32))}
        return {"features": from_cache_arrays(a, i), "targets": targets, "tokens": str(a["tokens"][i])}


class PlannerDataModule(pl.LightningDataModule):
    """Train / val / test splits of a feature cache.

    Args:
        cache_dir: folder written by ``diffplan data cache``.
        train_split, val_split, test_split: split folder names inside the cache; a list concatenates several.
        batch_size, num_workers: loader settings; memory is pinned when a GPU is present.
    """

    def __init__(
        self,
        cache_dir: str = "outputs/demo/cache",
        train_split: str | list[str] = "synth_train",
        val_split: str | list[str] = "synth_val",
        test_split: str | list[str] = "synth_test",
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.cache_dir = Path(cache_dir)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._datasets: dict[str, FeatureCacheDataset] = {}

    @property
    def meta(self) -> dict[str, Any]:
        return read_meta(self.cache_dir)

    def dataset(self, stage: str) -> FeatureCacheDataset:
        if stage not in self._datasets:
            self._datasets[stage] = FeatureCacheDataset(self.cache_dir, self.splits[stage])
        return self._datasets[stage]

    def train_trajectories(self) -> np.ndarray:
        """``(M, 8, 3)`` target trajectories of the training split (for anchors)."""
        return self.dataset("train").arrays["trajectory"]

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(stage),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
