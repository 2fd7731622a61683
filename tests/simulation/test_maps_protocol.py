"""``MapProtocol``: the concrete ``MapAPI`` satisfies it, and a call through the protocol type behaves as MapAPI."""

from __future__ import annotations

import numpy as np

from simulation.maps import MapProtocol
from simulation.maps.api import MapAPI
from simulation.maps.layers import SemanticMapLayer
from simulation.maps.testing import FIXTURE_LOCATION, FIXTURE_ORIGIN, build_fixture_map


def _route_lanes(map_api: MapProtocol) -> set[str]:
    return map_api.route_lane_ids(map_api.route_roadblock_ids(["1", "2"]))


def test_map_api_satisfies_the_protocol() -> None:
    api: MapProtocol = MapAPI.from_data(build_fixture_map())
    assert isinstance(api, MapProtocol)
    assert api.map_name == FIXTURE_LOCATION
    # roadblocks 1 -> 2 are joined by connector 101 (lanes 11, 12, connectors 111, 112, lanes 21, 22)
    assert _route_lanes(api) == {"11", "12", "111", "112", "21", "22"}
    near = api.proximal_ids(np.asarray(FIXTURE_ORIGIN) + [-30.0, -2.0], 1.0, [SemanticMapLayer.LANE])
    assert near[SemanticMapLayer.LANE] == ["11"]  # the eastbound lane of roadblock 1 at y = -2


def test_an_object_missing_members_is_not_a_map() -> None:
    class LanesOnly:
        map_name = "partial"
        lanes: dict[str, object] = {}

    assert not isinstance(LanesOnly(), MapProtocol)
