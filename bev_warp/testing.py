"""Hand-built closed-loop scenarios on the fixture map (:mod:`simulation.maps.testing`) for benchmarks.

Eastbound traffic on roadblocks 1 -> 101 -> 2 -> 103 -> 4 (lanes at local y = -2 and y = -6). The expert
drives one lane at a constant speed; a lead vehicle in the same lane (some slower than the expert, so a
planner that ignores it runs into it when it stays: odd seeds), a parked van in the other lane and a
pedestrian on the walkway.
"""

from __future__ import annotations

import numpy as np

from simulation.maps.api import MapAPI
from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map
from simulation.types import AgentIndex, Agents, EgoStates, Scenario, StateIndex, TrackedObjectType, TrafficLights

_MAP: list[MapAPI] = []


def fixture_map_api() -> MapAPI:
    """The fixture map's API (built once per process)."""
    if not _MAP:
        _MAP.append(MapAPI.from_data(build_fixture_map()))
    return _MAP[0]


def _box(x: np.ndarray, y: float, vx: float, length: float, width: float) -> np.ndarray:
    out = np.zeros((len(x), 7))
    out[:, AgentIndex.X], out[:, AgentIndex.Y], out[:, AgentIndex.VX] = x, y, vx
    out[:, AgentIndex.LENGTH], out[:, AgentIndex.WIDTH] = length, width
    return out


def fixture_scenario(seed: int, frames: int = 61, dt: float = 0.1) -> Scenario:
    """A random eastbound scenario of ``frames`` log frames at ``dt`` (global coordinates of the fixture map)."""
    rng = np.random.default_rng(seed)
    ox, oy = FIXTURE_ORIGIN
    t = np.arange(frames) * dt
    lane_y = float(rng.choice([-2.0, -6.0]))
    other_y = -8.0 - lane_y
    speed = float(rng.uniform(5.0, 10.0))
    x0 = float(rng.uniform(-55.0, -40.0))
    ego = np.zeros((frames, 11))
    ego[:, StateIndex.X], ego[:, StateIndex.Y], ego[:, StateIndex.VX] = ox + x0 + speed * t, oy + lane_y, speed
    lead_speed = speed * float(rng.uniform(0.3, 1.2))
    lead_x = ox + x0 + float(rng.uniform(15.0, 35.0)) + lead_speed * t
    boxes = np.stack(
        [
            _box(lead_x, oy + lane_y, lead_speed, 4.8, 2.0),
            _box(np.full(frames, ox + x0 + float(rng.uniform(10.0, 60.0))), oy + other_y, 0.0, 6.0, 2.3),
            _box(np.full(frames, ox + float(rng.uniform(-30.0, 30.0))), oy + 2.0, 0.0, 0.6, 0.6),
        ],
        1,
    )
    # even seeds: a slower lead leaves the road sideways (vanishes) before the expert reaches it; odd seeds
    # keep it (the expert then drives through it, a log artefact), so planners that ignore it collide
    valid = np.ones((frames, 3), dtype=bool)
    if seed % 2 == 0:
        valid[:, 0] = lead_x - (ego[:, StateIndex.X] + 4.049 + 2.4 + 2.0) > 0
    types = np.array([TrackedObjectType.VEHICLE, TrackedObjectType.VEHICLE, TrackedObjectType.PEDESTRIAN])
    ts = (np.round(t * 1e6)).astype(np.int64) + 1_000_000_000
    return Scenario(
        log_name="fixture",
        token=f"{seed:016x}",
        map_name="fixture-town",
        frame_tokens=np.array([f"{seed:08x}{i:08x}" for i in range(frames)]),
        timestamps_us=ts,
        ego=EgoStates(ego, ts),
        agents=Agents(boxes, types.astype(np.int64), np.array([f"{seed:013x}{k:03x}" for k in range(3)]), valid),
        traffic_lights=TrafficLights.empty(frames),
        route_roadblock_ids=("1", "101", "2", "103", "4"),
        current_index=0,
    )
