"""The path of nuPlan's ``IDMPlanner``: a lane-level breadth-first search over the route, and the centre line of
the lanes and lane connectors it returns.

nuPlan builds this path once, at the first planning step of a scenario:

1. the starting edge is the first lane / lane connector of the first two route roadblocks whose polygon contains
   the ego centre, else the one whose polygon is nearest to the ego footprint;
2. a breadth-first search from it, over outgoing edges inside the route's roadblocks, looks for an edge of the
   last route roadblock at the depth of the route's length (one less when the start is in the second roadblock);
   without one, the route to the last edge the search reached is used;
3. the path is the concatenation of the edges' baselines, each vertex with the heading of its outgoing segment
   (the last one repeating the one before); a vertex followed by an identical one is dropped, and, as in
   nuPlan's ``create_path_from_se2``, so is the very last vertex. Poses along it are linear in x, y and the
   unwrapped heading.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import LineString, Point
from shapely.geometry.base import BaseGeometry

from simulation.geometry import normalize_angle, polyline_headings
from simulation.maps.objects import Roadblock
from simulation.maps.protocol import MapProtocol

logger = logging.getLogger(__name__)


def route_blocks(map_api: MapProtocol, route_ids: Sequence[str | int]) -> list[Roadblock | None]:
    """The route's roadblocks / roadblock connectors in order, ``None`` for an id the map does not hold."""
    out: list[Roadblock | None] = []
    for raw in route_ids:
        i = str(raw)
        out.append(map_api.roadblocks.get(i) or map_api.roadblock_connectors.get(i))
    return out


def starting_edge(
    map_api: MapProtocol, blocks: Sequence[Roadblock | None], center: np.ndarray, footprint: BaseGeometry
) -> str:
    """Id of the edge of ``blocks[0]`` / ``blocks[1]`` containing ``center`` ``(2,)``, else nearest ``footprint``."""
    ids = [i for block in blocks[:2] if block is not None for i in block.interior_ids]
    if not ids:
        raise ValueError("the first two route roadblocks hold no lane (unknown ids?)")
    here = Point(float(center[0]), float(center[1]))
    best, best_distance = ids[0], np.inf
    for edge_id in ids:
        polygon = map_api.lane_edge(edge_id).polygon
        if polygon.contains(here):
            return edge_id
        distance = float(polygon.distance(footprint))
        if distance < best_distance:
            best, best_distance = edge_id, distance
    return best


def breadth_first_route(
    map_api: MapProtocol, start: str, candidates: set[str], target_block: str | None, target_depth: int
) -> tuple[list[str], bool]:
    """nuPlan's ``BreadthFirstSearch.search``: edge ids from ``start`` to an edge of ``target_block`` at depth
    ``target_depth`` (the start is depth 1) through ``candidates``, and whether it was found; when it was not, the
    route to the last edge the search put in its queue.

    nuPlan's queue holds an edge once per way of reaching it, which grows exponentially with the depth where lanes
    merge and split. The same answer comes from each depth's distinct edges in two orders: by first appearance in
    that queue (the goal is the first edge of the target roadblock popped) and by last appearance (an edge's
    parent is the last one to enqueue it, and the fallback route ends at the last edge enqueued).
    """
    first, last = [start], [start]
    parent: dict[tuple[str, int], str | None] = {(start, 1): None}
    end, end_depth, depth = start, 1, 1
    while first and depth <= target_depth:
        if depth == target_depth:
            goal = next((e for e in first if map_api.lane_edge(e).roadblock_id == target_block), None)
            if goal is not None:
                return _trace(parent, goal, depth), True
        next_first: dict[str, None] = {}
        for edge_id in first:
            next_first.update((n, None) for n in map_api.lane_edge(edge_id).outgoing_ids if n in candidates)
        next_last: dict[str, None] = {}
        for edge_id in last:
            for n in map_api.lane_edge(edge_id).outgoing_ids:
                if n in candidates:
                    next_last.pop(n, None)  # moved to the end: its last appearance so far
                    next_last[n] = None
                    parent[(n, depth + 1)] = edge_id
                    end, end_depth = n, depth + 1
        first, last, depth = list(next_first), list(next_last), depth + 1
    return _trace(parent, end, end_depth), False


def _trace(parent: dict[tuple[str, int], str | None], end: str, depth: int) -> list[str]:
    """Edge ids from the search's start to ``end`` at ``depth`` along ``parent``."""
    route = [end]
    while (up := parent[(route[-1], depth)]) is not None:
        route.append(up)
        depth -= 1
    return route[::-1]


def route_plan(
    map_api: MapProtocol, route_ids: Sequence[str | int], center: np.ndarray, footprint: BaseGeometry
) -> list[str]:
    """Edge ids of the IDM path for an ego with box centre ``center`` ``(2,)`` and footprint polygon ``footprint``.

    nuPlan asserts a route of at least two roadblocks; a one-roadblock route is searched here as it is.
    """
    blocks = route_blocks(map_api, route_ids)
    candidates = {i for block in blocks if block is not None for i in block.interior_ids}
    start = starting_edge(map_api, blocks, center, footprint)
    second = blocks[1] if len(blocks) > 1 else None
    offset = 1 if second is not None and map_api.lane_edge(start).roadblock_id == second.id else 0
    last = blocks[-1]
    edges, found = breadth_first_route(
        map_api, start, candidates, None if last is None else last.id, len(blocks) - offset
    )
    if not found:
        logger.debug("IDM: no path to the last route roadblock from %s; using the longest route found", start)
    return edges


@dataclass(frozen=True)
class IDMPath:
    """The path the IDM ego drives along.

    Attributes:
        points: ``(N, 2)`` vertices of the interpolated path (see the module docstring for the dropped ones).
        headings: ``(N,)`` unwrapped headings at ``points``.
        progress: ``(N,)`` arc length of ``points`` along the full vertex list (non-decreasing, starts at 0).
        line: the full vertex list as a LineString (the ego's progress is its projection onto this line).
    """

    points: np.ndarray
    headings: np.ndarray
    progress: np.ndarray
    line: LineString
    _table: tuple[list[float], list[float], list[float], list[float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # plain lists for the scalar look-ups of the 16 samples of every step (numpy scalars are slow)
        table = (self.progress.tolist(), self.points[:, 0].tolist(), self.points[:, 1].tolist(), self.headings.tolist())
        object.__setattr__(self, "_table", table)

    @property
    def end_progress(self) -> float:
        return float(self.progress[-1])

    def clamp(self, s: np.ndarray | float) -> np.ndarray:
        """``s`` clipped to ``[0, end_progress]``."""
        return np.clip(np.asarray(s, dtype=np.float64), float(self.progress[0]), self.end_progress)

    def poses_at(self, s: np.ndarray | float) -> np.ndarray:
        """Poses ``(..., 3)`` (x, y, heading in ``[-pi, pi)``) at progress ``s`` ``(...)``, clamped to the path."""
        s = self.clamp(s)
        x = np.interp(s, self.progress, self.points[:, 0])
        y = np.interp(s, self.progress, self.points[:, 1])
        return np.stack([x, y, normalize_angle(np.interp(s, self.progress, self.headings))], -1)

    def pose_at(self, s: float) -> np.ndarray:
        """:meth:`poses_at` of one progress value ``(3,)`` (scalar arithmetic: it runs 16 times a step)."""
        progress, xs, ys, hs = self._table
        s = min(max(float(s), progress[0]), progress[-1])
        k = min(max(bisect.bisect_right(progress, s) - 1, 0), len(progress) - 2)
        span = progress[k + 1] - progress[k]
        t = (s - progress[k]) / span if span > 0.0 else 0.0
        heading = hs[k] + t * (hs[k + 1] - hs[k])
        heading = (heading + math.pi) % (2.0 * math.pi) - math.pi
        return np.array([xs[k] + t * (xs[k + 1] - xs[k]), ys[k] + t * (ys[k + 1] - ys[k]), heading])

    def project(self, point: np.ndarray) -> float:
        """Progress of the nearest point of :attr:`line` to ``point`` ``(2,)``."""
        return float(self.line.project(Point(float(point[0]), float(point[1]))))

    def trimmed(self, start: float, end: float) -> np.ndarray:
        """``(M, 2)`` polyline of the path between progress ``start`` and ``end`` (nuPlan's ``trim_path``)."""
        progress = self._table[0]
        start, end = min(max(float(start), progress[0]), progress[-1]), min(max(float(end), progress[0]), progress[-1])
        front = bisect.bisect_right(progress, start)  # first vertex beyond start
        if front == len(progress):
            return self.points[-2:]
        tail = bisect.bisect_left(progress, end) - 1  # last vertex before end
        if tail < 0:
            return self.points[:2]
        out = np.empty((max(tail + 1 - front, 0) + 2, 2))
        out[0], out[-1] = self.pose_at(start)[:2], self.pose_at(end)[:2]
        out[1:-1] = self.points[front : tail + 1]
        return out


def build_path(map_api: MapProtocol, edge_ids: Sequence[str]) -> IDMPath:
    """The :class:`IDMPath` along the baselines of ``edge_ids``."""
    points, headings = [], []
    for edge_id in edge_ids:
        baseline = np.asarray(map_api.lane_edge(edge_id).baseline, dtype=np.float64)[:, :2]
        points.append(baseline)
        headings.append(polyline_headings(baseline))
    xy = np.concatenate(points)
    heading = np.concatenate(headings)
    progress = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    # keep vertex i unless vertex i + 1 repeats it; the last vertex is never kept (nuPlan's create_path_from_se2)
    keep = ~np.isclose(np.diff(progress), 0.0)
    if keep.sum() < 2:
        raise ValueError(f"IDM path along {list(edge_ids)} has fewer than 2 distinct vertices")
    line = LineString(xy)
    shapely.prepare(line)
    return IDMPath(xy[:-1][keep], np.unwrap(heading[:-1][keep]), progress[:-1][keep], line)
