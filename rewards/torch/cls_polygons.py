"""Polygons of a batch of episodes as groups of edges with bounding boxes, for point queries in torch.

Each polygon (all its rings) is cut into groups of ``C`` consecutive edges; a group's bounding box decides,
per point, whether the group's edges need testing at all (a data-dependent gather, one host sync per query).
Point in polygon is the crossing parity of a ray towards +x (every ring counts, so holes and multipolygons
work); "within a distance" is the distance to the nearest edge. Both agree with shapely's ``contains_xy`` and
``distance`` away from the boundary itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from rewards.torch.geometry import compact

#: Edges per group.
GROUP_EDGES = 16
#: Points per chunk of a query (bounds the gathered ``(B, K, G', C, 4)`` edges).
_CHUNK_ELEMENTS = 1 << 22
#: A polygon wholly right of a point by more than this cannot contain it (metres; far above float64 rounding).
_RIGHT_MARGIN_M = 1e-6


@dataclass(frozen=True)
class PolygonSet:
    """``P`` polygons per episode as ``G`` edge groups.

    Attributes:
        edges: ``(B, G, C, 4)`` edges ``(x1, y1, x2, y2)``; mask: ``(B, G, C)`` real edges.
        box: ``(B, G, 4)`` group bounds ``(xmin, ymin, xmax, ymax)`` (empty groups: inverted, never hit).
        owner: ``(B, G)`` long, the polygon of each group.
        count: ``P``, polygons per episode (padded).
    """

    edges: torch.Tensor
    mask: torch.Tensor
    box: torch.Tensor
    owner: torch.Tensor
    count: int

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> PolygonSet:
        """The set on ``device`` with floating tensors in ``dtype``."""
        out: dict[str, object] = {"count": self.count}
        for f in fields(self):
            t = getattr(self, f.name)
            if isinstance(t, torch.Tensor):
                out[f.name] = t.to(
                    device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype
                )
        return PolygonSet(**out)  # type: ignore[arg-type]

    def select(self, rows: torch.Tensor) -> PolygonSet:
        """The episodes ``rows`` ``(B',)`` (long) of the set."""
        return PolygonSet(self.edges[rows], self.mask[rows], self.box[rows], self.owner[rows], self.count)


def ring_edges(geom: object) -> np.ndarray:
    """``(E, 4)`` edges of every ring of a shapely (multi)polygon (empty: ``(0, 4)``)."""
    rings = []
    for poly in getattr(geom, "geoms", [geom]):
        if getattr(poly, "is_empty", True) or not hasattr(poly, "exterior"):
            continue
        for ring in (poly.exterior, *poly.interiors):
            c = np.asarray(ring.coords, dtype=np.float64)[:, :2]
            rings.append(np.concatenate([c[:-1], c[1:]], 1))
    return np.concatenate(rings) if rings else np.zeros((0, 4))


def polygon_set(
    polygons: Sequence[Sequence[np.ndarray]], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64
) -> PolygonSet:
    """A :class:`PolygonSet` of ``B`` episodes, each a list of polygons given by their edges ``(E_i, 4)``."""
    groups: list[list[tuple[int, np.ndarray]]] = []
    for polys in polygons:
        groups.append([(p, e[i : i + GROUP_EDGES]) for p, e in enumerate(polys) for i in range(0, len(e), GROUP_EDGES)])
    g = max([len(x) for x in groups] + [1])
    edges = np.zeros((len(polygons), g, GROUP_EDGES, 4))
    mask = np.zeros((len(polygons), g, GROUP_EDGES), dtype=bool)
    box = np.tile(np.array([np.inf, np.inf, -np.inf, -np.inf]), (len(polygons), g, 1))
    owner = np.zeros((len(polygons), g), dtype=np.int64)
    for b, gs in enumerate(groups):
        for k, (p, e) in enumerate(gs):
            edges[b, k, : len(e)], mask[b, k, : len(e)], owner[b, k] = e, True, p
            xs, ys = e[:, [0, 2]], e[:, [1, 3]]
            box[b, k] = xs.min(), ys.min(), xs.max(), ys.max()
    return PolygonSet(
        edges=torch.as_tensor(edges, dtype=dtype, device=device),
        mask=torch.as_tensor(mask, device=device),
        box=torch.as_tensor(box, dtype=dtype, device=device),
        owner=torch.as_tensor(owner, device=device),
        count=max([len(p) for p in polygons] + [1]),
    )


def _gather_groups(ps: PolygonSet, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edges ``(B, K, G', C, 4)``, masks ``(B, K, G', C)`` and owners ``(B, K, G')`` of groups ``index``."""
    b, g, c = ps.mask.shape
    k = index.shape[1]
    edges = torch.gather(
        ps.edges.reshape(b, 1, g, c * 4).expand(b, k, g, c * 4), 2, index[..., None].expand(-1, -1, -1, c * 4)
    )
    mask = torch.gather(ps.mask[:, None].expand(b, k, g, c), 2, index[..., None].expand(-1, -1, -1, c))
    owner = torch.gather(ps.owner[:, None].expand(b, k, g), 2, index)
    return edges.reshape(b, k, -1, c, 4), mask, owner


def _per_owner(ps: PolygonSet, owner: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` ``(B, K, G')`` (int) per polygon: ``(B, K, P)``."""
    out = torch.zeros(*owner.shape[:2], ps.count, dtype=torch.int64, device=owner.device)
    return out.scatter_add(2, owner, values)


def _chunked(points: torch.Tensor, ps: PolygonSet, fn: object) -> torch.Tensor:
    step = max(1, _CHUNK_ELEMENTS // max(1, ps.edges.shape[1] * ps.edges.shape[2]))
    parts = [fn(points[:, i : i + step]) for i in range(0, points.shape[1], step)]  # type: ignore[operator]
    if parts:
        return torch.cat(parts, 1)
    return torch.zeros(points.shape[0], 0, ps.count, dtype=torch.bool, device=points.device)


def _compact_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rewards.torch.geometry.compact` without the sort (a cumulative count and a scatter): the True
    entries of ``keep`` ``(..., N)`` in order, ``index`` ``(..., M)``, and ``kept`` ``(..., M)`` (slots past a row's
    count hold index 0, not kept). One host sync (``M``)."""
    counts = keep.sum(-1)
    m = int(counts.max()) if keep.numel() else 0
    slot = torch.where(keep, keep.cumsum(-1) - 1, m)  # False entries go to a spare slot m, dropped
    index = torch.zeros(*keep.shape[:-1], m + 1, dtype=torch.long, device=keep.device)
    index.scatter_(-1, slot, torch.arange(keep.shape[-1], device=keep.device).expand_as(keep))
    kept = torch.arange(m, device=keep.device) < counts[..., None]
    return index[..., :m], kept


def _owner_xmin(ps: PolygonSet) -> torch.Tensor:
    """``(B, G)`` the smallest x of the polygon that owns each group."""
    b, g = ps.owner.shape
    xmin = torch.full((b, ps.count), torch.inf, dtype=ps.box.dtype, device=ps.box.device)
    xmin = xmin.scatter_reduce(1, ps.owner, ps.box[..., 0], "amin")
    return torch.gather(xmin, 1, ps.owner)


def contains(ps: PolygonSet, points: torch.Tensor) -> torch.Tensor:
    """``(B, K, P)`` bool: polygon ``p`` contains point ``(B, K, 2)`` (crossing parity of a ray towards +x).

    Only the groups the ray can cross are tested (the point within the group's y range, left of its right end),
    and only of polygons that do not lie wholly right of the point: the ray crosses such a polygon's closed rings
    an even number of times (the margin of 1 um keeps rounding of the crossing abscissa out of it), so they
    cannot contain it."""
    owner_xmin = _owner_xmin(ps)[:, None] - _RIGHT_MARGIN_M

    def part(pts: torch.Tensor) -> torch.Tensor:
        px, py = pts[..., 0, None], pts[..., 1, None]
        box = ps.box[:, None]
        cand = (py >= box[..., 1]) & (py <= box[..., 3]) & (px <= box[..., 2]) & (px >= owner_xmin)
        index, kept = _compact_index(cand)
        edges, mask, owner = _gather_groups(ps, index)
        x1, y1, x2, y2 = edges.unbind(-1)
        qx, qy = px[..., None], py[..., None]
        straddle = (y1 > qy) != (y2 > qy)
        dy = torch.where(straddle, y2 - y1, torch.ones_like(y1))
        crossing = straddle & (qx < x1 + (qy - y1) * (x2 - x1) / dy) & mask & kept[..., None]
        return _per_owner(ps, owner, crossing.sum(-1)) % 2 == 1

    return _chunked(points, ps, part)


def within(ps: PolygonSet, points: torch.Tensor, distance: float) -> torch.Tensor:
    """``(B, K, P)`` bool: some edge of polygon ``p`` is closer than ``distance`` to point ``(B, K, 2)``."""

    def part(pts: torch.Tensor) -> torch.Tensor:
        px, py = pts[..., 0, None], pts[..., 1, None]
        box = ps.box[:, None]
        cand = (px >= box[..., 0] - distance) & (px <= box[..., 2] + distance)
        cand &= (py >= box[..., 1] - distance) & (py <= box[..., 3] + distance)
        index, kept, _ = compact(cand)
        edges, mask, owner = _gather_groups(ps, index)
        p = pts[:, :, None, None, :]
        a, d = edges[..., :2], edges[..., 2:] - edges[..., :2]
        t = (((p - a) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-24)).clamp(0.0, 1.0)
        close = (torch.linalg.norm(p - (a + t[..., None] * d), dim=-1) < distance) & mask & kept[..., None]
        return _per_owner(ps, owner, close.any(-1).to(torch.int64)) > 0

    return _chunked(points, ps, part)
