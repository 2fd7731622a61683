"""Closed-loop rows from nuPlan benchmark runs: the CLS score, at-fault collisions per scenario and per km driven,
progress along the expert route and comfort, one markdown row per run folder.

    diffplan bench protocol=nuplan_cls_nr planner=... output_dir=RUNS/NAME/nuplan_cls_nr ...
    python benchmarks/closed_loop_table.py RUNS/pdm_closed/nuplan_cls_nr RUNS/truncated_il/nuplan_cls_nr ...

Each folder's ``journal.jsonl`` is read: the nuPlan metrics of every scenario and the driven rear-axle poses, whose
path length gives the distance. A scenario counts as an at-fault collision when nuPlan's
``no_ego_at_fault_collisions`` multiplier is below 1 (0 for a vehicle, pedestrian or cyclist, 0.5 for an object);
per km, such scenarios over the kilometres all valid scenarios drove. Failed scenarios are listed, not averaged.
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
    )


HEADER = (
    "| run | scenarios | score | at-fault collisions | per km | progress along the route | comfortable | km |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|"
)


def markdown_row(row: ClosedLoopRow) -> str:
    failed = f" ({row.failed} failed)" if row.failed else ""
    return (
        f"| {row.name} | {row.scenarios}{failed} | {100 * row.score:.1f} "
        f"| {row.at_fault} ({100 * row.at_fault_share:.0f} %) "
        f"| {row.at_fault_per_km:.2f} | {100 * row.progress:.1f} | {100 * row.comfortable:.1f} | {row.km:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="diffplan bench output folders (nuplan_cls_nr / _r)")
    parser.add_argument("--names", nargs="*", help="row labels (default: the folders' parent / name)")
    args = parser.parse_args()
    names = args.names or [f"{run.parent.name}/{run.name}" for run in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit(f"{len(names)} names for {len(args.runs)} runs")
    print(HEADER)
    for name, run in zip(names, args.runs):
        print(markdown_row(aggregate(name, journal_records(run))))


if __name__ == "__main__":
    main()
