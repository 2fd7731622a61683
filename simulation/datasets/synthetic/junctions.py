"""Right of way at the synthetic city's junctions: which connectors conflict, and where a vehicle stops blocking.

Used by :func:`~simulation.datasets.synthetic.traffic.grant_claims` through the drive's step
(:mod:`simulation.datasets.synthetic.drive_step`).
"""

from __future__ import annotations

import numpy as np
import shapely

from simulation.datasets.synthetic.network import Path, Town, TurnType


def conflict_matrix(town: Town, long: bool = False) -> tuple[np.ndarray, dict[int, int]]:
    """``(C, C)`` bool: connectors of one junction (not sharing their upstream lane) whose shrunk polygons cross,
    which merge into the same lane, or which leave the same roadblock side by side with one of them turning
    towards the other (not in bends: their lanes join one to one); with ``long`` (for vehicles longer than
    :data:`LONG_M`, whose boxes swing out of their lane on curves) also those that enter the same roadblock side
    by side from different movements and turns whose lane touches another connector."""
    conns = sorted(town.connectors, key=lambda c: c.fid)
    index = {c.fid: i for i, c in enumerate(conns)}
    shrunk = [c.polygon.buffer(-0.35) for c in conns]
    polys = [c.polygon for c in conns]
    grown = [c.polygon.buffer(0.8) for c in conns]
    out = np.zeros((len(conns), len(conns)), dtype=bool)
    for i, a in enumerate(conns):
        for j in range(i + 1, len(conns)):
            b = conns[j]
            if a.junction != b.junction or a.incoming[0] == b.incoming[0]:
                continue
            same_block = town.paths[a.incoming[0]].roadblock == town.paths[b.incoming[0]].roadblock
            # boxes swinging into the next lane of a movement that turns towards it (a movement that turns away
            # from its neighbour goes side by side with it)
            side = same_block and (_towards(town, a, b) or _towards(town, b, a))
            # (not in a bend: its lanes join one to one and turn alike, a curved stretch of road)
            side = side and grown[i].intersects(b.polygon) and town.junctions[a.junction].num_arms > 2
            merge = a.outgoing[0] == b.outgoing[0]
            # side by side into one roadblock, one of them turning (long boxes swing into the next lane)
            same_exit = town.paths[a.outgoing[0]].roadblock == town.paths[b.outgoing[0]].roadblock
            exit_side = same_exit and a.turn_type != b.turn_type and grown[i].intersects(b.polygon)
            # turning boxes swing out of their lane: turns conflict with any connector their lane touches
            swing = (a.turn_type != TurnType.STRAIGHT or b.turn_type != TurnType.STRAIGHT) and polys[i].intersects(
                polys[j]
            )
            if side or merge or (long and (exit_side or swing)) or shrunk[i].intersects(shrunk[j]):
                out[i, j] = out[j, i] = True
    return out, index


#: A claimant that has waited this long (s, less its time to the line) at a junction holds its right of way
#: against claims that can still stop (see :func:`~simulation.datasets.synthetic.traffic.grant_claims`).
HOLD_AFTER_S = 6.0
#: Vehicles longer than this (m) yield by the wider conflicts of ``conflict_matrix(town, long=True)``.
LONG_M = 7.0
#: A box on a connector stops blocking a conflicting connector once its rear is past the last point of its
#: centre line within this distance of the other connector's polygon.
CLEAR_MARGIN_M = 4.0


def _towards(town: Town, a: Path, b: Path) -> bool:
    """Connector ``a`` turns towards the lane of connector ``b`` (both leaving one roadblock)."""
    ia, ib = town.paths[a.incoming[0]].index, town.paths[b.incoming[0]].index
    turn = a.turn_type
    return turn == TurnType.UTURN or (turn == TurnType.LEFT and ia > ib) or (turn == TurnType.RIGHT and ia < ib)


def clear_points(town: Town, conflict: np.ndarray, index: dict[int, int]) -> np.ndarray:
    """``(C, C)`` arc length along connector ``i`` after which a vehicle whose rear is past it no longer blocks
    connector ``j`` (``inf`` where the two merge into one lane: they stay in conflict to the end; 0 where they
    do not conflict)."""
    conns = sorted(town.connectors, key=lambda c: c.fid)
    out = np.zeros(conflict.shape)
    for i, a in enumerate(conns):
        js = np.flatnonzero(conflict[i])
        if len(js) == 0:
            continue
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(a.centre, axis=0), axis=1))])
        for j in js:
            b = conns[j]
            if a.outgoing[0] == b.outgoing[0]:
                out[i, j] = np.inf
                continue
            near = shapely.dwithin(b.polygon, shapely.points(a.centre), CLEAR_MARGIN_M)
            out[i, j] = cum[np.flatnonzero(near)[-1]] if near.any() else 0.0
    assert all(index[c.fid] == k for k, c in enumerate(conns))
    return out
