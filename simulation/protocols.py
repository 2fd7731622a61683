"""The small protocols that let ``simulation`` run planners and scorers it does not import.

``simulation`` sits at the bottom of the house: it must not import ``rewards`` or ``planners``.
The closed-loop runner, the metric-cache builder and the benchmark runner receive planners and
scorers as objects that satisfy these protocols (composed by Hydra configs with ``_target_``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from simulation.types import Agents, DrivingCommand, EgoStates, LogWindow, TrafficLights, Trajectory


@dataclass(frozen=True)
class Observation:
    """What a planner sees at one planning step (global frame, history oldest first, last = current).

    Attributes:
        ego_history: ``H`` rear-axle ego states; ``ego_history.states[-1]`` is the current state.
        agents: agents over the same ``H`` frames.
        traffic_lights: traffic-light status over the same ``H`` frames.
        route_roadblock_ids: mission route (roadblock and roadblock-connector ids).
        map_name: map location.
        map_api: the :class:`~simulation.maps.api.MapAPI` of ``map_name`` (``None`` for map-free planners).
        driving_command: :class:`~simulation.types.DrivingCommand`.
        goal: ``(3,)`` global goal pose or ``None``.
        log: the logged window this observation comes from (privileged access for the expert /
            log-replay planner and for PDM-Closed's map context); ``None`` when not available.
        log_index: index of the current frame in ``log``.
    """

    ego_history: EgoStates
    agents: Agents
    traffic_lights: TrafficLights
    route_roadblock_ids: tuple[str, ...]
    map_name: str
    map_api: Any = None
    driving_command: int = DrivingCommand.UNKNOWN
    goal: np.ndarray | None = None
    log: LogWindow | None = None
    log_index: int = 0

    @property
    def current_state(self) -> np.ndarray:
        """``(11,)`` current ego state."""
        return self.ego_history.states[-1]

    @property
    def timestamp_us(self) -> int:
        return int(self.ego_history.timestamps_us[-1])


@runtime_checkable
class Planner(Protocol):
    """A planner: one observation in, a trajectory in the current rear-axle frame out."""

    name: str

    def plan(self, observation: Observation) -> Trajectory:
        """Plan from ``observation``; raise on failure (the runner records it)."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Scores candidate trajectories of one scene against its metric cache.

    ``score`` returns per-candidate sub-metrics, each ``(K,)``, plus the aggregate under ``"score"``.
    """

    def score(self, metric_cache: Any, trajectories: np.ndarray) -> dict[str, np.ndarray]:
        """``trajectories``: ``(K, 8, 3)`` poses in the current rear-axle frame of the cached scene."""
        ...
