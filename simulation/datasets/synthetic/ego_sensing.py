"""What the ego expert senses at one step: the leader on its path, the nearest obstacle in its corridor (its
lane-change profile included), the nearest predicted pedestrian in that corridor and the stop line it must hold at.

Pure functions of the ego's path bank and state; :class:`~simulation.datasets.synthetic.expert.EgoDriver` turns
what they find into its acceleration.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from simulation.datasets.synthetic.paths import PathBank
from simulation.datasets.synthetic.traffic import (
    INF,
    Objects,
    corridor_obstacles,
    exit_blocked,
    path_leaders,
    stop_line_gaps,
)
from simulation.types import PACIFICA

EGO_OWNER = -7  # agent id of the ego in constraint searches
REAR_TO_CENTER = PACIFICA.rear_axle_to_center
#: ``(M,)`` distances (m) ahead of the front bumper where the ego probes its corridor.
EGO_PROBES = np.arange(0.25, 50.0, 2.0)
#: Look-ahead (m) of the ego's leader search on its path.
LEADER_HORIZON_M = 120.0
#: Half width of the ego's corridor beyond its own half width (m).
CORRIDOR_MARGIN_M = 0.5
#: Deceleration (m/s^2) the ego accepts to stop at a yellow light (else it drives on).
EGO_YELLOW_DECEL = 2.6


class EgoSensed(NamedTuple):
    """What the ego senses at one step, each ``(1,)``.

    Attributes:
        gap_l, v_l, own_l: gap (m, ``INF`` if none), speed and owner of the leader on its path.
        gap_c, v_c, own_c: the same of the nearest obstacle in its corridor.
        gap_p: gap to the nearest predicted pedestrian position in its corridor (``INF`` if none).
        gap_s, red: gap to the stop line it must hold at (``INF`` if none) and whether that is for a red light.
    """

    gap_l: np.ndarray
    v_l: np.ndarray
    own_l: np.ndarray
    gap_c: np.ndarray
    v_c: np.ndarray
    own_c: np.ndarray
    gap_p: np.ndarray
    gap_s: np.ndarray
    red: np.ndarray


def corridor_ahead(
    bank: PathBank, s: float, probe_offsets: np.ndarray, boxes: np.ndarray, box_owner: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gap ``(1,)``, speed ``(1,)`` and owner ``(1,)`` of the nearest of ``boxes`` ``(Q, 7)`` (owners ``(Q,)``)
    in the corridor of the ego at arc length ``s`` on ``bank`` (one row), shifted sideways by ``probe_offsets``
    ``(M,)`` at the :data:`EGO_PROBES`."""
    return corridor_obstacles(
        bank,
        np.array([s]),
        np.array([PACIFICA.front_length]),
        np.array([PACIFICA.width / 2 + CORRIDOR_MARGIN_M]),
        np.array([EGO_OWNER]),
        boxes,
        box_owner,
        EGO_PROBES,
        probe_offsets[None, :],
    )


def sense_ego(
    bank: PathBank,
    s: float,
    v: float,
    conn_row: np.ndarray,
    sneaking: bool,
    probe_offsets: np.ndarray,
    light: np.ndarray,
    blocked: bool,
    objs: Objects,
    boxes: np.ndarray,
    box_owner: np.ndarray,
    preview: tuple[np.ndarray, np.ndarray] | None,
) -> EgoSensed:
    """Everything that constrains the ego at arc length ``s`` and speed ``v`` on its path ``bank`` (one row).

    ``conn_row``: ``(1, S)`` index of each route segment in the conflict matrix (-1 for lanes); ``sneaking``: it
    crosses on yellow after waiting; ``probe_offsets``: ``(M,)`` lateral offsets of its lane-change profile at the
    probes; ``light``: ``(L,)`` status of the signalled connectors; ``blocked``: it must yield to a conflicting
    claim; ``objs``: path entries of the other vehicles; ``boxes`` ``(Q, 7)`` / ``box_owner`` ``(Q,)``: objects
    that may enter its corridor; ``preview``: predicted pedestrian boxes and owners (``None`` or empty: none).
    """
    s_, v_ = np.array([s]), np.array([v])
    gap_l, v_l, own_l = path_leaders(
        bank, s_ + REAR_TO_CENTER, np.array([PACIFICA.length / 2]), np.array([EGO_OWNER]), objs, LEADER_HORIZON_M
    )
    gap_c, v_c, own_c = corridor_ahead(bank, s, probe_offsets, boxes, box_owner)
    gap_p = np.full(1, INF)
    if preview is not None and len(preview[0]):
        gap_p, _, _ = corridor_ahead(bank, s, probe_offsets, preview[0], preview[1])
    front, length = np.array([PACIFICA.front_length]), np.array([PACIFICA.length])
    full = exit_blocked(bank, s_, front, length, gap_l, v_l, conn_row)
    gap_s, red = stop_line_gaps(
        bank,
        s_,
        front,
        v_,
        light,
        np.array([blocked]) | full,
        conn_row,
        np.array([EGO_YELLOW_DECEL]),
        np.array([sneaking]),
    )
    return EgoSensed(gap_l, v_l, own_l, gap_c, v_c, own_c, gap_p, gap_s, red)


__all__ = ["EGO_OWNER", "EGO_PROBES", "REAR_TO_CENTER", "EgoSensed", "corridor_ahead", "sense_ego"]
