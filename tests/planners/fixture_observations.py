"""Observations on the fixture map (local origin) for the rule-based planner tests: eastbound lane 11 at y = -2,
red-light connector 111 (and its neighbour 112), the route below."""

from __future__ import annotations

import numpy as np

from simulation.maps.api import MapAPI
from simulation.protocols import Observation
from simulation.types import Agents, EgoStates, LogWindow, TrackedObjectType, TrafficLights, TrafficLightStatus

ROUTE = ("1", "101", "2", "103", "4")


def ego_state(x: float = -40.0, y: float = -2.0, heading: float = 0.0, speed: float = 8.0) -> np.ndarray:
    """An ``(11,)`` ego state at rest apart from its pose and speed."""
    state = np.zeros(11)
    state[:4] = x, y, heading, speed
    return state


def fixture_observation(
    api: MapAPI, state: np.ndarray, boxes: np.ndarray | None = None, red: bool = False, log: LogWindow | None = None
) -> Observation:
    """One frame: the ego at ``state``, vehicles ``boxes`` ``(N, 7)``, both fixture lights red or green."""
    boxes = np.zeros((0, 7)) if boxes is None else boxes
    n = len(boxes)
    status = TrafficLightStatus.RED if red else TrafficLightStatus.GREEN
    lights = TrafficLights(np.array(["111", "112"]), np.full((1, 2), status, dtype=np.int8))
    agents = Agents(
        boxes[None],
        np.full(n, int(TrackedObjectType.VEHICLE)),
        np.array([f"{i:016x}" for i in range(n)]),
        np.ones((1, n), bool),
    )
    return Observation(EgoStates(state[None], np.array([0])), agents, lights, ROUTE, "fixture-town", api, log=log)
