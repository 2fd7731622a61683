"""Rule-based planners on the fixture map (local origin): eastbound lane 11 at y = -2, red-light connector 111."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fixture_observations import ROUTE, ego_state, fixture_observation

from planners.rule_based import (
    ConstantVelocityPlanner,
    IDMPlanner,
    LogReplayPlanner,
    PDMClosedPlanner,
    PlannerInputError,
)
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map
from simulation.protocols import Observation, Planner
from simulation.types import (
    PACIFICA,
    Agents,
    EgoStates,
    LogWindow,
    TrafficLights,
)

_MAP: list[MapAPI] = []


def _map() -> MapAPI:
    if not _MAP:
        _MAP.append(MapAPI.from_data(build_fixture_map(origin=(0.0, 0.0))))
    return _MAP[0]


def _obs(
    state: np.ndarray | None = None, boxes: np.ndarray | None = None, red: bool = False, log: LogWindow | None = None
) -> Observation:
    return fixture_observation(_map(), ego_state() if state is None else state, boxes, red, log)


def _vehicle(x: float, speed: float = 0.0) -> np.ndarray:
    return np.array([[x, -2.0, 0.0, speed, 0.0, 4.5, 2.0]])


def test_planners_satisfy_protocol() -> None:
    for planner in (ConstantVelocityPlanner(), IDMPlanner(), PDMClosedPlanner(), LogReplayPlanner()):
        assert isinstance(planner, Planner)


def test_constant_velocity() -> None:
    trajectory = ConstantVelocityPlanner().plan(_obs(ego_state(heading=0.7, speed=6.0)))
    np.testing.assert_allclose(trajectory.poses[:, 0], 3.0 * np.arange(1, 9))
    np.testing.assert_allclose(trajectory.poses[:, 1:], 0.0)


def test_idm_follows_free_route_at_speed_limit() -> None:
    trajectory = IDMPlanner().plan(_obs())
    poses = trajectory.poses
    assert poses.shape == (8, 3)
    np.testing.assert_allclose(poses[:, 1:], 0.0, atol=1e-9)  # the lane is straight through the ego
    speeds = np.diff(np.concatenate([[0.0], poses[:, 0]])) / 0.5
    assert np.all(np.diff(speeds) > 0) and speeds[-1] <= 13.4  # accelerating towards the 13.4 m/s limit


def test_idm_stops_behind_a_stopped_vehicle() -> None:
    lead_x = -18.0
    poses = IDMPlanner().plan(_obs(boxes=_vehicle(lead_x))).poses
    front = -40.0 + poses[-1, 0] + PACIFICA.front_length
    assert front < lead_x - 4.5 / 2.0  # behind its rear bumper
    assert poses[-1, 0] - poses[-2, 0] < 0.5  # below 1 m/s at 4 s


def test_idm_stops_at_red_light() -> None:
    state = ego_state(x=-30.0, speed=8.0)
    green = IDMPlanner().plan(_obs(state)).poses
    red = IDMPlanner().plan(_obs(state, red=True)).poses
    assert -30.0 + green[-1, 0] + PACIFICA.front_length > -10.0  # through the junction
    assert -30.0 + red[-1, 0] + PACIFICA.front_length < -10.0  # before the connector entry at x = -10


def test_idm_needs_a_map() -> None:
    obs = _obs()
    with pytest.raises(PlannerInputError, match="map"):
        IDMPlanner().plan(Observation(obs.ego_history, obs.agents, obs.traffic_lights, ROUTE, "x", None))


def test_pdm_closed_proposals_and_choice() -> None:
    planner = PDMClosedPlanner()
    obs = _obs()
    trajectory = planner.plan(obs)
    assert trajectory.poses.shape == (8, 3)
    scores = planner.last_scores["score"]
    assert scores.shape == (15,)
    # the left offset (+1 m) puts the ego's left side past the road edge at y = 0: not drivable
    assert np.all(scores[10:11] <= scores[4])
    assert trajectory.poses[-1, 0] > 25.0  # the fast centre proposal wins on an empty road
    assert abs(trajectory.poses[-1, 1]) < 1.5


class _PreferSlow:
    """A scorer preferring the slowest proposal (checks that the injected scorer decides)."""

    def score_states(self, cache: object, states: np.ndarray) -> dict[str, np.ndarray]:
        return {"score": -states[:, -1, 0]}


def test_pdm_closed_uses_injected_scorer() -> None:
    slow = PDMClosedPlanner(scorer=_PreferSlow()).plan(_obs()).poses
    fast = PDMClosedPlanner().plan(_obs()).poses
    assert slow[-1, 0] < fast[-1, 0] - 10.0


def test_pdm_closed_avoids_collision_with_stopped_vehicle() -> None:
    planner = PDMClosedPlanner()
    poses = planner.plan(_obs(boxes=_vehicle(-5.0))).poses
    assert -40.0 + poses[-1, 0] + PACIFICA.front_length < -5.0 - 2.25
    assert planner.last_scores["score"].max() > 0.5


def test_log_replay_returns_logged_future_in_local_frame() -> None:
    t = np.arange(12)
    states = np.zeros((12, 11))
    states[:, 0], states[:, 1], states[:, 2] = 100.0, 50.0 + 5.0 * t, np.pi / 2  # northbound at 10 m/s, 2 Hz
    log = LogWindow(
        "log",
        "tok",
        "fixture-town",
        np.array([str(i) for i in t]),
        (t * 500_000).astype(np.int64),
        EgoStates(states, (t * 500_000).astype(np.int64)),
        Agents.empty(12),
        TrafficLights.empty(12),
        ROUTE,
        3,
    )
    trajectory = LogReplayPlanner().plan(
        Observation(
            EgoStates(states[:4], log.timestamps_us[:4]),
            Agents.empty(4),
            TrafficLights.empty(4),
            ROUTE,
            "fixture-town",
            None,
            log=log,
            log_index=3,
        )
    )
    np.testing.assert_allclose(trajectory.poses[:, 0], 5.0 * np.arange(1, 9), atol=1e-9)
    np.testing.assert_allclose(trajectory.poses[:, 1:], 0.0, atol=1e-9)
    with pytest.raises(PlannerInputError, match="log"):
        LogReplayPlanner().plan(_obs())


def test_log_replay_goes_on_at_last_speed_past_the_log_end() -> None:
    """Two logged frames left (0.5 s): the plan follows them, then continues at the last speed (8 m/s)."""
    t = np.arange(6)
    states = np.zeros((6, 11))
    states[:, 0], states[:, 2], states[:, 3] = 4.0 * t, 0.0, 8.0  # eastbound at 8 m/s, 2 Hz
    ts = (t * 500_000).astype(np.int64)
    log = LogWindow(
        "log", "tok", "fixture-town", np.array([str(i) for i in t]), ts, EgoStates(states, ts),
        Agents.empty(6), TrafficLights.empty(6), ROUTE, 4,
    )  # fmt: skip
    obs = Observation(
        EgoStates(states[:5], ts[:5]), Agents.empty(5), TrafficLights.empty(5), ROUTE, "fixture-town", None,
        log=log, log_index=4,
    )  # fmt: skip
    poses = LogReplayPlanner().plan(obs).poses
    np.testing.assert_allclose(poses[:, 0], 4.0 * np.arange(1, 9), atol=1e-9)
    np.testing.assert_allclose(poses[:, 1:], 0.0, atol=1e-9)
    # closed loop: the simulated ego drifted 1 m left and 2 m back; the plan leads back to the logged poses
    drifted = states[:5].copy()
    drifted[-1, :2] += (-2.0, 1.0)
    poses = LogReplayPlanner().plan(dataclasses.replace(obs, ego_history=EgoStates(drifted, ts[:5]))).poses
    np.testing.assert_allclose(poses[:, 0], 2.0 + 4.0 * np.arange(1, 9), atol=1e-9)
    np.testing.assert_allclose(poses[:, 1], -1.0, atol=1e-9)
    start = getattr(LogReplayPlanner().plan(obs), "start_pose", None)  # the logged pose now, for the tracker
    np.testing.assert_allclose(start, states[4, :3])


def test_pdm_closed_reuses_map_context_nearby_only() -> None:
    planner = PDMClosedPlanner()
    planner.plan(_obs(ego_state(x=-40.0)))
    first = planner._map_context
    planner.plan(_obs(ego_state(x=-35.0)))
    assert planner._map_context is first
    planner.plan(_obs(ego_state(x=-15.0)))
    assert planner._map_context is not first
    assert planner._map_context is not None and "2" in set(planner._map_context.ids)
