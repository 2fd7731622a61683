"""A tiny but complete nuPlan-style map for tests: :func:`build_fixture_map`.

Local layout (metres, before the UTM ``origin`` shift; one-way roads, lanes 4 m wide, lane index 0 = leftmost)::

                 RB 3 (northbound, x in [0, 8], y in [10, 60]); lanes 31 (x=2), 32 (x=6)
                   |
    RB 1 ---- junction 201 ---- RB 2 ---- RBC 103 ---- RB 4
    x in [-60, -10]   [-10, 10]^2   x in [10, 50]   [50, 54]   x in [54, 100]
    eastbound, y in [-8, 0]; lanes x1 (y=-2, index 0) and x2 (y=-6, index 1) for roadblock x

Roadblock connectors: 101 (1 -> 2, straight connectors 111: 11->21 and 112: 12->22), 102 (1 -> 3, left turn
113: 11->31, a quarter circle of radius 12 about (-10, 10)), 103 (2 -> 4, connectors 121: 21->41, 122: 22->42).
Connectors 111-113 have a traffic light (stop polygon 401 at x in [-12, -10]). Crosswalk 301 at x in [12, 16] on
RB 2, walkways 501/502 north of RB 1/RB 2, carpark 601 south of RB 2 reached by generic drivable area 801, road
segments 701-704. Lanes of RB 3 have no speed limit. Every fid is unique over all layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString, box

from simulation.maps.gpkg import map_file_path, write_map, write_maps_json
from simulation.maps.layers import MapData, StopLineType, VectorLayer

FIXTURE_LOCATION = "fixture-town"
FIXTURE_VERSION = "1.0.0"
FIXTURE_CRS = "EPSG:32611"
#: UTM 11N offset of the local layout (inside the Las Vegas area).
FIXTURE_ORIGIN = (664_000.0, 3_999_000.0)
#: Turn types used by the fixture (``turn_type_fid``).
TURN_STRAIGHT, TURN_LEFT = 0, 1
_HALF = 2.0  # half lane width


def _layer(rows: list[tuple[int, Any, dict[str, Any]]], names: tuple[str, ...]) -> VectorLayer:
    """A layer from ``(fid, geometry, values)`` rows; int columns without NULL become int64, floats float64."""
    fids = np.array([r[0] for r in rows], dtype=np.int64)
    geoms = np.empty(len(rows), dtype=object)
    geoms[:] = [r[1] for r in rows]
    columns: dict[str, np.ndarray] = {}
    for name in names:
        values = [r[2].get(name) for r in rows]
        if values and all(isinstance(v, int) for v in values):
            columns[name] = np.array(values, dtype=np.int64)
        elif values and all(isinstance(v, float) for v in values):
            columns[name] = np.array(values, dtype=np.float64)
        else:
            columns[name] = np.empty(len(values), dtype=object)
            columns[name][:] = values
    return VectorLayer(fids, geoms, columns)


def _straight(a: tuple[float, float], b: tuple[float, float], step: float = 1.0) -> np.ndarray:
    n = max(2, int(round(np.hypot(b[0] - a[0], b[1] - a[1]) / step)) + 1)
    return np.linspace(a, b, n)


def _left_turn() -> np.ndarray:
    theta = np.linspace(-np.pi / 2.0, 0.0, 25)
    return np.column_stack([-10.0 + 12.0 * np.cos(theta), 10.0 + 12.0 * np.sin(theta)])


#: Lane baselines: ``fid -> (roadblock, index, (N, 2) centre line)``.
_LANES = {
    11: (1, 0, _straight((-60.0, -2.0), (-10.0, -2.0))),
    12: (1, 1, _straight((-60.0, -6.0), (-10.0, -6.0))),
    21: (2, 0, _straight((10.0, -2.0), (50.0, -2.0))),
    22: (2, 1, _straight((10.0, -6.0), (50.0, -6.0))),
    31: (3, 0, _straight((2.0, 10.0), (2.0, 60.0))),
    32: (3, 1, _straight((6.0, 10.0), (6.0, 60.0))),
    41: (4, 0, _straight((54.0, -2.0), (100.0, -2.0))),
    42: (4, 1, _straight((54.0, -6.0), (100.0, -6.0))),
}
#: Connectors: ``fid -> (exit lane, entry lane, roadblock connector, intersection or None, turn type, centre line)``.
_CONNECTORS = {
    111: (11, 21, 101, 201, TURN_STRAIGHT, _straight((-10.0, -2.0), (10.0, -2.0))),
    112: (12, 22, 101, 201, TURN_STRAIGHT, _straight((-10.0, -6.0), (10.0, -6.0))),
    113: (11, 31, 102, 201, TURN_LEFT, _left_turn()),
    121: (21, 41, 103, None, TURN_STRAIGHT, _straight((50.0, -2.0), (54.0, -2.0))),
    122: (22, 42, 103, None, TURN_STRAIGHT, _straight((50.0, -6.0), (54.0, -6.0))),
}
#: Roadblocks ``fid -> polygon`` and roadblock connectors ``fid -> (from, to, intersection or None)``.
_ROADBLOCKS = {
    1: box(-60.0, -8.0, -10.0, 0.0),
    2: box(10.0, -8.0, 50.0, 0.0),
    3: box(0.0, 10.0, 8.0, 60.0),
    4: box(54.0, -8.0, 100.0, 0.0),
}
_ROADBLOCK_CONNECTORS = {101: (1, 2, 201), 102: (1, 3, 201), 103: (2, 4, None)}
_SPEED = {1: 13.4, 2: 13.4, 3: None, 4: 20.0}


def _boundaries() -> tuple[dict[int, np.ndarray], dict[int, tuple[int, int]]]:
    """Boundary lines ``fid -> (N, 2)`` and ``lane/connector fid -> (left, right)`` boundary fids."""
    lines: dict[int, np.ndarray] = {}
    sides: dict[int, tuple[int, int]] = {}
    for fid, centre in [(f, v[2]) for f, v in _LANES.items()] + [(f, v[5]) for f, v in _CONNECTORS.items()]:
        line = LineString(centre)
        pair = []
        for sign in (1.0, -1.0):  # shapely: positive offset = left side
            bid = 900 + len(lines)
            lines[bid] = shapely.get_coordinates(line.offset_curve(sign * _HALF))
            pair.append(bid)
        sides[fid] = (pair[0], pair[1])
    return lines, sides


def _graph_layers(boundary_of: dict[int, tuple[int, int]]) -> dict[str, VectorLayer]:
    """Lanes, connectors, roadblocks, roadblock connectors and baselines; ``boundary_of``: path fid -> (left,
    right) boundary fids."""
    return {
        "lanes_polygons": _lane_layer(boundary_of),
        "lane_connectors": _connector_layer(boundary_of),
        "lane_groups_polygons": _layer(
            [(k, p, {"road_segment_fid": 700 + k, "num_lanes": 2}) for k, p in _ROADBLOCKS.items()],
            ("road_segment_fid", "num_lanes"),
        ),
        "lane_group_connectors": _roadblock_connector_layer(),
        "gen_lane_connectors_scaled_width_polygons": _layer(
            [
                (1100 + fid, LineString(v[5]).buffer(_HALF, cap_style="flat"), {"lane_connector_fid": fid})
                for fid, v in _CONNECTORS.items()
            ],
            ("lane_connector_fid",),
        ),
        "baseline_paths": _layer(
            [(1000 + fid, LineString(v[2]), {"lane_fid": fid, "lane_connector_fid": None}) for fid, v in _LANES.items()]
            + [
                (1000 + fid, LineString(v[5]), {"lane_fid": None, "lane_connector_fid": fid})
                for fid, v in _CONNECTORS.items()
            ],
            ("lane_fid", "lane_connector_fid"),
        ),
    }


def _lane_layer(boundary_of: dict[int, tuple[int, int]]) -> VectorLayer:
    """``lanes_polygons``: each lane's baseline buffered to the lane width."""
    lanes = [
        (
            fid,
            LineString(c).buffer(_HALF, cap_style="flat"),
            {
                "lane_fid": fid,
                "lane_group_fid": rb,
                "lane_index": idx,
                "left_boundary_fid": boundary_of[fid][0],
                "right_boundary_fid": boundary_of[fid][1],
                "speed_limit_mps": _SPEED[rb],
                "from_edge_fid": 700 + rb,
                "to_edge_fid": 700 + rb,
            },
        )
        for fid, (rb, idx, c) in _LANES.items()
    ]
    return _layer(lanes, tuple(lanes[0][2]))


def _connector_layer(boundary_of: dict[int, tuple[int, int]]) -> VectorLayer:
    """``lane_connectors``: the connectors' baselines and links."""
    conns = [
        (
            fid,
            LineString(c),
            {
                "exit_lane_fid": a,
                "entry_lane_fid": b,
                "lane_group_connector_fid": rbc,
                "intersection_fid": inter,
                "turn_type_fid": turn,
                "traffic_light_stop_line_fids": "401" if inter is not None else "",
                "speed_limit_mps": 10.0,
                "left_boundary_fid": boundary_of[fid][0],
                "right_boundary_fid": boundary_of[fid][1],
            },
        )
        for fid, (a, b, rbc, inter, turn, c) in _CONNECTORS.items()
    ]
    return _layer(conns, tuple(conns[0][2]))


def _roadblock_connector_layer() -> VectorLayer:
    """``lane_group_connectors``: each the union of its connectors' polygons."""
    rbc_polys = {
        k: shapely.union_all(
            [LineString(v[5]).buffer(_HALF, cap_style="flat") for v in _CONNECTORS.values() if v[2] == k]
        )
        for k in _ROADBLOCK_CONNECTORS
    }
    return _layer(
        [
            (k, rbc_polys[k], {"from_lane_group_fid": a, "to_lane_group_fid": b, "intersection_fid": i})
            for k, (a, b, i) in _ROADBLOCK_CONNECTORS.items()
        ],
        ("from_lane_group_fid", "to_lane_group_fid", "intersection_fid"),
    )


def _area_layers(boundaries: dict[int, np.ndarray]) -> dict[str, VectorLayer]:
    stop = {
        "stop_polygon_type_fid": int(StopLineType.TRAFFIC_LIGHT),
        "lane_fids": "11,12",
        "lane_connector_fids": "111,112,113",
    }
    return {
        "boundaries": _layer(
            [(k, LineString(v), {"boundary_type_fid": 2}) for k, v in boundaries.items()], ("boundary_type_fid",)
        ),
        "intersections": _layer(
            [(201, box(-10.0, -10.0, 10.0, 10.0), {"intersection_type_fid": 2})], ("intersection_type_fid",)
        ),
        "crosswalks": _layer([(301, box(12.0, -8.0, 16.0, 0.0), {"intersection_fid": 201})], ("intersection_fid",)),
        "stop_polygons": _layer([(401, box(-12.0, -8.0, -10.0, 0.0), stop)], tuple(stop)),
        "walkways": _layer([(501, box(-60.0, 0.0, -10.0, 3.0), {}), (502, box(10.0, 0.0, 50.0, 3.0), {})], ()),
        "carpark_areas": _layer([(601, box(20.0, -30.0, 40.0, -14.0), {"heading": 0.0})], ("heading",)),
        "generic_drivable_areas": _layer([(801, box(26.0, -14.0, 30.0, -8.0), {})], ()),
        "road_segments": _layer(
            [
                (701, box(-60.0, -8.0, -10.0, 0.0), {}),
                (702, box(10.0, -8.0, 54.0, 0.0), {}),
                (703, box(0.0, 10.0, 8.0, 60.0), {}),
                (704, box(54.0, -8.0, 100.0, 0.0), {}),
            ],
            (),
        ),
    }


def build_fixture_map(
    origin: tuple[float, float] = FIXTURE_ORIGIN,
    crs: str = FIXTURE_CRS,
    location: str = FIXTURE_LOCATION,
    version: str = FIXTURE_VERSION,
) -> MapData:
    """The fixture map (layout in the module docstring), shifted by ``origin`` ``(2,)`` metres."""
    lines, sides = _boundaries()
    layers = {**_graph_layers(sides), **_area_layers(lines)}
    shift = np.asarray(origin, dtype=np.float64)
    for layer in layers.values():
        if len(layer):
            layer.geometries = np.asarray(shapely.transform(layer.geometries, lambda xy: xy + shift), dtype=object)
    meta = {"projectedCoordSystem": crs, "generator": "diffplan map fixture"}
    return MapData(location=location, version=version, crs=crs, layers=layers, meta=meta)


def write_fixture_maps(maps_root: str | Path, storage_crs: str | None = None, **kwargs: Any) -> Path:
    """Write the fixture map and the maps JSON under ``maps_root``; returns the ``map.gpkg`` path.

    ``kwargs`` go to :func:`build_fixture_map`; ``storage_crs`` to :func:`~simulation.maps.gpkg.write_map`.
    """
    data = build_fixture_map(**kwargs)
    path = write_map(data, map_file_path(maps_root, data.location, data.version), storage_crs=storage_crs)
    write_maps_json(maps_root, {data.location: data.version})
    return path
