"""Planner checkpoints: the record round-trips, bad files are refused with the file named, pickles never run,
and loading needs no Lightning."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from planners.checkpoint import (
    CHECKPOINT_KEY,
    CheckpointError,
    CheckpointRecord,
    learned_planner,
    load_planner,
    masked_planner,
    read,
    validate,
    write,
)
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from simulation.features import PlannerInput
from simulation.render import RasterConfig

RASTER = RasterConfig(height_px=64, width_px=64, resolution_m=1.0, behind_m=16.0, channels=("drivable_area", "ego"))


def _planner() -> TruncatedDiffusionPlanner:
    torch.manual_seed(0)
    config = TruncatedDiffusionConfig(bev_channels=2, d_model=32, num_anchors=5)
    planner = TruncatedDiffusionPlanner(config, torch.randn(5, 8, 2) * 10).eval()
    planner.raster_config = RASTER.to_dict()  # type: ignore[assignment]
    return planner


def _inputs() -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return PlannerInput(
        bev=torch.rand(2, 2, 64, 64, generator=g),
        ego_status=torch.randn(2, 8, generator=g),
        agents=torch.randn(2, 32, 11, generator=g),
        agents_mask=torch.rand(2, 32, generator=g) > 0.5,
    )


def test_record_round_trip_rebuilds_the_same_planner(tmp_path: Path) -> None:
    planner = _planner()
    path = write(tmp_path / "p.ckpt", CheckpointRecord.of(planner))
    assert not list(tmp_path.glob(".*.tmp"))
    record = read(path)
    assert record.planner_class == "planners.truncated_diffusion.TruncatedDiffusionPlanner"
    assert record.planner_config == planner.config.to_dict() and record.raster == RASTER.to_dict()
    assert set(record.state_dict) == set(planner.state_dict())
    loaded = load_planner(path, expect_class="TruncatedDiffusionPlanner")
    assert not loaded.training and loaded.raster_config == RASTER.to_dict()
    noise = torch.randn(planner.initial_noise_shape(2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = planner(_inputs(), noise), loaded(_inputs(), noise)
    torch.testing.assert_close(got.trajectory, want.trajectory, rtol=0, atol=0)
    closed_loop = learned_planner(str(path), name="x", seed=4)
    assert closed_loop.raster == RASTER and closed_loop.name == "x" and closed_loop.seed == 4


def test_validate_names_the_file_and_the_problem(tmp_path: Path) -> None:
    good = {"planner_class": "planners.ego_mlp.EgoStatusMLP", "planner_config": None, "raster": None}
    with pytest.raises(CheckpointError, match=r"f\.ckpt: not a diffplan planner checkpoint"):
        validate({"state_dict": {}}, "f.ckpt")
    with pytest.raises(CheckpointError, match="is not a class of the planners package"):
        validate({CHECKPOINT_KEY: {**good, "planner_class": "os.system"}, "state_dict": {}}, "f.ckpt")
    with pytest.raises(CheckpointError, match="planner_config must be a dict"):
        validate({CHECKPOINT_KEY: {**good, "planner_config": [1]}, "state_dict": {}}, "f.ckpt")
    with pytest.raises(CheckpointError, match="no state_dict"):
        validate({CHECKPOINT_KEY: good}, "f.ckpt")
    with pytest.raises(CheckpointError, match="not tensors"):
        validate({CHECKPOINT_KEY: good, "state_dict": {"planner.w": 1.0}}, "f.ckpt")
    missing = {CHECKPOINT_KEY: {**good, "planner_class": "planners.ego_mlp.Nothing"}, "state_dict": {}}
    torch.save(missing, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match=r"missing\.ckpt: planner class planners\.ego_mlp\.Nothing not found"):
        load_planner(tmp_path / "missing.ckpt")
    torch.save({CHECKPOINT_KEY: good, "state_dict": {"planner.w": torch.zeros(1)}}, tmp_path / "w.ckpt")
    with pytest.raises(CheckpointError, match=r"w\.ckpt: weights do not match"):
        load_planner(tmp_path / "w.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt: "):
        load_planner(tmp_path / "junk.ckpt")
    with pytest.raises(FileNotFoundError):
        load_planner(tmp_path / "absent.ckpt")


class _Malicious:
    """Unpickling this object would create (and truncate) ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return builtins.open, (str(self.target), "w")


@pytest.mark.parametrize("loader", [load_planner, learned_planner, masked_planner])
def test_a_pickle_that_runs_code_is_refused(tmp_path: Path, loader: Any) -> None:
    target = tmp_path / "written_by_the_pickle"
    path = tmp_path / "evil.ckpt"
    header = {"planner_class": "planners.ego_mlp.EgoStatusMLP", "planner_config": None, "raster": None}
    torch.save({CHECKPOINT_KEY: header, "state_dict": {}, "payload": _Malicious(target)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: refused to load"):
        loader(str(path))
    assert not target.exists()


def test_loading_a_checkpoint_does_not_import_lightning(tmp_path: Path) -> None:
    path = write(tmp_path / "p.ckpt", CheckpointRecord.of(_planner()))
    script = textwrap.dedent(
        f"""
        import sys
        from planners.checkpoint import learned_planner, load_planner
        load_planner({str(path)!r})
        learned_planner({str(path)!r})
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
        print("LOADED", heavy)
        sys.exit(1 if heavy else 0)
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "LOADED []" in done.stdout
