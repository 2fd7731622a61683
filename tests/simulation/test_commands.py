"""Driving commands in closed loop: the batched rule against the numpy one, and the command a scenario gives at a
simulated pose (a scene keeps its own)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bev_warp.testing import fixture_scenario
from simulation.commands import command_from_path, command_from_path_torch, window_command
from simulation.protocols import Observation
from simulation.types import DrivingCommand, EgoStates, Scene, StateIndex


def _turn(sign: float, straight_m: float = 10.0) -> np.ndarray:
    """Straight along x for ``straight_m``, then a quarter turn (left for ``sign`` 1, right for -1)."""
    first = np.stack([np.linspace(0, straight_m, 11), np.zeros(11)], -1)
    leg = np.stack([np.full(30, straight_m), sign * np.arange(1, 31)], -1)
    return np.concatenate([first, leg])


def test_batched_rule_hand_cases() -> None:
    straight = np.stack([np.linspace(0, 100, 101), np.zeros(101)], -1)
    kink = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 2.0], [40.0, 2.0]])
    # padded by repeating the last vertex, as episodes are
    pad = lambda p: np.concatenate([p, np.repeat(p[-1:], 101 - len(p), 0)])  # noqa: E731
    paths = np.stack([pad(p) for p in (straight, _turn(1.0), _turn(-1.0), kink, kink * [1, 0.99], np.zeros((2, 2)))])
    poses = np.zeros((6, 3))
    got = command_from_path_torch(torch.from_numpy(poses), torch.from_numpy(paths)).tolist()
    L, S, R, U = (int(c) for c in DrivingCommand)  # noqa: N806
    assert got == [S, L, R, L, S, U]


_coord = st.floats(-30.0, 30.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_coord, _coord), min_size=2, max_size=12),
    st.lists(st.integers(0, 3), min_size=2, max_size=12),
    st.tuples(_coord, _coord),
)
def test_batched_rule_matches_the_numpy_rule(
    vertices: list[tuple[float, float]], repeats: list[int], pose: tuple[float, float]
) -> None:
    # vertices repeated (zero-length segments) anywhere, as padded or parked paths have them
    path = np.repeat(np.array(vertices), [1 + r for r in (repeats + [0] * len(vertices))[: len(vertices)]], axis=0)
    # a pose equally near two segments (beyond a shared corner) may project onto either: not compared
    seg = np.diff(path, axis=0)
    seg = seg[np.linalg.norm(seg, axis=1) > 1e-6]
    starts = np.concatenate([path[:1], path[1:][np.linalg.norm(np.diff(path, axis=0), axis=1) > 1e-6]])[:-1]
    u = np.clip(((np.array(pose) - starts) * seg).sum(1) / np.maximum((seg**2).sum(1), 1e-12), 0, 1)
    dist = np.sort(np.linalg.norm(starts + u[:, None] * seg - np.array(pose), axis=1))
    assume(len(dist) < 2 or dist[1] - dist[0] > 1e-6)
    want = command_from_path(np.array([*pose, 0.0]), path)
    got = command_from_path_torch(torch.tensor([[*pose, 0.0]], dtype=torch.float64), torch.from_numpy(path)[None])
    assert int(got[0]) == int(want)


def test_a_scenario_gives_the_command_of_its_logged_path_at_the_simulated_pose() -> None:
    sc = fixture_scenario(0)  # eastbound, straight
    start = sc.ego.states[0, :3]
    assert window_command(sc, start) == DrivingCommand.STRAIGHT
    # the logged path turns left 10 m ahead of the simulated pose: LEFT; a pose beside the path projects onto it
    ego = sc.ego.states.copy()
    path = _turn(1.0) + start[:2]
    ego[: len(path), :2], ego[len(path) :, :2] = path, path[-1]
    turning = dataclasses.replace(sc, ego=EgoStates(ego, sc.ego.timestamps_us))
    assert window_command(turning, start) == DrivingCommand.LEFT
    assert window_command(turning, start + [0.0, -1.5, 0.3]) == DrivingCommand.LEFT
    # past the turn, the rest of the path is straight
    assert window_command(turning, np.array([*path[15], np.pi / 2])) == DrivingCommand.STRAIGHT
    # no route: UNKNOWN, as a scene without one; a parked log: UNKNOWN (no segment to follow)
    assert window_command(dataclasses.replace(sc, route_roadblock_ids=()), start) == DrivingCommand.UNKNOWN
    parked = ego.copy()
    parked[:, :2] = start[:2]
    still = dataclasses.replace(sc, ego=EgoStates(parked, sc.ego.timestamps_us))
    assert window_command(still, start) == DrivingCommand.UNKNOWN


def test_observations_of_a_scenario_follow_the_simulated_pose_and_a_scene_keeps_its_command() -> None:
    sc = fixture_scenario(0)
    ego = sc.ego.states.copy()
    path = _turn(-1.0) + sc.ego.states[0, :2]
    ego[: len(path), :2], ego[len(path) :, :2] = path, path[-1]
    sc = dataclasses.replace(sc, ego=EgoStates(ego, sc.ego.timestamps_us))
    logged = Observation.from_window(sc, slice(0, 1))
    assert logged.driving_command == DrivingCommand.RIGHT
    simulated = ego[:1].copy()
    simulated[0, [StateIndex.X, StateIndex.Y]] = path[20]  # on the new leg: straight on
    moved = Observation.from_window(sc, slice(0, 1), ego_history=EgoStates(simulated, sc.ego.timestamps_us[:1]))
    assert moved.driving_command == DrivingCommand.STRAIGHT
    fields = {f.name: getattr(sc, f.name) for f in dataclasses.fields(sc) if f.name in Scene.__dataclass_fields__}
    scene = Scene(**fields, driving_command=int(DrivingCommand.LEFT))
    assert Observation.from_window(scene, slice(0, 1)).driving_command == DrivingCommand.LEFT
