"""MapAPI over the fixture map: lane graph semantics, polygons, spatial queries, drivable area."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely

from simulation.maps.api import MapAPI
from simulation.maps.errors import MapError, UnknownLocationError, UnknownMapObjectError
from simulation.maps.layers import MapData, SemanticMapLayer
from simulation.maps.testing import FIXTURE_LOCATION, FIXTURE_ORIGIN, build_fixture_map, write_fixture_maps

O = np.array(FIXTURE_ORIGIN)


@pytest.fixture(scope="module")
def api() -> MapAPI:
    return MapAPI.from_data(build_fixture_map())


def test_lane_graph_edges_follow_exit_upstream_entry_downstream(api: MapAPI) -> None:
    assert api.lanes["11"].outgoing_ids == ("111", "113")
    assert api.lanes["11"].incoming_ids == ()
    assert api.lanes["21"].incoming_ids == ("111",) and api.lanes["21"].outgoing_ids == ("121",)
    c = api.lane_connectors["113"]
    assert c.incoming_ids == ("11",) and c.outgoing_ids == ("31",)
    assert c.roadblock_id == "102" and c.turn_type == 1 and c.has_traffic_light and c.intersection_id == "201"
    assert not api.lane_connectors["121"].has_traffic_light and api.lane_connectors["121"].intersection_id is None


def test_lane_neighbours_by_index(api: MapAPI) -> None:
    left, right = api.lanes["11"], api.lanes["12"]
    assert (left.index, right.index) == (0, 1)
    assert left.left_neighbor_id is None and left.right_neighbor_id == "12"
    assert right.left_neighbor_id == "11" and right.right_neighbor_id is None
    assert left.roadblock_id == "1"


def test_roadblocks_and_connectors(api: MapAPI) -> None:
    rb = api.roadblocks
    assert (
        rb["1"].interior_ids == ("11", "12") and rb["1"].outgoing_ids == ("101", "102") and rb["1"].incoming_ids == ()
    )
    assert rb["2"].incoming_ids == ("101",) and rb["2"].outgoing_ids == ("103",)
    rbc = api.roadblock_connectors["101"]
    assert rbc.interior_ids == ("111", "112") and rbc.incoming_ids == ("1",) and rbc.outgoing_ids == ("2",)
    assert rbc.polygon.area == pytest.approx(160.0)


def test_baselines_boundaries_speed(api: MapAPI) -> None:
    lane = api.lanes["11"]
    assert lane.baseline.dtype == np.float64 and lane.baseline.shape == (51, 2)
    np.testing.assert_allclose(lane.baseline[[0, -1]] - O, [[-60.0, -2.0], [-10.0, -2.0]])
    np.testing.assert_allclose(lane.left_boundary[:, 1] - O[1], 0.0, atol=1e-9)  # left of eastbound = north
    np.testing.assert_allclose(lane.right_boundary[:, 1] - O[1], -4.0, atol=1e-9)
    assert lane.speed_limit_mps == pytest.approx(13.4) and api.lanes["31"].speed_limit_mps is None
    turn = api.lane_connectors["113"]
    radius_left = np.hypot(*(turn.left_boundary - (O + [-10.0, 10.0])).T)
    np.testing.assert_allclose(radius_left, 10.0, atol=2e-3)  # the left side of a left turn is the inner side


def test_polygons_per_layer(api: MapAPI) -> None:
    assert set(api.polygons(SemanticMapLayer.LANE)) == {"11", "12", "21", "22", "31", "32", "41", "42"}
    assert api.polygons(SemanticMapLayer.INTERSECTION)["201"].area == pytest.approx(400.0)
    assert set(api.polygons(SemanticMapLayer.WALKWAYS)) == {"501", "502"}
    assert set(api.polygons(SemanticMapLayer.CARPARK_AREA)) == {"601"}
    assert set(api.polygons(SemanticMapLayer.STOP_LINE)) == {"401"}
    assert set(api.polygons(SemanticMapLayer.CROSSWALK)) == {"301"}
    assert set(api.polygons(SemanticMapLayer.ROADBLOCK_CONNECTOR)) == {"101", "102", "103"}
    assert api.lane_connector_polygon("111").area == pytest.approx(80.0)
    with pytest.raises(UnknownMapObjectError, match="999"):
        api.lane_connector_polygon("999")
    with pytest.raises(MapError, match="SPEED_BUMP"):
        api.polygons(SemanticMapLayer.SPEED_BUMP)


def test_proximal_ids_hand_computed(api: MapAPI) -> None:
    layers = [SemanticMapLayer.LANE, SemanticMapLayer.LANE_CONNECTOR, SemanticMapLayer.INTERSECTION]
    near = api.proximal_ids(O, 3.0, layers)
    # connector 111 contains the origin, the left-turn ring (radius 10..14 about (-10, 10)) is 0.14 m away,
    # 112 (y in [-8, -4]) is 4 m away, the nearest lanes 10 m away
    assert near[SemanticMapLayer.LANE_CONNECTOR] == ["111", "113"]
    assert near[SemanticMapLayer.LANE] == [] and near[SemanticMapLayer.INTERSECTION] == ["201"]
    # lanes 11, 21, 31 touch the junction square (10 m); 12, 22, 32 are sqrt(10^2 + 4^2) = 10.77 m away
    assert sorted(api.proximal_ids(O, 10.5, [SemanticMapLayer.LANE])[SemanticMapLayer.LANE]) == ["11", "21", "31"]
    wider = api.proximal_ids(O, 10.8, [SemanticMapLayer.LANE])
    assert sorted(wider[SemanticMapLayer.LANE]) == ["11", "12", "21", "22", "31", "32"]


def test_query_polygons(api: MapAPI) -> None:
    probe = shapely.box(O[0] + 13.0, O[1] - 1.0, O[0] + 14.0, O[1] + 1.0)
    assert api.query_polygons(SemanticMapLayer.CROSSWALK, probe) == ["301"]
    assert api.query_polygons(SemanticMapLayer.WALKWAYS, probe) == ["502"]
    assert api.query_polygons(SemanticMapLayer.LANE, probe) == ["21"]


def test_drivable_area_union_and_point_test(api: MapAPI) -> None:
    # within 15 m of the junction centre: three road segments (400 + 352 + 400) and the intersection (400)
    assert api.drivable_area(O, 15.0).area == pytest.approx(1552.0)
    assert api.drivable_area(O + [500.0, 500.0], 5.0).is_empty
    pts = O + np.array([[0, 0], [-30, -4], [-30, 5], [30, -20], [28, -12], [200, 0], [-10, -4]])
    np.testing.assert_array_equal(api.is_in_drivable_area(pts), [True, True, False, True, True, False, True])
    assert api.is_in_drivable_area(np.zeros((0, 2))).shape == (0,)


def test_red_light_polygons(api: MapAPI) -> None:
    polys = api.red_light_polygons(["111", 113, "nope", "11"])
    assert len(polys) == 2 and polys[0].equals(api.lane_connectors["111"].polygon)


def test_connector_polygon_fallback_without_width_layer() -> None:
    data = build_fixture_map()
    layers = {k: v for k, v in data.layers.items() if k != "gen_lane_connectors_scaled_width_polygons"}
    api = MapAPI.from_data(MapData(data.location, data.version, data.crs, layers, data.meta))
    assert api.lane_connectors["111"].polygon.area == pytest.approx(80.0)


def test_missing_baseline_is_a_typed_error() -> None:
    data = build_fixture_map()
    base = data.layers["baseline_paths"]
    keep = base.fids != 1011
    layer = type(base)(base.fids[keep], base.geometries[keep], {k: v[keep] for k, v in base.columns.items()})
    with pytest.raises(MapError, match="lane 11 has no baseline"):
        MapAPI.from_data(MapData(data.location, data.version, data.crs, {**data.layers, "baseline_paths": layer}))


def test_load_is_cached_per_root_and_location(tmp_path: Path) -> None:
    write_fixture_maps(tmp_path)
    first = MapAPI.load(tmp_path, FIXTURE_LOCATION)
    assert MapAPI.load(str(tmp_path), FIXTURE_LOCATION) is first
    assert set(first.lanes) == {"11", "12", "21", "22", "31", "32", "41", "42"}
    with pytest.raises(UnknownLocationError, match=FIXTURE_LOCATION):
        MapAPI.load(tmp_path, "atlantis")


def test_load_reprojects_wgs84_map(tmp_path: Path) -> None:
    write_fixture_maps(tmp_path, storage_crs="EPSG:4326")
    api = MapAPI.load(tmp_path, FIXTURE_LOCATION)
    np.testing.assert_allclose(api.lanes["11"].baseline[0] - O, [-60.0, -2.0], atol=1e-6)


def test_drivable_area_keeps_pieces_whose_fids_repeat_across_layers() -> None:
    data = build_fixture_map()
    carpark = data.layers["carpark_areas"]
    clash = type(carpark)(np.array([701]), carpark.geometries, carpark.columns)  # 701 is also a road segment
    api = MapAPI.from_data(MapData(data.location, data.version, data.crs, {**data.layers, "carpark_areas": clash}))
    pieces = api.polygons(SemanticMapLayer.DRIVABLE_AREA)
    assert "701" in pieces and "carpark_areas:701" in pieces
    assert api.is_in_drivable_area(O[None] + [[30.0, -20.0]])[0]
