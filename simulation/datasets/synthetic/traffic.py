"""Vectorised longitudinal traffic model: IDM along lane paths with leaders, lights, conflicts and obstacles.

Every moving vehicle (traffic and the ego) is a row of a :class:`~.paths.PathBank` and moves by arc
length. Each step computes, for all rows at once, the tightest of four constraints and applies the IDM
law: (1) the nearest vehicle registered on a segment of the row's path ahead (vehicles on a connector
are also registered at the start of the lane it merges into, so merges are ordered); (2) any box that
enters the corridor ahead (pedestrians, crossing vehicles, the ego); (3) the stop line of a red light,
or of a yellow one when it can still be stopped for; (4) the stop line of a junction while a conflicting
connector is occupied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from simulation.datasets.synthetic.paths import PathBank
from simulation.types import TrafficLightStatus

#: Look-ahead offsets (m) at which the free-road speed anticipates curves and speed limits.
ANTICIPATION = np.array([0.0, 4.0, 8.0, 14.0, 20.0, 30.0, 42.0, 56.0, 72.0])
#: Probe offsets (m) ahead of the front bumper for the corridor check.
PROBES = np.arange(0.25, 26.0, 2.0)
INF = 1e9
#: Vehicles stop this far before the end of their lane (room for long boxes swinging out of the next lane).
STOP_MARGIN = 3.5
#: Claim a junction connector this many seconds before reaching it.
CLAIM_HORIZON_S = 4.5
#: Extra priority key of left turns and U-turns (seconds): they yield to oncoming traffic.
YIELD_PENALTY_S = 3.0
#: Extra priority key (seconds) of movements from the minor arm of an uncontrolled junction: they give way to
#: the main street and enter a gap in its flow (or after waiting this long, see :func:`grant_claims`).
MINOR_PENALTY_S = 4.0
#: Segments ahead (including the current one) searched for leaders.
WINDOW = 5
#: A left turn / U-turn that has yielded this long at its stop line may still go when its light turns
#: yellow or red (it "sneaks" across once the oncoming flow stops); without it a busy oncoming stream
#: can starve the turn, and the queue behind it, for the whole log.
SNEAK_WAIT_S = 2.0
#: ... when its front bumper is this close to the stop line.
SNEAK_GAP_M = 2.0


@dataclass
class IDMParams:
    """Per-row IDM parameters (each ``(N,)``): speed factor on the allowed speed, max acceleration,
    comfortable deceleration, time headway, minimum gap, emergency deceleration."""

    v_factor: np.ndarray
    a: np.ndarray
    b: np.ndarray
    headway: np.ndarray
    s0: np.ndarray
    b_max: np.ndarray

    @staticmethod
    def sample(n: int, rng: np.random.Generator, cyclist: np.ndarray | None = None) -> IDMParams:
        p = IDMParams(
            v_factor=rng.uniform(0.8, 1.05, n),
            a=rng.uniform(1.1, 2.0, n),
            b=rng.uniform(1.6, 2.6, n),
            headway=rng.uniform(1.0, 1.8, n),
            s0=rng.uniform(2.0, 3.5, n),
            b_max=np.full(n, 6.0),
        )
        if cyclist is not None:
            p.v_factor = np.where(cyclist, rng.uniform(0.45, 0.6, n), p.v_factor)
        return p


@dataclass
class Objects:
    """Moving objects registered on path segments, for the path-leader search (``O`` entries).

    Attributes:
        seg: ``(O,)`` path fid the entry lies on. u: ``(O,)`` arc length of its centre on that path.
        v: ``(O,)`` speed. half: ``(O,)`` half length. owner: ``(O,)`` agent id.
        min_d: ``(O,)`` only rows whose centre is more than this far behind see the entry (0: all rows behind).
    """

    seg: np.ndarray
    u: np.ndarray
    v: np.ndarray
    half: np.ndarray
    owner: np.ndarray
    min_d: np.ndarray | None = None

    def min_distance(self) -> np.ndarray:
        return np.zeros(len(self.seg)) if self.min_d is None else self.min_d


def register(bank: PathBank, s: np.ndarray, v: np.ndarray, half: np.ndarray, owner: np.ndarray) -> Objects:
    """Entries of the rows of ``bank`` at arc lengths ``s``: their segment, plus a virtual entry on the
    lane after a connector (negative arc length) so that merging vehicles see each other."""
    n = len(s)
    k = bank.segment_index(s)
    rows = np.arange(n)
    seg = bank.seg_fid[rows, k]
    u = s - bank.seg_start[rows, k]
    nxt = np.minimum(k + 1, bank.seg_fid.shape[1] - 1)
    exit_ = bank.seg_exit[rows, k]
    has = exit_ >= 0
    u_v = u - (bank.seg_start[rows, nxt] - bank.seg_start[rows, k])
    return Objects(
        seg=np.concatenate([seg, exit_[has]]),
        u=np.concatenate([u, u_v[has]]),
        v=np.concatenate([v, v[has]]),
        half=np.concatenate([half, half[has]]),
        owner=np.concatenate([owner, owner[has]]),
    )


def merge_objects(parts: list[Objects]) -> Objects:
    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    return Objects(
        cat("seg"), cat("u"), cat("v"), cat("half"), cat("owner"), np.concatenate([p.min_distance() for p in parts])
    )


def path_leaders(
    bank: PathBank, s: np.ndarray, half: np.ndarray, owner: np.ndarray, objs: Objects, horizon: float = 90.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest registered object ahead on each row's path: gap ``(N,)``, its speed ``(N,)``, its owner ``(N,)``
    (-1 and gap ``INF`` without one)."""
    if len(objs.seg) == 0:
        return np.full(len(s), INF), np.zeros(len(s)), np.full(len(s), -1)
    kk = bank.seg_fid.shape[1]
    window = np.minimum(bank.segment_index(s)[:, None] + np.arange(WINDOW)[None, :], kk - 1)  # (N, W)
    seg_fid = np.take_along_axis(bank.seg_fid, window, 1)
    seg_start = np.take_along_axis(bank.seg_start, window, 1)
    # the objects on each window segment: a run of the objects sorted by segment, at most M of them
    order = np.argsort(objs.seg, kind="stable")
    sorted_seg = objs.seg[order]
    lo = np.searchsorted(sorted_seg, seg_fid, "left")
    count = np.searchsorted(sorted_seg, seg_fid, "right") - lo
    m = max(int(count.max()), 1)
    slot = lo[:, :, None] + np.arange(m)[None, None, :]  # (N, W, M)
    present = np.arange(m)[None, None, :] < count[:, :, None]
    j_all = order[np.minimum(slot, len(order) - 1)]
    d = seg_start[:, :, None] + objs.u[j_all] - s[:, None, None]
    ok = present & (d > objs.min_distance()[j_all]) & (d < horizon) & (objs.owner[j_all] != owner[:, None, None])
    d = np.where(ok, d, INF).reshape(len(s), -1)
    j_all = j_all.reshape(len(s), -1)
    dist = d.min(1)
    # nearest object; among equally near ones the first registered (as a dense search over objects would)
    j = np.where(d == dist[:, None], j_all, len(objs.seg)).min(1)
    j = np.minimum(j, len(objs.seg) - 1)
    found = dist < INF
    gap = np.where(found, dist - half - objs.half[j], INF)
    return gap, np.where(found, objs.v[j], 0.0), np.where(found, objs.owner[j], -1)


def corridor_obstacles(
    bank: PathBank,
    s: np.ndarray,
    front: np.ndarray,
    radius: np.ndarray,
    owner: np.ndarray,
    boxes: np.ndarray,
    box_owner: np.ndarray,
    probes: np.ndarray = PROBES,
    lateral: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First box ``(A, 7)`` (x, y, heading, vx, vy, length, width) that a probe ahead of each row falls into.

    Args:
        s: ``(N,)`` arc length of the reference point; front: ``(N,)`` its distance to the front bumper.
        radius: ``(N,)`` probe radius (half width plus a margin).
        probes: ``(M,)`` probe distances ahead of the front bumper. lateral: ``(N,)`` or ``(N, M)`` left shift
            of the probes.

    Returns:
        gap ``(N,)`` from the front bumper (``INF`` if clear), the box speed along the path ``(N,)``, its owner.
    """
    n = len(s)
    if len(boxes) == 0:
        return np.full(n, INF), np.zeros(n), np.full(n, -1)
    q = bank.poses(s[:, None] + front[:, None] + probes[None, :])  # (N, M, 3)
    if lateral is not None:
        lat = np.broadcast_to(lateral.reshape(n, -1), q.shape[:2])
        q[..., 0] -= np.sin(q[..., 2]) * lat
        q[..., 1] += np.cos(q[..., 2]) * lat
    reach = probes[-1] / 2 + radius + 1.0
    m, aa = _first_hits(
        q,
        np.ascontiguousarray(radius, dtype=np.float64),
        reach,
        np.ascontiguousarray(owner, dtype=np.int64),
        np.ascontiguousarray(boxes, dtype=np.float64),
        np.ascontiguousarray(box_owner, dtype=np.int64),
        np.cos(boxes[:, 2]),
        np.sin(boxes[:, 2]),
        np.hypot(boxes[:, 5], boxes[:, 6]) / 2,
    )
    gap, v_out, who = np.full(n, INF), np.zeros(n), np.full(n, -1)
    ii = np.flatnonzero(m < len(probes))
    m, aa = m[ii], aa[ii]
    h = q[ii, m, 2]
    v_along = boxes[aa, 3] * np.cos(h) + boxes[aa, 4] * np.sin(h)
    gap[ii] = np.maximum(probes[m] - 0.25, 0.0)
    v_out[ii] = np.maximum(v_along, 0.0)
    who[ii] = box_owner[aa]
    return gap, v_out, who


@numba.njit(cache=True)
def _first_hits(q, radius, reach, owner, boxes, box_owner, cos_b, sin_b, half_diag):  # pragma: no cover - compiled
    """For each row of probe poses ``q`` ``(N, M, 3)``: the first probe index that falls into a box (``M`` if
    none) and that box (the lowest-numbered box among those hit first). A box is tested only if it is within
    reach of the probe span's bounding circle (centred at the middle probe) and not the row's own."""
    n, mm = q.shape[0], q.shape[1]
    best_m = np.full(n, mm, dtype=np.int64)
    best_a = np.full(n, -1, dtype=np.int64)
    mid = mm // 2
    for i in range(n):
        mx, my, r = q[i, mid, 0], q[i, mid, 1], radius[i]
        for a in range(boxes.shape[0]):
            if box_owner[a] == owner[i]:
                continue
            dx, dy = mx - boxes[a, 0], my - boxes[a, 1]
            lim = reach[i] + half_diag[a]
            if not dx * dx + dy * dy < lim * lim:
                continue
            c, sn = cos_b[a], sin_b[a]
            hl, hw = boxes[a, 5] / 2 + r, boxes[a, 6] / 2 + r
            for k in range(best_m[i]):
                ex, ey = q[i, k, 0] - boxes[a, 0], q[i, k, 1] - boxes[a, 1]
                if abs(ex * c + ey * sn) < hl and abs(-ex * sn + ey * c) < hw:
                    best_m[i] = k
                    best_a[i] = a
                    break
    return best_m, best_a


def approach(bank: PathBank, s: np.ndarray, front: np.ndarray, conn_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The connector each row is on or approaching: segment index ``(N,)`` (-1 if none ahead) and the distance
    from the front bumper to its stop line ``(N,)`` (negative once the front is past it)."""
    k_cur = bank.segment_index(s)
    k, dist = _next_connector(bank.seg_start, conn_row, k_cur, np.ascontiguousarray(s + front, dtype=np.float64))
    return k, dist


@numba.njit(cache=True)
def _next_connector(seg_start, conn_row, k_cur, front_s):  # pragma: no cover - compiled
    """Per row: the first connector segment at or after ``k_cur`` (-1 if none) and the distance from the front
    bumper (at arc length ``front_s``) to the stop line :data:`STOP_MARGIN` before it (``INF`` if none)."""
    n, kk = seg_start.shape
    k_out = np.full(n, -1, dtype=np.int64)
    dist = np.full(n, INF)
    for i in range(n):
        for k in range(k_cur[i], kk):
            if conn_row[i, k] >= 0:
                k_out[i] = k
                dist[i] = seg_start[i, k] - STOP_MARGIN - front_s[i]
                break
    return k_out, dist


def exit_blocked(
    bank: PathBank,
    s: np.ndarray,
    front: np.ndarray,
    length: np.ndarray,
    gap_lead: np.ndarray,
    v_lead: np.ndarray,
    conn_row: np.ndarray,
) -> np.ndarray:
    """``(N,)`` True where a row has not entered its next connector yet and the lane after it has no room for
    it before a slow leader (do not block the junction)."""
    k, dist = approach(bank, s, front, conn_row)
    rows = np.arange(len(s))
    nxt = np.minimum(np.maximum(k, 0) + 1, bank.seg_fid.shape[1] - 1)
    to_exit = bank.seg_start[rows, nxt] - (s + front)
    space = gap_lead - to_exit
    return (k >= 0) & (dist > -0.5) & (dist < 30.0) & (v_lead < 2.0) & (space < length + 3.0)


def sneaking(
    bank: PathBank,
    s: np.ndarray,
    front: np.ndarray,
    conn_row: np.ndarray,
    wait: np.ndarray,
    wait_conn: np.ndarray,
) -> np.ndarray:
    """``(N,)`` True where a row waits at its stop line (front within :data:`SNEAK_GAP_M`) to make a left turn
    or U-turn and has yielded there for :data:`SNEAK_WAIT_S` on the same connector (``wait`` / ``wait_conn``:
    seconds yielded and the connector they were spent on, from the previous step)."""
    k, dist = approach(bank, s, front, conn_row)
    rows = np.arange(len(s))
    kk = np.maximum(k, 0)
    turn = bank.seg_turn[rows, kk]
    permissive = (turn == 1) | (turn == 3)
    ci = np.where(k >= 0, conn_row[rows, kk], -1)
    return (k >= 0) & (ci >= 0) & (ci == wait_conn) & (wait >= SNEAK_WAIT_S) & (dist < SNEAK_GAP_M) & permissive


def approach_status(
    bank: PathBank, s: np.ndarray, front: np.ndarray, conn_row: np.ndarray, light: np.ndarray
) -> np.ndarray:
    """``(N,)`` light status of the connector each row is on or approaching (green without a light)."""
    k, _ = approach(bank, s, front, conn_row)
    rows = np.arange(len(s))
    col = np.where(k >= 0, bank.seg_light[rows, np.maximum(k, 0)], -1)
    return np.where(col >= 0, light[np.maximum(col, 0)], TrafficLightStatus.GREEN)


#: Claims with a key below this are committed (they could not stop comfortably; see :func:`claims`).
COMMITTED_KEY = -1e5


def claims(
    bank: PathBank,
    k: np.ndarray,
    dist: np.ndarray,
    v: np.ndarray,
    conn_row: np.ndarray,
    light: np.ndarray,
    sneak: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Junction claims of rows: connector index ``(N,)`` in the conflict matrix (-1 if none) and priority key
    ``(N,)`` (smaller goes first).

    A row claims its connector when it is on it, committed (it could not stop comfortably), due within
    :data:`CLAIM_HORIZON_S` (or 8 m) under a non-red light, or ``sneak`` ing (see :func:`sneaking`; under any
    light). The key is the time to reach the stop line, plus :data:`YIELD_PENALTY_S` for left turns and
    U-turns (they yield to oncoming traffic); rows on the connector or committed to it come first.
    """
    rows = np.arange(len(k))
    kk = np.maximum(k, 0)
    ci = np.where(k >= 0, conn_row[rows, kk], -1)
    col = bank.seg_light[rows, kk]
    status = np.where(col >= 0, light[np.maximum(col, 0)], TrafficLightStatus.GREEN)
    tta = np.maximum(dist, 0.0) / np.maximum(v, 1.0)
    turn = bank.seg_turn[rows, kk]
    key = tta + YIELD_PENALTY_S * ((turn == 1) | (turn == 3)) + MINOR_PENALTY_S * bank.seg_minor[rows, kk]
    committed = (dist < 0.0) | (dist < v**2 / (2.0 * 2.5) - 0.5)
    due = (tta < CLAIM_HORIZON_S) | (dist < 8.0)
    go = committed | (due & (status != TrafficLightStatus.RED))
    if sneak is not None:
        go |= sneak
    ok = (k >= 0) & (ci >= 0) & go
    return np.where(ok, ci, -1), np.where(committed, -1e6 + dist, key)


def grant_claims(
    conn: np.ndarray,
    key: np.ndarray,
    conflict: np.ndarray,
    always: np.ndarray,
    u: np.ndarray | None = None,
    clear: np.ndarray | None = None,
    wide: tuple[np.ndarray, np.ndarray] | None = None,
    hold_s: float = np.inf,
) -> np.ndarray:
    """``(Q,)`` True for the claims that may go: in order of priority (``key``, smaller first), a claim is granted
    unless it conflicts with one granted before it; claims in ``always`` (a vehicle already on its connector) are
    granted in any case. A claimant that waits itself holds no right of way, so it does not keep others waiting,
    unless it has waited long (its key below ``-hold_s``): then it holds its right of way against the claims after
    it that can still stop before their line (not on their connector, not committed), so that a steady stream
    on a conflicting movement lets it in once the vehicles already in the junction are through.

    Args:
        conn: ``(Q,)`` connector index in the conflict matrix (-1: no claim). u: ``(Q,)`` how far each
            claimant's rear is along its connector (``-inf`` before it), clear: ``(C, C)`` clear points (see
            :func:`~simulation.datasets.synthetic.junctions.clear_points`): a granted claimant whose rear is past the
            clear point of its connector with respect to another claim's connector no longer blocks that claim.
        wide: (a wider conflict matrix, ``(Q,)`` flags of long vehicles) used for pairs with a long vehicle.
    """
    granted = always & (conn >= 0)
    q = np.flatnonzero(conn >= 0)
    if len(q) == 0:
        return granted
    c = conflict[conn[q]][:, conn[q]]  # (q, q): claim a blocks claim b
    if wide is not None:
        long = wide[1][q]
        c |= (long[:, None] | long[None, :]) & wide[0][conn[q]][:, conn[q]]
    if u is not None and clear is not None:
        c &= u[q][:, None] < clear[conn[q]][:, conn[q]]
    g = granted[q].copy()
    kq = key[q]
    before_line = np.ones(len(q), dtype=bool) if u is None else u[q] == -np.inf
    can_stop = (kq > COMMITTED_KEY) & before_line
    holding = np.zeros(len(q), dtype=bool)
    for i in np.argsort(kq, kind="stable"):
        if g[i]:
            continue
        if not (g & c[:, i]).any() and not (can_stop[i] and (holding & c[:, i]).any()):
            g[i] = True
        elif kq[i] < -hold_s:
            holding[i] = True
    granted[q] = g
    return granted


def stop_line_gaps(
    bank: PathBank,
    s: np.ndarray,
    front: np.ndarray,
    v: np.ndarray,
    light: np.ndarray,
    blocked: np.ndarray,
    conn_row: np.ndarray,
    b_yellow: np.ndarray,
    sneak: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gap to the stop line each row must respect (``INF`` if none) and whether it is for a light.

    Args:
        light: ``(L,)`` status of the signalled connectors at this step.
        blocked: ``(N,)`` the row must yield to a conflicting claim (not granted by :func:`grant_claims`).
        conn_row: ``(N, K)`` index of each segment in the conflict matrix (-1 for lanes).
        b_yellow: ``(N,)`` deceleration a row accepts to stop at a yellow light.
        sneak: ``(N,)`` rows that ignore their light (see :func:`sneaking`); they still yield.
    """
    k, dist = approach(bank, s, front, conn_row)
    rows = np.arange(len(s))
    col = np.where(k >= 0, bank.seg_light[rows, np.maximum(k, 0)], -1)
    status = np.where(col >= 0, light[np.maximum(col, 0)], TrafficLightStatus.GREEN)
    stop_light = (status == TrafficLightStatus.RED) | (
        (status == TrafficLightStatus.YELLOW) & (dist > v**2 / (2.0 * b_yellow))
    )
    if sneak is not None:
        stop_light &= ~sneak
    must = (k >= 0) & (stop_light | blocked) & (dist > -0.5)
    return np.where(must, np.maximum(dist, 0.05), INF), must & stop_light


def free_speed(bank: PathBank, s: np.ndarray, front: np.ndarray, p: IDMParams) -> np.ndarray:
    """``(N,)`` desired speed: the allowed speed ahead, anticipated with the comfortable deceleration."""
    ahead = s[:, None] + front[:, None] + ANTICIPATION[None, :]
    vmax = bank.interp("vmax", np.minimum(ahead, bank.length[:, None]))
    vmax = np.where(ahead >= bank.length[:, None] - 0.5, 0.0, vmax)  # end of path: stop
    reach = np.sqrt(vmax**2 + 2.0 * 0.6 * p.b[:, None] * ANTICIPATION[None, :])
    return np.maximum(reach.min(1) * p.v_factor, 0.3)


def idm_accel(v: np.ndarray, v0: np.ndarray, gap: np.ndarray, v_lead: np.ndarray, p: IDMParams) -> np.ndarray:
    """IDM acceleration ``(N,)``; ``gap = INF`` means no leader.

    The synthetic city's own driver model, not :func:`simulation.idm.idm_law`: per-driver parameters
    (:class:`IDMParams` arrays), ``s*`` floored at 0, gaps floored at 0.05 m, ``v0`` at 0.1 m/s. It is part of the
    generator and stays frozen, so that a seed keeps giving byte-identical logs.
    """
    s_star = p.s0 + v * p.headway + v * (v - v_lead) / (2.0 * np.sqrt(p.a * p.b))
    inter = np.where(gap < INF, (np.maximum(s_star, 0.0) / np.maximum(gap, 0.05)) ** 2, 0.0)
    acc = p.a * (1.0 - (v / np.maximum(v0, 0.1)) ** 4 - inter)
    return np.minimum(np.maximum(acc, -p.b_max), p.a)  # np.clip, without its overhead on small arrays
