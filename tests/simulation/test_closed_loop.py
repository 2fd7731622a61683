"""Closed-loop simulation: history buffer, determinism, failing planners, expert replay, reactive agents."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import shapely

from rewards.nuplan_metrics import score_simulation
from simulation.closed_loop import ClosedLoopConfig, ClosedLoopSimulator, SimState
from simulation.geometry import agent_box_corners, boxes_overlap, ego_box_corners, global_to_local
from simulation.maps.layers import SemanticMapLayer
from simulation.protocols import Observation
from simulation.types import (
    AgentIndex,
    Agents,
    EgoStates,
    Scenario,
    StateIndex,
    TrackedObjectType,
    TrafficLights,
    TrafficLightStatus,
    Trajectory,
)

T_FRAMES = 151
HISTORY = 20


def _obj(oid, polygon, baseline, speed, rb, incoming=(), outgoing=()):
    return SimpleNamespace(
        id=oid,
        polygon=polygon,
        baseline=np.asarray(baseline, dtype=float),
        roadblock_id=rb,
        speed_limit_mps=speed,
        incoming_ids=tuple(incoming),
        outgoing_ids=tuple(outgoing),
        has_traffic_light=True,
    )


class RoadMap:
    """Eastbound road: lane L1 (x -100..200, y -4..0) -> connector C1 (x 200..210) -> lane L3 (x 210..400)."""

    def __init__(self) -> None:
        self.lanes = {
            "L1": _obj("L1", shapely.box(-100, -4, 200, 0), [[-100, -2], [200, -2]], 15.0, "R1", outgoing=["C1"]),
            "L3": _obj("L3", shapely.box(210, -4, 400, 0), [[210, -2], [400, -2]], 15.0, "R3", incoming=["C1"]),
        }
        self.lane_connectors = {
            "C1": _obj("C1", shapely.box(200, -4, 210, 0), [[200, -2], [210, -2]], None, "RC1", ["L1"], ["L3"])
        }
        self.roadblocks = {k: SimpleNamespace(id=k, polygon=o.polygon) for k, o in (("R1", self.lanes["L1"]),)}
        self.roadblocks["R3"] = SimpleNamespace(id="R3", polygon=self.lanes["L3"].polygon)
        self.roadblock_connectors = {"RC1": SimpleNamespace(id="RC1", polygon=self.lane_connectors["C1"].polygon)}

    def proximal_ids(self, point, radius, layers):
        area = shapely.Point(point).buffer(radius)
        out = {}
        for layer, table in (
            (SemanticMapLayer.LANE, self.lanes),
            (SemanticMapLayer.LANE_CONNECTOR, self.lane_connectors),
        ):
            out[layer] = [k for k, o in table.items() if o.polygon.intersects(area)]
        return {layer: out.get(layer, []) for layer in layers}

    def polygons(self, layer):
        return {}

    def drivable_area(self, center, radius):
        return shapely.box(-100, -4, 400, 0)


def _track(x0, speed, y=-2.0, length=4.5, width=2.0):
    t = np.arange(-HISTORY, T_FRAMES) * 0.1
    box = np.zeros((len(t), 7))
    box[:, AgentIndex.X] = x0 + speed * t
    box[:, AgentIndex.Y] = y
    box[:, AgentIndex.VX] = speed
    box[:, AgentIndex.LENGTH] = length
    box[:, AgentIndex.WIDTH] = width
    return box


def make_scenario(lead_speed: float = 8.0, follower: bool = False) -> Scenario:
    """Expert at 8 m/s from x = 0 along y = -2; a lead vehicle 30 m ahead; a pedestrian on the kerb."""
    t = np.arange(-HISTORY, T_FRAMES) * 0.1
    ego = np.zeros((len(t), 11))
    ego[:, StateIndex.X] = 8.0 * t
    ego[:, StateIndex.Y] = -2.0
    ego[:, StateIndex.VX] = 8.0
    tracks = [_track(30.0, lead_speed), _track(10.0, 0.0, y=3.0, length=0.5, width=0.5)]
    types = [TrackedObjectType.VEHICLE, TrackedObjectType.PEDESTRIAN]
    if follower:
        tracks.append(_track(-40.0, 8.0))
        types.append(TrackedObjectType.VEHICLE)
    boxes = np.stack(tracks, 1)
    ts = (np.arange(-HISTORY, T_FRAMES) * 100_000).astype(np.int64) + 1_000_000_000
    valid = np.ones(boxes.shape[:2], dtype=bool)
    n = boxes.shape[1]
    ids = np.array([f"{i:016x}" for i in range(n)])
    sl = slice(HISTORY, None)
    return Scenario(
        log_name="log",
        token="0123456789abcdef",
        map_name="road",
        frame_tokens=np.array([f"{i:016x}" for i in range(T_FRAMES)]),
        timestamps_us=ts[sl],
        ego=EgoStates(ego[sl], ts[sl]),
        agents=Agents(boxes[sl], np.asarray(types, dtype=np.int64), ids, valid[sl]),
        traffic_lights=TrafficLights(np.array(["C1"]), np.full((T_FRAMES, 1), TrafficLightStatus.GREEN, np.int8)),
        route_roadblock_ids=("R1", "RC1", "R3"),
        current_index=0,
        history_ego=EgoStates(ego[:HISTORY], ts[:HISTORY]),
        history_agents=Agents(boxes[:HISTORY], np.asarray(types, dtype=np.int64), ids, valid[:HISTORY]),
    )


class ConstantVelocity:
    name = "constant_velocity"

    def __init__(self, speed: float | None = None) -> None:
        self.speed = speed
        self.calls = 0

    def plan(self, observation: Observation) -> Trajectory:
        self.calls += 1
        v = observation.current_state[StateIndex.VX] if self.speed is None else self.speed
        t = np.arange(1, 9) * 0.5
        return Trajectory(np.stack([v * t, np.zeros(8), np.zeros(8)], -1))


class ExpertReplay:
    name = "log_replay"

    def plan(self, observation: Observation) -> Trajectory:
        log, i = observation.log, observation.log_index
        idx = np.arange(i + 1, min(i + 41, log.num_frames))  # up to 4 s of the log's future, at 0.1 s
        return Trajectory(global_to_local(log.ego.states[idx, :3], observation.current_state[None, :3]), 0.1)


class Flaky(ConstantVelocity):
    name = "flaky"

    def plan(self, observation: Observation) -> Trajectory:
        call = self.calls + 1
        if call in (3, 4, 50):
            self.calls = call
            raise RuntimeError("boom")
        if call == 60:
            self.calls = call
            return Trajectory(np.full((8, 3), np.nan))
        return super().plan(observation)


def test_reset_prefills_the_history_buffer():
    sim = ClosedLoopSimulator(ClosedLoopConfig(controller="perfect"))
    state = sim.reset(make_scenario())
    obs = sim.observe(state)
    assert sim.config.buffer_size == 22
    assert len(obs.ego_history) == 21  # 20 logged history samples + the current one
    np.testing.assert_allclose(obs.current_state, make_scenario().ego.states[0])
    assert obs.agents.boxes.shape == (21, 2, 7) and obs.log_index == 0
    later = sim.step(sim.step(state, ConstantVelocity().plan(obs)), None)
    assert len(sim.observe(later).ego_history) == 22 and later.frame == 2


def test_non_reactive_agents_replay_the_log_and_run_length():
    sc = make_scenario()
    history = ClosedLoopSimulator(controller="perfect").run(sc, ConstantVelocity())
    assert history.num_samples == T_FRAMES - 1
    np.testing.assert_allclose(history.agent_boxes, sc.agents.boxes[:-1])
    np.testing.assert_array_equal(history.timestamps_us, sc.timestamps_us[:-1])


@pytest.mark.parametrize("reactive", [False, True])
def test_runs_are_deterministic(reactive):
    sim = ClosedLoopSimulator(reactive=reactive, controller="perfect")
    a = sim.run(make_scenario(follower=True), ConstantVelocity(), map_api=RoadMap())
    b = sim.run(make_scenario(follower=True), ConstantVelocity(), map_api=RoadMap())
    np.testing.assert_array_equal(a.ego_states, b.ego_states)
    np.testing.assert_array_equal(a.agent_boxes[a.agent_valid], b.agent_boxes[b.agent_valid])


def test_failing_planner_is_recorded_and_the_run_goes_on():
    planner = Flaky()
    history = ClosedLoopSimulator(controller="perfect").run(make_scenario(), planner)
    errors = [i for i, e in enumerate(history.planner_errors) if e is not None]
    assert errors == [2, 3, 49, 59]
    assert history.planner_errors[2] == "RuntimeError: boom"
    assert "NaN" in str(history.planner_errors[59]) or "nan" in str(history.planner_errors[59]).lower()
    assert np.isfinite(history.ego_states).all() and history.num_samples == T_FRAMES - 1
    # the ego kept following the last valid plan: constant speed 8 m/s throughout
    np.testing.assert_allclose(np.diff(history.ego_states[:, 0]), 0.8, atol=1e-6)


def test_replanning_interval():
    planner = ConstantVelocity()
    ClosedLoopSimulator(controller="perfect", replan_interval=5).run(make_scenario(), planner)
    assert planner.calls == 30  # iterations 0, 5, ..., 145


@pytest.mark.parametrize(("controller", "tol"), [("perfect", 1e-6), ("two_stage", 1e-6), ("log_playback", 0.0)])
def test_expert_replay_reproduces_the_log(controller, tol):
    sc = make_scenario()
    history = ClosedLoopSimulator(controller=controller).run(sc, ExpertReplay())
    err = np.linalg.norm(history.ego_states[:, :2] - sc.ego.states[:-1, :2], axis=-1)
    assert err.max() <= tol + 1e-9


def test_reactive_follower_stops_behind_a_stopping_ego():
    sc = make_scenario(follower=True)
    sim = ClosedLoopSimulator(reactive=True, controller="perfect")
    stop = ConstantVelocity(speed=0.0)  # plan: stay where you are
    reactive = sim.run(sc, stop, map_api=RoadMap())
    ego_corners = ego_box_corners(reactive.ego_states[:, :3])
    follower = reactive.agent_boxes[:, 2]
    assert not boxes_overlap(ego_corners, agent_box_corners(follower)).any()
    assert np.hypot(follower[-1, AgentIndex.VX], follower[-1, AgentIndex.VY]) < 0.1
    replayed = ClosedLoopSimulator(controller="perfect").run(sc, stop)
    assert boxes_overlap(ego_corners, agent_box_corners(replayed.agent_boxes[:, 2])).any()  # log replay rams it


def test_cls_nr_scores_for_simple_planners():
    sc, road = make_scenario(), RoadMap()
    expert = ClosedLoopSimulator(controller="perfect").run(sc, ExpertReplay())
    m = score_simulation(sc, expert, road)
    # as in nuPlan, the history holds the 150 planner steps, not the final state: progress 119.2 / 120 m
    assert m["ego_progress_along_expert_route"] == pytest.approx(149 / 150)
    assert m["score"] == pytest.approx((5 * 149 / 150 + 11) / 16)
    stopped = score_simulation(sc, ClosedLoopSimulator(controller="perfect").run(sc, ConstantVelocity(speed=0.0)), road)
    assert stopped["ego_is_making_progress"] == 0.0 and stopped["score"] == 0.0


def test_state_is_immutable_between_steps():
    sim = ClosedLoopSimulator(controller="perfect")
    s0 = sim.reset(make_scenario())
    s1 = sim.step(s0, ConstantVelocity().plan(sim.observe(s0)))
    assert isinstance(s1, SimState) and s0.iteration == 0 and len(s0.ego_states) == HISTORY + 1
    assert len(s1.ego_states) == HISTORY + 2


def test_config_defaults_follow_nuplan():
    cfg = ClosedLoopSimulator(reactive=True).config
    assert cfg.controller == "two_stage" and cfg.dt == 0.1 and cfg.replan_interval == 1 and cfg.reactive
    with pytest.raises(ValueError, match="replan_interval"):
        ClosedLoopSimulator(replan_interval=0)
    with pytest.raises(ValueError, match="needs the map"):
        ClosedLoopSimulator(reactive=True).reset(make_scenario())


def test_open_loop_score_of_expert_replay_is_perfect():
    from rewards.nuplan_open_loop import open_loop_score_history

    sc = make_scenario()
    history = ClosedLoopSimulator(controller="log_playback").run(sc, ExpertReplay())
    assert history.plan_times_us[10][0] == sc.timestamps_us[10]
    assert history.plan_times_us[10][-1] == sc.timestamps_us[10] + 4_000_000
    ols = open_loop_score_history(history, sc.ego.states, sc.timestamps_us)
    assert ols["score"] == pytest.approx(1.0)
    lazy = open_loop_score_history(
        ClosedLoopSimulator(controller="log_playback").run(sc, ConstantVelocity(0.0)), sc.ego.states, sc.timestamps_us
    )
    # a plan standing still is 8 m/s x t behind the expert: ADE over 0.1 .. 3 s is 8 * 1.55 = 12.4 m -> score 0
    assert lazy["planner_expert_average_l2_error_within_bound"] == 0.0 and lazy["planner_miss_rate_within_bound"] == 0.0


def test_two_stage_controller_tracks_a_curved_expert():
    # 6 m/s on a 40 m radius with the matching steering angle: the LQR + bicycle drifts slowly (the plan
    # starts at the current pose, as nuPlan's planners' do, so the tracker sees no lateral error at now)
    t = np.arange(T_FRAMES) * 0.1
    radius, v = 40.0, 6.0
    ego = np.zeros((T_FRAMES, 11))
    ego[:, StateIndex.X] = radius * np.sin(v * t / radius)
    ego[:, StateIndex.Y] = -2.0 + radius * (1 - np.cos(v * t / radius))
    ego[:, StateIndex.HEADING] = v * t / radius
    ego[:, StateIndex.VX] = v
    ego[:, StateIndex.YAW_RATE] = v / radius
    ego[:, StateIndex.STEERING_ANGLE] = np.arctan(3.089 / radius)
    sc = dataclasses.replace(make_scenario(), ego=EgoStates(ego, make_scenario().timestamps_us), history_ego=None)
    history = ClosedLoopSimulator().run(sc, ExpertReplay())
    err = np.linalg.norm(history.ego_states[:, :2] - ego[:-1, :2], axis=-1)
    assert err[:50].max() < 0.3 and err.max() < 1.0
    assert np.abs(history.ego_states[:-10, StateIndex.VX] - v).max() < 0.05  # the last plans are short


@dataclasses.dataclass(frozen=True)
class AnchoredTrajectory(Trajectory):
    start_pose: np.ndarray | None = None


class AnchoredExpertReplay(ExpertReplay):
    """The expert's future starting at the logged pose now (nuPlan's log-future planner), not at the ego."""

    def plan(self, observation: Observation) -> Trajectory:
        plan = super().plan(observation)
        start = observation.log.ego.states[observation.log_index, :3]
        return AnchoredTrajectory(plan.poses, plan.interval_s, start_pose=start)


def test_plan_starting_at_the_logged_pose_pulls_the_ego_back_to_the_log():
    """Same curve as above, started 0.5 m off to the outside: a plan that starts at the ego keeps the offset
    (and drifts further), one that starts at the logged pose lets the LQR see the lateral error and reduce it."""
    t = np.arange(T_FRAMES) * 0.1
    radius, v = 40.0, 6.0
    ego = np.zeros((T_FRAMES, 11))
    ego[:, StateIndex.X] = radius * np.sin(v * t / radius)
    ego[:, StateIndex.Y] = -2.0 + radius * (1 - np.cos(v * t / radius))
    ego[:, StateIndex.HEADING] = v * t / radius
    ego[:, StateIndex.VX] = v
    ego[:, StateIndex.STEERING_ANGLE] = np.arctan(3.089 / radius)
    sc = dataclasses.replace(make_scenario(), ego=EgoStates(ego, make_scenario().timestamps_us), history_ego=None)
    start = ego[0].copy()
    start[StateIndex.Y] -= 0.5
    errors = {}
    for name, planner in (("ego", ExpertReplay()), ("log", AnchoredExpertReplay())):
        sim = ClosedLoopSimulator()
        state = sim.reset(sc)
        state = dataclasses.replace(state, ego_states=np.concatenate([state.ego_states[:-1], start[None]]))
        while not state.done:
            state = sim.step(state, planner.plan(sim.observe(state)))
        driven = sim.history(state).ego_states
        errors[name] = np.linalg.norm(driven[:, :2] - ego[:-1, :2], axis=-1)
    assert errors["ego"][0] == errors["log"][0] == pytest.approx(0.5)
    assert errors["ego"][100:].min() > 1.0  # the offset stays and the drift adds to it
    assert errors["log"][40:].max() < 0.3  # pulled back within 4 s
