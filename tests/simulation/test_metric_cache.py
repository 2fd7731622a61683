"""Metric cache: agent / history interpolation, polygon grid, building on the fixture map, npz round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon, box

from rewards.pdm import score_states
from simulation.geometry import agent_box_corners, rear_axle_to_center
from simulation.maps.api import MapAPI
from simulation.maps.layers import SemanticMapLayer
from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map
from simulation.metric_cache import (
    CACHE_FORMAT_VERSION,
    MAP_RADIUS,
    OBSERVATION_STEPS,
    MapContext,
    MetricCache,
    MetricCacheError,
    MetricCacheVersionError,
    build_metric_cache,
    build_observation_metric_cache,
    interpolate_agents,
    interpolate_history,
    reference_poses,
)
from simulation.polygon_grid import PolygonGrid, PolygonSet, box_intersects_polygon
from simulation.protocols import Observation
from simulation.types import (
    AGENT_DIM,
    Agents,
    EgoStates,
    Scene,
    StateIndex,
    TrafficLights,
    TrafficLightStatus,
    Trajectory,
)
from simulation.types import TrackedObjectType as TT

OX, OY = FIXTURE_ORIGIN


# --------------------------------------------------------------------------------------------- interpolation


def test_interpolate_agents_rules():
    f, n = 11, 4
    boxes = np.zeros((f, n, AGENT_DIM))
    valid = np.zeros((f, n), dtype=bool)
    boxes[:, 0, 0] = np.arange(f) * 1.0  # moving 2 m/s along x, seen at every frame
    boxes[:, 0, 3] = 2.0
    valid[:, 0] = True
    boxes[1, 1] = [5.0, 5.0, 0.3, 1.0, 0.0, 4.0, 2.0]  # seen once (t = 0.5 s): kept, unmoved, at every step
    valid[1, 1] = True
    boxes[0:4, 2, 0] = [0.0, 1.0, 2.0, 3.0]  # seen until frame 3 (t = 1.5 s)
    boxes[0:4, 2, 2] = [3.0, -3.0, 3.0, -3.0]  # headings across +-pi: interpolated on the unwrapped angle
    boxes[0:4, 2, 3] = 9.0  # a cone: velocity dropped
    valid[0:4, 2] = True
    out, ok = interpolate_agents(boxes, valid, np.array([TT.VEHICLE, TT.VEHICLE, TT.TRAFFIC_CONE, TT.VEHICLE]), 51)
    assert out.shape == (51, n, AGENT_DIM) and ok[:, 0].all() and ok[:, 1].all() and not ok[:, 3].any()
    np.testing.assert_allclose(out[:, 0, 0], np.arange(51) * 0.2)
    np.testing.assert_allclose(out[:, 1], np.repeat(boxes[1, 1][None], 51, 0))
    # last seen at 1.5 s: present at steps 0..15, gone afterwards
    np.testing.assert_array_equal(np.flatnonzero(ok[:, 2]), np.arange(16))
    expected = (3.0 + (2 * np.pi - 6.0) * 0.2 + np.pi) % (2 * np.pi) - np.pi  # 3 -> 2 pi - 3 at step 1 of 5
    assert out[1, 2, 2] == pytest.approx(expected)
    assert (out[:, 2, 3] == 0.0).all()
    v2, ok2 = interpolate_agents(boxes, valid, np.zeros(n, np.int64), 41)
    assert v2.shape == (41, n, AGENT_DIM) and ok2.shape == (41, n)


def test_interpolate_history():
    stamps = np.arange(4, dtype=np.int64) * 500_000
    states = np.zeros((4, 11))
    states[:, StateIndex.X] = [0.0, 5.0, 10.0, 15.0]
    states[:, StateIndex.HEADING] = [3.1, -3.1, 3.1, -3.1]
    hist = interpolate_history(states, stamps)
    assert hist.shape == (14, 11)
    np.testing.assert_allclose(hist[:, StateIndex.X], np.arange(14) * 1.0)
    assert abs(hist[1, StateIndex.HEADING]) > 3.0  # interpolated the short way round


# --------------------------------------------------------------------------------------------- polygon grid


def _random_polygon(cx: float, cy: float, r: float, k: int, seed: int) -> Polygon:
    rng = np.random.default_rng(seed)
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    rad = r * rng.uniform(0.4, 1.0, k)
    return Polygon(np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], -1)).buffer(0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 5.0))
def test_grid_contains_matches_shapely(seed, cell):
    rng = np.random.default_rng(seed)
    polys = [_random_polygon(*rng.uniform(-20, 20, 2), rng.uniform(2, 15), 7, seed + i) for i in range(5)]
    polys.append(box(-10, -10, 10, 10).difference(box(-3, -3, 3, 3)))  # a hole
    polys.append(box(20, 20, 25, 25).union(box(30, 30, 35, 35)))  # two parts
    grid = PolygonGrid.build(polys, cell_size=cell)
    pts = rng.uniform(-40, 40, (400, 2))
    hits = grid.contains(pts)
    for m, poly in enumerate(polys):
        expected = shapely.contains_xy(poly, pts[:, 0], pts[:, 1])
        near = shapely.distance(poly.boundary, shapely.points(pts)) < 1e-9
        got = (hits == m).any(-1)
        assert np.array_equal(got[~near], expected[~near])
    rebuilt = grid.polygons.geometries()
    assert all(shapely.equals(a, b) for a, b in zip(rebuilt, polys, strict=True))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_box_polygon_intersection_matches_shapely(seed):
    rng = np.random.default_rng(seed)
    poly = _random_polygon(0.0, 0.0, 8.0, 6, seed)
    pset = PolygonSet.from_geometries([poly])
    for _ in range(20):
        b = np.array([*rng.uniform(-12, 12, 2), rng.uniform(-np.pi, np.pi), 0, 0, rng.uniform(0.5, 6), 1.5])
        corners = agent_box_corners(b)
        expected = Polygon(corners).intersects(poly)
        if Polygon(corners).exterior.distance(poly.boundary) < 1e-9:
            continue
        assert box_intersects_polygon(corners, pset.coords, pset.ring_offsets, 0, pset.poly_rings[1]) == expected


# --------------------------------------------------------------------------------------------- building


def _simulate(current: np.ndarray, poses: np.ndarray, interval_s: float = 0.5) -> np.ndarray:
    """Test stand-in for the tracker: linear interpolation of the plan at 10 Hz (speed from differences)."""
    from simulation.geometry import local_to_global

    out = np.zeros((len(poses), 41, 11))
    for b, plan in enumerate(poses):
        glob = np.concatenate([current[None, :3], local_to_global(plan, current[:3])])
        t = np.arange(len(plan) + 1) * interval_s
        ts = np.arange(41) * 0.1
        for c in range(3):
            out[b, :, c] = np.interp(ts, t, np.unwrap(glob[:, c]) if c == 2 else glob[:, c])
        out[b, :, StateIndex.VX] = np.gradient(out[b, :, 0], 0.1) * np.cos(out[b, :, 2]) + np.gradient(
            out[b, :, 1], 0.1
        ) * np.sin(out[b, :, 2])
    return out


def _scene(x0: float, speed: float, route: tuple[str, ...], red_connector: str | None = None) -> Scene:
    frames, ci = 14, 3
    t = (np.arange(frames) - ci) * 0.5
    states = np.zeros((frames, 11))
    states[:, StateIndex.X] = OX + x0 + speed * t
    states[:, StateIndex.Y] = OY - 2.0
    states[:, StateIndex.VX] = speed
    stamps = np.arange(frames, dtype=np.int64) * 500_000
    boxes = np.zeros((frames, 1, AGENT_DIM))
    boxes[:, 0] = [OX + x0 + 30.0, OY - 6.0, 0.0, 0.0, 0.0, 4.0, 2.0]  # parked in the other lane
    agents = Agents(boxes, np.array([TT.VEHICLE]), np.array(["p" * 16]), np.ones((frames, 1), bool))
    if red_connector is None:
        lights = TrafficLights.empty(frames)
    else:
        lights = TrafficLights(np.array([red_connector]), np.full((frames, 1), TrafficLightStatus.RED, np.int8))
    return Scene("log", "tok", "fixture-town", np.array(["f"] * frames), stamps, EgoStates(states, stamps),
                 agents, lights, route, ci)  # fmt: skip


@pytest.fixture(scope="module")
def fixture_api() -> MapAPI:
    return MapAPI.from_data(build_fixture_map())


def test_build_v1_on_fixture_map(fixture_api):
    cache = build_metric_cache(_scene(20.0, 5.0, ("2", "103", "4")), fixture_api, None, "v1", simulate=_simulate)
    assert cache.agent_boxes.shape == (51, 1, 7) and cache.agent_valid.all()
    ids = dict(zip(cache.map_ids.tolist(), cache.map_layers.tolist(), strict=True))
    assert ids["2"] == SemanticMapLayer.ROADBLOCK and ids["21"] == SemanticMapLayer.LANE
    assert ids["121"] == SemanticMapLayer.LANE_CONNECTOR
    assert {"21", "22", "121", "122", "41", "42"} <= set(cache.route_lane_ids.tolist())
    assert np.abs(cache.centerline[:, 1] - (OY - 2.0)).max() < 1e-6
    assert cache.history_states.shape == (14, 11) and cache.red_mask.shape == (41, 0)
    np.testing.assert_allclose(cache.human_trajectory[:, 0], np.arange(1, 9) * 2.5)
    out = score_states(cache, cache.human_states[None])
    assert out["no_at_fault_collisions"][0] == 1.0 and out["drivable_area_compliance"][0] == 1.0
    assert out["progress_m"][0] == pytest.approx(20.0) and out["score"][0] == pytest.approx(1.0)


def test_build_v2_red_light_and_reference_planner(fixture_api):
    scene = _scene(-40.0, 8.0, ("1", "101", "2"), red_connector="111")

    def stop_planner(scene, map_api):  # the reference stays put
        return np.zeros((8, 3))

    cache = build_metric_cache(scene, fixture_api, stop_planner, "v2", simulate=_simulate)
    assert cache.red_connector_ids.tolist() == ["111"] and cache.red_mask.all()
    assert cache.agent_boxes.shape[0] == 41
    assert cache.reference_states[:, 0] == pytest.approx(OX - 40.0)
    drive = cache.human_states[None]  # 32 m: reaches the red connector at x = -10
    raw = score_states(cache, drive, "v2", apply_human_filter=False)
    assert raw["traffic_light_compliance"][0] == 0.0 and raw["score"][0] == 0.0
    filtered = score_states(cache, drive, "v2")  # the human ran the red light as well: TLC lifted to 1
    assert filtered["traffic_light_compliance"][0] == 1.0


def test_save_load_round_trip(tmp_path: Path, fixture_api):
    cache = build_metric_cache(_scene(20.0, 5.0, ("2", "103", "4")), fixture_api, None, "v2", simulate=_simulate)
    path = cache.save(tmp_path / "sub" / "tok.npz")
    assert path.exists() and not list(path.parent.glob(".*tmp"))
    back = MetricCache.load(path)
    for name in ("agent_boxes", "map_ids", "route_lane_ids", "centerline", "human_states", "history_states"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cache, name))
    np.testing.assert_array_equal(back.map_grid.cell_polys, cache.map_grid.cell_polys)
    assert back.token == cache.token and back.version == "v2"
    states = np.stack([cache.human_states, cache.reference_states])
    a, b = score_states(cache, states, "v2"), score_states(back, states, "v2")
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)  # EC is NaN without a previous plan
    assert set(back.polygons(SemanticMapLayer.LANE)) >= {"21", "22"}


def test_load_errors(tmp_path: Path, fixture_api):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(MetricCacheError, match="bad.npz"):
        MetricCache.load(bad)
    cache = build_metric_cache(_scene(20.0, 5.0, ("2", "103", "4")), fixture_api, None, "v1", simulate=_simulate)
    path = cache.save(tmp_path / "c.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = f'"format_version": {CACHE_FORMAT_VERSION}'
    assert meta in str(arrays["meta"])
    arrays["meta"] = np.array(str(arrays["meta"]).replace(meta, '"format_version": 1'))
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(MetricCacheVersionError, match="format version 1"):
        MetricCache.load(tmp_path / "old.npz")
    with pytest.raises(MetricCacheError, match="unknown metric cache version"):
        build_metric_cache(_scene(20.0, 5.0, ("2",)), fixture_api, None, "v3", simulate=_simulate)


def test_reference_poses_from_planner_and_resampling(fixture_api):
    scene = _scene(20.0, 5.0, ("2", "103", "4"))
    fine = np.zeros((40, 3))
    fine[:, 0] = np.arange(1, 41) * 0.1 * 3.0  # 3 m/s at 10 Hz

    class Fine:
        name = "fine"

        def plan(self, observation):
            assert observation.log is scene and observation.map_api is fixture_api
            return Trajectory(fine, interval_s=0.1)

    poses = reference_poses(Fine(), scene, fixture_api)
    np.testing.assert_allclose(poses[:, 0], np.arange(1, 9) * 1.5)
    np.testing.assert_allclose(reference_poses(lambda s, m: fine[4::5], scene, fixture_api), fine[4::5])
    with pytest.raises(MetricCacheError, match="NaN"):
        reference_poses(lambda s, m: np.full((8, 3), np.nan), scene, fixture_api)


def test_map_context_is_the_scene_cache_map(fixture_api):
    scene = _scene(20.0, 5.0, ("2", "103", "4"))
    cache = build_metric_cache(scene, fixture_api, None, "v1", simulate=_simulate)
    center = rear_axle_to_center(scene.current_ego[:3])[:2]
    ctx = MapContext.build(fixture_api, center)
    assert ctx.map_api is fixture_api and ctx.radius == MAP_RADIUS and ctx.center is not center
    np.testing.assert_array_equal(ctx.ids, cache.map_ids)
    np.testing.assert_array_equal(ctx.layers, cache.map_layers)
    np.testing.assert_array_equal(ctx.grid.cell_polys, cache.map_grid.cell_polys)
    near = MapContext.build(fixture_api, center, 5.0)
    assert "2" in set(near.ids.tolist()) and set(near.ids.tolist()) < set(ctx.ids.tolist())


def test_observation_metric_cache_holds_the_step(fixture_api):
    """From one observation: the forecast boxes of the agents valid now, red connectors held red, placeholders."""
    scene = _scene(-40.0, 8.0, ("1", "101", "2"), red_connector="111")
    obs = Observation.from_window(scene, None, fixture_api)
    state = obs.current_state
    forecast = np.repeat(scene.agents.boxes[scene.current_index][None], OBSERVATION_STEPS["v1"], axis=0)
    route_ids = fixture_api.route_roadblock_ids(scene.route_roadblock_ids)
    lanes = fixture_api.route_lane_ids(route_ids)
    line = np.asarray(fixture_api.route_centerline(route_ids, state[:3]), dtype=np.float64)
    ctx = MapContext.build(fixture_api, rear_axle_to_center(state[:3])[:2])
    cache = build_observation_metric_cache(obs, line, lanes, forecast, ["111"], ctx)
    cache.validate()
    assert cache.token == "pdm_closed" and cache.version == "v1" and cache.map_name == "fixture-town"
    assert cache.agent_boxes is forecast and cache.agent_valid.shape == (51, 1) and cache.agent_valid.all()
    assert cache.agent_track_ids.tolist() == ["p" * 16] and cache.agent_types.dtype == np.int64
    assert cache.red_connector_ids.tolist() == ["111"] and cache.red_mask.shape == (41, 1) and cache.red_mask.all()
    assert cache.red_polygons.num_polygons == 1 and cache.map_grid is ctx.grid
    assert cache.route_lane_ids.tolist() == sorted(lanes) and cache.centerline_s[-1] > 0
    np.testing.assert_array_equal(cache.reference_states, np.repeat(state[None], 41, axis=0))
    assert cache.human_trajectory.shape == (8, 3) and cache.history_states.shape == (0, 11)
    # a plan into the red connector fails traffic-light compliance, one that stops short passes
    states = np.zeros((2, 41, 11))
    states[:, :, StateIndex.Y] = OY - 2.0
    states[0, :, StateIndex.X] = OX - 40.0 + np.arange(41) * 0.8  # 32 m: past x = -10
    states[1, :, StateIndex.X] = OX - 40.0
    out = score_states(cache, states, "v2", apply_human_filter=False)
    assert out["traffic_light_compliance"].tolist() == [0.0, 1.0]


def test_centre_line_is_pdm_closeds_from_navsims_starting_lane(fixture_api):
    """Rear axle off the map, nearer lane 12 (1.0 m) than lane 11 (1.02 m), its centre inside lane 11: the centre line
    starts on lane 11 (NAVSIM's starting lane) and keeps the joint of lanes 11 and 111 twice."""
    scene = _scene(-40.0, 8.0, ("1", "101", "2"))
    scene.ego.states[scene.current_index, :3] = [OX - 61.0, OY - 4.2, 0.6]
    cache = build_metric_cache(scene, fixture_api, None, "v1", simulate=_simulate)
    np.testing.assert_allclose(cache.centerline[0], [OX - 60.0, OY - 2.0])
    np.testing.assert_array_equal(cache.centerline[50], cache.centerline[51])
    np.testing.assert_allclose(cache.centerline[50], [OX - 10.0, OY - 2.0])
    assert len(cache.centerline) == 51 + 21 + 41 and cache.centerline_s[-1] == pytest.approx(110.0)
