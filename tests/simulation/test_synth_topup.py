"""The test split's top-up: drives made for the scenario types that are short there, and the decisions taken."""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from simulation.datasets.synthetic import cli
from simulation.datasets.synthetic.cli import main, top_up
from simulation.datasets.synthetic.generator import (
    CONGESTED_PER_KM,
    SPLITS,
    TOP_UP_BASE,
    TYPE_DRIVES,
    make_town,
    plan_logs,
    top_up_spec,
)
from simulation.datasets.synthetic.network import TurnType
from simulation.datasets.synthetic.tags import SCENARIO_TYPES
from simulation.datasets.synthetic.world import BICYCLE, TRUCK, DriveConfig, simulate_drive

SEED = 5


def test_every_scenario_type_has_a_drive_made_for_it():
    assert set(TYPE_DRIVES) == set(SCENARIO_TYPES)
    for name, (lead, red, density, turn) in TYPE_DRIVES.items():
        assert lead in (-1, TRUCK, BICYCLE) and turn in (-1, *map(int, TurnType))
        assert density is None or 0.0 < density < CONGESTED_PER_KM
        assert red == ("traffic_light" in name or name in ("waiting_for_pedestrian_to_cross", "near_multiple_vehicles"))
        truck = name.endswith("light_with_lead") or name in ("stopping_with_lead", "behind_long_vehicle")
        assert (lead == TRUCK) == truck
    assert TYPE_DRIVES["starting_left_turn"][3] == TurnType.LEFT and TYPE_DRIVES["behind_bike"][0] == BICYCLE


def test_top_up_specs():
    a = top_up_spec(3, "starting_left_turn", 2, 7, 80.0)
    assert a == top_up_spec(3, "starting_left_turn", 2, 7, 80.0)  # deterministic
    assert a.index == TOP_UP_BASE + 3 and a.split == SPLITS[2] and a.town == 1
    assert a.name == "synth-7_synth-town-1_90003"
    assert a.drive.prefer_turn == TurnType.LEFT and a.drive.ego_lead == -1 and not a.drive.red_on_arrival
    b = top_up_spec(4, "stopping_at_traffic_light_with_lead", 2, 7, 80.0)
    assert b.town == 0 and b.drive.ego_lead == TRUCK and b.drive.red_on_arrival
    assert top_up_spec(4, "stationary_in_traffic", 3, 7, 80.0, disjoint_test=True).town == 2
    assert top_up_spec(4, "stationary_in_traffic", 3, 7, 80.0).drive.vehicles_per_km == CONGESTED_PER_KM
    planned = {s.name for s in plan_logs(40, 2, 7, 80.0)}
    assert not planned & {top_up_spec(k, "behind_bike", 2, 7, 80.0).name for k in range(40)}


def _fake_city(monkeypatch, planned: Counter, gain: int) -> list[str]:
    """Replace generation by bookkeeping: every planned test log has ``planned`` tags, a top-up log ``gain`` tags
    of the type it was made for. Returns the types the top-up logs are made for, in order."""
    made: list[str] = []
    real_spec = cli.top_up_spec

    def spy_spec(k, short_type, *args, **kwargs):
        made.append(short_type)
        return real_spec(k, short_type, *args, **kwargs)

    def fake_counts(path: Path) -> Counter:
        k = int(path.stem.rsplit("_", 1)[1]) - TOP_UP_BASE
        if k >= 0:
            return Counter({f"tag:{made[k]}": gain})
        return Counter({f"tag:{t}": n for t, n in planned.items()})

    monkeypatch.setattr(cli, "top_up_spec", spy_spec)
    monkeypatch.setattr(cli, "run_logs", lambda root, specs, workers, progress=True: [{"frames": 1} for _ in specs])
    monkeypatch.setattr(cli, "log_tag_counts", fake_counts)
    return made


def test_top_up_targets_the_shortest_types_first_and_stops_when_none_is_short(monkeypatch, tmp_path):
    specs = plan_logs(14, 2, 0, 80.0)  # 6 test logs
    planned = Counter({t: 10 for t in SCENARIO_TYPES})  # each of the 6 logs: 10 of every type -> 60
    planned.update({"starting_left_turn": -8, "near_multiple_vehicles": -6})  # -> 12 and 24
    made = _fake_city(monkeypatch, planned, gain=10)
    results, counts, extra = top_up(tmp_path, specs, 2, 30, 1)
    # two logs at a time: left turns (12) first, then near_multiple (24), which one log lifts to 34; then only
    # left turns (22) are short, and both logs of the second pair are made for them
    assert made == ["starting_left_turn", "near_multiple_vehicles", "starting_left_turn", "starting_left_turn"]
    assert [t for _, t in extra] == made and len(results) == 4
    assert counts["tag:starting_left_turn"] == 42 and counts["tag:near_multiple_vehicles"] == 34
    assert [s.index for s, _ in extra] == [TOP_UP_BASE + k for k in range(4)]


def test_top_up_makes_at_most_as_many_logs_as_the_test_split_has(monkeypatch, tmp_path):
    specs = plan_logs(14, 2, 0, 80.0)
    made = _fake_city(monkeypatch, Counter({"behind_bike": 1}), gain=0)  # nothing ever gets enough
    _, counts, extra = top_up(tmp_path, specs, 2, 30, 1)
    assert len(extra) == 6 and len(made) == 6
    assert counts["tag:behind_bike"] == 6
    made.clear()
    assert top_up(tmp_path, specs, 2, 0, 1)[2] == [] and made == []  # min 0: no top-up


def _entered_turns(rec, town) -> list[int]:
    seg = [f.segment for f in rec.ego_frames]
    entered = [s for k, s in enumerate(seg) if k and s != seg[k - 1] and town.paths[s].is_connector]
    return [town.paths[s].turn_type for s in entered]


@pytest.mark.parametrize("turn", [TurnType.LEFT, TurnType.RIGHT])
def test_a_drive_that_prefers_a_turn_takes_it_more_often(turn):
    town = make_town(SEED, 0)

    def entered(prefer: int) -> list[int]:
        cfg = DriveConfig(duration_s=30.0, vehicles_per_km=4.0, pedestrian_density=1.0, prefer_turn=prefer)
        out = []
        for index in range(4):
            rec = simulate_drive(town, cfg, np.random.default_rng(np.random.SeedSequence([SEED, 3, index])))
            seg = [f.segment for f in rec.ego_frames]
            out += [
                town.paths[s].turn_type
                for k, s in enumerate(seg)
                if k and s != seg[k - 1] and town.paths[s].is_connector
            ]
        return out

    preferred, free = entered(int(turn)).count(turn), entered(-1).count(turn)
    assert preferred >= 3 and preferred >= 2 * free, (preferred, free)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.db"))}


def test_the_cli_tops_the_test_split_up_and_a_rerun_adds_nothing(tmp_path, capsys):
    out = tmp_path / "city"
    args = ["--out", str(out), "--preset", "tiny", "--logs", "3", "--duration", "6", "--seed", "2", "--plots", "0"]
    assert main([*args, "--min-test-scenes", "1"]) == 0
    text = capsys.readouterr().out
    test_logs = sorted(p.name for p in (out / "splits" / SPLITS[2]).glob("*.db"))
    # one planned test log of 6 s cannot hold every type: one top-up log, the most the split allows
    assert test_logs == ["synth-2_synth-town-0_00001.db", f"synth-2_synth-town-0_{TOP_UP_BASE}.db"]
    assert "topped up to >= 1 scenes of every type: 1 logs" in text and "still short" in text
    with sqlite3.connect(out / "splits" / SPLITS[2] / test_logs[1]) as con:
        assert con.execute("SELECT COUNT(*) FROM lidar_pc").fetchone()[0] == 120
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.db")}
    assert main([*args, "--min-test-scenes", "1"]) == 0
    assert "0 generated now, 4 already present" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*.db")} == before
    # the same files from a process pool; an interrupted top-up log is made again, byte for byte
    other = tmp_path / "pool"
    assert main([*args[:1], str(other), *args[2:], "--min-test-scenes", "1", "--workers", "2"]) == 0
    assert _digest(other) == _digest(out)
    top = out / "splits" / SPLITS[2] / test_logs[1]
    data = top.read_bytes()
    top.unlink()
    assert main([*args, "--min-test-scenes", "1"]) == 0
    assert top.read_bytes() == data
    capsys.readouterr()
    assert main([*args, "--min-test-scenes", "2"]) == 2  # other parameters: refused
    assert "min_test_scenes" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x"), "--min-test-scenes", "-1"]) == 2
    # a planned test log that is not a database: a clear error naming it, not a traceback
    (out / "splits" / SPLITS[2] / test_logs[0]).write_bytes(b"not a database" * 100)
    capsys.readouterr()
    assert main([*args, "--min-test-scenes", "1"]) == 2
    assert f"{test_logs[0]}: cannot read its scenario tags" in capsys.readouterr().err
