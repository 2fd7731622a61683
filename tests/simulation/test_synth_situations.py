"""Situations the synthetic city sets up on purpose: a lead ahead of the ego (a truck or a cyclist) that the
expert follows, anticipating its braking; a light that turns red as the ego arrives; crossers that give way to a
vehicle and turn back; the split plan."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from simulation.datasets.synthetic import drive_step, expert, world
from simulation.datasets.synthetic.expert import (
    BIKE_PATIENCE_S,
    LEAD_ANTICIPATION_S,
    OVERTAKE_PATIENCE_S,
    PED_PREVIEW_BRAKE,
    EgoDriver,
)
from simulation.datasets.synthetic.generator import (
    BUSY_CROSSWALKS,
    CONGESTED_PER_KM,
    SPLITS,
    LogSpec,
    make_town,
    plan_logs,
    record_to_log,
)
from simulation.datasets.synthetic.network import TurnType
from simulation.datasets.synthetic.pedestrians import STEP_OUT_S, TURN_BACK_S, Pedestrians, spawn_pedestrians
from simulation.datasets.synthetic.signals import light_status, signalled_connectors, yellow_now_offset
from simulation.datasets.synthetic.traffic import IDMParams, Objects
from simulation.datasets.synthetic.world import (
    ACTUATED_M,
    BICYCLE,
    SIGNAL_LANE_M,
    TRUCK,
    DriveConfig,
    _blockers,
    _copied_moves,
    _ego_lead,
    _ego_start,
    simulate_drive,
)
from simulation.types import PACIFICA, TrackedObjectType, TrafficLightStatus

SEED = 5
#: The braking event of the truck ahead of the ego: from 6 s to 11 s (1 s into the log) at -5 m/s^2 down to
#: 0.5 m/s.
LEAD_BRAKE = (6.0, 11.0, 5.0, 0.0)


def _lead_of(town, index: int, kind: int):
    """The lead of ``kind`` the drive of log ``index`` places ahead of the ego (the first draws of
    :func:`simulate_drive`)."""
    rng = np.random.default_rng(np.random.SeedSequence([SEED, 3, index]))
    blocked = frozenset(_blockers(town, rng))
    return _ego_lead(town, rng, _ego_start(town, rng, blocked, kind), blocked, kind)


def test_anticipated_lead_speed_hand_computed():
    """A lead that lost 0.1 m/s in one 0.05 s step brakes at 2 m/s^2: the ego reacts to its speed 1.5 s ahead."""
    ego = SimpleNamespace(seen_v={4: 10.0, 9: 3.0})
    v_brake, v_unseen = EgoDriver._anticipate(ego, 0.05, (4, 9.9), (7, 5.0))  # type: ignore[arg-type]
    assert v_brake == pytest.approx(9.9 - 2.0 * LEAD_ANTICIPATION_S) and v_unseen == 5.0
    assert ego.seen_v == {4: 9.9, 7: 5.0}  # only the leads of this step are remembered
    faster, none = EgoDriver._anticipate(ego, 0.05, (4, 10.0), (-1, 0.0))  # type: ignore[arg-type]
    assert faster == 10.0 and none == 0.0  # an accelerating lead is not extrapolated; no lead stays 0
    stop = EgoDriver._anticipate(ego, 0.05, (4, 0.2))  # type: ignore[arg-type]
    assert stop == [0.0]  # never below standstill


def test_copied_moves_follow_the_route(monkeypatch):
    town = make_town(SEED, 0)
    lane = min(town.lanes, key=lambda p: p.fid)
    conn = [c for c in lane.outgoing if town.paths[c].turn_type != 3][0]
    nxt = town.paths[conn].outgoing[0]
    conn2 = [c for c in town.paths[nxt].outgoing if town.paths[c].turn_type != 3][0]
    route = [lane.fid, conn, nxt, conn2, town.paths[conn2].outgoing[0]]
    turn, target = _copied_moves(town, route)
    assert turn == {lane.roadblock: town.paths[conn].turn_type, town.paths[nxt].roadblock: town.paths[conn2].turn_type}
    assert target == {lane.roadblock: lane.index, town.paths[nxt].roadblock: town.paths[nxt].index}
    monkeypatch.setattr(world, "EGO_LEAD_MOVES", 1)
    assert len(_copied_moves(town, route)[0]) == 1


@pytest.fixture(scope="module")
def truck_drive():
    """The first log that starts the ego behind a truck with 80 m of lane ahead, with that truck braking hard to a
    stop (:data:`LEAD_BRAKE`)."""
    town = make_town(SEED, 0)

    def room(i: int) -> float:  # lane left ahead of the truck
        (lane, _), lead = _lead_of(town, i, TRUCK)
        return -1.0 if lead is None else town.paths[lane].length - lead[1]

    index = next(i for i in range(200) if room(i) > 80.0)
    cfg = DriveConfig(duration_s=12.0, warmup_s=5.0, vehicles_per_km=5.0, pedestrian_density=0.5, ego_lead=TRUCK)

    def events(n, horizon, cyclist, rng, every=world.BRAKE_EVERY_S):
        out = np.full((n, 1, 4), np.inf)
        out[0, 0] = LEAD_BRAKE
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(drive_step, "BRAKE_CLEAR_M", 0.0)  # brake wherever it is on its lane
    mp.setattr(world, "_brake_events", events)
    try:
        rng = np.random.default_rng(np.random.SeedSequence([SEED, 3, index]))
        rec = simulate_drive(town, cfg, rng)
    finally:
        mp.undo()
    return town, index, cfg, rec


def test_the_expert_keeps_a_safe_gap_to_a_braking_truck(truck_drive):
    town, index, cfg, rec = truck_drive
    v = np.array([f.v for f in rec.ego_frames])
    lead = np.array([f.lead_owner for f in rec.ego_frames])
    gap = np.array([f.lead_gap for f in rec.ego_frames])
    v_lead = np.hypot(rec.boxes[:, 0, 3], rec.boxes[:, 0, 4])
    behind = lead == 0
    assert behind[:40].all()  # the truck placed ahead is the ego's lead from the start
    assert v_lead[40:160].min() < 1.0 and v_lead[:20].max() > 6.0  # it did brake hard, from speed
    assert min(f.a for f in rec.ego_frames) > -2.0  # within the expert's comfortable deceleration
    # never closer than 2 m, and never closing in faster than the gap allows within 0.9 s (NAVSIM's TTC)
    assert gap[behind].min() > 2.0
    assert (gap[behind] > 0.9 * (v[behind] - v_lead[behind])).all()
    # its box length is above the long-vehicle threshold, so queueing behind it is tagged
    assert rec.boxes[0, 0, 5] > 8.0
    log, _ = record_to_log(town, rec, LogSpec("t", index, 0, SPLITS[0], SEED, cfg))
    assert "behind_long_vehicle" in set(log.tag_type)


def test_leads_start_ahead_of_the_ego_cyclists_in_the_rightmost_lane():
    town = make_town(SEED, 0)
    placed = {TRUCK: 0, BICYCLE: 0}
    for i in range(30):
        assert _lead_of(town, i, -1)[1] is None
        for kind in placed:
            (lane, s), lead = _lead_of(town, i, kind)
            if lead is None:
                continue
            placed[kind] += 1
            p = town.paths[lane]
            assert lead[0] == kind
            assert lead[1] - s >= PACIFICA.length + 8.0 + lead[2] / 2 - 1e-9  # the gap of EGO_LEAD_GAP at least
            assert lead[1] + lead[2] / 2 + 4.0 < p.length
            if kind == BICYCLE:  # in the rightmost lane, with a lane to pass it
                assert p.index == len(town.blocks[p.roadblock].paths) - 1 >= 1 and lead[2] < 2.0
            else:
                assert lead[2] > 8.0
    # the ego starts where its lead fits (a cyclist's on a roadblock of two lanes or more); only a few lanes are
    # too short for the longer trucks
    assert min(placed.values()) >= 25


def _crosser(vehicle: np.ndarray) -> tuple[Pedestrians, np.ndarray]:
    """One crosser walking +x from (0, 0) to (10, 0), 2 m along, and a vehicle box ``(7,)``."""
    ped = Pedestrians(
        a=np.array([[0.0, 0.0]]),
        b=np.array([[10.0, 0.0]]),
        speed=np.array([1.0]),
        start_t=np.array([0.0]),
        crosser=np.array([True]),
        progress=np.array([2.0]),
        state=np.array([1]),
        linger=np.array([1.0]),
        arrive_t=np.array([np.inf]),
        light_col=np.array([-1]),
        held=np.zeros(1),
    )
    return ped, vehicle[None]


def test_a_crosser_waits_for_a_moving_vehicle_and_passes_a_yielding_one():
    # a vehicle moving across its way 1 m ahead: it waits
    ped, veh = _crosser(np.array([3.5, 0.0, np.pi / 2, 0.0, 5.0, 4.5, 1.9]))
    ped.step(0.0, 0.05, veh, np.zeros(1))
    assert ped.progress[0] == 2.0 and ped.held[0] == pytest.approx(0.05)
    assert np.all(ped.boxes(0.0)[0, 3:5] == 0.0)  # it stands: its logged velocity says so
    # the same vehicle stopped (yielding to it) 1.2 m from its front: it walks on
    ped, veh = _crosser(np.array([4.25, 0.0, np.pi / 2, 0.0, 0.0, 4.5, 1.9]))
    ped.step(0.0, 0.05, veh, np.zeros(1))
    assert ped.progress[0] == pytest.approx(2.05)


def test_a_crosser_does_not_step_in_front_of_an_approaching_vehicle():
    # a car driving down -y towards its next step (3 m ahead of it), 10 m away at 10 m/s: it would be there within
    # STEP_OUT_S (1 s), so the crosser waits at the edge ...
    ped, veh = _crosser(np.array([2.9, 10.0, -np.pi / 2, 0.0, -10.0, 4.5, 1.9]))
    ped.step(0.0, 0.05, veh, np.zeros(1))
    assert ped.progress[0] == 2.0
    # ... but not for one 25 m away (2.5 s), nor for one driving away from its way
    for box in ([2.9, 25.0, -np.pi / 2, 0.0, -10.0, 4.5, 1.9], [2.9, -6.0, -np.pi / 2, 0.0, -10.0, 4.5, 1.9]):
        ped, veh = _crosser(np.array(box))
        ped.step(0.0, 0.05, veh, np.zeros(1))
        assert ped.progress[0] == pytest.approx(2.05)
    assert STEP_OUT_S == 1.5


def test_the_expert_slows_for_where_a_pedestrian_heads_but_brakes_hard_only_for_one_in_its_way():
    """The ego at 10 m/s on a long lane, a pedestrian box 12 m ahead of its bumper on its lane: in the way it brakes
    beyond PED_PREVIEW_BRAKE; as a predicted position (the preview of a walking pedestrian) it brakes at most that."""
    town = make_town(SEED, 0)
    lane = max((p for p in town.lanes if p.incoming), key=lambda p: p.length)
    empty = Objects(*(np.zeros(0, dtype=t) for t in (np.int64, float, float, float, np.int64)))
    none_boxes, none_owner = np.zeros((0, 7)), np.zeros(0, dtype=np.int64)

    def accel(in_way: bool) -> float:
        ego = EgoDriver(town, np.random.default_rng(0), {}, {}, [lane.fid], 10.0, v=10.0)
        x, y, h = ego.bank.poses(np.array([[10.0 + PACIFICA.front_length + 12.0]]))[0, 0]
        box = np.array([[x, y, h, 0.0, 0.0, 0.6, 0.6]])
        owner = np.array([500])
        boxes, preview = ((box, owner), None) if in_way else ((none_boxes, none_owner), (box, owner))
        low = 0.0
        for _ in range(20):  # 1 s: the jerk limit lets the deceleration build up
            ego.step(
                0.05, np.zeros(1, dtype=np.int8), False, empty, *boxes, none_owner, np.zeros(0), np.zeros(0), preview
            )
            low = min(low, ego.a)
        return low

    hard, soft = accel(True), accel(False)
    assert hard < -PED_PREVIEW_BRAKE - 0.5
    assert -PED_PREVIEW_BRAKE - 1e-9 <= soft < -0.1


def test_a_crosser_held_by_a_stopped_vehicle_turns_back():
    ped, veh = _crosser(np.array([3.5, 0.0, np.pi / 2, 0.0, 0.0, 4.5, 1.9]))  # stopped, touching its next step
    steps = int(round(TURN_BACK_S / 0.05)) - 1
    for k in range(steps):
        ped.step(0.05 * k, 0.05, veh, np.zeros(1))
    assert ped.progress[0] == 2.0 and ped.b[0, 0] == 10.0  # still waiting
    while ped.b[0, 0] == 10.0 and steps < 90:
        ped.step(0.05 * steps, 0.05, veh, np.zeros(1))
        steps += 1
    assert steps <= 81  # turned back after TURN_BACK_S (4 s = 80 steps) up to rounding, from where it stands
    assert ped.b[0, 0] == 0.0 and ped.a[0, 0] == 10.0
    assert ped.progress[0] == pytest.approx(8.0) and ped.held[0] == 0.0
    assert ped.boxes(0.0)[0, 0] == pytest.approx(2.0)
    ped.step(0.05 * steps, 0.05, veh, np.zeros(1))
    assert ped.boxes(0.0)[0, 0] == pytest.approx(1.95)  # walking away from the vehicle


def test_walkers_stay_on_their_walkway():
    """Walkers walk straight lines between points of a walkway's centre line; on curved roads a long chord would cut
    across the carriageway (a pedestrian walking down a lane for a minute). No walker's line touches a lane."""
    from shapely.geometry import LineString
    from shapely.strtree import STRtree

    for index in range(2):
        town = make_town(SEED, index)
        ped = spawn_pedestrians(town, 60.0, 8.0, np.random.default_rng(index), {})
        walkers = np.flatnonzero(~ped.crosser)
        assert len(walkers) > 100
        lanes = [p.polygon for p in town.paths.values()]
        tree = STRtree(lanes)
        lines = [LineString([ped.a[k], ped.b[k]]) for k in walkers]
        crossing = [k for k, ls in zip(walkers, lines) if any(lanes[i].intersects(ls) for i in tree.query(ls))]
        assert crossing == []
        assert np.mean([ls.length for ls in lines]) > 15.0  # still walks, not a step on the spot


def test_demo_size_split_plan():
    specs = plan_logs(14, 2, 0, 60.0)
    counts = [sum(s.split == name for s in specs) for name in SPLITS]
    assert counts == [6, 2, 6]
    test = [s.drive for s in specs if s.split == SPLITS[2]]
    # the six test logs get the six situations: a truck ahead, a red light on arrival, a cyclist ahead, a congested
    # drive, then a truck and a cyclist ahead with a red light on arrival
    assert [d.ego_lead for d in test] == [TRUCK, -1, BICYCLE, -1, TRUCK, BICYCLE]
    assert [d.red_on_arrival for d in test] == [False, True, False, False, True, True]
    congested = [d.vehicles_per_km == CONGESTED_PER_KM for d in test]
    assert congested == [False, False, False, True, False, False]
    assert max(d.vehicles_per_km for d in test if d.vehicles_per_km != CONGESTED_PER_KM) < CONGESTED_PER_KM
    assert all(BUSY_CROSSWALKS[0] <= d.pedestrian_density <= BUSY_CROSSWALKS[1] for d in test if d.red_on_arrival)
    assert [s.split for s in plan_logs(3, 1, 0, 20.0)] == [SPLITS[0], SPLITS[2], SPLITS[0]]


def test_the_expert_follows_a_cyclist_then_passes_it():
    """The first log that starts the ego behind a cyclist with room to pass: tagged behind_bike while it follows,
    it changes to the next lane BIKE_PATIENCE_S into the log (the warm-up does not count) and ends ahead of the
    cyclist."""
    town = make_town(SEED, 0)

    def room(i: int) -> float:
        (lane, _), lead = _lead_of(town, i, BICYCLE)
        return -1.0 if lead is None else town.paths[lane].length - lead[1]

    index = next(i for i in range(200) if room(i) > 80.0)
    cfg = DriveConfig(duration_s=20.0, warmup_s=1.0, vehicles_per_km=3.0, pedestrian_density=0.5, ego_lead=BICYCLE)
    rec = simulate_drive(town, cfg, np.random.default_rng(np.random.SeedSequence([SEED, 3, index])))
    assert rec.types[0] == TrackedObjectType.BICYCLE
    lead = np.array([f.lead_owner for f in rec.ego_frames])
    assert (lead[:20] == 0).all()  # the cyclist is the lead from the start
    first_change = next(g for g, f in enumerate(rec.ego_frames) if f.changing_lane)
    assert first_change * 0.05 >= BIKE_PATIENCE_S - 0.5  # patient first, counted from the log's start
    log, _ = record_to_log(town, rec, LogSpec("b", index, 0, SPLITS[0], SEED, cfg))
    assert "behind_bike" in set(log.tag_type)
    # the ego ends ahead of the cyclist along its heading
    d = rec.boxes[-1, 0, :2] - rec.ego_pose[-1, :2]
    h = rec.ego_pose[-1, 2]
    assert d[0] * np.cos(h) + d[1] * np.sin(h) < 0.0


def test_the_expert_overtakes_a_slow_vehicle():
    """A truck ahead that drives at 40 % of the speed it may, on a through road of two lanes or more: the ego,
    going straight on, follows it OVERTAKE_PATIENCE_S, then passes it on the next lane; with overtaking off it
    stays behind."""
    town = make_town(SEED, 0)

    def through_road(i: int) -> bool:  # every lane of the roadblock goes straight on at its end
        (lane, _), lead = _lead_of(town, i, TRUCK)
        if lead is None:
            return False
        rb = town.blocks[town.paths[lane].roadblock]
        straight = [any(town.paths[c].turn_type == TurnType.STRAIGHT for c in town.paths[q].outgoing) for q in rb.paths]
        return len(rb.paths) >= 2 and all(straight) and town.paths[lane].length - lead[1] > 70.0

    indices = [i for i in range(60) if through_road(i)][:3]
    assert len(indices) == 3
    cfg = DriveConfig(duration_s=25.0, warmup_s=1.0, vehicles_per_km=2.0, pedestrian_density=0.2, ego_lead=TRUCK)
    sample = IDMParams.sample

    def slow_lead(n, rng, cyclist=None):
        p = sample(n, rng, cyclist)
        p.v_factor[0] = 0.4  # the placed lead is the first row
        return p

    def drive(index: int, patience: float):
        mp = pytest.MonkeyPatch()
        mp.setattr(IDMParams, "sample", staticmethod(slow_lead))
        mp.setattr(world, "_brake_events", lambda n, horizon, cyclist, rng, every=0.0: np.full((n, 1, 4), np.inf))
        mp.setattr(expert, "EGO_STRAIGHT_WEIGHT", 1e6)
        mp.setattr(expert, "OVERTAKE_PATIENCE_S", patience)
        try:
            rec = simulate_drive(town, cfg, np.random.default_rng(np.random.SeedSequence([SEED, 3, index])))
        finally:
            mp.undo()
        d = rec.boxes[-1, 0, :2] - rec.ego_pose[-1, :2]
        ahead = d[0] * np.cos(rec.ego_pose[-1, 2]) + d[1] * np.sin(rec.ego_pose[-1, 2]) < 0.0
        change = next((g for g, f in enumerate(rec.ego_frames) if f.changing_lane), None)
        assert (np.array([f.lead_owner for f in rec.ego_frames[:20]]) == 0).all()  # the truck leads at first
        assert min(f.a for f in rec.ego_frames) > -2.0
        return ahead, change

    passed = [drive(i, OVERTAKE_PATIENCE_S) for i in indices]
    assert sum(ahead for ahead, _ in passed) >= 2
    for _, change in passed:  # patient first (the 1 s warm-up counts): no lane change before
        assert change is None or (change + 20) * 0.05 >= OVERTAKE_PATIENCE_S
    assert all(drive(i, 1e9) == (False, None) for i in indices)


def test_yellow_now_offset_ends_the_green_at_the_given_time():
    town = make_town(SEED, 0)
    conn = int(signalled_connectors(town)[0])
    jf = town.paths[conn].junction
    times = np.arange(0.0, 120.0, 0.05)
    for t in (7.0, 33.3, 90.0):
        fids, status = light_status(town, times, {jf: yellow_now_offset(town, conn, t)})
        col = status[:, list(fids).index(conn)]
        k = int(round(t / 0.05))
        assert col[k - 1] == TrafficLightStatus.GREEN and col[k] == TrafficLightStatus.YELLOW
    # other junctions keep their own timing
    fids, plain = light_status(town, times)
    other = np.array([town.paths[int(f)].junction != jf for f in fids])
    assert np.array_equal(status[:, other], plain[:, other])


def test_the_light_turns_red_as_the_ego_arrives():
    """A drive with red_on_arrival starts the ego on a long lane that ends at a light; the light turns yellow
    when the ego is ACTUATED_M from its line, and the ego stops there and waits (tagged stationary at a light)."""
    town = make_town(SEED, 0)
    cfg = DriveConfig(duration_s=40.0, vehicles_per_km=4.0, pedestrian_density=1.0, red_on_arrival=True)
    rng = np.random.default_rng(np.random.SeedSequence([SEED, 3, 0]))
    rec = simulate_drive(town, cfg, rng)
    start = town.paths[rec.ego_frames[0].segment]
    assert start.length >= SIGNAL_LANE_M and any(town.paths[c].phase >= 0 for c in start.outgoing)
    v = np.array([f.v for f in rec.ego_frames])
    gap = np.array([f.stop_gap for f in rec.ego_frames])
    red = np.array([f.light_stop for f in rec.ego_frames])
    waiting = (v < 0.1) & red & (gap < 12.0)
    assert waiting.sum() * 0.05 >= 8.0  # a full phase of the cross street, at least its shortest green
    first = int(np.argmax(waiting))
    approach = np.flatnonzero(~red[:first])
    assert len(approach) and gap[approach[-1] + 1] <= ACTUATED_M[1] + 1.0  # green until close to the line
    log, _ = record_to_log(town, rec, LogSpec("r", 0, 0, SPLITS[2], SEED, cfg))
    assert {"stationary_at_traffic_light_without_lead", "stationary_at_traffic_light_with_lead"} & set(log.tag_type)


def test_with_a_truck_ahead_the_light_turns_red_as_the_truck_arrives():
    """red_on_arrival with a truck placed ahead (the situation "truck + red" of the log plan): the actuation
    window is that of the truck's front, so that the truck stops at the light and the ego stops behind it. On
    the ego's own window, the truck of these drives (15-30 m ahead) went through on yellow and the ego stopped
    alone; and the ego of such a drive does not overtake the (slow, often braking) truck, which it did on one of
    these drives before the light, standing beside it there."""
    town = make_town(SEED, 0)
    cfg = DriveConfig(duration_s=25.0, vehicles_per_km=4.0, pedestrian_density=1.0, ego_lead=TRUCK, red_on_arrival=True)
    behind = []
    for index in range(3):
        if _lead_of(town, index, TRUCK)[1] is None:
            continue  # no truck placed on this drive
        rec = simulate_drive(town, cfg, np.random.default_rng(np.random.SeedSequence([SEED, 3, index])))
        assert rec.types[0] == TrackedObjectType.VEHICLE and rec.boxes[0, 0, 5] > 7.0  # the truck
        truck_v = np.hypot(rec.boxes[:, 0, 3], rec.boxes[:, 0, 4])
        lead = np.array([f.lead_owner for f in rec.ego_frames])
        red = np.array([f.light_stop for f in rec.ego_frames])
        v = np.array([f.v for f in rec.ego_frames])
        # the ego stands at the red light with the truck standing ahead of it as its lead
        behind.append(float(((v < 0.1) & red & (lead == 0) & (truck_v < 0.1)).sum() * 0.05))
    assert len(behind) == 3 and min(behind) >= 3.0, behind
