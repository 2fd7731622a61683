"""Logged ego states as nuPlan's / NAVSIM's scenario APIs report them (yaw rate, yaw acceleration and steering 0),
and a scenario's route and goal taken from its tagged frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from simulation.closed_loop import ClosedLoopSimulator
from simulation.datasets.nuplan_db import read_log, write_log
from simulation.datasets.openscene import openscene_scenes, read_openscene_log, write_openscene_log
from simulation.datasets.scenes import (
    UNLOGGED_EGO_COLUMNS,
    ScenarioFilter,
    extract_scenarios,
    extract_scenes,
    scenario_ego_states,
)
from simulation.datasets.testing import make_log_data
from simulation.features import ego_status
from simulation.geometry import global_to_local
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map
from simulation.metric_cache import build_metric_cache
from simulation.protocols import Observation
from simulation.types import StateIndex, Trajectory

S = StateIndex


def _turning_log(yaw_rate: float = 0.3):
    """The fixture log with a logged yaw rate (and steering columns) on every frame, the first included."""
    log = make_log_data()
    ego = log.ego_states.copy()
    ego[:, S.YAW_RATE] = yaw_rate
    ego[:, S.YAW_ACCEL] = 0.05
    ego[:, S.STEERING_ANGLE], ego[:, S.STEERING_RATE] = 0.02, 0.01
    return dataclasses.replace(log, ego_states=ego)


class _Expert:
    """Follows the logged future (4 s at 0.1 s)."""

    name = "expert"

    def plan(self, observation: Observation) -> Trajectory:
        log, i = observation.log, observation.log_index
        idx = np.arange(i + 1, min(i + 41, log.num_frames))
        return Trajectory(global_to_local(log.ego.states[idx, :3], observation.current_state[None, :3]), 0.1)


def test_scenario_ego_states_zero_only_the_unlogged_columns():
    states = np.arange(2 * 11, dtype=np.float64).reshape(2, 11) + 1.0
    out = scenario_ego_states(states)
    zeroed = [S.STEERING_ANGLE, S.STEERING_RATE, S.YAW_RATE, S.YAW_ACCEL]
    assert sorted(UNLOGGED_EGO_COLUMNS) == zeroed
    assert (out[:, zeroed] == 0.0).all()
    kept = [c for c in range(11) if c not in zeroed]
    np.testing.assert_array_equal(out[:, kept], states[:, kept])
    assert states[0, S.YAW_RATE] == 10.0  # the input is not modified


def test_a_logged_yaw_rate_survives_the_db_but_not_the_scenario(tmp_path):
    log = _turning_log()
    path = write_log(log, tmp_path / f"{log.log_name}.db")
    read = read_log(path)
    assert read.ego_states[0, S.YAW_RATE] == pytest.approx(0.3)  # angular_rate_z is kept in the log data
    scenario = extract_scenarios(read)[0]
    assert scenario.ego.states[0, S.YAW_RATE] == 0.0
    assert (scenario.ego.states[:, UNLOGGED_EGO_COLUMNS] == 0.0).all()
    assert scenario.history_ego is not None and (scenario.history_ego.states[:, S.YAW_RATE] == 0.0).all()
    # pose, velocity and acceleration are the log's
    first = np.flatnonzero(read.frame_tokens == scenario.frame_tokens[0])[0]
    motion = [S.X, S.Y, S.HEADING, S.VX, S.VY, S.AX, S.AY]
    np.testing.assert_array_equal(scenario.ego.states[0, motion], read.ego_states[first, motion])


@pytest.mark.parametrize("controller", ["two_stage", "perfect"])
def test_closed_loop_starts_with_yaw_rate_zero(controller):
    turning, plain = _turning_log(), _turning_log(yaw_rate=0.0)
    sim = ClosedLoopSimulator(controller=controller)
    sc_turning, sc_plain = extract_scenarios(turning)[0], extract_scenarios(plain)[0]
    state = sim.reset(sc_turning)
    assert state.current_state[S.YAW_RATE] == 0.0 and state.current_state[S.STEERING_ANGLE] == 0.0
    assert (state.ego_states[:, S.YAW_RATE] == 0.0).all()  # the history the planner sees, too
    # the logged angular rate changes nothing: the first steps equal those of a log without one
    a, b = state, sim.reset(sc_plain)
    for _ in range(3):
        a, b = sim.step(a, _Expert().plan(sim.observe(a))), sim.step(b, _Expert().plan(sim.observe(b)))
    np.testing.assert_array_equal(a.ego_states, b.ego_states)


@pytest.fixture(scope="module")
def fixture_api() -> MapAPI:
    return MapAPI.from_data(build_fixture_map())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_metric_cache_starts_with_yaw_rate_zero(fixture_api, version):
    scene = extract_scenes(_turning_log())[1]
    plain = extract_scenes(_turning_log(yaw_rate=0.0))[1]
    cache = build_metric_cache(scene, fixture_api, None, version)
    assert cache.current_state[S.YAW_RATE] == 0.0 and cache.current_state[S.YAW_ACCEL] == 0.0
    # EPDMS history comfort reads the logged history as NAVSIM's scenario API builds it: yaw rate 0
    assert len(cache.history_states) and (cache.history_states[:, UNLOGGED_EGO_COLUMNS] == 0.0).all()
    reference = build_metric_cache(plain, fixture_api, None, version)
    np.testing.assert_array_equal(cache.current_state, reference.current_state)
    np.testing.assert_array_equal(cache.human_states, reference.human_states)
    np.testing.assert_array_equal(cache.history_states, reference.history_states)


def test_ego_status_features_are_unchanged():
    """NAVSIM's ``EgoStatus`` (pose, velocity, acceleration, command) carries no yaw rate: the planner's view of
    a scene is the logged motion."""
    log = _turning_log()
    scene = extract_scenes(log)[0]
    frame = np.flatnonzero(log.frame_tokens == scene.token)[0]
    features = ego_status(scene.current_ego, scene.driving_command)
    expected = ego_status(log.ego_states[frame], scene.driving_command)
    np.testing.assert_array_equal(features, expected)
    np.testing.assert_array_equal(features[:4], log.ego_states[frame, [S.VX, S.VY, S.AX, S.AY]].astype(np.float32))


def test_openscene_scenes_start_with_yaw_rate_zero(tmp_path):
    log = _turning_log()
    frames = read_openscene_log(write_openscene_log(log, tmp_path / f"{log.log_name}.pkl"))
    assert frames[0]["can_bus"][15] == pytest.approx(0.3)  # the pickle keeps OpenScene's yaw rate
    scene = openscene_scenes(frames)[0]
    assert (scene.ego.states[:, S.YAW_RATE] == 0.0).all()
    np.testing.assert_allclose(scene.current_ego[[S.VX, S.AX]], extract_scenes(log)[0].current_ego[[S.VX, S.AX]])


def test_scenario_route_and_goal_are_those_of_the_tagged_frame():
    log = make_log_data()
    goals = np.stack([np.full(3, 10.0 * k) for k in range(len(log.scene_tokens))])
    log = dataclasses.replace(log, scene_goal=goals)
    scenarios = extract_scenarios(log, ScenarioFilter(timestamp_threshold_s=None))
    tagged = 340  # scene 3; the window starts 3 s earlier, at frame 280 of scene 2
    sc = next(s for s in scenarios if s.token == str(log.frame_tokens[tagged]))
    assert sc.frame_tokens[0] == str(log.frame_tokens[280])
    first_route, tagged_route = log.scene_roadblock_ids[2], log.scene_roadblock_ids[3]
    assert first_route != tagged_route  # the route changes between the first frame and the tagged frame
    assert sc.route_roadblock_ids == tuple(tagged_route) == ("101", "2", "103", "4")
    np.testing.assert_array_equal(sc.goal, goals[3])
