"""``diffplan data scenes``: extract NAVSIM scenes or nuPlan scenarios from a split and print a summary.

diffplan data scenes --data-root DIR --split synth_test [--kind navsim|nuplan] [--maps-root DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import Any

from simulation.datasets.scenes import ScenarioFilter, SceneFilter
from simulation.datasets.splits import LoadReport, SplitError, load_scenarios, load_scenes, split_log_paths
from simulation.types import DrivingCommand


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffplan data scenes", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=os.environ.get("NUPLAN_DATA_ROOT"), help="folder of the split folders")
    p.add_argument("--maps-root", default=None, help="maps: driving commands from the route centre line")
    p.add_argument("--split", required=True, help="split name (configs/data/splits/<split>.yaml)")
    p.add_argument("--kind", choices=("navsim", "nuplan"), default="navsim", help="NAVSIM scenes or nuPlan scenarios")
    p.add_argument("--history", type=int, default=4, help="NAVSIM history frames (incl. current)")
    p.add_argument("--future", type=int, default=10, help="NAVSIM future frames")
    p.add_argument("--frame-interval", type=int, default=None, help="NAVSIM window step (default: non-overlapping)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.data_root:
        print("diffplan data scenes: no data root (--data-root or NUPLAN_DATA_ROOT)", file=sys.stderr)
        return 2
    report = LoadReport()
    windows: list[Any]
    start = time.perf_counter()
    try:
        paths = split_log_paths(args.data_root, args.split)
        if args.kind == "navsim":
            command_fn = None
            if args.maps_root:
                command_fn = _map_commands(args.maps_root)
            sf = SceneFilter(args.history, args.future, args.frame_interval)
            windows = load_scenes(args.data_root, args.split, sf, command_fn, report)
            counts = Counter(DrivingCommand(s.driving_command).name.lower() for s in windows)
        else:
            windows = load_scenarios(args.data_root, args.split, ScenarioFilter(), report)
            counts = Counter(str(s.scenario_type) for s in windows)
    except (SplitError, ValueError) as exc:
        print(f"diffplan data scenes: {exc}", file=sys.stderr)
        return 1
    took = time.perf_counter() - start
    kind = "scenes" if args.kind == "navsim" else "scenarios"
    print(f"{args.split}: {len(paths)} logs ({report.num_skipped} skipped), {len(windows)} {kind} in {took:.1f} s")
    for name, n in counts.most_common():
        print(f"  {name:<58} {n:>6}")
    for path, why in report.skipped or []:
        print(f"  skipped {path}: {why}")
    return 0


def _map_commands(maps_root: str):  # type: ignore[no-untyped-def]
    """Driving commands from each log's map (maps loaded once per location)."""
    from simulation.datasets.scenes import route_command
    from simulation.maps.api import MapAPI

    cache: dict[str, object] = {}

    def command(log, frame):  # type: ignore[no-untyped-def]
        if log.map_location not in cache:
            cache[log.map_location] = route_command(MapAPI.load(maps_root, log.map_location))
        return cache[log.map_location](log, frame)  # type: ignore[operator]

    return command


if __name__ == "__main__":
    raise SystemExit(main())
