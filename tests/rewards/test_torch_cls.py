"""nuPlan's closed-loop metrics in torch against the numpy truth: hand-built cases and vector closed-loop runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bev_warp.env import BEVWarpEnv, EnvConfig, summary
from bev_warp.policies import VectorPolicy
from bev_warp.testing import fixture_map_api, fixture_scenario
from planners.rule_based import ConstantVelocityPlanner, IDMPlanner, LogReplayPlanner
from rewards.nuplan_map_context import build_lane_graph_context
from rewards.nuplan_metrics import ClosedLoopRollout, compute_closed_loop_metrics, score_simulation
from rewards.torch.cls_metrics import ClsRollout, cls_metrics
from rewards.torch.cls_world import world_from_maps
from simulation.closed_loop import ClosedLoopSimulator
from simulation.maps.testing import FIXTURE_ORIGIN
from simulation.types import PACIFICA, AgentIndex, StateIndex, TrackedObjectType

OX, OY = FIXTURE_ORIGIN
A, S = AgentIndex, StateIndex
METRICS = (
    "no_ego_at_fault_collisions",
    "drivable_area_compliance",
    "driving_direction_compliance",
    "ego_is_making_progress",
    "ego_progress_along_expert_route",
    "time_to_collision_within_bound",
    "speed_limit_compliance",
    "ego_is_comfortable",
    "score",
)


def _drive(x0: float, y: float, speed: float, frames: int = 41, heading: float = 0.0) -> np.ndarray:
    """``(T, 11)`` states at constant ``speed`` from local ``(x0, y)`` along ``heading``, 10 Hz."""
    t = np.arange(frames) * 0.1
    out = np.zeros((frames, 11))
    out[:, S.X] = OX + x0 + speed * t * np.cos(heading)
    out[:, S.Y] = OY + y + speed * t * np.sin(heading)
    out[:, S.HEADING] = heading
    out[:, S.VX] = speed
    return out


def _vehicle(x0: float, y: float, speed: float, frames: int = 41) -> np.ndarray:
    """``(T, 1, 7)`` one eastbound vehicle box (4.5 x 2 m)."""
    box = np.zeros((frames, 1, 7))
    box[:, 0, A.X] = OX + x0 + speed * np.arange(frames) * 0.1
    box[:, 0, A.Y] = OY + y
    box[:, 0, A.VX] = speed
    box[:, 0, A.LENGTH], box[:, 0, A.WIDTH] = 4.5, 2.0
    return box


def _both(ego: np.ndarray, boxes: np.ndarray | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """(numpy, torch) CLS metrics of the ego history ``(T, 11)`` against an eastbound expert in lane 11."""
    frames = len(ego)
    expert = _drive(-50.0, -2.0, 8.0, frames)
    boxes = _vehicle(0.0, 30.0, 0.0, frames) if boxes is None else boxes  # default: a car far off the road
    types = np.full(boxes.shape[1], int(TrackedObjectType.VEHICLE))
    ts = 1_000_000_000 + np.arange(frames, dtype=np.int64) * 100_000
    valid = np.ones(boxes.shape[:2], dtype=bool)
    map_api = fixture_map_api()
    ctx = build_lane_graph_context(map_api, np.concatenate([ego[:, :2], expert[:, :2]]))
    truth = compute_closed_loop_metrics(ClosedLoopRollout(ego, ts, boxes, types, valid, expert), ctx)
    rollout = ClsRollout(
        ego=torch.tensor(ego)[None],
        timestamps_us=torch.tensor(ts)[None],
        boxes=torch.tensor(boxes)[None],
        valid=torch.tensor(valid)[None],
        types=torch.tensor(types)[None],
        length=torch.tensor([frames]),
    )
    got = cls_metrics(world_from_maps([expert], [map_api]), rollout)
    return truth, {k: float(v[0]) for k, v in got.items()}


def _assert_equal(truth: dict[str, float], got: dict[str, float]) -> None:
    for k in METRICS:
        assert got[k] == pytest.approx(truth[k], abs=1e-9), k


def test_driving_into_a_parked_car_is_at_fault() -> None:
    truth, got = _both(_drive(-50.0, -2.0, 8.0), _vehicle(-30.0, -2.0, 0.0))
    _assert_equal(truth, got)
    assert got["no_ego_at_fault_collisions"] == 0.0 and got["score"] == 0.0


def test_being_rear_ended_is_not_at_fault() -> None:
    """A car at 10 m/s from 12 m behind runs into the ego at 5 m/s: ACTIVE_REAR, not the ego's fault."""
    truth, got = _both(_drive(-50.0, -2.0, 5.0), _vehicle(-50.0 - 12.0, -2.0, 10.0))
    _assert_equal(truth, got)
    assert got["no_ego_at_fault_collisions"] == 1.0 and got["score"] > 0.5


@pytest.mark.parametrize(("beyond", "expected"), [(0.2, 1.0), (0.5, 0.0)])
def test_drivable_area_exit_within_and_beyond_the_tolerance(beyond: float, expected: float) -> None:
    """The left corners ``beyond`` metres north of roadblock 1's edge (y = 0; a walkway there), 0.3 m tolerance."""
    truth, got = _both(_drive(-50.0, beyond - PACIFICA.width / 2, 8.0, frames=21))
    _assert_equal(truth, got)
    assert got["drivable_area_compliance"] == expected


@pytest.mark.parametrize(("speed", "expected"), [(3.0, 0.5), (8.0, 0.0)])
def test_wrong_way_driving(speed: float, expected: float) -> None:
    """Westbound in the eastbound lane: 3 m / s backs 3 m per 1 s window (0.5), 8 m / s 8 m (0)."""
    truth, got = _both(_drive(-15.0, -2.0, speed, frames=31, heading=np.pi))
    _assert_equal(truth, got)
    assert got["driving_direction_compliance"] == expected


def test_cls_of_vector_closed_loop_histories_equals_numpy() -> None:
    """The vector loop's histories of three planners on fixture scenarios, scored with the world BEV-Warp builds."""
    map_api = fixture_map_api()
    scenes = [fixture_scenario(seed, 61) for seed in range(6)]
    world = BEVWarpEnv(EnvConfig(observation="none")).reset(scenes, map_api).episodes.world
    sim = ClosedLoopSimulator(replan_interval=5)
    scores = []
    for planner in (ConstantVelocityPlanner, IDMPlanner, LogReplayPlanner):
        histories = [sim.run(s, planner(), map_api) for s in scenes]
        truth = [score_simulation(s, h, map_api) for s, h in zip(scenes, histories, strict=True)]
        rollout = ClsRollout(
            ego=torch.tensor(np.stack([h.ego_states for h in histories])),
            timestamps_us=torch.tensor(np.stack([h.timestamps_us for h in histories])),
            boxes=torch.tensor(np.stack([h.agent_boxes for h in histories])),
            valid=torch.tensor(np.stack([h.agent_valid for h in histories])),
            types=torch.tensor(np.stack([h.agent_types for h in histories])),
            length=torch.tensor([len(h.ego_states) for h in histories]),
        )
        got = cls_metrics(world, rollout)
        for k in METRICS:
            np.testing.assert_allclose(got[k].numpy(), [t[k] for t in truth], atol=1e-9, err_msg=k)
        scores += [t["score"] for t in truth]
    assert min(scores) == 0.0 and max(scores) > 0.9  # collisions and clean runs both occur


def test_bev_warp_episodes_score_as_the_vector_loop() -> None:
    """The same planner in both loops, run to the log's end: BEV-Warp's episode metrics are the vector loop's."""
    map_api = fixture_map_api()
    scenes = [fixture_scenario(seed, 61) for seed in range(3)]
    env = BEVWarpEnv(EnvConfig(observation="none", terminate_on=()))
    sim = ClosedLoopSimulator(replan_interval=5)
    for planner in (ConstantVelocityPlanner, IDMPlanner):
        state = env.reset(scenes, map_api)
        policy = VectorPolicy(planner, scenes, map_api)
        while not bool(state.done.all()):
            state, *_ = env.step(state, *policy(state))
        got = summary(state)
        truth = [score_simulation(s, sim.run(s, planner(), map_api), map_api) for s in scenes]
        for k in METRICS:
            np.testing.assert_allclose(got[k].numpy(), [t[k] for t in truth], atol=1e-6, err_msg=f"{planner.name} {k}")
