"""RL rollout of the truncated diffusion planner: the scene encoded once vs once per sample, in one run.

Times ``rollout`` (no gradients) and ``log_prob`` + backward (frozen encoder) for ``B`` scenes with ``N`` samples
each under DiffusionDriveV2's schedule (10 steps), against a baseline that tiles every scene ``N`` times and
encodes each copy (what calling the planner on a ``B * N`` batch would do). Randomly initialised weights.

    .venv/bin/python benchmarks/bench_policy.py [--device cuda] [--scenes 4] [--per-anchor 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from planners.truncated_policy import RolloutConfig, freeze_encoder
from simulation.features import PLANNER_RASTER, PlannerInput


def _inputs(b: int, device: torch.device) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    bev = torch.rand(b, PLANNER_RASTER.num_channels, PLANNER_RASTER.height_px, PLANNER_RASTER.width_px, generator=g)
    return PlannerInput(
        bev=bev.to(device),
        ego_status=torch.randn(b, 8, generator=g).to(device),
        agents=torch.randn(b, 30, 11, generator=g).to(device),
        agents_mask=(torch.rand(b, 30, generator=g) > 0.5).to(device),
    )


def _timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best wall time of ``repeats`` calls after one warm-up, in ms."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--per-anchor", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = TruncatedDiffusionConfig(bev_channels=PLANNER_RASTER.num_channels, anchor_offset=True)
    planner = TruncatedDiffusionPlanner(cfg, torch.randn(cfg.num_anchors, 8, 2) * 10).to(device)
    planner.rollout_config = RolloutConfig.ddv2()
    freeze_encoder(planner)
    b, n = args.scenes, cfg.num_anchors * args.per_anchor
    inputs = _inputs(b, device)
    rollout = planner.rollout(inputs, n)

    def encode_tiled() -> None:  # the baseline's extra cost: every sample re-encodes its scene
        with torch.no_grad():
            tiled = PlannerInput(*(x.repeat_interleave(n, 0) for x in inputs.tensors()))
            planner.encode(tiled)

    def score() -> None:
        planner.zero_grad(set_to_none=True)
        (planner.log_prob(inputs, rollout) * rollout.step_mask).sum().backward()

    encode_once = _timed(lambda: planner.encode(inputs), args.repeats, device)
    tiled = _timed(encode_tiled, args.repeats, device)
    sample = _timed(lambda: planner.rollout(inputs, n), args.repeats, device)
    grad = _timed(score, args.repeats, device)
    print(f"{b} scenes x {n} samples, 10 steps, {device}")
    print(f"  encode once              {encode_once:9.1f} ms")
    print(f"  encode per sample (B*N)  {tiled:9.1f} ms  ({tiled / encode_once:.1f}x)")
    print(f"  rollout                  {sample:9.1f} ms  (baseline {sample - encode_once + tiled:.1f} ms, ", end="")
    print(f"{(sample - encode_once + tiled) / sample:.1f}x slower)")
    print(f"  log_prob + backward      {grad:9.1f} ms")


if __name__ == "__main__":
    main()
