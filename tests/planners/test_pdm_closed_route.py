"""PDM-Closed's route context: NAVSIM's starting lane, the discrete centre line with the map's headings (lane joints
kept twice) and ``PDMPath``'s interpolation (scipy's linear ``interp1d``)."""

from __future__ import annotations

import dataclasses

import numpy as np
from fixture_observations import ego_state, fixture_observation
from scipy.interpolate import interp1d

from planners.pdm_closed.centerline import PDMRouteCache, pdm_route_context
from planners.pdm_closed.generator import _leader_rows
from planners.pdm_closed.path import ProposalPath
from planners.rule_based import PDMClosedPlanner
from simulation.maps.api import MapAPI
from simulation.maps.route import discrete_path
from simulation.maps.testing import build_fixture_map
from simulation.protocols import Observation

MAP = MapAPI.from_data(build_fixture_map(origin=(0.0, 0.0)))


def _obs(x: float, y: float, heading: float, route: tuple[str, ...] | None = None) -> Observation:
    obs = fixture_observation(MAP, ego_state(x, y, heading, 5.0))
    return obs if route is None else dataclasses.replace(obs, route_roadblock_ids=route)


def test_interpolation_at_a_repeated_vertex_follows_scipy() -> None:
    """A corner with its vertex repeated (one heading per side): the first side keeps heading 0 up to the corner, the
    corner itself belongs to the first side, the second side has pi / 2; a single vertex there would blend them."""
    states = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, np.pi / 2], [1.0, 1.0, np.pi / 2]])
    path = ProposalPath(states)
    np.testing.assert_allclose(path.interpolate(np.array([0.5, 1.0, 1.5])),
                               [[0.5, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.5, np.pi / 2]], atol=1e-15)  # fmt: skip
    merged = ProposalPath.from_centerline(states[[0, 1, 3], :2])  # the corner once, heading along the second side
    assert abs(merged.interpolate(np.array([0.5]))[0, 2] - np.pi / 4) < 1e-12


def test_interpolation_is_scipys_bit_for_bit() -> None:
    """On the discrete centre line of lanes 11 -> 113 -> 31 (joints repeated): NAVSIM's ``PDMPath.interpolate``."""
    states = np.concatenate([discrete_path(MAP, i) for i in ("11", "113", "31")])
    path = ProposalPath(states)
    unwrapped = states.copy()
    unwrapped[:, 2] = np.unwrap(unwrapped[:, 2])
    d = np.concatenate([np.random.default_rng(0).uniform(-5.0, path.length + 5.0, 500), path.progress])
    want = interp1d(path.progress, unwrapped, axis=0)(np.clip(d, 1e-5, path.length))
    want[:, 2] = np.arctan2(np.sin(want[:, 2]), np.cos(want[:, 2]))
    np.testing.assert_array_equal(path.interpolate(d), want)


def test_route_context_starts_on_navsims_starting_lane() -> None:
    """Rear axle off the map nearer lane 12, centre inside lane 11: the centre line and the speed limit are lane
    11's; the proposals start from the ego projected on it."""
    obs = _obs(-61.0, -4.2, 0.6)
    ctx = pdm_route_context(obs)
    assert ctx.lane_id == "11" and ctx.speed_limit == 13.4
    np.testing.assert_array_equal(ctx.states[:51], discrete_path(MAP, "11"))
    poses, _, _ = PDMClosedPlanner().proposals(obs)
    np.testing.assert_allclose(poses[:5, 0], np.tile([-60.0, -2.0, 0.0], (5, 1)), atol=1e-4)  # clamped at 1e-5 m


def test_route_context_stays_on_the_starting_lane_at_a_fork() -> None:
    """On the right lane 12 with the route turning left (1 -> 102 -> 3, a turn from lane 11 only): NAVSIM's lane
    search keeps lane 12 and, with no route lane after it, the centre line is lane 12 alone (the former chain
    switched to lane 11 and the turn); on the straight route it runs on through 112, 22, 122 and 42."""
    ctx = pdm_route_context(_obs(-40.0, -6.0, 0.0, ("1", "102", "3")))
    assert ctx.lane_id == "12"
    np.testing.assert_array_equal(ctx.states, discrete_path(MAP, "12"))
    ctx = pdm_route_context(_obs(-40.0, -6.0, 0.0))
    np.testing.assert_array_equal(ctx.states, np.concatenate([discrete_path(MAP, i) for i in ("12", "112", "22",
                                                                                            "122", "42")]))  # fmt: skip


def test_path_heading_before_a_joint_is_the_lanes_own() -> None:
    """0.5 m before the end of lane 11 on the left-turn route: the centre path's heading is lane 11's (0), where one
    merged vertex at the joint (heading along 113, pi / 96) would give pi / 192; the +-1 m paths shift the joint's
    two copies along their own headings."""
    obs = _obs(-10.5, -2.0, 0.0, ("1", "102", "3"))
    poses, rolls, _ = PDMClosedPlanner().proposals(obs)
    np.testing.assert_array_equal(poses[:, 0, 2], np.zeros(15))
    np.testing.assert_allclose(poses[:5, 0, :2], np.tile([-10.5, -2.0], (5, 1)), atol=1e-12)
    left = rolls[2].path.states  # offset +1 m (left)
    joint = [[-10.0, -1.0], [-10.0 - np.sin(np.pi / 96), -2.0 + np.cos(np.pi / 96)]]
    np.testing.assert_allclose(left[50:52, :2], joint, atol=1e-12)


def test_route_cache_gives_the_uncached_context() -> None:
    cache = PDMRouteCache()
    poses = ((-40.0, -2.0, 0.0), (-35.0, -2.0, 0.0), (-40.0, -6.0, 0.0), (-61.0, -4.2, 0.6), (-5.0, -2.0, 0.0),
             (-39.0, -2.0, 0.0))  # fmt: skip
    observations = [_obs(x, y, h) for x, y, h in poses]
    for observation in observations:
        cached, plain = pdm_route_context(observation, cache), pdm_route_context(observation)
        np.testing.assert_array_equal(cached.states, plain.states)
        assert (cached.lane_id, cached.route_lanes, cached.speed_limit) == (plain.lane_id, plain.route_lanes,
                                                                            plain.speed_limit)  # fmt: skip
    assert 1 < len(cache.paths) < len(observations)


def test_leader_rows_carry_navsims_row_buffer() -> None:
    """Five proposals of one path: 0 free, 1 behind an agent (4 m/s), 2 behind a red connector, 3 free, 4 behind an
    agent (2 m/s). Progress is each one's own; the speed is the last agent's written so far (0 before any); the rear
    length is half the ego length once a free proposal wrote it."""
    has = np.array([False, True, True, False, True])
    rows = _leader_rows(has, np.array([9.0, 10.0, 11.0, 12.0, 13.0]), np.array([True, True, False, True, True]),
                        np.array([7.0, 4.0, 5.0, 6.0, 2.0]), 100.0, 2.5)  # fmt: skip
    np.testing.assert_array_equal(rows[:, 0], [100.0, 10.0, 11.0, 100.0, 13.0])
    np.testing.assert_array_equal(rows[:, 1], [0.0, 4.0, 4.0, 4.0, 2.0])
    np.testing.assert_array_equal(rows[:, 2], [2.5, 2.5, 2.5, 2.5, 2.5])
    rows = _leader_rows(np.array([True, True]), np.array([5.0, 6.0]), np.array([False, True]), np.array([3.0, 1.0]),
                        100.0, 2.5)  # fmt: skip
    np.testing.assert_array_equal(rows, [[5.0, 0.0, 0.0], [6.0, 1.0, 0.0]])


def test_paths_stepped_together_equal_path_after_path() -> None:
    """Bit for bit: the three paths unrolled together and each alone (traffic in both lanes, a red light ahead)."""
    boxes = np.zeros((6, 7))
    boxes[:, 0], boxes[:, 1] = [-30.0, -20.0, -12.0, -35.0, -25.0, 3.0], [-2.0, -2.0, -2.0, -6.0, -6.0, -6.0]
    boxes[:, 3], boxes[:, 5], boxes[:, 6] = [6.0, 7.0, 0.0, 8.0, 9.0, 5.0], 4.5, 1.9
    obs = fixture_observation(MAP, ego_state(-40.0, -2.0, 0.0, 8.0), boxes, red=True)
    planner = PDMClosedPlanner()
    _, together, pdm_obs = planner.proposals(obs)
    for roll in together:
        alone = planner.generator.start(roll.path, obs.current_state, roll.targets, 50)
        planner.generator.unroll(alone, pdm_obs, np.arange(5), 1, 40)
        np.testing.assert_array_equal(alone.poses[:, :41], roll.poses[:, :41])
        np.testing.assert_array_equal(alone.leaders[:, :41], roll.leaders[:, :41])
    assert (together[0].leaders[:, 2:41, 1] != 0).any()  # an agent led somewhere
