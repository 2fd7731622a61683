"""The small protocols that let ``simulation`` run planners and scorers it does not import.

``simulation`` sits at the bottom of the house: it must not import ``rewards`` or ``planners``.
The closed-loop runner, the metric-cache builder and the benchmark runner receive planners, scorers and
candidate metrics as objects that satisfy these protocols (composed by Hydra configs with ``_target_``).
:meth:`Observation.from_window` is the one way to build a planner's view of a logged window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from simulation.commands import window_command
from simulation.maps.protocol import MapProtocol
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
    map_api: MapProtocol | None = None
    driving_command: int = DrivingCommand.UNKNOWN
    goal: np.ndarray | None = None
    log: LogWindow | None = None
    log_index: int = 0

    @classmethod
    def from_window(
        cls,
        window: LogWindow,
        frames: slice | np.ndarray | None = None,
        map_api: MapProtocol | None = None,
        *,
        ego_history: EgoStates | None = None,
        agents: Agents | None = None,
    ) -> Observation:
        """The planner's view of ``window`` over ``frames`` (oldest first, the last one current).

        Args:
            window: the logged scene or scenario.
            frames: a slice or ``(H,)`` int indices of the window's frames; ``None``: the history up to and
                including the current frame (``slice(0, current_index + 1)``).
            map_api: the window's map (``None`` for map-free planners).
            ego_history: ``H`` ego states replacing the logged ones (a simulated ego).
            agents: agents over the ``H`` frames replacing the logged ones (simulated or reactive agents).

        Traffic lights are the logged ones at ``frames``; the route, map name and goal come from the window;
        ``log_index`` is the last of ``frames``. The driving command is the window's own (a NAVSIM scene) or, for a
        scenario, OpenScene's rule at the current (simulated) pose on the window's logged ego path
        (:func:`simulation.commands.window_command`).
        """
        if frames is None:
            frames = slice(0, window.current_index + 1)
        log_index = int(np.arange(window.num_frames)[frames][-1])
        if ego_history is None:
            ego_history = EgoStates(window.ego.states[frames], window.ego.timestamps_us[frames])
        if agents is None:
            logged = window.agents
            agents = Agents(logged.boxes[frames], logged.types, logged.track_ids, logged.valid[frames])
        lights = window.traffic_lights
        return cls(
            ego_history=ego_history,
            agents=agents,
            traffic_lights=TrafficLights(lights.lane_connector_ids, lights.status[frames]),
            route_roadblock_ids=tuple(window.route_roadblock_ids),
            map_name=window.map_name,
            map_api=map_api,
            driving_command=int(window_command(window, ego_history.states[-1, :3])),
            goal=getattr(window, "goal", None),
            log=window,
            log_index=log_index,
        )

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


@runtime_checkable
class CandidateMetric(Protocol):
    """A per-scene metric of a planner's candidate trajectories (e.g. mode diversity), one column of the results.

    Called with the candidates behind the planner's last plan, ``(K, 8, 2+)`` poses in the current rear-axle frame;
    returns the value, or ``None`` where the metric is undefined for them (e.g. fewer than two candidates).
    """

    def __call__(self, candidates: np.ndarray) -> float | None:
        """The metric of ``candidates`` ``(K, 8, 2+)``."""
        ...
