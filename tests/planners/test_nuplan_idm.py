"""nuPlan's IDM planner on the fixture map (local origin): eastbound lane 11 at y = -2 (x in [-60, -10]), connector
111 (red-light polygon x in [-10, 10], y in [-4, 0]), lanes 21 / 41 beyond; route 1 -> 101 -> 2 -> 103 -> 4.

The expected plans come from a small re-derivation of nuPlan's logic written here (:func:`_hand_rollout`): one
forward-Euler step of the IDM per 0.5 s sample, nuPlan's parameters (a = 1, b = 3, s0 = 1 m, T = 1.5 s), the
leader's distance measured from the ego footprint. Ego (Chrysler Pacifica): centre 1.461 m ahead of the rear axle,
half length 2.588 m, half width 1.1485 m.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import shapely
from fixture_observations import ego_state, fixture_observation
from shapely import affinity
from shapely.geometry import LineString, box
from shapely.ops import unary_union

from planners.nuplan_idm import IDMPlanner, IDMTrajectory, Leader, NuPlanIDMConfig
from planners.nuplan_idm_path import IDMPath, breadth_first_route, build_path, route_plan
from planners.rule_based import IDMPlanner as ReExported
from planners.rule_based import PlannerInputError
from simulation.ego_control import plan_to_global
from simulation.geometry import agent_box_corners
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map
from simulation.protocols import Observation
from simulation.types import Agents, EgoStates, TrackedObjectType

MAP = MapAPI.from_data(build_fixture_map(origin=(0.0, 0.0)))
CENTER, HALF_LENGTH, HALF_WIDTH = 1.461, 2.588, 1.1485
#: The path runs from x = -60 to x = 99 (lane 41's last vertex, x = 100, is dropped as in nuPlan).
PATH_END_X = 99.0


def _hand_rollout(
    speed: float, target: float, distance: Callable[[float], float], lead_speed: float, length_rear: float
) -> np.ndarray:
    """Travelled distances ``(16,)`` at 0.5 ... 8 s; ``distance(travelled)`` is the leader's distance then."""
    a, b, s0, headway = 1.0, 3.0, 1.0, 1.5
    travelled, out = 0.0, []
    for _ in range(16):
        gap = max(distance(travelled) - length_rear, s0)
        desired = s0 + speed * headway + speed * (speed - lead_speed) / (2.0 * math.sqrt(a * b))
        accel = min(max(a * (1.0 - (speed / target) ** 4 - (desired / gap) ** 2), -b), a)
        travelled += 0.5 * speed
        speed = max(speed + 0.5 * accel, 0.0)
        out.append(travelled)
    return np.array(out)


def _free_road(x: float) -> Callable[[float], float]:
    """Distance from the ego centre (rear axle at ``x``) to the path end, as the ego travels."""
    return lambda travelled: PATH_END_X - (x + CENTER + travelled)


def _plan(x: float = -40.0, speed: float = 8.0, boxes: np.ndarray | None = None, red: bool = False) -> np.ndarray:
    trajectory = IDMPlanner(num_poses=16).plan(fixture_observation(MAP, ego_state(x, speed=speed), boxes, red))
    assert trajectory.poses.shape == (16, 3) and trajectory.interval_s == 0.5
    np.testing.assert_allclose(trajectory.poses[:, 1:], 0.0, atol=1e-9)  # straight along y = -2
    return trajectory.poses[:, 0]


def _vehicle(x: float, y: float = -2.0, speed: float = 0.0) -> np.ndarray:
    return np.array([[x, y, 0.0, speed, 0.0, 4.5, 2.0]])


def test_rule_based_name_is_this_planner() -> None:
    assert ReExported is IDMPlanner
    assert IDMPlanner().plan(fixture_observation(MAP, ego_state())).poses.shape == (8, 3)


def test_free_road_accelerates_towards_the_speed_limit() -> None:
    x = _plan()
    # by hand, first step: a = 1 - (8 / 13.4)^4 - (s* / s)^2, s* = 1 + 8 * 1.5 + 8 * 8 / (2 sqrt 3) = 31.475 m,
    # s = 99 - (-38.539) - 2.588 = 134.951 m from the ego centre to the path end, less half the ego length
    gap = PATH_END_X - (-40.0 + CENTER) - HALF_LENGTH
    a0 = 1.0 - (8.0 / 13.4) ** 4 - ((1.0 + 12.0 + 64.0 / (2.0 * math.sqrt(3.0))) / gap) ** 2
    assert a0 == pytest.approx(0.8186, abs=1e-4)
    assert x[0] == pytest.approx(4.0)  # 0.5 s at 8 m/s: one Euler step moves with the old speed
    assert x[1] == pytest.approx(4.0 + 0.5 * (8.0 + 0.5 * a0))
    np.testing.assert_allclose(x, _hand_rollout(8.0, 13.4, _free_road(-40.0), 0.0, HALF_LENGTH), atol=1e-9)
    speeds = np.diff(np.concatenate([[0.0], x])) / 0.5
    assert np.all(np.diff(speeds[:13]) > 0.0) and speeds.max() < 13.4  # towards lane 11's limit, 13.4 m/s
    assert speeds[-1] < speeds[-2]  # the path end (x = 99 m, a leader at 0 m/s) starts to hold it back


def test_target_speed_is_the_faster_of_limit_and_ego_and_is_kept_for_the_scenario() -> None:
    fast = _plan(speed=15.0)  # faster than the 13.4 m/s limit: the target becomes 15 m/s
    np.testing.assert_allclose(fast, _hand_rollout(15.0, 15.0, _free_road(-40.0), 0.0, HALF_LENGTH), atol=1e-9)
    planner = IDMPlanner(num_poses=16)
    planner.plan(fixture_observation(MAP, ego_state(-40.0, speed=8.0)))  # first step: target 13.4 m/s
    later = fixture_observation(MAP, ego_state(-36.0, speed=15.0))
    later = dataclasses.replace(later, ego_history=EgoStates(later.ego_history.states, np.array([100_000])))
    kept = planner.plan(later).poses[:, 0]
    np.testing.assert_allclose(kept, _hand_rollout(15.0, 13.4, _free_road(-36.0), 0.0, HALF_LENGTH), atol=1e-9)
    # an earlier time is a new scenario: the target is set again
    again = planner.plan(fixture_observation(MAP, ego_state(-40.0, speed=15.0))).poses[:, 0]
    np.testing.assert_allclose(again, fast, atol=1e-12)


def test_red_light_ahead_stops_before_the_connector_polygon() -> None:
    front = -30.0 + CENTER + HALF_LENGTH  # ego front bumper, 15.951 m before the polygon at x = -10
    x = _plan(-30.0, red=True)
    np.testing.assert_allclose(x, _hand_rollout(8.0, 13.4, lambda t: -10.0 - front - t, 0.0, 0.0), atol=1e-9)
    assert front + x[-1] < -10.0
    assert front + x[-1] == pytest.approx(-11.0, abs=0.06)  # one minimum gap before it
    green = _plan(-30.0)
    assert front + green[-1] > 10.0  # through the junction


def test_light_turning_red_while_on_the_connector_brakes_at_full_deceleration() -> None:
    # the ego (rear axle at x = -8, centre inside connector 111) starts on the connector: limit 10 m/s; the
    # red polygon touches its footprint, a leader at 0 m: s = s0, the IDM asks for far more than b = 3 m/s^2
    x = _plan(-8.0, red=True)
    np.testing.assert_allclose(x, [4.0, 7.25, 9.75, 11.5, 12.5, 12.75] + [12.75] * 10, atol=1e-9)
    np.testing.assert_allclose(_plan(-8.0), _hand_rollout(8.0, 10.0, _free_road(-8.0), 0.0, HALF_LENGTH))


def test_follows_a_slower_lead_vehicle() -> None:
    # lead centre x = -5 (rear bumper -7.25) at 2 m/s; the occupancy map keeps it where it was observed
    front = -40.0 + CENTER + HALF_LENGTH
    x = _plan(boxes=_vehicle(-5.0, speed=2.0))
    np.testing.assert_allclose(x, _hand_rollout(8.0, 13.4, lambda t: -7.25 - front - t, 2.0, 0.0), atol=1e-9)
    assert front + x[-1] < -7.25


def test_lead_in_the_next_lane_is_ignored_unless_it_meets_the_expanded_path() -> None:
    free = _plan()
    np.testing.assert_allclose(_plan(boxes=_vehicle(-30.0, y=-6.0)), free, atol=1e-12)  # y in [-7, -5]
    # y in [-5.05, -3.05]: 0.0985 m into the expanded path (y >= -2 - 1.1485)
    front = -40.0 + CENTER + HALF_LENGTH
    x = _plan(boxes=_vehicle(-20.0, y=-4.05))
    np.testing.assert_allclose(x, _hand_rollout(8.0, 13.4, lambda t: -22.25 - front - t, 0.0, 0.0), atol=1e-9)
    # y in [-5.2, -3.2]: 0.05 m short of it
    np.testing.assert_allclose(_plan(boxes=_vehicle(-20.0, y=-4.2)), free, atol=1e-12)


def test_objects_beyond_the_occupancy_radius_are_ignored() -> None:
    center = -40.0 + CENTER
    np.testing.assert_allclose(_plan(boxes=_vehicle(center + 40.5)), _plan(), atol=1e-12)
    near = _plan(boxes=_vehicle(center + 39.5))
    gap = 39.5 - 2.25 - HALF_LENGTH
    np.testing.assert_allclose(near, _hand_rollout(8.0, 13.4, lambda t: gap - t, 0.0, 0.0), atol=1e-9)


def test_static_objects_lead_at_zero_speed_and_the_nearest_object_leads() -> None:
    boxes = np.concatenate([_vehicle(10.0), _vehicle(-5.0, speed=5.0)])  # the cone at -5 carries a bogus speed
    obs = fixture_observation(MAP, ego_state(), boxes)
    types = np.array([TrackedObjectType.VEHICLE, TrackedObjectType.TRAFFIC_CONE])
    agents = obs.agents
    obs = dataclasses.replace(obs, agents=Agents(agents.boxes, types, agents.track_ids, agents.valid))
    x = IDMPlanner(num_poses=16).plan(obs).poses[:, 0]
    front = -40.0 + CENTER + HALF_LENGTH
    np.testing.assert_allclose(x, _hand_rollout(8.0, 13.4, lambda t: -7.25 - front - t, 0.0, 0.0), atol=1e-9)


def test_trajectory_starts_at_the_projection_onto_the_path() -> None:
    state = ego_state(-40.0, y=-2.4, speed=8.0)
    trajectory = IDMPlanner().plan(fixture_observation(MAP, state))
    assert isinstance(trajectory, IDMTrajectory)
    np.testing.assert_allclose(trajectory.start_pose, [-40.0, -2.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(trajectory.poses[:, 1], 0.4, atol=1e-9)  # on the centre line, 0.4 m left
    times, poses = plan_to_global(trajectory, state)
    np.testing.assert_allclose(times[:2], [0.0, 0.5])
    np.testing.assert_allclose(poses[0], [-40.0, -2.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(trajectory.poses[:, 0], _plan()[:8], atol=1e-9)


def test_route_breadth_first_search_and_path() -> None:
    def plan_of(route: tuple[str, ...], x: float) -> list[str]:
        center = np.array([x + CENTER, -2.0])
        footprint = box(center[0] - HALF_LENGTH, -2.0 - HALF_WIDTH, center[0] + HALF_LENGTH, -2.0 + HALF_WIDTH)
        return route_plan(MAP, route, center, footprint)

    assert plan_of(("1", "101", "2", "103", "4"), -40.0) == ["11", "111", "21", "121", "41"]
    assert plan_of(("1", "101", "2", "103", "4"), -8.0) == ["111", "21", "121", "41"]  # starts in the 2nd block
    assert plan_of(("1", "102", "3"), -40.0) == ["11", "113", "31"]  # the left turn
    assert plan_of(("1", "101", "3"), -40.0) == ["11", "111"]  # 3 is unreachable: the longest route found
    path = build_path(MAP, ["11", "111", "21", "121", "41"])
    assert path.end_progress == pytest.approx(PATH_END_X + 60.0)
    np.testing.assert_allclose(path.poses_at(np.array([0.0, 200.0])), [[-60.0, -2.0, 0.0], [99.0, -2.0, 0.0]])
    turn = build_path(MAP, ["11", "113", "31"])
    assert turn.poses_at(turn.end_progress)[2] == pytest.approx(np.pi / 2.0)


def test_needs_a_map_and_a_route() -> None:
    obs = fixture_observation(MAP, ego_state())
    with pytest.raises(PlannerInputError, match="map"):
        IDMPlanner().plan(Observation(obs.ego_history, obs.agents, obs.traffic_lights, obs.route_roadblock_ids, "x"))
    with pytest.raises(PlannerInputError, match="route"):
        IDMPlanner().plan(dataclasses.replace(obs, route_roadblock_ids=()))
    with pytest.raises(ValueError, match="num_poses"):
        IDMPlanner(num_poses=17)


def test_bench_config_builds_the_planner_with_nuplans_defaults() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[2] / "configs" / "bench" / "planner" / "idm.yaml")
    assert cfg.pop("name") == "idm"
    planner = instantiate(cfg)
    assert isinstance(planner, IDMPlanner) and planner.num_poses == 8
    assert planner.config == NuPlanIDMConfig()  # nuPlan's idm_planner.yaml
    assert planner.config.horizon_s == 8.0


class _PlainQuery(IDMPlanner):
    """The leader query written as nuPlan writes it: every object tested against the buffered path and footprint."""

    def leader(self, path: IDMPath, progress: float, center: np.ndarray, obstacles: Any) -> Leader:
        footprint = box(-HALF_LENGTH, -HALF_WIDTH, HALF_LENGTH, HALF_WIDTH)
        footprint = affinity.translate(affinity.rotate(footprint, center[2], use_radians=True), center[0], center[1])
        ahead = path.trimmed(progress, progress + self._target_speed * 8.0)
        expanded = unary_union([LineString(ahead).buffer(HALF_WIDTH, cap_style="square"), footprint])
        best: Leader | None = None
        for k, polygon in enumerate(obstacles.polygons):
            if polygon.intersects(expanded) and (best is None or footprint.distance(polygon) < best.distance):
                speed = 0.0 if obstacles.red[k] else obstacles.speed[k] * math.cos(obstacles.heading[k] - center[2])
                best = Leader(footprint.distance(polygon), speed)
        return best or Leader(path.end_progress - progress, 0.0, HALF_LENGTH)


@pytest.mark.parametrize("seed", range(4))
def test_leader_query_matches_the_plain_buffer_query_on_a_turn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # boxes scattered around the left turn (connector 113, a quarter circle of radius 12 about (-10, 10))
    angle = rng.uniform(-np.pi / 2.0, 0.0, 12)
    radius = 12.0 + rng.uniform(-3.5, 3.5, 12)
    boxes = np.zeros((12, 7))
    boxes[:, 0], boxes[:, 1] = -10.0 + radius * np.cos(angle), 10.0 + radius * np.sin(angle)
    boxes[:, 2], boxes[:, 3] = rng.uniform(-np.pi, np.pi, 12), rng.uniform(0.0, 3.0, 12)
    boxes[:, 5], boxes[:, 6] = rng.uniform(0.5, 4.5, 12), rng.uniform(0.5, 2.0, 12)
    obs = dataclasses.replace(
        fixture_observation(MAP, ego_state(-30.0), boxes, red=True), route_roadblock_ids=("1", "102", "3")
    )
    got = IDMPlanner(num_poses=16).plan(obs).poses
    want = _PlainQuery(num_poses=16).plan(obs).poses
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_meets_expanded_path_agrees_with_the_buffer_near_its_edges() -> None:
    # small boxes around a bent path, many in the band where the distance test alone cannot decide (round joins,
    # square caps): the query must agree with shapely's square-capped buffer box by box
    from planners.nuplan_idm import _Obstacles

    rng = np.random.default_rng(0)
    line = LineString([(0.0, 0.0), (6.0, 0.0), (9.0, 4.0), (9.5, 9.0)])
    n = 3000
    centers = np.stack([rng.uniform(-3.0, 13.0, n), rng.uniform(-3.0, 12.0, n)], -1)
    boxes = np.zeros((n, 7))
    boxes[:, :2], boxes[:, 2] = centers, rng.uniform(-np.pi, np.pi, n)
    boxes[:, 5], boxes[:, 6] = 0.2, 0.1
    polygons = shapely.polygons(agent_box_corners(boxes))
    obstacles = _Obstacles(polygons, shapely.bounds(polygons), np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool))
    far_away = box(100.0, 100.0, 101.0, 101.0)  # a footprint that meets nothing
    expanded = line.buffer(HALF_WIDTH, cap_style="square")
    want = shapely.intersects(expanded, polygons)
    band = (shapely.distance(line, polygons) > HALF_WIDTH * 0.99) & (
        shapely.distance(line, polygons) < 1.42 * HALF_WIDTH
    )
    assert want[band].any() and not want[band].all()
    got = np.zeros(n, dtype=bool)
    for k in range(n):  # one candidate at a time: the query answers for the nearest of those it finds meeting
        got[k] = obstacles.leader(np.array([k]), far_away, 0.0, line, HALF_WIDTH) is not None
    np.testing.assert_array_equal(got, want)


def _queue_search(edges: dict[str, Any], start: str, candidates: set[str], target: str, target_depth: int) -> Any:
    """nuPlan's BreadthFirstSearch.search as written there: one queue entry per way of reaching an edge."""
    queue: deque[str | None] = deque([start, None])
    parent: dict[tuple[str, int], str | None] = {(start, 1): None}
    end, end_depth, depth, found = start, 1, 1, False
    while queue:
        edge_id = queue.popleft()
        if depth > target_depth:
            break
        if edge_id is None:
            depth += 1
            queue.append(None)
            if queue[0] is None:
                break
            continue
        if edges[edge_id].roadblock_id == target and depth == target_depth:
            end, end_depth, found = edge_id, depth, True
            break
        for nxt in edges[edge_id].outgoing_ids:
            if nxt in candidates:
                queue.append(nxt)
                parent[(nxt, depth + 1)] = edge_id
                end, end_depth = nxt, depth + 1
    route = [end]
    while parent[(route[-1], end_depth)] is not None:
        route.append(str(parent[(route[-1], end_depth)]))
        end_depth -= 1
    return route[::-1], found


@pytest.mark.parametrize("seed", range(30))
def test_breadth_first_route_matches_the_queue_search(seed: int) -> None:
    # random lane graphs: 6 roadblocks of 3 lanes, each lane linked to a random subset of the next block's lanes
    # (merges and splits), some lanes outside the route
    rng = np.random.default_rng(seed)
    edges: dict[str, Any] = {}
    for block in range(6):
        for lane in range(3):
            nxt = [f"{block + 1}{k}" for k in range(3) if block < 5 and rng.random() < 0.6]
            edges[f"{block}{lane}"] = SimpleNamespace(roadblock_id=str(block), outgoing_ids=tuple(rng.permutation(nxt)))
    candidates = {e for e in edges if rng.random() < 0.85} | {"00"}
    fake_map = SimpleNamespace(lane_edge=lambda i: edges[i])
    for target, depth in ((5, 6), (3, 4), (5, 5), (4, 6)):
        want = _queue_search(edges, "00", candidates, str(target), depth)
        assert breadth_first_route(fake_map, "00", candidates, str(target), depth) == want  # type: ignore[arg-type]
