"""Masked diffusion planner with and without safety reflection: PDMS, EPDMS, latency, diversity in one run.

The scenes, metric caches and scorers are the ones ``diffplan bench protocol=navsim_v1|navsim_v2`` builds from
the same overrides (caches are loaded from / stored in the metric-cache folders). For every scene the plain
planner and the reflecting planner plan back to back (same decoding order, steps and candidates), so the
latency ratio reflection / no reflection is measured under the same machine load. Prints one row per
(order, reflection) with PDMS, EPDMS, the PDMS sub-metrics (NC, DAC, TTC, EP, C, in %), latency, endpoint
spread of the goal candidates (``div(m)``, mean pairwise endpoint distance) and their mode diversity (``Div``,
:func:`rewards.diversity.pairwise_diversity` x 100, as the NAVSIM rows of ``diffplan bench``), and, per
order, the latency ratio and the PDMS / EPDMS deltas. Reflection columns (shares of scenes): ``top unsafe`` the
most likely candidate failed the safety check, ``changed`` the plan differs from it, ``other`` another goal
candidate passed and was taken, ``repaired`` a candidate repaired by anchor search + inpainting was taken,
``fallback`` nothing passed (the safest trajectory seen was taken); ``rounds`` anchor-and-inpaint rounds per
scene.

    .venv/bin/python benchmarks/bench_masked.py --ckpt /tmp/maskedE/.../last.ckpt --data-root /tmp/demo1/data \\
        --maps-root /tmp/demo1/data/maps --split synth_test --frame-interval 8 \\
        --metric-cache-v1 /tmp/benchE/mc_v1 --metric-cache-v2 /tmp/benchE/mc_v2 --track
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm import tqdm

from planners.checkpoint import masked_planner
from planners.masked_closed_loop import MaskedClosedLoopPlanner
from planners.masked_diffusion import ORDERS
from rewards.diversity import pairwise_diversity
from simulation.evaluation import build
from simulation.evaluation.cli import compose_config
from simulation.evaluation.protocols import get_protocol
from simulation.evaluation.units import observation_from_scene
from simulation.protocols import Observation

#: NAVSIM v1 sub-metrics reported per row (short name -> scorer column).
SUB_METRICS = {
    "NC": "no_at_fault_collisions",
    "DAC": "drivable_area_compliance",
    "TTC": "time_to_collision_within_bound",
    "EP": "ego_progress",
    "C": "comfort",
}


@dataclass
class Case:
    """One scene: the planner's observation and the metric caches / scorers of both protocols."""

    token: str
    observation: Observation
    caches: dict[str, Any]


def load_cases(args: argparse.Namespace) -> tuple[list[Case], dict[str, Any]]:
    """Scenes of the split with their v1 and v2 metric caches, and the two scorers (as the bench CLI builds them)."""
    scorers: dict[str, Any] = {}
    providers: dict[str, Any] = {}
    source = maps = None
    refs: list[Any] = []
    for version, cache_dir in (("v1", args.metric_cache_v1), ("v2", args.metric_cache_v2)):
        overrides = [
            f"protocol=navsim_{version}",
            f"data_root={args.data_root}",
            f"maps_root={args.maps_root}",
            f"split={args.split}",
            f"protocol.scene_filter.frame_interval={args.frame_interval}",
            f"metric_cache_dir={cache_dir}",
        ]
        cfg: dict[str, Any] = OmegaConf.to_container(compose_config(overrides), resolve=True)  # type: ignore[assignment]
        scorers[version] = instantiate(cfg["protocol"]["scorer"], _convert_="all")
        providers[version] = instantiate(cfg["protocol"]["metric_cache"], _convert_="all")
        if source is None:
            source = build.build_source(cfg, get_protocol(f"navsim_{version}"))
            maps = build.build_maps(cfg)
            refs = source.refs()[: args.max_scenes]
    assert source is not None and maps is not None
    cases = []
    for ref in tqdm(refs, desc="scenes + metric caches", disable=not args.progress):
        scene = source.load(ref)
        map_api = maps(scene.map_name)
        caches = {v: providers[v](scene, map_api) for v in providers}
        cases.append(Case(ref.token, observation_from_scene(scene, map_api), caches))
    return cases, scorers


def endpoint_diversity(candidates: np.ndarray) -> float:
    """Mean pairwise distance (m) between the endpoints of candidates ``(K, 8, 3)``."""
    end = candidates[:, -1, :2]
    k = len(end)
    if k < 2:
        return 0.0
    d = np.linalg.norm(end[:, None] - end[None], axis=-1)
    return float(d[np.triu_indices(k, 1)].mean())


def run_order(
    model: Any, order: str, cases: Sequence[Case], scorers: dict[str, Any], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Per-scene rows for one order: plain and reflecting planner back to back on each scene."""
    common = {"order": order, "steps": args.steps, "num_candidates": args.candidates, "raster": args.raster}
    planners = {
        False: MaskedClosedLoopPlanner(model, reflect=False, **common),
        True: MaskedClosedLoopPlanner(
            model,
            reflect=True,
            max_reflections=args.max_reflections,
            max_iterations=args.max_iterations,
            radius=args.radius,
            patience=args.patience,
            track=args.track,
            **common,
        ),
    }
    for planner in planners.values():  # warm-up: lazy map trees, first torch calls
        planner.plan(cases[0].observation)
    rows = []
    for case in tqdm(cases, desc=order, disable=not args.progress):
        for reflect, planner in planners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            plan = planner.plan(case.observation).poses
            latency, cpu = time.perf_counter() - t0, time.process_time() - c0
            record = planner.last_record
            assert record is not None and planner.last_candidates is not None
            row = {"token": case.token, "order": order, "reflect": reflect, "latency_ms": latency * 1e3}
            row["cpu_ms"] = cpu * 1e3
            for version, scorer in scorers.items():
                scores = scorer.score(case.caches[version], plan[None])
                row[version] = float(scores["score"][0])
                if version == "v1":
                    row.update({short: float(scores[name][0]) for short, name in SUB_METRICS.items()})
            row["diversity_m"] = endpoint_diversity(planner.last_candidates)
            row["div"] = float(pairwise_diversity(planner.last_candidates))
            row["top_unsafe"] = bool(record.unsafe is not None and record.unsafe[0] > 0)
            row["changed"] = bool(not np.array_equal(plan, record.candidates[0]))
            row["fell_back"] = record.fell_back
            row["chosen"] = record.chosen  # -1: a repaired candidate; > 0: another candidate that passed the check
            row["rounds"] = sum(r.iterations for r in record.reflections)
            rows.append(row)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (order, reflect): means over scenes (latency: mean and median)."""
    out = []
    keys = sorted({(r["order"], r["reflect"]) for r in rows}, key=lambda k: (ORDERS.index(k[0]), k[1]))
    for order, reflect in keys:
        sel = [r for r in rows if r["order"] == order and r["reflect"] == reflect]
        lat = np.array([r["latency_ms"] for r in sel])
        out.append(
            {
                "order": order,
                "reflect": reflect,
                "scenes": len(sel),
                "PDMS": float(np.mean([r["v1"] for r in sel])),
                "EPDMS": float(np.mean([r["v2"] for r in sel])),
                "latency_ms": float(lat.mean()),
                "latency_median_ms": float(np.median(lat)),
                "cpu_ms": float(np.mean([r["cpu_ms"] for r in sel])),
                **{short: float(np.mean([r[short] for r in sel])) for short in SUB_METRICS},
                "diversity_m": float(np.mean([r["diversity_m"] for r in sel])),
                "div": float(np.mean([r["div"] for r in sel])),
                "top_unsafe": float(np.mean([r["top_unsafe"] for r in sel])),
                "changed": float(np.mean([r["changed"] for r in sel])),
                "fell_back": float(np.mean([r["fell_back"] for r in sel])),
                "other": float(np.mean([r["chosen"] > 0 for r in sel])),
                "repaired": float(np.mean([r["chosen"] == -1 for r in sel])),
                "rounds": float(np.mean([r["rounds"] for r in sel])),
            }
        )
    return out


def print_report(summary: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> None:
    head = f"{'order':<16}{'reflect':<9}{'PDMS':>7}{'EPDMS':>7}" + "".join(f"{k:>6}" for k in SUB_METRICS)
    head += f"{'ms/plan':>9}{'median':>8}{'cpu ms':>8}{'div(m)':>8}{'Div':>6}"
    print(head + f"{'top unsafe':>11}{'changed':>9}{'other':>7}{'repaired':>9}{'fallback':>9}{'rounds':>7}")
    for s in summary:
        print(
            f"{s['order']:<16}{'yes' if s['reflect'] else 'no':<9}{s['PDMS']:>7.4f}{s['EPDMS']:>7.4f}"
            + "".join(f"{100 * s[k]:>6.1f}" for k in SUB_METRICS)
            + f"{s['latency_ms']:>9.1f}{s['latency_median_ms']:>8.1f}{s['cpu_ms']:>8.1f}{s['diversity_m']:>8.2f}"
            f"{100 * s['div']:>6.1f}{s['top_unsafe']:>11.1%}{s['changed']:>9.1%}{s['other']:>7.1%}"
            f"{s['repaired']:>9.1%}{s['fell_back']:>9.1%}{s['rounds']:>7.2f}"
        )
    by = {(s["order"], s["reflect"]): s for s in summary}
    for order in dict.fromkeys(s["order"] for s in summary):
        off, on = by[(order, False)], by[(order, True)]
        ratios = [
            b["latency_ms"] / a["latency_ms"]
            for a, b in zip(
                [r for r in rows if r["order"] == order and not r["reflect"]],
                [r for r in rows if r["order"] == order and r["reflect"]],
            )
        ]
        print(
            f"{order}: latency reflection / no reflection {on['latency_ms'] / off['latency_ms']:.2f}x "
            f"(CPU time {on['cpu_ms'] / off['cpu_ms']:.2f}x) "
            f"(per-scene median {np.median(ratios):.2f}x, max {np.max(ratios):.2f}x); "
            f"PDMS delta {100 * (on['PDMS'] - off['PDMS']):+.2f} points, "
            f"EPDMS delta {100 * (on['EPDMS'] - off['EPDMS']):+.2f} points"
        )


def write_rows(rows: Sequence[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ckpt", required=True, help="masked_il checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--maps-root", required=True)
    parser.add_argument("--split", default="synth_test")
    parser.add_argument("--frame-interval", type=int, default=8)
    parser.add_argument("--metric-cache-v1", default=None, help="metric cache folder of navsim_v1 (None: in memory)")
    parser.add_argument("--metric-cache-v2", default=None, help="metric cache folder of navsim_v2 (None: in memory)")
    parser.add_argument("--orders", nargs="+", default=list(ORDERS), choices=ORDERS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--max-reflections", type=int, default=1)
    parser.add_argument("--max-iterations", type=int, default=10, help="reflection rounds per candidate")
    parser.add_argument("--radius", type=int, default=10, help="anchor search radius (tokens, Manhattan)")
    parser.add_argument("--patience", type=int, default=3, help="rounds without progress before giving up (0: off)")
    parser.add_argument("--track", action="store_true", help="reflection judges the tracked motion (10 Hz)")
    parser.add_argument("--max-scenes", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="CSV of the per-scene rows")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.patience = args.patience or None
    planner = masked_planner(args.ckpt)
    args.raster = planner.raster
    cases, scorers = load_cases(args)
    rows = [row for order in args.orders for row in run_order(planner.model, order, cases, scorers, args)]
    print(
        f"{args.split}: {len(cases)} scenes, frame interval {args.frame_interval}, steps {args.steps}, "
        f"K = {args.candidates}, track {args.track}, threads {args.threads}, ckpt {args.ckpt}"
    )
    print_report(summarise(rows), rows)
    if args.out is not None:
        write_rows(rows, args.out)


if __name__ == "__main__":
    main()
