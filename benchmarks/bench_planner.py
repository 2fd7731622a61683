"""Planner latency and throughput: eager, TorchScript and ONNX Runtime, batch 1 and 64, in one run.

Prints a table (ms per call, scenes per second) for EgoStatusMLP, the vanilla (20-step) diffusion
baseline, the truncated (2-step) diffusion planner and the masked diffusion planner, plus the
truncated / vanilla speed ratio. ``torchscript`` runs the exported file as ``torch.jit.load`` gives it;
``ts-optimized`` is what :class:`planners.export.ExportedPlanner` runs on CPU (frozen, batch norms folded,
oneDNN kernels). Randomly initialised weights: speed does not depend on training.

    .venv/bin/python benchmarks/bench_planner.py [--device cuda] [--repeats 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from planners.ego_mlp import EgoStatusMLP
from planners.export import ExportedPlanner, example_inputs, export_planner
from planners.masked_diffusion import MaskedDiffusionConfig, MaskedDiffusionPlanner
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from simulation.features import PLANNER_RASTER, PlannerInput

BEV = (PLANNER_RASTER.height_px, PLANNER_RASTER.width_px)


def planners() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    anchors = torch.randn(20, 8, 2) * 10
    return {
        "ego_mlp": EgoStatusMLP(),
        "vanilla_diffusion_20": TruncatedDiffusionPlanner(
            TruncatedDiffusionConfig(truncated=False, absolute_output=True, backbone_stage=-2), anchors
        ),
        "truncated_diffusion_2": TruncatedDiffusionPlanner(
            TruncatedDiffusionConfig(backbone_stage=-2, anchor_offset=True), anchors
        ),
        "masked_diffusion_8": MaskedDiffusionPlanner(MaskedDiffusionConfig(num_steps=8)),
    }


class Timing(NamedTuple):
    """Median seconds per call: wall clock, and CPU time of this process (less sensitive to other jobs)."""

    wall: float
    cpu: float


def timeit(fn: Callable[[], object], repeats: int, device: str) -> Timing:
    """Median wall and CPU seconds per call after two warm-up calls."""
    for _ in range(2):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return Timing(sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2])


def bench_one(name: str, model: torch.nn.Module, repeats: int, device: str, tmp: Path) -> list[tuple]:
    rows = []
    model = model.eval().to(device)
    paths = {
        "torchscript": export_planner(model.cpu(), tmp / f"{name}.pt", "torchscript", bev_size=BEV),
        "onnx": export_planner(model.cpu(), tmp / f"{name}.onnx", "onnx", bev_size=BEV) if device == "cpu" else None,
    }
    model = model.to(device)
    for batch in (1, 64):
        inputs = tuple(t.to(device) for t in example_inputs(model, batch, BEV))
        feats = PlannerInput(*inputs[:4])
        with torch.no_grad():
            eager = timeit(partial(model.sample, feats, inputs[4]), repeats, device)
        rows.append((name, "eager", batch, eager))
        scripted = torch.jit.load(str(paths["torchscript"]), map_location=device)
        with torch.no_grad():
            rows.append((name, "torchscript", batch, timeit(partial(scripted, *inputs), repeats, device)))
        if device == "cpu":  # what ExportedPlanner (and `diffplan bench planner=exported`) runs: frozen + oneDNN
            optimized = ExportedPlanner(paths["torchscript"])
            rows.append((name, "ts-optimized", batch, timeit(partial(optimized, *inputs), repeats, device)))
        if paths["onnx"] is not None:
            ort = ExportedPlanner(paths["onnx"])
            rows.append((name, "onnx", batch, timeit(partial(ort, *inputs), repeats, device)))
    return rows


def bench_samplers(models: dict[str, torch.nn.Module], repeats: int, device: str) -> list[tuple]:
    """The sampling loop alone (scene encoded once), for the truncated and vanilla diffusion planners."""
    rows = []
    for name in ("vanilla_diffusion_20", "truncated_diffusion_2"):
        model = models[name].eval().to(device)
        for batch in (1, 64):
            inputs = tuple(t.to(device) for t in example_inputs(model, batch, BEV))
            with torch.no_grad():
                context = model.encode(PlannerInput(*inputs[:4]))
                rows.append(
                    (name, "sampler", batch, timeit(partial(model.denoise, context, inputs[4]), repeats, device))
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 = the single-core figures)")
    parser.add_argument("--planners", nargs="+", help="only these (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[tuple] = []
    models = planners()
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            if args.planners is None or name in args.planners:
                rows.extend(bench_one(name, model, args.repeats, args.device, Path(tmp)))
    rows.extend(bench_samplers(models, args.repeats, args.device))
    print(f"device={args.device} threads={args.threads} raster={BEV}")
    print(f"{'planner':<24}{'format':<13}{'batch':>6}{'ms/call':>10}{'cpu ms':>10}{'scenes/s':>11}")
    for name, fmt, batch, t in rows:
        print(f"{name:<24}{fmt:<13}{batch:>6}{t.wall * 1e3:>10.2f}{t.cpu * 1e3:>10.2f}{batch / t.wall:>11.1f}")
    lookup = {(n, f, b): t.wall for n, f, b, t in rows}
    for fmt in ("sampler", "eager", "torchscript"):
        for batch in (1, 64):
            if ("vanilla_diffusion_20", fmt, batch) not in lookup or (
                "truncated_diffusion_2",
                fmt,
                batch,
            ) not in lookup:
                continue
            ratio = lookup[("vanilla_diffusion_20", fmt, batch)] / lookup[("truncated_diffusion_2", fmt, batch)]
            print(f"truncated (2 steps) vs vanilla (20 steps), {fmt}, batch {batch}: {ratio:.1f}x faster")


if __name__ == "__main__":
    main()
