"""planners/safety_gate.py: the gated choice on hand-built scores, PDM-Closed's own check of a plan that runs into a
stopped car, and the gate on a pair in the closed loop (its pick passes; a gate that passes everything changes
nothing)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fixture_observations import ego_state, fixture_observation

from planners.pdm_closed.planner import PDMClosedPlanner
from planners.reranked import reranked_planner
from planners.safety_gate import (
    GATE_METRICS,
    GateCounts,
    PairDecision,
    SafetyGatedPlanner,
    gate_pick,
    gated_planner,
    score_pickable,
)
from rewards.pdm import PDMScorer
from simulation.closed_loop import ClosedLoopSimulator
from simulation.datasets.scenes import extract_scenarios
from simulation.datasets.testing import make_log_data
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from closed_loop_fixtures import write_pair  # noqa: E402

NC, DAC = GATE_METRICS


def _decision(scores, pickable) -> PairDecision:
    scores = np.asarray(scores, float)
    own = int(np.argmax(np.where(pickable, scores, -np.inf)))
    return PairDecision(np.zeros((len(scores), 8, 3)), np.asarray(pickable, bool), scores, own)


def test_the_gate_keeps_the_discriminators_order_among_the_candidates_that_pass() -> None:
    d = _decision([0.9, 0.5, 0.7, 0.95], [True, True, True, False])  # the highest score is not pickable
    # 0 collides, 2 leaves the drivable area: 1 is the only pickable one to pass
    assert gate_pick(d, {NC: np.array([0, 1, 1, 1.0]), DAC: np.array([1, 1, 0, 1.0])}, GATE_METRICS) == (1, False)
    # all pass: the discriminator's own pick
    assert gate_pick(d, {NC: np.ones(4), DAC: np.ones(4)}, GATE_METRICS) == (0, False)
    # NC alone required: 2 (0.7) beats 1 (0.5)
    assert gate_pick(d, {NC: np.array([0, 1, 1, 1.0]), DAC: np.zeros(4)}, (NC,)) == (2, False)
    # nothing pickable passes (3 does, but is not pickable): the discriminator's pick, counted as a fall-back
    assert gate_pick(d, {NC: np.array([0, 0, 1, 1.0]), DAC: np.array([1, 1, 0, 1.0])}, GATE_METRICS) == (0, True)
    with pytest.raises(KeyError, match="ego_progress"):
        gate_pick(d, {NC: np.ones(4)}, (NC, "ego_progress"))


def _plan(x_at) -> np.ndarray:
    t = np.arange(1, 9) * 0.5
    poses = np.zeros((8, 3))
    poses[:, 0] = x_at(t)
    return poses


def test_pdm_closeds_own_check_fails_the_plan_into_a_stopped_car_and_the_gate_brakes() -> None:
    api = MapAPI.from_data(build_fixture_map(origin=(0.0, 0.0)))
    # the ego at 8 m/s on the eastbound lane, a stopped vehicle 20 m ahead of its rear axle (its rear 17.75 m ahead)
    observation = fixture_observation(api, ego_state(speed=8.0), np.array([[-20.0, -2.0, 0.0, 0.0, 0.0, 4.5, 2.0]]))
    cruise = _plan(lambda t: 8.0 * t)  # 32 m in 4 s: into the car
    # planned to stop 6 m on; NAVSIM's tracker overshoots to 9.5 m, the front bumper (+4.05 m) 4 m short of the car
    brake = _plan(lambda t: np.where(t < 1.5, 8.0 * t - 8.0 / 3.0 * t**2, 6.0))
    candidates = np.stack([cruise, brake])
    metrics = PDMScorer("v1").score(PDMClosedPlanner().observation_metric_cache(observation), candidates)
    np.testing.assert_array_equal(metrics[NC], [0.0, 1.0])
    np.testing.assert_array_equal(metrics[DAC], [1.0, 1.0])
    # the discriminator prefers cruising; the gate drives the braking plan
    decision = PairDecision(candidates, np.array([True, True]), np.array([0.9, 0.6]), own=0)
    assert gate_pick(decision, metrics, GATE_METRICS) == (1, False)
    # the constant-velocity forecast: the same car driving on at 8 m/s is no obstacle to cruising
    moving = fixture_observation(api, ego_state(speed=8.0), np.array([[-20.0, -2.0, 0.0, 8.0, 0.0, 4.5, 2.0]]))
    metrics = PDMScorer("v1").score(PDMClosedPlanner().observation_metric_cache(moving), candidates)
    np.testing.assert_array_equal(metrics[NC], [1.0, 1.0])


@pytest.fixture(scope="module")
def closed_loop_state(tmp_path_factory: pytest.TempPathFactory):
    pair = write_pair(tmp_path_factory.mktemp("gate") / "pair.ckpt")
    scenario, map_api = extract_scenarios(make_log_data())[0], MapAPI.from_data(build_fixture_map())
    sim = ClosedLoopSimulator()
    state = sim.reset(scenario, map_api)
    for _ in range(12):
        state = sim.step(state, None)
    return pair, sim.observe(state)


def test_the_gated_pair_drives_a_candidate_that_passes(closed_loop_state) -> None:
    pair, observation = closed_loop_state
    ungated = reranked_planner(str(pair), max_reverse=None)
    gated = gated_planner(str(pair), max_reverse=None)
    chosen = gated.plan(observation).poses
    candidates = gated.last_candidates
    assert candidates is not None and len(candidates) == 8
    own = ungated.plan(observation).poses
    np.testing.assert_allclose(ungated.last_candidates, candidates)  # the pair's own candidates
    k = int(np.flatnonzero(np.all(np.isclose(candidates, chosen), axis=(1, 2)))[0])
    decision = PairDecision(candidates, np.ones(8, bool), np.zeros(8), own=0)
    metrics = score_pickable(PDMScorer("v1"), PDMClosedPlanner().observation_metric_cache(observation), decision)
    passed = (metrics[NC] == 1) & (metrics[DAC] == 1)
    own_k = int(np.flatnonzero(np.all(np.isclose(candidates, own), axis=(1, 2)))[0])
    # in this state the pair's own pick fails the check and others pass: the gate drives one of those
    assert passed[k] and not passed[own_k]
    assert gated.counts == GateCounts(decisions=1, changed=1, fell_back=0)


def test_a_gate_that_passes_everything_changes_nothing(closed_loop_state, monkeypatch: pytest.MonkeyPatch) -> None:
    pair, observation = closed_loop_state
    gated = gated_planner(str(pair))

    class PassAll:
        def score(self, cache, poses):
            return {NC: np.ones(len(poses)), DAC: np.ones(len(poses))}

    monkeypatch.setattr(gated, "scorer", PassAll())
    np.testing.assert_array_equal(gated.plan(observation).poses, reranked_planner(str(pair)).plan(observation).poses)
    assert gated.counts.changed == 0


def test_bad_gates_are_errors(closed_loop_state) -> None:
    pair, _ = closed_loop_state
    with pytest.raises(ValueError, match="version"):
        gated_planner(str(pair), gate_version="v3")
    with pytest.raises(ValueError, match="require"):
        SafetyGatedPlanner(reranked_planner(str(pair)), require=())
