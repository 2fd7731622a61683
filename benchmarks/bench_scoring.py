"""NAVSIM scoring speed: scenes per second (two proposals per scene, as NAVSIM scores agent + PDM-Closed) and
candidate scorings per second (64 candidates per scene) of :func:`rewards.pdm.score_states`, against a
straightforward implementation in this file that follows the reference scorer's structure (one shapely
STRtree per time step, per-contact Python classification, per-polygon ``contains_xy``), run in the same
process on the same synthetic scenes. Also prints how often the two agree on every v1 sub-metric.

Then the batched torch twin (:mod:`rewards.torch.pdm`) on ``--torch-scenes`` x ``--candidates`` (default 32 x 64):
candidate scorings per second of numpy (scene by scene), torch on one CPU thread, torch on all CPU threads and
torch on CUDA when there is one (a line says so when not), each with its ratio to the shapely baseline; then numpy
and torch on one thread in process CPU time (calls in alternation), the figure that a loaded machine leaves intact.

Scenes: a synthetic four-lane road with a junction (about 60 map polygons) and 40 agents moving on it;
candidates are kinematic rollouts with random accelerations, yaw rates and lane offsets.

    python benchmarks/bench_scoring.py [--scenes 30] [--candidates 64] [--torch-scenes 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import shapely
from scipy.signal import savgol_filter
from shapely.geometry import LineString, box

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy

import torch  # noqa: E402

from rewards.pdm import score_states  # noqa: E402
from rewards.torch.metric_cache_batch import MetricCacheBatch  # noqa: E402
from rewards.torch.pdm import score_states as torch_score_states  # noqa: E402
from simulation.geometry import agent_box_corners, ego_box_corners, polyline_lengths, rear_axle_to_center  # noqa: E402
from simulation.maps.layers import SemanticMapLayer as L  # noqa: E402
from simulation.metric_cache import NUM_STEPS, MetricCache  # noqa: E402
from simulation.polygon_grid import PolygonGrid, PolygonSet  # noqa: E402
from simulation.types import DYNAMIC_TYPES, AgentIndex, StateIndex  # noqa: E402

V1_KEYS = ("no_at_fault_collisions", "drivable_area_compliance", "driving_direction_compliance",
           "time_to_collision_within_bound", "comfort", "ego_progress", "score")  # fmt: skip


# ----------------------------------------------------------------------------------------------- scenes


def _map_polygons() -> list[tuple[str, int, object]]:
    polys: list[tuple[str, int, object]] = []
    for seg, (x0, x1) in enumerate([(-100.0, 40.0), (60.0, 200.0)]):
        polys.append((f"rb{seg}", L.ROADBLOCK, box(x0, -8, x1, 8)))
        for lane in range(4):
            polys.append((f"l{seg}{lane}", L.LANE, box(x0, -8 + 4 * lane, x1, -4 + 4 * lane)))
    polys.append(("inter", L.INTERSECTION, box(40, -30, 60, 30)))
    for lane in range(4):
        polys.append((f"c{lane}", L.LANE_CONNECTOR, box(40, -8 + 4 * lane, 60, -4 + 4 * lane)))
    for k in range(8):  # turning connectors and side roads
        polys.append((f"t{k}", L.LANE_CONNECTOR, box(40 + 2 * k, -30, 44 + 2 * k, 8).buffer(0.5)))
    for side in range(2):
        y0 = 30.0 if side else -130.0
        polys.append((f"rbs{side}", L.ROADBLOCK, box(40, y0, 60, y0 + 100)))
        for lane in range(5):
            polys.append((f"ls{side}{lane}", L.LANE, box(40 + 4 * lane, y0, 44 + 4 * lane, y0 + 100)))
    for k in range(12):
        polys.append((f"cp{k}", L.CARPARK_AREA, box(-100 + 25 * k, -20, -80 + 25 * k, -8).buffer(1.0)))
    return polys


def make_scene(rng: np.random.Generator, n_agents: int = 40) -> MetricCache:
    polys = _map_polygons()
    t = np.arange(51) * 0.1
    lanes_y = np.array([-6.0, -2.0, 2.0, 6.0])
    x0 = rng.uniform(-60, 150, n_agents)
    y0 = rng.choice(lanes_y, n_agents) + rng.normal(0, 0.3, n_agents)
    v = np.where(rng.random(n_agents) < 0.3, 0.0, rng.uniform(3, 15, n_agents))
    boxes = np.zeros((51, n_agents, 7))
    boxes[..., AgentIndex.X] = x0 + v * t[:, None]
    boxes[..., AgentIndex.Y] = y0
    boxes[..., AgentIndex.VX] = v
    boxes[..., AgentIndex.LENGTH] = rng.uniform(3.5, 5.5, n_agents)
    boxes[..., AgentIndex.WIDTH] = rng.uniform(1.7, 2.1, n_agents)
    types = np.where(rng.random(n_agents) < 0.15, 3, 0)
    centerline = np.stack([np.linspace(-100, 200, 301), np.full(301, -2.0)], -1)
    ref = rollout(np.array([[5.0, 0.0, 0.0, 0.0]]))[0]
    return MetricCache(
        token="bench", log_name="bench", map_name="bench", version="v1", current_state=ref[0].copy(),
        agent_boxes=boxes, agent_valid=np.ones((51, n_agents), bool), agent_types=types.astype(np.int64),
        agent_track_ids=np.array([f"a{k}" for k in range(n_agents)]),
        map_grid=PolygonGrid.build([p[2] for p in polys]), map_ids=np.array([p[0] for p in polys]),
        map_layers=np.array([int(p[1]) for p in polys], dtype=np.int64),
        route_lane_ids=np.array(["l01", "c1", "l11"]), centerline=centerline,
        centerline_s=polyline_lengths(centerline), red_connector_ids=np.zeros(0, str),
        red_mask=np.zeros((41, 0), bool), red_polygons=PolygonSet.from_geometries([]), reference_states=ref,
        human_trajectory=np.zeros((8, 3)), human_states=ref, history_states=np.repeat(ref[:1], 14, 0),
    )  # fmt: skip


def rollout(params: np.ndarray, speed0: float = 8.0) -> np.ndarray:
    """``(K, 41, 11)`` unicycle rollouts from (0, -2) for ``params`` ``(K, 4)`` = accel, yaw rate, lateral offset, _."""
    k = len(params)
    s = np.zeros((k, NUM_STEPS, 11))
    x, y, h, v = np.zeros(k), -2.0 + params[:, 2], np.zeros(k), np.full(k, speed0)
    for i in range(NUM_STEPS):
        s[:, i, StateIndex.X], s[:, i, StateIndex.Y], s[:, i, StateIndex.HEADING] = x, y, h
        s[:, i, StateIndex.VX], s[:, i, StateIndex.AX] = v, params[:, 0] * (v > 0)
        s[:, i, StateIndex.YAW_RATE] = params[:, 1]
        x, y = x + v * np.cos(h) * 0.1, y + v * np.sin(h) * 0.1
        h, v = h + params[:, 1] * 0.1, np.maximum(v + params[:, 0] * 0.1, 0.0)
    return s


# ----------------------------------------------------------------------------------------------- baseline


def _ego_polys(states: np.ndarray) -> np.ndarray:
    return shapely.polygons(ego_box_corners(states[..., :3]))


def _angle(ego: np.ndarray, p: tuple[float, float]) -> float:
    v = np.array([p[0] - ego[0], p[1] - ego[1]])
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.arccos(np.dot([np.cos(ego[2]), np.sin(ego[2])], v / np.linalg.norm(v))))


def _areas(cache: MetricCache, states: np.ndarray) -> np.ndarray:
    corners = ego_box_corners(states[..., :3])
    pts = np.concatenate([corners, rear_axle_to_center(states[..., :3])[..., None, :2], states[..., None, :2]], -2)
    flat = pts.reshape(-1, 2)
    geoms = cache.map_grid.polygons.geometries()
    inside = np.stack([shapely.contains_xy(g, flat[:, 0], flat[:, 1]) for g in geoms]).reshape(
        (len(geoms),) + pts.shape[:-1]
    )
    inside = np.moveaxis(inside, 0, -2)  # (K, T, M, 6)
    lane = np.isin(cache.map_layers, [L.LANE, L.LANE_CONNECTOR])
    drv = np.isin(cache.map_layers, [L.ROADBLOCK, L.INTERSECTION, L.DRIVABLE_AREA, L.CARPARK_AREA])
    route = lane & np.isin(cache.map_ids, cache.route_lane_ids)
    inter = cache.map_layers == L.INTERSECTION
    c = inside[..., :4]
    multi = ((c[..., lane, :].sum(-1) > 0).sum(-1) > 1) & np.all(c[..., lane, :].sum(-1) != 4, -1)
    nondrv = (c[..., drv, :].sum(-2) > 0).sum(-1) < 4
    oncoming = inside[..., route, 4].sum(-1) == 0
    return np.stack([multi, nondrv, oncoming, inside[..., inter, 5].any(-1)], -1)


def _agent_trees(cache: MetricCache) -> list[tuple[np.ndarray, shapely.STRtree]]:
    corners = agent_box_corners(cache.agent_boxes)
    trees = []
    for t in range(cache.agent_boxes.shape[0]):
        idx = np.flatnonzero(cache.agent_valid[t])
        trees.append((idx, shapely.STRtree(shapely.polygons(corners[t, idx]))))
    return trees


def _baseline_nc(cache: MetricCache, states: np.ndarray, areas: np.ndarray, trees: list) -> np.ndarray:
    polys = _ego_polys(states)
    speed = np.hypot(states[..., 3], states[..., 4])
    first = np.argmax(cache.agent_valid, 0)
    stopped = ~np.isin(cache.agent_types, [int(x) for x in DYNAMIC_TYPES]) | (
        np.hypot(*cache.agent_boxes[first, np.arange(len(first)), 3:5].T) <= 0.05
    )
    nc = np.ones(len(states))
    ignore: list[set] = [set() for _ in states]
    for t in range(NUM_STEPS):
        idx, tree = trees[t]
        for k, g in zip(*tree.query(polys[:, t], predicate="intersects"), strict=True):
            n = idx[g]
            if n in ignore[k]:
                continue
            if speed[k, t] <= 0.05:
                fault = False
            elif stopped[n]:
                fault = True
            elif _angle(states[k, t], tuple(cache.agent_boxes[t, n, :2])) > np.deg2rad(150):
                fault = False
            elif LineString(np.asarray(polys[k, t].exterior.coords)[[0, 3]]).intersects(tree.geometries[g]):
                fault = True
            else:
                fault = bool(areas[k, t, 0] or areas[k, t, 1])
            if fault:
                nc[k] = min(nc[k], 0.0 if cache.agent_types[n] in DYNAMIC_TYPES else 0.5)
            else:
                ignore[k].add(n)
    return nc


def _baseline_ttc(cache: MetricCache, states: np.ndarray, areas: np.ndarray, trees: list) -> np.ndarray:
    speed = np.hypot(states[..., 3], states[..., 4])
    ttc = np.ones(len(states))
    ignore: list[set] = [set() for _ in states]
    dxy = np.stack([np.cos(states[..., 2]), np.sin(states[..., 2])], -1) * speed[..., None]
    ego_c = ego_box_corners(states[..., :3])
    for t in range(NUM_STEPS):
        for j in (0, 3, 6, 9):
            idx, tree = trees[t + j]
            moved = shapely.polygons(ego_c[:, t] + dxy[:, t, None] * j * 0.1)
            for k, g in zip(*tree.query(moved, predicate="intersects"), strict=True):
                n = idx[g]
                if n in ignore[k] or speed[k, t] < 5e-3:
                    continue
                ang = _angle(states[k, t], tuple(cache.agent_boxes[t + j, n, :2]))
                risky = areas[k, t, 0] or areas[k, t, 1] or areas[k, t, 3]
                if ang < np.deg2rad(30) or (risky and not ang > np.deg2rad(150)):
                    ttc[k] = 0.0
                else:
                    ignore[k].add(n)
    return ttc


def baseline_scores(cache: MetricCache, states: np.ndarray) -> dict[str, np.ndarray]:
    """PDMS v1 the straightforward way (reference scorer structure); proposal 0 is the reference."""
    areas = _areas(cache, states)
    trees = _agent_trees(cache)
    nc = _baseline_nc(cache, states, areas, trees)
    ttc = _baseline_ttc(cache, states, areas, trees)
    dac = np.where(areas[..., 1].any(-1), 0.0, 1.0)
    center = rear_axle_to_center(states[..., :3])[..., :2]
    prog = np.zeros(center.shape[:2])
    prog[:, 1:] = np.linalg.norm(np.diff(center, axis=1), axis=-1) * areas[:, 1:, 2]
    worst = np.array([[prog[k, max(0, t - 10) : t + 1].sum() for t in range(NUM_STEPS)] for k in range(len(states))])
    worst = worst.max(-1)
    ddc = np.where(worst < 2, 1.0, np.where(worst < 6, 0.5, 0.0))
    line = LineString(cache.centerline)
    raw = np.array([max(0.0, line.project(shapely.Point(c[-1])) - line.project(shapely.Point(c[0]))) for c in center])
    comfort = _baseline_comfort(states)
    mult = nc * dac
    masked = raw * mult
    ep = np.array([masked[k] / m if (m := max(masked[0], masked[k])) > 5 else float(mult[k] != 0)
                   for k in range(len(states))])  # fmt: skip
    score = mult * (5 * ttc + 5 * ep + 2 * comfort) / 12
    return {"no_at_fault_collisions": nc, "drivable_area_compliance": dac, "driving_direction_compliance": ddc,
            "time_to_collision_within_bound": ttc, "comfort": comfort, "ego_progress": ep, "score": score}  # fmt: skip


def _baseline_comfort(states: np.ndarray) -> np.ndarray:
    n = states.shape[1]
    sg = lambda y, w, p, d=0: np.round(savgol_filter(y, min(w, n), p, deriv=d, delta=0.1, axis=-1), 8)  # noqa: E731
    ax, ay, h = states[..., 5], states[..., 6], np.unwrap(states[..., 2], axis=-1)
    ok = [
        ((sg(ax, n, 2) > -4.05) & (sg(ax, n, 2) < 2.4)).all(-1),
        (np.abs(sg(ay, n, 2)) < 4.89).all(-1),
        (np.abs(sg(sg(np.hypot(ax, ay), 8, 2), n, 2, 1)) < 8.37).all(-1),
        (np.abs(sg(sg(ax, 8, 2), n, 2, 1)) < 4.13).all(-1),
        (np.abs(sg(h, 5, 3, 2)) < 1.93).all(-1),
        (np.abs(sg(h, 5, 2, 1)) < 0.95).all(-1),
    ]
    return np.all(ok, 0).astype(float)


# ----------------------------------------------------------------------------------------------- timing


def _time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _cpu_time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Process CPU time per call (all threads of the process)."""
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def cpu_rates(caches: list[MetricCache], cands: np.ndarray, rounds: int = 3) -> tuple[float, float]:
    """Candidate scorings per CPU second of numpy + numba (scene by scene) and of torch on one thread, on
    ``caches`` x ``cands`` ``(S, K, 41, 11)``, measured in alternation (``rounds`` calls each): a loaded machine
    slows the wall clock, not the CPU time of the process."""
    batch = MetricCacheBatch.collate(caches)
    states = torch.as_tensor(cands)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch_score_states(batch, states)
    numpy_s = torch_s = 0.0
    for _ in range(rounds):
        numpy_s += _cpu_time(lambda: [score_states(c, s) for c, s in zip(caches, cands, strict=True)], 1)
        torch_s += _cpu_time(lambda: torch_score_states(batch, states), 1)
    torch.set_num_threads(threads)
    n = cands.shape[0] * cands.shape[1] * rounds
    return n / numpy_s, n / torch_s


def torch_rates(caches: list[MetricCache], cands: np.ndarray, repeats: int = 3) -> dict[str, float | None]:
    """Candidate scorings per second of the torch scorer on ``caches`` x ``cands`` ``(S, K, 41, 11)``: one CPU
    thread, all CPU threads, CUDA (``None`` when there is none). Collation is done once, outside the timing."""
    batch = MetricCacheBatch.collate(caches)
    states = torch.as_tensor(cands)
    n = cands.shape[0] * cands.shape[1]
    threads = torch.get_num_threads()
    out: dict[str, float | None] = {}
    for name, count in (("torch, 1 CPU thread", 1), (f"torch, {threads} CPU threads", threads)):
        torch.set_num_threads(count)
        torch_score_states(batch, states)
        out[name] = n / _time(lambda: torch_score_states(batch, states), repeats)
    torch.set_num_threads(threads)
    if not torch.cuda.is_available():
        out["torch, CUDA"] = None
        return out
    gpu_batch, gpu_states = batch.to("cuda"), states.to("cuda")

    def run_gpu() -> None:
        torch_score_states(gpu_batch, gpu_states)
        torch.cuda.synchronize()

    run_gpu()
    out["torch, CUDA"] = n / _time(run_gpu, repeats)
    return out


def print_torch_rates(args: argparse.Namespace, rng: np.random.Generator, base_rate: float) -> None:
    """Numpy vs torch at ``--torch-scenes`` x ``--candidates``, ratios against the shapely baseline's rate."""
    caches = [make_scene(rng) for _ in range(args.torch_scenes)]
    k = args.candidates
    cands = np.stack([rollout(np.column_stack([rng.uniform(-5, 3, k), rng.uniform(-0.3, 0.3, k),
                                               rng.choice([-4.0, 0.0, 4.0], k), np.zeros(k)]))
                      for _ in caches])  # fmt: skip
    n = len(caches) * args.candidates
    numpy_rate = n / _time(lambda: [score_states(c, s) for c, s in zip(caches, cands, strict=True)], 3)
    rates: dict[str, float | None] = {"numpy + numba (scene by scene)": numpy_rate, **torch_rates(caches, cands)}
    print(f"PDMS v1 at S = {len(caches)} scenes x K = {args.candidates} candidates (candidate scorings/s):")
    for name, rate in rates.items():
        if rate is None:
            print(f"  {name}: skipped (no CUDA device)")
            continue
        print(f"  {name}: {rate:.0f}/s, x{rate / numpy_rate:.2f} numpy, x{rate / base_rate:.1f} shapely baseline")
    numpy_cpu, torch_cpu = cpu_rates(caches, cands)
    print(f"  in process CPU time (alternating calls): numpy + numba {numpy_cpu:.0f}/s, torch on 1 CPU thread "
          f"{torch_cpu:.0f}/s, x{torch_cpu / numpy_cpu:.2f} numpy")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--torch-scenes", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    caches = [make_scene(rng) for _ in range(args.scenes)]
    params = [np.column_stack([rng.uniform(-5, 3, args.candidates), rng.uniform(-0.3, 0.3, args.candidates),
                               rng.choice([-4.0, 0.0, 4.0], args.candidates), np.zeros(args.candidates)])
              for _ in caches]  # fmt: skip
    cands = [rollout(p) for p in params]
    score_states(caches[0], cands[0][:1])  # compile the numba kernels
    fast2 = sum(_time(lambda c=c, s=s: score_states(c, s[:1]), 20) for c, s in zip(caches, cands, strict=True))
    base2 = sum(_time(lambda c=c, s=s: baseline_scores(c, np.concatenate([c.reference_states[None], s[:1]])), 2)
                for c, s in zip(caches, cands, strict=True))  # fmt: skip
    fast64 = sum(_time(lambda c=c, s=s: score_states(c, s), 5) for c, s in zip(caches, cands, strict=True))
    n_base = min(len(caches), 5)
    base64 = sum(_time(lambda c=c, s=s: baseline_scores(c, np.concatenate([c.reference_states[None], s])), 1)
                 for c, s in zip(caches[:n_base], cands[:n_base], strict=True)) * len(caches) / n_base  # fmt: skip
    v2 = [dataclasses.replace(c, version="v2", agent_boxes=c.agent_boxes[:41], agent_valid=c.agent_valid[:41])
          for c in caches]  # fmt: skip
    score_states(v2[0], cands[0][:1], "v2")
    fast2_v2 = sum(_time(lambda c=c, s=s: score_states(c, s[:1], "v2"), 20) for c, s in zip(v2, cands, strict=True))
    fast64_v2 = sum(_time(lambda c=c, s=s: score_states(c, s, "v2"), 5) for c, s in zip(v2, cands, strict=True))
    agree = {k: 0 for k in V1_KEYS}
    means = {k: 0.0 for k in V1_KEYS}
    total = 0
    for c, s in zip(caches, cands, strict=True):
        fast = score_states(c, s)
        base = baseline_scores(c, np.concatenate([c.reference_states[None], s]))
        for key in V1_KEYS:
            agree[key] += int(np.isclose(fast[key], base[key][1:], atol=1e-9).sum())
            means[key] += float(fast[key].sum())
        total += len(s)
    n = len(caches)
    print(
        f"NAVSIM scoring, 2 proposals/scene: {1e3 * fast2 / n:.3f} ms/scene ({n / fast2:.0f} scenes/s); "
        f"baseline {1e3 * base2 / n:.2f} ms/scene; speed-up x{base2 / fast2:.1f}"
    )
    print(f"{args.candidates} candidates/scene: {1e3 * fast64 / n:.2f} ms/scene, "
          f"{n * args.candidates / fast64:.0f} candidate scorings/s; baseline {n * args.candidates / base64:.0f}/s; "
          f"speed-up x{base64 / fast64:.1f}")  # fmt: skip
    print(f"EPDMS (v2): {1e3 * fast2_v2 / n:.3f} ms/scene with 2 proposals; "
          f"{n * args.candidates / fast64_v2:.0f} candidate scorings/s at {args.candidates} per scene")  # fmt: skip
    print("agreement with the baseline over", total, "candidates:",
          ", ".join(f"{k} {agree[k] / total:.1%}" for k in V1_KEYS))  # fmt: skip
    print("mean sub-metrics of the candidates:", ", ".join(f"{k} {means[k] / total:.3f}" for k in V1_KEYS))
    print_torch_rates(args, rng, n * args.candidates / base64)
    return 0


if __name__ == "__main__":
    sys.exit(main())
