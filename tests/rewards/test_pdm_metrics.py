"""Hand-computed cases for each PDM sub-metric on the straight two-lane road of ``pdm_factory``.

Ego (Pacifica, rear axle at y = -2, heading +x) spans x in [x - 1.127, x + 4.049], y in [-3.1485, -0.8515].
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pdm_factory import agent_track, make_cache, straight_states
from shapely.geometry import Polygon, box

from rewards import pdm_metrics as pm
from rewards.pdm import score_states
from simulation.geometry import agent_box_corners
from simulation.maps.layers import SemanticMapLayer
from simulation.types import StateIndex
from simulation.types import TrackedObjectType as TT

NAN_ROW = np.full(7, np.nan)


def _score(cache, states, version="v1", **kw):
    return score_states(cache, np.asarray(states)[None] if np.ndim(states) == 2 else states, version, **kw)


# --------------------------------------------------------------------------------------------- NC


def test_moving_into_stationary_vehicle_is_at_fault():
    cache = make_cache(agents=[(agent_track(51, 30.0, -2.0), TT.VEHICLE)])
    out = _score(cache, straight_states(10.0))
    assert out["no_at_fault_collisions"][0] == 0.0
    assert out["score"][0] == 0.0


def test_static_object_collision_scores_half():
    cone = agent_track(51, 30.0, -2.0, length=0.5, width=0.5)
    # the reference drives the other lane, so it progresses 40 m without collision
    cache = make_cache(agents=[(cone, TT.TRAFFIC_CONE)], reference=straight_states(10.0, y=2.0))
    out = _score(cache, straight_states(10.0))
    assert out["no_at_fault_collisions"][0] == 0.5
    # PDMS = 0.5 * (5 TTC(0: cone ahead) + 5 EP + 2 C) / 12, EP = 40 * 0.5 / 40 (progress masked by NC)
    assert out["time_to_collision_within_bound"][0] == 0.0
    assert out["ego_progress"][0] == pytest.approx(0.5)
    assert out["score"][0] == pytest.approx(0.5 * (5 * 0.5 + 2) / 12)


def test_stopped_ego_hit_from_behind_is_not_at_fault():
    x = -10.0 + 5.0 * np.arange(51) * 0.1  # front reaches the ego's rear (x = -1.127) at ~1.4 s
    cache = make_cache(agents=[(agent_track(51, x, -2.0, vx=5.0), TT.VEHICLE)])
    out = _score(cache, straight_states(0.0))
    assert out["no_at_fault_collisions"][0] == 1.0
    assert out["time_to_collision_within_bound"][0] == 1.0  # ego slower than 0.005 m/s: TTC skipped


def test_rear_end_by_faster_vehicle_is_not_at_fault():
    x = -10.0 + 5.0 * np.arange(51) * 0.1
    cache = make_cache(agents=[(agent_track(51, x, -2.0, vx=5.0), TT.VEHICLE)])
    out = _score(cache, straight_states(1.0))
    assert out["no_at_fault_collisions"][0] == 1.0
    assert out["time_to_collision_within_bound"][0] == 1.0  # the track is behind (180 deg)


def test_ttc_angle_uses_the_unprojected_rear_axle():
    # Ego at 5 m/s, a car closing from behind at 15 m/s. The first projected contact (0.9 s look-ahead, ego
    # moved 4.5 m) puts the track's centroid 1.4 m *ahead* of the current rear axle, hence "ahead": TTC 0,
    # while the actual contact is a rear-end (not at fault), as in the reference scorer.
    x = -20.0 + 15.0 * np.arange(51) * 0.1
    cache = make_cache(agents=[(agent_track(51, x, -2.0, vx=15.0), TT.VEHICLE)])
    out = _score(cache, straight_states(5.0))
    assert out["no_at_fault_collisions"][0] == 1.0
    assert out["time_to_collision_within_bound"][0] == 0.0


def test_moving_pedestrian_hit_by_front_bumper_is_at_fault():
    y = -6.0 + 1.0 * np.arange(51) * 0.1  # crossing at x = 25, reaches the lane at ~2.9 s
    cache = make_cache(agents=[(agent_track(51, 25.0, y, vy=1.0, length=0.5, width=0.5), TT.PEDESTRIAN)])
    out = _score(cache, straight_states(7.0))
    assert out["no_at_fault_collisions"][0] == 0.0


def _side_drift(y0: float) -> np.ndarray:
    """A vehicle alongside the ego (same 10 m/s, centres level) drifting towards it at 0.5 m/s."""
    t = np.arange(51) * 0.1
    return agent_track(51, 1.461 + 10.0 * t, y0 - 0.5 * t, vx=10.0, vy=-0.5)


def test_lateral_contact_in_own_lane_is_not_at_fault():
    cache = make_cache(agents=[(_side_drift(1.8), TT.VEHICLE)])
    out = _score(cache, straight_states(10.0))
    assert out["no_at_fault_collisions"][0] == 1.0
    # first projected contact uses the 0.9 s look-ahead: the track is then ~11 deg off the heading -> "ahead"
    assert out["time_to_collision_within_bound"][0] == 0.0


def test_lateral_contact_while_straddling_lanes_is_at_fault():
    cache = make_cache(agents=[(_side_drift(3.8), TT.VEHICLE)])
    out = _score(cache, straight_states(10.0, y=0.3))  # corners in both lanes -> MULTIPLE_LANES
    assert out["no_at_fault_collisions"][0] == 0.0


def test_first_contact_decides_per_track():
    states = straight_states(0.0)
    states[10:, StateIndex.VX] = 2.0
    states[10:, StateIndex.X] = 2.0 * np.arange(31) * 0.1
    parked = agent_track(51, 5.0, -2.0)  # overlaps the ego's front from t = 0
    out = _score(make_cache(agents=[(parked, TT.VEHICLE)]), states)
    assert out["no_at_fault_collisions"][0] == 1.0  # first contact while ego stopped: ignored afterwards
    late = parked.copy()
    late[:10] = NAN_ROW  # the same parked car appears only at 1.0 s, when ego moves: stopped track, at fault
    out = _score(make_cache(agents=[(late, TT.VEHICLE)]), states)
    assert out["no_at_fault_collisions"][0] == 0.0


def test_collisions_with_several_tracks_take_the_minimum():
    agents = [
        (agent_track(51, 20.0, -2.0, length=0.5, width=0.5), TT.BARRIER),
        (agent_track(51, 35.0, -2.0), TT.VEHICLE),
    ]
    assert _score(make_cache(agents=agents), straight_states(10.0))["no_at_fault_collisions"][0] == 0.0
    assert _score(make_cache(agents=agents[:1]), straight_states(10.0))["no_at_fault_collisions"][0] == 0.5


# --------------------------------------------------------------------------------------------- TTC


def test_ttc_lookahead_and_horizon_v1_v2():
    # parked car with its rear at x = 48: ego's front reaches 44.05 at 4 s (no collision), but the 0.9 s
    # projection (9 m) touches it from t = 3.5 s; v2 only checks t <= 3.1 s (front + 9 m = 44.05 < 48).
    agents = [(agent_track(51, 50.0, -2.0), TT.VEHICLE)]
    v1 = _score(make_cache("v1", agents=agents), straight_states(10.0))
    v2 = _score(make_cache("v2", agents=agents), straight_states(10.0), "v2")
    assert v1["no_at_fault_collisions"][0] == 1.0
    assert v1["time_to_collision_within_bound"][0] == 0.0
    assert v2["time_to_collision_within_bound"][0] == 1.0


def _crossing_from_left() -> np.ndarray:
    t = np.arange(51) * 0.1
    return agent_track(51, 2.5, 3.0 - t, vy=-1.0)  # enters the ego lane beside the slow ego at ~2.85 s


def test_ttc_side_track_ignored_in_own_lane_but_not_in_intersection():
    slow = straight_states(0.5)
    out = _score(make_cache(agents=[(_crossing_from_left(), TT.VEHICLE)]), slow)
    assert out["time_to_collision_within_bound"][0] == 1.0  # ~55 deg: neither ahead nor risky area
    assert out["no_at_fault_collisions"][0] == 1.0  # lateral contact, ego in its lane
    inter = [("junction", SemanticMapLayer.INTERSECTION, box(-50, -4, 150, 4))]
    out = _score(make_cache(agents=[(_crossing_from_left(), TT.VEHICLE)], extra_polygons=inter), slow)
    assert out["time_to_collision_within_bound"][0] == 0.0  # rear axle in an intersection, track not behind


# --------------------------------------------------------------------------------------------- DAC


def test_dac_corner_off_road_and_drivable_layers():
    assert _score(make_cache(), straight_states(10.0, y=-3.5))["drivable_area_compliance"][0] == 0.0
    carpark = [("cp", SemanticMapLayer.CARPARK_AREA, box(-50, -8, 150, -4))]
    assert (
        _score(make_cache(extra_polygons=carpark), straight_states(10.0, y=-3.5))["drivable_area_compliance"][0] == 1.0
    )
    lane_only = [("l2", SemanticMapLayer.LANE, box(-50, -8, 150, -4))]  # lanes are not drivable area
    assert (
        _score(make_cache(extra_polygons=lane_only), straight_states(10.0, y=-3.5))["drivable_area_compliance"][0]
        == 0.0
    )


def test_dac_zero_gives_score_zero_and_ep_zero_v1():
    out = _score(make_cache(), straight_states(10.0, y=-3.5))
    assert out["ego_progress"][0] == 0.0 and out["score"][0] == 0.0


# --------------------------------------------------------------------------------------------- DDC


@pytest.mark.parametrize(("speed", "expected"), [(1.8, 1.0), (1.9, 0.5), (5.0, 0.5), (5.5, 0.0)])
def test_ddc_window_thresholds(speed, expected):
    # driving in the oncoming lane: the 1 s window holds 11 steps of speed * 0.1 m (1.98 < 2 <= 2.09 ...)
    out = _score(make_cache(), straight_states(speed, y=2.0))
    assert out["driving_direction_compliance"][0] == expected
    assert out["score"][0] == pytest.approx((5 + 5 * out["ego_progress"][0] + 2) / 12)  # weight 0 in v1


def test_ddc_v2_is_multiplier_and_skips_intersections():
    out = _score(make_cache("v2"), straight_states(10.0, y=2.0), "v2", apply_human_filter=False)
    assert out["driving_direction_compliance"][0] == 0.0 and out["score"][0] == 0.0
    inter = [("junction", SemanticMapLayer.INTERSECTION, box(-50, -4, 150, 4))]
    out = _score(make_cache("v2", extra_polygons=inter), straight_states(10.0, y=2.0), "v2")
    assert out["driving_direction_compliance"][0] == 1.0


# --------------------------------------------------------------------------------------------- TLC


def _red(steps: slice) -> tuple:
    mask = np.zeros((41, 1), dtype=bool)
    mask[steps] = True
    return (["lc9"], mask, [box(20, -4, 25, 0)])


def test_tlc_red_connector():
    assert (
        _score(make_cache("v2", red=_red(slice(None))), straight_states(10.0), "v2", apply_human_filter=False)[
            "traffic_light_compliance"
        ][0]
        == 0.0
    )
    # red only for the first second; the ego front reaches x = 20 at ~1.6 s
    assert (
        _score(make_cache("v2", red=_red(slice(0, 10))), straight_states(10.0), "v2", apply_human_filter=False)[
            "traffic_light_compliance"
        ][0]
        == 1.0
    )
    assert (
        _score(make_cache("v2", red=_red(slice(None))), straight_states(2.0), "v2", apply_human_filter=False)[
            "traffic_light_compliance"
        ][0]
        == 1.0
    )


# --------------------------------------------------------------------------------------------- LK


def _lateral_profile(offsets: np.ndarray) -> np.ndarray:
    s = straight_states(10.0)
    s[:, StateIndex.Y] = -2.0 + offsets
    return s


def test_lane_keeping_counter():
    off = np.zeros(41)
    off[:19] = 0.6
    assert _score(make_cache("v2"), _lateral_profile(off), "v2")["lane_keeping"][0] == 1.0
    off[:20] = 0.6
    assert _score(make_cache("v2"), _lateral_profile(off), "v2")["lane_keeping"][0] == 0.0
    off[:] = 0.5  # the limit itself is allowed
    assert _score(make_cache("v2"), _lateral_profile(off), "v2")["lane_keeping"][0] == 1.0


def test_lane_keeping_intersection_steps_neither_count_nor_reset():
    off = np.zeros(41)
    off[:12] = 0.6  # 12 steps off, 10 steps centred inside the junction, 8 more steps off = 20
    off[22:30] = 0.6
    inter = [("junction", SemanticMapLayer.INTERSECTION, box(12.961, -4, 22.961, 4))]
    lk = _score(make_cache("v2", extra_polygons=inter), _lateral_profile(off), "v2")["lane_keeping"][0]
    assert lk == 0.0
    assert _score(make_cache("v2"), _lateral_profile(off), "v2")["lane_keeping"][0] == 1.0


# --------------------------------------------------------------------------------------------- geometry kernels


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_overlap_kernel_matches_shapely(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        a = agent_box_corners(np.array([*rng.uniform(-4, 4, 2), rng.uniform(-np.pi, np.pi), 0, 0, 5.0, 2.0]))
        b = agent_box_corners(np.array([*rng.uniform(-4, 4, 2), rng.uniform(-np.pi, np.pi), 0, 0,
                                        *rng.uniform(0.3, 5.0, 2)]))  # fmt: skip
        shift = rng.uniform(-1, 1, 2)
        pa, pb = Polygon(a + shift), Polygon(b)
        if pa.exterior.distance(pb.exterior) < 1e-9:
            continue
        assert pm._overlap(a, shift[0], shift[1], b) == pa.intersects(pb)


def test_ego_area_flags():
    cache = make_cache(with_intersection=True)
    states = np.stack([straight_states(0.0), straight_states(0.0, y=0.3), straight_states(0.0, x0=105.0),
                       straight_states(0.0, y=2.0)])  # fmt: skip
    areas = pm.ego_area(cache, pm.ego_points(states))[:, 0]
    E = pm.EgoArea
    np.testing.assert_array_equal(areas[:, E.MULTIPLE_LANES], [False, True, False, False])
    np.testing.assert_array_equal(areas[:, E.ONCOMING_TRAFFIC], [False, True, False, True])
    np.testing.assert_array_equal(areas[:, E.REAR_AXLE_IN_INTERSECTION], [False, False, True, False])
    np.testing.assert_array_equal(areas[:, E.CENTER_IN_INTERSECTION], [False, False, True, False])
    assert not areas[:, E.NON_DRIVABLE_AREA].any()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_centerline_projection_matches_shapely(seed):
    from shapely.geometry import LineString, Point

    from simulation.geometry import polyline_lengths

    rng = np.random.default_rng(seed)
    line = np.cumsum(rng.normal(0.0, 2.0, (int(rng.integers(2, 80)), 2)), 0)
    cache = dataclasses.replace(make_cache(), centerline=line, centerline_s=polyline_lengths(line))
    pts = rng.uniform(line.min(0) - 5, line.max(0) + 5, (50, 2))
    s, d = pm.project_on_centerline(cache, pts)
    ls = LineString(line)
    np.testing.assert_allclose(d, [ls.distance(Point(p)) for p in pts], atol=1e-9)
    near = [ls.interpolate(v).distance(Point(p)) for v, p in zip(s, pts, strict=True)]
    np.testing.assert_allclose(near, d, atol=1e-6)  # the arc length lands on a nearest point
