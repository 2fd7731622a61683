"""NAVSIM's PDM lane search (``_get_discrete_centerline``'s Dijkstra) on hand-built lane graphs and the fixture map:
the start is kept, the target is the last route entry within the search depth, the cost is the lane lengths, ties go
to the outgoing-edge order, and without a path the deepest (then cheapest) expanded lane ends the path.

Hand-built graphs: every lane is a straight 2-point baseline of the given length; the roadblocks hold their lanes in
the order given; lane ids are ``<roadblock><n>`` (lower case)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from simulation.maps.api import MapAPI
from simulation.maps.errors import UnknownMapObjectError
from simulation.maps.objects import LaneGraphEdge, Roadblock
from simulation.maps.route import (
    discrete_path,
    edge_length,
    pdm_lane_path,
    pdm_target_roadblock,
    route_discrete_path,
    route_lane_chain,
)
from simulation.maps.testing import build_fixture_map

FIXTURE = MapAPI.from_data(build_fixture_map(origin=(0.0, 0.0)))


@dataclass
class _Graph:
    """The parts of a map the lane search reads (roadblock and lane dictionaries, ``lane_edge``)."""

    map_name: str = "hand-built"
    lanes: dict[str, LaneGraphEdge] = field(default_factory=dict)
    lane_connectors: dict[str, LaneGraphEdge] = field(default_factory=dict)
    roadblocks: dict[str, Roadblock] = field(default_factory=dict)
    roadblock_connectors: dict[str, Roadblock] = field(default_factory=dict)

    def lane_edge(self, object_id: str) -> LaneGraphEdge:
        return self.lanes[object_id]


def _graph(lanes: dict[str, tuple[float, tuple[str, ...]]]) -> _Graph:
    """``lane id -> (length, outgoing ids)``; a lane's roadblock is its id without the trailing digits."""
    graph = _Graph()
    members: dict[str, list[str]] = {}
    for lid, (length, outgoing) in lanes.items():
        block = lid.rstrip("0123456789").upper()
        members.setdefault(block, []).append(lid)
        line = np.array([[0.0, 0.0], [length, 0.0]])
        graph.lanes[lid] = LaneGraphEdge(lid, None, line, line, line, None, block, (), outgoing)
    for block, ids in members.items():
        after = tuple(dict.fromkeys(graph.lanes[o].roadblock_id for i in ids for o in graph.lanes[i].outgoing_ids))
        graph.roadblocks[block] = Roadblock(block, None, tuple(ids), (), after)
    return graph


def _chain(n: int) -> tuple[_Graph, list[str]]:
    """Roadblocks ``RA``, ``RB``, ... of one 10 m lane each (``ra1 -> rb1 -> ...``) and that route."""
    names = [f"r{chr(ord('a') + k // 26)}{chr(ord('a') + k % 26)}" for k in range(n)]
    lanes = {f"{a}1": (10.0, (f"{b}1",) if b else ()) for a, b in zip(names, [*names[1:], None])}
    return _graph(lanes), [a.upper() for a in names]


def test_fork_keeps_the_starting_lane_where_the_old_chain_switched_to_its_sibling() -> None:
    """Fixture map, route 1 -> 102 (left turn) -> 3, start on the right lane 12: the turn leaves from lane 11 only.
    The project's former chain switched to sibling 11 (11 -> 113 -> 31); NAVSIM's search stays on 12, finds no
    route lane after it and falls back to 12 alone."""
    route = ["1", "102", "3"]
    assert route_lane_chain(FIXTURE, route, np.array([-40.0, -6.0, 0.0]), "12") == ["11", "113", "31"]
    assert pdm_lane_path(FIXTURE, route, "12") == (["12"], False)
    np.testing.assert_array_equal(route_discrete_path(FIXTURE, route, np.array([-40.0, -6.0, 0.0])),
                                  discrete_path(FIXTURE, "12"))  # fmt: skip
    assert pdm_lane_path(FIXTURE, route, "11") == (["11", "113", "31"], True)
    assert pdm_lane_path(FIXTURE, ["1", "101", "2", "103", "4"], "12") == (["12", "112", "22", "122", "42"], True)


def test_outgoing_edges_in_lane_connector_row_order() -> None:
    """Lane 11's connectors 111 (straight) and 113 (left) in the order of the ``lane_connectors`` layer."""
    assert FIXTURE.lane_edge("11").outgoing_ids == ("111", "113")
    assert edge_length(FIXTURE, "11") == 50.0


def test_target_is_the_last_route_entry_within_the_depth() -> None:
    route = ["A", "B", "C", "B", "D"]  # repeats dropped: A B C D
    assert pdm_target_roadblock(route, "A") == "D"
    assert pdm_target_roadblock(route, "B", depth=2) == "C"
    assert pdm_target_roadblock(route, "D", depth=2) == "D"
    assert pdm_target_roadblock(route, "X", depth=3) == "C"  # not on the route: from the first entry
    with pytest.raises(ValueError):
        pdm_target_roadblock([], "A")


def test_search_depth_ends_the_path_at_the_thirtieth_route_entry() -> None:
    """35 roadblocks in a row: from the first lane the path ends in the 30th (the former chain ran to the 35th);
    from the 10th lane the route's end is within reach; the last lane is its own target."""
    graph, route = _chain(35)
    lanes = [graph.roadblocks[b].interior_ids[0] for b in route]
    path, found = pdm_lane_path(graph, route, lanes[0])
    assert (path, found) == (lanes[:30], True)
    assert route_lane_chain(graph, route, np.zeros(3), lanes[0]) == lanes
    assert pdm_lane_path(graph, route, lanes[0], depth=5) == (lanes[:5], True)
    assert pdm_lane_path(graph, route, lanes[9]) == (lanes[9:], True)
    assert pdm_lane_path(graph, route, lanes[-1]) == ([lanes[-1]], True)


def test_cheapest_path_by_lane_length_not_fewest_lanes() -> None:
    """A -> B -> T: via b1 (40 m) and t1, or via b2 (10 m), k1 and t2 (one lane more, 15 m less)."""
    graph = _graph({"a1": (5.0, ("b1", "b2")), "b1": (40.0, ("t1",)), "b2": (10.0, ("k1",)), "k1": (10.0, ("t2",)),
                    "t1": (5.0, ()), "t2": (5.0, ())})  # fmt: skip
    assert pdm_lane_path(graph, ["A", "B", "K", "T"], "a1") == (["a1", "b2", "k1", "t2"], True)
    # off-route lanes are not searched: without K only b1 leads on
    assert pdm_lane_path(graph, ["A", "B", "T"], "a1") == (["a1", "b1", "t1"], True)


def test_equal_costs_go_to_the_outgoing_edge_order() -> None:
    """Two equally long branches: the one listed first among a1's outgoing edges wins, for separate target lanes
    and for a merge into one lane (the first parent is kept on an equal cost)."""
    for order, want in ((("b1", "b2"), "b1"), (("b2", "b1"), "b2")):
        split = _graph({"a1": (5.0, order), "b1": (10.0, ("t1",)), "b2": (10.0, ("t2",)), "t1": (5.0, ()),
                        "t2": (5.0, ())})  # fmt: skip
        assert pdm_lane_path(split, ["A", "B", "T"], "a1") == (["a1", want, f"t{want[1]}"], True)
        merge = _graph({"a1": (5.0, order), "b1": (10.0, ("t1",)), "b2": (10.0, ("t1",)), "t1": (5.0, ())})
        assert pdm_lane_path(merge, ["A", "B", "T"], "a1") == (["a1", want, "t1"], True)


def test_not_found_ends_at_the_deepest_then_cheapest_expanded_lane() -> None:
    """Target D unreachable. Deepest first: a1 -> b1 -> k1 -> c1 (4 lanes, 300 m) beats a1 -> b2 -> c2 (3 lanes,
    2 m); the former chain took c2 (as far along the route, found first). Among equally deep lanes the cheapest:
    c2 (1 m) over c1 (100 m); equal costs: the first expanded (a1's outgoing order)."""
    lanes = {"a1": (5.0, ("b1", "b2")), "b1": (100.0, ("k1",)), "b2": (1.0, ("c2",)), "k1": (100.0, ("c1",)),
             "c1": (100.0, ()), "c2": (1.0, ()), "d1": (5.0, ())}  # fmt: skip
    graph, route = _graph(lanes), ["A", "B", "K", "C", "D"]
    assert pdm_lane_path(graph, route, "a1") == (["a1", "b1", "k1", "c1"], False)
    assert route_lane_chain(graph, route, np.zeros(3), "a1") == ["a1", "b2", "c2"]
    lanes["b1"] = (100.0, ("c1",))  # both 3 lanes deep
    graph = _graph(lanes)
    assert pdm_lane_path(graph, ["A", "B", "C", "D"], "a1") == (["a1", "b2", "c2"], False)
    assert route_lane_chain(graph, ["A", "B", "C", "D"], np.zeros(3), "a1") == ["a1", "b1", "c1"]
    for order, want in ((("b1", "b2"), "b1"), (("b2", "b1"), "b2")):
        tie = _graph({"a1": (5.0, order), "b1": (10.0, ("c1",)), "b2": (10.0, ("c2",)), "c1": (5.0, ()),
                      "c2": (5.0, ()), "d1": (5.0, ())})  # fmt: skip
        assert pdm_lane_path(tie, ["A", "B", "C", "D"], "a1") == (["a1", want, f"c{want[1]}"], False)


def test_route_without_map_roadblocks_is_refused() -> None:
    with pytest.raises(UnknownMapObjectError):
        pdm_lane_path(FIXTURE, ["nope"], "11")
