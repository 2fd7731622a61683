"""Routes over the roadblock graph: gap repair, lanes of a route, the route centre line, nearest lane, and
NAVSIM's PDM rules (starting lane, lane search, discrete centre line with the map's headings).

Functions take a map (:class:`~simulation.maps.protocol.MapProtocol`: only its four object dictionaries,
``lane_edge`` and, for :func:`nearest_lane_id` without a route, ``MapAPI.lane_polygon_tree`` are used). A route is a
list of roadblock and roadblock-connector ids, as in nuPlan's ``scene.roadblock_ids``.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import shapely
from shapely.geometry import Point

from simulation.geometry import (
    ego_box_corners,
    interpolate_polyline,
    normalize_angle,
    polyline_headings,
    project_on_polyline,
    rear_axle_to_center,
)
from simulation.maps.errors import UnknownMapObjectError
from simulation.maps.objects import LaneGraphEdge, Roadblock
from simulation.types import PACIFICA, VehicleParameters

if TYPE_CHECKING:
    from simulation.maps.api import MapAPI
    from simulation.maps.protocol import MapProtocol

logger = logging.getLogger(__name__)

#: Most roadblocks / connectors a gap repair may insert between two consecutive route entries.
MAX_REPAIR_DEPTH = 12
#: Consecutive centre-line points closer than this (m) are merged.
DEDUP_TOLERANCE = 1e-3
#: Route entries NAVSIM's PDM lane search looks ahead (``_get_discrete_centerline``'s ``search_depth``).
PDM_SEARCH_DEPTH = 30


def _block(api: MapProtocol, block_id: str) -> Roadblock | None:
    return api.roadblocks.get(block_id) or api.roadblock_connectors.get(block_id)


def _connecting_path(api: MapProtocol, start: str, goal: str, max_depth: int) -> list[str] | None:
    """Shortest ``[start, ..., goal]`` through the roadblock graph (breadth first), ``None`` if none is found."""
    parent: dict[str, str] = {}
    queue: deque[tuple[str, int]] = deque([(start, 0)])
    seen = {start}
    while queue:
        node, depth = queue.popleft()
        if depth > max_depth:
            break
        block = _block(api, node)
        for nxt in block.outgoing_ids if block is not None else ():
            if nxt in seen:
                continue
            parent[nxt] = node
            if nxt == goal:
                path = [goal]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1]
            seen.add(nxt)
            queue.append((nxt, depth + 1))
    return None


def route_roadblock_ids(api: MapProtocol, ids: Iterable[str | int], max_depth: int = MAX_REPAIR_DEPTH) -> list[str]:
    """A route whose consecutive entries are connected in the roadblock graph.

    Unknown ids and repeats are dropped; where entry ``k + 1`` is not an outgoing neighbour of entry ``k``, the
    shortest connecting chain of roadblocks / roadblock connectors is inserted (breadth-first search up to
    ``max_depth`` hops). A gap without any connection is kept as it is.
    """
    known = [str(i) for i in ids if _block(api, str(i)) is not None]
    route: list[str] = []
    for block_id in known:
        if route and block_id == route[-1]:
            continue
        if not route:
            route.append(block_id)
            continue
        prev = _block(api, route[-1])
        if prev is not None and block_id in prev.outgoing_ids:
            route.append(block_id)
            continue
        path = _connecting_path(api, route[-1], block_id, max_depth)
        if path is None:
            logger.debug("map %s: no connection from %s to %s in the route", api.map_name, route[-1], block_id)
            route.append(block_id)
        else:
            route.extend(path[1:])
    return route


def route_lane_ids(api: MapProtocol, route_ids: Iterable[str | int]) -> set[str]:
    """Ids of the lanes and lane connectors inside the roadblocks / roadblock connectors of a route."""
    out: set[str] = set()
    for block_id in route_ids:
        block = _block(api, str(block_id))
        if block is not None:
            out.update(block.interior_ids)
    return out


def _heading_error(edge: LaneGraphEdge, pose: np.ndarray) -> float:
    """|pose heading - baseline heading| at the pose's projection onto the baseline."""
    s, _ = project_on_polyline(pose[None, :2], edge.baseline)
    heading = interpolate_polyline(edge.baseline, s)[0, 2]
    return float(abs(normalize_angle(pose[2] - heading)))


def nearest_lane_id(api: MapAPI, pose: np.ndarray, route_ids: Sequence[str | int] | None = None) -> str:
    """The lane or lane connector nearest to ``pose`` ``(3,)`` (x, y, heading).

    Among objects at the smallest distance (e.g. all those containing the point) the one whose baseline heading is
    closest to the pose heading wins. With ``route_ids`` only lanes / connectors of the route are candidates.

    Raises:
        UnknownMapObjectError: there is no candidate (empty map or route).
    """
    pose = np.asarray(pose, dtype=np.float64).reshape(3)
    point = Point(pose[0], pose[1])
    if route_ids is not None:
        ids = sorted(route_lane_ids(api, route_ids))
        polys = np.array([api.lane_edge(i).polygon for i in ids], dtype=object)
        dist = shapely.distance(polys, point) if len(ids) else np.zeros(0)
    else:
        all_ids, tree = api.lane_polygon_tree()
        hits = tree.query_nearest(point, all_matches=True) if len(all_ids) else np.zeros(0, np.int64)
        ids = [str(all_ids[k]) for k in np.sort(hits)]
        dist = np.zeros(len(ids))
    if not ids:
        raise UnknownMapObjectError(f"map {api.map_name}: no lane or lane connector to match the pose")
    close = [i for i, d in zip(ids, dist) if d <= float(np.min(dist)) + 1e-6]
    return min(close, key=lambda i: (_heading_error(api.lane_edge(i), pose), i))


def route_edge_ids(api: MapProtocol, route_ids: Iterable[str | int]) -> list[str]:
    """The lanes and lane connectors of a route in route order (each roadblock's interior order), each once: the
    order of NAVSIM's route lane dictionary (``_load_route_dicts``). Unknown roadblock ids are skipped."""
    out: dict[str, None] = {}
    for block_id in dict.fromkeys(str(i) for i in route_ids):
        block = _block(api, block_id)
        for edge_id in block.interior_ids if block is not None else ():
            out.setdefault(edge_id, None)
    return list(out)


def discrete_path(api: MapProtocol, edge_id: str) -> np.ndarray:
    """``(N, 3)`` float64 (x, y, heading) of a lane's / lane connector's baseline as nuPlan's map gives it
    (``baseline_path.discrete_path``): every vertex, each with the heading of the segment to the next vertex, the
    last vertex with that of the last segment (``nuplan_map.utils.compute_linestring_heading``)."""
    line = np.asarray(api.lane_edge(edge_id).baseline[:, :2], dtype=np.float64)
    return np.concatenate([line, polyline_headings(line)[:, None]], -1)


def _nearest_vertex_heading_error(path: np.ndarray, pose: np.ndarray) -> float:
    """|heading of the vertex of ``path`` ``(N, 3)`` nearest ``pose`` ``(3,)`` - pose heading| (first on ties)."""
    dist = (((pose[None, :2] - path[:, :2]) ** 2).sum(-1)) ** 0.5
    error = path[int(np.argmin(dist)), 2] - pose[2]
    return float(abs(np.arctan2(np.sin(error), np.cos(error))))


def starting_lane_id(
    api: MapProtocol, route_ids: Iterable[str | int], pose: np.ndarray, vehicle: VehicleParameters = PACIFICA
) -> str:
    """The lane or lane connector NAVSIM's PDM planners start from (``AbstractPDMPlanner._get_starting_lane``).

    ``pose`` ``(3,)`` is the ego's rear axle; candidates are :func:`route_edge_ids` in that order.

    1. Among the route edges whose polygon intersects the rear-axle point (boundary included), the one whose
       :func:`discrete_path` vertex nearest the rear axle has the smallest absolute heading error (first on ties).
    2. Otherwise the first route edge whose polygon strictly contains the ego centre (the rear axle moved
       ``vehicle.rear_axle_to_center`` forward).
    3. Otherwise the route edge whose polygon is nearest to the ego footprint (first on ties).

    Raises:
        UnknownMapObjectError: the route has no lane or lane connector.
    """
    pose = np.asarray(pose, dtype=np.float64).reshape(3)
    edges = route_edge_ids(api, route_ids)
    if not edges:
        raise UnknownMapObjectError(f"map {api.map_name}: the route has no lane or lane connector")
    polygons = np.empty(len(edges), dtype=object)
    polygons[:] = [api.lane_edge(i).polygon for i in edges]
    on = np.flatnonzero(shapely.intersects(polygons, Point(pose[0], pose[1])))
    if len(on):
        errors = [_nearest_vertex_heading_error(discrete_path(api, edges[k]), pose) for k in on]
        return edges[int(on[int(np.argmin(errors))])]
    center = rear_axle_to_center(pose, vehicle)
    inside = np.flatnonzero(shapely.contains_xy(polygons, center[0], center[1]))
    if len(inside):
        return edges[int(inside[0])]
    footprint = shapely.polygons(ego_box_corners(pose, vehicle))
    return edges[int(np.argmin(shapely.distance(polygons, footprint)))]


def edge_length(api: MapProtocol, edge_id: str) -> float:
    """Length (m) of a lane's / lane connector's baseline polyline (nuPlan's ``baseline_path.length``)."""
    return float(shapely.length(shapely.linestrings(api.lane_edge(edge_id).baseline[:, :2])))


def pdm_target_roadblock(route_ids: Sequence[str | int], start_block_id: str, depth: int = PDM_SEARCH_DEPTH) -> str:
    """The roadblock NAVSIM's lane search heads for: with the route's repeats dropped (first place kept), the last
    of the ``depth`` entries from the starting lane's roadblock on (from the route's first entry when that roadblock
    is not on the route).

    Raises:
        ValueError: ``route_ids`` is empty.
    """
    blocks = list(dict.fromkeys(str(i) for i in route_ids))
    if not blocks:
        raise ValueError("the route is empty")
    first = blocks.index(start_block_id) if start_block_id in blocks else 0
    return blocks[first : first + depth][-1]


def pdm_lane_path(
    api: MapProtocol, route_ids: Sequence[str | int], start_lane_id: str, depth: int = PDM_SEARCH_DEPTH
) -> tuple[list[str], bool]:
    """NAVSIM's lane search of ``_get_discrete_centerline`` (its ``Dijkstra``): the lanes / lane connectors from
    ``start_lane_id`` to :func:`pdm_target_roadblock`, in driving order, and whether the target was reached.

    Rules (the route is taken as given, unknown roadblock ids skipped):

    * nodes: ``start_lane_id`` and the lanes / connectors of the route (:func:`route_lane_ids`, any route entry,
      also those before the starting roadblock); edges: each node's ``outgoing_ids`` in their stored order (a
      lane's: the rows of the map's ``lane_connectors`` layer whose ``exit_lane_fid`` is the lane, in row order, as
      nuPlan's ``outgoing_edges``; a connector's: its ``entry_lane_fid``).
    * cost: 1 for the starting lane, plus :func:`edge_length` of each lane entered; a node's depth: 1 for the
      starting lane, its parent's + 1.
    * the cheapest frontier node is expanded next; equal costs go to the node that entered the frontier first.
      A node in the frontier takes a new parent (and depth) only for a strictly lower cost.
    * the search stops at the first node taken from the frontier that lies in the target roadblock (the starting
      lane itself included); the path is the parents' chain back to the start.
    * no such node: the path ends at the deepest expanded node, the cheapest among those, the first expanded on
      ties (the start alone when nothing follows it on the route).

    Returns:
        ``(lane ids, found)``; the first id is always ``start_lane_id``.

    Raises:
        UnknownMapObjectError: no roadblock of the route is on the map.
    """
    blocks = [b for b in dict.fromkeys(str(i) for i in route_ids) if _block(api, b) is not None]
    if not blocks:
        raise UnknownMapObjectError(f"map {api.map_name}: the route has no roadblock of the map")
    target = pdm_target_roadblock(blocks, api.lane_edge(start_lane_id).roadblock_id, depth)
    candidates = route_lane_ids(api, blocks)
    cost, level, entered = {start_lane_id: 1.0}, {start_lane_id: 1}, {start_lane_id: 0}
    parent: dict[str, str | None] = {start_lane_id: None}
    frontier: list[tuple[float, int, str]] = [(1.0, 0, start_lane_id)]
    expanded: dict[str, None] = {}  # in expansion order
    end, found = start_lane_id, False
    while frontier and not found:
        dist, _, node = heapq.heappop(frontier)
        if node in expanded:  # an entry left behind by a cheaper parent
            continue
        if api.lane_edge(node).roadblock_id == target:
            end, found = node, True
            continue
        expanded[node] = None
        for nxt in api.lane_edge(node).outgoing_ids:
            if nxt not in candidates or nxt in expanded:
                continue
            alt = dist + edge_length(api, nxt)
            if nxt not in cost or alt < cost[nxt]:
                entered.setdefault(nxt, len(entered))
                cost[nxt], level[nxt], parent[nxt] = alt, level[node] + 1, node
                heapq.heappush(frontier, (alt, entered[nxt], nxt))
    if not found:
        logger.debug("map %s: no lane path from %s to roadblock %s", api.map_name, start_lane_id, target)
        deepest = max(level[i] for i in expanded)
        end = min((i for i in expanded if level[i] == deepest), key=lambda i: cost[i])  # first on ties
    path = [end]
    while parent[path[-1]] is not None:
        path.append(str(parent[path[-1]]))
    return path[::-1], found


def _straightness(api: MapProtocol, edge_id: str) -> float:
    """Absolute heading change along an edge's baseline (used to prefer straight continuations)."""
    line = api.lane_edge(edge_id).baseline
    start = np.arctan2(*(line[1] - line[0])[::-1])
    end = np.arctan2(*(line[-1] - line[-2])[::-1])
    return float(abs(normalize_angle(end - start)))


def _furthest_chain(api: MapProtocol, start: str, allowed: set[str], rank: dict[str, int]) -> list[str]:
    """Breadth-first walk from ``start`` over outgoing edges inside ``allowed`` that never go back in the route;
    returns the chain to the edge furthest along the route (fewest hops, straightest first on ties)."""
    parent: dict[str, str | None] = {start: None}
    order = [start]
    queue = deque([start])
    while queue:
        node = queue.popleft()
        node_rank = rank[api.lane_edge(node).roadblock_id]
        nexts = [n for n in api.lane_edge(node).outgoing_ids if n in allowed and n not in parent]
        for nxt in sorted(nexts, key=lambda n: (_straightness(api, n), n)):
            if rank[api.lane_edge(nxt).roadblock_id] < node_rank:
                continue
            parent[nxt] = node
            order.append(nxt)
            queue.append(nxt)
    best = max(range(len(order)), key=lambda k: (rank[api.lane_edge(order[k]).roadblock_id], -k))
    chain = [order[best]]
    while parent[chain[-1]] is not None:
        chain.append(str(parent[chain[-1]]))
    return chain[::-1]


def route_lane_chain(
    api: MapProtocol, route_ids: Sequence[str | int], start_pose: np.ndarray, start_lane_id: str | None = None
) -> list[str]:
    """Ids of the lanes / lane connectors :func:`route_centerline` runs through, in driving order (PDM-Closed uses
    NAVSIM's search instead: :func:`pdm_lane_path`).

    The chain starts on ``start_lane_id`` (default: :func:`nearest_lane_id` of ``start_pose`` ``(3,)`` within the
    route) and continues through outgoing lanes / connectors that stay inside the route up to the furthest
    reachable route entry. When a sibling lane of the same roadblock reaches further along the route (the route
    turns off from another lane), the chain starts on that sibling instead (nearest to ``start_pose`` among those
    that reach furthest). The route is gap-repaired first.
    """
    route = route_roadblock_ids(api, route_ids)
    rank: dict[str, int] = {}
    for k, block_id in enumerate(route):
        rank.setdefault(block_id, k)
    allowed = route_lane_ids(api, route)
    start = start_lane_id if start_lane_id is not None else api.nearest_lane_id(start_pose, route)
    chain = _furthest_chain(api, start, allowed, rank)
    block = _block(api, api.lane_edge(start).roadblock_id)
    siblings = [i for i in (block.interior_ids if block is not None else ()) if i != start and i in allowed]
    here = Point(float(start_pose[0]), float(start_pose[1]))
    for other in sorted(siblings, key=lambda i: (api.lane_edge(i).polygon.distance(here), i)):
        # a neighbouring lane that gets further along the route (a lane change) wins
        candidate = _furthest_chain(api, other, allowed, rank)
        if rank[api.lane_edge(candidate[-1]).roadblock_id] > rank[api.lane_edge(chain[-1]).roadblock_id]:
            chain = candidate
    return chain


def route_centerline(
    api: MapProtocol, route_ids: Sequence[str | int], start_pose: np.ndarray, start_lane_id: str | None = None
) -> np.ndarray:
    """``(N, 2)`` float64 centre line along a route: the baselines of :func:`route_lane_chain` one after the other,
    consecutive points closer than :data:`DEDUP_TOLERANCE` merged."""
    chain = route_lane_chain(api, route_ids, start_pose, start_lane_id)
    points = np.concatenate([api.lane_edge(i).baseline[:, :2] for i in chain]).astype(np.float64)
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = np.linalg.norm(np.diff(points, axis=0), axis=1) > DEDUP_TOLERANCE
    return points[keep]


def route_discrete_path(
    api: MapProtocol, route_ids: Sequence[str | int], start_pose: np.ndarray, start_lane_id: str | None = None
) -> np.ndarray:
    """``(N, 3)`` float64 (x, y, heading): NAVSIM's ``_get_discrete_centerline``, the :func:`discrete_path` of each
    lane of :func:`pdm_lane_path` concatenated as they are: the joint of two lanes appears twice, once with each
    lane's heading, and nothing is merged.

    The route is gap-repaired first; the search starts on ``start_lane_id`` (default: :func:`starting_lane_id` of
    the rear axle ``start_pose`` ``(3,)``, which is not used otherwise).
    """
    route = route_roadblock_ids(api, route_ids)
    start = start_lane_id if start_lane_id is not None else starting_lane_id(api, route, start_pose)
    return pdm_discrete_centerline(api, route, start)


def pdm_discrete_centerline(api: MapProtocol, route_ids: Sequence[str | int], start_lane_id: str) -> np.ndarray:
    """``(N, 3)`` float64 (x, y, heading): the :func:`discrete_path` of each lane of :func:`pdm_lane_path` from
    ``start_lane_id`` over the route as given (no gap repair), concatenated as they are."""
    lanes, _ = pdm_lane_path(api, route_ids, start_lane_id)
    return np.concatenate([discrete_path(api, i) for i in lanes])
