"""BEV-Warp with warped encoder features: how far the learned planner's plans and scores move from re-rendering
and re-encoding at the simulated pose.

A learned planner (checkpoint) runs in BEV-Warp three ways on the same scenarios, to the end of each log
(nuPlan's CLS on the recorded history):

- ``features``: each logged planning frame encoded once at reset, the planner's head on the warped feature map
  (``LearnedPolicy(..., warp="features")``, RAD-2's BEV-Warp);
- ``raster``: the logged raster warped, then encoded at every step (``LearnedPolicy(...)``);
- ``rerender``: the raster re-rendered at the simulated pose (with the simulated ego history) and encoded at every
  step, the reference.

Along the ``features`` rollouts, every step of every running episode also gets the other two observations at the
same simulated state, so the per-step comparison is free of compounding: plan distance (ADE / FDE over the 8
poses, m) of warped features and of warped rasters against re-rendering, by how far the ego is from the log,
the relative error of the warped feature map against the re-encoded one, and the IoU (pixels > 0.5) of the warped
raster against the re-rendered one. Then the per-episode CLS agreement of the three closed loops (and, with
``--vector``, of the vector closed loop, which re-renders too but has its own tracker and history buffer).

Usage: ``python benchmarks/bev_warp_features.py --data-root D --maps-root D/maps --checkpoint C [--scenes 16]``
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import torch

from bev_warp.env import BEVWarpEnv, EnvConfig, EnvState, summary
from bev_warp.episodes import with_history
from bev_warp.policies import LearnedPolicy
from bev_warp.warp import relative_pose
from simulation.features import PlannerInput
from simulation.render import RasterConfig, render_window
from simulation.types import LogWindow

DEVIATION_BINS = (0.0, 0.25, 0.5, 1.0, 2.0, np.inf)


def rerendered(scene: LogWindow, map_api: Any, state: EnvState, i: int, raster: RasterConfig) -> np.ndarray:
    """``(C, H, W)`` raster of episode ``i`` rendered at its simulated pose, with its simulated ego history."""
    ego, ts, agents, lights, n = with_history(scene)
    ego = ego.copy()
    f, ci = int(state.frame[i]), scene.current_index
    ego[n + ci : n + ci + f + 1] = state.history[i, : f + 1].numpy()
    return render_window(map_api, ego, ts, agents, lights, scene.route_roadblock_ids, n + ci + f, raster)


class RerenderPolicy(LearnedPolicy):
    """The reference: re-render at the simulated pose and re-encode at every step (one raster per episode; the
    environment's own warped rasters are not used)."""

    def __init__(self, model: Any, env: BEVWarpEnv, scenes: list[LogWindow], maps: list[Any], raster: Any) -> None:
        super().__init__(model, env, scenes)
        self.maps, self.raster = maps, raster

    def features(self, state: EnvState, bev: torch.Tensor | None = None) -> PlannerInput[torch.Tensor]:
        fresh = [rerendered(s, m, state, i, self.raster) for i, (s, m) in enumerate(zip(self.scenes, self.maps))]
        return super().features(state, torch.as_tensor(np.stack(fresh)))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(C,)`` intersection and union counts of pixels > 0.5 of ``(C, H, W)`` rasters, stacked ``(2, C)``."""
    x, y = a > 0.5, b > 0.5
    return np.stack([(x & y).sum((1, 2)), (x | y).sum((1, 2))])


def per_step(
    model: Any,
    scenes: list[LogWindow],
    maps: list[Any],
    raster: RasterConfig,
    features_env: BEVWarpEnv,
    raster_env: BEVWarpEnv,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Run the ``features`` closed loop; at every step compare its plans, feature map and warped raster with the
    re-rendered ones. Returns the per-(step, episode) records, the episode summary and the CPU seconds."""
    state = features_env.reset(scenes, maps)
    raster_eps = raster_env.reset(scenes, maps).episodes
    policy = LearnedPolicy(model, features_env, scenes, warp="features")
    rows: dict[str, list[Any]] = {k: [] for k in ("ade_f", "fde_f", "ade_r", "fde_r", "feat_err", "lat", "head")}
    iou = np.zeros((2, len(raster.channels)))
    seconds = 0.0
    while not bool(state.done.all()):
        t0 = time.process_time()
        plans, failed = policy(state)
        seconds += time.process_time() - t0
        feats = policy.features(state)
        noise = policy.noise(len(scenes), state.ego.device)
        warped_raster = raster_env.observe(dataclasses.replace(state, episodes=raster_eps))
        running = [i for i in range(len(scenes)) if not bool(state.done[i])]
        fresh = np.stack([rerendered(scenes[i], maps[i], state, i, raster) for i in range(len(scenes))])
        with torch.no_grad():
            encoded = model.encode_bev(torch.as_tensor(fresh))
            ref = model.forward_features(dataclasses.replace(feats, bev=encoded), noise).trajectory.double()
            via_raster = model(dataclasses.replace(feats, bev=warped_raster), noise).trajectory.double()
        dev = relative_pose(state.episodes.ego[torch.arange(len(scenes)), state.frame, :3], state.ego[:, :3])
        for i in running:
            d_f = (plans[i, :, :2] - ref[i, :, :2]).norm(dim=-1)
            d_r = (via_raster[i, :, :2] - ref[i, :, :2]).norm(dim=-1)
            rows["ade_f"].append(float(d_f.mean()))
            rows["fde_f"].append(float(d_f[-1]))
            rows["ade_r"].append(float(d_r.mean()))
            rows["fde_r"].append(float(d_r[-1]))
            rows["feat_err"].append(float((feats.bev[i] - encoded[i]).norm() / encoded[i].norm().clamp_min(1e-9)))
            rows["lat"].append(float(dev[i, :2].norm()))
            rows["head"].append(float(np.degrees(abs(float(dev[i, 2])))))
            iou += _iou(warped_raster[i].numpy(), fresh[i])
        t0 = time.process_time()
        state, *_ = features_env.step(state, plans, failed)
        seconds += time.process_time() - t0
    out = {k: np.asarray(v) for k, v in rows.items()}
    out["iou"] = np.where(iou[1] > 0, iou[0] / np.maximum(iou[1], 1), np.nan)
    return out, {k: v.numpy().astype(float) for k, v in summary(state).items()}, seconds


def closed_loop(env: BEVWarpEnv, policy: Any, scenes: list[LogWindow], maps: list[Any]) -> dict[str, np.ndarray]:
    """Per-episode summary of a BEV-Warp closed loop run to the end (and its CPU seconds, reset included)."""
    t0 = time.process_time()
    state = env.reset(scenes, maps)
    while not bool(state.done.all()):
        state, *_ = env.step(state, *policy(state))
    out = {k: v.numpy().astype(float) for k, v in summary(state).items()}
    out["seconds"] = np.asarray(time.process_time() - t0)
    return out


def print_per_step(rows: dict[str, np.ndarray], channels: tuple[str, ...]) -> None:
    """Plan distances by deviation from the log, the feature error and the raster IoU."""
    print(f"per step, {len(rows['ade_f'])} (step, episode) pairs of the warped-features rollouts")
    print(
        f"{'distance from the log':>24s} {'n':>5s} {'ADE feat':>9s} {'FDE feat':>9s} {'ADE rast':>9s} {'FDE rast':>9s} "
        f"{'feat err':>9s} {'P(ADE<.5) f/r':>14s}"
    )
    for lo, hi in zip(DEVIATION_BINS[:-1], DEVIATION_BINS[1:]):
        m = (rows["lat"] >= lo) & (rows["lat"] < hi)
        if not m.any():
            continue
        near_f, near_r = np.mean(rows["ade_f"][m] < 0.5), np.mean(rows["ade_r"][m] < 0.5)
        print(
            f"{f'{lo:.2f}-{hi:.2f} m':>24s} {int(m.sum()):5d} {rows['ade_f'][m].mean():9.3f} "
            f"{rows['fde_f'][m].mean():9.3f} {rows['ade_r'][m].mean():9.3f} {rows['fde_r'][m].mean():9.3f} "
            f"{rows['feat_err'][m].mean():9.3f} {near_f:6.2f}/{near_r:.2f}"
        )
    print(
        f"{'all':>24s} {len(rows['lat']):5d} {rows['ade_f'].mean():9.3f} {rows['fde_f'].mean():9.3f} "
        f"{rows['ade_r'].mean():9.3f} {rows['fde_r'].mean():9.3f} {rows['feat_err'].mean():9.3f}"
    )
    print(
        "IoU warped vs re-rendered raster along the rollouts: "
        + ", ".join(f"{c} {v:.2f}" for c, v in zip(channels, rows["iou"]) if np.isfinite(v))
    )


def print_cls(loops: dict[str, dict[str, np.ndarray]], reference: str = "rerender") -> None:
    """Mean CLS of every loop; against the reference: same CLS share, Spearman, mean |difference|."""
    from benchmarks.bev_warp_fidelity import METRICS, rho

    ref = loops[reference]
    names = ", ".join(k[:5] for k in METRICS[:-1])
    print(f"{'loop':>12s} {'CLS':>6s} {'same':>5s} {'rho':>5s} {'|dCLS|':>7s} | same per metric ({names})")
    for name, w in loops.items():
        same = " ".join(f"{np.mean(np.abs(w[k] - ref[k]) < 1e-3):5.2f}" for k in METRICS[:-1])
        print(
            f"{name:>12s} {w['score'].mean():6.3f} {np.mean(np.abs(w['score'] - ref['score']) < 1e-3):5.2f} "
            f"{rho(w['score'], ref['score']):5.2f} {np.abs(w['score'] - ref['score']).mean():7.3f} | {same}"
        )


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bev_warp_fidelity import load_data
    from planners.checkpoint import learned_planner, load_planner
    from simulation.features import raster_from_meta

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--maps-root")
    parser.add_argument("--split", default="synth_test")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vector", action="store_true", help="also the vector closed loop (slow)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    _, scenes, maps = load_data(
        args.data_root, args.maps_root or f"{args.data_root}/maps", args.split, 0, args.scenes, args.seed
    )
    model = load_planner(args.checkpoint)
    raster = raster_from_meta(getattr(model, "raster_config", None))
    config = EnvConfig(raster=raster, terminate_on=())
    features_env = BEVWarpEnv(dataclasses.replace(config, observation="features"), encoder=model.encode_bev)
    raster_env = BEVWarpEnv(dataclasses.replace(config, observation="raster"))
    t0 = time.process_time()
    rows, features_summary, step_s = per_step(model, scenes, maps, raster, features_env, raster_env)
    print(f"features rollouts: {time.process_time() - t0:.0f} s CPU with the comparisons, {step_s:.1f} s policy + step")
    print_per_step(rows, raster.channels)
    loops = {"features": features_summary}
    loops["raster"] = closed_loop(raster_env, LearnedPolicy(model, raster_env, scenes), scenes, maps)
    loops["rerender"] = closed_loop(raster_env, RerenderPolicy(model, raster_env, scenes, maps, raster), scenes, maps)
    if args.vector:
        from benchmarks.bev_warp_fidelity import PlannerSpec, vector_loop

        spec = PlannerSpec("vector", lambda: learned_planner(args.checkpoint), lambda e, s, m: None)
        loops["vector"] = vector_loop(scenes, maps, spec)
    print_cls(loops)
    print(f"total {time.perf_counter() - start:.0f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
