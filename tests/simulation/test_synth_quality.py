"""Synthetic city data quality: kerb margins of junctions, left turns that cannot starve, logs that yield
nuPlan scenarios with an ego that drives."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from simulation.datasets.scenes import ScenarioFilter, extract_scenarios, valid_scene_frames
from simulation.datasets.synthetic.generator import SCENE_FRAMES, LogSpec, generate_log
from simulation.datasets.synthetic.geometry2d import offset
from simulation.datasets.synthetic.network import (
    JUNCTION_MARGIN_M,
    JUNCTION_MOUTH_M,
    TownConfig,
    TurnType,
    build_town,
)
from simulation.datasets.synthetic.paths import build_bank, random_route
from simulation.datasets.synthetic.traffic import (
    INF,
    PROBES,
    SNEAK_WAIT_S,
    STOP_MARGIN,
    approach,
    claims,
    corridor_obstacles,
    sneaking,
    stop_line_gaps,
)
from simulation.datasets.synthetic.world import DriveConfig
from simulation.types import StateIndex, TrafficLightStatus


@pytest.fixture(scope="module")
def town():
    return build_town(TownConfig(grid=(3, 3)), np.random.default_rng(7))


def test_connector_polygons_valid_and_junctions_reach_past_them(town):
    inside = JUNCTION_MARGIN_M - 0.1
    for c in town.connectors:
        assert c.polygon.is_valid, c.fid
        poly = town.junctions[c.junction].polygon
        for edge in (offset(c.left, inside), offset(c.right, -inside)):
            assert shapely.contains_xy(poly, edge[:, 0], edge[:, 1]).all(), c.fid
    # the mouth of every road at a junction: its outer edge, shifted out by the margin, a few metres in
    for b in town.blocks.values():
        if b.is_connector:
            continue
        edge = offset(town.paths[b.paths[-1]].right, -inside)
        k = int(JUNCTION_MOUTH_M) - 1
        for jf, point in ((b.junction, edge[-k]), (b.start_junction, edge[k - 1])):
            assert shapely.contains_xy(town.junctions[jf].polygon, *point), (b.fid, jf)


def _left_turn_route(town):
    """Lane -> the first signalled left-turn connector -> lane."""
    conn = next(
        c for c in sorted(town.connectors, key=lambda c: c.fid) if c.turn_type == TurnType.LEFT and c.phase >= 0
    )
    return [conn.incoming[0], conn.fid, conn.outgoing[0]]


def _left_turn_bank(town):
    """A bank of one row along :func:`_left_turn_route`, with the connector's light in column 0."""
    route = _left_turn_route(town)
    return build_bank(town, [route], {route[1]: 0}), np.array([[-1, 0, -1]])


def test_a_left_turn_that_waited_at_its_line_keeps_its_claim_past_green(town):
    bank, conn_row = _left_turn_bank(town)
    front = np.array([2.0])
    line = float(bank.seg_start[0, 1]) - STOP_MARGIN
    at_line = np.array([line - 1.0 - 2.0])  # front bumper 1 m before the stop line
    wait, mine = np.array([SNEAK_WAIT_S + 0.5]), np.array([0])
    assert sneaking(bank, at_line, front, conn_row, wait, mine).all()
    assert not sneaking(bank, at_line, front, conn_row, np.array([SNEAK_WAIT_S - 0.5]), mine).any()
    assert not sneaking(bank, at_line, front, conn_row, wait, np.array([3])).any()  # waited for another one
    assert not sneaking(bank, at_line - 10.0, front, conn_row, wait, mine).any()  # not at the line
    red = np.array([TrafficLightStatus.RED])
    k, dist = approach(bank, at_line, front, conn_row)
    assert dist[0] == pytest.approx(1.0)
    v = np.zeros(1)
    assert claims(bank, k, dist, v, conn_row, red)[0][0] == -1
    assert claims(bank, k, dist, v, conn_row, red, np.array([True]))[0][0] == 0
    no = np.array([False])
    gap, for_light = stop_line_gaps(bank, at_line, front, v, red, no, conn_row, np.array([3.0]))
    assert gap[0] == pytest.approx(1.0) and for_light[0]
    gap, _ = stop_line_gaps(bank, at_line, front, v, red, no, conn_row, np.array([3.0]), np.array([True]))
    assert gap[0] == INF
    # it still yields to a conflicting claim
    gap, for_light = stop_line_gaps(bank, at_line, front, v, red, ~no, conn_row, np.array([3.0]), np.array([True]))
    assert gap[0] == pytest.approx(1.0) and not for_light[0]


def _corridor_reference(bank, s, front, radius, owner, boxes, box_owner, probes):
    """Plain loops over probes in order, then boxes in order: the first box a probe falls into."""
    q = bank.poses(s[:, None] + front[:, None] + probes[None, :])
    gap, v_out, who = np.full(len(s), INF), np.zeros(len(s)), np.full(len(s), -1)
    for i in range(len(s)):
        found = False
        for k in range(len(probes)):
            for a in range(len(boxes)):
                if box_owner[a] == owner[i]:
                    continue
                dx, dy = q[i, k, 0] - boxes[a, 0], q[i, k, 1] - boxes[a, 1]
                c, sn = np.cos(boxes[a, 2]), np.sin(boxes[a, 2])
                if (
                    abs(dx * c + dy * sn) < boxes[a, 5] / 2 + radius[i]
                    and abs(-dx * sn + dy * c) < boxes[a, 6] / 2 + radius[i]
                ):
                    h = q[i, k, 2]
                    gap[i] = max(probes[k] - 0.25, 0.0)
                    v_out[i] = max(boxes[a, 3] * np.cos(h) + boxes[a, 4] * np.sin(h), 0.0)
                    who[i] = box_owner[a]
                    found = True
                    break
            if found:
                break
    return gap, v_out, who


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_boxes=st.integers(0, 40))
def test_the_corridor_search_finds_the_first_box_in_the_way(town, seed, n_boxes):
    """The compiled corridor search against plain loops: rows along a few routes, boxes scattered around them
    (some owned by the rows themselves, which they must ignore)."""
    rng = np.random.default_rng(seed)
    conns = sorted(town.connectors, key=lambda c: c.fid)[:: max(len(town.connectors) // 4, 1)][:4]
    bank = build_bank(town, [[c.incoming[0], c.fid, c.outgoing[0]] for c in conns], {})
    n = len(conns)
    s = rng.uniform(0.0, 0.6, n) * bank.length
    front, radius, owner = np.full(n, 2.0), rng.uniform(0.8, 1.6, n), np.arange(n)
    near = bank.poses((s + rng.uniform(0.0, 30.0, n))[:, None])[:, 0, :2]
    centre = near[rng.integers(0, n, n_boxes)] + rng.normal(0.0, 4.0, (n_boxes, 2))
    boxes = np.column_stack(
        [
            centre,
            rng.uniform(-np.pi, np.pi, n_boxes),
            rng.normal(0.0, 3.0, (n_boxes, 2)),
            rng.uniform(0.5, 12.0, n_boxes),
            rng.uniform(0.5, 2.6, n_boxes),
        ]
    )
    box_owner = rng.integers(-2, n + 3, n_boxes)
    got = corridor_obstacles(bank, s, front, radius, owner, boxes, box_owner)
    want = _corridor_reference(bank, s, front, radius, owner, boxes, box_owner, PROBES)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)


def test_segment_index_and_the_next_connector(town):
    bank, conn_row = _left_turn_bank(town)
    starts = bank.seg_start[0]
    s = np.array([0.0, starts[1] - 0.01, starts[1], starts[2] + 1.0])
    b4 = build_bank(town, [_left_turn_route(town)] * len(s), {})
    assert b4.segment_index(s).tolist() == [0, 0, 1, 2]
    k, dist = approach(b4, s, np.full(len(s), 2.0), np.repeat(conn_row, len(s), 0))
    assert k.tolist() == [1, 1, 1, -1]
    np.testing.assert_allclose(dist[:3], starts[1] - STOP_MARGIN - (s[:3] + 2.0))
    assert dist[3] == INF


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-20.0, 400.0), min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_path_poses_interpolate_each_row_and_clamp_to_its_ends(town, arcs, seed):
    """Compiled interpolation of the bank against plain per-row np.interp: positions and headings at any arc length,
    clamped to the row's first and last point outside ``[0, length]``; ``interp`` agrees with ``poses``."""
    rng = np.random.default_rng(seed)
    lanes = sorted(p.fid for p in town.lanes)
    routes = [random_route(town, int(f), float(rng.uniform(20.0, 300.0)), rng) for f in rng.choice(lanes, 3)]
    bank = build_bank(town, routes, {})
    s = np.tile(np.array(arcs), (len(bank), 1))
    got = bank.poses(s)
    assert got.shape == (len(bank), len(arcs), 3)
    for r in range(len(bank)):
        cum = bank.cum[r]
        q = np.clip(s[r], 0.0, cum[-1])
        want = np.stack([np.interp(q, cum, bank.pts[r, :, 0]), np.interp(q, cum, bank.pts[r, :, 1]),
                         np.interp(q, cum, bank.hdg[r])], -1)  # fmt: skip
        np.testing.assert_allclose(got[r], want, rtol=0, atol=1e-6)
    assert np.array_equal(bank.interp("hdg", s), got[..., 2])


def test_straight_movements_do_not_sneak(town):
    conn = next(c for c in sorted(town.connectors, key=lambda c: c.fid) if c.turn_type == TurnType.STRAIGHT)
    bank = build_bank(town, [[conn.incoming[0], conn.fid, conn.outgoing[0]]], {})
    s = np.array([float(bank.seg_start[0, 1]) - STOP_MARGIN - 3.0])
    assert not sneaking(bank, s, np.array([2.0]), np.array([[-1, 0, -1]]), np.array([9.0]), np.array([0])).any()


def test_a_short_log_yields_scenarios_and_the_ego_drives():
    """48 s = 6 scenes of SCENE_FRAMES: nuPlan keeps scenes 3-4, and a tagged frame there has its 15 s window
    (from 3 s before it) and 2 s of history inside the log."""
    drive = DriveConfig(duration_s=48.0, warmup_s=2.0, vehicles_per_km=4.0, pedestrian_density=0.2, parked_share=0.1)
    log, _ = generate_log(LogSpec("quality", 0, 0, "synth_train", 0, drive))
    assert SCENE_FRAMES == 160 and len(log.scene_names) == 6
    valid = np.flatnonzero(valid_scene_frames(log))
    assert valid[0] == 2 * SCENE_FRAMES and valid[-1] == 4 * SCENE_FRAMES - 1
    scenarios = extract_scenarios(log, ScenarioFilter())
    assert len(scenarios) >= 2
    for sc in scenarios:
        assert len(sc.frame_tokens) == 151 and len(sc.history_ego.states) == 20
    v = log.ego_states[:, StateIndex.VX]
    # it drives more than half of the log (this one has a 20 s red light and a yield at its first junction)
    assert np.mean(v > 0.5) > 0.5, f"the ego is stopped {np.mean(v <= 0.5):.0%} of the log"
