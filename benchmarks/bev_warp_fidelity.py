"""BEV-Warp fidelity: warped vs re-rendered rasters, and closed-loop agreement with the vector simulator.

1. Per raster channel, IoU (pixels > 0.5) between the logged raster warped to a deviated ego pose and the
   raster re-rendered at that pose, over the pixels the logged raster covers, for lateral / longitudinal /
   heading deviations. The ego channel is drawn, not warped.
2. Closed loop, per planner: BEV-Warp (warped rasters, torch tracker, nuPlan's CLS metrics in torch) against
   the vector closed loop (:mod:`simulation.closed_loop`: re-rendered rasters, numpy tracker, nuPlan's CLS
   metrics in numpy) on the same scenarios, both run to the end of the log as nuPlan does (BEV-Warp's own
   termination rules off unless ``--terminate-on``): mean CLS of both loops, Spearman rank correlation of the
   per-scenario CLS, the share of scenarios where both loops give the same value of each metric, and at the end
   the Spearman rank correlation of the planners' mean CLS (the planner ranking).

Two data sources:

- fixture map (default): hand-built eastbound scenarios, rules ``constant_velocity`` and ``raster_cruise``;
- ``--data-root DIR --maps-root DIR --split synth_test``: nuPlan-format logs (e.g. the synthetic city). IoU on
  NAVSIM scenes at their current frame; closed loop on sampled nuPlan scenarios (15 s at 10 Hz) with
  ``constant_velocity``, ``idm``, ``pdm_closed``, ``log_replay`` and, with ``--checkpoint`` (one or more), the
  learned planners, batched on warped rasters in BEV-Warp and re-rendering in the vector loop.

Usage: ``python benchmarks/bev_warp_fidelity.py [--scenes 16] [--frames 61]``
or ``python benchmarks/bev_warp_fidelity.py --data-root D --maps-root D/maps --split synth_test --checkpoint C1 C2``
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from bev_warp.env import BEVWarpEnv, EnvConfig, EnvState, summary
from bev_warp.episodes import with_history
from bev_warp.policies import LearnedPolicy, VectorPolicy
from bev_warp.testing import fixture_map_api, fixture_scenario
from bev_warp.warp import RasterGeometry, relative_pose, warp_bev
from rewards.nuplan_metrics import CLS_MULTIPLIERS, CLS_WEIGHTS, score_simulation
from simulation.closed_loop import ClosedLoopSimulator
from simulation.features import PLANNER_RASTER
from simulation.maps.protocol import MapProtocol
from simulation.protocols import Observation, Planner
from simulation.render import render_observation, render_window
from simulation.types import LogWindow, StateIndex, Trajectory

DEVIATIONS = {
    "lateral_m": [0.25, 0.5, 1.0, 2.0],
    "longitudinal_m": [0.5, 1.0, 2.0, 4.0],
    "heading_deg": [2.0, 5.0, 10.0, 20.0],
}

Case = tuple[LogWindow, Any, int]  # scene, its map, window frame


def _deviated(pose: np.ndarray, kind: str, amount: float) -> np.ndarray:
    x, y, h = pose
    if kind == "lateral_m":
        return np.array([x - amount * math.sin(h), y + amount * math.cos(h), h])
    if kind == "longitudinal_m":
        return np.array([x + amount * math.cos(h), y + amount * math.sin(h), h])
    return np.array([x, y, h + math.radians(amount)])


def _render_at(scene: LogWindow, map_api: MapProtocol, frame: int, pose: np.ndarray) -> np.ndarray:
    ego, ts, agents, lights, n = with_history(scene)
    ego = ego.copy()
    ego[n + frame, :3] = pose
    return render_window(map_api, ego, ts, agents, lights, scene.route_roadblock_ids, n + frame, PLANNER_RASTER)


def raster_iou(cases: Sequence[Case], mode: str) -> dict[tuple[str, float], np.ndarray]:
    """Mean IoU per channel ``(C,)`` (NaN where no case had a non-empty union) per deviation."""
    geom = RasterGeometry.from_raster_config(PLANNER_RASTER)
    ego_c = PLANNER_RASTER.channels.index("ego")
    logged_rasters = [torch.as_tensor(_render_at(s, m, f, s.ego.states[f, :3]))[None] for s, m, f in cases]
    out = {}
    for kind, amounts in DEVIATIONS.items():
        for amount in amounts:
            inter = np.zeros(len(PLANNER_RASTER.channels))
            union = np.zeros(len(PLANNER_RASTER.channels))
            for (scene, map_api, f), logged in zip(cases, logged_rasters, strict=True):
                log_pose = scene.ego.states[f, :3]
                pose = _deviated(log_pose, kind, amount)
                dev = relative_pose(torch.tensor(log_pose)[None], torch.tensor(pose)[None]).float()
                warped = warp_bev(logged, dev, geom, mode=mode)[0].numpy()  # type: ignore[arg-type]
                cover = warp_bev(torch.ones_like(logged[:, :1]), dev, geom)[0, 0].numpy() > 0.999
                warped[ego_c] = logged[0, ego_c].numpy()
                truth = _render_at(scene, map_api, f, pose)
                a, b = (warped > 0.5) & cover, (truth > 0.5) & cover
                inter += (a & b).sum((1, 2))
                union += (a | b).sum((1, 2))
            out[(kind, amount)] = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return out


def print_iou(cases: Sequence[Case]) -> None:
    names = PLANNER_RASTER.channels
    for mode in ("bilinear", "nearest"):
        table = raster_iou(cases, mode)
        print(f"IoU warped ({mode}) vs re-rendered (pixels > 0.5, region the logged raster covers); '-' = empty")
        print(f"{'deviation':>20s} " + " ".join(f"{n[:9]:>9s}" for n in names))
        for (kind, amount), row in table.items():
            cells = " ".join("        -" if np.isnan(v) else f"{v:9.3f}" for v in row)
            print(f"{kind + ' ' + str(amount):>20s} {cells}")
        print(flush=True)


# ------------------------------------------------------------------------------------------- fixture rules


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


class RulePlanner:
    """A fixture rule for the vector closed loop (re-rendered rasters)."""

    def __init__(self, rule: str) -> None:
        self.rule, self.name = rule, rule

    def plan(self, observation: Observation) -> Trajectory:
        v = float(observation.ego_history.states[-1, StateIndex.VX])
        if self.rule == "raster_cruise":
            v = cruise_speed(v, raster_gap(render_observation(observation, PLANNER_RASTER)))
        return Trajectory(_cv_plan(v))


def rule_policy(rule: str, env: BEVWarpEnv) -> Callable[[EnvState], tuple[torch.Tensor, torch.Tensor | None]]:
    """The same rule in BEV-Warp, reading the warped rasters."""

    def policy(state: EnvState) -> tuple[torch.Tensor, torch.Tensor | None]:
        speeds = state.ego[:, StateIndex.VX].numpy()
        if rule == "raster_cruise":
            obs = env.observe(state).numpy()
            speeds = np.array([cruise_speed(float(v), raster_gap(o)) for v, o in zip(speeds, obs, strict=True)])
        return torch.tensor(np.stack([_cv_plan(float(v)) for v in speeds])), None

    return policy


# ----------------------------------------------------------------------------------------------- closed loop


@dataclass
class PlannerSpec:
    """A planner in both loops: ``vector()`` makes a Planner, ``warp(env, scenes, maps)`` a BEV-Warp policy."""

    name: str
    vector: Callable[[], Planner]
    warp: Callable[[BEVWarpEnv, list[LogWindow], list[Any]], Callable[[EnvState], Any]]
    observation: str = "none"
    raster: Any = PLANNER_RASTER


def rule_specs() -> list[PlannerSpec]:
    """The fixture rules."""
    return [
        PlannerSpec(r, lambda r=r: RulePlanner(r), lambda env, s, m, r=r: rule_policy(r, env), obs)  # type: ignore[misc]
        for r, obs in (("constant_velocity", "none"), ("raster_cruise", "raster"))
    ]


def learned_spec(checkpoint: str) -> PlannerSpec:
    """A learned planner from a checkpoint, named after its run folder (``train/<run>/lightning_logs/...``)."""
    from pathlib import Path

    from planners.checkpoint import learned_planner, load_planner
    from simulation.features import raster_from_meta

    parts = Path(checkpoint).parts
    name = parts[parts.index("lightning_logs") - 1] if "lightning_logs" in parts else Path(checkpoint).stem
    model = load_planner(checkpoint)
    raster = raster_from_meta(getattr(model, "raster_config", None))
    return PlannerSpec(
        name,
        lambda: learned_planner(checkpoint, name=name),
        lambda env, s, m: LearnedPolicy(model, env, s),
        "raster",
        raster,
    )


def data_specs(checkpoints: Sequence[str]) -> list[PlannerSpec]:
    """constant_velocity, idm, pdm_closed, log_replay and the learned planners of ``checkpoints``."""
    from planners.rule_based import ConstantVelocityPlanner, IDMPlanner, LogReplayPlanner, PDMClosedPlanner

    specs = [
        PlannerSpec(cls.name, cls, lambda env, s, m, cls=cls: VectorPolicy(cls, s, m))  # type: ignore[misc]
        for cls in (ConstantVelocityPlanner, IDMPlanner, PDMClosedPlanner, LogReplayPlanner)
    ]
    return specs + [learned_spec(c) for c in checkpoints]


METRICS = (*CLS_MULTIPLIERS, *CLS_WEIGHTS, "score")
_RESETS: dict[tuple[Any, ...], EnvState] = {}


def warp_loop(scenes: list[LogWindow], maps: list[Any], spec: PlannerSpec, config: EnvConfig) -> dict[str, Any]:
    """Per-scenario BEV-Warp CLS metrics (arrays ``(N,)``), end reasons and the CPU seconds (reset included; one
    reset per observation layout, reused by every planner: the state is immutable)."""
    env = BEVWarpEnv(replace(config, observation=spec.observation, raster=spec.raster))
    t0 = time.process_time()
    key = (spec.observation, spec.raster, id(scenes))
    if key not in _RESETS:
        _RESETS[key] = env.reset(scenes, maps)
    state = _RESETS[key]
    policy = spec.warp(env, scenes, maps)
    while not bool(state.done.all()):
        state, _, _, _ = env.step(state, *policy(state))
    out = {k: v.numpy().astype(float) for k, v in summary(state).items()}
    out["seconds"] = time.process_time() - t0
    return out


def vector_loop(scenes: list[LogWindow], maps: list[Any], spec: PlannerSpec) -> dict[str, Any]:
    """Per-scenario nuPlan CLS metrics of the vector closed loop (replanning at 2 Hz) and the CPU seconds."""
    t0 = time.process_time()
    sim = ClosedLoopSimulator(replan_interval=5)
    vec = [score_simulation(s, sim.run(s, spec.vector(), m), m) for s, m in zip(scenes, maps, strict=True)]  # type: ignore[arg-type]
    out: dict[str, Any] = {k: np.array([m[k] for m in vec]) for k in METRICS}
    out["seconds"] = time.process_time() - t0
    return out


def rho(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (NaN when either side is constant)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def agreement_row(name: str, w: dict[str, Any], v: dict[str, Any]) -> str:
    """One table line: mean CLS of both loops, rank correlation, per-metric agreement, times, end reasons."""
    reasons = np.bincount(w["reason"].astype(int), minlength=6)
    same = " ".join(f"{np.mean(np.abs(w[k] - v[k]) < 1e-3):5.2f}" for k in METRICS[:-1])
    return (
        f"{name:>22s} {w['score'].mean():6.3f} {v['score'].mean():6.3f} {rho(w['score'], v['score']):6.2f} "
        f"{np.mean(np.abs(w['score'] - v['score']) < 1e-3):6.2f} | {same} | {w['seconds']:6.1f} {v['seconds']:6.1f}"
        f"  ends: coll {reasons[1]} off-road {reasons[2]} dev {reasons[3]} log {reasons[4]} failed {reasons[5]}"
    )


def print_agreement(scenes: list[LogWindow], maps: list[Any], specs: list[PlannerSpec], config: EnvConfig) -> None:
    """Both loops per planner; the planner ranking agreement (Spearman over the planners' mean CLS) at the end."""
    short = " ".join(f"{k[:5]:>5s}" for k in METRICS[:-1])
    print(
        f"{'planner':>22s} {'CLS wp':>6s} {'CLS vc':>6s} {'rho':>6s} {'same':>6s} | {short} | warp s  vec s", flush=True
    )
    means: dict[str, tuple[float, float]] = {}
    for spec in specs:
        v = vector_loop(scenes, maps, spec)
        w = warp_loop(scenes, maps, spec, config)
        print(agreement_row(spec.name, w, v), flush=True)
        means[spec.name] = (float(w["score"].mean()), float(v["score"].mean()))
    if len(means) > 2:
        w_mean, v_mean = (np.array([x[i] for x in means.values()]) for i in (0, 1))
        order = sorted(means, key=lambda k: -means[k][1])
        print("planners by vector CLS: " + ", ".join(f"{k} {means[k][1]:.3f}/{means[k][0]:.3f}" for k in order))
        print(f"planner ranking by mean CLS, Spearman BEV-Warp vs vector: {rho(w_mean, v_mean):.3f}")


# --------------------------------------------------------------------------------------------------- sources


def load_data(
    data_root: str, maps_root: str, split: str, iou_scenes: int, scenarios: int, seed: int
) -> tuple[list[Case], list[LogWindow], list[Any]]:
    """IoU cases (NAVSIM scenes at their current frame) and closed-loop scenarios with their maps, sampled."""
    from simulation.datasets.nuplan_db import read_log
    from simulation.datasets.scenes import ScenarioFilter, SceneFilter, extract_scenarios, extract_scenes
    from simulation.datasets.splits import split_log_paths
    from simulation.maps.api import MapAPI

    scenes: list[LogWindow] = []
    windows: list[LogWindow] = []
    for path in split_log_paths(data_root, split):
        log = read_log(path)
        scenes += extract_scenes(log, SceneFilter())
        windows += extract_scenarios(log, ScenarioFilter(include_unknown=True, timestamp_threshold_s=5.0))

    def sample(items: list[LogWindow], n: int, stream: int) -> list[LogWindow]:
        rng = np.random.default_rng([seed, stream])  # one stream per sample: --iou-scenes leaves the scenarios be
        return [items[i] for i in sorted(rng.choice(len(items), size=min(n, len(items)), replace=False))]

    def map_of(scene: LogWindow) -> Any:
        return MapAPI.load(maps_root, scene.map_name)

    cases = [(s, map_of(s), s.current_index) for s in sample(scenes, iou_scenes, 0)]
    picked = sample(windows, scenarios, 1)
    print(f"{split}: {len(scenes)} scenes, {len(windows)} scenarios; sampled {len(cases)} / {len(picked)}")
    return cases, picked, [map_of(s) for s in picked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=16, help="closed-loop scenarios")
    parser.add_argument("--frames", type=int, default=61, help="fixture scenario length (10 Hz frames)")
    parser.add_argument("--iou-scenes", type=int, default=4)
    parser.add_argument("--data-root", help="nuPlan-format data (splits/<split>/*.db); default: the fixture map")
    parser.add_argument("--maps-root")
    parser.add_argument("--split", default="synth_test")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="learned planner checkpoints (data mode)")
    parser.add_argument("--planners", nargs="+", help="only these planners (names as printed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-iou", action="store_true")
    parser.add_argument(
        "--terminate-on",
        nargs="*",
        default=[],
        help="BEV-Warp termination rules to keep (collision, drivable_area, deviation); default none, as nuPlan",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start, start_cpu = time.perf_counter(), time.process_time()
    if args.data_root:
        cases, scenes, maps = load_data(
            args.data_root,
            args.maps_root or f"{args.data_root}/maps",
            args.split,
            args.iou_scenes,
            args.scenes,
            args.seed,
        )
        specs = data_specs(args.checkpoint)
        label = f"{len(scenes)} {args.split} scenarios (15 s at 10 Hz)"
    else:
        iou_scenes = [fixture_scenario(500 + i, args.frames) for i in range(args.iou_scenes)]
        cases = [(s, fixture_map_api(), f) for s in iou_scenes for f in (0, args.frames // 2)]
        scenes = [fixture_scenario(i, args.frames) for i in range(args.scenes)]
        maps = [fixture_map_api()] * len(scenes)
        specs = rule_specs()
        label = f"{len(scenes)} fixture scenarios ({args.frames} frames at 10 Hz)"
    if args.planners:
        specs = [s for s in specs if s.name in args.planners]
    if not args.skip_iou:
        print_iou(cases)
    print(f"closed loop on {label}, replanning at 2 Hz (CPU seconds: this process, reset included)")
    print_agreement(scenes, maps, specs, EnvConfig(terminate_on=tuple(args.terminate_on)))
    print(f"total: {time.perf_counter() - start:.0f} s wall, {time.process_time() - start_cpu:.0f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
