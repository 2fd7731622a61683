"""``diffplan bench`` with learned planners: planner=learned (checkpoint) and planner=exported (TorchScript)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from simulation.datasets.nuplan_db import write_log
from simulation.datasets.testing import make_log_data
from simulation.evaluation.cli import compose_config
from simulation.features import PLANNER_RASTER
from simulation.maps.testing import write_fixture_maps
from training.cli import main as diffplan
from training.data import PlannerDataModule
from training.imitation import PlannerModule


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_learned_planner_configs_compose_and_resolve() -> None:
    for name, param, target in (
        ("learned", "ckpt_path", "planners.checkpoint.learned_planner"),
        ("exported", "path", "planners.checkpoint.exported_planner"),
    ):
        cfg = compose_config([f"planner={name}"])
        assert cfg.planner.name == name and cfg.planner._target_ == target and callable(get_object(target))
        assert OmegaConf.is_missing(cfg.planner, param)  # the file must be given
        given = compose_config([f"planner={name}", f"planner.{param}=/runs/x"])
        assert given.planner[param] == "/runs/x" and given.output_dir == f"outputs/bench/navsim_v1/{name}/synth_test"


def _plans(run: Path) -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()[1:]]
    return {r["token"]: np.asarray(r["plan"]) for r in rows if r.get("valid")}


def test_bench_runs_checkpointed_and_exported_planner(feature_cache: Path, tmp_path: Path) -> None:
    # A planner trained for one step, checkpointed with the raster a real feature cache records.
    torch.manual_seed(0)
    config = TruncatedDiffusionConfig(bev_channels=12, d_model=32, inference_start_timestep=8, num_inference_steps=2)
    module = PlannerModule(TruncatedDiffusionPlanner(config))
    trainer = pl.Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(module, PlannerDataModule(cache_dir=str(feature_cache), batch_size=8))
    module.planner.raster_config = PLANNER_RASTER.to_dict()  # type: ignore[assignment]
    ckpt, exported = tmp_path / "last.ckpt", tmp_path / "planner.pt"
    trainer.save_checkpoint(ckpt)
    assert diffplan(["export", "--ckpt", str(ckpt), "--out", str(exported)]) == 0
    # Fixture log and map laid out as `diffplan data synth` writes them.
    log = make_log_data()
    write_log(log, tmp_path / "data" / "splits" / "synth_test" / f"{log.log_name}.db")
    write_fixture_maps(tmp_path / "maps")
    common = [
        "protocol=navsim_v1", f"data_root={tmp_path / 'data'}", f"maps_root={tmp_path / 'maps'}", "max_scenes=3",
        f"metric_cache_dir={tmp_path / 'metric_cache'}", "progress=false", "report.num_worst=1",
    ]  # fmt: skip
    runs = {"exported": f"planner.path={exported}", "learned": f"planner.ckpt_path={ckpt}"}
    for name, path_arg in runs.items():
        argv = ["bench", *common, f"planner={name}", path_arg, f"output_dir={tmp_path / name}"]
        assert diffplan(argv) == 0
        scores = pd.read_csv(tmp_path / name / "scores.csv")
        assert len(scores) == 4 and scores["token"].iloc[-1] == "average" and scores["valid"].iloc[:3].all()
        assert scores["score"].between(0.0, 1.0).all()
    # The exported module drives exactly as the eager planner restored from the checkpoint.
    eager, traced = _plans(tmp_path / "learned"), _plans(tmp_path / "exported")
    assert len(eager) == 3 and eager.keys() == traced.keys()
    for token, plan in eager.items():
        np.testing.assert_allclose(traced[token], plan, atol=2e-4)
    learned, exported_scores = (pd.read_csv(tmp_path / n / "scores.csv") for n in ("learned", "exported"))
    np.testing.assert_allclose(learned["score"], exported_scores["score"], atol=1e-3)
