"""Reward-model data: the preference cache (:mod:`training.prefs`) joined with the feature cache by scene token.

A sample is one scene: its planner features and expert plan (the imitation sample of :mod:`training.data`), its
candidates and their rule-based totals, and its labelled pairs. A batch pads the candidates and the pairs::

    features    PlannerInput batch (B scenes)      targets {"trajectory": (B, 8, 3)}      tokens list[str]
    candidates  (B, K, 8, 3) float32 (0 where padded)      candidate_mask (B, K) bool      total (B, K) float32
    winner, loser (B, P) long (0 where padded)             pair_mask (B, P) bool           margin (B, P) float32
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from training.data import FeatureCacheDataset, FeatureCacheError, collate
from training.prefs import PrefsCacheError, ScenePrefs, read_split
from training.rl_data import EpochShuffleSampler

logger = logging.getLogger(__name__)


class PrefsDataset(Dataset):
    """The scenes of a split that have both features and a preference file with at least one pair."""

    def __init__(self, prefs_dir: str | Path, feature_cache_dir: str | Path, split: str, version: str | None = None,
                 max_scenes: int | None = None) -> None:  # fmt: skip
        self.features = FeatureCacheDataset(feature_cache_dir, split)
        prefs = read_split(prefs_dir, split)
        wrong = sorted({p.protocol for p in prefs.values()} - ({version} if version else set()))
        if version is not None and wrong:
            raise PrefsCacheError(f"{Path(prefs_dir) / split}: labels of protocol {wrong}, expected {version}")
        rows = {str(t): i for i, t in enumerate(self.features.arrays["tokens"])}
        kept = [t for t, p in prefs.items() if t in rows and len(p.pairs)]
        if len(kept) < len(prefs):
            logger.info("%s: %d of %d preference scenes used (features and pairs)", split, len(kept), len(prefs))
        if not kept:
            raise PrefsCacheError(f"{Path(prefs_dir) / split}: no scene with pairs and features in {feature_cache_dir}")
        kept = kept[:max_scenes]
        self.prefs: list[ScenePrefs] = [prefs[t] for t in kept]
        self.rows = [rows[t] for t in kept]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = self.prefs[i]
        a, b = p.pairs.a.astype(np.int64), p.pairs.b.astype(np.int64)
        a_wins = p.pairs.label.astype(bool)
        return {
            **self.features[self.rows[i]],
            "candidates": torch.from_numpy(p.candidates.astype(np.float32)),
            "total": torch.from_numpy(p.total.astype(np.float32)),
            "winner": torch.from_numpy(np.where(a_wins, a, b)),
            "loser": torch.from_numpy(np.where(a_wins, b, a)),
            "margin": torch.from_numpy(p.pairs.margin.astype(np.float32)),
        }


def _pad(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(n_i, ...)`` tensors into ``(B, max n, ...)`` (zeros) and the ``(B, max n)`` validity mask."""
    n = max(t.shape[0] for t in tensors)
    out = tensors[0].new_zeros((len(tensors), n, *tensors[0].shape[1:]))
    mask = torch.zeros(len(tensors), n, dtype=torch.bool)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


def prefs_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The imitation batch of the scenes plus their padded candidates and pairs (module docstring)."""
    keys = ("candidates", "total", "winner", "loser", "margin")
    out = collate([{k: v for k, v in s.items() if k not in keys} for s in samples])
    out["candidates"], out["candidate_mask"] = _pad([s["candidates"] for s in samples])
    out["total"], _ = _pad([s["total"] for s in samples])
    out["winner"], out["pair_mask"] = _pad([s["winner"] for s in samples])
    out["loser"], _ = _pad([s["loser"] for s in samples])
    out["margin"], _ = _pad([s["margin"] for s in samples])
    return out


class PrefsDataModule(pl.LightningDataModule):
    """Train / val scenes of a preference cache with their features.

    Args:
        prefs_dir: the preference cache (``diffplan data prefs --out``; one folder per split).
        feature_cache_dir: the feature cache the scenes' features come from.
        train_split, val_split: split names.
        batch_size, num_workers: loader settings (scenes per batch).
        version: the labels' protocol the files must hold (``None``: any).
        max_scenes: at most this many scenes per split.
        shuffle_seed: seed of the training order (it depends only on it and the epoch: exact resume).
    """

    def __init__(
        self,
        prefs_dir: str = "outputs/demo/prefs",
        feature_cache_dir: str = "outputs/demo/cache",
        train_split: str = "synth_train",
        val_split: str = "synth_val",
        batch_size: int = 8,
        num_workers: int = 0,
        version: str | None = None,
        max_scenes: int | None = None,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        self.prefs_dir, self.feature_cache_dir = Path(prefs_dir), Path(feature_cache_dir)
        self.splits = {"train": train_split, "val": val_split}
        self.batch_size, self.num_workers = batch_size, num_workers
        self.version, self.max_scenes, self.shuffle_seed = version, max_scenes, shuffle_seed
        self._datasets: dict[str, PrefsDataset] = {}

    def dataset(self, stage: str) -> PrefsDataset:
        if stage not in self._datasets:
            try:
                self._datasets[stage] = PrefsDataset(
                    self.prefs_dir, self.feature_cache_dir, self.splits[stage], self.version, self.max_scenes
                )
            except FeatureCacheError as err:
                raise PrefsCacheError(str(err)) from None
        return self._datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        for name in self.splits if stage in (None, "fit") else ("val",):
            self.dataset(name)

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(stage)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.shuffle_seed) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=prefs_collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
