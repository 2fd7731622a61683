"""Agreement of the batched torch PDM scorer (:mod:`rewards.torch.pdm`) with the numpy one (:mod:`rewards.pdm`).

Scenes: the synthetic four-lane road with a junction and 40 agents of ``bench_scoring.py`` (v1: 5 s of agents; v2: the
same scenes cut to 4 s, with a red light on one connector). Candidates per scene: kinematic rollouts with random
accelerations, yaw rates and lane offsets, constant-velocity plans, the reference (the "expert" of these scenes) and
perturbations of it. Both scorers score the same simulated states; the script prints, per version and float dtype
of the torch scorer, the fraction of candidates on which each sub-metric agrees (binary / ternary ones exactly,
continuous ones to 1e-4) and the largest difference.

With ``--offset X Y`` every scene and candidate is moved by (X, Y) metres (e.g. ``--offset 6e5 4e6``, UTM-sized
coordinates): the float32 batch is then re-centred on each ego start (:meth:`MetricCacheBatch.to`), the states are
passed in float64 and re-centred before the cast.

    python benchmarks/scorer_agreement.py [--scenes 100] [--candidates 32] [--device cpu] [--seed 0] [--offset X Y]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from shapely.geometry import box

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy

from bench_scoring import make_scene, rollout  # noqa: E402

from rewards.pdm import score_states  # noqa: E402
from rewards.torch.metric_cache_batch import MetricCacheBatch, translated  # noqa: E402
from rewards.torch.pdm import score_states as torch_score_states  # noqa: E402
from simulation.metric_cache import MetricCache  # noqa: E402
from simulation.polygon_grid import PolygonSet  # noqa: E402
from simulation.types import StateIndex  # noqa: E402

EXACT = ("no_at_fault_collisions", "drivable_area_compliance", "driving_direction_compliance",
         "time_to_collision_within_bound", "comfort", "traffic_light_compliance", "lane_keeping",
         "history_comfort")  # fmt: skip
CLOSE = ("progress_m", "ego_progress", "score")
TOLERANCE = 1e-4


def candidates(rng: np.random.Generator, cache: MetricCache, k: int) -> np.ndarray:
    """``(k, 41, 11)``: rollouts, constant velocity, the reference and perturbations of it."""
    n_roll = k // 2
    params = np.column_stack([rng.uniform(-5, 3, n_roll), rng.uniform(-0.3, 0.3, n_roll),
                              rng.choice([-4.0, 0.0, 4.0], n_roll), np.zeros(n_roll)])  # fmt: skip
    const = rollout(np.zeros((4, 4)), 8.0)
    const[:, :, StateIndex.X] *= np.array([0.0, 0.5, 1.0, 1.8])[:, None]
    ref = cache.reference_states
    n_pert = k - n_roll - len(const) - 1
    pert = np.repeat(ref[None], n_pert, 0)
    ramp = np.linspace(0.0, 1.0, ref.shape[0])[None, :]
    pert[..., StateIndex.Y] += rng.normal(0.0, 1.5, (n_pert, 1)) * ramp
    pert[..., StateIndex.X] *= rng.uniform(0.7, 1.3, (n_pert, 1))
    pert[..., StateIndex.HEADING] += rng.normal(0.0, 0.05, (n_pert, 1)) * ramp
    return np.concatenate([rollout(params), const, ref[None], pert])


def as_v2(cache: MetricCache) -> MetricCache:
    """The scene cut to 4 s of agents, with connector ``c1``'s stop area red for the first 2 s."""
    red = np.zeros((41, 1), bool)
    red[:20] = True
    return dataclasses.replace(
        cache, version="v2", agent_boxes=cache.agent_boxes[:41], agent_valid=cache.agent_valid[:41],
        red_connector_ids=np.array(["c1"]), red_mask=red, red_polygons=PolygonSet.from_geometries([box(40, -4, 42, 0)]),
    )  # fmt: skip


def compare(version: str, caches: list[MetricCache], cands: np.ndarray, dtype: torch.dtype, device: str,
            chunk: int) -> dict[str, tuple[float, float]]:  # fmt: skip
    """``{metric: (agreement fraction, max difference)}`` over all candidates."""
    agree: dict[str, list[np.ndarray]] = {}
    diff: dict[str, float] = {}
    for a in range(0, len(caches), chunk):
        batch = MetricCacheBatch.collate(caches[a : a + chunk]).to(device, dtype)
        states = torch.as_tensor(cands[a : a + chunk], dtype=torch.float64, device=device)  # global, float64
        got = torch_score_states(batch, states, version)
        for s, cache in enumerate(caches[a : a + chunk]):
            expected = score_states(cache, cands[a + s], version)
            for key in (*EXACT, *CLOSE):
                if key not in expected:
                    continue
                value = got[key][s].double().cpu().numpy()
                delta = np.abs(value - expected[key])
                ok = delta == 0.0 if key in EXACT else delta <= TOLERANCE
                agree.setdefault(key, []).append(ok)
                diff[key] = max(diff.get(key, 0.0), float(delta.max()))
    return {key: (float(np.concatenate(v).mean()), diff[key]) for key, v in agree.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=25, help="scenes per torch batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--offset", type=float, nargs=2, default=(0.0, 0.0), metavar=("X", "Y"),
                        help="move every scene by (X, Y) metres")  # fmt: skip
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    caches = [make_scene(rng) for _ in range(args.scenes)]
    cands = np.stack([candidates(rng, c, args.candidates) for c in caches])
    dx, dy = args.offset
    cands[..., StateIndex.X] += dx
    cands[..., StateIndex.Y] += dy
    print(f"{args.scenes} scenes x {args.candidates} candidates = {cands.shape[0] * cands.shape[1]} candidates, "
          f"torch on {args.device}, offset ({dx:g}, {dy:g}) m")  # fmt: skip
    for version, scenes in (("v1", caches), ("v2", [as_v2(c) for c in caches])):
        scenes = [translated(c, dx, dy) for c in scenes]
        for dtype in (torch.float64, torch.float32):
            result = compare(version, scenes, cands, dtype, args.device, args.chunk)
            print(f"{version} {str(dtype).removeprefix('torch.')}: " + ", ".join(
                f"{k} {frac:.2%} (max diff {d:.1e})" for k, (frac, d) in result.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
