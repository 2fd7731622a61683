"""In-memory form of a nuPlan GeoPackage map: the contract between the map reader/writer,
the map API and the synthetic city generator.

A map is a set of vector layers named as in nuPlan's ``map.gpkg`` (``lanes_polygons``,
``lane_groups_polygons``, ``lane_connectors``, ...). Each layer is a table of features: integer
``fid``, one shapely geometry per feature (in the map's projected metric CRS) and named columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class SemanticMapLayer(IntEnum):
    """nuPlan's ``SemanticMapLayer`` ids."""

    LANE = 0
    INTERSECTION = 1
    STOP_LINE = 2
    TURN_STOP = 3
    CROSSWALK = 4
    DRIVABLE_AREA = 5
    YIELD = 6
    TRAFFIC_LIGHT = 7
    STOP_SIGN = 8
    EXTENDED_PUDO = 9
    SPEED_BUMP = 10
    LANE_CONNECTOR = 11
    BASELINE_PATHS = 12
    BOUNDARIES = 13
    WALKWAYS = 14
    CARPARK_AREA = 15
    PUDO = 16
    ROADBLOCK = 17
    ROADBLOCK_CONNECTOR = 18


class StopLineType(IntEnum):
    PED_CROSSING = 0
    STOP_SIGN = 1
    TRAFFIC_LIGHT = 2
    TURN_STOP = 3
    YIELD = 4
    UNKNOWN = 5


#: SemanticMapLayer -> GeoPackage layer name (nuPlan's mapping).
LAYER_NAMES: dict[SemanticMapLayer, str] = {
    SemanticMapLayer.LANE: "lanes_polygons",
    SemanticMapLayer.ROADBLOCK: "lane_groups_polygons",
    SemanticMapLayer.INTERSECTION: "intersections",
    SemanticMapLayer.STOP_LINE: "stop_polygons",
    SemanticMapLayer.CROSSWALK: "crosswalks",
    SemanticMapLayer.LANE_CONNECTOR: "lane_connectors",
    SemanticMapLayer.ROADBLOCK_CONNECTOR: "lane_group_connectors",
    SemanticMapLayer.BASELINE_PATHS: "baseline_paths",
    SemanticMapLayer.BOUNDARIES: "boundaries",
    SemanticMapLayer.WALKWAYS: "walkways",
    SemanticMapLayer.CARPARK_AREA: "carpark_areas",
}

#: The GeoPackage layers diffplan reads and writes (``meta`` is the key/value table).
GPKG_LAYERS = (
    "lanes_polygons",
    "lane_groups_polygons",
    "lane_connectors",
    "lane_group_connectors",
    "baseline_paths",
    "boundaries",
    "intersections",
    "crosswalks",
    "walkways",
    "carpark_areas",
    "stop_polygons",
    "generic_drivable_areas",
    "road_segments",
    "gen_lane_connectors_scaled_width_polygons",
)

#: Layers whose union is the drivable area (nuPlan synthesises DRIVABLE_AREA from these).
DRIVABLE_AREA_LAYERS = ("road_segments", "intersections", "generic_drivable_areas", "carpark_areas")

#: nuPlan's map version string and the maps JSON file name.
MAPS_VERSION = "nuplan-maps-v1.0"


@dataclass
class VectorLayer:
    """One GeoPackage feature table.

    Attributes:
        fids: ``(N,)`` int64 feature ids (nuPlan map object ids are ``str(fid)``).
        geometries: ``(N,)`` object array of shapely geometries, in the map's metric CRS.
        columns: column name -> ``(N,)`` array (int64, float64 with NaN for NULL, or object for text/NULL).
    """

    fids: np.ndarray
    geometries: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.fids.shape[0])


@dataclass
class MapData:
    """A whole map: location, version, CRS and its vector layers.

    Attributes:
        location: e.g. ``us-nv-las-vegas-strip`` or ``synth-town-0``.
        version: map version folder, e.g. ``9.15.1915``.
        crs: projected metric CRS (``meta.projectedCoordSystem``), e.g. ``EPSG:32611``.
        layers: GPKG layer name -> :class:`VectorLayer`.
        meta: the remaining ``meta`` key/value rows.
    """

    location: str
    version: str
    crs: str
    layers: dict[str, VectorLayer]
    meta: dict[str, str] = field(default_factory=dict)
