"""``MapProtocol``: what the rest of the house asks of a map object.

Planners, scorers, the renderer, the closed loop and BEV-Warp receive a map as an object (``map_api``). This
protocol names the members they use: the lane graph by id, polygon layers, spatial queries and route
helpers. :class:`~simulation.maps.api.MapAPI` satisfies it (checked by mypy below); a test double needs only
the members the code under test calls.

Everything is in the map's projected metric CRS; ids are strings (``str(fid)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from shapely.geometry.base import BaseGeometry

from simulation.maps.layers import SemanticMapLayer
from simulation.maps.objects import Lane, LaneConnector, LaneGraphEdge, Roadblock, RoadblockConnector

__all__ = ["MapProtocol"]


@runtime_checkable
class MapProtocol(Protocol):
    """A map: lane graph, polygon layers, spatial queries and routes.

    Attributes (read-only):
        map_name: the map location.
        lanes, lane_connectors, roadblocks, roadblock_connectors: ``id -> object``.
    """

    @property
    def map_name(self) -> str: ...

    @property
    def lanes(self) -> Mapping[str, Lane]: ...

    @property
    def lane_connectors(self) -> Mapping[str, LaneConnector]: ...

    @property
    def roadblocks(self) -> Mapping[str, Roadblock]: ...

    @property
    def roadblock_connectors(self) -> Mapping[str, RoadblockConnector]: ...

    def lane_edge(self, object_id: str) -> LaneGraphEdge:
        """The lane or lane connector with this id (raises ``UnknownMapObjectError``)."""
        ...

    def lane_connector_polygon(self, connector_id: str) -> BaseGeometry:
        """Polygon of a lane connector (raises ``UnknownMapObjectError``)."""
        ...

    def polygons(self, layer: SemanticMapLayer) -> Mapping[str, BaseGeometry]:
        """``id -> geometry`` of one layer."""
        ...

    def proximal_ids(
        self, point: np.ndarray, radius: float, layers: Iterable[SemanticMapLayer]
    ) -> Mapping[SemanticMapLayer, list[str]]:
        """Ids of each layer's objects within ``radius`` metres of ``point`` ``(2,)``."""
        ...

    def drivable_area(self, center: np.ndarray, radius: float) -> BaseGeometry:
        """Union of the drivable polygons within ``radius`` metres of ``center`` ``(2,)``."""
        ...

    def route_roadblock_ids(self, ids: Iterable[str | int]) -> list[str]:
        """The route's roadblock (connector) ids with gaps filled."""
        ...

    def route_lane_ids(self, route_ids: Iterable[str | int]) -> set[str]:
        """Lanes and lane connectors inside the route's roadblocks and roadblock connectors."""
        ...

    def route_centerline(self, route_ids: Sequence[str | int], start_pose: np.ndarray) -> np.ndarray:
        """``(N, 2)`` centre line along the route from the lane nearest ``start_pose`` ``(3,)``."""
        ...

    def nearest_lane_id(self, pose: np.ndarray, route_ids: Sequence[str | int] | None = None) -> str:
        """Lane or lane connector nearest ``pose`` ``(3,)``, optionally within a route."""
        ...


if TYPE_CHECKING:
    from simulation.maps.api import MapAPI

    def _map_api_is_a_map(api: MapAPI) -> MapProtocol:
        """mypy fails here if :class:`MapAPI` stops satisfying :class:`MapProtocol`."""
        return api
