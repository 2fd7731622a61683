"""``diffplan data select``: the hard scenes of a split, written as a scene list (a navtest for any data).

    diffplan data select --data-root DIR --split synth_test [--name synth_navtest] [--workers 2]
    diffplan bench protocol=navsim_v1 planner=pdm_closed split=synth_navtest data_root=DIR maps_root=DIR/maps

Every scene of the source split is scored twice with the NAVSIM v1 protocol (:class:`SelectionRule`):

* by the **constant-velocity** plan, the ego's current speed held along its current heading, i.e. the ego
  history extrapolated. A scene it scores ``>= max_extrapolation_score`` is dropped: driving on as before
  solves it, so it tells planners apart only by how well they copy the history.
* by the **logged expert**. A scene it scores ``< min_expert_score`` is dropped: the label itself collides,
  leaves the road, comes too close or falls far behind PDM-Closed's progress, so it is no fair target. (On the
  synthetic city almost all of these are progress: the expert waits longer in a queue than PDM-Closed.)

Why this rule: NAVSIM's ``navtest`` is a selected list of OpenScene's ``test`` scenes; its README describes
them as scenes with intention changes, where the plan cannot be had by extrapolating the ego history, and
the published navtest rows show the human at 100 on NC, DAC and TTC over every scene (a failure of any of
them caps a human PDMS at 7/12), with the constant-velocity agent at 20.6. The configs publish only the
resulting tokens, not the rule or its thresholds; ``0.8`` for both is this project's choice.

The two benchmark runs are ordinary ``diffplan bench`` runs under ``<data_root>/scene_lists/.work/<name>/``
(journals, reports, and the metric caches they share), so an interrupted selection resumes where it
stopped; the list is written (temporary name, then rename) to ``<data_root>/scene_lists/<name>.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from simulation.datasets.scene_lists import SceneList, scene_list_path, selected_in_order, write_scene_list
from simulation.datasets.splits import SplitError, split_definition
from simulation.evaluation.sources import BenchConfigError

WORK_DIR = ".work"


@dataclass(frozen=True)
class SelectionRule:
    """Which scenes of a split are hard (see the module docstring)."""

    protocol: str = "navsim_v1"
    extrapolation_planner: str = "constant_velocity"
    expert_planner: str = "log_replay"
    max_extrapolation_score: float = 0.8
    min_expert_score: float = 0.8
    # > 0: also keep every plus_every-th scene the rule drops (in split order, failed scenes aside), so that a
    # training list mixes the hard scenes with a share of the easy ones (RL on hard scenes alone forgets the rest)
    plus_every: int = 0

    def __post_init__(self) -> None:
        for name in ("max_extrapolation_score", "min_expert_score"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SelectionRule.{name} must be in [0, 1], got {value}")
        if self.plus_every < 0:
            raise ValueError(f"SelectionRule.plus_every must be >= 0, got {self.plus_every}")


def select(
    extrapolation_rows: Sequence[Mapping[str, Any]],
    expert_rows: Sequence[Mapping[str, Any]],
    rule: SelectionRule,
) -> tuple[set[str], dict[str, Any]]:
    """Tokens kept by ``rule`` from the rows of the two benchmark runs, and the counts behind the choice.

    A scene that either run could not evaluate (``valid`` false, or missing from one run) is not kept and is
    counted as ``failed``. With ``rule.plus_every = n > 0`` every n-th dropped scene (the 1st, the n+1-th, ...)
    is kept as well and counted as ``added`` (``selected`` counts both).
    """
    expert = {str(r["token"]): r for r in expert_rows}
    kept: set[str] = set()
    dropped: list[tuple[str, str]] = []
    counts: Counter[str] = Counter()
    per_type: Counter[str] = Counter()
    for row in extrapolation_rows:
        token = str(row["token"])
        counts["scenes"] += 1
        other = expert.get(token)
        if not row.get("valid") or other is None or not other.get("valid"):
            counts["failed"] += 1
            continue
        extrapolable = float(row["score"]) >= rule.max_extrapolation_score
        bad_label = float(other["score"]) < rule.min_expert_score
        counts["extrapolable"] += extrapolable
        counts["expert_below"] += bad_label
        kind = str(row.get("scenario_type", "unknown"))
        if not (extrapolable or bad_label):
            kept.add(token)
            per_type[kind] += 1
        else:
            dropped.append((token, kind))
    if rule.plus_every > 0:
        for token, kind in dropped[:: rule.plus_every]:
            kept.add(token)
            per_type[kind] += 1
            counts["added"] += 1
    counts["selected"] = len(kept)
    return kept, {
        **{k: int(counts[k]) for k in ("scenes", "failed", "extrapolable", "expert_below", "added", "selected")},
        "per_type": dict(sorted(per_type.items())),
    }


def _bench_config(
    rule: SelectionRule,
    planner: str,
    split: str,
    data_root: str,
    maps_root: str,
    work: Path,
    workers: int,
    progress: bool,
) -> Any:
    from simulation.evaluation.cli import compose_config

    worker = ["worker=sequential"] if workers <= 1 else ["worker=process", f"worker.num_workers={workers}"]
    return compose_config(
        [
            f"protocol={rule.protocol}",
            f"planner={planner}",
            f"split={split}",
            f"data_root={data_root}",
            f"maps_root={maps_root}",
            *worker,
            f"output_dir={work / planner}",
            f"metric_cache_dir={work / 'metric_cache'}",
            "report.num_worst=0",
            f"progress={str(progress).lower()}",
        ]
    )


def build_scene_list(
    data_root: str | os.PathLike[str],
    split: str,
    name: str,
    maps_root: str | os.PathLike[str] | None = None,
    rule: SelectionRule | None = None,
    workers: int = 1,
    progress: bool = False,
) -> tuple[SceneList, Path]:
    """Score every scene of ``split`` with the rule's two planners, select, and write the scene list.

    Returns:
        The list and the path it was written to (``<data_root>/scene_lists/<name>.yaml``).

    Raises:
        BenchConfigError: the split is unknown, is itself a scene list, or has no logs.
    """
    from simulation.evaluation.cli import run

    rule = SelectionRule() if rule is None else rule
    data_root = Path(data_root).resolve()
    maps_root = Path(maps_root).resolve() if maps_root else data_root / "maps"
    try:
        spec = split_definition(split)
    except SplitError as exc:
        raise BenchConfigError(str(exc)) from None
    if spec.get("scene_list"):
        raise BenchConfigError(f"split {split!r} is already a scene list; select from a log split")
    work = data_root / "scene_lists" / WORK_DIR / name
    rows: dict[str, list[dict[str, Any]]] = {}
    for planner in (rule.extrapolation_planner, rule.expert_planner):
        cfg = _bench_config(rule, planner, split, str(data_root), str(maps_root), work, workers, progress)
        rows[planner] = run(cfg)["rows"]
    extrapolation = rows[rule.extrapolation_planner]
    kept, counts = select(extrapolation, rows[rule.expert_planner], rule)
    candidates = [(str(r["log_name"]), str(r["token"])) for r in extrapolation]
    log_names, tokens = selected_in_order(candidates, kept)
    scene_list = SceneList(name, split, log_names, tokens, asdict(rule), counts)
    return scene_list, write_scene_list(scene_list_path(data_root, name), scene_list)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffplan data select", description=__doc__.split("\n", 1)[0])
    p.add_argument("--data-root", default=os.environ.get("NUPLAN_DATA_ROOT"), help="folder of the split folders")
    p.add_argument("--maps-root", default=None, help="maps (default <data-root>/maps)")
    p.add_argument("--split", default="synth_test", help="log split to select from (default synth_test)")
    p.add_argument("--name", default="synth_navtest", help="scene list name (default synth_navtest)")
    p.add_argument("--workers", type=int, default=1, help="benchmark processes (default 1)")
    p.add_argument(
        "--max-extrapolation-score",
        type=float,
        default=SelectionRule.max_extrapolation_score,
        help="drop scenes the constant-velocity plan scores at least this (default 0.8)",
    )
    p.add_argument(
        "--min-expert-score",
        type=float,
        default=SelectionRule.min_expert_score,
        help="drop scenes the logged expert scores below this (default 0.8)",
    )
    p.add_argument(
        "--plus-every",
        type=int,
        default=0,
        help="also keep every N-th scene the rule drops: hard scenes mixed with a share of easy ones (default 0: none)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``diffplan data select``; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.data_root:
        print("diffplan data select: no data root (--data-root or NUPLAN_DATA_ROOT)", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"diffplan data select: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        rule = SelectionRule(
            max_extrapolation_score=args.max_extrapolation_score,
            min_expert_score=args.min_expert_score,
            plus_every=args.plus_every,
        )
    except ValueError as exc:
        print(f"diffplan data select: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        scene_list, path = build_scene_list(
            args.data_root, args.split, args.name, args.maps_root, rule, args.workers, not args.no_progress
        )
    except BenchConfigError as exc:
        print(f"diffplan data select: {exc}", file=sys.stderr)
        return 2
    c = scene_list.counts
    added = f"; {c['added']} dropped scenes kept by --plus-every {rule.plus_every}" if rule.plus_every else ""
    print(
        f"{args.split} -> {args.name}: {c['selected']} of {c['scenes']} scenes from {len(scene_list.log_names)} logs "
        f"({c['extrapolable']} solved by constant velocity, {c['expert_below']} with the expert below "
        f"{rule.min_expert_score}, {c['failed']} failed{added}) in {time.perf_counter() - start:.0f} s -> {path}"
    )
    for kind, n in sorted(c["per_type"].items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {kind:<58} {n:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
