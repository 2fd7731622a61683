"""Golden pixel tests of the BEV rasteriser (default layout: 0.25 m/px, rear axle at column 128, row 192)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon, box

from simulation.geometry import agent_box_corners
from simulation.maps.api import MapAPI
from simulation.maps.layers import SemanticMapLayer
from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map
from simulation.protocols import Observation
from simulation.render import (
    CHANNELS,
    DEFAULT_RASTER,
    RasterConfig,
    RenderError,
    ego_to_pixel,
    history_indices,
    map_geometry,
    pixel_to_ego,
    render_bev,
    render_observation,
    render_raster,
)
from simulation.types import (
    AgentIndex,
    Agents,
    EgoStates,
    Scene,
    TrackedObjectType,
    TrafficLights,
    TrafficLightStatus,
)

CFG = DEFAULT_RASTER
EGO = np.zeros(3)
NO_BOXES = np.zeros((0, 7))
NO_TYPES = np.zeros(0, np.int64)


@dataclass
class _Lane:
    id: str
    polygon: Polygon
    baseline: np.ndarray
    left_boundary: np.ndarray
    right_boundary: np.ndarray
    roadblock_id: str


class _ToyMap:
    """The part of the MapAPI the rasteriser uses, over hand-placed geometry (global = ego frame at EGO)."""

    map_name = "toy"

    def __init__(self) -> None:
        # a straight lane along +x, 3 m wide, y in [-1.5, 1.5], x in [0, 20]; on roadblock "rb1"
        self.lanes = {"1": self._lane("1", 0.0, 20.0, "rb1")}
        # a connector from x = 20 to 30 (roadblock connector "rbc1"), the one with the traffic light
        self.lane_connectors = {"2": self._lane("2", 20.0, 30.0, "rbc1")}
        # a lane on another roadblock, off the route: x in [-10, 0]
        self.lanes["3"] = self._lane("3", -10.0, 0.0, "rb9")
        # crosswalk: x in [10, 12.5], y in [-2.5, 0]
        self.crosswalks = {"4": box(10.0, -2.5, 12.5, 0.0)}
        # drivable area: x in [-10, 30], y in [-5, 5] with a 2.5 m square hole at x in [25, 27.5], y in [2.5, 5)
        self.area = box(-10.0, -5.0, 30.0, 5.0).difference(box(25.0, 2.5, 27.5, 5.0))

    @staticmethod
    def _lane(lane_id: str, x0: float, x1: float, roadblock: str) -> _Lane:
        def line(y: float) -> np.ndarray:
            return np.array([[x0, y], [x1, y]])

        return _Lane(lane_id, box(x0, -1.5, x1, 1.5), line(0.125), line(1.5), line(-1.5), roadblock)

    def polygons(self, layer: SemanticMapLayer) -> dict[str, Polygon]:
        return dict(self.crosswalks) if layer == SemanticMapLayer.CROSSWALK else {}

    def drivable_area(self, center: np.ndarray, radius: float) -> Polygon:
        return self.area

    def route_lane_ids(self, route_ids: list[str]) -> set[str]:
        objs = list(self.lanes.values()) + list(self.lane_connectors.values())
        return {o.id for o in objs if o.roadblock_id in route_ids}


@pytest.fixture(scope="module")
def toy_map() -> _ToyMap:
    return _ToyMap()


def _box(x: float, y: float, heading: float, length: float, width: float) -> np.ndarray:
    b = np.zeros(7)
    cols = [AgentIndex.X, AgentIndex.Y, AgentIndex.HEADING, AgentIndex.LENGTH, AgentIndex.WIDTH]
    b[cols] = x, y, heading, length, width
    return b


def _plane(raster: np.ndarray, name: str) -> np.ndarray:
    return raster[CFG.channel_index(name)]


def _expected(rows: slice, cols: slice) -> np.ndarray:
    out = np.zeros((CFG.height_px, CFG.width_px), np.float32)
    out[rows, cols] = 1.0
    return out


# ---------------------------------------------------------------------------------------------- config


def test_config_layout_and_round_trip() -> None:
    assert CFG.shape == (len(CHANNELS), 256, 256)
    assert CFG.extent == (-16.0, 48.0, -32.0, 32.0)
    assert CFG.ego_pixel == (128.0, 192.0)
    assert RasterConfig.from_dict(CFG.to_dict()) == CFG
    small = RasterConfig(64, 64, 0.5, 8.0, ("drivable_area", "vehicles"))
    assert RasterConfig.from_dict(small.to_dict()) == small
    assert small.to_dict() != CFG.to_dict()


@pytest.mark.parametrize(
    "kwargs", [{"resolution_m": 0.0}, {"channels": ("lidar",)}, {"channels": ("ego", "ego")}, {"behind_m": 100.0}]
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(RenderError):
        RasterConfig(**kwargs)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(RenderError, match="RasterConfig"):
        RasterConfig.from_dict({"pixels": 3})


def test_pixel_mapping_known_points() -> None:
    pts = np.array([[0.0, 0.0], [48.0, 32.0], [-16.0, -32.0], [1.0, 0.0]])
    np.testing.assert_allclose(ego_to_pixel(pts), [[128, 192], [0, 0], [256, 256], [128, 188]])


@settings(max_examples=50, deadline=None)
@given(st.floats(-100, 100), st.floats(-100, 100))
def test_pixel_mapping_round_trip(x: float, y: float) -> None:
    p = np.array([x, y])
    np.testing.assert_allclose(pixel_to_ego(ego_to_pixel(p)), p, atol=1e-9)


# ---------------------------------------------------------------------------------------------- map channels


def test_square_crosswalk_fills_exact_pixels(toy_map: _ToyMap) -> None:
    r = render_raster(toy_map, EGO, NO_BOXES, NO_TYPES)
    # x in [10, 12.5] -> rows (192 - 50, 192 - 40) = [142, 152); y in [-2.5, 0] -> cols [128, 138)
    np.testing.assert_array_equal(_plane(r, "crosswalks"), _expected(slice(142, 152), slice(128, 138)))


def test_drivable_area_with_hole(toy_map: _ToyMap) -> None:
    plane = _plane(render_raster(toy_map, EGO, NO_BOXES, NO_TYPES), "drivable_area")
    # x in [-10, 30] -> rows [72, 232); y in [-5, 5] -> cols [108, 148); hole rows [82, 92), cols [108, 118)
    expected = _expected(slice(72, 232), slice(108, 148))
    expected[82:92, 108:118] = 0.0
    np.testing.assert_array_equal(plane, expected)


def test_centerlines_and_boundaries(toy_map: _ToyMap) -> None:
    r = render_raster(toy_map, EGO, NO_BOXES, NO_TYPES)
    centre = _plane(r, "lane_centerlines")
    # y = 0.125 is the centre of column 127; x from -10 to 30 spans rows 72 .. 232 (end points inclusive)
    assert set(np.flatnonzero(centre.any(0))) == {127}
    assert np.flatnonzero(centre[:, 127]).tolist() == list(range(72, 233))
    bounds = _plane(r, "lane_boundaries")  # lanes only: x in [-10, 20], y = +-1.5 -> u = 122 and 134 (cv2 121.5, 133.5)
    cols = np.flatnonzero(bounds.any(0))
    assert len(cols) == 2 and cols[1] - cols[0] == 12
    assert not bounds[:111].any() and bounds[112:].any()  # boundaries stop at x = 20 (row 112)


def test_route_channel(toy_map: _ToyMap) -> None:
    r = render_raster(toy_map, EGO, NO_BOXES, NO_TYPES, route_ids=("rb1", "rbc1"))
    # lanes 1 and 2: x in [0, 30] -> rows [72, 192); y in [-1.5, 1.5] -> cols [122, 134); lane 3 is off route
    np.testing.assert_array_equal(_plane(r, "route"), _expected(slice(72, 192), slice(122, 134)))
    assert not _plane(render_raster(toy_map, EGO, NO_BOXES, NO_TYPES), "route").any()


def test_red_light_connector_only_when_red(toy_map: _ToyMap) -> None:
    red = _plane(render_raster(toy_map, EGO, NO_BOXES, NO_TYPES, red_connector_ids=["2"]), "red_lights")
    np.testing.assert_array_equal(red, _expected(slice(72, 112), slice(122, 134)))
    assert not _plane(render_raster(toy_map, EGO, NO_BOXES, NO_TYPES, red_connector_ids=[]), "red_lights").any()
    assert not _plane(render_raster(toy_map, EGO, NO_BOXES, NO_TYPES, red_connector_ids=["99"]), "red_lights").any()


def test_map_geometry_is_cached(toy_map: _ToyMap) -> None:
    assert map_geometry(toy_map, 0.25) is map_geometry(toy_map, 0.25)
    assert map_geometry(toy_map, 0.5) is not map_geometry(toy_map, 0.25)


def test_map_outside_view_is_culled(toy_map: _ToyMap) -> None:
    far = np.array([1000.0, 1000.0, 0.3])
    r = render_raster(toy_map, far, NO_BOXES, NO_TYPES, red_connector_ids=["2"], route_ids=("rb1",))
    assert not np.delete(r, CFG.channel_index("ego"), axis=0).any()


# ---------------------------------------------------------------------------------------------- agents


def test_box_ahead_appears_above_centre() -> None:
    boxes = _box(20.0, 0.0, 0.0, 4.0, 2.0)[None]
    r = render_raster(None, EGO, boxes, np.array([TrackedObjectType.VEHICLE]))
    # x in [18, 22] -> rows [104, 120); y in [-1, 1] -> cols [124, 132)
    np.testing.assert_array_equal(_plane(r, "vehicles"), _expected(slice(104, 120), slice(124, 132)))
    assert not _plane(r, "pedestrians").any() and not _plane(r, "static_objects").any()


def test_rotation_by_90_degrees() -> None:
    ego = np.array([5.0, -3.0, np.pi / 2])  # ego faces global +y
    boxes = np.stack([_box(5.0, 17.0, np.pi / 2, 4.0, 2.0), _box(25.0, -3.0, 0.0, 4.0, 2.0)])
    types = np.array([TrackedObjectType.VEHICLE, TrackedObjectType.PEDESTRIAN])
    r = render_raster(None, ego, boxes, types)
    # 20 m along global +y = straight ahead: same pixels as the unrotated box ahead
    np.testing.assert_array_equal(_plane(r, "vehicles"), _expected(slice(104, 120), slice(124, 132)))
    # 20 m along global +x = 20 m to the right (ego y = -20): cols [200, 216), rows [188, 196)
    np.testing.assert_array_equal(_plane(r, "pedestrians"), _expected(slice(188, 196), slice(200, 216)))


def test_ego_channel_and_tiny_static_object() -> None:
    cone = _box(-4.0, 3.0, 0.4, 0.1, 0.1)[None]
    r = render_raster(None, EGO, cone, np.array([TrackedObjectType.TRAFFIC_CONE]))
    assert _plane(r, "static_objects").sum() >= 1
    ego = _plane(r, "ego")
    # PACIFICA: x in [-1.127, 4.049] -> rows (175.8, 196.5) -> 176..196
    #           y in [-1.1485, 1.1485] -> cols (123.4, 132.6) -> 123..132
    rows, cols = np.flatnonzero(ego.any(1)), np.flatnonzero(ego.any(0))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (176, 196, 123, 132)


def test_history_fades_with_age() -> None:
    past = np.stack([_box(4.0 * k, 10.0, 0.0, 2.0, 2.0)[None] for k in range(3)])  # (3, 1, 7), oldest first
    r = render_raster(None, EGO, NO_BOXES, NO_TYPES, history_boxes=past)
    plane = _plane(r, "history")
    # box k: x in [4k - 1, 4k + 1] -> rows [188 - 16k, 196 - 16k); y in [9, 11] -> cols [84, 92)
    for k, value in enumerate((0.25, 0.5, 0.75)):
        np.testing.assert_array_equal(plane[188 - 16 * k : 196 - 16 * k, 84:92], value)
    assert np.count_nonzero(plane) == 3 * 64
    valid = np.array([[True], [False], [True]])
    plane = _plane(render_raster(None, EGO, NO_BOXES, NO_TYPES, history_boxes=past, history_valid=valid), "history")
    assert np.count_nonzero(plane) == 2 * 64


@settings(max_examples=30, deadline=None)
@given(
    st.floats(-13, 40),
    st.floats(-25, 25),
    st.floats(-np.pi, np.pi),
    st.floats(1.0, 8.0),
    st.floats(1.0, 4.0),
)
def test_box_pixels_match_centre_sampling(x: float, y: float, heading: float, length: float, width: float) -> None:
    """Filled pixels agree with exact centre-in-box sampling except within a pixel of the outline."""
    b = _box(x, y, heading, length, width)
    plane = _plane(render_raster(None, EGO, b[None], np.array([TrackedObjectType.VEHICLE])), "vehicles") > 0
    rows, cols = np.mgrid[0 : CFG.height_px, 0 : CFG.width_px]
    centres = pixel_to_ego(np.stack([cols + 0.5, rows + 0.5], -1).reshape(-1, 2))
    poly = Polygon(agent_box_corners(b))
    pts = shapely.points(centres)
    inside = shapely.contains_xy(poly, centres[:, 0], centres[:, 1]).reshape(plane.shape)
    near = (shapely.distance(poly.exterior, pts) < CFG.resolution_m).reshape(plane.shape)
    assert not (plane ^ inside)[~near].any()
    assert plane.sum() > 0


# ---------------------------------------------------------------------------------------------- scenes and errors


def _scene(status: TrafficLightStatus) -> Scene:
    t = 4
    states = np.zeros((t, 11))
    states[:, 0] = np.arange(t) * 2.0 - 6.0  # ego drives along +x, current at x = 0
    boxes = np.zeros((t, 1, 7))
    boxes[:, 0] = _box(15.0, 0.0, 0.0, 4.0, 2.0)
    agents = Agents(boxes, np.array([TrackedObjectType.VEHICLE]), np.array(["a" * 16]), np.ones((t, 1), bool))
    lights = TrafficLights(np.array(["2"]), np.full((t, 1), status, np.int8))
    stamps = np.arange(t, dtype=np.int64) * 500_000
    return Scene(
        "log", "tok", "toy", np.array(["f"] * t), stamps, EgoStates(states, stamps), agents, lights, ("rb1",), t - 1
    )


def test_render_bev_scene(toy_map: _ToyMap) -> None:
    red = render_bev(_scene(TrafficLightStatus.RED), toy_map)
    green = render_bev(_scene(TrafficLightStatus.GREEN), toy_map)
    assert red.shape == CFG.shape and red.dtype == np.float32
    assert _plane(red, "red_lights").any() and not _plane(green, "red_lights").any()
    assert _plane(red, "vehicles")[132:136, 124:132].all()  # agent at x = 15: rows [132, 140)
    # the ego's past rear axles at x = -6, -4, -2: boxes reach rows 220, 212, 204 (newest drawn on top)
    history = _plane(red, "history")
    np.testing.assert_array_equal(history[214:221, 124:132], 0.25)
    np.testing.assert_array_equal(history[205:213, 124:132], 0.5)
    np.testing.assert_array_equal(history[196:205, 124:132], 0.75)
    assert not history[221:].any()
    np.testing.assert_array_equal(_plane(red, "route"), _expected(slice(112, 192), slice(122, 134)))
    small = RasterConfig(64, 64, 1.0, 16.0, ("route", "ego"))
    assert render_bev(_scene(TrafficLightStatus.RED), toy_map, small).shape == (2, 64, 64)


def test_history_indices_pick_half_second_frames() -> None:
    stamps = np.arange(21, dtype=np.int64) * 100_000  # 10 Hz, current = 20 (t = 2.0 s)
    assert history_indices(stamps, 20).tolist() == [5, 10, 15]
    assert history_indices(stamps, 7).tolist() == [2]
    assert history_indices(stamps, 0).tolist() == []


def test_bad_inputs_raise() -> None:
    with pytest.raises(RenderError, match="ego_pose"):
        render_raster(None, np.zeros(2), NO_BOXES, NO_TYPES)
    with pytest.raises(RenderError, match="boxes"):
        render_raster(None, EGO, np.zeros((2, 7)), np.zeros(3, np.int64))
    with pytest.raises(RenderError, match="NaN"):
        render_raster(None, EGO, np.full((1, 7), np.nan), np.zeros(1, np.int64))
    with pytest.raises(RenderError, match="history"):
        render_raster(None, EGO, NO_BOXES, NO_TYPES, history_boxes=np.zeros((2, 7)))


def test_route_is_united_then_eroded(toy_map: _ToyMap) -> None:
    geometry = map_geometry(toy_map, 0.25)
    route = geometry.route(toy_map, ("rb1", "rbc1"))
    # lane 1 and connector 2 are one area (no seam at x = 20), cut into 32 m tiles at y = 0
    assert route.num_objects == 2 and set(route.object_ids) == {"route"}
    bbox = route.object_bbox
    np.testing.assert_allclose([*bbox[:, :2].min(0), *bbox[:, 2:].max(0)], [0.125, -1.375, 29.875, 1.375])
    assert geometry.route(toy_map, ("rb1", "rbc1")) is route  # cached
    assert geometry.united("red_lights", ["2"], view=np.array([500.0, 500.0, 600.0, 600.0])).num_objects == 0


@pytest.mark.parametrize("gap", [0.0, 0.01])
@pytest.mark.parametrize("channel", ["route", "red_lights"])
@pytest.mark.parametrize("angle", [0.0, 17.0, 30.0, 45.0, 60.0, 73.0, 90.0])
def test_adjacent_lanes_leave_no_seam(angle: float, channel: str, gap: float) -> None:
    """Two side-by-side lanes (route) or connectors (both red), touching or 1 cm apart, rotated: every pixel
    inside their outline is filled, except within a pixel of the outline, and nothing farther out."""
    toy = _ToyMap()
    lanes = [toy._lane("1", 0.0, 20.0, "rb1"), toy._lane("5", 0.0, 20.0, "rb1")]
    lanes[1].polygon = box(0.0, 1.5 + gap, 20.0, 4.5)
    objects = {lane.id: lane for lane in lanes}
    toy.lanes, toy.lane_connectors = (objects, {}) if channel == "route" else ({}, objects)
    ego = np.array([3.3, 1.7, np.deg2rad(angle)])
    r = render_raster(toy, ego, NO_BOXES, NO_TYPES, red_connector_ids=["1", "5"], route_ids=("rb1",))
    plane = _plane(r, channel) > 0
    rows, cols = np.mgrid[0 : CFG.height_px, 0 : CFG.width_px]
    local = pixel_to_ego(np.stack([cols + 0.5, rows + 0.5], -1).reshape(-1, 2))
    c, s = np.cos(ego[2]), np.sin(ego[2])
    glob = np.stack([ego[0] + c * local[:, 0] - s * local[:, 1], ego[1] + s * local[:, 0] + c * local[:, 1]], -1)
    union = box(0.0, -1.5, 20.0, 4.5)
    inside = shapely.contains_xy(union, glob[:, 0], glob[:, 1]).reshape(plane.shape)
    near = (shapely.distance(union.exterior, shapely.points(glob)) < CFG.resolution_m).reshape(plane.shape)
    assert plane[inside & ~near].all()
    assert not plane[~inside & ~near].any()


def test_render_observation_matches_render_bev(toy_map: _ToyMap) -> None:
    scene = _scene(TrafficLightStatus.RED)
    obs = Observation(scene.ego, scene.agents, scene.traffic_lights, scene.route_roadblock_ids, "toy", toy_map)
    np.testing.assert_array_equal(render_observation(obs), render_bev(scene, toy_map))


# ---------------------------------------------------------------------------------------------- real MapAPI


@pytest.fixture(scope="module")
def fixture_map() -> MapAPI:
    return MapAPI.from_data(build_fixture_map())


def test_render_on_fixture_map(fixture_map: MapAPI) -> None:
    """Ego on lane 11 at local (-30, -2) facing east (UTM-sized coordinates)."""
    origin = np.array(FIXTURE_ORIGIN)
    ego = np.array([origin[0] - 30.0, origin[1] - 2.0, 0.0])
    car = _box(origin[0] - 10.0, origin[1] - 2.0, 0.0, 4.0, 2.0)[None]
    r = render_raster(fixture_map, ego, car, np.array([TrackedObjectType.VEHICLE]), ["113"], ("1", "101", "2"))
    # crosswalk 301: local x in [12, 16], y in [-8, 0] -> ego x in [42, 46], y in [-6, 2]
    #                -> rows [8, 24), cols [120, 152)
    np.testing.assert_array_equal(_plane(r, "crosswalks"), _expected(slice(8, 24), slice(120, 152)))
    np.testing.assert_array_equal(_plane(r, "vehicles"), _expected(slice(104, 120), slice(124, 132)))
    drivable = _plane(r, "drivable_area")
    assert drivable[191, 128] and drivable[150, 140] and not drivable[150, 100]  # ego, road, walkway (y = +7)
    route = _plane(r, "route")
    assert route[111, 128] and route[111, 140]  # both straight connectors through the junction (ego x = 20)
    assert not route[56, 80]  # ego (34, 12): the left-turn arm (roadblock 3) is off the route
    red = _plane(r, "red_lights")
    assert red.any() and not red[150].any()  # the left-turn connector only, inside the junction
    cols = np.flatnonzero(_plane(r, "lane_centerlines")[150])  # baselines at ego y = 0, -4: on pixel edges 128, 144
    assert len(cols) == 2 and cols[0] in (127, 128) and cols[1] - cols[0] == 16


def test_layout_names_are_the_raster_config_ones() -> None:
    """The layout lives in ``simulation.raster_config``; ``simulation.render`` hands out the same objects."""
    from simulation import raster_config, render

    for name in raster_config.__all__:
        assert getattr(render, name) is getattr(raster_config, name)
    assert raster_config.DEFAULT_RASTER.shape == (len(raster_config.CHANNELS), 256, 256)
