"""Pedestrians of the synthetic city: crossers at crosswalks (and a few away from them) and walkers on walkways.

A crosser at a signalled crosswalk waits until the traffic entering the junction over its crosswalk has a
red light and no vehicle is on, or about to reach, its crossing line (a jaywalker only for the latter),
then walks across at its own pace; vehicles (turning ones included) yield to it once it is on the road.
Walkers walk straight between two points of a walkway centre line that see each other within the walkway, so
they never enter the road.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import LineString, Polygon

from simulation.datasets.synthetic.network import Town
from simulation.types import TrafficLightStatus

PED_SIZE = (0.6, 0.6)  # length, width
#: A vehicle slower than this (m/s) is yielding: a crosser on the road walks on past it unless it would touch it.
STOPPED_MPS = 0.3
#: A walking crosser does not step in front of a moving vehicle that would reach its next step within this many
#: seconds (at its current velocity).
STEP_OUT_S = 1.5
#: A crosser held this long (s) by a vehicle in its way turns back.
TURN_BACK_S = 4.0
#: How far (m) a walker's straight line may stray outside its walkway polygon (rounding at the polygon's edges).
WALKWAY_SLACK_M = 0.05


@dataclass
class Pedestrians:
    """State of all pedestrians (``P`` rows).

    Attributes:
        a, b: ``(P, 2)`` start / end of the line each walks along.
        speed: ``(P,)`` walking speed. start_t: ``(P,)`` time it appears. crosser: ``(P,)`` bool.
        progress: ``(P,)`` metres walked. state: ``(P,)`` 0 waiting, 1 walking, 2 arrived.
        linger: ``(P,)`` seconds it stays visible after arriving.
    """

    a: np.ndarray
    b: np.ndarray
    speed: np.ndarray
    start_t: np.ndarray
    crosser: np.ndarray
    progress: np.ndarray
    state: np.ndarray
    linger: np.ndarray
    arrive_t: np.ndarray
    light_col: np.ndarray  # (P,) traffic-light column that must be red before crossing, -1 for none
    held: np.ndarray  # (P,) seconds a walking crosser has been held by a vehicle in its way

    def __len__(self) -> int:
        return int(self.a.shape[0])

    _length: np.ndarray | None = None

    @property
    def length(self) -> np.ndarray:
        if self._length is None or len(self._length) != len(self):
            self._length = np.linalg.norm(self.b - self.a, axis=1)
        return self._length

    def visible(self, t: float) -> np.ndarray:
        return (t >= self.start_t) & ((self.state < 2) | (t < self.arrive_t + self.linger))

    def boxes(self, t: float) -> np.ndarray:
        """``(P, 7)`` boxes (centre, heading, global velocity, size) at time ``t``."""
        d = self.b - self.a
        u = d / np.maximum(self.length[:, None], 1e-9)
        pos = self.a + u * self.progress[:, None]
        moving = ((self.state == 1) & (self.held == 0.0))[:, None]  # one held by a vehicle stands still
        vel = np.where(moving, u * self.speed[:, None], 0.0)
        h = np.arctan2(d[:, 1], d[:, 0])
        size = np.broadcast_to(np.array(PED_SIZE), (len(self), 2))
        return np.concatenate([pos, h[:, None], vel, size], 1)

    def step(self, t: float, dt: float, vehicle_boxes: np.ndarray, light: np.ndarray) -> None:
        """Advance by ``dt``; waiting crossers start when their light column in ``light`` ``(L,)`` is red and
        their line is clear of ``vehicle_boxes`` ``(V, 7)``."""
        red = (self.light_col < 0) | (light[np.maximum(self.light_col, 0)] == TrafficLightStatus.RED)
        waiting = (self.state == 0) & (t >= self.start_t) & red
        if waiting.any():
            clear = _line_clear(self.a[waiting], self.b[waiting], vehicle_boxes)
            idx = np.flatnonzero(waiting)
            self.state[idx[clear]] = 1
        walking = self.state == 1
        if walking.any():
            idx = np.flatnonzero(walking)
            d = self.b[idx] - self.a[idx]
            u = d / np.maximum(self.length[idx, None], 1e-9)
            # a moving vehicle in its way: wait; a stopped one (yielding to it) only if the next step touches it
            moving = np.hypot(vehicle_boxes[:, 3], vehicle_boxes[:, 4]) > STOPPED_MPS
            ahead = self.a[idx] + u * (self.progress[idx, None] + 0.9)
            near = self.a[idx] + u * (self.progress[idx, None] + PED_SIZE[0] / 2 + 0.1)
            # a moving vehicle also counts where it will be over the next STEP_OUT_S (it does not step out in front)
            mv = vehicle_boxes[moving]
            swept = np.concatenate([mv] + [shifted_boxes(mv, f * STEP_OUT_S) for f in (0.5, 1.0)], 0)
            wait = _inside_boxes(ahead, swept, 0.4) | _inside_boxes(near, vehicle_boxes[~moving], 0.3)
            walking[idx[wait]] = False
            # held in its way for too long (a vehicle waits for it as it waits for the vehicle): turn back
            self.held[idx] = np.where(wait, self.held[idx] + dt, 0.0)
            back = idx[self.held[idx] > TURN_BACK_S]
            self.a[back], self.b[back] = self.b[back].copy(), self.a[back].copy()
            self.progress[back] = self.length[back] - self.progress[back]
            self.held[back] = 0.0
        self.progress[walking] += self.speed[walking] * dt
        done = (self.state == 1) & (self.progress >= self.length)
        self.progress[done] = self.length[done]
        self.state[done] = 2
        self.arrive_t[done] = t


def shifted_boxes(boxes: np.ndarray, dt: float) -> np.ndarray:
    """Boxes ``(V, 7)`` moved ``dt`` seconds ahead at their velocity."""
    out = boxes.copy()
    out[:, :2] += dt * boxes[:, 3:5]
    return out


def _inside_boxes(points: np.ndarray, boxes: np.ndarray, margin: float) -> np.ndarray:
    """``(P,)`` True where a point ``(P, 2)`` lies within ``margin`` of one of the boxes ``(V, 7)``."""
    if len(boxes) == 0 or len(points) == 0:
        return np.zeros(len(points), dtype=bool)
    d = points[:, None, :] - boxes[None, :, :2]
    c, s = np.cos(boxes[:, 2]), np.sin(boxes[:, 2])
    lon = np.abs(d[..., 0] * c + d[..., 1] * s)
    lat = np.abs(-d[..., 0] * s + d[..., 1] * c)
    return ((lon < boxes[:, 5] / 2 + margin) & (lat < boxes[:, 6] / 2 + margin)).any(1)


def _straight_reach(walkway: Polygon, line: np.ndarray, i: int, j: int) -> int:
    """The last centre-line point from ``j`` back towards ``i`` that a straight walk from ``line[i]`` reaches without
    leaving ``walkway`` (on a curved road, the chord between distant points cuts across the carriageway)."""
    inside = walkway.buffer(WALKWAY_SLACK_M)
    while j > i + 1 and not inside.contains(LineString([line[i], line[j]])):
        j -= 1
    return j


def _line_clear(a: np.ndarray, b: np.ndarray, boxes: np.ndarray, margin: float = 3.0) -> np.ndarray:
    """``(Q,)`` True where no vehicle (now or 2.5 s ahead at constant velocity) is within ``margin`` + its
    half length of the segment ``a``-``b``."""
    if len(boxes) == 0:
        return np.ones(len(a), dtype=bool)
    pts = np.concatenate([boxes[:, :2], boxes[:, :2] + 1.25 * boxes[:, 3:5], boxes[:, :2] + 2.5 * boxes[:, 3:5]], 0)
    reach = np.tile(boxes[:, 5] / 2 + margin, 3)
    ab = b - a
    t = ((pts[None, :, :] - a[:, None, :]) * ab[:, None, :]).sum(-1) / np.maximum((ab**2).sum(-1), 1e-9)[:, None]
    closest = a[:, None, :] + np.clip(t, 0, 1)[..., None] * ab[:, None, :]
    dist = np.linalg.norm(pts[None] - closest, axis=-1)
    return ~(dist < reach[None, :]).any(1)


@dataclass
class _Spawns:
    """Rows of :class:`Pedestrians` being spawned (one list per field)."""

    a: list[np.ndarray] = field(default_factory=list)
    b: list[np.ndarray] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    crosser: list[bool] = field(default_factory=list)
    linger: list[float] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)

    def add(
        self, a: np.ndarray, b: np.ndarray, speed: float, start: float, crosser: bool, linger: float, col: int
    ) -> None:
        self.a.append(a)
        self.b.append(b)
        self.speed.append(speed)
        self.start.append(start)
        self.crosser.append(crosser)
        self.linger.append(linger)
        self.cols.append(col)


def _spawn_crossers(
    out: _Spawns, town: Town, duration: float, density: float, rng: np.random.Generator, light_cols: dict[int, int]
) -> None:
    """Crossers at each crosswalk (Poisson, ``density`` per minute), along its middle line, from either side."""
    for fid in sorted(town.crosswalks):
        poly, _ = town.crosswalks[fid]
        ring = np.asarray(poly.exterior.coords)[:4]
        mid0, mid1 = (ring[0] + ring[3]) / 2, (ring[1] + ring[2]) / 2  # ends of the crossing line
        for _ in range(rng.poisson(density * duration / 60.0)):
            p, q = (mid0, mid1) if rng.random() < 0.5 else (mid1, mid0)
            out.add(
                p - 1.0 * (q - p) / np.linalg.norm(q - p),
                q + 1.0 * (q - p) / np.linalg.norm(q - p),
                rng.uniform(1.0, 1.6),
                rng.uniform(0, duration),
                True,
                rng.uniform(1.0, 4.0),
                light_cols.get(town.crosswalk_signal.get(fid, -1), -1),
            )


def _spawn_jaywalkers(out: _Spawns, town: Town, duration: float, density: float, rng: np.random.Generator) -> None:
    """A few jaywalkers across whole roads, from the middle half of a leftmost lane, away from crosswalks."""
    lanes = sorted(p.fid for p in town.lanes if p.index == 0)
    for _ in range(rng.poisson(density * len(lanes) * 0.03)):
        lane = town.paths[lanes[int(rng.integers(len(lanes)))]]
        k = int(rng.integers(len(lane.centre) // 4, max(3 * len(lane.centre) // 4, len(lane.centre) // 4 + 1)))
        n = lane.left[k] - lane.right[k]
        n /= np.linalg.norm(n)
        span = 2 * lane.width * len(town.blocks[lane.roadblock].paths) + 4.0
        p = lane.left[k] - n * (lane.width * len(town.blocks[lane.roadblock].paths) + 2.0)
        out.add(p, p + n * span, rng.uniform(1.2, 1.8), rng.uniform(0, duration), True, 1.0, -1)


def _spawn_walkers(out: _Spawns, town: Town, duration: float, density: float, rng: np.random.Generator) -> None:
    """Walkers along walkway centre lines, some already under way at t = 0 (negative start times)."""
    walks = sorted(town.walkways)
    for _ in range(rng.poisson(density * len(walks) * 0.5)):
        walkway = town.walkways[walks[int(rng.integers(len(walks)))]]
        ring = np.asarray(walkway.exterior.coords)
        half = (len(ring) - 1) // 2
        line = (ring[:half] + ring[half : 2 * half][::-1]) / 2
        i, j = sorted(rng.choice(len(line), 2, replace=False))
        j = _straight_reach(walkway, line, int(i), int(j))
        p, q = (line[i], line[j]) if rng.random() < 0.5 else (line[j], line[i])
        out.add(p, q, rng.uniform(0.9, 1.5), rng.uniform(-duration, duration * 0.8), False, duration, -1)


def spawn_pedestrians(
    town: Town, duration: float, density: float, rng: np.random.Generator, light_cols: dict[int, int]
) -> Pedestrians:
    """Crossers at crosswalks, a few jaywalkers across roads and walkers along walkways."""
    rows = _Spawns()
    _spawn_crossers(rows, town, duration, density, rng, light_cols)
    _spawn_jaywalkers(rows, town, duration, density, rng)
    _spawn_walkers(rows, town, duration, density, rng)
    n = len(rows.a)
    crosser = np.array(rows.crosser, dtype=bool)
    ped = Pedestrians(
        a=np.array(rows.a).reshape(n, 2),
        b=np.array(rows.b).reshape(n, 2),
        speed=np.array(rows.speed),
        start_t=np.array(rows.start),
        crosser=crosser,
        progress=np.zeros(n),
        state=np.where(crosser, 0, 1).astype(np.int64),
        linger=np.array(rows.linger),
        arrive_t=np.full(n, np.inf),
        light_col=np.array(rows.cols, dtype=np.int64),
        held=np.zeros(n),
    )
    early = ~ped.crosser & (ped.start_t < 0)  # walkers already under way at t = 0
    ped.progress[early] = np.minimum(-ped.start_t[early] * ped.speed[early], ped.length[early] - 0.1)
    ped.start_t[early] = 0.0
    return ped
