"""A learned planner sees the same inputs in both protocols: the features of a closed-loop observation at the
scenario's first iteration (logged history, nothing simulated yet) equal those of the NAVSIM scene whose current
frame is the same logged frame. Training reads NAVSIM scenes, the nuPlan closed loop builds observations; a
difference here would be a train / test mismatch of the closed loop, not a planning error."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.closed_loop import ClosedLoopSimulator
from simulation.datasets.scenes import SceneFilter, extract_scenarios, extract_scenes
from simulation.datasets.testing import make_log_data
from simulation.features import observation_features, scene_features
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map


@pytest.fixture(scope="module")
def pairs():
    log = make_log_data()
    map_api = MapAPI.from_data(build_fixture_map())
    scenes = {s.token: s for s in extract_scenes(log, SceneFilter(frame_interval=1))}
    sim = ClosedLoopSimulator()
    out = []
    for scenario in extract_scenarios(log):
        current = str(scenario.frame_tokens[scenario.current_index])
        if current in scenes:
            out.append((sim.observe(sim.reset(scenario, map_api)), scenes[current], map_api))
    return out


def test_every_scenario_start_has_a_scene(pairs):
    assert len(pairs) >= 2


def test_observation_features_at_reset_equal_the_scene_features(pairs):
    for observation, scene, map_api in pairs:
        closed_loop, navsim = observation_features(observation), scene_features(scene, map_api)
        assert np.abs(navsim.bev).sum() > 0 and navsim.agents_mask.any()  # a non-trivial comparison
        np.testing.assert_array_equal(closed_loop.ego_status, navsim.ego_status)
        np.testing.assert_array_equal(closed_loop.agents, navsim.agents)
        np.testing.assert_array_equal(closed_loop.agents_mask, navsim.agents_mask)
        np.testing.assert_array_equal(closed_loop.bev, navsim.bev)
