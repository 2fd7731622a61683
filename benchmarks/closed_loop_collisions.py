"""What a planner collides with in the nuPlan closed loop: every at-fault collision of a CLS-NR (or CLS-R) run, with
nuPlan's collision type, the time, the ego's speed, the logged ego's speed at that moment, and the other agent's speed
and type.

    python benchmarks/closed_loop_collisions.py --data-root C/data --maps-root C/data/maps --ckpt RUN/best.ckpt
        [--split synth_test] [--max-scenarios N] [--planner learned|masked|reranked] [--reactive] [--safety-gate]

The scenarios are simulated as ``diffplan bench protocol=nuplan_cls_nr`` does (log-replay agents, LQR + bicycle,
replanning every 0.1 s; ``--reactive``: IDM agents, as ``protocol=nuplan_cls_r``) and the collisions found by nuPlan's
rules (``rewards.nuplan_collisions``). ``--planner reranked`` drives a generator + discriminator checkpoint as
``planner=reranked`` does (``--safety-gate``: as ``planner=reranked_gated``). Prints one line per at-fault collision,
then the counts by collision type and how many happened while the ego drove faster than the log.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.nuplan_collisions import CollisionResult, CollisionType  # noqa: E402
from simulation.types import AgentIndex, StateIndex, TrackedObjectType  # noqa: E402

#: The ego counts as faster than the log when its speed exceeds the logged one by more than this (m/s).
FASTER_MARGIN = 1.0


def at_fault_records(
    result: CollisionResult,
    ego_states: np.ndarray,
    log_speed: np.ndarray,
    boxes: np.ndarray,
    types: np.ndarray,
    dt: float = 0.1,
) -> list[dict[str, Any]]:
    """One record per at-fault collision of a rollout.

    Args:
        result: the rollout's collisions by nuPlan's rules (``rewards.nuplan_metrics.rollout_collisions``).
        ego_states: ``(T, 11)`` simulated ego states; log_speed: ``(T,)`` the logged ego's speed at the same times.
        boxes, types: ``(T, N, 7)``, ``(N,)`` the agents.
    """
    records = []
    for track in np.flatnonzero(result.at_fault):
        frame = int(result.first_collision_frame[track])
        records.append(
            {
                "time_s": frame * dt,
                "type": CollisionType(int(result.collision_type[track])).name,
                "ego_speed": float(np.hypot(*ego_states[frame, [StateIndex.VX, StateIndex.VY]])),
                "log_speed": float(log_speed[frame]),
                "agent_speed": float(np.hypot(*boxes[frame, track, [AgentIndex.VX, AgentIndex.VY]])),
                "agent_type": TrackedObjectType(int(types[track])).name,
            }
        )
    return records


def summarise(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts by collision type, the number where the ego drove faster than the log, and the median speeds."""
    records = list(records)
    faster = sum(r["ego_speed"] > r["log_speed"] + FASTER_MARGIN for r in records)
    return {
        "collisions": len(records),
        "by_type": dict(collections.Counter(r["type"] for r in records).most_common()),
        "ego_faster_than_log": faster,
        "median_ego_speed": float(np.median([r["ego_speed"] for r in records])) if records else float("nan"),
        "median_log_speed": float(np.median([r["log_speed"] for r in records])) if records else float("nan"),
    }


def _simulate(args: argparse.Namespace) -> list[dict[str, Any]]:
    from planners.checkpoint import learned_planner, masked_planner
    from planners.reranked import reranked_planner
    from planners.safety_gate import gated_planner
    from rewards.nuplan_metrics import rollout_collisions, rollout_context, simulation_rollout
    from simulation.closed_loop import ClosedLoopSimulator
    from simulation.evaluation.sources import MapProvider, nuplan_log_source

    source = nuplan_log_source(args.data_root, args.split, "closed_loop", maps_root=args.maps_root)
    maps = MapProvider(args.maps_root)
    loaders: dict[str, Callable[[str], Any]] = {
        "learned": learned_planner,
        "masked": masked_planner,
        "reranked": gated_planner if args.safety_gate else reranked_planner,
    }
    planner = loaders[args.planner](args.ckpt)
    sim = ClosedLoopSimulator(reactive=args.reactive)
    out = []
    for ref in source.refs()[: args.max_scenarios]:
        scenario: Any = source.load(ref)  # a closed-loop scenario
        map_api = maps(scenario.map_name)
        rollout = simulation_rollout(scenario, sim.run(scenario, planner, map_api))
        collisions, _ = rollout_collisions(rollout, rollout_context(rollout, map_api))  # as score_simulation does
        ego = rollout.ego_states
        logged = rollout.expert_states[: len(ego)]
        log_speed = np.full(len(ego), np.nan)
        log_speed[: len(logged)] = np.hypot(logged[:, StateIndex.VX], logged[:, StateIndex.VY])
        records = at_fault_records(collisions, ego, log_speed, rollout.agent_boxes, rollout.agent_types, sim.config.dt)
        for record in records:
            record = {"token": ref.token, "scenario_type": ref.scenario_type, **record}
            out.append(record)
            print(
                f"{record['token']} {record['scenario_type'][:36]:36s} t={record['time_s']:4.1f} s "
                f"{record['type']:14s} "
                f"ego {record['ego_speed']:4.1f} m/s, log {record['log_speed']:4.1f} m/s, "
                f"{record['agent_type'].lower()} {record['agent_speed']:4.1f} m/s",
                flush=True,
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--maps-root", required=True)
    parser.add_argument("--ckpt", required=True, help="a learned planner's (or a discriminator run's) checkpoint")
    parser.add_argument("--planner", choices=("learned", "masked", "reranked"), default="learned")
    parser.add_argument("--reactive", action="store_true", help="IDM agents (CLS-R) instead of log replay (CLS-NR)")
    parser.add_argument(
        "--safety-gate",
        action="store_true",
        help="with --planner reranked: the pair behind the safety gate (planner=reranked_gated)",
    )
    parser.add_argument("--split", default="synth_test")
    parser.add_argument("--max-scenarios", type=int, default=None)
    args = parser.parse_args(argv)
    if args.safety_gate and args.planner != "reranked":
        parser.error("--safety-gate gates a generator + discriminator pair: give --planner reranked")
    summary = summarise(_simulate(args))
    print(
        f"{summary['collisions']} at-fault collisions: {summary['by_type']}; the ego faster than the log by more than "
        f"{FASTER_MARGIN:g} m/s in {summary['ego_faster_than_log']}; median speed ego {summary['median_ego_speed']:.1f}"
        f" m/s, log {summary['median_log_speed']:.1f} m/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
