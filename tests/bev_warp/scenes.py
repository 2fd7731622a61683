"""Hand-built scenarios on the fixture map (eastbound lane 11/21/41 at local y = -2) for the BEV-Warp tests."""

from __future__ import annotations

import numpy as np

from simulation.maps.api import MapAPI
from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map
from simulation.types import AgentIndex, Agents, EgoStates, Scenario, StateIndex, TrackedObjectType, TrafficLights

OX, OY = FIXTURE_ORIGIN
_MAP: list[MapAPI] = []


def fixture_map() -> MapAPI:
    if not _MAP:
        _MAP.append(MapAPI.from_data(build_fixture_map()))
    return _MAP[0]


def eastbound(
    frames: int = 61,
    speed: float = 8.0,
    x0: float = -50.0,
    obstacle_x: float | None = None,
    token: str = "s0",
    dt: float = 0.1,
) -> Scenario:
    """Expert at ``speed`` m/s along local y = -2 from ``x0``; optionally a parked car in the lane at ``obstacle_x``.

    The parked car is not in the expert's way in the log only if the expert stops; here the expert drives
    through it (a log "ghost"), so a planner that follows the expert collides with it.
    """
    t = np.arange(frames) * dt
    ego = np.zeros((frames, 11))
    ego[:, StateIndex.X] = OX + x0 + speed * t
    ego[:, StateIndex.Y] = OY - 2.0
    ego[:, StateIndex.VX] = speed
    boxes = np.zeros((frames, 1, 7))
    boxes[:, 0, AgentIndex.X] = OX + (obstacle_x if obstacle_x is not None else 90.0)
    boxes[:, 0, AgentIndex.Y] = OY + (-2.0 if obstacle_x is not None else 30.0)
    boxes[:, 0, AgentIndex.LENGTH] = 4.5
    boxes[:, 0, AgentIndex.WIDTH] = 2.0
    ts = (np.arange(frames) * round(dt * 1e6)).astype(np.int64) + 1_000_000_000
    return Scenario(
        log_name="log",
        token=token,
        map_name="fixture-town",
        frame_tokens=np.array([f"{i:016x}" for i in range(frames)]),
        timestamps_us=ts,
        ego=EgoStates(ego, ts),
        agents=Agents(boxes, np.array([TrackedObjectType.VEHICLE]), np.array(["a" * 16]), np.ones((frames, 1), bool)),
        traffic_lights=TrafficLights.empty(frames),
        route_roadblock_ids=("1", "101", "2", "103", "4"),
        current_index=0,
    )
