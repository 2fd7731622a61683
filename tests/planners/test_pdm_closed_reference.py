"""PDM-Closed against NAVSIM's PDMClosedPlanner rules, on hand-built cases (expected numbers re-derived here)."""

from __future__ import annotations

import numpy as np
import pytest
from fixture_observations import ROUTE, ego_state, fixture_observation
from shapely.geometry import box

from planners.pdm_closed.generator import ProposalGenerator
from planners.pdm_closed.idm_policy import BatchIDMPolicy, IDMState, LeaderIndex
from planners.pdm_closed.observation import build_pdm_observation, scoring_observation
from planners.pdm_closed.path import ProposalPath
from planners.rule_based import PDMClosedPlanner
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map
from simulation.protocols import Observation
from simulation.types import PACIFICA, Agents, EgoStates, TrackedObjectType, TrafficLights

MAP = MapAPI.from_data(build_fixture_map(origin=(0.0, 0.0)))
POLICY = BatchIDMPolicy()
TARGETS = np.array([3.0, 6.0, 9.0, 12.0, 15.0])  # 0.2 ... 1.0 x 15 m/s
HALF_W = PACIFICA.width / 2.0


def _idm_accel(v: float, v0: float, gap: float, v_lead: float, exponent: int = 10) -> float:
    """The IDM law with NAVSIM's gains, written out (a = 1.5, b = 3, s0 = 1, T = 1.5), clipped to [-3, 1.5]."""
    s_star = 1.0 + 1.5 * v + v * (v - v_lead) / (2.0 * np.sqrt(1.5 * 3.0))
    return float(np.clip(1.5 * (1.0 - (v / v0) ** exponent - (s_star / max(gap, 1.0)) ** 2), -3.0, 1.5))


def _obs(state: np.ndarray, boxes: np.ndarray | None = None, types: list[int] | None = None) -> Observation:
    boxes = np.zeros((0, 7)) if boxes is None else np.asarray(boxes, dtype=np.float64)
    n = len(boxes)
    kinds = np.array(types if types is not None else [TrackedObjectType.VEHICLE] * n, dtype=np.int64)
    agents = Agents(boxes[None], kinds, np.array([f"{i:016x}" for i in range(n)]), np.ones((1, n), bool))
    return Observation(EgoStates(state[None], np.array([0])), agents, TrafficLights.empty(1), ROUTE, "x", None)


def _straight() -> ProposalPath:
    x = np.linspace(-10.0, 200.0, 211)
    return ProposalPath.from_centerline(np.stack([x, np.zeros_like(x)], -1))


def _unroll(state: np.ndarray, boxes: np.ndarray | None = None, types: list[int] | None = None,
            red: list | None = None, steps: int = 40):  # type: ignore[no-untyped-def]  # fmt: skip
    obs = build_pdm_observation(_obs(state, boxes, types), [f"r{i}" for i in range(len(red or []))], red or [])
    gen = ProposalGenerator(POLICY)
    roll = gen.start(_straight(), state, TARGETS, 50)
    gen.unroll(roll, obs, np.arange(5), 1, steps)
    return roll, obs


def test_idm_propagate_uses_exponent_10_and_does_not_floor_speed() -> None:
    states = np.array([[0.0, 12.0], [0.0, 0.2]])
    leaders = np.array([[1000.0, 0.0, 0.0], [0.5, -20.0, 0.0]])  # far leader; one 0.5 m ahead (gap floored at 1)
    got = POLICY.propagate(states, leaders, np.array([15.0, 15.0]), 0.1)
    want_a = _idm_accel(12.0, 15.0, 1000.0, 0.0)
    assert abs(want_a - _idm_accel(12.0, 15.0, 1000.0, 0.0, exponent=4)) > 0.4  # the exponent matters here
    np.testing.assert_allclose(got[0], [1.2, 12.0 + 0.1 * want_a], atol=1e-12)
    assert _idm_accel(0.2, 15.0, 0.5, -20.0) == -3.0
    np.testing.assert_allclose(got[1], [0.02, 0.2 - 0.3], atol=1e-12)  # braked below zero


def test_first_step_brakes_on_the_zero_leader_row() -> None:
    roll, _ = _unroll(ego_state(0.0, 0.0, 0.0, 10.0), steps=2)
    np.testing.assert_allclose(roll.leaders[:, 1], 0.0)  # copied from the all-zero row of step 0
    np.testing.assert_allclose(roll.idm[:, 1, IDMState.VELOCITY], 9.7, atol=1e-12)  # -3 m/s^2 for 0.1 s
    np.testing.assert_allclose(roll.idm[:, 1, IDMState.PROGRESS], 10.0 + 1.0, atol=1e-12)
    # step 2: the path end (210 m) with half the ego length behind it is the leader
    np.testing.assert_allclose(roll.leaders[:, 2], [[210.0, 0.0, PACIFICA.length / 2.0]] * 5)
    want = [9.7 + 0.1 * _idm_accel(9.7, v0, 210.0 - PACIFICA.length / 2.0 - 11.0, 0.0) for v0 in TARGETS]
    np.testing.assert_allclose(roll.idm[:, 2, IDMState.VELOCITY], want, atol=1e-12)
    still, _ = _unroll(ego_state(0.0, 0.0, 0.0, 0.0), steps=1)
    np.testing.assert_allclose(still.idm[:, 1], [[10.0, 0.0]] * 5, atol=1e-12)  # at rest: a = 0 exactly


def test_agent_entering_and_leaving_the_corridor() -> None:
    """A crossing car (4 m along y, 2 m wide) at y = 7.6 - 5 t meets the corridor (|y| < 1.1485) after 0.9 s."""
    car = np.array([[30.0, 7.6, -np.pi / 2, 0.0, -5.0, 4.0, 2.0]])
    roll, _ = _unroll(ego_state(0.0, 0.0, 0.0, 3.0), car, steps=24)
    assert np.all(roll.leaders[:, 8, LeaderIndex.PROGRESS] == 210.0)  # at 0.8 s its edge is at y = 1.6: free
    for k, y in ((10, 2.6), (20, -2.4)):  # in the corridor at 1.0 s and 2.0 s
        x_ego = roll.poses[:, k - 1, 0]
        gap = 29.0 - (x_ego + PACIFICA.front_length)  # agent box x in [29, 31], y overlapping the ego's
        assert np.all(np.abs(y) - 2.0 < HALF_W)
        np.testing.assert_allclose(roll.leaders[:, k, LeaderIndex.PROGRESS], roll.idm[:, k - 1, 0] + gap, atol=1e-9)
        np.testing.assert_allclose(roll.leaders[:, k, 1:], 0.0, atol=1e-9)  # crossing: no speed along the ego
    assert np.all(roll.leaders[:, 22, LeaderIndex.PROGRESS] == 210.0)  # left (y = -3.4 at 2.2 s)


def test_gap_is_footprint_to_polygon_distance_and_static_speed_is_zero() -> None:
    cone = np.array([[20.0, 0.3, 0.4, 0.0, 0.0, 1.0, 1.0]])  # a rotated cone
    roll, obs = _unroll(ego_state(0.0, 0.0, 0.0, 0.0), cone, [TrackedObjectType.TRAFFIC_CONE], steps=2)
    corners = obs.agent_polygons[0, 0].exterior.coords
    nearest_x = min(c[0] for c in corners)  # a corner points at the ego; ego front at x = 4.049
    np.testing.assert_allclose(roll.leaders[:, 2], [[10.0 + nearest_x - PACIFICA.front_length, 0.0, 0.0]] * 5,
                               atol=1e-9)  # fmt: skip


def test_leader_speed_is_projected_on_the_ego_heading() -> None:
    oncoming = np.array([[40.0, 0.0, np.pi, -4.0, 0.0, 4.0, 2.0]])
    slanted = np.array([[40.0, 0.0, np.pi / 3, 3.0, 0.0, 4.0, 2.0]])  # moving along x, heading 60 deg
    roll, _ = _unroll(ego_state(0.0, 0.0, 0.0, 5.0), oncoming, steps=2)
    np.testing.assert_allclose(roll.leaders[:, 2, LeaderIndex.VELOCITY], -4.0, atol=1e-12)
    roll, _ = _unroll(ego_state(0.0, 0.0, 0.0, 5.0), slanted, steps=2)
    np.testing.assert_allclose(roll.leaders[:, 2, LeaderIndex.VELOCITY], 3.0 * np.cos(np.pi / 3), atol=1e-12)


def test_red_connector_ahead_is_an_obstacle_unless_the_ego_is_inside() -> None:
    ahead = box(30.0, -2.0, 40.0, 2.0)
    roll, obs = _unroll(ego_state(0.0, 0.0, 0.0, 5.0), red=[ahead], steps=2)
    assert not obs.collided.any()
    np.testing.assert_allclose(roll.leaders[:, 2, LeaderIndex.PROGRESS], roll.idm[:, 1, 0] + 30.0 - (
        roll.poses[:, 1, 0] + PACIFICA.front_length), atol=1e-9)  # fmt: skip
    np.testing.assert_allclose(roll.leaders[:, 2, LeaderIndex.VELOCITY], 0.0)
    around = box(-5.0, -2.0, 40.0, 2.0)  # the ego footprint lies wholly inside
    roll, obs = _unroll(ego_state(0.0, 0.0, 0.0, 5.0), red=[around], steps=2)
    assert obs.collided.tolist() == [True]
    np.testing.assert_allclose(roll.leaders[:, 2, LeaderIndex.PROGRESS], 210.0)
    _, obs = _unroll(ego_state(0.0, 0.0, 0.0, 5.0), red=[box(2.0, -2.0, 40.0, 2.0)], steps=1)
    assert obs.collided.tolist() == [False]  # overlapping but not inside: still an obstacle


def test_internal_observation_drops_far_agents_and_holds_forecasts_for_0_2_s() -> None:
    centre_x = PACIFICA.rear_axle_to_center
    boxes = np.array([[centre_x + 99.0, 0.0, 0.0, 2.0, 1.0, 4.0, 2.0], [centre_x, 101.0, 0.0, 0.0, 0.0, 4.0, 2.0]])
    obs = build_pdm_observation(_obs(ego_state(0.0, 0.0, 0.0, 0.0), boxes), [], [])
    assert obs.track_ids.tolist() == [f"{0:016x}"]  # 101 m from the ego centre: dropped
    _, scored = scoring_observation(_obs(ego_state(0.0, 0.0, 0.0, 0.0), boxes), obs, 51)
    speed = np.hypot(2.0, 1.0)  # moves along its heading (x) at its speed
    np.testing.assert_allclose(scored[[0, 1, 2, 3, 49, 50], 0, 0] - (centre_x + 99.0),
                               speed * np.array([0.0, 0.0, 0.2, 0.2, 4.8, 5.0]), atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(scored[:, 0, 3:5], [[2.0, 1.0]] * 51)  # the observed velocity is kept


def test_agent_overlapping_the_ego_now_is_ignored() -> None:
    car = np.array([[3.0, 0.5, 0.0, 0.0, 0.0, 4.0, 2.0]])
    roll, obs = _unroll(ego_state(0.0, 0.0, 0.0, 5.0), car, steps=2)
    assert obs.collided.tolist() == [True]
    np.testing.assert_allclose(roll.leaders[:, 2, LeaderIndex.PROGRESS], 210.0)
    _, scored = scoring_observation(_obs(ego_state(0.0, 0.0, 0.0, 5.0), car), obs, 51)
    assert scored.shape == (51, 0, 7)


class _Constant:
    def score_states(self, cache: object, states: np.ndarray) -> dict[str, np.ndarray]:
        return {"score": np.ones(len(states))}


def test_centre_line_first_and_ties_go_to_it() -> None:
    planner = PDMClosedPlanner(scorer=_Constant())
    obs = fixture_observation(MAP, ego_state(-40.0, -2.0, 0.0, 8.0))
    glob, _, _ = planner.proposals(obs)
    assert glob.shape == (15, 41, 3)
    np.testing.assert_allclose(glob[0:5, 1:, 1], -2.0, atol=1e-6)  # lane 11 centre at y = -2
    np.testing.assert_allclose(glob[5:10, 1:, 1], -3.0, atol=1e-6)  # offset -1 m (right)
    np.testing.assert_allclose(glob[10:15, 1:, 1], -1.0, atol=1e-6)
    reference = planner.reference_trajectory(obs)
    assert reference.poses.shape == (50, 3) and reference.interval_s == pytest.approx(0.1)
    np.testing.assert_allclose(reference.poses[:40, :2], glob[0, 1:, :2] - [-40.0, -2.0], atol=1e-9)  # 0.2 x limit
    np.testing.assert_allclose(planner.plan(obs).poses, reference.poses[4:40:5], atol=1e-9)  # 0.5 s samples


def test_v2_scores_with_the_epdms_pdm_score() -> None:
    planner = PDMClosedPlanner(version="v2")
    planner.plan(fixture_observation(MAP, ego_state(-40.0, -2.0, 0.0, 8.0)))
    scores = planner.last_scores
    assert "traffic_light_compliance" in scores and "lane_keeping" in scores
    np.testing.assert_allclose(scores["score"], scores["pdm_score"])
    with pytest.raises(ValueError, match="version"):
        PDMClosedPlanner(version="v3")
