"""OpenScene log pickles: hand-computed frame conversions, round trip against ``.db`` scene extraction,
bad files (each error names the file), loading that skips bad pickles, atomic writes."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import pickle
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulation.datasets.log_data import LogData
from simulation.datasets.openscene import (
    BoxIndex,
    OpenSceneError,
    load_openscene_scenes,
    openscene_frames,
    openscene_scenes,
    read_openscene_log,
    write_openscene_frames,
    write_openscene_log,
)
from simulation.datasets.scenes import SceneFilter, extract_scenes
from simulation.datasets.splits import LoadReport
from simulation.datasets.testing import make_log_data
from simulation.geometry import normalize_angle
from simulation.maps.testing import FIXTURE_LOCATION
from simulation.types import AgentIndex, DrivingCommand, StateIndex, TrafficLightStatus


def _angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(normalize_angle(np.asarray(a) - np.asarray(b)))


def _twisted(log: LogData) -> LogData:
    """The fixture log with headings that sweep across +-pi, a yaw rate, lateral velocities and box heights,
    so that every rotation of the conversion is exercised (the fixture itself drives due east)."""
    t = (log.timestamps_us - log.timestamps_us[0]) * 1e-6
    ego = log.ego_states.copy()
    ego[:, StateIndex.HEADING] = normalize_angle(2.0 + 1.5 * np.sin(0.3 * t))
    ego[:, StateIndex.YAW_RATE] = 0.45 * np.cos(0.3 * t)
    ego[:, StateIndex.VY], ego[:, StateIndex.AY] = 0.3, -0.1
    boxes = log.box_states.copy()
    turn = 0.8 * log.box_track + 0.1 * t[log.box_frame]
    boxes[:, AgentIndex.HEADING] = normalize_angle(boxes[:, AgentIndex.HEADING] + turn)
    boxes[:, AgentIndex.VY] += 1.5
    return dataclasses.replace(log, ego_states=ego, box_states=boxes, ego_z=0.5 + 0.01 * t)


@pytest.fixture(scope="module")
def log() -> LogData:
    return _twisted(make_log_data())  # 30 s at 20 Hz -> 60 frames at 2 Hz


@pytest.fixture(scope="module")
def pickle_path(log: LogData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_openscene_log(log, tmp_path_factory.mktemp("openscene") / f"{log.log_name}.pkl")


# --------------------------------------------------------------------------------------------------
# Hand-computed conversions
# --------------------------------------------------------------------------------------------------


def _frame(**overrides: Any) -> dict[str, Any]:
    """One frame: ego at (100, 200) facing west (yaw pi), one vehicle box 10 m ahead and 2 m to its left."""
    frame = {
        "token": "00000000000000a0",
        "timestamp": 1_000_000,
        "log_name": "hand-log",
        "scene_token": "00000000000000b0",
        "map_location": "hand-town",
        "roadblock_ids": ["7", "8"],
        "traffic_lights": [("42", True), (43, False)],
        "ego2global_translation": np.array([100.0, 200.0, 1.0]),
        "ego2global_rotation": np.array([0.0, 0.0, 0.0, 1.0]),  # w, x, y, z: yaw pi
        "ego_dynamic_state": [5.0, 0.5, 1.0, -0.2],
        "driving_command": np.array([0, 0, 1, 0]),
        "anns": {
            "gt_boxes": np.array([[10.0, 2.0, 0.3, 4.0, 2.0, 1.5, 0.5]]),
            "gt_names": np.array(["vehicle"]),
            "gt_velocity_3d": np.array([[3.0, 1.0, 0.0]]),
            "instance_tokens": ["00000000000000c0"],
            "track_tokens": ["00000000000000d0"],
        },
    }
    frame.update(overrides)
    return frame


def test_reading_converts_ego_frame_boxes_to_global(tmp_path):
    path = write_openscene_frames([_frame()], tmp_path / "hand.pkl")
    (scene,) = openscene_scenes(read_openscene_log(path), SceneFilter(num_history_frames=1, num_future_frames=0))
    # ego: rear axle (100, 200), yaw pi; ego-frame dynamics copied as they are; no can_bus -> yaw rate 0
    np.testing.assert_allclose(scene.ego.states[0], [100, 200, np.pi, 5.0, 0.5, 1.0, -0.2, 0, 0, 0, 0], atol=1e-12)
    # box: (10, 2) rotated by pi -> (-10, -2), plus (100, 200); heading 0.5 + pi; velocity (3, 1) -> (-3, -1)
    np.testing.assert_allclose(scene.agents.boxes[0, 0], [90.0, 198.0, 0.5 - np.pi, -3.0, -1.0, 4.0, 2.0], atol=1e-12)
    assert list(scene.agents.track_ids) == ["00000000000000d0"] and list(scene.agents.types) == [0]
    assert scene.token == "00000000000000a0" and scene.map_name == "hand-town" and scene.log_name == "hand-log"
    assert scene.route_roadblock_ids == ("7", "8") and scene.driving_command == DrivingCommand.RIGHT
    assert list(scene.traffic_lights.lane_connector_ids) == ["42", "43"]
    assert list(scene.traffic_lights.status[0]) == [TrafficLightStatus.RED, TrafficLightStatus.GREEN]
    assert scene.goal is None
    scene.validate()


def test_writing_puts_boxes_in_the_ego_frame(tmp_path):
    log = make_log_data(duration_s=1.0, num_scenes=1)
    ego, boxes = log.ego_states.copy(), log.box_states.copy()
    x0, y0 = ego[0, :2]
    ego[0, StateIndex.HEADING], ego[0, StateIndex.YAW_RATE] = np.pi / 2, 0.25  # facing north
    lead = np.flatnonzero((log.box_frame == 0) & (log.box_track == 0))[0]
    boxes[lead, :5] = [x0, y0 + 15.0, np.pi / 2, 0.0, 4.0]  # 15 m ahead, driving north at 4 m/s
    frames = openscene_frames(dataclasses.replace(log, ego_states=ego, box_states=boxes))
    assert len(frames) == 2  # 20 frames at 20 Hz -> frames 0 and 10
    f = frames[0]
    np.testing.assert_allclose(f["ego2global_rotation"], [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(f["ego2global_translation"], [x0, y0, 0.0])
    assert f["can_bus"].shape == (18,) and f["can_bus"][15] == 0.25
    anns = f["anns"]
    k = anns["track_tokens"].index(str(log.track_tokens[0]))
    np.testing.assert_allclose(anns["gt_boxes"][k], [15.0, 0.0, 0.8, 4.6, 1.9, 1.6, 0.0], atol=1e-9)
    np.testing.assert_allclose(anns["gt_velocity_3d"][k], [4.0, 0.0, 0.0], atol=1e-12)
    assert anns["gt_names"][k] == "vehicle" and anns["instance_tokens"][k] == str(log.box_tokens[lead])
    assert f["traffic_lights"] == [(111, False), (112, False), (113, True)]
    np.testing.assert_array_equal(f["driving_command"], [0, 1, 0, 0])  # straight
    assert f["timestamp"] == int(log.timestamps_us[0]) and f["map_location"] == FIXTURE_LOCATION
    assert [fr["frame_idx"] for fr in frames] == [0, 1] and frames[1]["sample_prev"] == f["token"]


# --------------------------------------------------------------------------------------------------
# Round trip against the .db scene extraction
# --------------------------------------------------------------------------------------------------


def _assert_same_agents(ours, theirs) -> None:
    assert set(ours.agents.track_ids) == set(theirs.agents.track_ids)
    for j, token in enumerate(theirs.agents.track_ids):
        i = list(ours.agents.track_ids).index(token)
        valid = theirs.agents.valid[:, j]
        np.testing.assert_array_equal(ours.agents.valid[:, i], valid)
        assert ours.agents.types[i] == theirs.agents.types[j]
        a, b = ours.agents.boxes[valid, i], theirs.agents.boxes[valid, j]
        np.testing.assert_allclose(a[:, :2], b[:, :2], rtol=0, atol=1e-8)  # UTM-sized coordinates
        assert _angle_diff(a[:, AgentIndex.HEADING], b[:, AgentIndex.HEADING]).max(initial=0) < 1e-9
        np.testing.assert_allclose(a[:, AgentIndex.VX :], b[:, AgentIndex.VX :], rtol=0, atol=1e-9)


def test_round_trip_matches_extract_scenes(log, pickle_path):
    sf = SceneFilter(frame_interval=1)
    ours, theirs = openscene_scenes(read_openscene_log(pickle_path), sf), extract_scenes(log, sf)
    assert len(ours) == len(theirs) == 60 - 14 + 1
    for a, b in zip(ours, theirs, strict=True):
        assert (a.token, a.log_name, a.map_name, a.current_index) == (b.token, b.log_name, b.map_name, 3)
        assert a.route_roadblock_ids == b.route_roadblock_ids and a.driving_command == b.driving_command
        np.testing.assert_array_equal(a.frame_tokens, b.frame_tokens)
        np.testing.assert_array_equal(a.timestamps_us, b.timestamps_us)
        assert _angle_diff(a.ego.states[:, StateIndex.HEADING], b.ego.states[:, StateIndex.HEADING]).max() < 1e-9
        others = [c for c in StateIndex if c != StateIndex.HEADING]
        np.testing.assert_allclose(a.ego.states[:, others], b.ego.states[:, others], rtol=0, atol=1e-9)
        _assert_same_agents(a, b)
        for i in range(a.num_frames):
            assert sorted(a.traffic_lights.red_ids(i)) == sorted(b.traffic_lights.red_ids(i))
        a.validate()
    # yellow is not red: in the pickle it reads as green (frames 400-439 -> 2 Hz frames 40-43)
    late = ours[40 - 3]
    assert set(late.traffic_lights.status[0]) == {TrafficLightStatus.GREEN, TrafficLightStatus.RED}


def test_scene_filters(log, pickle_path):
    frames = read_openscene_log(pickle_path)
    assert [s.token for s in openscene_scenes(frames)] == [s.token for s in extract_scenes(log)]
    wanted = str(log.frame_tokens[310])
    assert [s.token for s in openscene_scenes(frames, SceneFilter(tokens=[wanted]))] == [wanted]
    assert len(openscene_scenes(frames, SceneFilter(max_scenes=2))) == 2
    assert openscene_scenes(frames, SceneFilter(log_names=["another-log"])) == []
    no_route = copy.deepcopy(frames)
    for f in no_route[:10]:  # scene 0 (20 Hz frames 0-99): the first window's current frame (3) has no route
        f["roadblock_ids"] = []
    assert [s.token for s in openscene_scenes(no_route)] == [s.token for s in openscene_scenes(frames)][1:]
    assert len(openscene_scenes(no_route, SceneFilter(has_route=False))) == 4
    hidden = [{k: v for k, v in f.items() if k != "anns"} for f in frames]  # hidden test logs have no anns
    assert all(s.agents.num_agents == 0 for s in openscene_scenes(hidden))
    assert openscene_scenes([]) == []


# --------------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------------


def _drop(key: str, k: int):
    return lambda frames: frames[k].pop(key)


def _set(k: int, key: str, value: Any):
    return lambda frames: frames[k].__setitem__(key, value)


def _set_ann(k: int, key: str, value: Any):
    return lambda frames: frames[k]["anns"].__setitem__(key, value)


BAD_FRAMES = [
    (_drop("ego2global_rotation", 2), r"frame 2 has no key 'ego2global_rotation'"),
    (lambda fr: fr[1]["anns"].pop("gt_names"), r"frame 1: 'anns' has no key 'gt_names'"),
    (_set_ann(1, "gt_boxes", np.zeros((4, 6))), r"frame 1: anns\['gt_boxes'\] has shape \(4, 6\), expected \(N, 7\)"),
    (_set(3, "ego2global_translation", np.array([np.nan, 0.0, 0.0])), r"frame 3: NaN or inf in the ego pose"),
    (_set(3, "ego2global_rotation", np.zeros(4)), r"frame 3: ego2global_rotation is not a rotation"),
    (_set(0, "ego_dynamic_state", [1.0, 2.0]), r"frame 0: ego_dynamic_state has shape \(2,\), expected \(4\)"),
    (_set_ann(5, "gt_names", np.array(["car", "vehicle", "bicycle", "traffic_cone"])), r"frame 5: unknown gt_names"),
    (_set_ann(5, "track_tokens", ["a"]), r"frame 5: anns\['track_tokens'\] has 1 entries for 4 boxes"),
    (_set(4, "timestamp", 0), r"frame 4: timestamp 0 not after"),
    (_set(4, "timestamp", 1.5), r"frame 4: timestamp 1.5 is not an integer"),
    (_set(2, "traffic_lights", [(111,)]), r"frame 2: traffic_lights must be"),
    (_set(2, "log_name", "other-log"), r"frames of 2 logs in one file"),
    (lambda fr: fr.__setitem__(6, "not a frame"), r"frame 6 is a str, expected a dict"),
]


@pytest.mark.parametrize("mutate, message", BAD_FRAMES)
def test_bad_frames_name_file_and_problem(pickle_path, tmp_path, mutate, message):
    frames = copy.deepcopy(read_openscene_log(pickle_path)[:8])
    mutate(frames)
    bad = write_openscene_frames(frames, tmp_path / "bad-log.pkl")
    with pytest.raises(OpenSceneError, match=message) as info:
        read_openscene_log(bad)
    assert str(info.value).startswith(f"{bad}: ") and info.value.path == str(bad)
    assert isinstance(info.value, ValueError)


class _Runs:
    """A pickle that would run a shell command when loaded by a plain unpickler."""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))

    def __init__(self, marker: Path):
        self.marker = marker


def test_bad_files(pickle_path, tmp_path):
    cases = {
        "text.pkl": (b"frame,token\n0,abc\n", "not a pickle"),
        "truncated.pkl": (pickle_path.read_bytes()[:5000], "not a pickle or truncated"),
        "dict.pkl": (pickle.dumps({"frames": []}), "top level is a dict, expected a list"),
        "fraction.pkl": (pickle.dumps([Fraction(1, 2)]), "refers to fractions.Fraction"),
        "runs.pkl": (pickle.dumps([_Runs(tmp_path / "ran")]), r"refers to (posix|os|nt)\.system"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(OpenSceneError, match=message) as info:
            read_openscene_log(tmp_path / name)
        assert info.value.path == str(tmp_path / name)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(OpenSceneError, match="cannot read the file"):
        read_openscene_log(tmp_path / "missing.pkl")


def test_reads_pickles_written_by_numpy_1(pickle_path, tmp_path):
    frames = read_openscene_log(pickle_path)[:3]
    # protocol 2 names classes in text lines; numpy 1 wrote ``numpy.core.*`` where numpy 2 writes ``numpy._core.*``
    data = pickle.dumps(frames, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in data
    (tmp_path / "old.pkl").write_bytes(data)
    again = read_openscene_log(tmp_path / "old.pkl")
    np.testing.assert_array_equal(again[2]["anns"]["gt_boxes"], frames[2]["anns"]["gt_boxes"])
    assert again[1]["token"] == frames[1]["token"]


# --------------------------------------------------------------------------------------------------
# Loading a folder, atomic writes
# --------------------------------------------------------------------------------------------------


def test_load_folder_skips_bad_pickles(tmp_path, caplog):
    for name in ("log-b", "log-a"):
        write_openscene_log(make_log_data(duration_s=10.0, num_scenes=2, log_name=name), tmp_path / f"{name}.pkl")
    (tmp_path / "log-c.pkl").write_bytes(b"\x80\x05garbage")
    report = LoadReport()
    sf = SceneFilter(num_history_frames=2, num_future_frames=4)
    with caplog.at_level(logging.WARNING):
        scenes = load_openscene_scenes(tmp_path, sf, report=report)
    assert report.num_logs == 3 and report.num_skipped == 1 and report.skipped[0][0] == str(tmp_path / "log-c.pkl")
    assert "log-c.pkl" in caplog.text and "1 of 3 OpenScene logs skipped" in caplog.text
    assert [s.log_name for s in scenes] == ["log-a"] * 3 + ["log-b"] * 3  # 20 frames -> 3 windows of 6 per log
    only_b = load_openscene_scenes(tmp_path, dataclasses.replace(sf, log_names=["log-b"]))
    assert {s.log_name for s in only_b} == {"log-b"}
    assert len(load_openscene_scenes(tmp_path, dataclasses.replace(sf, max_scenes=4))) == 4
    with pytest.raises(FileNotFoundError, match="no OpenScene log folder"):
        load_openscene_scenes(tmp_path / "nope")


def test_writes_are_atomic(pickle_path, tmp_path):
    target = tmp_path / "log.pkl"
    frames = read_openscene_log(pickle_path)[:2]
    write_openscene_frames(frames, target)
    before = target.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        write_openscene_frames([*frames, {"token": lambda: None}], target)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.pkl"]  # no temporary file left behind
    assert read_openscene_log(target)[1]["token"] == frames[1]["token"]


def test_box_columns_are_navsims():
    assert [BoxIndex.X, BoxIndex.Y, BoxIndex.Z, BoxIndex.LENGTH, BoxIndex.WIDTH, BoxIndex.HEIGHT, BoxIndex.HEADING] == [
        0, 1, 2, 3, 4, 5, 6
    ]  # fmt: skip
