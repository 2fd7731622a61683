"""Polygon sets as flat ring arrays, with a uniform-grid index for exact, vectorised point-in-polygon tests.

A :class:`PolygonSet` stores ``M`` polygons (holes and multi-part polygons allowed) as plain arrays, so it
saves to ``.npz`` without pickling and numba kernels can read it. :class:`PolygonGrid` adds a uniform grid
over the set's bounds: each cell lists the polygons that touch it and whether the cell lies entirely inside
each of them, so a query tests only a few polygons per point and skips the ring test for interior cells.

Point-in-polygon uses the even-odd crossing rule over all rings of a polygon (exact away from the boundary;
points exactly on an edge may go either way, as with any floating-point test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry


@dataclass(frozen=True)
class PolygonSet:
    """``M`` polygons as flat arrays.

    Attributes:
        coords: ``(V, 2)`` float64 ring vertices (each ring closed: last vertex repeats the first).
        ring_offsets: ``(R + 1,)`` int64, ring ``r`` is ``coords[ring_offsets[r]:ring_offsets[r + 1]]``.
        poly_rings: ``(M + 1,)`` int64, polygon ``m`` owns rings ``poly_rings[m]:poly_rings[m + 1]``.
        bounds: ``(M, 4)`` float64 (min x, min y, max x, max y).
    """

    coords: np.ndarray
    ring_offsets: np.ndarray
    poly_rings: np.ndarray
    bounds: np.ndarray

    @property
    def num_polygons(self) -> int:
        return int(self.poly_rings.shape[0] - 1)

    @staticmethod
    def from_geometries(geometries: Sequence[BaseGeometry]) -> PolygonSet:
        """Flatten shapely (Multi)Polygons; empty geometries become polygons without rings (contain nothing)."""
        coords: list[np.ndarray] = []
        ring_offsets = [0]
        poly_rings = [0]
        bounds = np.zeros((len(geometries), 4))
        for m, geom in enumerate(geometries):
            parts = list(getattr(geom, "geoms", [geom])) if not geom.is_empty else []
            for part in parts:
                for ring in (part.exterior, *part.interiors):
                    xy = np.asarray(ring.coords, dtype=np.float64)[:, :2]
                    coords.append(xy)
                    ring_offsets.append(ring_offsets[-1] + len(xy))
            poly_rings.append(len(ring_offsets) - 1)
            bounds[m] = geom.bounds if not geom.is_empty else (np.inf, np.inf, -np.inf, -np.inf)
        return PolygonSet(
            coords=np.concatenate(coords) if coords else np.zeros((0, 2)),
            ring_offsets=np.asarray(ring_offsets, dtype=np.int64),
            poly_rings=np.asarray(poly_rings, dtype=np.int64),
            bounds=bounds,
        )

    def geometries(self) -> np.ndarray:
        """``(M,)`` shapely Polygons / MultiPolygons rebuilt from the rings (exterior first, then holes)."""
        out = np.empty(self.num_polygons, dtype=object)
        for m in range(self.num_polygons):
            rings = [
                self.coords[self.ring_offsets[r] : self.ring_offsets[r + 1]]
                for r in range(self.poly_rings[m], self.poly_rings[m + 1])
            ]
            out[m] = _rings_to_geometry(rings)
        return out


def _rings_to_geometry(rings: list[np.ndarray]) -> BaseGeometry:
    """Group rings into polygons: a ring inside the current exterior is its hole, otherwise a new part."""
    if not rings:
        return shapely.Polygon()
    parts: list[tuple[np.ndarray, list[np.ndarray]]] = []
    for ring in rings:
        if parts and shapely.Polygon(parts[-1][0]).contains(shapely.Point(ring[0])):
            parts[-1][1].append(ring)
        else:
            parts.append((ring, []))
    polys = [shapely.Polygon(shell, holes) for shell, holes in parts]
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


@dataclass(frozen=True)
class PolygonGrid:
    """Uniform-grid index over a :class:`PolygonSet`.

    Attributes:
        polygons: the indexed set.
        origin: ``(2,)`` lower-left corner of the grid.
        cell_size: cell edge length in metres.
        shape: ``(2,)`` int64 number of cells along x and y.
        cell_offsets: ``(nx * ny + 1,)`` int64 CSR offsets; cell ``c = ix * ny + iy``.
        cell_polys: ``(E,)`` int64 polygon indices touching each cell.
        cell_full: ``(E,)`` bool, the cell lies entirely inside that polygon.
    """

    polygons: PolygonSet
    origin: np.ndarray
    cell_size: float
    shape: np.ndarray
    cell_offsets: np.ndarray
    cell_polys: np.ndarray
    cell_full: np.ndarray

    @staticmethod
    def build(geometries: Sequence[BaseGeometry], cell_size: float = 2.0) -> PolygonGrid:
        """Index ``geometries`` (``M`` shapely polygons) with square cells of ``cell_size`` metres."""
        pset = PolygonSet.from_geometries(geometries)
        valid = np.isfinite(pset.bounds).all(1)
        if not valid.any():
            return PolygonGrid(pset, np.zeros(2), cell_size, np.zeros(2, np.int64), np.zeros(1, np.int64),
                               np.zeros(0, np.int64), np.zeros(0, bool))  # fmt: skip
        lo = pset.bounds[valid, :2].min(0) - cell_size
        hi = pset.bounds[valid, 2:].max(0) + cell_size
        shape = np.ceil((hi - lo) / cell_size).astype(np.int64)
        ix, iy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        x0 = lo[0] + ix.ravel() * cell_size
        y0 = lo[1] + iy.ravel() * cell_size
        cells = shapely.box(x0, y0, x0 + cell_size, y0 + cell_size)
        geoms = np.asarray(list(geometries), dtype=object)
        tree = shapely.STRtree(geoms)
        touch = tree.query(cells, predicate="intersects")  # (2, E): cell index, polygon index
        inside = tree.query(cells, predicate="within")
        full_keys = set(zip(inside[0].tolist(), inside[1].tolist(), strict=True))
        order = np.lexsort((touch[1], touch[0]))
        cell_idx, poly_idx = touch[0][order], touch[1][order]
        full = np.array([(c, p) in full_keys for c, p in zip(cell_idx.tolist(), poly_idx.tolist(), strict=True)],
                        dtype=bool)  # fmt: skip
        counts = np.bincount(cell_idx, minlength=int(shape.prod()))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return PolygonGrid(pset, lo, float(cell_size), shape, offsets, poly_idx.astype(np.int64), full)

    def contains(self, points: np.ndarray, max_hits: int = 16) -> np.ndarray:
        """Polygons containing each point: ``(..., max_hits)`` int64 indices padded with ``-1``.

        Args:
            points: ``(..., 2)`` query points.
            max_hits: most polygons reported per point (extra ones are dropped).
        """
        pts = np.ascontiguousarray(np.asarray(points, dtype=np.float64).reshape(-1, 2))
        hits = np.full((len(pts), max_hits), -1, dtype=np.int64)
        _contains_kernel(pts, *self.kernel_args(), hits)  # type: ignore[call-arg]
        return hits.reshape(np.shape(points)[:-1] + (max_hits,))

    def kernel_args(self) -> tuple[np.ndarray, ...]:
        """Arrays handed to the numba kernels (see :func:`grid_hits`)."""
        g, p = self, self.polygons
        meta = np.array([g.origin[0], g.origin[1], g.cell_size, float(g.shape[0]), float(g.shape[1])])
        return (meta, g.cell_offsets, g.cell_polys, g.cell_full, p.coords, p.ring_offsets, p.poly_rings)


@numba.njit(cache=True)
def point_in_rings(px: float, py: float, coords: np.ndarray, ring_offsets: np.ndarray, r0: int, r1: int) -> bool:
    """Even-odd crossing test of point ``(px, py)`` against rings ``r0:r1``."""
    inside = False
    for r in range(r0, r1):
        for k in range(ring_offsets[r], ring_offsets[r + 1] - 1):
            x1, y1 = coords[k, 0], coords[k, 1]
            x2, y2 = coords[k + 1, 0], coords[k + 1, 1]
            if (y1 > py) != (y2 > py):
                xc = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
                if px < xc:
                    inside = not inside
    return inside


@numba.njit(cache=True)
def grid_hits(
    px: float,
    py: float,
    meta: np.ndarray,
    cell_offsets: np.ndarray,
    cell_polys: np.ndarray,
    cell_full: np.ndarray,
    coords: np.ndarray,
    ring_offsets: np.ndarray,
    poly_rings: np.ndarray,
    out: np.ndarray,
) -> int:
    """Write the indices of polygons containing ``(px, py)`` into ``out``; return how many were written."""
    ix = int(np.floor((px - meta[0]) / meta[2]))
    iy = int(np.floor((py - meta[1]) / meta[2]))
    if ix < 0 or iy < 0 or ix >= int(meta[3]) or iy >= int(meta[4]):
        return 0
    c = ix * int(meta[4]) + iy
    n = 0
    for e in range(cell_offsets[c], cell_offsets[c + 1]):
        m = cell_polys[e]
        if cell_full[e] or point_in_rings(px, py, coords, ring_offsets, poly_rings[m], poly_rings[m + 1]):
            if n < out.shape[0]:
                out[n] = m
            n += 1
    return min(n, out.shape[0])


@numba.njit(cache=True)
def _contains_kernel(pts, meta, cell_offsets, cell_polys, cell_full, coords, ring_offsets, poly_rings, hits):
    for i in range(pts.shape[0]):
        grid_hits(
            pts[i, 0], pts[i, 1], meta, cell_offsets, cell_polys, cell_full, coords, ring_offsets, poly_rings, hits[i]
        )


@numba.njit(cache=True)
def _segments_cross(ax, ay, bx, by, cx, cy, dx, dy) -> bool:  # type: ignore[no-untyped-def]
    d1 = (dx - cx) * (ay - cy) - (dy - cy) * (ax - cx)
    d2 = (dx - cx) * (by - cy) - (dy - cy) * (bx - cx)
    d3 = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    d4 = (bx - ax) * (dy - ay) - (by - ay) * (dx - ax)
    return ((d1 > 0) != (d2 > 0) or d1 == 0 or d2 == 0) and ((d3 > 0) != (d4 > 0) or d3 == 0 or d4 == 0)


@numba.njit(cache=True)
def box_intersects_polygon(corners: np.ndarray, coords: np.ndarray, ring_offsets: np.ndarray, r0: int, r1: int) -> bool:
    """Whether a convex quadrilateral ``corners`` ``(4, 2)`` intersects the polygon made of rings ``r0:r1``.

    True if a corner lies inside the polygon, a polygon vertex lies inside the box, or two edges cross.
    """
    for i in range(4):
        if point_in_rings(corners[i, 0], corners[i, 1], coords, ring_offsets, r0, r1):
            return True
    for r in range(r0, r1):
        for k in range(ring_offsets[r], ring_offsets[r + 1] - 1):
            x1, y1 = coords[k, 0], coords[k, 1]
            x2, y2 = coords[k + 1, 0], coords[k + 1, 1]
            inside = True
            for i in range(4):
                j = (i + 1) % 4
                cross = (corners[j, 0] - corners[i, 0]) * (y1 - corners[i, 1]) - (corners[j, 1] - corners[i, 1]) * (
                    x1 - corners[i, 0]
                )
                if cross < 0:
                    inside = False
            if inside:
                return True
            for i in range(4):
                j = (i + 1) % 4
                if _segments_cross(corners[i, 0], corners[i, 1], corners[j, 0], corners[j, 1], x1, y1, x2, y2):
                    return True
    return False
