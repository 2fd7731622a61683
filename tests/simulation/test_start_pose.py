"""A plan that does not start at the current pose (PDM-Closed's trajectory starts at the ego projected on its
centre line): the tracking reference starts at the plan's own t = 0 pose, as NAVSIM samples it."""

from __future__ import annotations

import numpy as np

from simulation.kinematics import interpolate_trajectory, simulate_proposals


def _state(x: float = 10.0, y: float = 5.0, heading: float = 0.3, speed: float = 6.0) -> np.ndarray:
    state = np.zeros(11)
    state[:3] = x, y, heading
    state[3] = speed
    return state


def test_default_start_is_the_current_pose() -> None:
    state = _state()
    poses = np.stack([np.arange(1, 9) * 3.0, np.zeros(8), np.zeros(8)], -1)
    plain = interpolate_trajectory(poses, state)
    zero = interpolate_trajectory(poses, state, start_poses=np.zeros(3))
    np.testing.assert_array_equal(plain, zero)
    np.testing.assert_allclose(plain[0, 0], state[:3])


def test_start_pose_moves_the_first_knot_only() -> None:
    state = _state(heading=0.0)
    poses = np.stack([np.arange(1, 9) * 3.0, np.zeros(8), np.zeros(8)], -1)
    start = np.array([0.0, 0.4, 0.0])  # 0.4 m left of the ego: the projection on a centre line
    ref = interpolate_trajectory(poses, state, start_poses=start)
    # t = 0: the start pose (global); t = 0.25 s (index 2.5 of 0.1 s steps is between knots 0 and 1 at 0.5 s):
    np.testing.assert_allclose(ref[0, 0], [10.0, 5.4, 0.0])
    np.testing.assert_allclose(ref[0, 2], [10.0 + 0.4 * 3.0, 5.0 + 0.6 * 0.4, 0.0])  # 0.2 s: 40 % of the way
    np.testing.assert_allclose(ref[0, 5:], interpolate_trajectory(poses, state)[0, 5:])
    tracked = simulate_proposals(state, poses[None], 0.5, start_poses=start[None])
    plain = simulate_proposals(state, poses[None], 0.5)
    assert tracked[0, 0, 1] == plain[0, 0, 1] == 5.0  # the tracker starts from the ego state either way
    assert tracked[0, 10, 1] - plain[0, 10, 1] > 0.02  # and is drawn towards the start pose's lateral offset
