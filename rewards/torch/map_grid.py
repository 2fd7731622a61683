"""The map grid of a :class:`~rewards.torch.metric_cache_batch.MetricCacheBatch`: ring edges of polygons, the edges
that the points of each grid cell may cross, and the classification of :data:`SUB_CELLS` x :data:`SUB_CELLS` sub-cells
per (cell, polygon) entry, so that only points near a polygon edge need the even-odd test at scoring time.

Numpy work done once per scene at collation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simulation.metric_cache import MetricCache
from simulation.polygon_grid import PolygonGrid, PolygonSet


def pad_stack(arrays: Sequence[np.ndarray], fill: float | int | bool, dtype: type | np.dtype) -> np.ndarray:
    """Stack arrays of equal rank, each padded at the end of every axis to the largest shape, with ``fill``."""
    shape = tuple(max(a.shape[d] for a in arrays) for d in range(arrays[0].ndim))
    out = np.full((len(arrays), *shape), fill, dtype=dtype)
    for s, a in enumerate(arrays):
        index: tuple[int | slice, ...] = (s, *(slice(0, n) for n in a.shape))
        out[index] = a
    return out


def polygon_edges(polygons: PolygonSet) -> tuple[np.ndarray, np.ndarray]:
    """``(M, E, 4)`` ring edges ``(x1, y1, x2, y2)`` of each polygon (zeros after its last edge) and ``(M, E)``
    bool validity, from a :class:`~simulation.polygon_grid.PolygonSet`."""
    m_count = polygons.num_polygons
    ro, pr, xy = polygons.ring_offsets, polygons.poly_rings, polygons.coords
    is_start = np.ones(len(xy), bool)
    is_start[ro[1:][ro[1:] > ro[:-1]] - 1] = False  # a ring's last vertex repeats its first: no edge starts there
    start_idx = np.flatnonzero(is_start)
    ring = np.searchsorted(ro, start_idx, side="right") - 1
    poly = np.searchsorted(pr, ring, side="right") - 1
    counts = np.bincount(poly, minlength=m_count) if m_count else np.zeros(0, np.int64)
    e_max = int(counts.max()) if len(counts) and counts.max() > 0 else 1
    slot = np.arange(len(poly)) - np.repeat(np.cumsum(counts) - counts, counts)
    edges = np.zeros((m_count, e_max, 4))
    valid = np.zeros((m_count, e_max), bool)
    edges[poly, slot] = np.concatenate([xy[start_idx], xy[start_idx + 1]], -1) if len(poly) else np.zeros((0, 4))
    valid[poly, slot] = True
    return edges, valid


#: Margin (m) by which a cell is grown when picking the edges its points may cross (keeps the test exact).
CELL_MARGIN = 1e-3


def cell_edges(grid: PolygonGrid, edges: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges that a point of a grid cell may cross, for every (cell, polygon) entry that is not full.

    A ray cast along +x from a point of the cell can only cross edges whose y range meets the cell's and that end
    right of the cell's left side; the other edges never count in the even-odd test, so dropping them leaves the
    result unchanged (the cell is grown by :data:`CELL_MARGIN` to stay clear of rounding).

    Returns:
        ``(E,)`` int64 entry id for each entry of ``grid.cell_polys`` (``-1`` for full entries), ``(n + 1,)`` offsets
        and ``(L, 4)`` edges: entry ``q``'s edges are ``edges[offsets[q]:offsets[q + 1]]``.
    """
    n_cells = int(np.prod(grid.shape))
    counts = np.diff(grid.cell_offsets)[:n_cells]
    cell_of = np.repeat(np.arange(n_cells), counts)
    test = ~grid.cell_full
    entry_id = np.full(len(grid.cell_polys), -1, np.int64)
    entry_id[test] = np.arange(int(test.sum()))
    cell, poly = cell_of[test], grid.cell_polys[test]
    x0 = grid.origin[0] + (cell // grid.shape[1]) * grid.cell_size - CELL_MARGIN
    y0 = grid.origin[1] + (cell % grid.shape[1]) * grid.cell_size - CELL_MARGIN
    y1 = y0 + grid.cell_size + 2 * CELL_MARGIN
    kept_entry, kept_edge = [], []
    step = max(1, (1 << 22) // max(1, edges.shape[1]))
    for a in range(0, len(poly), step):
        e = edges[poly[a : a + step]]  # (n, E, 4)
        keep = valid[poly[a : a + step]]
        keep &= np.maximum(e[..., 1], e[..., 3]) >= y0[a : a + step, None]
        keep &= np.minimum(e[..., 1], e[..., 3]) <= y1[a : a + step, None]
        keep &= np.maximum(e[..., 0], e[..., 2]) >= x0[a : a + step, None]
        i, j = np.nonzero(keep)
        kept_entry.append(i + a)
        kept_edge.append(e[i, j])
    ent = np.concatenate(kept_entry) if kept_entry else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(ent, minlength=len(poly)))]).astype(np.int64)
    flat = np.concatenate(kept_edge) if kept_edge else np.zeros((0, 4))
    return entry_id, offsets, flat if len(flat) else np.zeros((1, 4))


#: Sub-cells per grid cell side: each (cell, polygon) entry classifies ``SUB_CELLS ** 2`` sub-cells.
SUB_CELLS = 4
#: Bit offsets of the fields of a grid word: inside sub-cells (16 bits), needs-test sub-cells (16 bits), the
#: polygon's category bits (4 bits), the polygon index (the rest; ``-1`` for none).
WORD_SHIFTS = {"inside": 0, "test": 16, "category": 32, "poly": 36}
#: Grid word of a padding entry: polygon ``-1``, no bits.
NO_POLYGON_WORD = -1 << WORD_SHIFTS["poly"]
#: Bit offsets of a sub-cell word: the category bits of the polygons containing the whole sub-cell (4 bits), the
#: needs-exact-test flag (an edge meets the sub-cell or several lanes contain it), the same flag per category bit
#: (4 bits: an edge of a polygon with that category bit meets the sub-cell), the one lane containing it (the rest;
#: ``-1`` for none).
SUBCELL_SHIFTS = {"category": 0, "exact": 4, "exact_category": 5, "lane": 12}


def subcell_words(n_cells: int, cell_of: np.ndarray, words: np.ndarray) -> np.ndarray:
    """``((n_cells + 1) * SUB_CELLS ** 2,)`` int64 word (:data:`SUBCELL_SHIFTS`) of each sub-cell ``c * SUB_CELLS **
    2 + bit`` from the grid entries' words ``(E,)`` of cells ``cell_of`` ``(E,)``; the last cell is empty."""
    n_sub = SUB_CELLS * SUB_CELLS
    size = (n_cells + 1) * n_sub
    bits = np.arange(n_sub)
    inside = (words[:, None] >> bits) & 1 > 0  # (E, n_sub)
    test = (words[:, None] >> (bits + WORD_SHIFTS["test"])) & 1 > 0
    cat = (words >> WORD_SHIFTS["category"]) & 15
    poly = words >> WORD_SHIFTS["poly"]
    flat = (cell_of[:, None] * n_sub + bits).ravel()
    count = lambda w: np.bincount(flat, np.asarray(w, np.float64).ravel(), minlength=size)  # noqa: E731
    is_lane = inside & ((cat & 2) > 0)[:, None]
    lanes = count(is_lane)
    lane_id = np.where(lanes == 1, count(is_lane * poly[:, None]), -1).astype(np.int64)
    category = sum((count(inside & ((cat & b) > 0)[:, None]) > 0).astype(np.int64) * b for b in (1, 2, 4, 8))
    exact = (count(test) > 0) | (lanes > 1)
    out = category | (exact.astype(np.int64) << SUBCELL_SHIFTS["exact"]) | (lane_id << SUBCELL_SHIFTS["lane"])
    for i, b in enumerate((1, 2, 4, 8)):
        exact_b = count(test & ((cat & b) > 0)[:, None]) > 0
        out |= exact_b.astype(np.int64) << (SUBCELL_SHIFTS["exact_category"] + i)
    return out.astype(np.int64)


def subcell_masks(
    grid: PolygonGrid, offsets: np.ndarray, edges: np.ndarray, chunk: int = 1 << 15
) -> tuple[np.ndarray, np.ndarray]:
    """Inside / needs-test bit masks ``(Q,)`` int64 of the non-full grid entries (bit ``sx * SUB_CELLS + sy``).

    A sub-cell (grown by :data:`CELL_MARGIN`) that no edge of the entry's list meets lies entirely inside or
    entirely outside the polygon; its centre's even-odd test says which. The others are flagged for the exact test
    of each point. The entry's list holds every edge that meets its cell (:func:`cell_edges`), so this is exact.
    """
    q_count = len(offsets) - 1
    if q_count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_cells = int(np.prod(grid.shape))
    cell_of = np.repeat(np.arange(n_cells), np.diff(grid.cell_offsets)[:n_cells])[~grid.cell_full]
    counts = np.diff(offsets)
    owner = np.repeat(np.arange(q_count), counts)
    h = grid.cell_size / SUB_CELLS
    sub = np.arange(SUB_CELLS * SUB_CELLS)
    crossings = np.zeros(q_count * len(sub))
    touched = np.zeros(q_count * len(sub))
    for a in range(0, len(owner), chunk):
        q = owner[a : a + chunk]
        x1, y1, x2, y2 = (v[:, None] for v in edges[a : a + chunk].T)
        bx0 = (grid.origin[0] + (cell_of[q] // grid.shape[1]) * grid.cell_size)[:, None] + (sub // SUB_CELLS) * h
        by0 = (grid.origin[1] + (cell_of[q] % grid.shape[1]) * grid.cell_size)[:, None] + (sub % SUB_CELLS) * h
        lo_x, hi_x, lo_y, hi_y = bx0 - CELL_MARGIN, bx0 + h + CELL_MARGIN, by0 - CELL_MARGIN, by0 + h + CELL_MARGIN
        meets = (np.maximum(x1, x2) >= lo_x) & (np.minimum(x1, x2) <= hi_x)
        meets &= (np.maximum(y1, y2) >= lo_y) & (np.minimum(y1, y2) <= hi_y)
        side = [(x2 - x1) * (cy - y1) - (y2 - y1) * (cx - x1) for cx in (lo_x, hi_x) for cy in (lo_y, hi_y)]
        meets &= ~(np.all([d > 0 for d in side], 0) | np.all([d < 0 for d in side], 0))
        cx, cy = bx0 + h / 2, by0 + h / 2
        straddle = (y1 > cy) != (y2 > cy)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x1 + (cy - y1) * (x2 - x1) / np.where(straddle, y2 - y1, 1.0)
        flat = (q[:, None] * len(sub) + sub).ravel()
        crossings += np.bincount(flat, (straddle & (cx < xc)).ravel(), minlength=len(crossings))
        touched += np.bincount(flat, meets.ravel(), minlength=len(touched))
    weight = np.left_shift(np.uint64(1), sub.astype(np.uint64))
    test = touched.reshape(q_count, -1) > 0
    inside = (crossings.reshape(q_count, -1) % 2 == 1) & ~test
    pack = lambda bits: (bits * weight).sum(-1, dtype=np.uint64).view(np.int64)  # noqa: E731
    return pack(inside), pack(test)


def subrow_edges(grid: PolygonGrid, offsets: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (entry ``q``, sub-cell row ``sy``) the edges of the entry's list (:func:`cell_edges`) that a ray cast
    along +x from a point of that row of sub-cells may cross: not horizontal (a horizontal edge never straddles the
    ray) and with a y range meeting the row's (grown by :data:`CELL_MARGIN`). The even-odd count of the others is
    zero, so the result is unchanged.

    Returns:
        ``(Q * SUB_CELLS + 1,)`` offsets and ``(L, 4)`` edges: row ``q * SUB_CELLS + sy``'s edges are
        ``edges[offsets[r]:offsets[r + 1]]``.
    """
    q_count = len(offsets) - 1
    n_cells = int(np.prod(grid.shape))
    cell_of = np.repeat(np.arange(n_cells), np.diff(grid.cell_offsets)[:n_cells])[~grid.cell_full]
    owner = np.repeat(np.arange(q_count), np.diff(offsets))
    h = grid.cell_size / SUB_CELLS
    y0 = (grid.origin[1] + (cell_of[owner] % grid.shape[1]) * grid.cell_size)[:, None] + np.arange(SUB_CELLS) * h
    e = edges[: len(owner)]
    lo, hi = np.minimum(e[:, 1], e[:, 3])[:, None], np.maximum(e[:, 1], e[:, 3])[:, None]
    keep = (e[:, 1] != e[:, 3])[:, None] & (hi >= y0 - CELL_MARGIN) & (lo <= y0 + h + CELL_MARGIN)  # (L, SUB_CELLS)
    i, sy = np.nonzero(keep)
    row = owner[i] * SUB_CELLS + sy
    order = np.argsort(row, kind="stable")
    counts = np.bincount(row, minlength=q_count * SUB_CELLS)
    out = e[i[order]]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), out if len(out) else np.zeros((1, 4))


def pack_grid_words(polys: np.ndarray, categories: np.ndarray, inside: np.ndarray, test: np.ndarray) -> np.ndarray:
    """One int64 word per grid entry (:data:`WORD_SHIFTS`): polygon index, its category bits, the needs-test and
    inside sub-cell bits."""
    word = polys.astype(np.int64) << WORD_SHIFTS["poly"]
    word |= categories[polys].astype(np.int64) << WORD_SHIFTS["category"]
    return word | (test.astype(np.int64) << WORD_SHIFTS["test"]) | inside.astype(np.int64)


def collate_grids(caches: Sequence[MetricCache]) -> dict[str, np.ndarray]:
    keys = ("meta", "words", "subcells", "entries", "offsets", "edges", "categories")
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for c in caches:
        g = c.map_grid
        n_cells = int(np.prod(g.shape))
        out["meta"].append(np.array([g.origin[0], g.origin[1], g.cell_size, float(g.shape[0]), float(g.shape[1])]))
        counts = np.diff(g.cell_offsets)[:n_cells]
        width = max(int(counts.max()) if n_cells else 0, 1)
        slot = np.arange(len(g.cell_polys)) - np.repeat(g.cell_offsets[:-1][:n_cells], counts)
        cell_of = np.repeat(np.arange(n_cells), counts)
        entry_id, entry_offsets, entry_edges = cell_edges(g, *polygon_edges(g.polygons))
        inside_q, test_q = subcell_masks(g, entry_offsets, entry_edges)
        inside = np.where(g.cell_full, (1 << SUB_CELLS * SUB_CELLS) - 1, 0)  # full: every sub-cell inside
        inside[~g.cell_full] = inside_q
        test = np.zeros(len(g.cell_polys), np.int64)
        test[~g.cell_full] = test_q
        cats = c.map_categories if len(c.map_categories) else np.zeros(1, np.int64)
        words = np.full((n_cells + 1, width), NO_POLYGON_WORD, np.int64)  # row n_cells: points off the grid
        words[cell_of, slot] = pack_grid_words(g.cell_polys, cats, inside, test)
        out["subcells"].append(subcell_words(n_cells, cell_of, words[cell_of, slot]))
        entries = np.full((n_cells + 1, width), -1, np.int64)
        entries[cell_of, slot] = entry_id
        entry_offsets, entry_edges = subrow_edges(g, entry_offsets, entry_edges)
        for key, value in (("words", words), ("entries", entries), ("offsets", entry_offsets),
                           ("edges", entry_edges), ("categories", cats)):  # fmt: skip
            out[key].append(value)
    fills = {
        "words": NO_POLYGON_WORD,
        "subcells": -1 << SUBCELL_SHIFTS["lane"],
        "entries": -1,
        "offsets": 0,
        "edges": 0.0,
        "categories": 0,
    }
    result = {"meta": np.asarray(out["meta"], dtype=np.float64)}
    for key, fill in fills.items():
        result[key] = pad_stack(out[key], fill, np.float64 if key == "edges" else np.int64)
    return result
