"""Synthetic city road network: topology, geometry and its nuPlan map layers."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from simulation.datasets.synthetic.map_layers import town_origin, town_to_map
from simulation.datasets.synthetic.network import KERB_M, NetworkConfigError, TownConfig, TurnType, build_town
from simulation.datasets.synthetic.signals import ALL_RED_S, LEAD_LEFT_S, YELLOW_S, light_status
from simulation.maps.api import MapAPI
from simulation.types import TrafficLightStatus


@pytest.fixture(scope="module")
def town():
    return build_town(TownConfig(grid=(3, 3)), np.random.default_rng(7))


def test_connectors_join_existing_lanes_end_to_start(town):
    lanes = {p.fid: p for p in town.lanes}
    for c in town.connectors:
        up, down = lanes[c.incoming[0]], lanes[c.outgoing[0]]
        assert np.allclose(c.centre[0], up.centre[-1]) and np.allclose(c.centre[-1], down.centre[0])
        assert c.fid in up.outgoing and c.fid in down.incoming
    # every lane can be entered and left (no dead ends in the lane graph)
    assert all(p.outgoing and p.incoming for p in town.lanes)


def test_lane_graph_strongly_connected(town):
    """With lane changes inside a roadblock, every lane reaches every other lane (so a route exists between
    any two roadblocks, and the lanes of a route form one connected graph)."""
    succ = {p.fid: [town.paths[c].outgoing[0] for c in p.outgoing] for p in town.lanes}
    for p in town.lanes:
        succ[p.fid] += [q for q in town.blocks[p.roadblock].paths if abs(town.paths[q].index - p.index) == 1]
    start = min(succ)
    for graph in (succ, _reverse(succ)):
        seen, stack = {start}, [start]
        while stack:
            for n in graph[stack.pop()]:
                if n not in seen:
                    seen.add(n)
                    stack.append(n)
        assert seen == set(succ)


def _reverse(graph):
    out = {k: [] for k in graph}
    for k, vs in graph.items():
        for v in vs:
            out[v].append(k)
    return out


def test_no_lane_overlaps_the_opposite_direction(town):
    blocks = [b for b in town.blocks.values() if not b.is_connector]
    by_road = {}
    for b in blocks:
        by_road.setdefault(b.road, []).append(b)
    assert all(len(v) == 2 for v in by_road.values())
    for a, b in by_road.values():
        for la in a.paths:
            for lb in b.paths:
                area = town.paths[la].polygon.intersection(town.paths[lb].polygon).area
                assert area < 1e-3


def test_lane_widths_speed_limits_and_indices(town):
    for p in town.lanes:
        assert 3.3 - 1e-9 <= p.width <= 3.9 + 1e-9
        assert 8.0 <= p.speed_limit <= 20.0
        block = town.blocks[p.roadblock]
        assert block.paths.index(p.fid) == p.index and 1 <= len(block.paths) <= 3
        # lane index 0 is the leftmost: its left boundary is the road centre shared with the other direction
        if p.index + 1 < len(block.paths):
            right_neighbour = town.paths[block.paths[p.index + 1]]
            assert p.right_boundary == right_neighbour.left_boundary


def test_turn_types_and_drivable_area(town):
    turns = {c.turn_type for c in town.connectors}
    assert {TurnType.STRAIGHT, TurnType.LEFT, TurnType.RIGHT} <= turns
    drivable = shapely.union_all(list(town.road_segments.values()) + [j.polygon for j in town.junctions.values()])
    for p in town.paths.values():
        assert drivable.buffer(0.05).contains(shapely.LineString(p.centre))


def test_roadblocks_reach_the_kerb(town):
    """A roadblock covers its lanes and the gutter beyond the outermost one (drivable for the scorer, in no lane);
    the road segment covers both roadblocks."""
    for b in (b for b in town.blocks.values() if not b.is_connector):
        outer = town.paths[b.paths[-1]]
        edge = outer.right[5:-5]
        d = np.diff(edge, axis=0)
        normal = np.stack([d[:, 1], -d[:, 0]], 1) / np.linalg.norm(d, axis=1, keepdims=True)  # to the right
        gutter = shapely.points(edge[:-1] + (KERB_M / 2) * normal)
        beyond = shapely.points(edge[:-1] + (KERB_M + 0.2) * normal)
        assert shapely.contains(b.polygon.buffer(1e-6), gutter).all(), b.fid
        assert not shapely.contains(b.polygon, beyond).any(), b.fid
        assert not shapely.intersects(outer.polygon, gutter).any()
        lanes = shapely.union_all([town.paths[f].polygon for f in b.paths])
        assert b.polygon.buffer(1e-6).contains(lanes.buffer(-0.01))
        assert town.road_segments[b.road].buffer(1e-6).contains(b.polygon.buffer(-0.01))


def test_bad_config_is_rejected():
    with pytest.raises(NetworkConfigError, match="lane width"):
        build_town(TownConfig(lane_width=(1.0, 2.0)), np.random.default_rng(0))
    with pytest.raises(NetworkConfigError, match="grid"):
        build_town(TownConfig(grid=(1, 3)), np.random.default_rng(0))


def test_light_cycle_hand_computed(town):
    """Left turns green first, then every movement of the phase; yellow for YELLOW_S, then red; one phase at a
    time at each junction."""
    j = next(j for j in town.junctions.values() if j.has_lights)
    conns = [c for c in town.connectors if c.junction == j.fid]
    cycle = float(np.sum(LEAD_LEFT_S + j.phase_green + YELLOW_S + ALL_RED_S))
    t0 = (-j.cycle_offset) % cycle  # start of phase 0
    g0 = LEAD_LEFT_S + j.phase_green[0]  # end of its green
    times = np.array([t0 + 0.5, t0 + LEAD_LEFT_S + 0.5, t0 + g0 + 0.5, t0 + g0 + YELLOW_S + 0.5])
    fids, status = light_status(town, times)
    col = {int(f): i for i, f in enumerate(fids)}
    lefts = [col[c.fid] for c in conns if c.phase == 0 and c.turn_type in (TurnType.LEFT, TurnType.UTURN)]
    others = [col[c.fid] for c in conns if c.phase == 0 and c.turn_type not in (TurnType.LEFT, TurnType.UTURN)]
    phase0 = lefts + others
    phase1 = [col[c.fid] for c in conns if c.phase == 1]
    assert lefts and others
    assert (status[0, lefts] == TrafficLightStatus.GREEN).all()  # leading protected left turn
    assert (status[0, others] == TrafficLightStatus.RED).all()
    assert (status[1, phase0] == TrafficLightStatus.GREEN).all()
    assert (status[2, phase0] == TrafficLightStatus.YELLOW).all()
    assert (status[3, phase0] == TrafficLightStatus.RED).all()
    assert (status[:, phase1] == TrafficLightStatus.RED).all()


def test_map_layers_unique_fids_and_map_api(town):
    data = town_to_map(town, 3)
    fids = np.concatenate([layer.fids for layer in data.layers.values()])
    assert len(np.unique(fids)) == len(fids)
    assert data.location == "synth-town-3" and data.crs.startswith("EPSG:326")
    api = MapAPI.from_data(data)
    assert len(api.lanes) == len(town.lanes) and len(api.lane_connectors) == len(town.connectors)
    for cid, c in api.lane_connectors.items():
        assert c.incoming_ids[0] in api.lanes and c.outgoing_ids[0] in api.lanes
        assert cid in api.lanes[c.incoming_ids[0]].outgoing_ids
    lane = next(p for p in town.lanes if p.index == 0)
    got = api.lanes[str(lane.fid)]
    assert np.allclose(got.baseline[0], lane.centre[0] + town_origin(3))
    assert got.roadblock_id == str(lane.roadblock) and got.index == 0


def test_the_town_data_model_is_importable_from_network() -> None:
    """The types live in ``town.py``; ``network`` hands out the same objects next to :func:`build_town`."""
    from simulation.datasets.synthetic import network, town

    for name in town.__all__:
        assert getattr(network, name) is getattr(town, name)
    assert int(town.TurnType.UTURN) == 3
