"""One 20 Hz step of a synthetic drive: junction right of way, the ego expert, the traffic, the pedestrians.

Every decision of a step is taken from the state at its start: the junction claims of the traffic and of the
ego are granted (or not) first, then the ego expert steps, then the traffic (IDM towards the nearest of its
path leader, corridor obstacle and stop line, plus its own braking events) and the pedestrians.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulation.datasets.synthetic.expert import EGO_OWNER, PED_PREVIEW_S, EgoDriver, EgoFrame
from simulation.datasets.synthetic.junctions import HOLD_AFTER_S, LONG_M
from simulation.datasets.synthetic.paths import PathBank
from simulation.datasets.synthetic.pedestrians import Pedestrians, shifted_boxes
from simulation.datasets.synthetic.traffic import (
    INF,
    IDMParams,
    Objects,
    approach,
    approach_status,
    claims,
    corridor_obstacles,
    exit_blocked,
    free_speed,
    grant_claims,
    idm_accel,
    merge_objects,
    path_leaders,
    register,
    sneaking,
    stop_line_gaps,
)
from simulation.types import PACIFICA, TrafficLightStatus

#: Simulation step (s): 20 Hz, the rate of the logged frames.
DT = 0.05
#: Braking events (:func:`brake_accel`) happen only this far (m) from either end of a lane.
BRAKE_CLEAR_M = 30.0


@dataclass
class TrafficState:
    """The moving vehicles and cyclists of a drive (``N`` rows of one :class:`PathBank`), updated in place."""

    bank: PathBank
    s: np.ndarray
    v: np.ndarray
    sizes: np.ndarray
    params: IDMParams
    conn_row: np.ndarray
    active: np.ndarray
    wait: np.ndarray  # (N,) seconds each row has been yielding at a junction (fairness of claims)
    wait_conn: np.ndarray  # (N,) the connector those seconds were spent waiting for
    sneaking: np.ndarray  # (N,) left turns that started across on yellow after waiting (ignore the light)
    brakes: np.ndarray  # (N, E, 4) braking events: start, end (s), deceleration, target share of the free speed


def brake_accel(brakes: np.ndarray, t: float, v: np.ndarray, v0: np.ndarray) -> np.ndarray:
    """``(N,)`` acceleration cap of vehicles in a braking event at time ``t`` (``INF`` outside one): the event's
    deceleration down to about its target speed, then holding it; a vehicle slower than that (one waiting in
    a queue) is not held back."""
    on = (brakes[..., 0] <= t) & (t < brakes[..., 1])  # (N, E)
    k = on.argmax(1)
    rows = np.arange(len(v))
    target = brakes[rows, k, 3] * v0 + 0.5
    acc = np.minimum(np.maximum(2.0 * (target - v), -brakes[rows, k, 2]), 0.0)
    return np.where(on[rows, k] & (v > target), acc, INF)


def vehicle_boxes(bank: PathBank, s: np.ndarray, v: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    pose = bank.poses(s[:, None])[:, 0]
    return np.concatenate([pose, (v * np.cos(pose[:, 2]))[:, None], (v * np.sin(pose[:, 2]))[:, None], sizes], 1)


def claims_of(
    bank: PathBank,
    s: np.ndarray,
    v: np.ndarray,
    front: np.ndarray,
    rear: np.ndarray,
    conn_row: np.ndarray,
    light: np.ndarray,
    sneak: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Front claims (connector, key), rear occupancy claims (connector, key) of rows of a bank, and how far
    along its connector each rear is (``-inf`` off it), for :func:`clear_points`."""
    k, dist = approach(bank, s, front, conn_row)
    c_front, key = claims(bank, k, dist, v, conn_row, light, sneak)
    rows = np.arange(len(s))
    k_rear = bank.segment_index(s - rear)
    c_rear = conn_row[rows, k_rear]
    u_rear = np.where(c_rear >= 0, s - rear - bank.seg_start[rows, k_rear], -np.inf)
    return c_front, key, c_rear, np.full(len(s), -2e6), u_rear


def step_world(
    tr: TrafficState,
    ego: EgoDriver,
    peds: Pedestrians,
    veh: np.ndarray,
    ped_boxes: np.ndarray,
    ped_owner: np.ndarray,
    static: np.ndarray,
    light: np.ndarray,
    conflict: tuple[np.ndarray, np.ndarray],
    t: float,
    clear: np.ndarray,
) -> EgoFrame:
    """One 20 Hz step of every actor (all decisions from the state at the start of the step).

    Args:
        veh: ``(N, 7)`` boxes of the traffic rows; ped_boxes ``(P, 7)`` / ped_owner ``(P,)``: pedestrians on the
            road and their owner ids; static: ``(S, 7)`` static boxes; light: ``(L,)`` light status now;
            conflict: the ``(C, C)`` conflict matrices (normal, long vehicles); clear: ``(C, C)`` clear points.
    Returns:
        What the ego logged this step.
    """
    n = len(tr.s)
    owner = np.arange(n)
    half = tr.sizes[:, 0] / 2
    act = np.flatnonzero(tr.active)
    ego_box = ego.box()
    objs_t = register(tr.bank, tr.s[act], tr.v[act], half[act], owner[act])
    k_act = tr.bank.segment_index(tr.s[act])
    t_seg = tr.bank.seg_fid[act, k_act]
    t_u = tr.s[act] - tr.bank.seg_start[act, k_act]
    all_boxes = np.concatenate([veh[act], ego_box[None], ped_boxes, static], 0)
    all_owner = np.concatenate([owner[act], [EGO_OWNER], ped_owner, np.full(len(static), -2)]).astype(np.int64)
    blocked, full, sneak, leaders = _right_of_way(tr, ego, light, conflict, clear, objs_t)
    # the ego also sees where walking pedestrians will be shortly (it slows for one about to step into its way)
    preview = (shifted_boxes(ped_boxes, PED_PREVIEW_S), np.asarray(ped_owner, dtype=np.int64))
    frame = ego.step(DT, light, bool(blocked[-1]), objs_t, all_boxes, all_owner, t_seg, t_u, tr.v[act], preview)
    if n:
        _advance_traffic(tr, light, t, (all_boxes, all_owner), blocked[:-1] | full, sneak, leaders)
    peds.step(t, DT, np.concatenate([veh[act], ego_box[None]], 0), light)
    return frame


def _ego_claims(ego: EgoDriver, light: np.ndarray) -> tuple[np.ndarray, ...]:
    """The ego's junction claims (see :func:`claims_of`); updates whether it sneaks across on yellow."""
    e, e_front = np.array([ego.s]), np.array([PACIFICA.front_length])
    e_sneak = sneaking(ego.bank, e, e_front, ego.conn_row, np.array([ego.wait]), np.array([ego.wait_conn]))
    yellow = approach_status(ego.bank, e, e_front, ego.conn_row, light) == TrafficLightStatus.YELLOW
    ego.sneaking = bool(e_sneak[0] and (yellow[0] or (ego.sneaking and ego.v > 0.5)))  # once under way
    return claims_of(
        ego.bank,
        e,
        np.array([ego.v]),
        e_front,
        np.array([PACIFICA.rear_length]),
        ego.conn_row,
        light,
        np.array([ego.sneaking]),
    )


def _right_of_way(
    tr: TrafficState,
    ego: EgoDriver,
    light: np.ndarray,
    conflict: tuple[np.ndarray, np.ndarray],
    clear: np.ndarray,
    objs_t: Objects,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Grant the junction claims of the traffic and of the ego; updates the waiting times and sneaking flags.

    Returns:
        blocked ``(N + 1,)`` (a front claim not granted; the ego last), full ``(N,)`` (the claimed junction's
        exit has no room), sneak ``(N,)`` (left turns starting across on yellow), and the traffic's path
        leaders (gap, speed) ``(N,)`` each (empty without traffic).
    """
    n = len(tr.s)
    owner = np.arange(n)
    half = tr.sizes[:, 0] / 2
    # junction claims of traffic (inactive rows claim nothing) and of the ego; a left turn that has waited
    # at its line may start across while its light is yellow and keeps its claim once under way (not on red:
    # a turn that sneaked on red would take the start of the crossing phase's green from its queue)
    sneak = sneaking(tr.bank, tr.s, half, tr.conn_row, tr.wait, tr.wait_conn)
    t_yellow = approach_status(tr.bank, tr.s, half, tr.conn_row, light) == TrafficLightStatus.YELLOW
    sneak &= t_yellow | (tr.sneaking & (tr.v > 0.5))
    tr.sneaking = sneak
    cf, kf, cr, kr, ur = claims_of(tr.bank, tr.s, tr.v, half, half, tr.conn_row, light, sneak)
    cf[~tr.active], cr[~tr.active] = -1, -1
    ecf, ekf, ecr, ekr, eur = _ego_claims(ego, light)
    # do not enter a junction whose exit has no room: no claim, stop at the line
    full = np.zeros(n, dtype=bool)
    gap_l, v_l = np.zeros(0), np.zeros(0)
    if n:
        objs = merge_objects([objs_t, ego.register()])
        gap_l, v_l, _ = path_leaders(tr.bank, tr.s, half, owner, objs)
        full = exit_blocked(tr.bank, tr.s, half, tr.sizes[:, 0], gap_l, v_l, tr.conn_row)
        cf[full] = -1
    kf = kf - tr.wait + 1e-6 * owner  # who has waited longer goes first (no starvation)
    ekf = ekf - ego.wait
    all_c = np.concatenate([cf, cr, ecf, ecr])
    all_k = np.concatenate([kf, kr, ekf, ekr])
    # how far the claimant's rear is along the claimed connector: past its clear point it no longer blocks
    all_u = np.concatenate([np.where(cf == cr, ur, -np.inf), ur, np.where(ecf == ecr, eur, -np.inf), eur])
    long = tr.sizes[:, 0] > LONG_M
    all_long = np.concatenate([long, long, [False, False]])
    always = np.concatenate([np.zeros(n, dtype=bool), np.ones(n, dtype=bool), [False, True]])  # rear claims
    granted = grant_claims(all_c, all_k, conflict[0], always, all_u, clear, (conflict[1], all_long), HOLD_AFTER_S)
    front = np.concatenate([np.arange(n), [2 * n]])
    blocked = (all_c[front] >= 0) & ~granted[front]
    # waiting time counts while yielding and is kept until the claimed connector changes
    tr.wait = np.where(cf == tr.wait_conn, tr.wait + DT * blocked[:-1], 0.0)
    tr.wait_conn = cf
    ego.wait = ego.wait + DT * bool(blocked[-1]) if int(ecf[0]) == ego.wait_conn else 0.0
    ego.wait_conn = int(ecf[0])
    return blocked, full, sneak, (gap_l, v_l)


def _advance_traffic(
    tr: TrafficState,
    light: np.ndarray,
    t: float,
    obstacles: tuple[np.ndarray, np.ndarray],
    stopped: np.ndarray,
    sneak: np.ndarray,
    leaders: tuple[np.ndarray, np.ndarray],
) -> None:
    """Move the traffic by one step: IDM towards the nearest of its path leader, the obstacles in its corridor
    (boxes ``(M, 7)`` and owners ``(M,)``) and its stop line (held at it where ``stopped``), capped by its
    braking events well inside a lane."""
    n = len(tr.s)
    owner = np.arange(n)
    half = tr.sizes[:, 0] / 2
    p = tr.params
    gap_l, v_l = leaders
    all_boxes, all_owner = obstacles
    gap_c, v_c, _ = corridor_obstacles(tr.bank, tr.s, half, tr.sizes[:, 1] / 2 + 0.3, owner, all_boxes, all_owner)
    gap_s, _ = stop_line_gaps(tr.bank, tr.s, half, tr.v, light, stopped, tr.conn_row, np.full(n, 3.0), sneak)
    v0 = free_speed(tr.bank, tr.s, half, p)
    acc = np.minimum(
        np.minimum(idm_accel(tr.v, v0, gap_l, v_l, p), idm_accel(tr.v, v0, gap_c, v_c, p)),
        idm_accel(tr.v, v0, np.where(gap_s < INF, gap_s + p.s0 - 1.0, INF), np.zeros(n), p),
    )
    # only well inside a lane: never in a junction, nor where followers would be held in one
    rows, k = np.arange(n), tr.bank.segment_index(tr.s)
    nxt = np.minimum(k + 1, tr.bank.seg_start.shape[1] - 1)
    end = np.where(nxt > k, tr.bank.seg_start[rows, nxt], tr.bank.length)
    end = np.where(np.isfinite(end), end, tr.bank.length)
    u = tr.s - tr.bank.seg_start[rows, k]
    free = (tr.conn_row[rows, k] < 0) & (u > BRAKE_CLEAR_M) & (end - tr.s > BRAKE_CLEAR_M)
    acc = np.where(free, np.minimum(acc, brake_accel(tr.brakes, t, tr.v, v0)), acc)
    tr.s += np.maximum(tr.v * DT + 0.5 * acc * DT * DT, 0.0)
    tr.v = np.maximum(tr.v + acc * DT, 0.0)
    tr.active &= tr.s < tr.bank.length - half - 1.0
