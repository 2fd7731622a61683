"""Turn a synthetic :class:`~simulation.datasets.synthetic.network.Town` into nuPlan GeoPackage layers."""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString

from simulation.datasets.synthetic.network import Path, Town
from simulation.maps.layers import MapData, StopLineType, VectorLayer

#: Map version of the synthetic towns of seed 0; a seed's towns have version ``1.0.<seed>``
#: (:func:`synth_map_version`), so logs of one city never silently read the maps of another.
SYNTH_MAP_VERSION = "1.0.0"
#: UTM zone 11N (the Las Vegas zone); towns are placed at plausible coordinates inside it.
SYNTH_CRS = "EPSG:32611"


def town_origin(town_index: int) -> np.ndarray:
    """``(2,)`` UTM offset of town ``k`` (towns 5 km apart)."""
    return np.array([600_000.0 + 5_000.0 * (town_index % 10), 4_000_000.0 + 5_000.0 * (town_index // 10)])


def synth_map_version(seed: int) -> str:
    """Map version of the towns generated with ``seed`` (recorded in the map's ``meta`` table and in its logs)."""
    return f"1.0.{int(seed)}"


def location_name(town_index: int) -> str:
    return f"synth-town-{town_index}"


def _layer(rows: list[tuple[int, Any, dict[str, Any]]], names: list[str]) -> VectorLayer:
    """A layer from ``(fid, geometry, columns)`` rows; ``names`` fixes the columns (and their order)."""
    rows = sorted(rows, key=lambda r: r[0])
    fids = np.array([r[0] for r in rows], dtype=np.int64)
    geoms = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        geoms[i] = r[1]
    columns: dict[str, np.ndarray] = {}
    for name in names:
        vals = [r[2].get(name) for r in rows]
        if all(isinstance(v, (int, np.integer)) for v in vals) and vals:
            columns[name] = np.array(vals, dtype=np.int64)
        elif all(isinstance(v, (float, int, np.number)) for v in vals) and vals:
            columns[name] = np.array(vals, dtype=np.float64)
        else:
            columns[name] = np.array(vals, dtype=object)
    return VectorLayer(fids, geoms, columns)


def _shift(geom: Any, origin: np.ndarray) -> Any:
    return shapely.transform(geom, lambda xy: xy + origin)


def _line(points: np.ndarray, origin: np.ndarray) -> LineString:
    return LineString(points + origin)


def town_to_map(town: Town, town_index: int, version: str = SYNTH_MAP_VERSION) -> MapData:
    """Build the :class:`MapData` of a town (geometry shifted to its UTM origin) with map version ``version``."""
    o = town_origin(town_index)
    lanes = [p for p in town.paths.values() if not p.is_connector]
    layers: dict[str, VectorLayer] = {}
    layers["lanes_polygons"] = _layer(
        [
            (
                p.fid,
                _shift(p.polygon, o),
                {
                    "lane_fid": p.fid,
                    "lane_group_fid": p.roadblock,
                    "lane_index": p.index,
                    "left_boundary_fid": p.left_boundary,
                    "right_boundary_fid": p.right_boundary,
                    "speed_limit_mps": p.speed_limit,
                    "from_edge_fid": town.blocks[p.roadblock].start_junction,
                    "to_edge_fid": town.blocks[p.roadblock].junction,
                    "width": p.width,
                },
            )
            for p in lanes
        ],
        [
            "lane_fid",
            "lane_group_fid",
            "lane_index",
            "left_boundary_fid",
            "right_boundary_fid",
            "speed_limit_mps",
            "from_edge_fid",
            "to_edge_fid",
            "width",
        ],
    )
    layers.update(_connector_layers(town, o))
    layers.update(_other_layers(town, o))
    meta = {"projectedCoordSystem": SYNTH_CRS, "version": version, "generator": "diffplan synthetic city"}
    return MapData(location_name(town_index), version, SYNTH_CRS, layers, meta)


def _connector_layers(town: Town, o: np.ndarray) -> dict[str, VectorLayer]:
    """Roadblocks, lane connectors (lines and polygons) and roadblock connectors."""
    conns = [p for p in town.paths.values() if p.is_connector]
    return {
        "lane_groups_polygons": _roadblock_layer(town, o),
        "lane_connectors": _lane_connector_layer(conns, o),
        "gen_lane_connectors_scaled_width_polygons": _layer(
            [(c.fid + 1_000_000_000, _shift(c.polygon, o), {"lane_connector_fid": c.fid}) for c in conns],
            ["lane_connector_fid"],
        ),
        "lane_group_connectors": _roadblock_connector_layer(town, o),
    }


def _roadblock_layer(town: Town, o: np.ndarray) -> VectorLayer:
    """``lane_groups_polygons``: the roadblocks."""
    blocks = [b for b in town.blocks.values() if not b.is_connector]
    return _layer(
        [
            (
                b.fid,
                _shift(b.polygon, o),
                {
                    "road_segment_fid": b.road,
                    "from_edge_fid": b.start_junction,
                    "to_edge_fid": b.junction,
                    "left_boundary_fid": town.paths[b.paths[0]].left_boundary,
                    "right_boundary_fid": town.paths[b.paths[-1]].right_boundary,
                    "num_lanes": len(b.paths),
                },
            )
            for b in blocks
        ],
        ["road_segment_fid", "from_edge_fid", "to_edge_fid", "left_boundary_fid", "right_boundary_fid", "num_lanes"],
    )


def _lane_connector_layer(conns: list[Path], o: np.ndarray) -> VectorLayer:
    """``lane_connectors``: baselines of the lane connectors ``conns`` and their links."""
    return _layer(
        [
            (
                c.fid,
                _line(c.centre, o),
                {
                    "exit_lane_fid": c.incoming[0],
                    "entry_lane_fid": c.outgoing[0],
                    "lane_group_connector_fid": c.roadblock,
                    "intersection_fid": c.junction,
                    "turn_type_fid": c.turn_type,
                    "traffic_light_stop_line_fids": str(c.stop_fid) if c.stop_fid >= 0 else "",
                    "speed_limit_mps": c.speed_limit,
                    "left_boundary_fid": c.left_boundary,
                    "right_boundary_fid": c.right_boundary,
                },
            )
            for c in conns
        ],
        [
            "exit_lane_fid",
            "entry_lane_fid",
            "lane_group_connector_fid",
            "intersection_fid",
            "turn_type_fid",
            "traffic_light_stop_line_fids",
            "speed_limit_mps",
            "left_boundary_fid",
            "right_boundary_fid",
        ],
    )


def _roadblock_connector_layer(town: Town, o: np.ndarray) -> VectorLayer:
    """``lane_group_connectors``: the roadblock connectors."""
    rbcs = [b for b in town.blocks.values() if b.is_connector]
    return _layer(
        [
            (
                b.fid,
                _shift(b.polygon, o),
                {
                    "from_lane_group_fid": b.incoming[0],
                    "to_lane_group_fid": b.outgoing[0],
                    "intersection_fid": b.junction,
                    "left_boundary_fid": town.paths[b.paths[0]].left_boundary,
                    "right_boundary_fid": town.paths[b.paths[-1]].right_boundary,
                },
            )
            for b in rbcs
        ],
        ["from_lane_group_fid", "to_lane_group_fid", "intersection_fid", "left_boundary_fid", "right_boundary_fid"],
    )


def _other_layers(town: Town, o: np.ndarray) -> dict[str, VectorLayer]:
    """Baselines, boundaries, intersections, crosswalks, walkways, carparks, stop polygons, roads."""
    paths = list(town.paths.values())
    out = {}
    out["baseline_paths"] = _layer(
        [
            (
                p.fid + 2_000_000_000,
                _line(p.centre, o),
                {
                    "lane_fid": None if p.is_connector else p.fid,
                    "lane_connector_fid": p.fid if p.is_connector else None,
                },
            )
            for p in paths
        ],
        ["lane_fid", "lane_connector_fid"],
    )
    out["boundaries"] = _layer(
        [(f, _line(pts, o), {"boundary_type_fid": 2}) for f, pts in town.boundaries.items()], ["boundary_type_fid"]
    )
    out["intersections"] = _layer(
        [
            (j.fid, _shift(j.polygon, o), {"intersection_type_fid": 2 if j.has_lights else 0, "is_part_of_pudo": 0})
            for j in town.junctions.values()
        ],
        ["intersection_type_fid", "is_part_of_pudo"],
    )
    out["crosswalks"] = _layer(
        [(f, _shift(p, o), {"intersection_fid": j}) for f, (p, j) in town.crosswalks.items()], ["intersection_fid"]
    )
    out["walkways"] = _layer([(f, _shift(p, o), {}) for f, p in town.walkways.items()], [])
    out["carpark_areas"] = _layer(
        [(f, _shift(p, o), {"heading": h}) for f, (p, h) in town.carparks.items()], ["heading"]
    )
    out["stop_polygons"] = _layer(
        [
            (
                f,
                _shift(p, o),
                {
                    "stop_polygon_type_fid": int(StopLineType.TRAFFIC_LIGHT),
                    "lane_fids": ",".join(map(str, lanes)),
                    "lane_connector_fids": ",".join(map(str, cons)),
                },
            )
            for f, (p, lanes, cons) in town.stop_polygons.items()
        ],
        ["stop_polygon_type_fid", "lane_fids", "lane_connector_fids"],
    )
    out["road_segments"] = _layer([(f, _shift(p, o), {}) for f, p in town.road_segments.items()], [])
    out["generic_drivable_areas"] = _layer([], [])
    return out
