"""Fixed-time traffic lights of the synthetic city.

Each signalled junction cycles through two phases: every movement from the arms of its main street,
then every movement from the arms of the cross street. Left turns and U-turns are permissive: they yield
to oncoming traffic (see :func:`~simulation.datasets.synthetic.traffic.claims`). A phase is green for its
own duration, then yellow for :data:`YELLOW_S`, then all-red for :data:`ALL_RED_S`; every connector of the
other phase is red meanwhile. Phases without connectors are skipped. Left turns and U-turns get a leading
protected interval: their green starts :data:`LEAD_LEFT_S` before that of the other movements of the phase,
which then have their full green (so that a left turn at the head of a single-lane queue does not hold it
for the whole green).
"""

from __future__ import annotations

import numpy as np

from simulation.datasets.synthetic.network import Town, TurnType
from simulation.types import TrafficLightStatus

YELLOW_S = 3.0
ALL_RED_S = 1.0
LEAD_LEFT_S = 2.5


def signalled_connectors(town: Town) -> np.ndarray:
    """``(C,)`` int64 fids of the lane connectors that have a traffic light, sorted."""
    return np.array(sorted(p.fid for p in town.connectors if p.phase >= 0), dtype=np.int64)


def _cycle(town: Town, jf: int, phases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start (s into the cycle) and duration of each phase of junction ``jf``; phases not in ``phases`` last 0."""
    j = town.junctions[jf]
    used = np.isin(np.arange(len(j.phase_green)), phases)
    dur = np.where(used, LEAD_LEFT_S + j.phase_green + YELLOW_S + ALL_RED_S, 0.0)
    return np.concatenate([[0.0], np.cumsum(dur)[:-1]]), dur


def yellow_now_offset(town: Town, connector: int, t_s: float) -> float:
    """The cycle offset of the connector's junction that makes its green end at ``t_s`` (yellow from then on):
    an actuated signal that gives the cross street its phase now."""
    c = town.paths[connector]
    phases = np.array([p.phase for p in town.connectors if p.junction == c.junction and p.phase >= 0])
    start, dur = _cycle(town, c.junction, phases)
    end = start[c.phase] + LEAD_LEFT_S + town.junctions[c.junction].phase_green[c.phase]
    return float(np.mod(end - t_s, dur.sum()))


def light_status(
    town: Town, times_s: np.ndarray, offsets: dict[int, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Status of every signalled connector at each time.

    Args:
        town: the road network.
        times_s: ``(F,)`` seconds since the start of the log.
        offsets: junction fid -> cycle offset (s) in place of the junction's own ``cycle_offset``.

    Returns:
        connector fids ``(C,)`` and status ``(F, C)`` int8 :class:`TrafficLightStatus`.
    """
    fids = signalled_connectors(town)
    status = np.full((len(times_s), len(fids)), TrafficLightStatus.RED, dtype=np.int8)
    if len(fids) == 0:
        return fids, status
    junction = np.array([town.paths[int(f)].junction for f in fids])
    phase = np.array([town.paths[int(f)].phase for f in fids])
    lead = np.array([town.paths[int(f)].turn_type in (TurnType.LEFT, TurnType.UTURN) for f in fids])
    for jf in np.unique(junction):
        j = town.junctions[int(jf)]
        mask = junction == jf
        start, dur = _cycle(town, int(jf), phase[mask])
        offset = j.cycle_offset if offsets is None else offsets.get(int(jf), j.cycle_offset)
        tau = np.mod(times_s + offset, dur.sum())  # (F,)
        rel = tau[:, None] - start[phase[mask]][None, :]  # (F, Cj) time into each connector's phase
        first = np.where(lead[mask], 0.0, LEAD_LEFT_S)[None, :]
        end = LEAD_LEFT_S + j.phase_green[phase[mask]]  # (Cj,) end of green of every movement of the phase
        green = (rel >= first) & (rel < end)
        yellow = (rel >= end) & (rel < end + YELLOW_S)
        s = np.full(rel.shape, TrafficLightStatus.RED, dtype=np.int8)
        s[green] = TrafficLightStatus.GREEN
        s[yellow] = TrafficLightStatus.YELLOW
        status[:, mask] = s
    return fids, status
