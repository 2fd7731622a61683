"""Closed-loop rows from nuPlan benchmark runs: the CLS score, at-fault collisions per scenario and per km driven,
progress along the expert route and comfort, one markdown row per run folder.

    diffplan bench protocol=nuplan_cls_nr planner=... output_dir=RUNS/NAME/nuplan_cls_nr ...
    python benchmarks/closed_loop_table.py RUNS/pdm_closed/nuplan_cls_nr RUNS/truncated_il/nuplan_cls_nr ...

Each folder's ``journal.jsonl`` is read: the nuPlan metrics of every scenario and the driven rear-axle poses, whose
path length gives the distance. A scenario counts as an at-fault collision when nuPlan's
``no_ego_at_fault_collisions`` multiplier is below 1 (0 for a vehicle, pedestrian or cyclist, 0.5 for an object);
per km, such scenarios over the kilometres all valid scenarios drove. Failed scenarios are listed, not averaged.
``--multipliers`` adds, for each of CLS's other multipliers, the scenarios where it is below 1 (off the drivable
area, against the driving direction, not making progress), and the scenarios that score 0.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: the CLS multiplier whose value below 1 marks an at-fault collision
COLLISION_KEY = "no_ego_at_fault_collisions"
#: CLS's other multipliers (``rewards.nuplan_metrics.CLS_MULTIPLIERS``) and their columns under ``--multipliers``
OTHER_MULTIPLIERS: dict[str, str] = {
    "drivable_area_compliance": "off road",
    "driving_direction_compliance": "wrong way",
    "ego_is_making_progress": "not progressing",
}


@dataclass(frozen=True)
class ClosedLoopRow:
    """Aggregates of one closed-loop run (valid scenarios only)."""

    name: str
    scenarios: int
    failed: int
    score: float
    at_fault: int
    km: float
    progress: float
    comfortable: float
    #: valid scenarios whose multiplier (a key of :data:`OTHER_MULTIPLIERS`) is below 1
    failures: Mapping[str, int]
    #: valid scenarios that score 0
    zero: int

    @property
    def at_fault_share(self) -> float:
        return self.at_fault / self.scenarios if self.scenarios else float("nan")

    @property
    def at_fault_per_km(self) -> float:
        return self.at_fault / self.km if self.km > 0 else float("nan")


def path_length(poses: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Length in m of the polyline through the ``(x, y, ...)`` poses."""
    xy = np.asarray(poses, dtype=np.float64).reshape(len(poses), -1)[:, :2]
    return float(np.linalg.norm(np.diff(xy, axis=0), axis=1).sum()) if len(xy) > 1 else 0.0


def journal_records(folder: Path) -> list[dict[str, Any]]:
    """Scenario records of a benchmark journal (the header line skipped; the last record of a token wins)."""
    path = folder / "journal.jsonl"
    if not path.is_file():
        raise SystemExit(f"{folder}: no journal.jsonl (not a diffplan bench output folder)")
    records: dict[str, dict[str, Any]] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{line_no}: not JSON ({exc.msg})") from None
        if "token" in record:
            records[str(record["token"])] = record
    return list(records.values())


def aggregate(name: str, records: Iterable[Mapping[str, Any]]) -> ClosedLoopRow:
    """:class:`ClosedLoopRow` of the valid records (``score``, the metrics and ``ego_poses`` each)."""
    records = list(records)
    valid = [r for r in records if r.get("valid")]
    if not valid:
        raise SystemExit(f"{name}: no valid scenario")
    mean = lambda key: float(np.mean([float(r[key]) for r in valid]))  # noqa: E731
    return ClosedLoopRow(
        name=name,
        scenarios=len(valid),
        failed=len(records) - len(valid),
        score=mean("score"),
        at_fault=sum(float(r[COLLISION_KEY]) < 1.0 for r in valid),
        km=sum(path_length(r["ego_poses"]) for r in valid if r.get("ego_poses")) / 1000.0,
        progress=mean("ego_progress_along_expert_route"),
        comfortable=mean("ego_is_comfortable"),
        failures={key: sum(float(r.get(key, 1.0)) < 1.0 for r in valid) for key in OTHER_MULTIPLIERS},
        zero=sum(float(r["score"]) == 0.0 for r in valid),
    )


HEADER = (
    "| run | scenarios | score | at-fault collisions | per km | progress along the route | comfortable | km |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|"
)


def header(multipliers: bool = False) -> str:
    """The table's header; with ``multipliers``, the columns of :data:`OTHER_MULTIPLIERS` and "score 0"."""
    if not multipliers:
        return HEADER
    names, rule = HEADER.split("\n")
    extra = [*OTHER_MULTIPLIERS.values(), "score 0"]
    return f"{names} {' | '.join(extra)} |\n{rule}{'---:|' * len(extra)}"


def markdown_row(row: ClosedLoopRow, multipliers: bool = False) -> str:
    failed = f" ({row.failed} failed)" if row.failed else ""
    line = (
        f"| {row.name} | {row.scenarios}{failed} | {100 * row.score:.1f} "
        f"| {row.at_fault} ({100 * row.at_fault_share:.0f} %) "
        f"| {row.at_fault_per_km:.2f} | {100 * row.progress:.1f} | {100 * row.comfortable:.1f} | {row.km:.1f} |"
    )
    if multipliers:
        line += "".join(f" {row.failures[key]} |" for key in OTHER_MULTIPLIERS) + f" {row.zero} |"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="diffplan bench output folders (nuplan_cls_nr / _r)")
    parser.add_argument("--names", nargs="*", help="row labels (default: the folders' parent / name)")
    parser.add_argument(
        "--multipliers", action="store_true", help="also count the scenarios failing each other CLS multiplier"
    )
    args = parser.parse_args()
    names = args.names or [f"{run.parent.name}/{run.name}" for run in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit(f"{len(names)} names for {len(args.runs)} runs")
    print(header(args.multipliers))
    for name, run in zip(names, args.runs):
        print(markdown_row(aggregate(name, journal_records(run)), args.multipliers))


if __name__ == "__main__":
    main()
