"""Padded, vectorised lane-sequence paths: every moving vehicle drives along one row by arc length."""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from simulation.datasets.synthetic.geometry2d import curvature, headings
from simulation.datasets.synthetic.network import Town, TurnType

#: Lateral acceleration used to derive curve speeds, m/s^2.
CURVE_ACCEL = 2.0


@dataclass
class PathBank:
    """``N`` paths padded to ``P`` points and ``K`` segments.

    Attributes:
        pts: ``(N, P, 2)`` points (padded by repeating the last point).
        cum: ``(N, P)`` strictly increasing arc length (padding continues by 1 mm steps).
        hdg: ``(N, P)`` unwrapped heading at each point.
        vmax: ``(N, P)`` allowed speed (speed limit and curve speed) at each point.
        length: ``(N,)`` true path length.
        seg_fid: ``(N, K)`` path fid of each segment (-1 padding).
        seg_start: ``(N, K)`` arc length where each segment starts (inf padding).
        seg_exit: ``(N, K)`` for connectors the fid of the lane they lead into, else -1.
        seg_light: ``(N, K)`` column of the connector in the traffic-light status array, else -1.
        seg_turn: ``(N, K)`` :class:`TurnType` of connectors, else -1.
        seg_minor: ``(N, K)`` connectors from the minor arm of an uncontrolled junction (they give way).
    """

    pts: np.ndarray
    cum: np.ndarray
    hdg: np.ndarray
    vmax: np.ndarray
    length: np.ndarray
    seg_fid: np.ndarray
    seg_start: np.ndarray
    seg_exit: np.ndarray
    seg_light: np.ndarray
    seg_turn: np.ndarray
    seg_minor: np.ndarray
    _flat: np.ndarray | None = None
    _base: np.ndarray | None = None
    _cache: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.pts.shape[0])

    def _flat_cum(self) -> tuple[np.ndarray, np.ndarray]:
        """Every row's arc lengths shifted past the previous row's (by its length + 1 m) and flattened, so that one
        sorted array serves the binary searches of all rows; and each row's shift ``(N,)``."""
        if self._flat is None:
            span = self.cum[:, -1:] + 1.0
            self._base = np.cumsum(np.concatenate([[0.0], span[:-1, 0]]))
            self._flat = (self.cum + self._base[:, None]).ravel()
        assert self._base is not None
        return self._flat, self._base

    def _values(self, name: str) -> np.ndarray:
        """Contiguous flat copy of a per-point array (``x``, ``y``, ``hdg`` or ``vmax``), cached."""
        if name not in self._cache:
            src = {"x": self.pts[..., 0], "y": self.pts[..., 1], "hdg": self.hdg, "vmax": self.vmax}[name]
            self._cache[name] = np.ascontiguousarray(src).ravel()
        return self._cache[name]

    def interp(self, name: str, s: np.ndarray) -> np.ndarray:
        """Interpolate the per-point array ``name`` (``x``, ``y``, ``hdg``, ``vmax``) at arc lengths ``s``
        ``(N, M)`` (row-wise, clamped to each path)."""
        return self._interp((name,), s)[..., 0]

    def poses(self, s: np.ndarray) -> np.ndarray:
        """``(N, M, 3)`` poses at arc lengths ``s`` ``(N, M)``."""
        return self._interp(("x", "y", "hdg"), s)

    def _interp(self, names: tuple[str, ...], s: np.ndarray) -> np.ndarray:
        flat, base = self._flat_cum()
        key = "stack:" + "|".join(names)  # not a name of _values
        if key not in self._cache:
            self._cache[key] = np.stack([self._values(n) for n in names])
        values = self._cache[key]
        s2 = np.ascontiguousarray(s, dtype=np.float64).reshape(len(self), -1)
        out = _interp_rows(flat, base, np.ascontiguousarray(self.cum[:, -1]), values, s2)
        return out.reshape(s.shape + (len(names),))

    def segment_index(self, s: np.ndarray) -> np.ndarray:
        """``(N,)`` index of the segment containing arc length ``s`` ``(N,)``."""
        return _segment_index(self.seg_start, np.ascontiguousarray(s, dtype=np.float64))


@numba.njit(cache=True)
def _interp_rows(
    flat: np.ndarray, base: np.ndarray, end: np.ndarray, values: np.ndarray, s: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled
    """``(N, M, V)`` linear interpolation of the flat per-point arrays ``values`` ``(V, N * P)`` at arc lengths ``s``
    ``(N, M)``, each clamped to ``[0, end]`` of its row; ``flat`` is the sorted shifted arc length of
    :meth:`PathBank._flat_cum` and ``base`` each row's shift."""
    n, m = s.shape
    nv = values.shape[0]
    out = np.empty((n, m, nv))
    last = len(flat) - 2
    for r in range(n):
        for c in range(m):
            q = min(max(s[r, c], 0.0), end[r]) + base[r]
            i = min(max(np.searchsorted(flat, q, side="right") - 1, 0), last)
            lo, hi = flat[i], flat[i + 1]
            w = min(max((q - lo) / (hi - lo), 0.0), 1.0)
            for k in range(nv):
                out[r, c, k] = (1.0 - w) * values[k, i] + w * values[k, i + 1]
    return out


@numba.njit(cache=True)
def _segment_index(seg_start: np.ndarray, s: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Per row: the number of segments starting at or before ``s`` minus one (at least 0); segment starts
    increase along a row (``inf`` padding)."""
    n, kk = seg_start.shape
    out = np.zeros(n, dtype=np.int64)
    for i in range(n):
        c = 0
        for k in range(kk):
            if seg_start[i, k] <= s[i]:
                c += 1
        out[i] = max(c - 1, 0)
    return out


def build_bank(
    town: Town, routes: list[list[int]], light_cols: dict[int, int], accel: float = CURVE_ACCEL, smooth: int = 0
) -> PathBank:
    """Pack lane-sequence routes (lists of path fids, lanes and connectors alternating) into a :class:`PathBank`.

    ``smooth`` > 1 applies a moving average of that many points (1 m apart) to each route, which turns
    curvature steps at lane / connector joints into ramps (smoother yaw rate for the ego).
    """
    rows = []
    for route in routes:
        pts: list[np.ndarray] = []
        first: list[int] = []
        count = 0
        for fid in route:
            c = town.paths[fid].centre
            seg = c if not pts else c[1:]
            first.append(max(count - 1, 0))  # a segment starts at the previous segment's last point
            pts.append(seg)
            count += len(seg)
        line = np.concatenate(pts, 0)
        rows.append((smooth_polyline(line, smooth) if smooth > 1 else line, np.array(first)))
    p_max = max(len(r[0]) for r in rows)
    k_max = max(len(r) for r in routes)
    n = len(routes)
    out = PathBank(
        pts=np.zeros((n, p_max, 2)),
        cum=np.zeros((n, p_max)),
        hdg=np.zeros((n, p_max)),
        vmax=np.zeros((n, p_max)),
        length=np.zeros(n),
        seg_fid=np.full((n, k_max), -1, dtype=np.int64),
        seg_start=np.full((n, k_max), np.inf),
        seg_exit=np.full((n, k_max), -1, dtype=np.int64),
        seg_light=np.full((n, k_max), -1, dtype=np.int64),
        seg_turn=np.full((n, k_max), -1, dtype=np.int64),
        seg_minor=np.zeros((n, k_max), dtype=bool),
    )
    for i, ((line, idx), route) in enumerate(zip(rows, routes)):
        _fill_row(out, i, line, idx, route, town, light_cols, accel)
    return out


def _fill_row(bank, i, pts, first, route, town, light_cols, accel) -> None:
    m = len(pts)
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    starts = cum[first]
    bank.length[i] = cum[-1]
    pad = bank.cum.shape[1] - m
    bank.pts[i, :m], bank.pts[i, m:] = pts, pts[-1]
    bank.cum[i, :m], bank.cum[i, m:] = cum, cum[-1] + 1e-3 * np.arange(1, pad + 1)
    h = np.unwrap(headings(pts))
    bank.hdg[i, :m], bank.hdg[i, m:] = h, h[-1]
    limit = np.zeros(m)
    for k, fid in enumerate(route):
        limit[cum >= starts[k] - 1e-6] = town.paths[fid].speed_limit
    vc = np.sqrt(accel / np.maximum(_smooth(curvature(pts), 5), 1e-4))
    bank.vmax[i, :m], bank.vmax[i, m:] = np.minimum(limit, vc), 0.0
    k = len(route)
    bank.seg_fid[i, :k] = route
    bank.seg_start[i, :k] = starts
    for j, fid in enumerate(route):
        p = town.paths[fid]
        if p.is_connector:
            bank.seg_exit[i, j] = p.outgoing[0]
            bank.seg_light[i, j] = light_cols.get(fid, -1)
            bank.seg_turn[i, j] = p.turn_type
            bank.seg_minor[i, j] = p.minor


def smooth_polyline(points: np.ndarray, window: int) -> np.ndarray:
    """Moving average of a polyline ``(N, 2)`` with point-reflected padding (ends and end tangents kept)."""
    h = window // 2
    if len(points) <= 2 * h + 1:
        return points
    head = 2 * points[0] - points[h:0:-1]
    tail = 2 * points[-1] - points[-2 : -h - 2 : -1]
    padded = np.concatenate([head, points, tail], 0)
    kernel = np.ones(2 * h + 1) / (2 * h + 1)
    return np.stack([np.convolve(padded[:, d], kernel, mode="valid") for d in range(2)], -1)


def _smooth(x: np.ndarray, w: int) -> np.ndarray:
    """Running maximum-ish smoothing: moving average of width ``w`` (keeps curve peaks spread out)."""
    if len(x) < w:
        return x
    k = np.ones(w) / w
    return np.maximum(np.convolve(x, k, mode="same"), 0.0)


def random_route(
    town: Town, start_lane: int, min_length: float, rng: np.random.Generator, avoid: frozenset[int] = frozenset()
) -> list[int]:
    """Random walk through the lane graph from ``start_lane`` until ``min_length`` metres (no U-turns),
    entering lanes in ``avoid`` only when nothing else is possible."""
    route, total = [start_lane], town.paths[start_lane].length
    while total < min_length:
        lane = town.paths[route[-1]]
        options = [c for c in lane.outgoing if town.paths[c].turn_type != TurnType.UTURN]
        options = [c for c in options if town.paths[c].outgoing[0] not in avoid] or options
        if not options:
            break
        weights = np.array([2.0 if town.paths[c].turn_type == TurnType.STRAIGHT else 1.0 for c in options])
        c = options[int(rng.choice(len(options), p=weights / weights.sum()))]
        nxt = town.paths[c].outgoing[0]
        route += [c, nxt]
        total += town.paths[c].length + town.paths[nxt].length
    return route
