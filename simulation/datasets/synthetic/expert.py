"""The ego expert: a privileged, careful driver that follows a route of roadblocks.

Longitudinally it uses the same constraints as traffic (leaders on its path, anything entering its
corridor, red / yellow lights, occupied conflicting connectors) with gentler IDM parameters, a longer
look-ahead and a jerk limit. Laterally it keeps to the lane baseline and changes lanes when the route
needs it (a turn from another lane) or by preference, only into a free gap, with a quintic lateral
profile over a speed-dependent distance. Its pose is the rear axle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulation.datasets.synthetic.ego_sensing import EGO_OWNER, EGO_PROBES, REAR_TO_CENTER, EgoSensed, sense_ego
from simulation.datasets.synthetic.network import Block, Path, Town, TurnType
from simulation.datasets.synthetic.paths import PathBank, build_bank
from simulation.datasets.synthetic.traffic import (
    INF,
    IDMParams,
    Objects,
    free_speed,
    idm_accel,
)
from simulation.geometry import project_on_polyline
from simulation.types import PACIFICA

VAN_HALF = 2.75  # half length of the stopped vans of :func:`~simulation.datasets.synthetic.world._blockers`
WAIT_BEHIND = 14.0  # the ego waits this far behind a stopped vehicle it cannot pass yet
#: Lateral acceleration (m/s^2) of the ego's curve speeds.
EGO_CURVE_ACCEL = 2.0
#: Moving-average window (points 1 m apart) of the ego's path: curvature builds up over it (a tracker
#: that starts with a straight wheel can follow) and turns are taken slightly inside the lane centre.
EGO_SMOOTH_M = 15
#: The ego anticipates a braking lead: it reacts to the speed the lead will have this many seconds ahead at
#: its current deceleration (a privileged driver sees the brake lights; traffic brakes without warning).
LEAD_ANTICIPATION_S = 1.5
#: The ego also checks its corridor against where each walking pedestrian will be this many seconds ahead at its
#: current velocity: it slows for one about to step into its way instead of braking hard once it has ...
PED_PREVIEW_S = 1.5
#: ... but brakes no harder than this (m/s^2) for such a predicted position.
PED_PREVIEW_BRAKE = 2.0
#: The ego overtakes a vehicle it has followed this long (s) closer than :data:`SLOW_LEAD_GAP_M` at under
#: :data:`SLOW_LEAD_RATIO` of its own desired speed (but moving: not a queue), on the adjacent lane of its
#: roadblock that offers the same movement at the next junction (it then keeps that lane), with room for the
#: lane change before the junction.
OVERTAKE_PATIENCE_S = 4.0
SLOW_LEAD_GAP_M = 40.0
SLOW_LEAD_RATIO = 0.85
#: ... and only into a lane with no vehicle this far ahead (m).
OVERTAKE_CLEAR_M = 60.0
#: Seconds the ego follows a cyclist closer than :data:`BIKE_NEAR_M` before it passes it on the left lane.
BIKE_PATIENCE_S = 8.0
BIKE_NEAR_M = 20.0
#: Weight of each straight-on (lane, connector) option against 1 for each turn when the ego picks its movement
#: at a junction: the expert turns often (a turn is where a planner that ignores the map fails).
EGO_STRAIGHT_WEIGHT = 0.5
#: ... and of each option of the movement a drive prefers (:attr:`EgoDriver.prefer_turn`) against 1 for the others.
PREFERRED_TURN_WEIGHT = 8.0


@dataclass
class EgoFrame:
    """What the expert knew at one step (for scenario tags)."""

    lead_gap: float
    lead_v: float
    lead_owner: int
    light_stop: bool
    stop_gap: float
    segment: int
    turn_type: int
    changing_lane: bool
    corridor_owner: int
    v: float = 0.0
    a: float = 0.0


@dataclass
class EgoDriver:
    """Mutable state of the ego expert (see module docstring)."""

    town: Town
    rng: np.random.Generator
    light_cols: dict[int, int]
    conn_index: dict[int, int]
    route: list[int]
    s: float
    v: float = 0.0
    a: float = 0.0
    params: IDMParams = field(init=False)
    jerk: float = 2.5
    lc_start: float = 0.0
    lc_len: float = 0.0
    lc_d0: float = 0.0
    lc_active: bool = False
    target: dict[int, int] = field(default_factory=dict)  # roadblock fid -> lane index the route needs
    turn: dict[int, int] = field(default_factory=dict)  # roadblock fid -> chosen TurnType
    blockers: dict[int, float] = field(default_factory=dict)  # lane fid -> arc length of a stopped vehicle
    signal: tuple[int, float] | None = None  # (lane fid, arc length) the ego waits to merge into
    wait: float = 0.0  # seconds the ego has been yielding at a junction
    wait_conn: int = -1  # the connector it has been waiting for
    sneaking: bool = False  # a left turn that started across on yellow after waiting (ignores the light)
    seen_v: dict[int, float] = field(default_factory=dict)  # speeds of the leads at the previous step
    cyclists: frozenset[int] = frozenset()  # agent ids of the cyclists
    # seconds the ego has been following a cyclist closely (negative: the follow that starts a log counts from the
    # log's first frame, not from the unlogged warm-up)
    behind_bike: float = 0.0
    behind_slow: float = 0.0  # seconds the ego has been following a slow vehicle (see OVERTAKE_PATIENCE_S)
    prefer_turn: int = -1  # TurnType the ego picks more often at junctions (PREFERRED_TURN_WEIGHT), -1 none
    overtakes: bool = True  # whether it overtakes slow vehicles (see OVERTAKE_PATIENCE_S)
    bank: PathBank = field(init=False)

    def __post_init__(self) -> None:
        r = self.rng
        self.params = IDMParams(
            v_factor=np.array([r.uniform(0.93, 1.0)]),
            a=np.array([r.uniform(1.3, 1.8)]),
            b=np.array([r.uniform(1.5, 2.0)]),
            headway=np.array([r.uniform(1.4, 1.9)]),
            s0=np.array([r.uniform(3.0, 4.0)]),
            b_max=np.array([5.0]),
        )
        self.route = self._extend(self.route)
        self._rebuild()

    # ------------------------------------------------------------------ route
    def _connector_for(self, lane_fid: int) -> int:
        """Connector out of ``lane_fid`` for the movement chosen for its roadblock (straight while the
        route still needs a lane change)."""
        lane = self.town.paths[lane_fid]
        turn = self.turn.get(lane.roadblock, TurnType.STRAIGHT)
        outs = [c for c in lane.outgoing if self.town.paths[c].turn_type != TurnType.UTURN]
        for wanted in (turn, TurnType.STRAIGHT):
            same = [c for c in outs if self.town.paths[c].turn_type == wanted]
            if same:
                return same[0]
        return outs[0]

    def _choose(self, lane_fid: int) -> int:
        """Pick the movement out of ``lane_fid``'s roadblock (and the lane it needs); return the connector."""
        lane = self.town.paths[lane_fid]
        rb = self.town.blocks[lane.roadblock]
        if rb.fid not in self.turn:
            opts = [
                (self.town.paths[c].turn_type, self.town.paths[q].index)
                for q in rb.paths
                for c in self.town.paths[q].outgoing
                if self.town.paths[c].turn_type != TurnType.UTURN
            ]
            w = np.array([EGO_STRAIGHT_WEIGHT if t == TurnType.STRAIGHT else 1.0 for t, _ in opts])
            if self.prefer_turn >= 0:
                w = np.where([t == self.prefer_turn for t, _ in opts], PREFERRED_TURN_WEIGHT, 1.0)
            turn, idx = opts[int(self.rng.choice(len(opts), p=w / w.sum()))]
            self.turn[rb.fid], self.target[rb.fid] = int(turn), int(idx)
        return self._connector_for(lane_fid)

    def _extend(self, route: list[int], lanes_ahead: int = 3) -> list[int]:
        route = list(route)
        while sum(not self.town.paths[f].is_connector for f in route) < lanes_ahead:
            c = self._choose(route[-1])
            route += [c, self.town.paths[c].outgoing[0]]
        return route

    def _rebuild(self) -> None:
        self.bank = build_bank(self.town, [self.route], self.light_cols, accel=EGO_CURVE_ACCEL, smooth=EGO_SMOOTH_M)
        self.conn_row = np.array([[self.conn_index.get(f, -1) for f in self.route]], dtype=np.int64)

    def _advance_route(self) -> None:
        """Drop segments behind once the rear axle is on the second lane of the route."""
        lanes = [k for k, f in enumerate(self.route) if not self.town.paths[f].is_connector]
        if len(lanes) < 2 or self.s < self.bank.seg_start[0, lanes[1]]:
            return
        cut = lanes[1] - 1  # keep the connector just driven, for smooth geometry
        self.s -= float(self.bank.seg_start[0, cut])
        self.lc_start -= float(self.bank.seg_start[0, cut])
        self.route = self._extend(self.route[cut:])
        self._rebuild()

    # ------------------------------------------------------------------ lane change
    def _current(self) -> tuple[int, int]:
        k = int(self.bank.segment_index(np.array([self.s]))[0])
        return k, self.route[k]

    def _try_lane_change(self, t_seg: np.ndarray, t_u: np.ndarray, t_v: np.ndarray) -> None:
        """Start a lane change towards the lane the route needs, or around a stopped vehicle, when the gap
        there is free; otherwise signal, so that followers in that lane leave a gap."""
        self.signal = None
        k, fid = self._current()
        lane = self.town.paths[fid]
        if self.lc_active or lane.is_connector:
            return
        rb = self.town.blocks[lane.roadblock]
        want = self.target.get(rb.fid, lane.index)
        u = self.s - float(self.bank.seg_start[0, k])
        left, lc_len = lane.length - u, max(self.v * 5.0, 30.0)
        room = lc_len + 15.0
        passing = self.behind_bike > BIKE_PATIENCE_S and want == lane.index and lane.index > 0
        if passing:  # pass a cyclist on the left lane
            want = lane.index - 1
        overtake = -1
        if self.overtakes and self.behind_slow > OVERTAKE_PATIENCE_S and want == lane.index and not passing:
            overtake = self._overtaking_lane(lane, rb)
            if overtake >= 0 and left > room + 10.0:
                want = overtake
        if fid in self.blockers and u < self.blockers[fid]:  # pass the stopped vehicle on the left
            want, left = lane.index - 1, self.blockers[fid] - VAN_HALF - (u + PACIFICA.front_length)
            if left < room:  # close to it: a short, slow pull-out
                lc_len = max(self.v * 4.5, 12.0)
                room = 0.8 * lc_len
        if want == lane.index or u < 5.0:
            return
        if left < room:
            if left < 25.0 and fid not in self.blockers and not passing:  # too late: take a movement this lane offers
                self.turn.pop(rb.fid, None)
                self.target.pop(rb.fid, None)
                self.turn[rb.fid] = self.town.paths[self._connector_for(fid)].turn_type
                self.target[rb.fid] = lane.index
                self.route = self._extend(self.route[: k + 1])
                self._rebuild()
            return
        adj = self.town.paths[rb.paths[lane.index + (1 if want > lane.index else -1)]]
        s_adj, d_adj = project_on_polyline(self._pose()[None, :2], adj.centre)
        if adj.fid in self.blockers and float(s_adj[0]) < self.blockers[adj.fid] + 15.0:
            return  # not back into the lane of a stopped vehicle before passing it
        rel = t_u - (float(s_adj[0]) + REAR_TO_CENTER)
        ahead = 8.0 + self.v * 0.8 if adj.index != overtake else OVERTAKE_CLEAR_M  # overtake into a free lane
        behind = 4.0 + self.v * 0.6 + 2.0 * np.maximum(t_v - self.v, 0.0) + t_v
        if np.any((t_seg == adj.fid) & (rel > -behind) & (rel < ahead)):
            self.signal = (adj.fid, float(s_adj[0]) + REAR_TO_CENTER)
            return
        if adj.index == overtake:  # the movement stays: its lane is now the overtaking one
            self.target[rb.fid] = adj.index
            self.behind_slow = 0.0
        self.route = self._extend([adj.fid])
        self.s = float(s_adj[0])
        self.lc_active, self.lc_start, self.lc_d0 = True, self.s, float(d_adj[0])
        self.lc_len = lc_len * self.rng.uniform(1.0, 1.2)
        self._rebuild()

    def _overtaking_lane(self, lane: Path, rb: Block) -> int:
        """Index of the lane to overtake on (the left one first) that offers the movement chosen for the next
        junction and has no stopped vehicle on it, -1 if none."""
        turn = self.turn.get(rb.fid, TurnType.STRAIGHT)
        for idx in (lane.index - 1, lane.index + 1):
            if not 0 <= idx < len(rb.paths) or rb.paths[idx] in self.blockers:
                continue
            outs = self.town.paths[rb.paths[idx]].outgoing
            if any(self.town.paths[c].turn_type == turn for c in outs):
                return idx
        return -1

    def _blocker_gap(self) -> float:
        """Distance from the front bumper to the point where the ego waits behind a stopped vehicle on its lane
        (leaving room to pull out), ``INF`` if none."""
        k, fid = self._current()
        if fid not in self.blockers or self.lc_active:
            return INF
        u = self.s - float(self.bank.seg_start[0, k])
        gap = self.blockers[fid] - VAN_HALF - WAIT_BEHIND - (u + PACIFICA.front_length)
        return gap if gap > -WAIT_BEHIND else INF

    def _probe_offsets(self) -> np.ndarray:
        """``(M,)`` lateral offsets of the planned lane-change profile at the corridor probes."""
        if not self.lc_active:
            return np.zeros(len(EGO_PROBES))
        tau = np.clip((self.s + PACIFICA.front_length + EGO_PROBES - self.lc_start) / self.lc_len, 0.0, 1.0)
        return self.lc_d0 * (1 - 10 * tau**3 + 15 * tau**4 - 6 * tau**5)

    def _offset(self) -> tuple[float, float]:
        """Lateral offset from the path and its derivative along the path (quintic profile)."""
        if not self.lc_active:
            return 0.0, 0.0
        tau = np.clip((self.s - self.lc_start) / self.lc_len, 0.0, 1.0)
        if tau >= 1.0:
            self.lc_active = False
            return 0.0, 0.0
        q = 1 - 10 * tau**3 + 15 * tau**4 - 6 * tau**5
        dq = (-30 * tau**2 + 60 * tau**3 - 30 * tau**4) / self.lc_len
        return self.lc_d0 * q, self.lc_d0 * dq

    def _pose(self) -> np.ndarray:
        """``(3,)`` rear-axle pose."""
        p = self.bank.poses(np.array([[self.s]]))[0, 0]
        d, dd = self._offset()
        n = np.array([-np.sin(p[2]), np.cos(p[2])])
        return np.array([p[0] + n[0] * d, p[1] + n[1] * d, p[2] + np.arctan(dd)])

    # ------------------------------------------------------------------ public
    def pose(self) -> np.ndarray:
        return self._pose()

    def box(self) -> np.ndarray:
        """``(7,)`` ego box (centre, heading, global velocity, size)."""
        p = self._pose()
        c, s = np.cos(p[2]), np.sin(p[2])
        return np.array(
            [
                p[0] + REAR_TO_CENTER * c,
                p[1] + REAR_TO_CENTER * s,
                p[2],
                self.v * c,
                self.v * s,
                PACIFICA.length,
                PACIFICA.width,
            ]
        )

    def register(self) -> Objects:
        """The ego as a path entry for traffic leader searches."""
        k, fid = self._current()
        u = self.s + REAR_TO_CENTER - float(self.bank.seg_start[0, k])
        seg, pos, half = [fid], [u], [PACIFICA.length / 2]
        min_d = [0.0]
        if self.signal is not None:  # followers in the target lane (not those alongside) leave a gap
            seg.append(self.signal[0])
            pos.append(self.signal[1])
            half.append(PACIFICA.length / 2 + 2.0)
            min_d.append(PACIFICA.length + 6.0)
        n = len(seg)
        return Objects(
            np.array(seg), np.array(pos), np.full(n, self.v), np.array(half), np.full(n, EGO_OWNER), np.array(min_d)
        )

    def _anticipate(self, dt: float, *leads: tuple[int, float]) -> list[float]:
        """Speeds of ``(owner, speed)`` leads :data:`LEAD_ANTICIPATION_S` ahead at their deceleration since the
        previous step (their speed now if they are not braking or were not seen then)."""
        out = []
        for owner, v in leads:
            dv = v - self.seen_v.get(owner, v) if owner >= 0 else 0.0
            out.append(max(v + min(dv / dt, 0.0) * LEAD_ANTICIPATION_S, 0.0))
        self.seen_v = {owner: v for owner, v in leads if owner >= 0}
        return out

    def _integrate(self, acc: float, gap: float, dt: float) -> None:
        """Apply the commanded acceleration through the jerk limit (relaxed when an obstacle is close)."""
        urgent = gap < 2.0 + 1.2 * self.v
        j = (9.0 if urgent else self.jerk) * dt
        self.a = float(np.clip(acc, self.a - j, self.a + self.jerk * dt))
        if self.v <= 0.0 and self.a < 0.0:
            self.a = 0.0
        step = max(self.v * dt + 0.5 * self.a * dt * dt, 0.0)
        self.v = max(self.v + self.a * dt, 0.0)
        self.s += step

    def _update_follow_timers(self, dt: float, seen: EgoSensed, v0: np.ndarray) -> None:
        """Count how long the ego has followed a cyclist closely and a slow vehicle (the triggers of passing and
        overtaking, see :meth:`_try_lane_change`); ``v0``: ``(1,)`` its desired speed."""
        gap_l, v_l, own_l = seen.gap_l, seen.v_l, seen.own_l
        # following a cyclist: from closer than BIKE_NEAR_M until it is the lead no more or twice as far
        near = BIKE_NEAR_M * (2.0 if self.behind_bike != 0.0 else 1.0)
        bike = int(own_l[0]) in self.cyclists and float(gap_l[0]) < near
        self.behind_bike = self.behind_bike + dt if bike else 0.0
        slow = (
            int(own_l[0]) >= 0
            and int(own_l[0]) not in self.cyclists
            and float(gap_l[0]) < SLOW_LEAD_GAP_M
            and 2.0 < float(v_l[0]) < SLOW_LEAD_RATIO * float(v0[0])
        )
        self.behind_slow = self.behind_slow + dt if slow else 0.0

    def _choose_accel(self, dt: float, seen: EgoSensed, v0: np.ndarray) -> tuple[float, float]:
        """The commanded acceleration: the most cautious IDM answer to every constraint of ``seen`` (leads at
        their anticipated speeds), and the gap to the waiting point behind a stopped vehicle (``INF`` if none)."""
        v, p = np.array([self.v]), self.params
        own_l, own_c = int(seen.own_l[0]), int(seen.own_c[0])
        v_la, v_ca = self._anticipate(dt, (own_l, float(seen.v_l[0])), (own_c, float(seen.v_c[0])))
        gap_s = seen.gap_s
        acc = min(
            float(idm_accel(v, v0, seen.gap_l, np.array([v_la]), p)[0]),
            float(idm_accel(v, v0, seen.gap_c, np.array([v_ca]), p)[0]),
            float(idm_accel(v, v0, np.where(gap_s < INF, gap_s + p.s0 - 1.0, INF), np.zeros(1), p)[0]),
        )
        if seen.gap_p[0] < INF:  # slow for where a pedestrian is heading, but never brake hard for a guess: a
            # crosser that a late slow-down would not keep clear of waits for the ego instead (it does not step out
            # in front)
            a_p = float(idm_accel(v, v0, seen.gap_p, np.zeros(1), p)[0])
            acc = min(acc, max(a_p, -PED_PREVIEW_BRAKE))
        gap_b = self._blocker_gap()
        if gap_b < INF:  # wait with room to pull out behind a stopped vehicle it cannot pass yet
            acc = min(acc, float(idm_accel(v, v0, np.array([max(gap_b, 0.05) + p.s0[0] - 1.0]), np.zeros(1), p)[0]))
        return acc, gap_b

    def _frame(self, seen: EgoSensed, v_before: float) -> EgoFrame:
        """What the ego reacted to at this step (``v_before``: its speed before the step)."""
        gap_l, gap_c = seen.gap_l, seen.gap_c
        _, fid = self._current()
        lead_from_path = gap_l[0] <= gap_c[0]
        return EgoFrame(
            lead_gap=float(min(gap_l[0], gap_c[0])),
            lead_v=float(seen.v_l[0] if lead_from_path else seen.v_c[0]),
            lead_owner=int(seen.own_l[0] if lead_from_path else seen.own_c[0]),
            light_stop=bool(seen.red[0]),
            stop_gap=float(seen.gap_s[0]),
            segment=fid,
            turn_type=self.town.paths[fid].turn_type,
            changing_lane=self.lc_active,
            corridor_owner=int(seen.own_c[0]) if gap_c[0] < INF else -1,
            v=v_before,
            a=self.a,
        )

    def step(
        self,
        dt: float,
        light: np.ndarray,
        blocked: bool,
        objs: Objects,
        boxes: np.ndarray,
        box_owner: np.ndarray,
        t_seg: np.ndarray,
        t_u: np.ndarray,
        t_v: np.ndarray,
        preview: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> EgoFrame:
        """Advance the ego by ``dt`` given the traffic at this step; returns what it reacted to.

        ``light``: ``(L,)`` status of the signalled connectors; ``blocked``: the ego must yield to a conflicting claim;
        ``objs``: path entries of the other vehicles; ``boxes`` ``(Q, 7)`` / ``box_owner`` ``(Q,)``: every object
        that may enter its corridor; ``t_seg`` / ``t_u`` / ``t_v`` ``(N,)``: segment, arc length and speed of the
        traffic (for lane-change gaps); ``preview``: boxes ``(Q, 7)`` and owners ``(Q,)`` of walking pedestrians
        :data:`PED_PREVIEW_S` ahead.
        """
        self._advance_route()
        self._try_lane_change(t_seg, t_u, t_v)
        seen = sense_ego(
            self.bank, self.s, self.v, self.conn_row, self.sneaking, self._probe_offsets(), light, blocked, objs,
            boxes, box_owner, preview,
        )  # fmt: skip
        v0 = free_speed(self.bank, np.array([self.s]), np.array([PACIFICA.front_length]), self.params)
        self._update_follow_timers(dt, seen, v0)
        acc, gap_b = self._choose_accel(dt, seen, v0)
        v_before = self.v
        self._integrate(acc, min(float(seen.gap_l[0]), float(seen.gap_c[0]), float(seen.gap_s[0]), gap_b), dt)
        return self._frame(seen, v_before)
