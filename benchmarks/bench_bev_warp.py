"""BEV-Warp speed: environment steps per second at batch 1, 16, 64 and 256, against the vector closed loop.

One environment step is one replanning interval (0.5 s = 5 iterations at 10 Hz). BEV-Warp warps the
logged encoder features (encoded once at reset) into the simulated ego frame and steps the torch LQR +
bicycle and the vector-world checks for the whole batch at once. The baseline is the vector closed loop
(:class:`simulation.closed_loop.ClosedLoopSimulator`, log replay, replanning every 5 iterations) that
re-renders the planner raster and re-runs the BEV encoder at every planner call, one scene at a time.
Both use a constant-velocity planner; reset / rendering-at-reset time is reported separately. Rates are given
per wall-clock second and per CPU second of this process (``time.process_time``; with one torch thread the
fairer figure on a shared machine, where wall time depends on the other jobs).

Scenes: random eastbound scenarios on the fixture map (default), or with ``--data-root DIR [--maps-root DIR]
[--split synth_test]`` nuPlan scenarios (15 s at 10 Hz, 30 env steps) of nuPlan-format logs such as the
synthetic city, repeated to fill the batch.

End to end (``--e2e CKPT``): a learned planner in both loops, for ``B`` scenes x ``--groups G`` rollouts (one reset,
then :func:`bev_warp.env.repeat_state`): reset + the planner's forward on the batch at every step (warped features:
its head on the warped feature map; warped rasters: encoder + head) + the step, against the vector closed loop
running the same planner (render + encode + head per call). ``--candidates K`` adds an untrained discriminator
scoring ``K`` samples of the planner's policy ``rollout`` (:class:`planners.reranked.RerankedPlanner`; rasters).

Usage: ``python benchmarks/bench_bev_warp.py [--device cuda] [--batches 1 16 64 256] [--frames 61]``
or ``python benchmarks/bench_bev_warp.py --data-root D --maps-root D/maps --split synth_test --batches 1 16 64``
or ``python benchmarks/bench_bev_warp.py --data-root D --e2e CKPT --batches 16 64 --groups 4 [--candidates 20]``
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from typing import Any

import numpy as np
import torch

from bev_warp.env import BEVWarpEnv, EnvConfig
from bev_warp.testing import fixture_map_api, fixture_scenario
from planners.encoders import BEVEncoder
from rewards.torch.kinematics import track_and_propagate
from simulation.closed_loop import ClosedLoopSimulator
from simulation.features import PLANNER_RASTER
from simulation.protocols import Observation
from simulation.render import render_observation
from simulation.types import Scenario, StateIndex, Trajectory


def ensure_numpy_tracker() -> str:
    """The vector loop's two-stage controller needs ``simulation.kinematics``; without it, use the torch twin."""
    try:
        import simulation.kinematics  # noqa: F401

        return "simulation.kinematics (numpy)"
    except ImportError:
        shim = types.ModuleType("simulation.kinematics")

        def shim_track(state: np.ndarray, reference: np.ndarray, dt: float = 0.1) -> np.ndarray:
            ref = torch.as_tensor(np.asarray(reference, dtype=np.float64))
            st = torch.as_tensor(np.asarray(state, dtype=np.float64))
            return track_and_propagate(st, ref, dt, steps=1).numpy()

        shim.track_and_propagate = shim_track  # type: ignore[attr-defined]
        sys.modules["simulation.kinematics"] = shim
        return "rewards.torch.kinematics through a numpy shim (simulation.kinematics not present)"


class RenderEncodePlanner:
    """Constant velocity, after rendering the raster and running the encoder (what a learned planner costs)."""

    name = "render_encode_cv"

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.encoder = encoder

    def plan(self, observation: Observation) -> Trajectory:
        raster = render_observation(observation, PLANNER_RASTER)
        with torch.no_grad():
            self.encoder(torch.as_tensor(raster)[None])
        v = float(observation.ego_history.states[-1, StateIndex.VX])
        t = np.arange(1, 9) * 0.5
        return Trajectory(np.stack([v * t, np.zeros(8), np.zeros(8)], -1))


def constant_velocity(ego: torch.Tensor) -> torch.Tensor:
    """``(B, 8, 3)`` plans keeping the current speed straight ahead."""
    t = torch.arange(1, 9, dtype=ego.dtype, device=ego.device) * 0.5
    x = ego[:, StateIndex.VX, None] * t
    return torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], -1)


def bench_warp(
    scenes: list[Scenario], maps: list[Any], encoder: torch.nn.Module, device: str, mode: str
) -> tuple[float, float, float]:
    """(env steps per wall second, per CPU second, reset wall seconds) of BEV-Warp until every episode ends."""
    env = BEVWarpEnv(EnvConfig(observation=mode), device=device, encoder=encoder if mode == "features" else None)
    t0 = time.perf_counter()
    state = env.reset(scenes, maps)
    reset_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    steps = 0
    while not bool(state.done.all()):
        obs = env.observe(state)
        steps += int((~state.done).sum())
        state, _, _, _ = env.step(state, constant_velocity(state.ego) + 0.0 * obs.mean())
    sync()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return steps / elapsed, steps / cpu, reset_s


def bench_vector(scenes: list[Scenario], maps: list[Any], encoder: torch.nn.Module) -> tuple[float, float]:
    """Env-step equivalents (planner calls) per wall / CPU second of the vector closed loop, scene after scene."""
    sim = ClosedLoopSimulator(replan_interval=5)
    planner = RenderEncodePlanner(encoder)
    calls = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for scene, map_api in zip(scenes, maps, strict=True):
        history = sim.run(scene, planner, map_api)
        calls += sum(1 for p in history.plans[::5] if p is not None)
    return calls / (time.perf_counter() - t0), calls / (time.process_time() - c0)


def e2e_model(checkpoint: str, candidates: int) -> tuple[Any, Any, str]:
    """The planner of a checkpoint, or (``candidates > 0``) the planner + an untrained discriminator picking among
    ``candidates`` samples of the planner's policy ``rollout`` (:class:`planners.reranked.RerankedPlanner`);
    with the generator and a label."""
    from planners.checkpoint import load_planner

    generator = load_planner(checkpoint).eval()
    if candidates <= 0:
        return generator, generator, type(generator).__name__
    from planners.discriminator import Discriminator, DiscriminatorConfig
    from planners.reranked import RerankedConfig, RerankedPlanner, generator_fields

    torch.manual_seed(0)
    disc = Discriminator(DiscriminatorConfig()).eval()
    config = RerankedConfig(
        **generator_fields(generator), discriminator=disc.config.to_dict(), num_samples=candidates, own_candidates=False
    )
    pair = RerankedPlanner(generator, disc, config).eval()
    return pair, generator, f"{type(generator).__name__} + discriminator over {candidates} rollout samples"


def bench_e2e_warp(
    scenes: list[Scenario], maps: list[Any], groups: int, model: Any, generator: Any, device: str, mode: str
) -> dict[str, float]:
    """BEV-Warp end to end for ``B`` scenes x ``groups`` rollouts: reset (render, encode in ``features`` mode) +
    :func:`bev_warp.env.repeat_state` + at every step the planner's forward on the batch + the step."""
    from bev_warp.policies import LearnedPolicy
    from simulation.features import raster_from_meta

    raster = raster_from_meta(getattr(generator, "raster_config", None))
    encoder = generator.encode_bev if mode == "features" else None
    env = BEVWarpEnv(EnvConfig(observation=mode, raster=raster), device=device, encoder=encoder)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    model.to(device)
    t0, c0 = time.perf_counter(), time.process_time()
    state = env.repeat_state(env.reset(scenes, maps), groups)
    sync()
    reset_s, reset_cpu = time.perf_counter() - t0, time.process_time() - c0
    policy = LearnedPolicy(model, env, scenes, warp=mode)  # type: ignore[arg-type]
    steps = 0
    while not bool(state.done.all()):
        steps += int((~state.done).sum())
        state, *_ = env.step(state, *policy(state))
    sync()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.cpu()
    return {"steps": steps, "wall": wall, "cpu": cpu, "reset": reset_s, "reset_cpu": reset_cpu}


def bench_e2e_vector(scenes: list[Scenario], maps: list[Any], model: Any, generator: Any) -> tuple[float, float]:
    """Env steps (planner calls) per wall / CPU second of the vector closed loop with the same planner (rendering
    and encoding at every call), scene after scene."""
    from planners.adapter import LearnedPlanner
    from simulation.features import raster_from_meta

    raster = raster_from_meta(getattr(generator, "raster_config", None))
    sim = ClosedLoopSimulator(replan_interval=5)
    planner = LearnedPlanner(model, raster=raster)
    calls = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for scene, map_api in zip(scenes, maps, strict=True):
        calls += sum(1 for p in sim.run(scene, planner, map_api).plans[::5] if p is not None)
    return calls / (time.perf_counter() - t0), calls / (time.process_time() - c0)


def print_e2e(args: argparse.Namespace, batch: Any) -> None:
    """The end-to-end table: for every batch ``B`` x ``--groups`` rollouts, BEV-Warp against the vector loop."""
    model, generator, label = e2e_model(args.e2e, args.candidates)
    modes = ["raster"] if args.candidates > 0 else args.modes  # the pair reads rasters (the discriminator too)
    vector, vector_cpu = bench_e2e_vector(*batch(args.vector_scenes, 1000), model, generator)
    print(f"end to end, {label}; vector closed loop: {vector:.2f} env steps/s, {vector_cpu:.2f} per CPU s")
    for mode in modes:
        for b in args.batches:
            r = bench_e2e_warp(*batch(b), args.groups, model, generator, args.device, mode)
            n = r["steps"]
            print(
                f"BEV-Warp {mode:8s} {b:4d} scenes x {args.groups} rollouts: {n / r['wall']:9.1f} env steps/s "
                f"({n / r['wall'] / vector:6.1f}x vector), {n / r['cpu']:9.1f} per CPU s "
                f"({n / r['cpu'] / vector_cpu:6.1f}x); without the reset {n / (r['wall'] - r['reset']):9.1f} /s "
                f"({n / (r['wall'] - r['reset']) / vector:6.1f}x, {n / (r['cpu'] - r['reset_cpu']) / vector_cpu:6.1f}x "
                f"per CPU s); reset {r['reset']:.1f} s",
                flush=True,
            )


def data_scenarios(data_root: str, maps_root: str, split: str) -> tuple[list[Scenario], list[Any]]:
    """nuPlan scenarios of ``split`` (tagged and untagged frames, starts at least 5 s apart) and their maps."""
    from simulation.datasets.scenes import ScenarioFilter
    from simulation.datasets.splits import load_scenarios
    from simulation.maps.api import MapAPI

    pool = load_scenarios(data_root, split, ScenarioFilter(include_unknown=True, timestamp_threshold_s=5.0))
    if not pool:
        raise SystemExit(f"no scenarios in split {split!r} under {data_root}")
    return pool, [MapAPI.load(maps_root, s.map_name) for s in pool]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--frames", type=int, default=61, help="log frames per scenario (10 Hz)")
    parser.add_argument("--vector-scenes", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=["features", "raster"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both (shared machines: 1)")
    parser.add_argument("--data-root", help="nuPlan-format data (splits/<split>/*.db); default: the fixture map")
    parser.add_argument("--maps-root")
    parser.add_argument("--split", default="synth_test")
    parser.add_argument("--e2e", metavar="CKPT", help="end to end with this learned planner (reset + planner + step)")
    parser.add_argument("--groups", type=int, default=4, help="end to end: rollouts per scene (repeat_state)")
    parser.add_argument("--candidates", type=int, default=0, help="end to end: + a discriminator over K samples")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"ego controller of the vector loop: {ensure_numpy_tracker()}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    encoder = BEVEncoder(len(PLANNER_RASTER.channels)).eval()
    if args.data_root:
        pool, pool_maps = data_scenarios(args.data_root, args.maps_root or f"{args.data_root}/maps", args.split)
        print(
            f"{args.split}: {len(pool)} scenarios of {pool[0].num_frames} frames "
            f"(batches spread over them, repeated past {len(pool)})"
        )

        def batch(n: int, offset: int = 0) -> tuple[list[Scenario], list[Any]]:
            # spread over the pool (both towns, quiet and busy scenes) for the vector loop and every batch
            idx = [(i * len(pool)) // n for i in range(n)] if n <= len(pool) else [i % len(pool) for i in range(n)]
            return [pool[i] for i in idx], [pool_maps[i] for i in idx]

    else:

        def batch(n: int, offset: int = 0) -> tuple[list[Scenario], list[Any]]:
            return [fixture_scenario(offset + i, args.frames) for i in range(n)], [fixture_map_api()] * n

    if args.e2e:
        print_e2e(args, batch)
        return 0
    vector, vector_cpu = bench_vector(*batch(args.vector_scenes, 1000), encoder)
    print(
        f"vector closed loop (render + encode per planner call): {vector:9.1f} env steps/s, "
        f"{vector_cpu:9.1f} per CPU s",
        flush=True,
    )
    for mode in args.modes:
        enc = encoder.to(args.device)
        for b in args.batches:
            if mode == "raster" and b > 64:
                continue  # (B, S, 12, 128, 128) float32 rasters: 256 episodes would hold several GB
            rate, rate_cpu, reset_s = bench_warp(*batch(b), enc, args.device, mode)
            print(
                f"BEV-Warp {mode:8s} batch {b:4d}: {rate:10.1f} env steps/s ({rate / vector:7.1f}x vector), "
                f"{rate_cpu:10.1f} per CPU s ({rate_cpu / vector_cpu:7.1f}x vector), reset {reset_s:6.2f} s",
                flush=True,
            )
        encoder = encoder.cpu()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
