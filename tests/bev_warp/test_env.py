"""BEV-Warp environment: expert replay, collision termination, deviation, bad input, determinism, batch of 64."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from scenes import eastbound, fixture_map  # noqa: E402

from bev_warp.env import BEVWarpEnv, DoneReason, EnvConfig, TrajectoryError, expert_trajectories  # noqa: E402
from bev_warp.episodes import EpisodeError  # noqa: E402
from simulation.render import RasterConfig  # noqa: E402

NONE = EnvConfig(observation="none")


def _run(env: BEVWarpEnv, state, planner):  # type: ignore[no-untyped-def]
    infos = []
    while not bool(state.done.all()):
        state, reward, done, info = env.step(state, planner(state))
        infos.append((reward, info))
    return state, infos


def test_expert_replay_tracks_the_log_without_penalty() -> None:
    env = BEVWarpEnv(NONE)
    state, infos = _run(env, env.reset([eastbound()], fixture_map()), expert_trajectories)
    assert state.step_index == 12 and int(state.reason[0]) == DoneReason.END_OF_LOG
    logged = state.episodes.ego[0, 60, :2]
    assert float(torch.linalg.norm(state.ego[0, :2] - logged)) < 1e-3
    for key in ("collision", "drivable_area", "ttc", "comfort", "deviation"):
        assert float(state.totals[key][0]) == 0.0, key
    assert float(state.totals["progress"][0]) == pytest.approx(48.0, abs=1e-3)  # 6 s at 8 m/s
    episode = infos[-1][1]["episode"]
    # nuPlan's history stops one frame before the log's end: 59 of the expert's 60 frames of progress
    assert float(episode["ego_progress_along_expert_route"][0]) == pytest.approx(59 / 60, abs=1e-6)
    assert float(episode["score"][0]) == pytest.approx((5 * 59 / 60 + 11) / 16, abs=1e-6)


def test_collision_terminates_at_the_right_step() -> None:
    """Parked car whose rear is at local x = -22.25; the ego front (rear axle + 4.049) reaches it after 3.0 s."""
    env = BEVWarpEnv(NONE)
    state = env.reset([eastbound(obstacle_x=-20.0), eastbound(token="free")], fixture_map())
    steps = 0
    while not bool(state.done[0]):
        state, reward, done, info = env.step(state, expert_trajectories(state))
        steps += 1
    assert steps == 6 and int(state.reason[0]) == DoneReason.COLLISION and int(state.frame[0]) == 30
    assert float(info["rewards"]["collision"][0]) == -1.0 and not bool(state.done[1])
    assert float(info["episode"]["score"][0]) == 0.0
    frozen = state.ego[0].clone()
    state, *_ = env.step(state, expert_trajectories(state))
    torch.testing.assert_close(state.ego[0], frozen)  # a finished episode stays put


def test_drifting_into_the_next_lane_terminates_on_deviation() -> None:
    env = BEVWarpEnv(NONE)
    state = env.reset([eastbound()], fixture_map())
    swerve = torch.tensor([[[4.0 * k, -1.5 * k, 0.0] for k in range(1, 9)]], dtype=torch.float64)
    state, _ = _run(env, state, lambda s: swerve)
    assert int(state.reason[0]) == DoneReason.DEVIATION  # the right lane is drivable: no off-road
    assert bool(state.flags["deviation"][0])


def test_bad_input_is_rejected_before_stepping() -> None:
    env = BEVWarpEnv(NONE)
    state = env.reset([eastbound(), eastbound(token="b")], fixture_map())
    plan = expert_trajectories(state)
    with pytest.raises(TrajectoryError, match="contain NaN"):
        env.step(state, torch.where(torch.tensor([True, False])[:, None, None], torch.nan, plan))
    with pytest.raises(TrajectoryError, match=r"\(2, P, 3\)"):
        env.step(state, plan[:1])
    with pytest.raises(TrajectoryError, match="numpy|torch tensor"):
        env.step(state, plan.numpy())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="encoder expects 3 raster channels"):
        BEVWarpEnv(EnvConfig(observation="features"), encoder=torch.nn.Conv2d(3, 4, 1))  # type: ignore[arg-type]
    with pytest.raises(EpisodeError, match="mix frame intervals"):
        env.reset([eastbound(), eastbound(frames=13, dt=0.5)], fixture_map())


def test_failed_planner_ends_only_its_episode() -> None:
    env = BEVWarpEnv(NONE)
    state = env.reset([eastbound(), eastbound(token="b")], fixture_map())
    plan = expert_trajectories(state)
    plan[0] = torch.nan
    state, _, done, info = env.step(state, plan, planner_failed=torch.tensor([True, False]))
    assert done.tolist() == [True, False]
    assert int(info["reason"][0]) == DoneReason.PLANNER_FAILED and int(state.frame[1]) == 5


def test_two_hz_scene_and_replanning_at_ten_hz() -> None:
    env2 = BEVWarpEnv(NONE)
    state, _ = _run(env2, env2.reset([eastbound(frames=13, dt=0.5)], fixture_map()), expert_trajectories)
    assert state.step_index == 12 and float(state.totals["progress"][0]) == pytest.approx(48.0, abs=1e-3)
    env10 = BEVWarpEnv(EnvConfig(observation="none", replan_interval_s=0.1))
    state, _ = _run(env10, env10.reset([eastbound(frames=21)], fixture_map()), expert_trajectories)
    assert state.step_index == 20 and float(state.totals["comfort"][0]) == 0.0


def test_observation_is_the_logged_raster_warped() -> None:
    raster = RasterConfig(height_px=64, width_px=64, resolution_m=0.5, behind_m=8.0)
    env = BEVWarpEnv(EnvConfig(raster=raster))
    state = env.reset([eastbound()], fixture_map())
    torch.testing.assert_close(env.observe(state), state.episodes.observations[:, 0])
    shifted = state.__class__(**{**state.__dict__, "ego": state.ego.clone()})
    shifted.ego[:, 0] += 1.0  # 2 px ahead: content moves down by 2 rows
    obs = env.observe(shifted)
    logged = state.episodes.observations[:, 0]
    ego = raster.channels.index("ego")
    others = [c for c in range(len(raster.channels)) if c != ego]
    torch.testing.assert_close(obs[:, others, 2:, :], logged[:, others, :-2, :], atol=1e-5, rtol=0)
    torch.testing.assert_close(obs[:, ego], logged[:, ego])  # the ego footprint stays where the ego is
    assert float(logged[:, ego].sum()) > 0


def test_determinism_and_batch_of_64() -> None:
    env = BEVWarpEnv(NONE)
    rng = np.random.default_rng(0)
    scenes = [eastbound(speed=float(rng.uniform(3, 10)), token=f"s{i}") for i in range(64)]
    noise = torch.tensor(rng.normal(0, 0.05, (64, 8, 3)) * [1.0, 1.0, 0.01])
    runs = []
    for _ in range(2):
        state, _ = _run(env, env.reset(scenes, fixture_map()), lambda s: expert_trajectories(s) + noise)
        runs.append(state)
    torch.testing.assert_close(runs[0].ego, runs[1].ego, rtol=0, atol=0)
    torch.testing.assert_close(runs[0].totals["progress"], runs[1].totals["progress"], rtol=0, atol=0)
    assert runs[0].done.all() and int(runs[0].step_index) == 12
    assert not torch.equal(runs[0].ego[0], runs[0].ego[1])


def test_gym_adapter() -> None:
    from bev_warp.gym import BEVWarpGym

    raster = RasterConfig(height_px=32, width_px=32, resolution_m=1.0, behind_m=8.0)
    gym = BEVWarpGym([eastbound(), eastbound(obstacle_x=-20.0, token="c")], fixture_map(), EnvConfig(raster=raster))
    obs, info = gym.reset(seed=0)
    assert obs.shape == (2, len(raster.channels), 32, 32) and info["tokens"] == ("s0", "c")
    assert gym.observation_space is not None and gym.observation_space.contains(obs)
    ended = np.zeros(2, dtype=bool)
    while not ended.all():
        assert gym.state is not None
        obs, reward, terminated, truncated, info = gym.step(expert_trajectories(gym.state).numpy())
        ended |= terminated | truncated
    assert terminated[1] and not truncated[1] and truncated[0] and not terminated[0]
    assert info["episode"]["collision"].tolist() == [False, True]


def test_trajectories_on_another_device_are_rejected() -> None:
    env = BEVWarpEnv(NONE)
    state = env.reset([eastbound()], fixture_map())
    with pytest.raises(TrajectoryError, match="trajectories on meta"):
        env.step(state, torch.empty(1, 8, 3, device="meta"))


def test_agents_are_seen_from_the_simulated_ego() -> None:
    env = BEVWarpEnv(NONE)
    state = env.reset([eastbound(obstacle_x=-20.0)], fixture_map())
    boxes, valid = env.observe_agents(state)
    assert bool(valid[0, 0]) and float(boxes[0, 0, 0]) == pytest.approx(30.0) and abs(float(boxes[0, 0, 1])) < 1e-9
    turned = state.__class__(**{**state.__dict__, "ego": state.ego.clone()})
    turned.ego[0, 2] = np.pi / 2  # ego facing north: the car 30 m east is now 30 m to the right
    boxes, _ = env.observe_agents(turned)
    assert float(boxes[0, 0, 1]) == pytest.approx(-30.0) and float(boxes[0, 0, 2]) == pytest.approx(-np.pi / 2)


def test_invalid_scene_is_rejected() -> None:
    bad = eastbound()
    bad.ego.states[3, 0] = np.nan
    with pytest.raises(EpisodeError, match="NaN"):
        BEVWarpEnv(NONE).reset([bad], fixture_map())


def test_many_far_agents_do_not_hide_the_obstacle() -> None:
    """Ten parked cars 30 m aside and the parked car in the lane: the broad phase still finds the hit."""
    scene = eastbound(obstacle_x=-20.0)
    far = np.repeat(scene.agents.boxes[:, :1], 10, 1).copy()
    far[..., 0] += np.arange(10) * 8.0 - 40.0
    far[..., 1] += 30.0
    agents = dataclasses.replace(
        scene.agents,
        boxes=np.concatenate([far, scene.agents.boxes], 1),
        types=np.repeat(scene.agents.types, 11),
        track_ids=np.array([f"{k:016x}" for k in range(11)]),
        valid=np.ones((scene.num_frames, 11), bool),
    )
    env = BEVWarpEnv(NONE)
    state = env.reset([dataclasses.replace(scene, agents=agents)], fixture_map())
    steps = 0
    while not bool(state.done[0]):
        state, *_ = env.step(state, expert_trajectories(state))
        steps += 1
    assert steps == 6 and int(state.reason[0]) == DoneReason.COLLISION and int(state.frame[0]) == 30
