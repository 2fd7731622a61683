"""NAVSIM's PDM rules on the fixture map (local origin): the starting lane, the lanes' discrete paths with the map's
headings, and the discrete centre line with its lane joints kept."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.maps.api import MapAPI
from simulation.maps.errors import UnknownMapObjectError
from simulation.maps.route import discrete_path, route_discrete_path, route_edge_ids, starting_lane_id
from simulation.maps.testing import build_fixture_map

ROUTE = ["1", "101", "2", "103", "4"]
STEP = np.pi / 48.0  # the left-turn connector 113: 25 vertices on a quarter circle, one every pi / 48 of arc


@pytest.fixture(scope="module")
def api() -> MapAPI:
    return MapAPI.from_data(build_fixture_map(origin=(0.0, 0.0)))


def test_route_edges_in_route_order_each_once(api: MapAPI) -> None:
    assert route_edge_ids(api, ROUTE) == ["11", "12", "111", "112", "21", "22", "121", "122", "41", "42"]
    assert route_edge_ids(api, ["1", "102", "1", "nope", "3"]) == ["11", "12", "113", "31", "32"]


def test_discrete_path_headings_of_a_curved_connector(api: MapAPI) -> None:
    """Vertex k of the quarter circle about (-10, 10), radius 12, at angle -pi/2 + k * STEP: its chord to vertex
    k + 1 points along -pi/2 + (k + 1/2) STEP + pi/2, so heading k = (k + 1/2) STEP; the last vertex repeats the
    last chord's heading (23.5 STEP), not the tangent there (pi/2)."""
    path = discrete_path(api, "113")
    k = np.arange(25)
    theta = -np.pi / 2.0 + k * STEP
    np.testing.assert_allclose(path[:, :2], np.stack([-10.0 + 12.0 * np.cos(theta), 10.0 + 12.0 * np.sin(theta)], -1),
                               atol=1e-12)  # fmt: skip
    want = np.append((k[:-1] + 0.5) * STEP, 23.5 * STEP)
    np.testing.assert_allclose(path[:, 2], want, rtol=0.0, atol=1e-12)


def test_discrete_centerline_keeps_each_joint_twice_with_each_lanes_heading(api: MapAPI) -> None:
    """Lanes 11 -> 113 -> 31 concatenated as they are: 51 + 25 + 51 vertices; the joint (-10, -2) once with lane
    11's heading (0) and once with 113's first chord (STEP / 2); the joint (2, 10) with 113's last chord (23.5 STEP)
    and with lane 31's heading (pi / 2)."""
    states = route_discrete_path(api, ["1", "102", "3"], np.array([-30.0, -2.0, 0.0]), "11")
    assert states.shape == (51 + 25 + 51, 3)
    np.testing.assert_allclose(states[50:52], [[-10.0, -2.0, 0.0], [-10.0, -2.0, STEP / 2.0]], atol=1e-12)
    np.testing.assert_allclose(states[75:77], [[2.0, 10.0, 23.5 * STEP], [2.0, 10.0, np.pi / 2.0]], atol=1e-12)
    np.testing.assert_allclose(states[-1], [2.0, 60.0, np.pi / 2.0], atol=1e-12)


def test_starting_lane_rear_axle_on_route_lanes_smallest_vertex_heading_error(api: MapAPI) -> None:
    """(-5, -2.5) lies in connectors 111 (heading 0) and 113. 113's vertex nearest the rear axle is vertex 6 (heading
    6.5 STEP = 0.4254), while the segment the point projects on has heading 5.5 STEP = 0.3600: at an ego heading of
    0.2 the vertex rule gives errors 0.2 (111) and 0.2254 (113), so 111; a projection would pick 113."""
    route = ["1", "101", "102"]
    assert starting_lane_id(api, route, np.array([-5.0, -2.5, 0.2])) == "111"
    assert starting_lane_id(api, route, np.array([-5.0, -2.5, 0.22])) == "113"  # errors 0.22 and 0.2054
    assert starting_lane_id(api, ROUTE, np.array([-5.0, -2.5, 0.7])) == "111"  # 113 is off this route
    # (-10, -2) is on the edge of lane 11's polygon and of 111's (both intersect the point), the last vertex of 11
    # and the first of 111, both with heading 0: a tie at any ego heading, the first in route order wins
    assert starting_lane_id(api, route, np.array([-10.0, -2.0, 0.05])) == "11"
    assert starting_lane_id(api, ["101", "1"], np.array([-10.0, -2.0, 0.05])) == "111"


def test_starting_lane_centre_inside_a_route_lane(api: MapAPI) -> None:
    """Rear axle (-61, -4.2) off the map, 1.0 m from lane 12 and 1.02 m from lane 11; the centre (1.461 m ahead at
    0.6 rad: (-59.79, -3.38)) lies in lane 11."""
    assert starting_lane_id(api, ROUTE, np.array([-61.0, -4.2, 0.6])) == "11"


def test_starting_lane_nearest_to_the_footprint_first_on_ties(api: MapAPI) -> None:
    # rear axle 3.0 m from lane 11 and 3.16 m from lane 12, the footprint 1.07 m from 11 and 0.14 m from 12
    assert starting_lane_id(api, ROUTE, np.array([-63.0, -3.0, -1.1])) == "12"
    # rear axle 1.0 m from 12 and 1.12 m from 11, centre outside both, the footprint touches both: route order
    assert starting_lane_id(api, ROUTE, np.array([-61.0, -4.5, -2.0])) == "11"


def test_starting_lane_needs_a_route_lane(api: MapAPI) -> None:
    with pytest.raises(UnknownMapObjectError):
        starting_lane_id(api, ["999"], np.array([0.0, 0.0, 0.0]))
