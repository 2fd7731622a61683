"""The safety gate's cost per planner call: a generator + discriminator pair with and without
``planners.safety_gate`` on the same closed-loop observations.

    python benchmarks/bench_safety_gate.py --ckpt PAIR.ckpt --data-root D --maps-root D/maps \
        [--split synth_test] [--scenarios 4] [--every 10] [--repeats 2]

Drives the pair (ungated) through the first ``--scenarios`` scenarios of the split in the CLS-NR loop, keeps every
``--every``-th observation, then times ``plan`` of the pair and of the gated pair on those observations, alternating
the two, best of ``--repeats`` rounds. Prints milliseconds per call, the gate's share (PDM-Closed's observation and
metric cache, the NAVSIM scorer over the pickable candidates) and the ratio to the pair alone, and how often the gate
changed the pair's pick.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planners.adapter import LearnedPlanner  # noqa: E402
from planners.reranked import reranked_planner  # noqa: E402
from planners.safety_gate import gated_planner  # noqa: E402
from simulation.closed_loop import ClosedLoopSimulator  # noqa: E402
from simulation.evaluation.sources import MapProvider, nuplan_log_source  # noqa: E402


def observations(pair: LearnedPlanner, args: argparse.Namespace) -> list[Any]:
    source = nuplan_log_source(args.data_root, args.split, "closed_loop", maps_root=args.maps_root)
    maps = MapProvider(args.maps_root)
    sim = ClosedLoopSimulator()
    kept = []
    for ref in source.refs()[: args.scenarios]:
        scenario: Any = source.load(ref)
        state = sim.reset(scenario, maps(scenario.map_name))
        i = 0
        while not state.done:
            observation = sim.observe(state)
            if i % args.every == 0:
                kept.append(observation)
            state = sim.step(state, pair.plan(observation))
            i += 1
    return kept


def timed(planner: Any, obs: list[Any]) -> tuple[float, list[np.ndarray]]:
    start = time.perf_counter()
    plans = [planner.plan(o).poses for o in obs]
    return (time.perf_counter() - start) / len(obs), plans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a discriminator run's checkpoint (planner=reranked)")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--maps-root", required=True)
    parser.add_argument("--split", default="synth_test")
    parser.add_argument("--scenarios", type=int, default=4)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pair, gated = reranked_planner(args.ckpt), gated_planner(args.ckpt)
    obs = observations(pair, args)
    best_pair, best_gated = np.inf, np.inf
    for _ in range(args.repeats):
        t_pair, own = timed(pair, obs)
        t_gated, chosen = timed(gated, obs)
        best_pair, best_gated = min(best_pair, t_pair), min(best_gated, t_gated)
    changed = np.mean([not np.allclose(a, b) for a, b in zip(own, chosen, strict=True)])
    print(f"{len(obs)} observations of {args.scenarios} scenarios ({args.split}), one thread, best of {args.repeats}")
    print(f"pair alone  {1e3 * best_pair:7.1f} ms per call")
    print(
        f"gated pair  {1e3 * best_gated:7.1f} ms per call (the gate {1e3 * (best_gated - best_pair):.1f} ms), "
        f"x{best_gated / best_pair:.2f} the pair alone; the gate changed {100 * changed:.1f} % of the picks"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
