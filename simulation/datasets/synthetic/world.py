"""One synthetic drive: traffic, pedestrians, static objects and the ego expert stepped together at 20 Hz."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulation.datasets.synthetic.drive_step import DT, TrafficState, step_world, vehicle_boxes
from simulation.datasets.synthetic.expert import EgoDriver, EgoFrame
from simulation.datasets.synthetic.junctions import clear_points, conflict_matrix
from simulation.datasets.synthetic.network import Town, TurnType
from simulation.datasets.synthetic.paths import PathBank, build_bank, random_route
from simulation.datasets.synthetic.pedestrians import Pedestrians, spawn_pedestrians
from simulation.datasets.synthetic.signals import YELLOW_S, light_status, yellow_now_offset
from simulation.datasets.synthetic.traffic import (
    IDMParams,
)
from simulation.types import PACIFICA, TrackedObjectType, TrafficLightStatus

#: Mean seconds between two braking events of one vehicle (it slows down for something off the map: a
#: driveway, a parking space, a hesitation), their duration and deceleration ranges.
BRAKE_EVERY_S = 12.0
BRAKE_DURATION_S = (3.0, 7.0)
BRAKE_DECEL = (1.5, 3.0)
#: (type, length range, width range, height, share) of moving vehicles.
VEHICLE_KINDS = (
    ("car", (4.2, 4.9), (1.8, 2.0), 1.5, 0.58),
    ("van", (5.2, 5.9), (2.0, 2.2), 2.2, 0.12),
    ("truck", (8.5, 12.0), (2.4, 2.6), 3.2, 0.2),
    ("bicycle", (1.7, 1.9), (0.6, 0.8), 1.7, 0.1),
)
TRUCK, BICYCLE = 2, 3  # rows of VEHICLE_KINDS
#: The range of the gap (m) between the ego and a lead placed ahead of it (:attr:`DriveConfig.ego_lead`) and
#: how many of the lead's junction movements the ego copies (so that it stays behind it for a while).
EGO_LEAD_GAP = (8.0, 18.0)
#: Mean seconds between two braking events of a truck placed ahead of the ego (stop-and-go ahead of it).
EGO_LEAD_BRAKE_EVERY_S = 6.0
EGO_LEAD_MOVES = 2
#: Distance range (m) from the ego's front bumper to the stop line at which an actuated light
#: (:attr:`DriveConfig.red_on_arrival`) turns yellow: far enough to stop comfortably, close enough to be seen.
ACTUATED_M = (30.0, 45.0)
#: ... or, for a lead placed ahead of the ego, down to where the lead still stops at this deceleration (m/s^2).
LEAD_STOP_DECEL = 2.5
#: The ego of such a drive starts on a lane at least this long (m) that ends at a light.
SIGNAL_LANE_M = 100.0


@dataclass(frozen=True)
class DriveConfig:
    """Parameters of one drive.

    Attributes:
        duration_s: logged seconds. warmup_s: simulated, unlogged seconds before.
        vehicles_per_km: moving vehicles per km of lane. pedestrian_density: crossers per crosswalk per minute.
        parked_share: probability of a parked vehicle per 12 m of parking strip.
        ego_lead: kind (row of :data:`VEHICLE_KINDS`: 2 a truck, 3 a cyclist) of a lead placed 8-18 m ahead of
            the ego at the start, whose first junction movements the ego copies; -1 for none.
        red_on_arrival: the first signalled junction the ego approaches in the log is actuated: when the ego is
            :data:`ACTUATED_M` from its stop line, the cross street gets its phase (a green light turns yellow,
            a red one restarts its red), so that the ego stops there and waits a full phase.
        prefer_turn: a :class:`TurnType` the ego picks more often at its junctions (-1: none), for drives made
            to hold that movement.
    """

    duration_s: float = 60.0
    warmup_s: float = 8.0
    vehicles_per_km: float = 20.0
    pedestrian_density: float = 0.5
    parked_share: float = 0.15
    ego_lead: int = -1
    red_on_arrival: bool = False
    prefer_turn: int = -1


@dataclass
class DriveRecord:
    """Everything logged from a drive (``F`` frames).

    Attributes:
        ego_pose: ``(F, 3)`` rear axle. ego_frames: ``F`` :class:`EgoFrame`.
        boxes: ``(F, A, 7)`` all agents (vehicles, cyclists, pedestrians, static objects); valid ``(F, A)``.
        types: ``(A,)`` TrackedObjectType. heights: ``(A,)``.
        light_fids: ``(L,)``; light: ``(F, L)`` status.
        ego_route: ``F`` path fids under the ego. route_blocks: roadblock / connector fids driven (in order),
            plus those planned beyond the end.
    """

    ego_pose: np.ndarray
    ego_frames: list[EgoFrame]
    boxes: np.ndarray
    valid: np.ndarray
    types: np.ndarray
    heights: np.ndarray
    light_fids: np.ndarray
    light: np.ndarray
    route_blocks: list[int]
    frame_blocks: np.ndarray


def _ego_lead(
    town: Town, rng: np.random.Generator, ego: tuple[int, float], blocked: frozenset[int], kind: int
) -> tuple[tuple[int, float], tuple[int, float, float] | None]:
    """The ego's start (lane, arc length) and the lead of ``kind`` (:data:`TRUCK`, :data:`BICYCLE`, -1 for none)
    placed ahead of it: (kind, arc length of its centre, length), or ``None`` (also on a lane with a stopped
    vehicle). A cyclist rides the rightmost lane of a road with two or more lanes: the ego moves to that lane of
    its roadblock to start behind it."""
    if kind < 0 or ego[0] in blocked:
        return ego, None
    lane = town.paths[ego[0]]
    length = float(rng.uniform(*VEHICLE_KINDS[kind][1]))
    gap = float(rng.uniform(*EGO_LEAD_GAP))
    if kind == BICYCLE:  # only where the ego can pass it on the next lane
        paths = town.blocks[lane.roadblock].paths
        if len(paths) < 2 or paths[-1] in blocked:
            return ego, None
        lane = town.paths[paths[-1]]
    s = ego[1] + PACIFICA.length + gap + length / 2
    ok = s + length / 2 + 4.0 < lane.length
    return ((lane.fid, ego[1]), (kind, s, length)) if ok else (ego, None)


def _spawn_traffic(
    town: Town,
    cfg: DriveConfig,
    rng: np.random.Generator,
    avoid: tuple[int, float],
    blocked: frozenset[int],
    lead: tuple[int, float, float] | None = None,
):
    """Moving vehicles on lanes without overlaps: (routes, start s, sizes (N,2), kinds); ``lead`` (see
    :func:`_ego_lead`) is the first row, on the lane of ``avoid``."""
    lanes = sorted(town.lanes, key=lambda p: p.fid)
    total_km = sum(p.length for p in lanes) / 1000.0
    n = int(rng.poisson(cfg.vehicles_per_km * total_km))
    shares = np.array([k[4] for k in VEHICLE_KINDS])
    occupied: dict[int, list[tuple[float, float]]] = {avoid[0]: [(avoid[1] - 12.0, avoid[1] + 12.0)]}
    routes, s0, sizes, kinds = [], [], [], []
    need = 22.0 * (cfg.duration_s + cfg.warmup_s) + 150.0
    if lead is not None:
        kind, s, length = lead
        occupied[avoid[0]].append((s - length / 2 - 3.0, s + length / 2 + 3.0))
        routes.append(random_route(town, avoid[0], need, rng, blocked))
        s0.append(s)
        sizes.append((length, float(rng.uniform(*VEHICLE_KINDS[kind][2]))))
        kinds.append(kind)
    for _ in range(n):
        kind = int(rng.choice(len(VEHICLE_KINDS), p=shares / shares.sum()))
        name, lr, wr, _, _ = VEHICLE_KINDS[kind]
        length, width = rng.uniform(*lr), rng.uniform(*wr)
        lane = lanes[int(rng.integers(len(lanes)))]
        if name == "bicycle":
            lane = town.paths[town.blocks[lane.roadblock].paths[-1]]
        if lane.length < length + 10 or lane.fid in blocked:
            continue
        s = float(rng.uniform(length / 2 + 1, lane.length - length / 2 - 4))
        span = (s - length / 2 - 3.0, s + length / 2 + 3.0)
        if any(span[0] < b and a < span[1] for a, b in occupied.get(lane.fid, [])):
            continue
        occupied.setdefault(lane.fid, []).append(span)
        routes.append(random_route(town, lane.fid, need, rng, blocked))
        s0.append(s)
        sizes.append((length, width))
        kinds.append(kind)
    return routes, np.array(s0), np.array(sizes).reshape(-1, 2), np.array(kinds, dtype=np.int64)


def _copied_moves(town: Town, route: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    """The first :data:`EGO_LEAD_MOVES` junction movements of a route as the ego's choices: (roadblock -> turn
    type, roadblock -> lane index)."""
    turn: dict[int, int] = {}
    target: dict[int, int] = {}
    for lane, conn in zip(route[:-1], route[1:]):
        c = town.paths[conn]
        if not c.is_connector or c.turn_type == TurnType.UTURN:
            continue
        rb = town.paths[lane].roadblock
        turn[rb], target[rb] = int(c.turn_type), town.paths[lane].index
        if len(turn) == EGO_LEAD_MOVES:
            break
    return turn, target


def _static_boxes(town: Town, cfg: DriveConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parked vehicles on parking strips and cones / barriers at their ends: boxes ``(S, 7)``, types, heights."""
    boxes, types, heights = [], [], []
    for _, line, head in town.shoulders:
        for k in range(20, len(line) - 20, 12):
            u = rng.random()
            if u < cfg.parked_share:
                length, width = (rng.uniform(4.2, 4.9), 1.9) if u < 0.8 * cfg.parked_share else (5.5, 2.1)
                boxes.append([line[k, 0], line[k, 1], head[k], 0.0, 0.0, length, width])
                types.append(TrackedObjectType.VEHICLE)
                heights.append(1.6)
            elif u < cfg.parked_share + 0.03:
                kind = TrackedObjectType.TRAFFIC_CONE if rng.random() < 0.6 else TrackedObjectType.BARRIER
                size = (0.4, 0.4) if kind == TrackedObjectType.TRAFFIC_CONE else (1.8, 0.5)
                boxes.append([line[k, 0], line[k, 1], head[k], 0.0, 0.0, *size])
                types.append(kind)
                heights.append(0.7 if kind == TrackedObjectType.TRAFFIC_CONE else 1.0)
    return np.array(boxes).reshape(-1, 7), np.array(types, dtype=np.int64), np.array(heights)


def _blockers(town: Town, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Stopped vans (hazard lights on) in the rightmost lane of some multi-lane roadblocks, far enough from
    the lane start to be passed by a lane change: lane fid -> box ``(7,)``."""
    lanes = sorted(
        (
            p
            for p in town.lanes
            if p.length > 115.0 and p.index > 0 and p.index == len(town.blocks[p.roadblock].paths) - 1
        ),
        key=lambda p: p.fid,
    )
    out: dict[int, np.ndarray] = {}
    if not lanes or rng.random() < 0.4:
        return out
    for k in rng.choice(len(lanes), min(len(lanes), int(rng.integers(1, 3))), replace=False):
        lane = lanes[int(k)]
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(lane.centre, axis=0), axis=1))])
        s = float(rng.uniform(85.0, cum[-1] - 25.0))
        i = int(np.searchsorted(cum, s))
        d = lane.centre[i] - lane.centre[i - 1]
        h = float(np.arctan2(d[1], d[0]))
        c = lane.centre[i] + 0.3 * np.array([np.sin(h), -np.cos(h)])  # 0.3 m towards the kerb
        out[lane.fid] = np.array([c[0], c[1], h, 0.0, 0.0, 5.5, 2.1, s])
    return out


def _ego_start(
    town: Town,
    rng: np.random.Generator,
    blocked: frozenset[int],
    lead: int = -1,
    signal: bool = False,
    turn: int = -1,
) -> tuple[int, float]:
    """Start lane and arc length of the ego; half the time behind a stopped vehicle when there is one and no
    lead of kind ``lead`` is to be placed ahead of it (:func:`_ego_lead`); for a cyclist lead, on a roadblock
    of two or more lanes whose rightmost lane is free (where it can pass the cyclist); with ``signal``, near the
    start of a lane at least :data:`SIGNAL_LANE_M` long that ends at a traffic light (it reaches the light in
    the log, after the warm-up); with ``turn`` (a :class:`TurnType`), on a lane that offers that movement."""
    if blocked and lead < 0 and not signal and turn < 0 and rng.random() < 0.5:
        lane = town.paths[sorted(blocked)[int(rng.integers(len(blocked)))]]
        return lane.fid, float(rng.uniform(2.0, 10.0))

    def fits(p) -> bool:
        paths = town.blocks[p.roadblock].paths
        if signal and (p.length < SIGNAL_LANE_M or not any(town.paths[c].phase >= 0 for c in p.outgoing)):
            return False
        if turn >= 0 and not any(town.paths[c].turn_type == turn for c in p.outgoing):
            return False
        return lead != BICYCLE or (len(paths) >= 2 and paths[-1] not in blocked and town.paths[paths[-1]].length > 60.0)

    free = sorted((p for p in town.lanes if p.length > 60.0 and p.fid not in blocked), key=lambda p: p.fid)
    lanes = [p for p in free if fits(p)] or free  # no such lane in this town: anywhere
    lane = lanes[int(rng.integers(len(lanes)))]
    if signal and lane.length >= SIGNAL_LANE_M:
        return lane.fid, float(rng.uniform(3.0, 8.0))
    return lane.fid, float(rng.uniform(5.0, min(25.0, lane.length - 40.0)))


def _brake_events(
    n: int, horizon: float, cyclist: np.ndarray, rng: np.random.Generator, every: float = BRAKE_EVERY_S
) -> np.ndarray:
    """``(N, E, 4)`` braking events of the moving vehicles (start, end, deceleration, target speed as a share of
    the free speed), ``every`` seconds apart on average; cyclists have none."""
    e = int(np.ceil(2.0 * horizon / every)) + 1
    start = np.cumsum(rng.exponential(every, (n, e)), axis=1)
    start[cyclist] = np.inf
    out = np.stack(
        [
            start,
            start + rng.uniform(*BRAKE_DURATION_S, (n, e)),
            rng.uniform(*BRAKE_DECEL, (n, e)),
            rng.uniform(0.0, 0.5, (n, e)),
        ],
        -1,
    )
    return out


def simulate_drive(town: Town, cfg: DriveConfig, rng: np.random.Generator) -> DriveRecord:
    """Simulate a drive and record every logged frame (see :class:`DriveRecord`)."""
    n_warm = int(round(cfg.warmup_s / DT))
    times = np.arange(n_warm + int(round(cfg.duration_s / DT))) * DT
    light_fids, light = light_status(town, times)
    light_cols = {int(f): i for i, f in enumerate(light_fids)}
    conflict, conn_index = conflict_matrix(town)
    conflict_long, _ = conflict_matrix(town, long=True)
    clear = clear_points(town, conflict_long, conn_index)
    blockers = _blockers(town, rng)
    blocked = frozenset(blockers)
    ego_lane, ego_s = _ego_start(town, rng, blocked, cfg.ego_lead, cfg.red_on_arrival, cfg.prefer_turn)
    (ego_lane, ego_s), lead = _ego_lead(town, rng, (ego_lane, ego_s), blocked, cfg.ego_lead)
    routes, s0, sizes, kinds = _spawn_traffic(town, cfg, rng, (ego_lane, ego_s), blocked, lead)
    tr = _make_traffic(town, cfg, rng, (routes, s0, sizes, kinds), lead, light_cols, conn_index, ego_lane)
    turn, target = _copied_moves(town, routes[0]) if lead is not None else ({}, {})
    ego = EgoDriver(
        town,
        rng,
        light_cols,
        conn_index,
        [ego_lane],
        ego_s,
        target=target,
        turn=turn,
        cyclists=frozenset(np.flatnonzero(kinds == BICYCLE).tolist()),
        blockers={k: b[7] for k, b in blockers.items()},
        behind_bike=-cfg.warmup_s if lead is not None and lead[0] == BICYCLE else 0.0,
        prefer_turn=cfg.prefer_turn,
        # behind a truck on its way to a light that turns red: it stays behind it (the situation is the stop)
        overtakes=not (lead is not None and lead[0] == TRUCK and cfg.red_on_arrival),
    )
    peds = spawn_pedestrians(town, cfg.duration_s + cfg.warmup_s, cfg.pedestrian_density, rng, light_cols)
    static, static_types, static_h = _static_objects(town, cfg, rng, blockers)
    types = np.concatenate(
        [
            np.where(kinds == BICYCLE, TrackedObjectType.BICYCLE, TrackedObjectType.VEHICLE),
            np.full(len(peds), TrackedObjectType.PEDESTRIAN),
            static_types,
        ]
    ).astype(np.int64)
    heights = np.concatenate([np.array([VEHICLE_KINDS[k][3] for k in kinds]), np.full(len(peds), 1.75), static_h])
    world = _World(town, tr, ego, peds, static, light, times, (conflict, conflict_long), clear)
    ego_pose, frames, boxes, valid, frame_blocks = _record(world, n_warm, cfg.red_on_arrival, lead is not None)
    k_now = int(ego.bank.segment_index(np.array([ego.s]))[0])
    route_blocks = _route_blocks(town, frame_blocks, ego.route[k_now:])
    return DriveRecord(
        ego_pose, frames, boxes, valid, types, heights, light_fids, light[n_warm:], route_blocks, frame_blocks
    )


def _make_traffic(
    town: Town,
    cfg: DriveConfig,
    rng: np.random.Generator,
    spawned: tuple[list[list[int]], np.ndarray, np.ndarray, np.ndarray],
    lead: tuple[int, float, float] | None,
    light_cols: dict[int, int],
    conn_index: dict[int, int],
    ego_lane: int,
) -> TrafficState:
    """The traffic of :func:`_spawn_traffic` (routes, start arc lengths, sizes, kinds) with its drivers'
    parameters and braking events (a truck placed ahead of the ego brakes more often)."""
    routes, s0, sizes, kinds = spawned
    cyclist = kinds == BICYCLE
    tr = TrafficState(
        bank=build_bank(town, routes, light_cols) if routes else build_bank(town, [[ego_lane]], light_cols),
        s=s0.astype(np.float64),
        v=np.zeros(len(s0)),
        sizes=sizes,
        params=IDMParams.sample(len(s0), rng, cyclist),
        conn_row=np.zeros((0, 0), dtype=np.int64),
        active=np.ones(len(s0), dtype=bool),
        wait=np.zeros(len(s0)),
        wait_conn=np.full(len(s0), -1, dtype=np.int64),
        sneaking=np.zeros(len(s0), dtype=bool),
        brakes=_brake_events(len(s0), cfg.warmup_s + cfg.duration_s, cyclist, rng),
    )
    if lead is not None and lead[0] == TRUCK:  # the lead placed ahead of the ego brakes more often
        own = _brake_events(1, cfg.warmup_s + cfg.duration_s, cyclist[:1], rng, EGO_LEAD_BRAKE_EVERY_S)
        e = max(own.shape[1], tr.brakes.shape[1])
        tr.brakes = np.concatenate([tr.brakes, np.full((len(s0), e - tr.brakes.shape[1], 4), np.inf)], 1)
        tr.brakes[0] = np.concatenate([own[0], np.full((e - own.shape[1], 4), np.inf)], 0)
    tr.conn_row = np.vectorize(lambda f: conn_index.get(int(f), -1), otypes=[np.int64])(tr.bank.seg_fid)
    return tr


def _static_objects(
    town: Town, cfg: DriveConfig, rng: np.random.Generator, blockers: dict[int, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parked vehicles, cones and barriers (:func:`_static_boxes`), then the stopped vans of ``blockers``:
    boxes ``(S, 7)``, types ``(S,)``, heights ``(S,)``."""
    static, static_types, static_h = _static_boxes(town, cfg, rng)
    if blockers:
        stopped = np.array([blockers[k][:7] for k in sorted(blockers)])
        static = np.concatenate([static, stopped], 0)
        static_types = np.concatenate([static_types, np.full(len(stopped), TrackedObjectType.VEHICLE)])
        static_h = np.concatenate([static_h, np.full(len(stopped), 2.2)])
    return static, static_types, static_h


@dataclass
class _World:
    """What :func:`_record` steps: the town, traffic, ego, pedestrians, static boxes ``(S, 7)``, the light
    status ``(T, L)`` over ``times`` ``(T,)`` (retimed in place when actuated), conflicts and clear points."""

    town: Town
    tr: TrafficState
    ego: EgoDriver
    peds: Pedestrians
    static: np.ndarray
    light: np.ndarray
    times: np.ndarray
    conflict: tuple[np.ndarray, np.ndarray]
    clear: np.ndarray


def _record(
    w: _World, n_warm: int, actuate: bool, has_lead: bool
) -> tuple[np.ndarray, list[EgoFrame], np.ndarray, np.ndarray, np.ndarray]:
    """Step the world over ``times`` and record the frames after the first ``n_warm``: ego poses ``(F, 3)``, ego
    frames, boxes ``(F, A, 7)``, validity ``(F, A)`` and the roadblock under the ego ``(F,)``. With ``actuate``
    the ego's first signalled junction is retimed (:func:`_actuate_red`), for the lead (row 0) if ``has_lead``."""
    tr, ego, peds, static = w.tr, w.ego, w.peds, w.static
    n_veh, n_log = len(tr.s), len(w.times) - n_warm
    n_agents = n_veh + len(peds) + len(static)
    boxes = np.zeros((n_log, n_agents, 7))
    valid = np.zeros((n_log, n_agents), dtype=bool)
    ego_pose = np.zeros((n_log, 3))
    frames: list[EgoFrame] = []
    frame_blocks = np.zeros(n_log, dtype=np.int64)
    for f in range(len(w.times)):
        if actuate and f >= n_warm:
            lead_front = (tr.bank, tr.s[0] + tr.sizes[0, 0] / 2, tr.v[0]) if has_lead and tr.active[0] else None
            actuate = not _actuate_red(w.town, ego, w.light, w.times, f, lead_front)
        veh = vehicle_boxes(tr.bank, tr.s, tr.v, tr.sizes) if n_veh else np.zeros((0, 7))
        ped = peds.boxes(w.times[f])
        ped_vis = peds.visible(w.times[f])
        ped_road = ped_vis & (peds.state != 0)  # crossers waiting at the kerb are no obstacle
        if f >= n_warm:
            g = f - n_warm
            ego_pose[g] = ego.pose()
            boxes[g] = np.concatenate([veh, ped, static], 0)
            valid[g] = np.concatenate([tr.active, ped_vis, np.ones(len(static), dtype=bool)])
            frame_blocks[g] = w.town.paths[ego.route[int(ego.bank.segment_index(np.array([ego.s]))[0])]].roadblock
        ego_frame = step_world(
            tr,
            ego,
            peds,
            veh,
            ped[ped_road],
            np.flatnonzero(ped_road) + n_veh,
            static,
            w.light[f],
            w.conflict,
            w.times[f],
            w.clear,
        )
        if f >= n_warm:
            frames.append(ego_frame)
    return ego_pose, frames, boxes, valid, frame_blocks


def _actuate_red(
    town: Town,
    ego: EgoDriver,
    light: np.ndarray,
    times: np.ndarray,
    f: int,
    lead_front: tuple[PathBank, float, float] | None = None,
) -> bool:
    """Once the ego's front is within :data:`ACTUATED_M` of the stop line of its next signalled connector, retime
    that junction (in ``light``, from frame ``f`` on): a green light turns yellow now, a red one stays red for
    the whole phase of the cross street from now (a yellow one is left as it is); returns whether the ego reached
    that window. With ``lead_front`` (the bank whose row 0 is the lead placed ahead of the ego, the arc length
    of its front and its speed) the window is that of the lead's front while the lead is on its way to that
    connector, down to where it can still stop at :data:`LEAD_STOP_DECEL`: the light must stop the lead too (on
    the ego's window, a truck 15-30 m ahead went through on yellow)."""
    k = int(ego.bank.segment_index(np.array([ego.s]))[0])
    cols = ego.bank.seg_light[0, k + 1 :]
    ahead = np.flatnonzero(cols >= 0)
    if len(ahead) == 0:
        return False
    j = k + 1 + int(ahead[0])
    dist = float(ego.bank.seg_start[0, j]) - ego.s - PACIFICA.front_length
    low = ACTUATED_M[0]
    if lead_front is not None:
        bank, front, v = lead_front
        on = np.flatnonzero(bank.seg_fid[0] == ego.bank.seg_fid[0, j])
        if len(on) and float(bank.seg_start[0, on[0]]) > front:  # the lead has not reached its line yet
            dist = float(bank.seg_start[0, on[0]]) - front
            low = min(low, max(v * v / (2.0 * LEAD_STOP_DECEL), 5.0))
    if not low <= dist <= ACTUATED_M[1]:
        return False  # too far yet, or too close to stop: the next signalled junction then
    status = light[f, cols[ahead[0]]]
    if status != TrafficLightStatus.YELLOW:  # green: yellow now; red: the cross street's phase starts now
        conn = int(ego.bank.seg_fid[0, j])
        jf = town.paths[conn].junction
        t_end = float(times[f]) - (YELLOW_S if status == TrafficLightStatus.RED else 0.0)
        _, retimed = light_status(town, times[f:], {jf: yellow_now_offset(town, conn, t_end)})
        cols_j = [col for fid, col in ego.light_cols.items() if town.paths[fid].junction == jf]
        light[f:, cols_j] = retimed[:, cols_j]
    return True


def _route_blocks(town: Town, frame_blocks: np.ndarray, planned: list[int]) -> list[int]:
    """Roadblocks / connectors driven (in order, deduplicated) followed by those still planned."""
    out: list[int] = []
    for b in list(frame_blocks) + [town.paths[f].roadblock for f in planned]:
        if not out or out[-1] != int(b):
            out.append(int(b))
    return out
