"""What the ego expert senses: leader on its path, obstacles in its corridor (sideways with its lane change),
predicted pedestrians and the stop line, each ``(1,)``."""

from __future__ import annotations

import numpy as np

from simulation.datasets.synthetic.ego_sensing import EGO_PROBES, EgoSensed, corridor_ahead, sense_ego
from simulation.datasets.synthetic.expert import EgoDriver
from simulation.datasets.synthetic.generator import make_town
from simulation.datasets.synthetic.traffic import INF, Objects
from simulation.types import PACIFICA

EMPTY = Objects(*(np.zeros(0, dtype=t) for t in (np.int64, float, float, float, np.int64)))
NO_BOXES, NO_OWNERS = np.zeros((0, 7)), np.zeros(0, dtype=np.int64)


def _ego() -> EgoDriver:
    town = make_town(5, 0)
    lane = max((p for p in town.lanes if p.incoming), key=lambda p: p.length)
    return EgoDriver(town, np.random.default_rng(0), {}, {}, [lane.fid], 10.0, v=10.0)


def _box_ahead(ego: EgoDriver, gap: float, lateral: float = 0.0) -> np.ndarray:
    """A 0.6 m pedestrian box ``gap`` metres ahead of the ego's front bumper, ``lateral`` metres to its left."""
    x, y, h = ego.bank.poses(np.array([[ego.s + PACIFICA.front_length + gap]]))[0, 0]
    return np.array([[x - np.sin(h) * lateral, y + np.cos(h) * lateral, h, 0.0, 0.0, 0.6, 0.6]])


def _sense(ego: EgoDriver, boxes: tuple, preview: tuple | None, offsets: np.ndarray | None = None) -> EgoSensed:
    offsets = np.zeros(len(EGO_PROBES)) if offsets is None else offsets
    light = np.zeros(1, dtype=np.int8)
    return sense_ego(ego.bank, ego.s, ego.v, ego.conn_row, False, offsets, light, False, EMPTY, *boxes, preview)


def test_nothing_around_senses_nothing() -> None:
    seen = _sense(_ego(), (NO_BOXES, NO_OWNERS), None)
    assert all(x.shape == (1,) for x in seen)
    assert seen.gap_l[0] == INF and seen.own_l[0] == -1 and seen.gap_c[0] == INF and seen.own_c[0] == -1
    assert seen.gap_p[0] == INF and not seen.red[0]


def test_a_box_in_the_corridor_and_a_predicted_one() -> None:
    ego = _ego()
    box, owner = _box_ahead(ego, 12.0), np.array([500])
    seen = _sense(ego, (box, owner), None)
    # the gap is that of the first probe (2 m apart) whose 1.6 m radius reaches the box: a little short of 12 m
    assert seen.own_c[0] == 500 and 9.0 < seen.gap_c[0] <= 12.0 and seen.gap_p[0] == INF
    gap_c, v_c, own_c = corridor_ahead(ego.bank, ego.s, np.zeros(len(EGO_PROBES)), box, owner)
    assert (gap_c[0], v_c[0], own_c[0]) == (seen.gap_c[0], seen.v_c[0], seen.own_c[0])
    predicted = _sense(ego, (NO_BOXES, NO_OWNERS), (box, owner))
    assert predicted.gap_c[0] == INF and predicted.gap_p[0] == seen.gap_c[0]


def test_the_corridor_follows_the_lane_change_offsets() -> None:
    ego = _ego()
    box, owner = _box_ahead(ego, 12.0, lateral=3.5), np.array([500])
    assert _sense(ego, (box, owner), None).gap_c[0] == INF  # one lane to the left: out of the corridor
    shifted = _sense(ego, (box, owner), None, offsets=np.full(len(EGO_PROBES), 3.5))
    assert shifted.own_c[0] == 500 and shifted.gap_c[0] < 12.0
