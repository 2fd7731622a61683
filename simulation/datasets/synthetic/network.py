"""Procedural road network of a synthetic town: a perturbed grid of junctions joined by curved roads.

Conventions (as in nuPlan): right-hand traffic; a roadblock is one direction of a road between two
junctions; lane index 0 is the leftmost lane of its roadblock; a lane connector runs from the end of an
upstream lane (its ``exit_lane``) to the start of a downstream lane (its ``entry_lane``) across a junction;
a roadblock connector groups the connectors of one (from roadblock, to roadblock) movement.

Lane counts are chosen per street (grid row / column) so that straight movements always join lanes
one to one; the outer ring shares one lane count so that corner bends join lanes one to one too.
Four-arm junctions have traffic lights; a three-arm junction has them with probability
:data:`SIGNALLED_T_SHARE` (the others are uncontrolled: vehicles take turns by their claims); bends have none.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import Polygon

from simulation.datasets.synthetic.geometry2d import curvature, hermite_turn, offset, resample, strip_polygon, unit
from simulation.datasets.synthetic.town import Block, Junction, NetworkConfigError, Path, Town, TownConfig, TurnType

#: A road's middle shifts sideways by at most this times its squared length (m): curvature about 8 times it.
ROAD_SHIFT_PER_M2 = 0.0015
#: ... and less where that would bend its centre line tighter than this (1/m; a 35 m radius).
ROAD_MAX_CURVATURE = 1.0 / 35.0
#: Gutter between the outermost lane's edge line and the kerb (m): part of its roadblock and road segment
#: (drivable), not of any lane, as on real streets.
KERB_M = 0.6
#: Share of three-arm junctions with traffic lights.
SIGNALLED_T_SHARE = 0.35
#: The intersection polygon reaches this far beyond the outermost connectors and lanes (kerb-to-kerb area) ...
JUNCTION_MARGIN_M = 1.2
#: ... and covers the roads' mouths this far along their outer edges.
JUNCTION_MOUTH_M = 5.0


class _Fids:
    """Monotonic fid allocator shared by all layers of a map (fids unique across layers)."""

    def __init__(self, start: int = 1000) -> None:
        self._it = itertools.count(start)

    def __call__(self) -> int:
        return next(self._it)


@dataclass
class _Arm:
    node: int
    street: int
    direction: float  # heading from the junction centre into the road
    incoming: int = -1  # roadblock fid entering the junction
    outgoing: int = -1  # roadblock fid leaving the junction
    end: np.ndarray = field(default_factory=lambda: np.zeros(2))


def _grid(config: TownConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Junction positions ``(V, 2)`` and edges ``(u, v, street)`` of a perturbed, thinned grid."""
    nc, nr = config.grid
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(*config.spacing, nc - 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(*config.spacing, nr - 1))])
    nodes = np.stack(np.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    nodes += rng.uniform(-config.jitter, config.jitter, nodes.shape)
    edges = [(r * nc + c, r * nc + c + 1, r) for r in range(nr) for c in range(nc - 1)]
    edges += [(r * nc + c, (r + 1) * nc + c, nr + c) for c in range(nc) for r in range(nr - 1)]
    degree = np.bincount(np.array([e[:2] for e in edges]).ravel(), minlength=len(nodes))
    kept = []
    for e in edges:  # thin interior edges only where both ends keep >= 3 arms
        if degree[e[0]] >= 4 and degree[e[1]] >= 4 and rng.random() < 0.25:
            degree[e[0]] -= 1
            degree[e[1]] -= 1
            continue
        kept.append(e)
    return nodes, kept


def _streets(config: TownConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per street: lanes per direction, lane width, speed limit and shoulder (parking strip) width."""
    nc, nr = config.grid
    n = nr + nc
    share = np.array([0.25, 0.45, 0.3])[: config.max_lanes]
    lanes = 1 + rng.choice(config.max_lanes, n, p=share / share.sum())
    ring = [0, nr - 1, nr, nr + nc - 1]
    lanes[ring] = lanes[0]
    width = rng.uniform(*config.lane_width, n)
    lo, hi = config.speed_limit
    speed = np.clip(lo + (hi - lo) * (0.25 * (lanes - 1) + rng.uniform(0, 0.5, n)), lo, hi)
    shoulder = np.where(rng.random(n) < 0.5, 2.5, 0.0)
    return lanes, width, np.round(speed, 1), shoulder


def _junction_radius(dirs: list[float], half_widths: list[float]) -> float:
    """Distance from a junction centre to where its roads start, so that arms and crosswalks do not collide."""
    a = np.sort(np.mod(np.array(dirs), 2 * np.pi))
    gaps = np.diff(np.concatenate([a, a[:1] + 2 * np.pi]))
    min_gap = float(np.clip(gaps.min(), 0.5, np.pi))
    return float(min(max(half_widths) / np.tan(min_gap / 2.0) + 10.0, 45.0))


def _lane_paths(centre: np.ndarray, n: int, w: float, speed: float, rb: int, fids: _Fids, town: Town) -> list[int]:
    """Lanes of one roadblock to the right of ``centre`` (its direction of travel); returns lane fids by index."""
    bounds = [fids() for _ in range(n + 1)]
    for k, b in enumerate(bounds):
        town.boundaries[b] = offset(centre, -k * w)
    out = []
    for i in range(n):
        p = Path(
            fid=fids(),
            is_connector=False,
            centre=offset(centre, -(i + 0.5) * w),
            left=town.boundaries[bounds[i]],
            right=town.boundaries[bounds[i + 1]],
            width=w,
            speed_limit=speed,
            roadblock=rb,
            index=i,
            left_boundary=bounds[i],
            right_boundary=bounds[i + 1],
        )
        town.paths[p.fid] = p
        out.append(p.fid)
    return out


def build_town(config: TownConfig, rng: np.random.Generator) -> Town:
    """Generate a town's road network (see module docstring)."""
    config.validate()
    fids = _Fids()
    nodes, edges = _grid(config, rng)
    lanes, width, speed, shoulder = _streets(config, rng)
    town = Town({}, {}, {}, {}, {}, {}, {}, {}, {}, [])
    arms: dict[int, list[_Arm]] = {v: [] for v in range(len(nodes))}
    edge_dirs = []
    for u, v, st in edges:
        chord = nodes[v] - nodes[u]
        h = float(np.arctan2(chord[1], chord[0]))
        b = float(rng.uniform(-config.bend, config.bend))
        # the far end bends independently: C-shaped roads and S-shaped ones
        b_v = float(rng.uniform(-config.bend, config.bend))
        arms[u].append(_Arm(u, st, h + b))
        arms[v].append(_Arm(v, st, h - b_v + np.pi))
        edge_dirs.append((len(arms[u]) - 1, len(arms[v]) - 1))
    radius = {}
    for v, a in arms.items():
        hw = [lanes[x.street] * width[x.street] + shoulder[x.street] for x in a]
        radius[v] = _junction_radius([x.direction for x in a], hw)
    for (u, v, st), (iu, iv) in zip(edges, edge_dirs):
        shift = float(rng.uniform(-config.wiggle, config.wiggle))
        _build_road(town, fids, nodes, arms[u][iu], arms[v][iv], radius, st, lanes, width, speed, shoulder, rng, shift)
    for v, a in arms.items():
        _build_junction(town, fids, nodes[v], a, lanes, width, rng)
    _link_blocks(town)
    _add_carpark(town, fids, rng)
    return town


def _build_road(town, fids, nodes, arm_u, arm_v, radius, st, lanes, width, speed, shoulder, rng, shift=0.0) -> None:
    """One two-way road between two junctions: roadblocks, lanes, road segment, walkways, shoulders; its middle
    is shifted ``shift`` metres to the left of the line between its ends (an S- or C-shaped curve)."""
    p0 = nodes[arm_u.node] + radius[arm_u.node] * unit(arm_u.direction)
    p3 = nodes[arm_v.node] + radius[arm_v.node] * unit(arm_v.direction)
    chord = p3 - p0
    cap = ROAD_SHIFT_PER_M2 * float(chord @ chord)  # short roads get small shifts (no sharp S-bends)
    shift = float(np.clip(shift, -cap, cap))
    h = float(np.arctan2(chord[1], chord[0]))
    while True:
        if abs(shift) > 0.5:
            mid = (p0 + p3) / 2 + shift * unit(h + np.pi / 2)
            first = hermite_turn(p0, arm_u.direction, mid, h, step=1.0)
            centre = np.concatenate([first, hermite_turn(mid, h, p3, arm_v.direction + np.pi, step=1.0)[1:]], 0)
        else:
            centre = hermite_turn(p0, arm_u.direction, p3, arm_v.direction + np.pi, step=1.0)
        centre = resample(centre, 1.0)
        # the shift adds to the bends of the ends: shrink it until the centre line's curves are wide enough
        if abs(shift) <= 0.5 or np.abs(curvature(centre))[2:-2].max(initial=0.0) <= ROAD_MAX_CURVATURE:
            break
        shift *= 0.7
    n, w, sh = int(lanes[st]), float(width[st]), float(shoulder[st])
    seg = fids()
    half = n * w + sh + KERB_M
    town.road_segments[seg] = Polygon(strip_polygon(offset(centre, half), offset(centre, -half)))
    for arm_from, arm_to, c in ((arm_u, arm_v, centre), (arm_v, arm_u, centre[::-1].copy())):
        rb = fids()
        lane_fids = _lane_paths(c, n, w, float(speed[st]), rb, fids, town)
        poly = Polygon(strip_polygon(offset(c, 0.0), offset(c, -n * w - KERB_M)))  # to the kerb
        town.blocks[rb] = Block(rb, False, lane_fids, poly, road=seg)
        arm_from.outgoing, arm_to.incoming = rb, rb
        arm_from.end, arm_to.end = c[0], c[-1]
        walk = Polygon(strip_polygon(offset(c, -half), offset(c, -half - 3.0)))
        town.walkways[fids()] = walk
        if sh > 0:
            line = offset(c, -(n * w + sh / 2))
            town.shoulders.append((lane_fids[-1], line, np.arctan2(*np.gradient(line, axis=0).T[::-1])))


def _movement(arm_in: _Arm, arm_out: _Arm) -> int:
    if arm_in is arm_out:
        return TurnType.UTURN
    if arm_in.street == arm_out.street:
        return TurnType.STRAIGHT
    turn = np.angle(np.exp(1j * (arm_out.direction - (arm_in.direction + np.pi))))
    return TurnType.LEFT if turn > 0 else TurnType.RIGHT


def _lane_pairs(turn: int, n_in: int, n_out: int, corner: bool) -> list[tuple[int, int]]:
    if turn == TurnType.STRAIGHT or corner:
        return [(i, i) for i in range(min(n_in, n_out))]
    if turn in (TurnType.LEFT, TurnType.UTURN):
        return [(0, 0)]
    return [(n_in - 1, n_out - 1)]


def _movements(town: Town, arms: list[_Arm], uturn_arm: int, corner: bool) -> dict:
    """(in arm, out arm) -> (turn, lane pairs); every incoming lane gets at least one movement."""
    out: dict[tuple[int, int], tuple[int, list[tuple[int, int]]]] = {}
    for ia, ib in itertools.product(range(len(arms)), range(len(arms))):
        turn = _movement(arms[ia], arms[ib])
        if turn == TurnType.UTURN and ia != uturn_arm:
            continue
        n_in, n_out = len(town.blocks[arms[ia].incoming].paths), len(town.blocks[arms[ib].outgoing].paths)
        out[(ia, ib)] = (turn, _lane_pairs(turn, n_in, n_out, corner))
    for ia in range(len(arms)):
        n_in = len(town.blocks[arms[ia].incoming].paths)
        served = {i for (a, _), (t, pairs) in out.items() if a == ia and t != TurnType.UTURN for i, _ in pairs}
        for i in sorted(set(range(n_in)) - served):
            want = TurnType.LEFT if i < n_in / 2 else TurnType.RIGHT
            keys = [k for k, (t, _) in out.items() if k[0] == ia and t == want]
            keys = keys or [k for k, (t, _) in out.items() if k[0] == ia and t != TurnType.UTURN]
            key = keys[0]
            n_out = len(town.blocks[arms[key[1]].outgoing].paths)
            o = min(i, n_out - 1) if out[key][0] == TurnType.LEFT else max(n_out - n_in + i, 0)
            out[key][1].append((i, o))
    return out


def _build_junction(town: Town, fids: _Fids, centre: np.ndarray, arms: list[_Arm], lanes, width, rng) -> None:
    """Intersection polygon, connectors, roadblock connectors, lights, crosswalks and stop polygons."""
    jf = fids()
    corner = len(arms) < 3
    streets = [a.street for a in arms]
    axis_street = max(set(streets), key=lambda s: (streets.count(s), -s))
    uturn_arm = int(rng.integers(len(arms))) if (not corner and rng.random() < 0.2) else -1
    signalled = len(arms) >= 4 or (not corner and rng.random() < SIGNALLED_T_SHARE)
    junction = Junction(jf, centre, Polygon(), len(arms), has_lights=signalled)
    stops: dict[int, int] = {}
    if junction.has_lights:
        junction.phase_green = np.array([rng.uniform(8, 14), rng.uniform(8, 14)])
        junction.cycle_offset = float(rng.uniform(0, 100))
        for a in arms:
            stops[a.incoming] = fids()
    movements = _movements(town, arms, uturn_arm, corner)
    polys = []
    for (ia, ib), (turn, pairs) in movements.items():
        a_in, a_out = arms[ia], arms[ib]
        rbc = fids()
        conns = []
        for i, o in pairs:
            lane_in = town.paths[town.blocks[a_in.incoming].paths[i]]
            lane_out = town.paths[town.blocks[a_out.outgoing].paths[o]]
            conns.append(_connector(town, fids, lane_in, lane_out, rbc, jf, turn))
            c = town.paths[conns[-1]]
            if junction.has_lights:
                c.phase = int(a_in.street != axis_street)
                c.stop_fid = stops[a_in.incoming]
            elif not corner:
                c.minor = a_in.street != axis_street
        poly = shapely.union_all([town.paths[c].polygon for c in conns]).buffer(0.05)
        if poly.geom_type != "Polygon":
            poly = poly.convex_hull
        town.blocks[rbc] = Block(rbc, True, conns, poly, junction=jf)
        town.blocks[rbc].incoming, town.blocks[rbc].outgoing = [a_in.incoming], [a_out.outgoing]
        polys.append(poly)
    ends = []
    mouth = int(JUNCTION_MOUTH_M) + 1  # boundary points are about 1 m apart
    for a in arms:
        for rb in (a.incoming, a.outgoing):
            lanes_rb = [town.paths[p] for p in town.blocks[rb].paths]
            ends += [lanes_rb[0].left[-1 if rb == a.incoming else 0], lanes_rb[-1].right[-1 if rb == a.incoming else 0]]
            edge = lanes_rb[-1].right
            ends += list(offset(edge[-mouth:] if rb == a.incoming else edge[:mouth], -JUNCTION_MARGIN_M))
        town.blocks[a.incoming].junction = jf
        town.blocks[a.outgoing].start_junction = jf
    hull = shapely.union_all(polys + [shapely.MultiPoint(np.array(ends))]).convex_hull
    junction.polygon = hull.buffer(JUNCTION_MARGIN_M, quad_segs=4)
    town.junctions[jf] = junction
    if junction.has_lights:
        _crossings(town, fids, arms, stops, jf)


def _connector(town: Town, fids: _Fids, lane_in: Path, lane_out: Path, rbc: int, jf: int, turn: int) -> int:
    h_in = float(np.arctan2(*(lane_in.centre[-1] - lane_in.centre[-2])[::-1]))
    h_out = float(np.arctan2(*(lane_out.centre[1] - lane_out.centre[0])[::-1]))
    c = hermite_turn(lane_in.centre[-1], h_in, lane_out.centre[0], h_out, step=1.0)
    w = np.linspace(lane_in.width, lane_out.width, len(c))
    lb, rb = fids(), fids()
    town.boundaries[lb], town.boundaries[rb] = offset(c, w / 2), offset(c, -w / 2)
    p = Path(
        fid=fids(),
        is_connector=True,
        centre=c,
        left=town.boundaries[lb],
        right=town.boundaries[rb],
        width=float(w.mean()),
        speed_limit=max(lane_in.speed_limit, lane_out.speed_limit),
        roadblock=rbc,
        turn_type=int(turn),
        junction=jf,
        left_boundary=lb,
        right_boundary=rb,
        incoming=[lane_in.fid],
        outgoing=[lane_out.fid],
    )
    town.paths[p.fid] = p
    lane_in.outgoing.append(p.fid)
    lane_out.incoming.append(p.fid)
    return p.fid


def _crossings(town: Town, fids: _Fids, arms: list[_Arm], stops: dict[int, int], jf: int) -> None:
    """Crosswalk across each arm inside the junction and a stop polygon at the end of each incoming roadblock."""
    for a in arms:
        lanes_in = [town.paths[p] for p in town.blocks[a.incoming].paths]
        lanes_out = [town.paths[p] for p in town.blocks[a.outgoing].paths]
        p_left, p_right = lanes_out[-1].right[0], lanes_in[-1].right[-1]  # outer road edges at the arm end
        inward = -unit(a.direction)
        across = p_right - p_left
        a0, a1 = p_left - 0.1 * across, p_right + 0.1 * across
        ring = np.array([a0 + 1.5 * inward, a1 + 1.5 * inward, a1 + 5.5 * inward, a0 + 5.5 * inward])
        cw = fids()
        town.crosswalks[cw] = (Polygon(ring), jf)
        conn = [c for lane in lanes_in for c in lane.outgoing]
        town.crosswalk_signal[cw] = conn[0]
        stop = shapely.union_all([Polygon(strip_polygon(ln.left[-3:], ln.right[-3:])) for ln in lanes_in])
        town.stop_polygons[stops[a.incoming]] = (stop.convex_hull, [ln.fid for ln in lanes_in], conn)


def _link_blocks(town: Town) -> None:
    """Fill roadblock incoming / outgoing lists from the roadblock connectors."""
    for b in town.blocks.values():
        if b.is_connector:
            town.blocks[b.incoming[0]].outgoing.append(b.fid)
            town.blocks[b.outgoing[0]].incoming.append(b.fid)


def _add_carpark(town: Town, fids: _Fids, rng: np.random.Generator) -> None:
    """An occasional 30 x 30 m carpark behind the walkway of a random roadblock."""
    if rng.random() < 0.4:
        return
    keys = sorted(k for k, b in town.blocks.items() if not b.is_connector)
    block = town.blocks[keys[int(rng.integers(len(keys)))]]
    edge = town.paths[block.paths[-1]].right
    m = edge[len(edge) // 2]
    d = edge[len(edge) // 2 + 1] - m
    h = float(np.arctan2(d[1], d[0]))
    corners = np.array([[-15.0, -7.0], [15.0, -7.0], [15.0, -37.0], [-15.0, -37.0]])
    rot = np.array([[np.cos(h), -np.sin(h)], [np.sin(h), np.cos(h)]])
    poly = Polygon(m + corners @ rot.T)
    others = list(town.road_segments.values()) + [j.polygon for j in town.junctions.values()]
    if not any(poly.intersects(r) for r in others):
        town.carparks[fids()] = (poly, h)


__all__ = [
    "JUNCTION_MARGIN_M",
    "JUNCTION_MOUTH_M",
    "KERB_M",
    "ROAD_MAX_CURVATURE",
    "ROAD_SHIFT_PER_M2",
    "SIGNALLED_T_SHARE",
    "Block",
    "Junction",
    "NetworkConfigError",
    "Path",
    "Town",
    "TownConfig",
    "TurnType",
    "build_town",
]
