"""benchmarks/closed_loop_table.py: the closed-loop aggregates of a run on hand-built journal records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from closed_loop_table import (  # noqa: E402
    COLLISION_KEY,
    OTHER_MULTIPLIERS,
    aggregate,
    header,
    journal_records,
    markdown_row,
    path_length,
)

from rewards.nuplan_metrics import CLS_MULTIPLIERS


def _record(token: str, collision: float, poses: list[list[float]], valid: bool = True) -> dict:
    return {
        "token": token, "valid": valid, "score": 0.5 if collision == 1.0 else 0.0,
        "no_ego_at_fault_collisions": collision, "ego_progress_along_expert_route": 0.8,
        "ego_is_comfortable": 1.0 if valid else 0.0, "ego_poses": poses,
    }  # fmt: skip


def test_path_length_of_a_polyline() -> None:
    assert path_length([[0.0, 0.0, 0.0], [3.0, 4.0, 1.0], [3.0, 10.0, 2.0]]) == pytest.approx(11.0)
    assert path_length([[1.0, 1.0, 0.0]]) == 0.0


def test_aggregate_counts_at_fault_scenarios_per_scenario_and_per_km(tmp_path: Path) -> None:
    records = [
        _record("a", 1.0, [[0, 0, 0], [600, 0, 0]]),  # 600 m, no collision
        _record("b", 0.5, [[0, 0, 0], [0, 300, 0]]),  # 300 m, collided with an object (multiplier 0.5)
        _record("c", 0.0, [[0, 0, 0], [100, 0, 0]]),  # 100 m, collided with a vehicle
        _record("d", 1.0, [[0, 0, 0], [5000, 0, 0]], valid=False),  # failed: not counted
    ]
    journal = tmp_path / "journal.jsonl"
    lines = [{"journal": 1}, *records, {**records[0], "score": 1.0}]  # a resumed run rewrote token a
    journal.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    row = aggregate("run", journal_records(tmp_path))
    assert (row.scenarios, row.failed, row.at_fault) == (3, 1, 2)
    assert row.km == pytest.approx(1.0)
    assert row.at_fault_per_km == pytest.approx(2.0)
    assert row.at_fault_share == pytest.approx(2 / 3)
    assert row.score == pytest.approx((1.0 + 0.0 + 0.0) / 3)  # the last record of a token wins
    assert row.progress == pytest.approx(0.8) and row.comfortable == pytest.approx(1.0)
    assert markdown_row(row) == "| run | 3 (1 failed) | 33.3 | 2 (67 %) | 2.00 | 80.0 | 100.0 | 1.0 |"


def test_the_multiplier_columns_count_each_failing_multiplier(tmp_path: Path) -> None:
    assert {COLLISION_KEY, *OTHER_MULTIPLIERS} == set(CLS_MULTIPLIERS)
    records = [
        _record("a", 1.0, [[0, 0, 0], [500, 0, 0]]),
        {**_record("b", 1.0, [[0, 0, 0], [500, 0, 0]]), "driving_direction_compliance": 0.5, "score": 0.3},
        {**_record("c", 0.0, [[0, 0, 0], [10, 0, 0]]), "drivable_area_compliance": 0.0,
         "driving_direction_compliance": 0.0, "ego_is_making_progress": 0.0},
        {**_record("d", 1.0, [[0, 0, 0], [5, 0, 0]], valid=False), "drivable_area_compliance": 0.0},
    ]  # fmt: skip
    (tmp_path / "journal.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    row = aggregate("run", journal_records(tmp_path))
    assert dict(row.failures) == {
        "drivable_area_compliance": 1, "driving_direction_compliance": 2, "ego_is_making_progress": 1,
    }  # fmt: skip
    assert row.zero == 1  # c; b's 0.5 direction multiplier halves its score, not zeroes it
    assert markdown_row(row, multipliers=True).endswith("| 1 | 2 | 1 | 1 |")
    assert markdown_row(row) == markdown_row(row, multipliers=False)
    names, rule = header(multipliers=True).splitlines()
    assert names.endswith("| off road | wrong way | not progressing | score 0 |")
    assert names.count("|") == rule.count("|")


def test_a_folder_without_a_journal_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=str(tmp_path)):
        journal_records(tmp_path)
