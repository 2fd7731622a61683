"""Export parity: TorchScript and ONNX reproduce eager outputs for the same inputs and noise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from planners.export import ExportedPlanner, example_inputs, export_planner
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from simulation.features import PlannerInput


@pytest.fixture(scope="module")
def planner() -> TruncatedDiffusionPlanner:
    torch.manual_seed(0)
    cfg = TruncatedDiffusionConfig(bev_channels=4, d_model=32, num_anchors=5)
    return TruncatedDiffusionPlanner(cfg, torch.randn(5, 8, 2) * 10).eval()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_parity(planner: TruncatedDiffusionPlanner, tmp_path: Path, fmt: str) -> None:
    path = export_planner(planner, tmp_path / ("p.onnx" if fmt == "onnx" else "p.pt"), fmt, bev_size=(64, 64))
    assert path.exists() and Path(f"{path}.json").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    exported = ExportedPlanner(path)
    inputs = example_inputs(planner, batch=3, bev_size=(64, 64))
    with torch.no_grad():
        eager = planner.sample(PlannerInput(*inputs[:4]), inputs[4])
    traj, cands, scores = exported(*inputs)
    torch.testing.assert_close(traj, eager.trajectory, atol=1e-5, rtol=0)
    torch.testing.assert_close(cands, eager.candidates, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores, eager.scores, atol=1e-5, rtol=0)


def test_masked_planner_torchscript_parity(tmp_path: Path) -> None:
    from planners.masked_diffusion import MaskedDiffusionConfig, MaskedDiffusionPlanner

    torch.manual_seed(0)
    planner = MaskedDiffusionPlanner(
        MaskedDiffusionConfig(bev_channels=4, d_model=32, num_layers=1, num_steps=4)
    ).eval()
    path = export_planner(planner, tmp_path / "masked.pt", "torchscript", bev_size=(64, 64))
    inputs = example_inputs(planner, batch=2, bev_size=(64, 64))
    with torch.no_grad():
        eager = planner.sample(PlannerInput(*inputs[:4]))
    torch.testing.assert_close(ExportedPlanner(path)(*inputs)[0], eager.trajectory, atol=1e-5, rtol=0)


def test_export_rejects_unknown_format(planner: TruncatedDiffusionPlanner, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        export_planner(planner, tmp_path / "p.bin", "tflite")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        ExportedPlanner(tmp_path / "missing.pt")
