"""LQR tracker + kinematic bicycle against hand-stepped cases."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.kinematics import (
    DEFAULT_BICYCLE,
    DEFAULT_LQR,
    fit_reference_profiles,
    interpolate_trajectory,
    lqr_commands,
    propagate_bicycle,
    simulate_proposals,
    track_and_propagate,
)
from simulation.types import PACIFICA
from simulation.types import StateIndex as S

TIMES = np.arange(1, 9) * 0.5


def _state(x: float = 0.0, y: float = 0.0, heading: float = 0.0, speed: float = 0.0, steer: float = 0.0) -> np.ndarray:
    state = np.zeros(11)
    state[[S.X, S.Y, S.HEADING, S.VX, S.STEERING_ANGLE]] = x, y, heading, speed, steer
    return state


def test_bicycle_one_step_by_hand() -> None:
    state = _state(1.0, 2.0, 0.1, 5.0, 0.05)
    state[S.AX] = 0.4
    state[S.YAW_RATE] = 0.3
    out = propagate_bicycle(state[None], np.array([[2.0, 0.5]]), dt=0.1)[0]
    accel = 0.4 + 0.1 / 0.3 * (2.0 - 0.4)  # 0.9333
    steer = 0.05 + 0.1 / 0.15 * (0.05 + 0.05 - 0.05)  # ideal = 0.05 + 0.1 * 0.5
    assert out[S.AX] == pytest.approx(accel)
    assert out[S.VX] == pytest.approx(5.0 + 0.1 * accel)
    assert out[S.X] == pytest.approx(1.0 + 0.5 * np.cos(0.1))
    assert out[S.Y] == pytest.approx(2.0 + 0.5 * np.sin(0.1))
    assert out[S.HEADING] == pytest.approx(0.1 + 0.5 * np.tan(0.05) / PACIFICA.wheel_base)
    assert out[S.STEERING_ANGLE] == pytest.approx(steer)
    assert out[S.STEERING_RATE] == pytest.approx((steer - 0.05) / 0.1)
    yaw_rate = (5.0 + 0.1 * accel) * np.tan(steer) / PACIFICA.wheel_base
    assert out[S.YAW_RATE] == pytest.approx(yaw_rate)
    assert out[S.YAW_ACCEL] == pytest.approx((yaw_rate - 0.3) / 0.1)
    assert out[S.VY] == 0.0 and out[S.AY] == 0.0


def test_bicycle_steering_clipped() -> None:
    state = _state(speed=1.0, steer=1.0)
    out = propagate_bicycle(state[None], np.array([[0.0, 100.0]]))[0]
    assert out[S.STEERING_ANGLE] == pytest.approx(DEFAULT_BICYCLE.max_steering_angle)


def test_interpolation_prepends_current_pose_and_unwraps_heading() -> None:
    current = _state(10.0, 5.0, np.pi / 2)
    poses = np.zeros((1, 8, 3))
    poses[0, :, 0] = TIMES * 4.0  # 2 m per 0.5 s ahead (global +y)
    poses[0, 0, 2] = np.pi - 0.1  # global 3 pi / 2 - 0.1, wrapped -pi / 2 - 0.1
    ref = interpolate_trajectory(poses, current)
    assert ref.shape == (1, 41, 3)
    np.testing.assert_allclose(ref[0, 0], [10.0, 5.0, np.pi / 2])
    np.testing.assert_allclose(ref[0, 5, :2], [10.0, 7.0], atol=1e-12)
    np.testing.assert_allclose(ref[0, 40, :2], [10.0, 21.0], atol=1e-12)
    # interpolated through the unwrapped headings pi / 2 -> 3 pi / 2 - 0.1, not the wrapped -pi / 2 - 0.1
    assert ref[0, 2, 2] == pytest.approx(np.pi / 2 + 0.4 * (np.pi - 0.1))


def test_profiles_of_constant_speed_straight_line() -> None:
    ref = np.zeros((1, 41, 3))
    ref[0, :, 0] = np.arange(41) * 0.8
    velocity, curvature = fit_reference_profiles(ref)
    np.testing.assert_allclose(velocity, 8.0, atol=1e-6)
    np.testing.assert_allclose(curvature, 0.0, atol=1e-9)


def test_straight_constant_speed_stays_on_reference() -> None:
    states = simulate_proposals(_state(speed=10.0), np.stack([10 * TIMES, 0 * TIMES, 0 * TIMES], -1)[None])
    np.testing.assert_allclose(states[0, :, S.Y], 0.0, atol=1e-9)
    np.testing.assert_allclose(states[0, :, S.X], np.arange(41), atol=1e-3)
    np.testing.assert_allclose(states[0, :, S.VX], 10.0, atol=1e-3)


def test_longitudinal_lqr_by_hand() -> None:
    ref = np.zeros((1, 41, 3))
    ref[0, :, 0] = np.arange(41) * 0.8
    commands = lqr_commands(_state(speed=6.0)[None], ref)
    # one step over 1 s: a = -B q (v - v_ref) / (B q B + r) with B = 1, q = 10, r = 1
    assert commands[0, 0] == pytest.approx(10.0 * 2.0 / 11.0, rel=1e-5)
    assert commands[0, 1] == pytest.approx(0.0, abs=1e-9)


def test_stopping_controller_engages_at_low_speed() -> None:
    ref = np.zeros((1, 41, 3))
    ref[0, :, 0] = np.arange(41) * 0.005  # 0.05 m/s
    state = _state(speed=0.15, steer=0.1)
    commands = lqr_commands(state[None], ref)
    assert commands[0, 0] == pytest.approx(-0.5 * (0.15 - 0.05), rel=1e-5)
    assert commands[0, 1] == 0.0
    moving = lqr_commands(_state(speed=0.3, steer=0.1)[None], ref)
    assert moving[0, 1] != 0.0  # above 0.2 m/s the lateral LQR is used


def test_lateral_error_is_corrected() -> None:
    ref = np.zeros((1, 41, 3))
    ref[0, :, 0] = np.arange(41)
    commands = lqr_commands(_state(y=0.5, speed=10.0)[None], ref)
    assert commands[0, 1] < 0.0  # left of the path: steer right
    states = track_and_propagate(_state(y=0.5, speed=10.0), ref)
    assert abs(states[0, -1, S.Y]) < 0.1


def test_tracks_a_circle() -> None:
    radius, speed = 30.0, 10.0
    theta = speed / radius * TIMES
    poses = np.stack([radius * np.sin(theta), radius * (1 - np.cos(theta)), theta], -1)[None]
    start = _state(speed=speed, steer=np.arctan(PACIFICA.wheel_base / radius))
    states = simulate_proposals(start, poses)
    ref = interpolate_trajectory(poses, start)
    # chord interpolation cuts inside the arc by at most R (1 - cos(dtheta / 2)) = 0.10 m
    assert np.abs(states[0, :, :2] - ref[0, :, :2]).max() < 0.35
    radial = np.hypot(states[0, :, 0], states[0, :, 1] - radius)
    np.testing.assert_allclose(radial, radius, atol=0.35)
    assert states[0, -1, S.HEADING] == pytest.approx(theta[-1], abs=0.03)


def test_batched_equals_looped() -> None:
    rng = np.random.default_rng(0)
    poses = np.cumsum(rng.uniform([2, -0.3, -0.05], [6, 0.3, 0.05], size=(7, 8, 3)), axis=1)
    start = _state(speed=8.0, steer=0.02)
    batched = simulate_proposals(start, poses)
    looped = np.concatenate([simulate_proposals(start, poses[i : i + 1]) for i in range(7)])
    np.testing.assert_allclose(batched, looped, atol=1e-9)
    assert DEFAULT_LQR.tracking_horizon == 10


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="reference"):
        track_and_propagate(_state(), np.zeros((41, 3)))
    with pytest.raises(ValueError, match="poses"):
        interpolate_trajectory(np.zeros((1, 8, 2)), _state())


def test_closed_form_lateral_lqr_matches_matrix_products() -> None:
    from simulation.kinematics import _lateral_lqr, _lateral_lqr_matrices

    rng = np.random.default_rng(1)
    state = rng.normal(size=(20, 3)) * [0.5, 0.1, 0.05]
    velocity = rng.uniform(0.0, 15.0, (20, 10))
    curvature = rng.normal(size=(20, 10)) * 0.02
    np.testing.assert_allclose(
        _lateral_lqr(state, velocity, curvature, DEFAULT_LQR),
        _lateral_lqr_matrices(state, velocity, curvature, DEFAULT_LQR),
        rtol=1e-10,
        atol=1e-12,
    )


def test_compiled_kernel_matches_array_steps() -> None:
    rng = np.random.default_rng(2)
    poses = np.cumsum(rng.uniform([0, -0.4, -0.08], [6, 0.4, 0.08], size=(9, 8, 3)), axis=1)
    start = _state(x=3.0, y=-1.0, heading=3.1, speed=5.0, steer=0.03)
    start[S.AX], start[S.YAW_RATE] = -0.5, 0.1
    ref = interpolate_trajectory(poses, start)
    ref[0] = ref[0, :1]  # a standing reference, started at 0.1 m/s: stopping controller
    starts = np.repeat(start[None], 9, axis=0)
    starts[0, S.VX] = 0.1
    fast = track_and_propagate(starts, ref)
    slow = track_and_propagate(starts, ref, compiled=False)
    assert fast[0, -1, S.VX] < 0.1 and np.all(fast[0, 1:, S.STEERING_RATE] == 0.0)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)
