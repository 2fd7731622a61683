"""``diffplan data synth``: generate a synthetic city in the nuPlan layout.

Example::

    diffplan data synth --out data/synth --logs 12 --towns 2 --seed 0 --workers 2
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from simulation.datasets.synthetic.generator import SPLITS, TOP_UP_BASE, LogSpec, plan_logs, top_up_spec
from simulation.datasets.synthetic.output import (
    SUMMARY,
    OutputFolderError,
    check_output_folder,
    city_stats,
    log_path,
    log_tag_counts,
    remove_leftovers,
    stats_path,
    write_manifest,
    write_maps_index,
    write_one_log,
    write_town_map,
)
from simulation.datasets.synthetic.tags import SCENARIO_TYPES
from simulation.io import atomic_write_text

logger = logging.getLogger(__name__)

#: name -> (logs, towns, duration_s, min_test_scenes): the last is the number of scenes (tagged 2 Hz frames) of
#: every scenario type that the test split is topped up to (:func:`top_up`; 0 = no top-up).
PRESETS = {"demo": (14, 2, 80.0, 30), "large": (600, 8, 90.0, 30), "tiny": (3, 1, 20.0, 0)}
#: Top-up logs are generated this many at a time (a fixed number, so that the result does not depend on --workers).
TOP_UP_BATCH = 2


class SynthParameterError(ValueError):
    """Invalid generator parameters (raised before anything is written)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffplan data synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="output folder (becomes a NUPLAN_DATA_ROOT)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="size preset (default: demo)")
    p.add_argument("--logs", type=int, default=None, help="number of logs (overrides the preset)")
    p.add_argument("--towns", type=int, default=None, help="number of towns (overrides the preset)")
    p.add_argument("--duration", type=float, default=None, help="seconds per log (overrides the preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", default="1", help="processes (an integer) or 'ray'")
    p.add_argument("--disjoint-test-towns", action="store_true", help="synth_test logs only on the last town")
    p.add_argument(
        "--min-test-scenes",
        type=int,
        default=None,
        help="top the test split up with drives made for the scenario types that have fewer scenes than this "
        "(the preset's: 30 for demo and large, 0 = off for tiny); at most as many logs as the test split has",
    )
    p.add_argument("--plots", type=int, default=3, help="BEV plots of the first logs (0 = none)")
    return p


def validate(args: argparse.Namespace) -> tuple[int, int, float, int | str, int]:
    """Resolve the preset and check every parameter; raises :class:`SynthParameterError`."""
    logs, towns, duration, min_scenes = PRESETS[args.preset]
    min_scenes = min_scenes if args.min_test_scenes is None else args.min_test_scenes
    logs = logs if args.logs is None else args.logs
    towns = towns if args.towns is None else args.towns
    duration = duration if args.duration is None else args.duration
    if not 1 <= logs < TOP_UP_BASE:
        raise SynthParameterError(f"--logs {logs}: need 1..{TOP_UP_BASE - 1} logs")
    if min_scenes < 0:
        raise SynthParameterError(f"--min-test-scenes {min_scenes}: must be >= 0")
    if not 1 <= towns <= 100:
        raise SynthParameterError(f"--towns {towns}: need 1..100 towns")
    if args.disjoint_test_towns and towns < 2:
        raise SynthParameterError("--disjoint-test-towns needs at least 2 towns")
    if not 5.0 <= duration <= 3600.0:
        raise SynthParameterError(f"--duration {duration}: need 5..3600 seconds")
    if args.seed < 0:
        raise SynthParameterError(f"--seed {args.seed}: must be >= 0")
    if args.workers == "ray":
        workers: int | str = "ray"
    else:
        try:
            workers = int(args.workers)
        except ValueError:
            raise SynthParameterError(f"--workers {args.workers!r}: an integer >= 1 or 'ray'") from None
        if workers < 1:
            raise SynthParameterError(f"--workers {workers}: need at least 1")
    if args.plots < 0:
        raise SynthParameterError(f"--plots {args.plots}: must be >= 0")
    try:
        importlib.import_module("simulation.datasets.nuplan_db")
    except ImportError as exc:
        raise SynthParameterError(f"the nuPlan log writer is not available ({exc})") from exc
    return logs, towns, duration, workers, min_scenes


def run_logs(root: Path, specs: list[LogSpec], workers: int | str, progress: bool = True) -> list[dict[str, Any]]:
    """Generate and write every missing log, sequentially, in a process pool or on Ray."""
    todo = [s for s in specs if not (log_path(root, s).is_file() and stats_path(root, s).is_file())]
    # the busiest drives first, so that a pool does not finish on one long log while the other workers idle
    todo.sort(key=lambda s: -(s.drive.vehicles_per_km + 10.0) * (s.drive.duration_s + s.drive.warmup_s))
    bar = _progress(len(todo), progress)
    results: list[dict[str, Any]] = []
    if workers == "ray":
        import ray

        ray.init(ignore_reinit_error=True, log_to_driver=False)
        task = ray.remote(write_one_log)
        pending = [task.remote(str(root), s) for s in todo]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results.append(ray.get(done[0]))
            bar.update(1)
    elif workers == 1 or len(todo) <= 1:
        for s in todo:
            results.append(write_one_log(str(root), s))
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            futures = [pool.submit(write_one_log, str(root), s) for s in todo]
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update(1)
    bar.close()
    return results


def top_up(
    root: Path, specs: list[LogSpec], towns: int, min_scenes: int, workers: int | str, disjoint_test: bool = False
) -> tuple[list[dict[str, Any]], Counter, list[tuple[LogSpec, str]]]:
    """Add test logs (:func:`top_up_spec`) made for the scenario types with fewer than ``min_scenes`` scenes in
    the test split of ``specs``, the shortest first, until every type has them or the top-up logs number as
    many as the planned test logs. Every decision is taken from the logs on disk, so a re-run (or another
    ``--workers``) makes the same ones. Returns the new logs' statistics, the test split's tag counts and the
    top-up logs with the type each was made for."""
    test = [s for s in specs if s.split == SPLITS[2]]
    counts: Counter = Counter()
    for s in test:
        counts.update(log_tag_counts(log_path(root, s)))
    if min_scenes <= 0 or not test:
        return [], counts, []
    first = specs[0]
    results: list[dict[str, Any]] = []
    extra: list[tuple[LogSpec, str]] = []
    while len(extra) < len(test):
        short = sorted((t for t in SCENARIO_TYPES if counts[f"tag:{t}"] < min_scenes), key=lambda t: counts[f"tag:{t}"])
        if not short:
            break
        n = min(TOP_UP_BATCH, len(test) - len(extra))
        kinds = [short[j % len(short)] for j in range(n)]
        batch = [
            top_up_spec(len(extra) + j, t, towns, first.seed, first.drive.duration_s, disjoint_test)
            for j, t in enumerate(kinds)
        ]
        results += run_logs(root, batch, workers, progress=False)
        for s in batch:
            counts.update(log_tag_counts(log_path(root, s)))
        extra += list(zip(batch, kinds))
    return results, counts, extra


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="synthetic logs", unit="log", disable=not enabled or total == 0, file=sys.stderr)


def summary(stats: Counter, num_logs: int, skipped: int, seconds: float) -> str:
    """Human-readable summary of generated logs."""
    frames = max(stats["frames"], 1)
    scenes = max(stats["scenes"], 1)
    lines = [
        f"logs: {num_logs} ({num_logs - skipped} generated now, {skipped} already present) in {seconds:.1f} s",
        f"frames: {stats['frames']} (20 Hz), agents per frame: {stats['boxes'] / frames:.1f}",
        f"ego km driven: {stats['metres'] / 1000.0:.2f}",
        f"2 Hz scenes: {stats['scenes']}; share with lead vehicle < 30 m: {stats['lead_lt_30m'] / scenes:.2f}, "
        f"red light ahead: {stats['red_light_ahead'] / scenes:.2f}, turn: {stats['turn'] / scenes:.2f}, "
        f"lane change: {stats['lane_change'] / scenes:.2f}",
        "scenario tags (2 Hz frames):",
    ]
    lines += [f"  {name:<58} {stats.get('tag:' + name, 0)}" for name in SCENARIO_TYPES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        logs, towns, duration, workers, min_scenes = validate(args)
        # the log count is not part of the manifest: logs are independent, so a re-run may add more (top-up logs
        # already written stay: the test split then holds at least what a fresh run would top it up to)
        manifest = {
            "towns": towns,
            "duration_s": duration,
            "seed": args.seed,
            "disjoint_test_towns": bool(args.disjoint_test_towns),
            "min_test_scenes": min_scenes,
            "format": "nuplan-v1.1",
        }
        root = args.out
        check_output_folder(root, manifest)
    except (SynthParameterError, OutputFolderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    for path in remove_leftovers(root):
        logger.info("removed %s (left by an interrupted run)", path)
    specs = plan_logs(logs, towns, args.seed, duration, args.disjoint_test_towns)
    write_manifest(root, manifest)
    used = sorted({s.town for s in specs})
    for t in used:
        write_town_map(root, args.seed, t)
    write_maps_index(root, used, args.seed)
    for split in SPLITS:
        (root / "splits" / split).mkdir(parents=True, exist_ok=True)
    results = run_logs(root, specs, workers)
    try:
        more, test_counts, extra = top_up(root, specs, towns, min_scenes, workers, args.disjoint_test_towns)
        stats = city_stats(root, specs + [s for s, _ in extra])  # every log of the city, whichever run wrote it
    except OutputFolderError as err:  # a test log that cannot be read (its tags decide the top-up)
        print(f"error: {err}", file=sys.stderr)
        return 2
    skipped = len(specs) + len(extra) - len(results) - len(more)
    text = summary(stats, len(specs) + len(extra), skipped, time.perf_counter() - start)
    if min_scenes > 0:
        short = {t: test_counts[f"tag:{t}"] for t in SCENARIO_TYPES if test_counts[f"tag:{t}"] < min_scenes}
        made = ", ".join(t for _, t in extra) or "none needed"
        text += f"\ntest split topped up to >= {min_scenes} scenes of every type: {len(extra)} logs ({made})"
        if short:
            text += f"\nstill short in the test split after the top-up: {short}"
    print(text)
    atomic_write_text(root / SUMMARY, json.dumps(dict(sorted(stats.items())), indent=2))
    if args.plots:
        from simulation.datasets.synthetic.plots import plot_logs

        for path in plot_logs(root, specs[: args.plots], args.seed):
            print(f"plot: {path}")
    print(f"hard scenes (navtest-style split synth_navtest): diffplan data select --data-root {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
