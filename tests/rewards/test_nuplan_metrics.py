"""Hand-computed cases for nuPlan's closed-loop and open-loop metrics on a tiny straight-road map.

Map (metres): eastbound lane L1 (x 0..100, y -4..0, baseline y = -2, 10 m/s), westbound lane L2
(x 0..100, y 0..4, baseline y = 2 running west, 10 m/s), connector C1 (x 100..110, y -4..0) into
eastbound lane L3 (x 110..200, y -4..0, 15 m/s). Each object sits in its own roadblock.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import shapely

from rewards.nuplan_collisions import CollisionType, at_fault_collisions, time_to_collision
from rewards.nuplan_comfort import comfort_checks, ego_is_comfortable
from rewards.nuplan_map_context import build_lane_graph_context
from rewards.nuplan_metrics import (
    ClosedLoopRollout,
    cls_score,
    compute_closed_loop_metrics,
    driving_direction_compliance,
    progress_ratio,
    rollout_collisions,
)
from rewards.nuplan_open_loop import open_loop_metrics
from simulation.geometry import center_to_rear_axle
from simulation.maps.layers import SemanticMapLayer
from simulation.types import PACIFICA, AgentIndex, StateIndex, TrackedObjectType

D = PACIFICA.rear_axle_to_center


def _obj(oid, x0, x1, y0, y1, baseline, rb, speed, incoming=(), outgoing=()):
    return SimpleNamespace(
        id=oid,
        polygon=shapely.box(x0, y0, x1, y1),
        baseline=np.asarray(baseline, dtype=float),
        roadblock_id=rb,
        speed_limit_mps=speed,
        incoming_ids=tuple(incoming),
        outgoing_ids=tuple(outgoing),
    )


class TinyMap:
    """Duck-typed map with the attributes the metrics use."""

    def __init__(self) -> None:
        l1 = _obj("L1", 0, 100, -4, 0, [[0, -2], [100, -2]], "R1", 10.0, outgoing=["C1"])
        l2 = _obj("L2", 0, 100, 0, 4, [[100, 2], [0, 2]], "R2", 10.0)
        c1 = _obj("C1", 100, 110, -4, 0, [[100, -2], [110, -2]], "RC1", None, incoming=["L1"], outgoing=["L3"])
        l3 = _obj("L3", 110, 200, -4, 0, [[110, -2], [200, -2]], "R3", 15.0, incoming=["C1"])
        self.lanes = {o.id: o for o in (l1, l2, l3)}
        self.lane_connectors = {"C1": c1}
        self.roadblocks = {o.roadblock_id: SimpleNamespace(id=o.roadblock_id, polygon=o.polygon) for o in (l1, l2, l3)}
        self.roadblock_connectors = {"RC1": SimpleNamespace(id="RC1", polygon=c1.polygon)}
        self._inter = {"I1": shapely.box(100, -4, 110, 4)}

    def proximal_ids(self, point, radius, layers):
        table = {
            SemanticMapLayer.LANE: list(self.lanes),
            SemanticMapLayer.LANE_CONNECTOR: list(self.lane_connectors),
            SemanticMapLayer.INTERSECTION: list(self._inter),
        }
        return {layer: table.get(layer, []) for layer in layers}

    def polygons(self, layer):
        return dict(self._inter) if layer == SemanticMapLayer.INTERSECTION else {}

    def drivable_area(self, center, radius):
        return shapely.union_all([o.polygon for o in (*self.lanes.values(), *self.lane_connectors.values())])


def straight_states(x0: float, y: float, speed: float, n: int, heading: float = 0.0, accel: float = 0.0):
    """``(n, 11)`` rear-axle states moving along ``heading`` with constant acceleration (0.1 s steps)."""
    t = np.arange(n) * 0.1
    s = speed * t + 0.5 * accel * t**2
    v = speed + accel * t
    out = np.zeros((n, 11))
    out[:, StateIndex.X] = x0 + np.cos(heading) * s
    out[:, StateIndex.Y] = y + np.sin(heading) * s
    out[:, StateIndex.HEADING] = heading
    out[:, StateIndex.VX] = v
    out[:, StateIndex.AX] = accel
    return out


def rollout(ego, expert=None, boxes=None, types=None):
    n = len(ego)
    if boxes is None:
        boxes, types = np.zeros((n, 0, 7)), np.zeros(0, dtype=np.int64)
    return ClosedLoopRollout(
        ego_states=ego,
        timestamps_us=np.arange(n, dtype=np.int64) * 100_000,
        agent_boxes=boxes,
        agent_types=np.asarray(types),
        agent_valid=np.ones(boxes.shape[:2], dtype=bool),
        expert_states=ego if expert is None else expert,
    )


def metrics_of(r: ClosedLoopRollout):
    points = np.concatenate([r.ego_states[:, :2], r.expert_states[:, :2]])
    return compute_closed_loop_metrics(r, build_lane_graph_context(TinyMap(), points))


def agent_track(x0, y, speed, n, length=4.0, width=2.0, heading=0.0):
    """``(n, 1, 7)`` box of a track moving along ``heading``."""
    t = np.arange(n) * 0.1
    box = np.zeros((n, 1, 7))
    box[:, 0, AgentIndex.X] = x0 + np.cos(heading) * speed * t
    box[:, 0, AgentIndex.Y] = y + np.sin(heading) * speed * t
    box[:, 0, AgentIndex.HEADING] = heading
    box[:, 0, AgentIndex.VX] = np.cos(heading) * speed
    box[:, 0, AgentIndex.VY] = np.sin(heading) * speed
    box[:, 0, AgentIndex.LENGTH] = length
    box[:, 0, AgentIndex.WIDTH] = width
    return box


def test_clean_drive_scores_one():
    m = metrics_of(rollout(straight_states(10.0, -2.0, 5.0, 151)))
    assert m == pytest.approx({k: 1.0 for k in m})


def test_stopped_ego_rear_ended_is_not_at_fault():
    ego = straight_states(50.0, -2.0, 0.0, 31)
    # vehicle from behind at 5 m/s: its front reaches the ego's rear bumper (x 48.873) at t = 1.0 s
    track = agent_track(48.873 - 2.0 - 5.0 + 0.05, -2.0, 5.0, 31)
    r = rollout(ego, boxes=track, types=[TrackedObjectType.VEHICLE])
    col = at_fault_collisions(ego, track, r.agent_types, r.agent_valid, np.ones(31, dtype=bool))
    assert col.collision_type[0] == CollisionType.STOPPED_EGO and not col.at_fault[0]
    m = metrics_of(r)
    assert m["no_ego_at_fault_collisions"] == 1.0
    assert m["time_to_collision_within_bound"] == 1.0  # ego speed 0: TTC is inf


def test_moving_ego_hits_stopped_vehicle_is_at_fault_and_ttc_zero():
    ego = straight_states(30.0, -2.0, 10.0, 31)
    track = agent_track(30.0 + D + PACIFICA.length / 2 + 2.0 + 5.0, -2.0, 0.0, 31)  # hit after 0.5 s
    r = rollout(ego, boxes=track, types=[TrackedObjectType.VEHICLE])
    col = at_fault_collisions(ego, track, r.agent_types, r.agent_valid, np.ones(31, dtype=bool))
    assert col.collision_type[0] == CollisionType.STOPPED_TRACK and col.first_collision_frame[0] == 5
    m = metrics_of(r)
    assert m["no_ego_at_fault_collisions"] == 0.0
    assert m["time_to_collision_within_bound"] == 0.0
    assert m["score"] == 0.0


def test_active_front_and_active_rear():
    ego = straight_states(30.0, -2.0, 10.0, 21)
    front_gap = 30.0 + D + PACIFICA.length / 2 + 2.0 + 1.0
    slow_ahead = agent_track(front_gap, -2.0, 5.0, 21)  # ego closes 1 m at 5 m/s: hit at 0.2-0.3 s
    fast_behind = agent_track(30.0 + D - PACIFICA.length / 2 - 2.0 - 1.0, -2.0, 20.0, 21)
    valid = np.ones((21, 1), dtype=bool)
    in_route = np.ones(21, dtype=bool)
    types = np.array([TrackedObjectType.VEHICLE])
    front = at_fault_collisions(ego, slow_ahead, types, valid, in_route)
    rear = at_fault_collisions(ego, fast_behind, types, valid, in_route)
    assert front.collision_type[0] == CollisionType.ACTIVE_FRONT and front.score == 0.0
    assert rear.collision_type[0] == CollisionType.ACTIVE_REAR and rear.score == 1.0


def test_rollout_collisions_is_what_the_metric_reads():
    ego = straight_states(30.0, -2.0, 10.0, 21)
    slow_ahead = agent_track(30.0 + D + PACIFICA.length / 2 + 3.0, -2.0, 5.0, 21)
    r = rollout(ego, boxes=slow_ahead, types=[TrackedObjectType.VEHICLE])
    ctx = build_lane_graph_context(TinyMap(), np.concatenate([ego[:, :2], ego[:, :2]]))
    collisions, in_route = rollout_collisions(r, ctx)
    assert in_route.shape == (21,) and in_route.all()  # the ego stays in its lane
    assert collisions.collision_type[0] == CollisionType.ACTIVE_FRONT and collisions.at_fault[0]
    assert collisions.score == metrics_of(r)["no_ego_at_fault_collisions"] == 0.0


def test_lateral_collision_fault_depends_on_lane():
    ego = straight_states(30.0, -2.0, 10.0, 11)
    # vehicle alongside, moving at the same speed, overlapping the ego's left side from frame 0
    side = agent_track(30.0 + D, -2.0 + PACIFICA.width / 2 + 0.9, 10.0, 11)
    types = np.array([TrackedObjectType.VEHICLE])
    valid = np.ones((11, 1), dtype=bool)
    in_lane = at_fault_collisions(ego, side, types, valid, np.ones(11, dtype=bool))
    off_lane = at_fault_collisions(ego, side, types, valid, np.zeros(11, dtype=bool))
    assert in_lane.collision_type[0] == CollisionType.ACTIVE_LATERAL
    assert in_lane.score == 1.0 and off_lane.score == 0.0


@pytest.mark.parametrize(("num_cones", "expected"), [(1, 0.5), (2, 0.0)])
def test_object_collisions_count_against_threshold_one(num_cones, expected):
    ego = straight_states(30.0, -2.0, 10.0, 21)
    cones = np.concatenate([agent_track(40.0 + 5.0 * k, -2.0, 0.0, 21, 0.5, 0.5) for k in range(num_cones)], 1)
    types = np.full(num_cones, TrackedObjectType.TRAFFIC_CONE)
    col = at_fault_collisions(ego, cones, types, np.ones((21, num_cones), dtype=bool), np.ones(21, dtype=bool))
    assert col.score == expected


@pytest.mark.parametrize(("gap", "expected"), [(8.0, 0.0), (12.0, 1.0)])
def test_ttc_against_stopped_vehicle(gap, expected):
    # ego at 10 m/s, stopped vehicle whose rear is `gap` metres ahead of the ego front bumper:
    # TTC = 0.8 s (< 0.95, fails) or 1.2 s then 1.1 s (passes) over two frames.
    ego = straight_states(0.0, -2.0, 10.0, 2)
    track = agent_track(D + PACIFICA.length / 2 + gap + 2.0 - 0.005, -2.0, 0.0, 2)
    ttc = time_to_collision(
        ego, track, np.ones((2, 1), bool), np.array([-1]), np.zeros(2, bool), np.zeros(2, bool), full_horizon=True
    )
    assert ttc.score == expected
    assert ttc.ttc[0] == pytest.approx(0.8 if gap == 8.0 else 1.2)


@pytest.mark.parametrize(("offset", "expected"), [(0.5, 0.0), (0.2, 1.0)])
def test_drivable_area_compliance_off_road(offset, expected):
    # right corners of the ego at y = -4 - offset (road edge at -4)
    y = -4.0 - offset + PACIFICA.width / 2
    m = metrics_of(rollout(straight_states(10.0, y, 5.0, 31)))
    assert m["drivable_area_compliance"] == expected


@pytest.mark.parametrize(("speed", "expected"), [(1.0, 1.0), (3.0, 0.5), (6.0, 0.0)])
def test_driving_direction_compliance_wrong_way(speed, expected):
    # driving east in the westbound lane L2: after the entry frames, 11-frame windows sum to -1.1 * speed
    ego = straight_states(20.0 - D, 2.0, speed, 41)
    m = metrics_of(rollout(ego))
    assert m["driving_direction_compliance"] == expected


def test_driving_direction_window_sum_by_hand():
    progress = np.zeros(30)
    progress[5:25] = -0.25  # 11-frame windows reach -2.75 m
    assert driving_direction_compliance(progress, 0.1) == 0.5
    progress[5:25] = -0.15  # -1.65 m
    assert driving_direction_compliance(progress, 0.1) == 1.0


def test_progress_ratio_and_making_progress():
    expert = straight_states(10.0, -2.0, 10.0, 101)  # 100 m, across L1 -> C1 -> L3
    half = straight_states(10.0, -2.0, 5.0, 101)
    m = metrics_of(rollout(half, expert=expert))
    assert m["ego_progress_along_expert_route"] == pytest.approx(0.5, abs=1e-6)
    assert m["ego_is_making_progress"] == 1.0
    stopped = metrics_of(rollout(straight_states(10.0, -2.0, 0.0, 101), expert=expert))
    assert stopped["ego_progress_along_expert_route"] == pytest.approx(2.0 / 100.0)
    assert stopped["ego_is_making_progress"] == 0.0 and stopped["score"] == 0.0
    assert progress_ratio(-3.0, 50.0) == 0.0 and progress_ratio(1.0, 1.0) == 1.0


def test_speed_limit_integral():
    # 12 m/s: 2 m/s over the limit while in L1, so 1 - 2 * n_L1 * 0.1 / (2.23 * 15)
    # the ego centre leaves L1 at x = 100 into C1 (limit max(10, 15) = 15) and L3 (15 m/s)
    ego = straight_states(0.0, -2.0, 12.0, 151)
    m = metrics_of(rollout(ego))
    centers_x = ego[:, 0] + D
    limit = np.where(centers_x < 100, 10.0, 15.0)
    expected = 1 - np.maximum(0, 12.0 - limit).sum() * 0.1 / (2.23 * 15.0)
    assert m["speed_limit_compliance"] == pytest.approx(expected)
    slow = metrics_of(rollout(straight_states(0.0, -2.0, 9.0, 101)))
    assert slow["speed_limit_compliance"] == 1.0


def test_comfort_bounds():
    ok = straight_states(0.0, -2.0, 5.0, 60, accel=2.0)
    assert ego_is_comfortable(ok, np.arange(60) * 100_000) == 1.0
    hard = straight_states(0.0, -2.0, 5.0, 60, accel=3.0)
    checks = comfort_checks(hard, np.arange(60) * 100_000)
    assert not checks["lon_accel"] and checks["lat_accel"]
    turning = straight_states(0.0, -2.0, 5.0, 60)
    turning[:, StateIndex.HEADING] = 1.0 * np.arange(60) * 0.1  # 1 rad/s yaw rate
    checks = comfort_checks(turning, np.arange(60) * 100_000)
    assert not checks["yaw_rate"] and checks["yaw_accel"]


def test_cls_aggregation_by_hand():
    metrics = {
        "no_ego_at_fault_collisions": 1.0,
        "drivable_area_compliance": 1.0,
        "ego_is_making_progress": 1.0,
        "driving_direction_compliance": 0.5,
        "ego_progress_along_expert_route": 0.8,
        "time_to_collision_within_bound": 0.0,
        "speed_limit_compliance": 0.9,
        "ego_is_comfortable": 1.0,
    }
    # 0.5 * (5 * 0.8 + 5 * 0 + 4 * 0.9 + 2 * 1) / 16 = 0.5 * 9.6 / 16
    assert cls_score(metrics) == pytest.approx(0.3)
    del metrics["speed_limit_compliance"]  # dropped metrics renormalise the weights: 0.5 * 6 / 12
    assert cls_score(metrics) == pytest.approx(0.25)


def test_open_loop_metrics_perfect_and_offset():
    expert = straight_states(0.0, -2.0, 10.0, 151)
    times = np.arange(151) * 0.1
    plan_t = [times[k : k + 81] for k in range(0, 70, 10)]
    plans = [expert[k : k + 81, :3] for k in range(0, 70, 10)]
    perfect = open_loop_metrics(plan_t, plans, times, expert[:, :3])
    assert perfect["score"] == pytest.approx(1.0)
    shifted = [p + [0.0, 2.0, 0.0] for p in plans]  # 2 m lateral error everywhere
    m = open_loop_metrics(plan_t, shifted, times, expert[:, :3])
    assert m["planner_expert_average_l2_error_within_bound"] == pytest.approx(1 - 2.0 / 8.0)
    assert m["planner_expert_final_heading_error_within_bound"] == pytest.approx(1.0)
    assert m["score"] == pytest.approx((0.75 + 2 + 0.75 + 2) / 6)


def test_center_conversion_consistency():
    poses = np.array([[1.0, 2.0, 0.3]])
    assert center_to_rear_axle(poses)[0, 0] == pytest.approx(1.0 - D * np.cos(0.3))


def test_fixture_map_drive_through_junction():
    from simulation.maps.api import MapAPI
    from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map

    api = MapAPI.from_data(build_fixture_map())
    ox, oy = FIXTURE_ORIGIN
    expert = straight_states(ox - 55.0, oy - 2.0, 10.0, 101)  # lane 11 -> connector 111 -> lane 21
    r = rollout(expert)
    points = np.concatenate([r.ego_states[:, :2], r.expert_states[:, :2]])
    ctx = build_lane_graph_context(api, points)
    m = compute_closed_loop_metrics(r, ctx)
    assert m == pytest.approx({k: 1.0 for k in m})
    fast = rollout(straight_states(ox - 55.0, oy - 2.0, 16.0, 101), expert=expert)
    m = compute_closed_loop_metrics(
        fast, build_lane_graph_context(api, np.concatenate([points, fast.ego_states[:, :2]]))
    )
    # 16 m/s: 2.6 m/s over the 13.4 m/s limit in lanes 11, 21 and connector 111 (max of 11 and 21);
    # 20 m/s in connector 121 (max of 21 and 41) and lane 41 (centre x >= 50)
    centers = fast.ego_states[:, 0] - ox + D
    over = np.where(centers < 50.0, 2.6, 0.0)
    assert m["speed_limit_compliance"] == pytest.approx(1 - over.sum() * 0.1 / (2.23 * 10.0))
    assert m["ego_progress_along_expert_route"] == 1.0


def test_ttc_short_search_agrees_with_full_horizon():
    rng = np.random.default_rng(3)
    ego = straight_states(0.0, -2.0, 10.0, 40)
    boxes = np.concatenate(
        [agent_track(rng.uniform(5, 60), rng.uniform(-4, 0), rng.uniform(0, 8), 40) for _ in range(12)], 1
    )
    args = (ego, boxes, np.ones((40, 12), bool), np.full(12, -1), np.zeros(40, bool), np.ones(40, bool))
    full, short = time_to_collision(*args, full_horizon=True), time_to_collision(*args)
    assert full.score == short.score
    np.testing.assert_array_equal(short.ttc, np.where(full.ttc <= 0.95, full.ttc, np.inf))
    assert np.isfinite(full.ttc).any()
