"""Scene / scenario extraction and driving commands (hand-checked numbers)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from simulation.datasets.scenes import (
    ScenarioFilter,
    SceneFilter,
    command_from_path,
    extract_scenarios,
    extract_scenes,
    frame_scenario_types,
    route_command,
    scenario_types_at,
    valid_scene_frames,
)
from simulation.datasets.testing import make_log_data
from simulation.maps.api import MapAPI
from simulation.maps.testing import FIXTURE_LOCATION, write_fixture_maps
from simulation.types import DrivingCommand, TrafficLightStatus


@pytest.fixture(scope="module")
def log():
    return make_log_data()  # 30 s, 600 frames, 6 scenes of 100 frames


def test_navsim_windows_tokens_and_times(log):
    scenes = extract_scenes(log)
    # 60 frames at 2 Hz, non-overlapping windows of 14 -> 4 scenes; current = 4th frame of each window
    assert len(scenes) == 4
    assert [s.token for s in scenes] == [str(log.frame_tokens[10 * (14 * k + 3)]) for k in range(4)]
    s = scenes[1]
    assert s.current_index == 3 and s.num_frames == 14
    np.testing.assert_array_equal(np.diff(s.timestamps_us), 500_000)
    np.testing.assert_array_equal(s.ego.states, log.ego_states[10 * np.arange(14, 28)])
    assert s.map_name == FIXTURE_LOCATION
    assert s.route_roadblock_ids == tuple(log.scene_roadblock_ids[int(log.frame_scene[170])])
    np.testing.assert_allclose(s.goal, log.scene_goal[1])
    for scene in scenes:
        scene.validate()
    assert len(extract_scenes(log, SceneFilter(frame_interval=1))) == 60 - 14 + 1
    assert len(extract_scenes(log, SceneFilter(num_history_frames=4, num_future_frames=8, frame_interval=6))) == 9


def test_navsim_filters(log):
    no_route = dataclasses.replace(log, scene_roadblock_ids=[[], *log.scene_roadblock_ids[1:]])
    # scene 0 holds frames 0-99: the first window's current frame (30) has no route
    assert [s.token for s in extract_scenes(no_route)] == [s.token for s in extract_scenes(log)][1:]
    assert len(extract_scenes(no_route, SceneFilter(has_route=False))) == 4
    assert len(extract_scenes(log, SceneFilter(max_scenes=2))) == 2
    wanted = str(log.frame_tokens[310])
    assert [s.token for s in extract_scenes(log, SceneFilter(tokens=[wanted]))] == [wanted]
    assert extract_scenes(log, SceneFilter(log_names=["another-log"])) == []
    # the last scene's goal is NULL in the fixture
    last = extract_scenes(log, SceneFilter(frame_interval=1))[-1]
    assert int(log.frame_scene[10 * (46 + 3)]) == 4 and last.goal is not None
    with pytest.raises(ValueError, match="frame_interval"):
        SceneFilter(frame_interval=0)


def test_agents_and_lights_of_a_window(log):
    scene = extract_scenes(log, SceneFilter(frame_interval=1))[5]  # frames 50, 60, ..., 180
    frames = 10 * np.arange(5, 19)
    ped = list(log.track_tokens).index(str(log.track_tokens[2]))
    col = list(scene.agents.track_ids).index(str(log.track_tokens[ped]))
    # the pedestrian (track 2) is logged on frames 100-499
    np.testing.assert_array_equal(scene.agents.valid[:, col], frames >= 100)
    rows = np.flatnonzero((log.box_track == ped) & np.isin(log.box_frame, frames))
    np.testing.assert_array_equal(scene.agents.boxes[scene.agents.valid[:, col], col], log.box_states[rows])
    assert set(scene.agents.track_ids) == {
        str(log.track_tokens[k]) for k in np.unique(log.box_track[np.isin(log.box_frame, frames)])
    }
    lights = scene.traffic_lights
    assert set(lights.lane_connector_ids) == {"111", "112", "113"}
    assert lights.red_ids(0) == ["113"]
    late = extract_scenes(log, SceneFilter(frame_interval=1))[-1]  # frames 460 ... 590: red from 440 on
    assert sorted(late.traffic_lights.red_ids(0)) == ["111", "112", "113"]
    assert late.traffic_lights.status.dtype == np.int8 and TrafficLightStatus.RED == 2


def test_driving_command_rule():
    straight = np.stack([np.linspace(0, 100, 101), np.zeros(101)], -1)
    pose = np.array([0.0, 0.0, 0.0])
    assert command_from_path(pose, straight) == DrivingCommand.STRAIGHT
    # straight 10 m, then a quarter turn: 20 m ahead is 10 m up the new leg
    left = np.concatenate([straight[:11], np.stack([np.full(30, 10.0), np.arange(1, 31)], -1)])
    assert command_from_path(pose, left) == DrivingCommand.LEFT
    assert command_from_path(pose, left * [1, -1]) == DrivingCommand.RIGHT
    # exactly the threshold counts as a turn; just below does not
    kink = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 2.0], [40.0, 2.0]])
    assert command_from_path(pose, kink) == DrivingCommand.LEFT
    assert command_from_path(pose, kink * [1, 0.99]) == DrivingCommand.STRAIGHT
    # the frame is the centre line's at the projection, not the ego heading
    assert command_from_path(np.array([5.0, 1.0, 0.7]), straight) == DrivingCommand.STRAIGHT
    assert command_from_path(pose, np.zeros((1, 2))) == DrivingCommand.UNKNOWN


def test_driving_command_from_log_and_map(log, tmp_path):
    scenes = extract_scenes(log)
    assert [s.driving_command for s in scenes] == [DrivingCommand.STRAIGHT] * 4  # eastbound through the junction
    write_fixture_maps(tmp_path)
    api = MapAPI.load(tmp_path, FIXTURE_LOCATION)
    by_map = extract_scenes(log, driving_command_fn=route_command(api))
    assert [s.driving_command for s in by_map] == [DrivingCommand.STRAIGHT] * 4
    no_route = dataclasses.replace(log, scene_roadblock_ids=[[] for _ in log.scene_roadblock_ids])
    cmds = {s.driving_command for s in extract_scenes(no_route, SceneFilter(has_route=False))}
    assert cmds == {DrivingCommand.UNKNOWN}


def test_scenario_types_and_valid_scenes(log):
    types = frame_scenario_types(log)
    assert types[0] == "following_lane_with_lead" and types[1] == "unknown"
    assert types[250] == "near_multiple_vehicles"  # MAX of the two tags on frame 250
    tokens = [str(log.frame_tokens[k]) for k in (0, 1, 250)] + ["not-a-frame"]
    assert scenario_types_at(log, tokens) == [
        "following_lane_with_lead",
        "unknown",
        "near_multiple_vehicles",
        "unknown",
    ]
    valid = valid_scene_frames(log)
    # 6 scenes: the first two and the last two are dropped -> scenes 2 and 3, frames 200-399
    np.testing.assert_array_equal(np.flatnonzero(valid), np.arange(200, 400))


def test_scenario_windows(log):
    scenarios = extract_scenarios(log, ScenarioFilter(timestamp_threshold_s=None))
    # tagged frames in 200-399: 200, 220, ..., 340 fit (window ends at tag + 240 <= 599), plus 210 and 250
    tags = [200, 210, 220, 240, 250, 260, 280, 300, 320, 340]
    assert [s.token for s in scenarios] == [str(log.frame_tokens[f]) for f in tags]
    s = scenarios[0]
    assert s.num_frames == 151 and s.current_index == 0
    np.testing.assert_array_equal(s.frame_tokens, log.frame_tokens[140:441:2])
    np.testing.assert_allclose(s.dt, 0.1)
    assert s.history_ego is not None and len(s.history_ego) == 20
    np.testing.assert_array_equal(s.history_ego.states, log.ego_states[100:140:2])
    assert s.history_agents is not None and s.history_agents.boxes.shape[1] == s.agents.num_agents
    assert scenarios[1].scenario_type == "starting_straight_traffic_light_intersection_traversal"
    assert scenarios[4].scenario_type == "near_multiple_vehicles"
    s.validate()


def test_scenario_filters(log):
    # one per type within 15 s: following_lane_with_lead at 200 (the next, 220..340, are within 15 s)
    default = extract_scenarios(log)
    assert [s.scenario_type for s in default] == [
        "following_lane_with_lead",
        "starting_straight_traffic_light_intersection_traversal",
        "near_multiple_vehicles",
    ]
    only = extract_scenarios(log, ScenarioFilter(scenario_types=["near_multiple_vehicles"]))
    assert [s.token for s in only] == [str(log.frame_tokens[250])]
    assert len(extract_scenarios(log, ScenarioFilter(timestamp_threshold_s=None, limit_total_scenarios=3))) == 3
    capped = extract_scenarios(log, ScenarioFilter(timestamp_threshold_s=None, num_scenarios_per_type=2))
    assert len(capped) == 4
    unknown = extract_scenarios(log, ScenarioFilter(include_unknown=True, scenario_types=["unknown"]))
    assert [s.token for s in unknown] == [str(log.frame_tokens[201])]
    # the scenes holding the tags have goals (only the last scene's is NULL)
    assert len(extract_scenarios(log, ScenarioFilter(remove_invalid_goals=True))) == 3
