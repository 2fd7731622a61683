"""Routes on the fixture map: BFS gap repair, route lanes, centre line continuity, nearest lane."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.geometry import polyline_headings
from simulation.maps.api import MapAPI
from simulation.maps.errors import UnknownMapObjectError
from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map

O = np.array(FIXTURE_ORIGIN)


@pytest.fixture(scope="module")
def api() -> MapAPI:
    return MapAPI.from_data(build_fixture_map())


def _pose(x: float, y: float, heading: float = 0.0) -> np.ndarray:
    return np.array([O[0] + x, O[1] + y, heading])


def test_connected_route_is_unchanged(api: MapAPI) -> None:
    assert api.route_roadblock_ids(["1", "101", "2", "103", "4"]) == ["1", "101", "2", "103", "4"]


def test_gap_repair_inserts_shortest_chain(api: MapAPI) -> None:
    assert api.route_roadblock_ids(["1", "2"]) == ["1", "101", "2"]
    assert api.route_roadblock_ids(["1", "4"]) == ["1", "101", "2", "103", "4"]
    assert api.route_roadblock_ids([1, 3]) == ["1", "102", "3"]
    assert api.route_roadblock_ids(["101", "4"]) == ["101", "2", "103", "4"]


def test_repair_drops_unknown_and_repeats_and_keeps_unreachable(api: MapAPI) -> None:
    assert api.route_roadblock_ids(["1", "1", "999", "2", "2"]) == ["1", "101", "2"]
    assert api.route_roadblock_ids(["3", "4"]) == ["3", "4"]  # no path from 3 to 4: kept as given
    assert api.route_roadblock_ids([]) == []


def test_route_lane_ids(api: MapAPI) -> None:
    assert api.route_lane_ids(["1", "101", "2"]) == {"11", "12", "111", "112", "21", "22"}
    assert api.route_lane_ids(["1", "nope"]) == {"11", "12"}


def test_nearest_lane_uses_heading_on_ties(api: MapAPI) -> None:
    # (-5, -2.5) lies in straight connector 111 and in left-turn connector 113
    assert api.nearest_lane_id(_pose(-5.0, -2.5, 0.0)) == "111"
    assert api.nearest_lane_id(_pose(-5.0, -2.5, 0.7)) == "113"
    assert api.nearest_lane_id(_pose(-30.0, -6.5)) == "12"
    assert api.nearest_lane_id(_pose(-30.0, 30.0)) == "11"  # off the map: the closest polygon


def test_nearest_lane_within_route(api: MapAPI) -> None:
    assert api.nearest_lane_id(_pose(-5.0, -2.5, 0.7), ["1", "101", "2"]) == "111"
    assert api.nearest_lane_id(_pose(30.0, -2.0), ["4"]) == "41"
    with pytest.raises(UnknownMapObjectError):
        api.nearest_lane_id(_pose(0.0, 0.0), ["999"])


def _assert_continuous(line: np.ndarray, max_step: float) -> None:
    steps = np.linalg.norm(np.diff(line, axis=0), axis=1)
    assert line.dtype == np.float64 and line.shape[1] == 2
    assert steps.min() > 1e-3 and steps.max() <= max_step + 1e-9


def test_centerline_straight_through_repaired_route(api: MapAPI) -> None:
    line = api.route_centerline(["1", "4"], _pose(-30.0, -2.5, 0.1))
    np.testing.assert_allclose(line[[0, -1]] - O, [[-60.0, -2.0], [100.0, -2.0]])
    np.testing.assert_allclose(line[:, 1] - O[1], -2.0)
    _assert_continuous(line, 1.0)
    assert np.all(np.diff(line[:, 0]) > 0)
    assert len(line) == 161  # 160 m sampled every metre, joints not duplicated


def test_centerline_follows_the_left_turn(api: MapAPI) -> None:
    line = api.route_centerline(["1", "102", "3"], _pose(-30.0, -2.0))
    np.testing.assert_allclose(line[[0, -1]] - O, [[-60.0, -2.0], [2.0, 60.0]])
    _assert_continuous(line, 1.0)
    heading_change = np.abs(np.diff(np.unwrap(polyline_headings(line))))
    assert heading_change.max() < 0.1  # no kinks at the joints


def test_centerline_changes_lane_to_keep_the_route(api: MapAPI) -> None:
    # the ego is on lane 12, but only lane 11 turns left into roadblock 3
    line = api.route_centerline(["1", "3"], _pose(-30.0, -6.0))
    np.testing.assert_allclose(line[[0, -1]] - O, [[-60.0, -2.0], [2.0, 60.0]])
    # without a turn in the route the ego's own lane is kept
    straight = api.route_centerline(["1", "2"], _pose(-30.0, -6.0))
    np.testing.assert_allclose(straight[[0, -1]] - O, [[-60.0, -6.0], [50.0, -6.0]])


def test_centerline_starting_inside_a_connector(api: MapAPI) -> None:
    line = api.route_centerline(["101", "2", "103", "4"], _pose(0.0, -6.0))
    np.testing.assert_allclose(line[[0, -1]] - O, [[-10.0, -6.0], [100.0, -6.0]])
    _assert_continuous(line, 1.0)
