"""BEV-Warp fidelity: warped vs re-rendered rasters, and closed-loop agreement with the vector simulator.

1. Per raster channel, IoU (pixels > 0.5) between the logged raster warped to a deviated ego pose and the
   raster re-rendered at that pose, over the pixels the logged raster covers, for lateral / longitudinal /
   heading deviations (fixture-map scenarios, several frames each). The ego channel is drawn, not warped.
2. Closed loop, per rule-based planner: BEV-Warp (warped rasters, torch tracker, its own checks) against the
   vector closed loop (re-rendered rasters, numpy tracker, nuPlan's CLS metrics) on the same scenarios:
   collision rate, mean progress ratio, mean score, and Spearman rank correlation of per-scene progress / score.

Usage: ``python benchmarks/bev_warp_fidelity.py [--scenes 16] [--frames 61]``
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from scipy.stats import spearmanr

from bev_warp.env import BEVWarpEnv, EnvConfig, summary
from bev_warp.testing import fixture_map_api, fixture_scenario
from bev_warp.warp import RasterGeometry, relative_pose, warp_bev
from planners.features import PLANNER_RASTER
from rewards.nuplan_metrics import score_simulation
from simulation.closed_loop import ClosedLoopSimulator
from simulation.protocols import Observation
from simulation.render import render_observation, render_window
from simulation.types import Scenario, StateIndex, Trajectory

DEVIATIONS = {
    "lateral_m": [0.25, 0.5, 1.0, 2.0],
    "longitudinal_m": [0.5, 1.0, 2.0, 4.0],
    "heading_deg": [2.0, 5.0, 10.0, 20.0],
}


def _deviated(pose: np.ndarray, kind: str, amount: float) -> np.ndarray:
    x, y, h = pose
    if kind == "lateral_m":
        return np.array([x - amount * math.sin(h), y + amount * math.cos(h), h])
    if kind == "longitudinal_m":
        return np.array([x + amount * math.cos(h), y + amount * math.sin(h), h])
    return np.array([x, y, h + math.radians(amount)])


def _render_at(scene: Scenario, frame: int, pose: np.ndarray) -> np.ndarray:
    states = scene.ego.states.copy()
    states[frame, :3] = pose
    return render_window(
        fixture_map_api(),
        states,
        scene.timestamps_us,
        scene.agents,
        scene.traffic_lights,
        scene.route_roadblock_ids,
        frame,
        PLANNER_RASTER,
    )


def raster_iou(scenes: list[Scenario], frames: list[int], mode: str) -> dict[tuple[str, float], np.ndarray]:
    """Mean IoU per channel ``(C,)`` (NaN where no case had a non-empty union) per deviation."""
    geom = RasterGeometry.from_raster_config(PLANNER_RASTER)
    ego_c = PLANNER_RASTER.channels.index("ego")
    out = {}
    for kind, amounts in DEVIATIONS.items():
        for amount in amounts:
            inter = np.zeros(len(PLANNER_RASTER.channels))
            union = np.zeros(len(PLANNER_RASTER.channels))
            for scene in scenes:
                for f in frames:
                    log_pose = scene.ego.states[f, :3]
                    logged = torch.as_tensor(_render_at(scene, f, log_pose))[None]
                    pose = _deviated(log_pose, kind, amount)
                    dev = relative_pose(torch.tensor(log_pose)[None], torch.tensor(pose)[None]).float()
                    warped = warp_bev(logged, dev, geom, mode=mode)[0].numpy()  # type: ignore[arg-type]
                    cover = warp_bev(torch.ones_like(logged[:, :1]), dev, geom)[0, 0].numpy() > 0.999
                    warped[ego_c] = logged[0, ego_c].numpy()
                    truth = _render_at(scene, f, pose)
                    a, b = (warped > 0.5) & cover, (truth > 0.5) & cover
                    inter += (a & b).sum((1, 2))
                    union += (a | b).sum((1, 2))
            out[(kind, amount)] = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return out


# -------------------------------------------------------------------------------------------------- planners


def _cv_plan(speed: float) -> np.ndarray:
    t = np.arange(1, 9) * 0.5
    return np.stack([speed * t, np.zeros(8), np.zeros(8)], -1)


def raster_gap(raster: np.ndarray) -> float:
    """Metres from the ego front to the nearest vehicle pixel in a 3 m corridor ahead (inf when none)."""
    cfg = PLANNER_RASTER
    veh = raster[cfg.channels.index("vehicles")] > 0.5
    u0, v0 = cfg.ego_pixel
    half = int(round(1.5 / cfg.resolution_m))
    rows = np.arange(int(v0))  # rows above the rear axle: ahead
    band = veh[rows][:, int(u0) - half : int(u0) + half + 1].any(1)
    if not band.any():
        return math.inf
    return (v0 - rows[band].max()) * cfg.resolution_m - 4.049


def cruise_speed(speed: float, gap: float, target: float = 9.0) -> float:
    """Speed of the next 4 s: towards ``target``, slowed to keep a 2 s gap."""
    safe = max(0.0, (gap - 3.0) / 2.0)
    return float(min(target, safe, speed + 1.0))


class VectorPlanner:
    """Wraps a rule for the vector closed loop (re-rendered rasters)."""

    def __init__(self, rule: str) -> None:
        self.rule, self.name = rule, rule

    def plan(self, observation: Observation) -> Trajectory:
        v = float(observation.ego_history.states[-1, StateIndex.VX])
        if self.rule == "raster_cruise":
            v = cruise_speed(v, raster_gap(render_observation(observation, PLANNER_RASTER)))
        return Trajectory(_cv_plan(v))


def warp_plans(rule: str, state_ego: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    speeds = state_ego[:, StateIndex.VX].numpy()
    if rule == "raster_cruise":
        speeds = np.array([cruise_speed(float(v), raster_gap(o)) for v, o in zip(speeds, obs.numpy(), strict=True)])
    return torch.tensor(np.stack([_cv_plan(float(v)) for v in speeds]))


def closed_loop(scenes: list[Scenario], rule: str) -> dict[str, np.ndarray]:
    env = BEVWarpEnv(EnvConfig())
    state = env.reset(scenes, fixture_map_api())
    while not bool(state.done.all()):
        state, _, _, _ = env.step(state, warp_plans(rule, state.ego, env.observe(state)))
    warp = {k: v.numpy().astype(float) for k, v in summary(state).items()}
    sim = ClosedLoopSimulator(replan_interval=5)
    vec = [score_simulation(s, sim.run(s, VectorPlanner(rule), fixture_map_api()), fixture_map_api()) for s in scenes]
    return {
        "warp_collision": warp["collision"],
        "vec_collision": np.array([1.0 - m["no_ego_at_fault_collisions"] for m in vec]) > 0,
        "warp_progress": warp["progress_ratio"],
        "vec_progress": np.array([m["ego_progress_along_expert_route"] for m in vec]),
        "warp_score": warp["score"],
        "vec_score": np.array([m["score"] for m in vec]),
    }


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--frames", type=int, default=61)
    parser.add_argument("--iou-scenes", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    iou_scenes = [fixture_scenario(500 + i, args.frames) for i in range(args.iou_scenes)]
    names = PLANNER_RASTER.channels
    for mode in ("bilinear", "nearest"):
        table = raster_iou(iou_scenes, [0, args.frames // 2], mode)
        print(f"IoU warped ({mode}) vs re-rendered (pixels > 0.5, region the logged raster covers); '-' = empty")
        print(f"{'deviation':>20s} " + " ".join(f"{n[:9]:>9s}" for n in names))
        for (kind, amount), row in table.items():
            cells = " ".join("        -" if np.isnan(v) else f"{v:9.3f}" for v in row)
            print(f"{kind + ' ' + str(amount):>20s} {cells}")
        print()
    scenes = [fixture_scenario(i, args.frames) for i in range(args.scenes)]
    print(f"closed loop on {len(scenes)} fixture scenarios ({args.frames} frames at 10 Hz), replanning at 2 Hz")
    print(
        f"{'planner':>16s} {'coll warp':>9s} {'coll vec':>9s} {'prog warp':>9s} {'prog vec':>9s} "
        f"{'score warp':>10s} {'score vec':>9s} {'rho prog':>8s} {'rho score':>9s} {'coll agree':>10s}"
    )
    for rule in ("constant_velocity", "raster_cruise"):
        r = closed_loop(scenes, rule)
        print(
            f"{rule:>16s} {r['warp_collision'].mean():9.3f} {r['vec_collision'].mean():9.3f} "
            f"{r['warp_progress'].mean():9.3f} {r['vec_progress'].mean():9.3f} {r['warp_score'].mean():10.3f} "
            f"{r['vec_score'].mean():9.3f} {_rho(r['warp_progress'], r['vec_progress']):8.3f} "
            f"{_rho(r['warp_score'], r['vec_score']):9.3f} "
            f"{(r['warp_collision'].astype(bool) == r['vec_collision']).mean():10.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
