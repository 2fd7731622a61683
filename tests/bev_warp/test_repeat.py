"""Branching: ``repeat_state(state, G)`` equals a reset on the scenes repeated G times, step after step."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from scenes import eastbound, fixture_map  # noqa: E402

from bev_warp.env import BEVWarpEnv, EnvConfig, EnvState, expert_trajectories, repeat_state  # noqa: E402
from simulation.render import RasterConfig  # noqa: E402

RASTER = RasterConfig(height_px=32, width_px=32, resolution_m=1.0, behind_m=8.0)


def _assert_same(a: EnvState, b: EnvState) -> None:
    assert a.step_index == b.step_index and a.episodes.tokens == b.episodes.tokens
    for f in ("ego", "frame", "done", "reason", "route_s0", "route_s", "history", "collided"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=0, atol=0, equal_nan=True, msg=f)
    for f in ("totals", "flags", "final"):
        for k, v in getattr(a, f).items():
            torch.testing.assert_close(v, getattr(b, f)[k], rtol=0, atol=0, equal_nan=True, msg=f"{f}.{k}")


def _plans(state: EnvState) -> torch.Tensor:
    """The expert's plan bent sideways by a different amount in every episode (branches part ways)."""
    plans = expert_trajectories(state)
    lateral = 0.15 * torch.arange(state.episodes.batch_size, dtype=torch.float64)
    bend = torch.zeros_like(plans)
    bend[..., 1] = lateral[:, None] * plans[..., 0] / 8.0
    return plans + bend


def test_repeated_state_steps_exactly_as_a_reset_on_repeated_scenes() -> None:
    scenes = [eastbound(obstacle_x=-10.0), eastbound(token="b", speed=6.0, frames=41)]
    env = BEVWarpEnv(EnvConfig(observation="raster", raster=RASTER))
    g = 3
    branched = repeat_state(env.reset(scenes, fixture_map()), g)
    direct = env.reset([s for s in scenes for _ in range(g)], fixture_map())
    assert branched.episodes.tokens == ("s0", "s0", "s0", "b", "b", "b")
    _assert_same(branched, direct)
    # the observations are shared, not copied
    assert branched.episodes.observations is not None and branched.episodes.observations.shape[0] == 2
    for ep_a, ep_b in ((branched.episodes, direct.episodes),):
        for f in ("num_frames", "ego", "boxes", "valid", "types", "route", "timestamps_us", "drivable"):
            torch.testing.assert_close(getattr(ep_a, f), getattr(ep_b, f), rtol=0, atol=0, msg=f)
    while not bool(direct.done.all()):
        torch.testing.assert_close(env.observe(branched), env.observe(direct), rtol=0, atol=0)
        plans = _plans(direct)
        branched, r1, d1, i1 = env.step(branched, plans)
        direct, r2, d2, i2 = env.step(direct, plans)
        _assert_same(branched, direct)
        torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    assert len(set(direct.reason.tolist())) > 1  # the branches ended differently


def test_branching_mid_episode_and_twice() -> None:
    env = BEVWarpEnv(EnvConfig(observation="none"))
    state = env.reset([eastbound(), eastbound(token="b", x0=-40.0)], fixture_map())
    state, *_ = env.step(state, expert_trajectories(state))
    twice = repeat_state(repeat_state(state, 2), 2)
    once = repeat_state(state, 4)
    _assert_same(twice, once)
    assert once.episodes.batch_size == 8 and once.step_index == 1
    torch.testing.assert_close(once.ego[:4], state.ego[:1].expand(4, -1), rtol=0, atol=0)
