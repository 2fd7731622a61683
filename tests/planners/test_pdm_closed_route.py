"""PDM-Closed's route context: NAVSIM's starting lane, the discrete centre line with the map's headings (lane joints
kept twice) and ``PDMPath``'s interpolation (scipy's linear ``interp1d``)."""

from __future__ import annotations

import dataclasses

import numpy as np
from fixture_observations import ego_state, fixture_observation
from scipy.interpolate import interp1d

from planners.pdm_closed.centerline import PDMRouteCache, pdm_route_context
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
