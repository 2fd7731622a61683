"""Geometry: SE2 round trips, rear-axle/centre offsets and separating-axis box overlap."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from simulation.geometry import (
    box_corners,
    boxes_overlap,
    center_to_rear_axle,
    ego_box_corners,
    global_to_local,
    interpolate_polyline,
    local_to_global,
    normalize_angle,
    project_on_polyline,
    rear_axle_to_center,
    transform_points_to_global,
    transform_points_to_local,
)
from simulation.types import PACIFICA

coord = st.floats(-1e4, 1e4, allow_nan=False)
angle = st.floats(-10.0, 10.0, allow_nan=False)
pose = st.tuples(coord, coord, angle).map(np.array)


@given(pose, pose)
def test_global_local_round_trip(p: np.ndarray, origin: np.ndarray) -> None:
    back = local_to_global(global_to_local(p, origin), origin)
    np.testing.assert_allclose(back[:2], p[:2], atol=1e-6)
    assert abs(normalize_angle(back[2] - p[2])) < 1e-9


@given(pose)
def test_origin_maps_to_zero(origin: np.ndarray) -> None:
    np.testing.assert_allclose(global_to_local(origin, origin), 0.0, atol=1e-9)


def test_local_frame_known_values() -> None:
    origin = np.array([10.0, 5.0, np.pi / 2])  # facing +y
    point = np.array([10.0, 7.0])  # 2 m ahead
    np.testing.assert_allclose(transform_points_to_local(point, origin), [2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(transform_points_to_global(np.array([0.0, 3.0]), origin), [7.0, 5.0], atol=1e-12)


def test_batched_transform_broadcasts() -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(4, 6, 2)) * 50
    origins = rng.normal(size=(4, 3))
    batched = transform_points_to_local(pts, origins[:, None])
    for b in range(4):
        np.testing.assert_allclose(batched[b], transform_points_to_local(pts[b], origins[b]), atol=1e-12)


@given(angles=st.lists(angle, min_size=1, max_size=8))
def test_normalize_angle_range(angles: list[float]) -> None:
    a = normalize_angle(np.array(angles))
    assert np.all(a >= -np.pi) and np.all(a < np.pi)
    np.testing.assert_allclose(np.cos(a), np.cos(angles), atol=1e-9)


@given(pose)
def test_rear_axle_center_round_trip(p: np.ndarray) -> None:
    c = rear_axle_to_center(p)
    np.testing.assert_allclose(np.hypot(*(c[:2] - p[:2])), 1.461, atol=1e-9)
    np.testing.assert_allclose(center_to_rear_axle(c), p, atol=1e-6)


def test_pacifica_footprint() -> None:
    corners = ego_box_corners(np.array([0.0, 0.0, 0.0]))
    np.testing.assert_allclose(corners[:, 0].max(), PACIFICA.front_length, atol=1e-12)
    np.testing.assert_allclose(corners[:, 0].min(), -PACIFICA.rear_length, atol=1e-12)
    np.testing.assert_allclose(corners[:, 1].max(), PACIFICA.width / 2, atol=1e-12)


box = st.tuples(st.floats(-20, 20), st.floats(-20, 20), angle, st.floats(0.2, 12.0), st.floats(0.2, 4.0)).map(np.array)


def _polygon(b: np.ndarray) -> shapely.Polygon:
    return shapely.Polygon(box_corners(*b))


@settings(max_examples=300)
@given(box, box)
def test_box_overlap_matches_shapely(a: np.ndarray, b: np.ndarray) -> None:
    pa, pb = _polygon(a), _polygon(b)
    got = bool(boxes_overlap(box_corners(*a), box_corners(*b)))
    # Skip only the measure-zero touching cases where float rounding decides.
    if pa.distance(pb) > 1e-6 or pa.intersection(pb).area > 1e-6:
        assert got == pa.intersects(pb)


def test_box_overlap_batched_and_symmetric() -> None:
    rng = np.random.default_rng(1)
    boxes = np.column_stack([rng.uniform(-5, 5, (50, 2)), rng.uniform(-3, 3, 50), rng.uniform(1, 5, (50, 2))])
    corners = box_corners(*boxes.T)
    pair = boxes_overlap(corners[:, None], corners[None, :])
    assert pair.shape == (50, 50)
    assert np.array_equal(pair, pair.T)
    assert pair.diagonal().all()
    expected = np.array([[_polygon(a).intersects(_polygon(b)) for b in boxes] for a in boxes])
    assert np.array_equal(pair, expected)


def test_project_on_polyline_known_values() -> None:
    line = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    s, lat = project_on_polyline(np.array([[5.0, 1.0], [11.0, 5.0], [5.0, -2.0]]), line)
    np.testing.assert_allclose(s, [5.0, 15.0, 5.0])
    np.testing.assert_allclose(lat, [1.0, -1.0, -2.0])
    poses = interpolate_polyline(line, np.array([5.0, 15.0, 50.0]))
    np.testing.assert_allclose(poses, [[5, 0, 0], [10, 5, np.pi / 2], [10, 10, np.pi / 2]], atol=1e-12)


@given(st.floats(0.0, 20.0))
def test_interpolate_then_project_round_trip(s: float) -> None:
    line = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    p = interpolate_polyline(line, np.array([s]))
    s2, lat = project_on_polyline(p[:, :2], line)
    np.testing.assert_allclose(s2, [s], atol=1e-9)
    np.testing.assert_allclose(lat, [0.0], atol=1e-9)
