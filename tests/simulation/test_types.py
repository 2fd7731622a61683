"""Data containers: validation catches wrong shapes and NaN."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.types import (
    PACIFICA,
    STATE_DIM,
    Agents,
    DataValidationError,
    EgoStates,
    Scene,
    StateIndex,
    TrafficLights,
    TrafficLightStatus,
    Trajectory,
)


def _scene(t: int = 14) -> Scene:
    states = np.zeros((t, STATE_DIM))
    states[:, StateIndex.X] = np.arange(t)
    return Scene(
        log_name="log",
        token="00" * 8,
        map_name="m",
        frame_tokens=np.array([f"{i:016x}" for i in range(t)]),
        timestamps_us=np.arange(t, dtype=np.int64) * 500_000,
        ego=EgoStates(states, np.arange(t, dtype=np.int64) * 500_000),
        agents=Agents.empty(t),
        traffic_lights=TrafficLights.empty(t),
        route_roadblock_ids=("1", "2"),
        current_index=3,
    )


def test_scene_validates_and_reports_frames() -> None:
    scene = _scene()
    scene.validate()
    assert scene.num_history_frames == 4 and scene.num_future_frames == 10
    assert scene.current_ego[StateIndex.X] == 3


def test_nan_ego_is_rejected_with_token() -> None:
    scene = _scene()
    scene.ego.states[5, StateIndex.Y] = np.nan
    with pytest.raises(DataValidationError, match="log/0000000000000000"):
        scene.validate()


def test_trajectory_validation() -> None:
    Trajectory(np.zeros((8, 3))).validate()
    with pytest.raises(DataValidationError):
        Trajectory(np.full((8, 3), np.nan)).validate()
    with pytest.raises(DataValidationError):
        Trajectory(np.zeros((8, 2))).validate()
    assert Trajectory(np.zeros((8, 3))).horizon_s == 4.0


def test_red_ids_and_pacifica() -> None:
    tl = TrafficLights(np.array(["7", "9"]), np.array([[TrafficLightStatus.RED, TrafficLightStatus.GREEN]]))
    assert tl.red_ids(0) == ["7"]
    assert PACIFICA.length == pytest.approx(5.176)
    assert PACIFICA.rear_axle_to_center == pytest.approx(1.461)
