"""Observation.from_window: the one planner's view of a logged window (benchmark, closed loop, BEV-Warp)."""

from __future__ import annotations

import numpy as np

from simulation.protocols import Observation
from simulation.types import (
    AGENT_DIM,
    STATE_DIM,
    Agents,
    DrivingCommand,
    EgoStates,
    Scenario,
    Scene,
    TrafficLights,
    TrafficLightStatus,
)

FRAMES = 8


def _parts() -> dict:
    stamps = np.arange(FRAMES, dtype=np.int64) * 500_000
    states = np.zeros((FRAMES, STATE_DIM))
    states[:, 0] = np.arange(FRAMES) * 2.0
    boxes = np.zeros((FRAMES, 2, AGENT_DIM))
    boxes[:, :, 0] = np.arange(FRAMES)[:, None] * 10.0 + np.array([0.0, 1.0])
    valid = np.ones((FRAMES, 2), bool)
    valid[:, 1] = np.arange(FRAMES) % 2 == 0
    status = np.full((FRAMES, 1), TrafficLightStatus.GREEN, np.int8)
    status[5:] = TrafficLightStatus.RED
    return {
        "log_name": "log",
        "token": "tok",
        "map_name": "town",
        "frame_tokens": np.array([f"f{i}" for i in range(FRAMES)]),
        "timestamps_us": stamps,
        "ego": EgoStates(states, stamps),
        "agents": Agents(boxes, np.array([0, 1]), np.array(["a", "b"]), valid),
        "traffic_lights": TrafficLights(np.array(["7"]), status),
        "route_roadblock_ids": ["1", "2"],
        "current_index": 3,
    }


def test_default_frames_are_the_history_up_to_the_current_frame() -> None:
    goal = np.array([1.0, 2.0, 0.0])
    scene = Scene(**_parts(), driving_command=int(DrivingCommand.LEFT), goal=goal)
    obs = Observation.from_window(scene, map_api="map")
    assert obs.ego_history.states.shape == (4, STATE_DIM) and obs.current_state[0] == 6.0
    assert obs.timestamp_us == 1_500_000 and obs.log is scene and obs.log_index == 3
    np.testing.assert_array_equal(obs.agents.boxes, scene.agents.boxes[:4])
    np.testing.assert_array_equal(obs.agents.valid[:, 1], [True, False, True, False])
    assert obs.traffic_lights.status.shape == (4, 1) and obs.traffic_lights.lane_connector_ids.tolist() == ["7"]
    assert obs.route_roadblock_ids == ("1", "2") and obs.map_name == "town" and obs.map_api == "map"
    assert obs.driving_command == DrivingCommand.LEFT and obs.goal is goal


def test_overrides_and_frame_indices() -> None:
    """The closed loop's view: simulated ego and agents, the logged lights at (clipped) frame indices."""
    scenario = Scenario(**_parts())
    ego = EgoStates(np.full((3, STATE_DIM), 9.0), np.array([0, 1, 2], dtype=np.int64))
    agents = Agents(np.zeros((3, 2, AGENT_DIM)), np.array([0, 1]), np.array(["a", "b"]), np.ones((3, 2), bool))
    frames = np.clip(np.arange(3, 6), 0, None)
    obs = Observation.from_window(scenario, frames, None, ego_history=ego, agents=agents)
    assert obs.ego_history is ego and obs.agents is agents and obs.log_index == 5
    assert obs.traffic_lights.status[:, 0].tolist() == [TrafficLightStatus.GREEN] * 2 + [TrafficLightStatus.RED]
    # a scenario carries no command: OpenScene's rule at the simulated pose (9, 9) on its logged path (along x)
    assert obs.driving_command == DrivingCommand.STRAIGHT and obs.goal is None
    unrouted = Scenario(**{**_parts(), "route_roadblock_ids": []})
    assert Observation.from_window(unrouted, frames, ego_history=ego).driving_command == DrivingCommand.UNKNOWN


def test_one_frame_slice() -> None:
    """BEV-Warp's view: one frame of the log, the simulated ego state in place of the logged one."""
    scene = Scene(**_parts())
    ego = EgoStates(np.ones((1, STATE_DIM)), scene.timestamps_us[6:7])
    obs = Observation.from_window(scene, slice(6, 7), "map", ego_history=ego)
    assert obs.log_index == 6 and obs.timestamp_us == 3_000_000 and obs.current_state[0] == 1.0
    np.testing.assert_array_equal(obs.agents.boxes, scene.agents.boxes[6:7])
    assert obs.traffic_lights.status.tolist() == [[TrafficLightStatus.RED]]
