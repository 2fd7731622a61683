"""Export learned planners as one self-contained module: TorchScript (required) or ONNX.

The exported module takes plain tensors ``(bev, ego_status, agents, agents_mask, noise)`` and returns
``(trajectory (B,8,3), candidates (B,K,8,3), scores (B,K))``; the fixed-step sampler is unrolled and its
noise is an explicit input, so the exported module reproduces eager outputs for the same inputs. It
runs without diffplan installed (``torch.jit.load`` or ONNX Runtime).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from planners.base import PlanOutput
from simulation.features import AGENT_FEATURES, EGO_STATUS_DIM, FEATURE_KEYS, MAX_AGENTS, NUM_POSES, PlannerInput
from simulation.io import atomic_path

logger = logging.getLogger(__name__)

ExportFormat = Literal["torchscript", "onnx"]
INPUT_NAMES = [*FEATURE_KEYS, "noise"]
OUTPUT_NAMES = ["trajectory", "candidates", "scores"]


class ExportablePlanner(nn.Module):
    """Tensor-in / tensor-out wrapper around a planner with a ``sample(inputs: PlannerInput, noise)`` method."""

    def __init__(self, planner: nn.Module) -> None:
        super().__init__()
        self.planner = planner

    def forward(
        self,
        bev: torch.Tensor,
        ego_status: torch.Tensor,
        agents: torch.Tensor,
        agents_mask: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = PlannerInput(bev=bev, ego_status=ego_status, agents=agents, agents_mask=agents_mask)
        out: PlanOutput = self.planner.sample(inputs, noise)  # type: ignore[operator]
        if out.candidates is None or out.scores is None:
            return (
                out.trajectory,
                out.trajectory.unsqueeze(1),
                out.trajectory.new_zeros(out.trajectory.shape[:1] + (1,)),
            )
        return out.trajectory, out.candidates, out.scores


def example_inputs(
    planner: nn.Module, batch: int = 1, bev_size: tuple[int, int] = (128, 128)
) -> tuple[torch.Tensor, ...]:
    """Dummy inputs of the right shapes for tracing ``planner``."""
    channels = int(getattr(planner.config, "bev_channels", 1))
    noise_shape = planner.initial_noise_shape(batch)  # type: ignore[operator]
    g = torch.Generator().manual_seed(0)
    return (
        torch.rand(batch, channels, *bev_size, generator=g),
        torch.randn(batch, EGO_STATUS_DIM, generator=g),
        torch.randn(batch, MAX_AGENTS, AGENT_FEATURES, generator=g),
        torch.rand(batch, MAX_AGENTS, generator=g) > 0.5,
        torch.randn(noise_shape, generator=g),
    )


def export_planner(
    planner: nn.Module, path: str | Path, fmt: ExportFormat = "torchscript", bev_size: tuple[int, int] = (128, 128)
) -> Path:
    """Trace ``planner`` (in eval mode) and write it to ``path`` atomically; returns the path.

    A JSON sidecar ``<path>.json`` records the input/output names and shapes.
    """
    path = Path(path)
    if fmt not in ("torchscript", "onnx"):
        raise ValueError(f"unknown export format {fmt!r}; use 'torchscript' or 'onnx'")
    wrapper = ExportablePlanner(planner).eval()
    inputs = example_inputs(planner, 1, bev_size)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX / portable form
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapper, inputs, check_trace=False)
            torch.jit.save(traced, str(tmp))
        else:
            dynamic = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
            torch.onnx.export(
                wrapper,
                inputs,
                str(tmp),
                dynamo=False,
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                dynamic_axes=dynamic,
                opset_version=17,
            )
    torch.backends.mha.set_fastpath_enabled(fastpath)
    meta = {
        "format": fmt,
        "inputs": {n: list(t.shape) for n, t in zip(INPUT_NAMES, inputs)},
        "num_poses": NUM_POSES,
        "config": getattr(planner.config, "to_dict", dict)(),
        "raster": getattr(planner, "raster_config", None),
    }
    Path(f"{path}.json").write_text(json.dumps(meta, indent=2, default=str))
    logger.info("exported %s planner to %s", fmt, path)
    return path


def optimize_for_cpu(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """A frozen, CPU-inference-optimised copy of a TorchScript planner (``torch.jit.optimize_for_inference``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the TorchScript API is deprecated upstream, still supported
        return torch.jit.optimize_for_inference(torch.jit.freeze(module.eval()))


class ExportedPlanner:
    """Runs an exported planner file (TorchScript or ONNX) on numpy / torch inputs.

    A TorchScript file is frozen and optimised for CPU inference on load when ``optimize`` is set (the
    default): batch norms folded into the convolutions, oneDNN kernels; outputs agree with the file's
    module to float32 rounding. The file itself stays device-neutral (``torch.jit.load`` runs it anywhere).
    """

    def __init__(self, path: str | Path, optimize: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"exported planner not found: {self.path}")
        self.format: ExportFormat = "onnx" if self.path.suffix == ".onnx" else "torchscript"
        sidecar = Path(f"{self.path}.json")
        self.meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        if self.format == "onnx":
            import onnxruntime as ort

            self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        else:
            self._module = torch.jit.load(str(self.path), map_location="cpu").eval()
            if optimize:
                self._module = optimize_for_cpu(self._module)

    def noise_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of the ``noise`` input for ``batch`` samples (from the export sidecar)."""
        shape = self.meta.get("inputs", {}).get("noise")
        if shape is None:
            raise ValueError(f"{self.path}: no sidecar {self.path}.json with the input shapes")
        return (batch, *shape[1:])

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.format == "onnx":
            used = {i.name for i in self._session.get_inputs()}  # ONNX drops inputs a planner ignores
            feed = {name: t.cpu().numpy() for name, t in zip(INPUT_NAMES, inputs) if name in used}
            return tuple(torch.from_numpy(o) for o in self._session.run(None, feed))
        with torch.no_grad():
            return tuple(self._module(*inputs))
