"""Scenarios for closed-loop training in BEV-Warp: nuPlan scenarios (:class:`~simulation.types.Scenario`, 10 Hz
windows with their history) of a split's logs, each with its map.

A batch is ``{"scenes": list[Scenario], "maps": list[MapAPI], "tokens": list[str]}``; BEV-Warp builds its
episodes from it at reset. The logs are read once per split (at set-up); maps are loaded once per name.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from simulation.types import Scenario
from training.rl_data import EpochShuffleSampler

logger = logging.getLogger(__name__)


class ScenarioDataset(Dataset):
    """Scenarios with their maps (``(scenario, map)`` per item)."""

    def __init__(self, scenarios: list[Scenario], maps: dict[str, Any]) -> None:
        self.scenarios, self.maps = scenarios, maps

    def __len__(self) -> int:
        return len(self.scenarios)

    def __getitem__(self, i: int) -> tuple[Scenario, Any]:
        scenario = self.scenarios[i]
        return scenario, self.maps[scenario.map_name]


def scenario_collate(items: list[tuple[Scenario, Any]]) -> dict[str, Any]:
    """``{"scenes", "maps", "tokens"}`` lists in batch order."""
    return {"scenes": [s for s, _ in items], "maps": [m for _, m in items], "tokens": [s.token for s, _ in items]}


def load_scenarios(
    data_root: str,
    maps_root: str,
    split: str,
    duration_s: float,
    max_scenarios: int | None,
    spacing_s: float,
    stride: int = 1,
) -> ScenarioDataset:
    """The split's scenarios (every frame a candidate start, at least ``spacing_s`` apart, ``duration_s`` long),
    every ``stride``-th, the first ``max_scenarios`` of those in log order, and the maps they drive on."""
    from simulation.datasets.nuplan_db import read_log
    from simulation.datasets.scenes import ScenarioFilter, extract_scenarios
    from simulation.datasets.splits import split_log_paths
    from simulation.maps.api import MapAPI

    sf = ScenarioFilter(include_unknown=True, duration_s=duration_s, offset_s=0.0, timestamp_threshold_s=spacing_s)
    scenarios: list[Scenario] = []
    for path in split_log_paths(data_root, split):
        if max_scenarios is not None and len(scenarios) >= max_scenarios * stride:
            break
        scenarios += extract_scenarios(read_log(path), sf)
    scenarios = scenarios[::stride][:max_scenarios]
    if not scenarios:
        raise ValueError(f"{split}: no scenario of {duration_s} s in the logs under {data_root}")
    maps = {name: MapAPI.load(maps_root, name) for name in sorted({s.map_name for s in scenarios})}
    logger.info("%s: %d scenarios of %.1f s", split, len(scenarios), duration_s)
    return ScenarioDataset(scenarios, maps)


class ScenarioDataModule(pl.LightningDataModule):
    """Train / val scenarios for closed-loop RL.

    Args:
        data_root, maps_root: nuPlan-format logs and maps.
        train_split, val_split: split names (``configs/data/splits``).
        batch_size: start states per training step (each branched into a group of rollouts by the module).
        duration_s: scenario length (the episode ends at the log's end when the horizon is longer).
        spacing_s: minimum time between the starts of two scenarios of a log.
        max_scenarios: keep at most this many training scenarios (``None``: all); max_val_scenarios: validation.
        stride: keep every ``stride``-th scenario of a split (spread over more logs), before the limits.
        shuffle_seed: seed of the training order (it depends only on the seed and the epoch: exact resume).
    """

    def __init__(
        self,
        data_root: str = "outputs/demo/data",
        maps_root: str = "outputs/demo/data/maps",
        train_split: str = "synth_train",
        val_split: str = "synth_val",
        batch_size: int = 4,
        duration_s: float = 8.0,
        spacing_s: float = 8.0,
        max_scenarios: int | None = None,
        max_val_scenarios: int | None = 8,
        stride: int = 1,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_root, self.maps_root = data_root, maps_root
        self.splits = {"train": train_split, "val": val_split}
        self.limits = {"train": max_scenarios, "val": max_val_scenarios}
        self.batch_size, self.duration_s, self.spacing_s = batch_size, duration_s, spacing_s
        self.shuffle_seed, self.stride = shuffle_seed, stride
        self._datasets: dict[str, ScenarioDataset] = {}

    def dataset(self, stage: str) -> ScenarioDataset:
        if stage not in self._datasets:
            self._datasets[stage] = load_scenarios(
                self.data_root, self.maps_root, self.splits[stage], self.duration_s, self.limits[stage], self.spacing_s,
                self.stride,
            )  # fmt: skip
        return self._datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        for name in self.splits if stage in (None, "fit") else ("val",):
            self.dataset(name)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Scenarios and maps stay on the host (BEV-Warp moves what it builds to its device)."""
        return batch

    def train_dataloader(self) -> DataLoader:
        data = self.dataset("train")
        sampler = EpochShuffleSampler(len(data), self.shuffle_seed)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, collate_fn=scenario_collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val"), batch_size=self.batch_size, collate_fn=scenario_collate)
