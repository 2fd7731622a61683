"""nuPlan ``.db`` logs: round trip, schema as plain SQLite sees it, hand-computed decoding, typed errors."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from simulation.datasets.nuplan_db import (
    LogContentError,
    LogError,
    LogFileError,
    LogSchemaError,
    cached_read_log,
    quaternion_to_yaw,
    read_log,
    write_log,
    yaw_to_quaternion,
)
from simulation.datasets.nuplan_schema import hex_to_blobs, hex_tokens
from simulation.datasets.testing import make_log_data
from simulation.types import StateIndex, TrafficLightStatus


@pytest.fixture(scope="module")
def log():
    return make_log_data()


@pytest.fixture(scope="module")
def db(log, tmp_path_factory):
    return write_log(log, tmp_path_factory.mktemp("db") / f"{log.log_name}.db")


def _copy(db: Path, tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / db.name
    out.write_bytes(db.read_bytes())
    return out


def test_round_trip_equals_arrays(log, db):
    back = read_log(db)
    ignored = {"source"}
    for f in dataclasses.fields(log):
        if f.name in ignored:
            continue
        a, b = getattr(log, f.name), getattr(back, f.name)
        if f.name == "ego_states":
            # steering and yaw acceleration are not in the schema; the fixture has them at 0
            np.testing.assert_allclose(b, a, atol=1e-9, err_msg=f.name)
        elif isinstance(a, np.ndarray) and a.dtype.kind == "f":
            np.testing.assert_allclose(b, a, atol=1e-9, err_msg=f.name)
        elif isinstance(a, np.ndarray):
            assert a.shape == b.shape and (a == b).all(), f.name
        else:
            assert a == b, f.name
    assert back.source == str(db)
    assert np.isnan(back.scene_goal[-1]).all() and np.isfinite(back.scene_goal[:-1]).all()


def test_schema_seen_by_plain_sqlite(log, db):
    con = sqlite3.connect(db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        expected = "log ego_pose lidar lidar_pc camera image category track lidar_box scene scenario_tag"
        assert set(expected.split()) | {"traffic_light_status"} <= tables
        # the writer builds its indexes after the rows; the readers' lookups by frame and by track rely on them
        indexes = dict(con.execute("SELECT name, tbl_name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"))
        assert indexes["idx_lidar_box_lidar_pc"] == "lidar_box" and indexes["idx_lidar_box_track"] == "lidar_box"
        assert {"idx_lidar_pc_scene", "idx_traffic_light_status_lidar_pc", "idx_scenario_tag_lidar_pc"} <= set(indexes)
        plan = " ".join(
            str(r) for r in con.execute("EXPLAIN QUERY PLAN SELECT * FROM lidar_box WHERE track_token = x'00'")
        )
        assert "idx_lidar_box_track" in plan
        token, nxt, prv = con.execute(
            "SELECT token, next_token, prev_token FROM lidar_pc ORDER BY timestamp"
        ).fetchone()
        assert isinstance(token, bytes) and len(token) == 8 and token.hex() == log.frame_tokens[0]
        assert prv is None and nxt.hex() == log.frame_tokens[1]
        # next/prev of lidar_box follow each track through time
        rows = con.execute(
            "SELECT b.token, b.next_token, b.prev_token FROM lidar_box b JOIN lidar_pc p ON b.lidar_pc_token = p.token "
            "WHERE b.track_token = ? ORDER BY p.timestamp",
            (bytes.fromhex(log.track_tokens[2]),),
        ).fetchall()
        assert len(rows) == 400  # the pedestrian: frames 100-499
        assert rows[0][2] is None and rows[-1][1] is None
        assert all(rows[k][1] == rows[k + 1][0] and rows[k + 1][2] == rows[k][0] for k in range(len(rows) - 1))
        status = dict(con.execute("SELECT lane_connector_id, status FROM traffic_light_status LIMIT 3").fetchall())
        assert status == {111: "green", 112: "green", 113: "red"}
        route, goal = con.execute("SELECT roadblock_ids, goal_ego_pose_token FROM scene ORDER BY name").fetchone()
        assert route == "1 101 2 103 4" and goal.hex() == log.ego_pose_tokens[-1]
        assert con.execute("SELECT goal_ego_pose_token FROM scene ORDER BY name DESC").fetchone()[0] is None
        qw, qz = con.execute("SELECT qw, qz FROM ego_pose LIMIT 1").fetchone()
        assert (qw, qz) == (1.0, 0.0)  # heading 0
        assert con.execute("SELECT map_version, logfile FROM log").fetchone() == (log.map_location, log.log_name)
        names = {r[0] for r in con.execute("SELECT name FROM category")}
        assert {"vehicle", "pedestrian", "bicycle", "traffic_cone"} <= names
    finally:
        con.close()


def test_writes_are_deterministic_and_atomic(log, db, tmp_path):
    again = write_log(log, tmp_path / db.name)
    assert again.read_bytes() == db.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [db.name]
    bad = dataclasses.replace(log, frame_tokens=log.frame_tokens.astype("<U15"))
    with pytest.raises(ValueError, match="16 hex"):
        write_log(bad, tmp_path / "bad.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == [db.name]


def test_goal_off_the_logged_poses_gets_its_own_ego_pose(log, tmp_path):
    goal = log.scene_goal.copy()
    goal[0] = [log.ego_states[0, 0] + 3.0, log.ego_states[0, 1] - 1.0, np.pi / 2]
    back = read_log(write_log(dataclasses.replace(log, scene_goal=goal), tmp_path / "g.db"))
    np.testing.assert_allclose(back.scene_goal, goal, atol=1e-9)
    assert back.num_frames == log.num_frames


def test_quaternion_yaw_hand_computed():
    q = yaw_to_quaternion(np.array([0.0, np.pi / 2, -np.pi / 3]))
    np.testing.assert_allclose(q[1], [np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)])
    np.testing.assert_allclose(quaternion_to_yaw(q), [0.0, np.pi / 2, -np.pi / 3])
    # a 30 degree yaw combined with a small pitch keeps its yaw: q = q_z(30 deg) * q_y(0.1)
    cz, sz, cy, sy = np.cos(np.pi / 12), np.sin(np.pi / 12), np.cos(0.05), np.sin(0.05)
    q_pitch = np.array([cz * cy, -sz * sy, cz * sy, sz * cy])
    assert quaternion_to_yaw(q_pitch) == pytest.approx(np.pi / 6)


def test_token_codecs():
    tokens = np.array(["00ff10a0b1c2d300", "0123456789abcdef"])
    blobs = hex_to_blobs(tokens)
    assert blobs == [bytes.fromhex(t) for t in tokens]
    assert list(hex_tokens(np.array(blobs, dtype="S8"))) == list(tokens)


def test_ego_state_decoding(log, db):
    back = read_log(db)
    np.testing.assert_allclose(back.ego_states[100, StateIndex.VX], 4.0 + 0.04 * 5.0)
    assert back.tl_status[2] == TrafficLightStatus.RED
    assert list(back.tag_track[:2]) == [0, 0] and back.tag_track[-2] == -1


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _edit(db: Path, tmp_path: Path, *sql: str) -> Path:
    out = _copy(db, tmp_path)
    con = sqlite3.connect(out)
    for statement in sql:
        con.execute(statement)
    con.commit()
    con.close()
    return out


def test_not_sqlite_truncated_missing(db, tmp_path):
    text = tmp_path / "text.db"
    text.write_text("x" * 200)
    with pytest.raises(LogFileError, match="text.db: not a SQLite file"):
        read_log(text)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(LogFileError, match="empty.db"):
        read_log(empty)
    cut = tmp_path / "cut.db"
    cut.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    with pytest.raises(LogFileError, match="cut.db: truncated"):
        read_log(cut)
    with pytest.raises(LogFileError, match="nothing.db: no such file"):
        read_log(tmp_path / "nothing.db")


def test_corrupt_pages(db, tmp_path):
    data = bytearray(db.read_bytes())
    data[4096 : 4096 * 40] = b"\xa5" * (4096 * 39)  # scribble over pages after the header page
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(bytes(data))
    with pytest.raises(LogError, match="corrupt.db"):
        read_log(bad)


def test_schema_errors(db, tmp_path):
    with pytest.raises(LogSchemaError, match="missing table 'lidar_box'"):
        read_log(_edit(db, tmp_path / "a", "DROP TABLE lidar_box"))
    with pytest.raises(LogSchemaError, match=r"'ego_pose' lacks column\(s\) \['qz'\]"):
        read_log(_edit(db, tmp_path / "b", "ALTER TABLE ego_pose DROP COLUMN qz"))


@pytest.mark.parametrize(
    "sql, match",
    [
        ("UPDATE ego_pose SET x = 'nan' WHERE rowid = 7", "ego poses are NaN"),
        ("UPDATE ego_pose SET x = NULL WHERE rowid = 7", "NaN|NULL"),
        ("DELETE FROM lidar_pc", "empty log"),
        ("UPDATE category SET name = 'unicorn' WHERE name = 'bicycle'", "unknown category"),
        ("UPDATE traffic_light_status SET status = 'blue' WHERE rowid = 1", "unknown traffic light status"),
        ("DELETE FROM track WHERE rowid = 1", "missing track"),
    ],
)
def test_content_errors(db, tmp_path, sql, match):
    path = _edit(db, tmp_path / "a", sql)
    with pytest.raises(LogContentError, match=match) as info:
        read_log(path)
    assert str(path) in str(info.value)


def test_cached_read_log_decodes_a_file_once_until_it_changes(db, tmp_path, monkeypatch):
    import simulation.datasets.nuplan_db as nuplan_db

    monkeypatch.setattr(nuplan_db, "_LOG_CACHE", type(nuplan_db._LOG_CACHE)())
    reads: list[str] = []
    real = nuplan_db.read_log
    monkeypatch.setattr(nuplan_db, "read_log", lambda p: reads.append(str(p)) or real(p))
    path = _copy(db, tmp_path / "a")
    first = cached_read_log(path)
    assert cached_read_log(str(path)) is first and len(reads) == 1  # str or Path, the same file
    np.testing.assert_array_equal(first.box_states, read_log(path).box_states)
    with pytest.raises(ValueError, match="read-only"):
        first.ego_states[0, 0] = 1.0  # shared between callers: nobody may modify it
    # a rewritten file (other size or modification time) is decoded again
    with sqlite3.connect(path) as con:
        con.execute("DELETE FROM lidar_box WHERE rowid = (SELECT MAX(rowid) FROM lidar_box)")
    con.close()
    again = cached_read_log(path)
    assert again is not first and len(reads) == 2 and len(again.box_tokens) == len(first.box_tokens) - 1
    # the budget: least recently used out; 0 keeps nothing
    size = sum(a.nbytes for a in vars(again).values() if isinstance(a, np.ndarray))
    monkeypatch.setenv("DIFFPLAN_LOG_CACHE_MB", str(1.5 * size / 2**20))
    other = cached_read_log(_copy(db, tmp_path / "b"))
    assert len(nuplan_db._LOG_CACHE) == 1 and cached_read_log(tmp_path / "b" / db.name) is other
    cached_read_log(path)
    assert len(reads) == 4  # "a" was pushed out by "b"
    monkeypatch.setenv("DIFFPLAN_LOG_CACHE_MB", "0")
    fresh = cached_read_log(_copy(db, tmp_path / "c"))
    assert fresh.ego_states.flags.writeable and len(reads) == 5
    monkeypatch.setenv("DIFFPLAN_LOG_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="DIFFPLAN_LOG_CACHE_MB"):
        cached_read_log(_copy(db, tmp_path / "d"))
    assert len(reads) == 5  # a bad budget fails before any decoding
    monkeypatch.delenv("DIFFPLAN_LOG_CACHE_MB")
    with pytest.raises(LogFileError):
        cached_read_log(tmp_path / "missing.db")
