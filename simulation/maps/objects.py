"""Map objects of the lane graph (lanes, lane connectors, roadblocks, roadblock connectors) built from a MapData.

Graph semantics follow nuPlan: a lane connector goes from its ``exit_lane_fid`` (upstream lane) to its
``entry_lane_fid`` (downstream lane); a lane's outgoing edges are the connectors leaving it. Lane index 0 is the
leftmost lane of its roadblock; neighbours are index -1 (left) and +1 (right). Ids are ``str(fid)``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString
from shapely.geometry.base import BaseGeometry

from simulation.maps.errors import MapError, MissingLayerError
from simulation.maps.layers import MapData, VectorLayer

#: Half width (m) of a lane connector polygon when the map has no connector polygon for it.
DEFAULT_CONNECTOR_HALF_WIDTH = 2.0


@dataclass(frozen=True, eq=False)
class LaneGraphEdge:
    """What lanes and lane connectors share.

    Attributes:
        id: ``str(fid)``.
        polygon: the object's area (shapely Polygon).
        baseline: ``(N, 2)`` float64 centre line in driving direction.
        left_boundary, right_boundary: ``(M, 2)`` float64 boundary lines.
        speed_limit_mps: speed limit, ``None`` when the map has none.
        roadblock_id: the roadblock (lanes) or roadblock connector (lane connectors) holding it.
        incoming_ids, outgoing_ids: upstream / downstream neighbours in the lane graph.
    """

    id: str
    polygon: BaseGeometry
    baseline: np.ndarray
    left_boundary: np.ndarray
    right_boundary: np.ndarray
    speed_limit_mps: float | None
    roadblock_id: str
    incoming_ids: tuple[str, ...]
    outgoing_ids: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Lane(LaneGraphEdge):
    """A lane; ``index`` 0 is the leftmost lane of its roadblock."""

    index: int
    left_neighbor_id: str | None
    right_neighbor_id: str | None


@dataclass(frozen=True, eq=False)
class LaneConnector(LaneGraphEdge):
    """A lane connector (usually inside an intersection); outgoing / incoming hold one lane each."""

    has_traffic_light: bool
    turn_type: int
    intersection_id: str | None = None


@dataclass(frozen=True, eq=False)
class Roadblock:
    """A roadblock (``lane_groups_polygons``) or roadblock connector (``lane_group_connectors``).

    Attributes:
        interior_ids: its lanes (sorted by lane index) or lane connectors.
        incoming_ids, outgoing_ids: neighbouring roadblock connectors (for a roadblock) or roadblocks.
    """

    id: str
    polygon: BaseGeometry
    interior_ids: tuple[str, ...]
    incoming_ids: tuple[str, ...]
    outgoing_ids: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class RoadblockConnector(Roadblock):
    """A roadblock connector: ``incoming_ids`` / ``outgoing_ids`` hold one roadblock each."""


def to_id(value: Any) -> str | None:
    """``str(fid)`` of a column value (int, integral float or text); ``None`` for NULL / NaN / blank."""
    if value is None:
        return None
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value).strip()
    return text or None


def _column(layer: VectorLayer, name: str) -> list[Any]:
    values = layer.columns.get(name)
    return [None] * len(layer) if values is None else list(values.tolist())


def _coordinate_arrays(geometries: np.ndarray) -> list[np.ndarray]:
    """``(N_i, 2)`` float64 coordinates of each geometry, extracted in one call."""
    if len(geometries) == 0:
        return []
    coords = shapely.get_coordinates(geometries)
    counts = shapely.get_num_coordinates(geometries)
    return np.split(coords.astype(np.float64), np.cumsum(counts)[:-1])


def _lines_by_key(layer: VectorLayer | None, key_columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``id -> (N, 2)`` coordinates of a line layer, keyed by the first non-NULL of ``key_columns`` (or fid)."""
    if layer is None or len(layer) == 0:
        return {}
    coords = _coordinate_arrays(layer.geometries)
    keys: list[str | None] = [str(int(f)) for f in layer.fids] if not key_columns else [None] * len(layer)
    for name in key_columns:
        keys = [k if k is not None else to_id(v) for k, v in zip(keys, _column(layer, name))]
    return {k: c for k, c in zip(keys, coords) if k is not None}


def _speed(value: Any) -> float | None:
    """Speed limit of a column value (number or text); ``None`` for NULL, NaN or non-numeric text."""
    try:
        speed = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(speed) else speed


def _side_lines(polygon: BaseGeometry, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left / right boundary estimated by offsetting the baseline by the polygon's mean half width."""
    line = LineString(baseline)
    half = float(polygon.area) / max(float(line.length), 1e-6) / 2.0 if polygon is not None else 0.0
    half = half if half > 0.0 else DEFAULT_CONNECTOR_HALF_WIDTH
    left = shapely.get_coordinates(line.offset_curve(half))
    right = shapely.get_coordinates(line.offset_curve(-half))
    return left, right


class _Edges:
    """Shared inputs of the lane and connector builders."""

    def __init__(self, data: MapData) -> None:
        self.name = data.location
        for needed in ("lanes_polygons", "lane_connectors", "baseline_paths"):
            if needed not in data.layers:
                raise MissingLayerError(f"map {self.name}: missing required layer {needed}")
        self.baselines = _lines_by_key(data.layers["baseline_paths"], ("lane_fid", "lane_connector_fid"))
        self.boundaries = _lines_by_key(data.layers.get("boundaries"), ())
        conns = data.layers["lane_connectors"]
        self.conn_ids = [str(int(f)) for f in conns.fids]
        self.exit = [to_id(v) for v in _column(conns, "exit_lane_fid")]
        self.entry = [to_id(v) for v in _column(conns, "entry_lane_fid")]
        self.out_of: dict[str, list[str]] = defaultdict(list)
        self.into: dict[str, list[str]] = defaultdict(list)
        for cid, a, b in zip(self.conn_ids, self.exit, self.entry):
            if a is not None:
                self.out_of[a].append(cid)
            if b is not None:
                self.into[b].append(cid)

    def baseline(self, kind: str, oid: str) -> np.ndarray:
        line = self.baselines.get(oid)
        if line is None or len(line) < 2:
            raise MapError(f"map {self.name}: {kind} {oid} has no baseline path")
        return line

    def sides(
        self, polygon: BaseGeometry, baseline: np.ndarray, left: Any, right: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        lb, rb = self.boundaries.get(to_id(left) or ""), self.boundaries.get(to_id(right) or "")
        if lb is None or rb is None:
            est_l, est_r = _side_lines(polygon, baseline)
            lb = est_l if lb is None else lb
            rb = est_r if rb is None else rb
        return lb, rb


def build_lanes(data: MapData, edges: _Edges) -> dict[str, Lane]:
    """``id -> Lane`` of ``lanes_polygons``."""
    layer = data.layers["lanes_polygons"]
    ids = [str(int(f)) for f in layer.fids]
    groups = [to_id(v) or "" for v in _column(layer, "lane_group_fid")]
    index = [int(v) if to_id(v) is not None else 0 for v in _column(layer, "lane_index")]
    slot = {(g, i): lid for lid, g, i in zip(ids, groups, index)}
    left_b, right_b = _column(layer, "left_boundary_fid"), _column(layer, "right_boundary_fid")
    speeds = _column(layer, "speed_limit_mps")
    lanes: dict[str, Lane] = {}
    for k, lid in enumerate(ids):
        polygon = layer.geometries[k]
        baseline = edges.baseline("lane", lid)
        left, right = edges.sides(polygon, baseline, left_b[k], right_b[k])
        lanes[lid] = Lane(
            id=lid,
            polygon=polygon,
            baseline=baseline,
            left_boundary=left,
            right_boundary=right,
            speed_limit_mps=_speed(speeds[k]),
            roadblock_id=groups[k],
            incoming_ids=tuple(edges.into.get(lid, ())),
            outgoing_ids=tuple(edges.out_of.get(lid, ())),
            index=index[k],
            left_neighbor_id=slot.get((groups[k], index[k] - 1)),
            right_neighbor_id=slot.get((groups[k], index[k] + 1)),
        )
    return lanes


def _connector_polygons(data: MapData, edges: _Edges) -> dict[str, BaseGeometry]:
    layer = data.layers.get("gen_lane_connectors_scaled_width_polygons")
    polys: dict[str, BaseGeometry] = {}
    if layer is not None:
        for key, geom in zip(_column(layer, "lane_connector_fid"), layer.geometries):
            cid = to_id(key)
            if cid is not None:
                polys[cid] = geom
    for cid in edges.conn_ids:
        if cid not in polys:
            line = LineString(edges.baseline("lane connector", cid))
            polys[cid] = line.buffer(DEFAULT_CONNECTOR_HALF_WIDTH, cap_style="flat")
    return polys


def build_lane_connectors(data: MapData, edges: _Edges) -> dict[str, LaneConnector]:
    """``id -> LaneConnector`` of ``lane_connectors`` (polygons from ``gen_lane_connectors_scaled_width_polygons``)."""
    layer = data.layers["lane_connectors"]
    polys = _connector_polygons(data, edges)
    blocks = [to_id(v) or "" for v in _column(layer, "lane_group_connector_fid")]
    lights = [to_id(v) is not None for v in _column(layer, "traffic_light_stop_line_fids")]
    turns = [int(v) if to_id(v) is not None else -1 for v in _column(layer, "turn_type_fid")]
    inters = [to_id(v) for v in _column(layer, "intersection_fid")]
    left_b, right_b = _column(layer, "left_boundary_fid"), _column(layer, "right_boundary_fid")
    speeds = _column(layer, "speed_limit_mps")
    out: dict[str, LaneConnector] = {}
    for k, cid in enumerate(edges.conn_ids):
        baseline = edges.baseline("lane connector", cid)
        left, right = edges.sides(polys[cid], baseline, left_b[k], right_b[k])
        a, b = edges.exit[k], edges.entry[k]
        out[cid] = LaneConnector(
            id=cid,
            polygon=polys[cid],
            baseline=baseline,
            left_boundary=left,
            right_boundary=right,
            speed_limit_mps=_speed(speeds[k]),
            roadblock_id=blocks[k],
            incoming_ids=() if a is None else (a,),
            outgoing_ids=() if b is None else (b,),
            has_traffic_light=lights[k],
            turn_type=turns[k],
            intersection_id=inters[k],
        )
    return out


def build_roadblocks(
    data: MapData, lanes: dict[str, Lane], connectors: dict[str, LaneConnector]
) -> tuple[dict[str, Roadblock], dict[str, RoadblockConnector]]:
    """Roadblocks (``lane_groups_polygons``) and roadblock connectors (``lane_group_connectors``)."""
    rbc = data.layers.get("lane_group_connectors") or VectorLayer(np.zeros(0, np.int64), np.zeros(0, object))
    rbc_ids = [str(int(f)) for f in rbc.fids]
    src = [to_id(v) for v in _column(rbc, "from_lane_group_fid")]
    dst = [to_id(v) for v in _column(rbc, "to_lane_group_fid")]
    into: dict[str, list[str]] = defaultdict(list)
    out_of: dict[str, list[str]] = defaultdict(list)
    for cid, a, b in zip(rbc_ids, src, dst):
        if a is not None:
            out_of[a].append(cid)
        if b is not None:
            into[b].append(cid)
    lanes_of: dict[str, list[Lane]] = defaultdict(list)
    for lane in lanes.values():
        lanes_of[lane.roadblock_id].append(lane)
    conns_of: dict[str, list[str]] = defaultdict(list)
    for conn in connectors.values():
        conns_of[conn.roadblock_id].append(conn.id)
    rb = data.layers.get("lane_groups_polygons")
    blocks: dict[str, Roadblock] = {}
    for fid, geom in zip(rb.fids if rb is not None else [], rb.geometries if rb is not None else []):
        bid = str(int(fid))
        interior = tuple(lane.id for lane in sorted(lanes_of.get(bid, []), key=lambda la: la.index))
        blocks[bid] = Roadblock(bid, geom, interior, tuple(into.get(bid, ())), tuple(out_of.get(bid, ())))
    block_conns = {
        cid: RoadblockConnector(
            cid, geom, tuple(conns_of.get(cid, ())), () if a is None else (a,), () if b is None else (b,)
        )
        for cid, geom, a, b in zip(rbc_ids, rbc.geometries, src, dst)
    }
    return blocks, block_conns


def build_lane_graph(
    data: MapData,
) -> tuple[dict[str, Lane], dict[str, LaneConnector], dict[str, Roadblock], dict[str, RoadblockConnector]]:
    """All four object dictionaries of a map (lanes, lane connectors, roadblocks, roadblock connectors)."""
    edges = _Edges(data)
    lanes = build_lanes(data, edges)
    connectors = build_lane_connectors(data, edges)
    blocks, block_conns = build_roadblocks(data, lanes, connectors)
    return lanes, connectors, blocks, block_conns
