"""OGO re-timing on hand-built paths: the path is kept, the kinematic limits hold, the ego slows before a conflict
and speeds up where progress was low."""

from __future__ import annotations

import numpy as np
import pytest

from rewards.comfort import MAX_ABS_LON_JERK, MAX_LON_ACCEL, MIN_LON_ACCEL
from training.ogo import OGOConfig, Retimed, arc_length, poses_at, retime

DT = 0.1
CONFIG = OGOConfig()


def _arc(speed: float, seconds: float, radius: float = 30.0) -> np.ndarray:
    """Poses every 0.1 s at ``speed`` along a left-turning arc of ``radius`` from the origin, heading +x."""
    s = speed * np.arange(int(round(seconds / DT)) + 1) * DT
    phi = s / radius
    return np.stack([radius * np.sin(phi), radius * (1 - np.cos(phi)), phi], -1)


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    a, b = line[:-1, None], line[1:, None]  # (S, 1, 2)
    ab = b - a
    t = np.clip(((points[None] - a) * ab).sum(-1) / (ab**2).sum(-1), 0, 1)
    return np.linalg.norm(points[None] - (a + t[..., None] * ab), axis=-1).min(0)


def _check_limits(out: Retimed) -> None:
    assert (out.v >= -1e-9).all() and (out.v <= CONFIG.max_speed + 1e-9).all()
    accel = np.diff(out.v) / DT  # realised accelerations
    assert accel.min() >= MIN_LON_ACCEL - 1e-6 and accel.max() <= MAX_LON_ACCEL + 1e-6
    jerk = np.diff(np.concatenate([[0.0], accel])) / DT
    assert np.abs(jerk).max() <= MAX_ABS_LON_JERK + 1e-6


def test_without_feedback_the_executed_timing_is_kept() -> None:
    path = np.zeros((61, 3))
    path[:, 0] = 8.0 * np.arange(61) * DT
    out = retime(path, DT, None, 1.0, CONFIG)
    np.testing.assert_allclose(out.poses[:, 0], 8.0 * 0.5 * np.arange(1, 9), atol=1e-6)
    np.testing.assert_allclose(out.poses[:, 1:], 0.0, atol=1e-6)


def test_slower_before_a_conflict_on_the_same_path() -> None:
    path = _arc(8.0, 8.0)
    conflict_s = 20.0  # reached after 2.5 s as executed
    out = retime(path, DT, conflict_s, 1.0, CONFIG)
    assert _distance_to_polyline(out.poses[:, :2], path[:, :2]).max() < 1e-6
    s = arc_length(np.concatenate([np.zeros((1, 2)), out.poses[:, :2]]))
    assert s[-1] <= conflict_s - CONFIG.slow_margin_m + 0.5  # stopped short of the conflict
    executed = 8.0 * 0.5 * np.arange(1, 9)
    assert (out.s[np.arange(5, 41, 5)] <= executed + 1e-9).all() and out.s[40] < executed[-1] - 10
    assert out.v[-1] < 1.0  # (nearly) stopped
    _check_limits(out)
    # headings follow the path's
    np.testing.assert_allclose(out.poses[:, 2], out.s[np.arange(5, 41, 5)] / 30.0, atol=1e-3)


def test_faster_where_progress_was_low() -> None:
    path = _arc(4.0, 12.0)
    out = retime(path, DT, None, 1.5, CONFIG)
    assert _distance_to_polyline(out.poses[:, :2], path[:, :2]).max() < 1e-6
    assert out.s[-1] > 4.0 * 4.0 + 3.0 and out.v[-1] == pytest.approx(6.0, abs=0.3)
    assert (np.diff(out.s) >= 0).all()
    _check_limits(out)


def test_speed_up_respects_the_speed_limit() -> None:
    fast = OGOConfig(max_speed=9.0)
    out = retime(_arc(8.0, 12.0), DT, None, 1.5, fast)
    assert out.v.max() <= 9.0 + 1e-9


def test_poses_past_the_end_of_the_path_go_straight_on() -> None:
    path = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, np.pi / 2], [1.0, 1.0, np.pi / 2]])
    s_path = arc_length(path[:, :2])
    out = poses_at(path, s_path, np.array([0.5, 1.5, 3.0]))
    np.testing.assert_allclose(out[:, :2], [[0.5, 0.0], [1.0, 0.5], [1.0, 2.0]], atol=1e-12)
    assert out[2, 2] == pytest.approx(np.pi / 2)
