"""A tiny generator + discriminator pair for the closed-loop RL tests."""

from __future__ import annotations

from pathlib import Path

import torch

from planners.checkpoint import CheckpointRecord, write
from planners.discriminator import Discriminator, DiscriminatorConfig
from planners.reranked import RerankedConfig, RerankedPlanner, generator_fields
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from simulation.features import PLANNER_RASTER


def tiny_generator(seed: int = 0) -> TruncatedDiffusionPlanner:
    """A 4-anchor truncated generator (d 32; straight anchors at 2, 5, 8 and 11 m/s) on the planner raster."""
    torch.manual_seed(seed)
    t = torch.arange(1, 9) * 0.5
    anchors = torch.stack([torch.outer(torch.tensor([2.0, 5.0, 8.0, 11.0]), t), torch.zeros(4, 8)], -1)
    generator = TruncatedDiffusionPlanner(TruncatedDiffusionConfig(d_model=32, num_anchors=4), anchors)
    generator.raster_config = PLANNER_RASTER.to_dict()  # type: ignore[assignment]
    return generator


def tiny_pair(seed: int = 0, num_samples: int = 4) -> RerankedPlanner:
    """:func:`tiny_generator` and a d-32 discriminator: 4 own + ``num_samples`` candidates."""
    generator = tiny_generator(seed)
    disc = Discriminator(DiscriminatorConfig(d_model=32, dropout=0.0))
    config = RerankedConfig(**generator_fields(generator), discriminator=disc.config.to_dict(), num_samples=num_samples)
    pair = RerankedPlanner(generator, disc, config)
    pair.raster_config = generator.raster_config
    return pair


def write_data_root(root: Path, split: str) -> Path:
    """``root`` with one fixture log under ``data/splits/<split>/``, the fixture maps under ``maps/`` and
    :func:`tiny_pair` as ``pair.ckpt``: what the closed-loop commands read."""
    from simulation.datasets.nuplan_db import write_log
    from simulation.datasets.testing import make_log_data
    from simulation.maps.testing import write_fixture_maps

    log = make_log_data()
    write_log(log, root / "data" / "splits" / split / f"{log.log_name}.db")
    write_fixture_maps(root / "maps")
    write_pair(root / "pair.ckpt")
    return root


def write_pair(path: Path, seed: int = 0) -> Path:
    """:func:`tiny_pair` as a planner record (what a supervised discriminator run's checkpoint holds)."""
    return write(path, CheckpointRecord.of(tiny_pair(seed)))
