"""IDM agents on map rails and log replay: hand-computed IDM steps, following, red lights, route choice."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import shapely

from simulation.agents import (
    IDMParameters,
    build_idm_agents,
    idm_acceleration,
    idm_boxes,
    idm_step,
    leader_gaps,
    log_replay_agents,
    reactive_agent_boxes,
)
from simulation.geometry import agent_box_corners, boxes_overlap, ego_box_corners
from simulation.maps.layers import SemanticMapLayer
from simulation.types import (
    AgentIndex,
    Agents,
    EgoStates,
    Scenario,
    StateIndex,
    TrackedObjectType,
    TrafficLights,
    TrafficLightStatus,
)


def _obj(oid, polygon, baseline, speed, incoming=(), outgoing=(), light=False):
    return SimpleNamespace(
        id=oid,
        polygon=polygon,
        baseline=np.asarray(baseline, dtype=float),
        roadblock_id="R" + oid,
        speed_limit_mps=speed,
        incoming_ids=tuple(incoming),
        outgoing_ids=tuple(outgoing),
        has_traffic_light=light,
    )


class RailMap:
    """Eastbound lane L1 (x 0..100) -> straight connector C1 (x 100..110, traffic light) -> L3 (x 110..300);
    L1 -> left-turning connector C2 (to (110, 10)) -> northbound lane L4."""

    def __init__(self) -> None:
        c2_line = np.array([[100.0, -2.0], [105.0, -1.0], [108.0, 2.0], [110.0, 10.0]])
        self.lanes = {
            "L1": _obj("L1", shapely.box(0, -4, 100, 0), [[0, -2], [100, -2]], 10.0, outgoing=["C1", "C2"]),
            "L3": _obj("L3", shapely.box(110, -4, 300, 0), [[110, -2], [300, -2]], 10.0, incoming=["C1"]),
            "L4": _obj("L4", shapely.box(108, 10, 112, 200), [[110, 10], [110, 200]], 10.0, incoming=["C2"]),
        }
        self.lane_connectors = {
            "C1": _obj("C1", shapely.box(100, -4, 110, 0), [[100, -2], [110, -2]], None, ["L1"], ["L3"], True),
            "C2": _obj("C2", shapely.LineString(c2_line).buffer(2.0), c2_line, None, ["L1"], ["L4"], True),
        }

    def proximal_ids(self, point, radius, layers):
        p = shapely.Point(point).buffer(radius)
        out = {}
        for layer, table in (
            (SemanticMapLayer.LANE, self.lanes),
            (SemanticMapLayer.LANE_CONNECTOR, self.lane_connectors),
        ):
            if layer in layers:
                out[layer] = [k for k, o in table.items() if o.polygon.intersects(p)]
        return out


def make_scenario(
    boxes: np.ndarray, types, valid=None, red_c1: bool = False, ego_x: float = -10.0, ego_y: float = -2.0
) -> Scenario:
    """Scenario of ``T`` frames with the given tracks ``(T, N, 7)``; the ego parked at ``ego_x``."""
    t, n = boxes.shape[:2]
    ego = np.zeros((t, 11))
    ego[:, StateIndex.X] = ego_x
    ego[:, StateIndex.Y] = ego_y
    ts = np.arange(t, dtype=np.int64) * 100_000
    status = np.full((t, 2), TrafficLightStatus.RED if red_c1 else TrafficLightStatus.GREEN, dtype=np.int8)
    return Scenario(
        log_name="log",
        token="tok",
        map_name="rail",
        frame_tokens=np.array([f"{i:016x}" for i in range(t)]),
        timestamps_us=ts,
        ego=EgoStates(ego, ts),
        agents=Agents(
            boxes=boxes,
            types=np.asarray(types, dtype=np.int64),
            track_ids=np.array([f"{i:016x}" for i in range(n)]),
            valid=np.ones((t, n), dtype=bool) if valid is None else valid,
        ),
        traffic_lights=TrafficLights(np.array(["C1", "C2"]), status),
        route_roadblock_ids=("RL1",),
        current_index=0,
    )


def track(x, y, speed, t, heading=0.0, length=4.0, width=2.0):
    out = np.zeros((t, 1, 7))
    time = np.arange(t) * 0.1
    out[:, 0, AgentIndex.X] = x + np.cos(heading) * speed * time
    out[:, 0, AgentIndex.Y] = y + np.sin(heading) * speed * time
    out[:, 0, AgentIndex.HEADING] = heading
    out[:, 0, AgentIndex.VX] = speed * np.cos(heading)
    out[:, 0, AgentIndex.VY] = speed * np.sin(heading)
    out[:, 0, AgentIndex.LENGTH] = length
    out[:, 0, AgentIndex.WIDTH] = width
    return out


def run(scenario: Scenario, steps: int, others=None):
    state = build_idm_agents(scenario, RailMap(), scenario.ego.states[0], 0)
    others = np.zeros((0, 7)) if others is None else others
    for i in range(steps):
        red = set(scenario.traffic_lights.red_ids(min(i, scenario.num_frames - 1)))
        state = idm_step(state, scenario.ego.states[0], others, red, 0.1)
    return state


def test_idm_law_by_hand():
    params = IDMParameters()
    # v = 5, v0 = 10, gap 20, lead 5: s* = 1 + 7.5 = 8.5; a = 1 - 0.0625 - (8.5 / 20)^2
    a = idm_acceleration(np.array([5.0]), np.array([10.0]), np.array([20.0]), np.array([5.0]), params)
    assert a[0] == pytest.approx(1 - 0.0625 - 0.180625)
    # closing fast on a stopped leader: clipped at -decel_max
    a = idm_acceleration(np.array([10.0]), np.array([10.0]), np.array([5.0]), np.array([0.0]), params)
    assert a[0] == -params.decel_max


def test_agents_snap_to_lane_and_accelerate_on_free_road():
    sc = make_scenario(track(10.0, -1.5, 5.0, 10, heading=0.1), [TrackedObjectType.VEHICLE])
    state = build_idm_agents(sc, RailMap(), sc.ego.states[0], 0)
    box = idm_boxes(state)[0]
    assert box[AgentIndex.Y] == pytest.approx(-2.0) and box[AgentIndex.HEADING] == pytest.approx(0.0)
    assert box[AgentIndex.X] == pytest.approx(10.0, abs=0.1)
    nxt = idm_step(state, sc.ego.states[0], np.zeros((0, 7)), set(), 0.1)
    # free road: a = 1 - (5 / 10)^4 = 0.9375 (the path end is far away)
    assert nxt.speed[0] == pytest.approx(5.0 + 0.09375, abs=2e-3)
    assert nxt.progress[0] == pytest.approx(state.progress[0] + 0.5)


def test_follower_stops_behind_stopped_vehicle_without_collision():
    obstacle = track(60.0, -2.0, 0.0, 1)[0]  # a barrier-like stopped box, replayed
    sc = make_scenario(track(10.0, -2.0, 8.0, 2), [TrackedObjectType.VEHICLE])
    state = run(sc, 250, others=obstacle)
    box = idm_boxes(state)[0]
    gap = (60.0 - 2.0) - (box[AgentIndex.X] + 2.0)
    assert state.speed[0] < 0.05
    assert 0.0 < gap < 3.0
    assert not boxes_overlap(agent_box_corners(box), agent_box_corners(obstacle[0]))


def test_agent_follows_the_ego():
    sc = make_scenario(track(10.0, -2.0, 8.0, 2), [TrackedObjectType.VEHICLE], ego_x=50.0)
    gap, lead_v = leader_gaps(build_idm_agents(sc, RailMap(), sc.ego.states[0], 0), sc.ego.states[0], np.zeros((0, 7)))
    # ego rear bumper at 50 - 1.127; agent front at 12
    assert gap[0] == pytest.approx(50.0 - 1.127 - 12.0, abs=0.05) and lead_v[0] == 0.0
    state = run(sc, 250)
    ego_corners = ego_box_corners(sc.ego.states[0, :3])
    assert state.speed[0] < 0.05
    assert not boxes_overlap(agent_box_corners(idm_boxes(state)[0]), ego_corners)


@pytest.mark.parametrize("red", [True, False])
def test_red_light_stops_agent_before_connector(red):
    sc = make_scenario(track(70.0, -2.0, 8.0, 2), [TrackedObjectType.VEHICLE], red_c1=red, ego_x=90.0, ego_y=30.0)
    state = run(sc, 200)
    front = idm_boxes(state)[0, AgentIndex.X] + 2.0
    if red:
        assert front < 100.0 and state.speed[0] < 0.05
    else:
        assert front > 110.0


def test_route_follows_logged_future_else_straightest():
    t = 60
    turning = track(80.0, -2.0, 8.0, t)
    turning[30:, 0, :2] = np.array([105.0, -1.0])  # logged: the vehicle went through C2
    sc = make_scenario(turning, [TrackedObjectType.VEHICLE])
    state = build_idm_agents(sc, RailMap(), sc.ego.states[0], 0)
    assert "C2" in set(state.segment_connector[0]) and "C1" not in set(state.segment_connector[0])
    straight = make_scenario(track(80.0, -2.0, 8.0, 1), [TrackedObjectType.VEHICLE])
    state = build_idm_agents(straight, RailMap(), straight.ego.states[0], 0)
    assert "C1" in set(state.segment_connector[0])


def test_only_vehicles_present_at_start_react():
    boxes = np.concatenate([track(10.0, -2.0, 5.0, 20), track(40.0, -2.0, 5.0, 20), track(30.0, -3.5, 1.0, 20)], 1)
    valid = np.ones((20, 3), dtype=bool)
    valid[:5, 1] = False  # vehicle 1 appears later
    types = [TrackedObjectType.VEHICLE, TrackedObjectType.VEHICLE, TrackedObjectType.PEDESTRIAN]
    sc = make_scenario(boxes, types, valid=valid)
    state = build_idm_agents(sc, RailMap(), sc.ego.states[0], 0)
    assert state.track_index.tolist() == [0]
    out, ok = reactive_agent_boxes(sc, 10, state)
    assert ok.tolist() == [True, False, True]
    np.testing.assert_allclose(out[2], boxes[10, 2])  # pedestrian replayed from the log
    logged, logged_ok = log_replay_agents(sc, 10)
    np.testing.assert_allclose(logged, boxes[10]) and np.testing.assert_array_equal(logged_ok, valid[10])


def test_agents_far_from_ego_are_removed():
    sc = make_scenario(track(10.0, -2.0, 5.0, 2), [TrackedObjectType.VEHICLE], ego_x=-200.0)
    state = build_idm_agents(sc, RailMap(), sc.ego.states[0], 0)
    state = idm_step(state, sc.ego.states[0], np.zeros((0, 7)), set(), 0.1)
    assert not state.active[0]


def test_overlapping_agents_are_dropped_when_snapped():
    boxes = np.concatenate([track(10.0, -2.0, 5.0, 2), track(11.0, -2.2, 5.0, 2)], 1)
    sc = make_scenario(boxes, [TrackedObjectType.VEHICLE] * 2)
    state = build_idm_agents(sc, RailMap(), sc.ego.states[0], 0)
    assert state.num_agents == 1
    assert dataclasses.replace(state).num_agents == 1


def test_fixture_map_agent_stops_at_red_connector_then_goes():
    from simulation.maps.api import MapAPI
    from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map

    api = MapAPI.from_data(build_fixture_map())
    ox, oy = FIXTURE_ORIGIN
    sc = make_scenario(track(ox - 40.0, oy - 2.0, 8.0, 2), [TrackedObjectType.VEHICLE], ego_x=ox, ego_y=oy + 40.0)
    state = build_idm_agents(sc, api, sc.ego.states[0], 0)
    # straightest route: lane 11 -> connector 111 -> lane 21 -> connector 121 -> lane 41
    assert [c for c in state.segment_connector[0] if c] == ["111", "121"]
    ego = sc.ego.states[0]
    for _ in range(150):
        state = idm_step(state, ego, np.zeros((0, 7)), {"111"}, 0.1)
    front = idm_boxes(state)[0, AgentIndex.X] - ox + 2.0
    assert -12.0 < front < -10.0 and state.speed[0] < 0.05
    for _ in range(100):
        state = idm_step(state, ego, np.zeros((0, 7)), set(), 0.1)
    assert idm_boxes(state)[0, AgentIndex.X] - ox > 0.0


def test_path_projection_round_trip():
    from simulation.agents import _path_headings, _path_poses, _project, _resample

    arc = np.stack([20 * np.sin(np.linspace(0, 1.5, 60)), 20 * (1 - np.cos(np.linspace(0, 1.5, 60)))], -1)
    paths = np.stack([_resample(arc, 1.0)])
    s = np.array([3.3])
    pose = _path_poses(paths, s)
    back, lateral = _project(paths, pose[:, None, :2], heading=_path_headings(paths))
    assert back[0, 0] == pytest.approx(3.3, abs=0.02) and abs(lateral[0, 0]) < 0.02
    left = pose[:, :2] + 1.5 * np.stack([-np.sin(pose[:, 2]), np.cos(pose[:, 2])], -1)
    assert _project(paths, left[:, None])[1][0, 0] == pytest.approx(1.5, abs=0.05)
