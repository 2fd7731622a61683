"""BEV-Warp policies (vector planners per episode, learned planners batched), scenario history in the rasters,
and the deviation check past the ends of the expert path."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from scenes import eastbound, fixture_map  # noqa: E402

from bev_warp.env import BEVWarpEnv, DoneReason, EnvConfig, expert_trajectories  # noqa: E402
from bev_warp.episodes import planning_rasters  # noqa: E402
from bev_warp.policies import LearnedPolicy, VectorPolicy, observation  # noqa: E402
from planners.base import PlanOutput  # noqa: E402
from planners.rule_based import ConstantVelocityPlanner  # noqa: E402
from simulation.commands import window_command  # noqa: E402
from simulation.features import PLANNER_RASTER, PlannerInput, agent_tokens, window_features  # noqa: E402
from simulation.types import Agents, DrivingCommand, EgoStates, Scenario, StateIndex  # noqa: E402

NONE = EnvConfig(observation="none")


def _with_history(scene: Scenario, frames: int = 20) -> Scenario:
    """The 2 s before ``scene`` at its speed (same track, same lane)."""
    dt = 0.1
    ego = scene.ego.states[:1].repeat(frames, 0)
    back = (np.arange(frames)[::-1] + 1) * dt
    ego[:, StateIndex.X] -= back * ego[:, StateIndex.VX]
    ts = scene.timestamps_us[0] - np.round(back * 1e6).astype(np.int64)
    a = scene.agents
    agents = Agents(a.boxes[:1].repeat(frames, 0), a.types, a.track_ids, a.valid[:1].repeat(frames, 0))
    return dataclasses.replace(scene, history_ego=EgoStates(ego, ts), history_agents=agents)


def test_vector_observation_is_the_simulated_ego_with_the_logged_agents() -> None:
    scene = eastbound(obstacle_x=60.0)
    env = BEVWarpEnv(NONE)
    state = env.reset([scene], fixture_map())
    plan = expert_trajectories(state)
    plan[..., 1] += 1.0  # drift left: the simulated ego leaves the log
    for _ in range(3):
        state, *_ = env.step(state, plan)
    obs = observation(state, 0, scene, fixture_map())
    assert obs.log_index == 15 and obs.timestamp_us == scene.timestamps_us[15]
    np.testing.assert_array_equal(obs.current_state, state.ego[0].numpy())
    assert obs.current_state[StateIndex.Y] > scene.ego.states[15, StateIndex.Y] + 0.02
    np.testing.assert_array_equal(obs.agents.boxes[-1], scene.agents.boxes[15])
    assert obs.map_api is fixture_map() and obs.driving_command == DrivingCommand.STRAIGHT  # from its logged path


def test_vector_policy_drives_constant_velocity_and_flags_a_failing_planner() -> None:
    class Failing:
        def plan(self, observation):  # type: ignore[no-untyped-def]
            raise RuntimeError("no plan")

    makers = iter([ConstantVelocityPlanner, Failing])
    scenes = [eastbound(), eastbound(token="b")]
    env = BEVWarpEnv(NONE)
    state = env.reset(scenes, fixture_map())
    policy = VectorPolicy(lambda: next(makers)(), scenes, fixture_map())
    plans, failed, _ = policy(state)
    np.testing.assert_allclose(plans[0, :, 0].numpy(), 8.0 * 0.5 * np.arange(1, 9))  # 8 m/s, poses every 0.5 s
    assert failed.tolist() == [False, True] and float(plans[1].abs().sum()) == 0.0
    while not bool(state.done.all()):
        state, *_ = env.step(state, *policy(state))
    assert [int(r) for r in state.reason] == [DoneReason.END_OF_LOG, DoneReason.PLANNER_FAILED]
    assert float(state.totals["progress"][0]) == pytest.approx(48.0, abs=0.05)  # 6 s at 8 m/s, as the expert


class _Recorder(torch.nn.Module):
    """Plans 2 m per 0.5 s straight ahead (NaN for the second sample); keeps what it was given."""

    def initial_noise_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, 8, 2)

    def forward(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor) -> PlanOutput:
        self.seen = (inputs, noise)
        b = noise.shape[0]
        plan = torch.zeros(b, 8, 3)
        plan[:, :, 0] = 2.0 * torch.arange(1, 9)
        plan[1:2] = torch.nan
        return PlanOutput(plan)


def test_learned_policy_sees_the_logged_features_at_zero_deviation_and_shared_noise() -> None:
    scenes = [_with_history(eastbound(obstacle_x=30.0)), eastbound(token="b", obstacle_x=60.0)]
    env = BEVWarpEnv(EnvConfig(observation="raster"))
    state = env.reset(scenes, fixture_map())
    model = _Recorder()
    plans, failed = LearnedPolicy(model, env, scenes, seed=3)(state)
    feats, noise = model.seen
    s = scenes[0]
    ego = np.concatenate([s.history_ego.states, s.ego.states])
    ts = np.concatenate([s.history_ego.timestamps_us, s.timestamps_us])
    agents = Agents(
        np.concatenate([s.history_agents.boxes, s.agents.boxes]),
        s.agents.types,
        s.agents.track_ids,
        np.concatenate([s.history_agents.valid, s.agents.valid]),
    )
    lights = dataclasses.replace(s.traffic_lights, status=np.zeros((len(ts), 0), np.int8))
    command = window_command(s, s.ego.states[0, :3])
    assert command == DrivingCommand.STRAIGHT  # a scenario's command comes from its logged path (eastbound)
    want = window_features(fixture_map(), ego, ts, agents, lights, s.route_roadblock_ids, 20, command, PLANNER_RASTER)
    np.testing.assert_allclose(feats.bev[0].numpy(), want.bev, atol=1e-6)
    np.testing.assert_array_equal(feats.ego_status[0].numpy(), want.ego_status)
    tokens, mask = agent_tokens(s.agents.boxes[0], s.agents.types, s.ego.states[0, :3])
    np.testing.assert_allclose(feats.agents[0].numpy(), tokens, atol=1e-6)
    np.testing.assert_array_equal(feats.agents_mask[0].numpy(), mask)
    expected_noise = torch.randn((1, 3, 8, 2), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(noise, expected_noise.expand(2, -1, -1, -1))
    assert failed.tolist() == [False, True] and float(plans[0, -1, 0]) == 16.0


def test_planning_rasters_draw_a_scenarios_history() -> None:
    plain = eastbound(obstacle_x=-30.0)
    hist = planning_rasters(_with_history(plain), fixture_map(), np.array([0]), PLANNER_RASTER)
    none = planning_rasters(plain, fixture_map(), np.array([0]), PLANNER_RASTER)
    c = PLANNER_RASTER.channels.index("history")
    assert float(none[0, c].sum()) == 0.0  # frame 0 of a window without history: nothing to draw
    assert float(hist[0, c].sum()) > 50.0  # the ego's own past boxes, 4-12 m behind
    others = [i for i in range(len(PLANNER_RASTER.channels)) if i != c]
    np.testing.assert_array_equal(hist[0, others], none[0, others])


def test_deviation_is_lateral_past_the_end_of_a_stopped_experts_path() -> None:
    """A stopped expert: driving on along its lane is not a deviation, one lane to the side is."""
    env = BEVWarpEnv(NONE)
    stopped = [eastbound(speed=0.0, token="on"), eastbound(speed=0.0, token="side")]
    state = env.reset(stopped, fixture_map())
    plan = torch.zeros(2, 8, 3, dtype=torch.float64)
    plan[:, :, 0] = 1.5 * torch.arange(1, 9)  # 3 m/s
    plan[1, :, 1] = -4.0  # and over to the next lane (4 m to the right)
    while not bool(state.done.all()):
        state, *_ = env.step(state, plan)
    assert int(state.reason[0]) == DoneReason.END_OF_LOG and not bool(state.flags["deviation"][0])
    assert float(state.ego[0, StateIndex.X] - stopped[0].ego.states[0, StateIndex.X]) > 10.0
    assert int(state.reason[1]) == DoneReason.DEVIATION


class _OffsetStart:
    """Constant velocity whose reference starts 0.5 m to the left of the ego (a trajectory with ``start_pose``)."""

    name = "offset_start"

    def plan(self, observation):  # type: ignore[no-untyped-def]
        from planners.nuplan_idm import IDMTrajectory

        ego = observation.current_state
        start = ego[:3] + np.array([-0.5 * np.sin(ego[2]), 0.5 * np.cos(ego[2]), 0.0])
        poses = ConstantVelocityPlanner().plan(observation).poses
        return IDMTrajectory(np.asarray(poses), 0.5, start_pose=start)


def test_vector_policy_starts_the_reference_at_the_trajectorys_start_pose() -> None:
    """A plan's ``start_pose`` (IDM: the path projection; log replay: the logged pose) is where the vector closed
    loop starts the tracking reference; BEV-Warp follows it too, so both loops drive the same ego."""
    from simulation.closed_loop import ClosedLoopSimulator

    scene = eastbound(frames=31)
    env = BEVWarpEnv(EnvConfig(observation="none", terminate_on=()))
    state = env.reset([scene], fixture_map())
    policy = VectorPolicy(_OffsetStart, [scene], fixture_map())
    plans, failed, starts = policy(state)
    assert bool(torch.isfinite(starts).all()) and not bool(failed.any())
    while not bool(state.done.all()):
        state, *_ = env.step(state, *policy(state))
    history = ClosedLoopSimulator(replan_interval=5).run(scene, _OffsetStart(), fixture_map())
    n = len(history.ego_states)
    assert float(history.ego_states[-1, StateIndex.Y] - scene.ego.states[n - 1, StateIndex.Y]) > 0.2  # moved left
    np.testing.assert_allclose(state.history[0, :n, :3].numpy(), history.ego_states[:, :3], atol=1e-6)


def test_learned_policy_recomputes_a_scenarios_command_at_the_simulated_pose() -> None:
    plain = eastbound(obstacle_x=-30.0)
    ego = plain.ego.states.copy()
    x0, y0 = ego[0, StateIndex.X], ego[0, StateIndex.Y]
    ego[:, StateIndex.X] = np.minimum(ego[:, StateIndex.X], x0 + 10.0)  # 10 m east, then a left turn to the north
    ego[:, StateIndex.Y] = y0 + np.maximum(plain.ego.states[:, StateIndex.X] - x0 - 10.0, 0.0)
    turning = dataclasses.replace(plain, token="turn", ego=EgoStates(ego, plain.ego.timestamps_us))
    unrouted = dataclasses.replace(plain, token="none", route_roadblock_ids=())
    env = BEVWarpEnv(EnvConfig(observation="raster"))
    scenes = [plain, turning, unrouted]
    state = env.reset(scenes, fixture_map())
    policy = LearnedPolicy(_Recorder(), env, scenes)
    commands = policy.features(state).ego_status[:, 4:].argmax(-1).tolist()
    assert commands == [DrivingCommand.STRAIGHT, DrivingCommand.LEFT, DrivingCommand.UNKNOWN]
    # the simulated ego of the turning scenario is already on the northbound leg: straight on from there
    moved = state.ego.clone()
    moved[1, StateIndex.X], moved[1, StateIndex.Y], moved[1, StateIndex.HEADING] = x0 + 10.0, y0 + 15.0, np.pi / 2
    commands = policy.features(dataclasses.replace(state, ego=moved)).ego_status[:, 4:].argmax(-1).tolist()
    assert commands == [DrivingCommand.STRAIGHT, DrivingCommand.STRAIGHT, DrivingCommand.UNKNOWN]
    assert commands[:2] == [int(window_command(s, moved[i, :3].numpy())) for i, s in enumerate(scenes[:2])]
