"""Does a log fit the map it names? Checked where a log's map is loaded, before anything is scored.

A log names its map by location only (nuPlan's ``log.map_version``). Two checks catch a log read against the
wrong map (another city's maps root, another release of the map):

* the map version, when the log records one (diffplan's synthetic logs do; nuPlan's logs do not, and their
  maps are versioned ``9.12.1964`` and so on): it must equal the loaded map's version;
* for any log and map: the ego's first pose lies within :data:`MAX_OFF_MAP_M` of a drivable area or a lane.
"""

from __future__ import annotations

import numpy as np

from simulation.maps.api import MapAPI
from simulation.maps.errors import LogMapMismatchError
from simulation.maps.layers import SemanticMapLayer

#: How far (m) the ego's first pose may lie from the nearest drivable area or lane of the log's map.
MAX_OFF_MAP_M = 20.0
#: The layers a log's first pose must be near.
NEAR_LAYERS = (SemanticMapLayer.DRIVABLE_AREA, SemanticMapLayer.LANE, SemanticMapLayer.LANE_CONNECTOR)


def near_map(map_api: MapAPI, xy: np.ndarray, radius: float) -> bool:
    """Whether ``xy`` ``(2,)`` lies within ``radius`` m of a drivable-area polygon or a lane / lane connector."""
    point = np.asarray(xy, dtype=np.float64).reshape(-1)[:2]
    return any(map_api.proximal_ids(point, radius, NEAR_LAYERS).values())


def check_log_fits_map(
    log_name: str, log_map_version: str, first_xy: np.ndarray, map_api: MapAPI, max_distance_m: float = MAX_OFF_MAP_M
) -> None:
    """Raise :class:`LogMapMismatchError` (naming the log and the map) when the log does not fit ``map_api``.

    Args:
        log_name: the log, for the message.
        log_map_version: the map version the log records (``""``: unknown, not checked).
        first_xy: ``(2,)`` global position of the ego at the log's first frame.
        map_api: the map loaded for the log.
        max_distance_m: how far from a drivable area or a lane the ego may start.
    """
    name, version = map_api.map_name, map_api.data.version
    if log_map_version and log_map_version != version:
        raise LogMapMismatchError(
            f"log {log_name} was recorded on map {name} version {log_map_version}, but the maps root holds "
            f"{name} version {version} (point maps_root at the maps generated with this log)"
        )
    xy = np.asarray(first_xy, dtype=np.float64).reshape(-1)[:2]
    if not np.isfinite(xy).all() or not near_map(map_api, xy, max_distance_m):
        raise LogMapMismatchError(
            f"log {log_name}: the ego's first position ({xy[0]:.1f}, {xy[1]:.1f}) is more than {max_distance_m:g} m "
            f"from every lane and drivable area of map {name} version {version}: the log does not fit this map"
        )
