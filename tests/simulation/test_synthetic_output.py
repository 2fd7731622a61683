"""``diffplan data synth``: layout, byte-identical reruns, nuPlan schema, bad input, resumption."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import shapely

from simulation.datasets.nuplan_db import read_log
from simulation.datasets.synthetic.cli import main
from simulation.maps.api import MapAPI
from simulation.maps.gpkg import read_map

ARGS = ["--preset", "tiny", "--logs", "2", "--duration", "6", "--seed", "3", "--plots", "0"]

#: nuPlan tables and the columns diffplan's readers use (specs/nuplan.md section 1).
NUPLAN_COLUMNS = {
    "log": {"token", "vehicle_name", "date", "timestamp", "logfile", "location", "map_version"},
    "ego_pose": {
        "token",
        "log_token",
        "timestamp",
        "x",
        "y",
        "z",
        "qw",
        "qx",
        "qy",
        "qz",
        "vx",
        "vy",
        "acceleration_x",
        "acceleration_y",
        "angular_rate_z",
    },
    "lidar_pc": {"token", "next_token", "prev_token", "scene_token", "ego_pose_token", "lidar_token", "timestamp"},
    "category": {"token", "name"},
    "track": {"token", "category_token", "width", "length", "height"},
    "lidar_box": {
        "token",
        "lidar_pc_token",
        "track_token",
        "x",
        "y",
        "z",
        "width",
        "length",
        "height",
        "vx",
        "vy",
        "yaw",
        "confidence",
    },
    "scene": {"token", "log_token", "name", "goal_ego_pose_token", "roadblock_ids"},
    "scenario_tag": {"token", "lidar_pc_token", "type", "agent_track_token"},
    "traffic_light_status": {"token", "lidar_pc_token", "lane_connector_id", "status"},
}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".db", ".gpkg", ".json")
    }


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "city"
    assert main(["--out", str(root), *ARGS]) == 0
    return root


def test_layout_and_byte_identical_rerun(city, tmp_path):
    dbs = sorted(city.glob("splits/*/*.db"))
    assert len(dbs) == 2 and all(p.parent.parent.name == "splits" for p in dbs)
    assert (city / "maps" / "nuplan-maps-v1.0.json").is_file()
    assert (city / "maps" / "synth-town-0" / "1.0.3" / "map.gpkg").is_file()
    other = tmp_path / "again"
    assert main(["--out", str(other), *ARGS]) == 0
    assert _digest(city) == _digest(other)
    assert not list(city.rglob(".*tmp*")) and not list(city.rglob("*.scratch"))


def test_nuplan_schema_with_plain_sqlite(city):
    db = sorted(city.glob("splits/*/*.db"))[0]
    con = sqlite3.connect(db)
    try:
        for table, columns in NUPLAN_COLUMNS.items():
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            assert columns <= have, f"{table} lacks {columns - have}"
        n_pc = con.execute("SELECT count(*) FROM lidar_pc").fetchone()[0]
        assert n_pc == 120  # 6 s at 20 Hz
        token = con.execute("SELECT token FROM lidar_pc LIMIT 1").fetchone()[0]
        assert isinstance(token, bytes) and len(token) == 8
        route = con.execute("SELECT roadblock_ids FROM scene").fetchone()[0]
        assert route and all(part.isdigit() for part in route.split(" "))
    finally:
        con.close()


def test_logs_and_maps_read_back(city):
    db = sorted(city.glob("splits/*/*.db"))[0]
    log = read_log(db)
    assert log.num_frames == 120 and log.map_location == "synth-town-0" and log.map_version == "1.0.3"
    api = MapAPI.from_data(read_map(city / "maps" / "synth-town-0" / "1.0.3" / "map.gpkg"))
    route = log.scene_roadblock_ids[0]
    known = set(api.roadblocks) | set(api.roadblock_connectors)
    assert set(route) <= known
    # the ego starts inside its route's first roadblock
    first = api.roadblocks.get(route[0]) or api.roadblock_connectors[route[0]]
    assert first.polygon.buffer(0.5).contains(shapely.Point(log.ego_states[0, :2]))
    assert set(log.tl_lane_connector.tolist()) <= {int(k) for k in api.lane_connectors}
    assert np.isfinite(log.ego_states).all()


def test_rerun_completes_missing_logs(city, tmp_path):
    dbs = sorted(city.glob("splits/*/*.db"))
    before = dbs[0].read_bytes()
    dbs[0].unlink()
    assert main(["--out", str(city), *ARGS]) == 0
    assert dbs[0].read_bytes() == before
    # other parameters into the same folder: refused, nothing touched
    assert main(["--out", str(city), *ARGS[:-4], "--seed", "4", "--plots", "0"]) == 2
    assert sorted(city.glob("splits/*/*.db")) == dbs


def test_bad_input_is_rejected_before_writing(tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["--out", str(out), "--logs", "-1"]) == 2
    assert main(["--out", str(out), "--workers", "0"]) == 2
    assert main(["--out", str(out), "--towns", "1", "--disjoint-test-towns"]) == 2
    assert not out.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert main(["--out", str(other), *ARGS]) == 2
    assert "holds no synth_manifest.json" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
