"""nuPlan-style closed-loop simulation: functional ``reset`` / ``observe`` / ``step`` and a ``run`` loop.

One iteration (specs/nuplan.md §3), at the scenario's 10 Hz:

1. the planner sees an :class:`~simulation.protocols.Observation` with a 2 s history buffer
   (22 samples at 0.1 s: nuPlan's ``int((2 + dt) / dt) + 1``), pre-filled from the log;
2. its trajectory (8 poses in the current rear-axle frame) becomes a global reference;
3. the ego controller moves the ego to the next iteration (the two-stage controller: LQR tracker +
   kinematic bicycle; or perfect tracking; or log playback);
4. the agents move: log replay (CLS-NR) or IDM agents reacting to the ego's state at the iteration
   that just ended (CLS-R); traffic lights always come from the log.

The simulation ends at the scenario's last frame. As in nuPlan, the recorded history holds one sample
per planner call (iterations ``0 .. N-2``). A planner that raises is recorded in
``SimulationHistory.planner_errors`` and the ego keeps following the last valid plan (or stops in
place when there is none).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from simulation.agents import (
    IDMAgentsState,
    IDMParameters,
    build_idm_agents,
    idm_step,
    log_replay_agents,
    open_loop_obstacles,
    reactive_agent_boxes,
)
from simulation.ego_control import log_playback, perfect_tracking, plan_to_global, two_stage_tracking
from simulation.maps.protocol import MapProtocol
from simulation.protocols import Observation, Planner
from simulation.types import Agents, EgoStates, Scenario, TrafficLights, Trajectory

logger = logging.getLogger(__name__)

ControllerName = Literal["two_stage", "perfect", "log_playback"]


@dataclass(frozen=True)
class ClosedLoopConfig:
    """Simulation settings.

    Attributes:
        dt: simulation step (the scenario's frame interval; nuPlan: 0.1 s).
        replan_interval: the planner is called every this many iterations (1 = every step).
        reactive: IDM agents (CLS-R) instead of log replay (CLS-NR).
        controller: ego controller: ``two_stage`` (LQR tracker + kinematic bicycle, nuPlan's, the default),
            ``perfect`` tracking or ``log_playback``.
        history_s: length of the planner's history buffer.
        idm: IDM agent parameters (reactive mode).
    """

    dt: float = 0.1
    replan_interval: int = 1
    reactive: bool = False
    controller: ControllerName = "two_stage"
    history_s: float = 2.0
    idm: IDMParameters = field(default_factory=IDMParameters)

    @property
    def buffer_size(self) -> int:
        """nuPlan's history buffer length: ``int((history + dt) / dt) + 1`` (22 at 0.1 s)."""
        return int((self.history_s + self.dt) / self.dt + 1e-9) + 1


@dataclass(frozen=True)
class SimState:
    """Immutable simulation state after ``iteration`` steps.

    Attributes:
        scenario: the logged scenario being simulated.
        map_api: the scenario's map (``None`` allowed in non-reactive mode).
        iteration: number of steps taken; the current frame is ``scenario.current_index + iteration``.
        ego_states: ``(H + iteration + 1, 11)`` ego states, the log's pre-simulation history first.
        timestamps_us: ``(H + iteration + 1,)``.
        agent_boxes: ``(H + iteration + 1, N, 7)`` observed agents (one column per scenario track).
        agent_valid: ``(H + iteration + 1, N)`` bool.
        num_history: ``H``, the number of pre-simulation (log) samples at the front.
        idm: IDM agents (reactive mode) or ``None``.
        plans: per iteration, the global reference in use: times ``(P,)`` in s since the plan was made
            and poses ``(P, 3)``, with the iteration it was made at; ``None`` before the first plan.
        planner_errors: per planner call, ``None`` or the error text.
    """

    scenario: Scenario
    map_api: MapProtocol | None
    iteration: int
    ego_states: np.ndarray
    timestamps_us: np.ndarray
    agent_boxes: np.ndarray
    agent_valid: np.ndarray
    num_history: int
    idm: IDMAgentsState | None = None
    plans: tuple[tuple[int, np.ndarray, np.ndarray] | None, ...] = ()
    planner_errors: tuple[str | None, ...] = ()

    @property
    def frame(self) -> int:
        """Index of the current frame in ``scenario``."""
        return self.scenario.current_index + self.iteration

    @property
    def current_state(self) -> np.ndarray:
        """``(11,)`` current ego state."""
        return self.ego_states[-1]

    @property
    def done(self) -> bool:
        return self.frame >= self.scenario.num_frames - 1


@dataclass(frozen=True)
class SimulationHistory:
    """What a closed-loop run leaves behind (one sample per planner call, nuPlan's ``SimulationHistory``).

    Attributes:
        token: scenario token.
        timestamps_us: ``(T,)``.
        ego_states: ``(T, 11)`` simulated ego states.
        agent_boxes / agent_valid: ``(T, N, 7)`` / ``(T, N)`` observed agents.
        agent_types / track_ids: ``(N,)``.
        traffic_lights: log traffic-light status at the ``T`` samples.
        plans: ``T`` global reference poses ``(P, 3)`` (``None`` where no plan was available).
        plan_times_us: ``T`` absolute timestamps ``(P,)`` of those poses (``None`` likewise).
        planner_errors: ``T`` error texts (``None`` where the planner succeeded).
    """

    token: str
    timestamps_us: np.ndarray
    ego_states: np.ndarray
    agent_boxes: np.ndarray
    agent_valid: np.ndarray
    agent_types: np.ndarray
    track_ids: np.ndarray
    traffic_lights: TrafficLights
    plans: tuple[np.ndarray | None, ...]
    plan_times_us: tuple[np.ndarray | None, ...]
    planner_errors: tuple[str | None, ...]

    @property
    def num_samples(self) -> int:
        return int(self.timestamps_us.shape[0])


Controller = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]


class ClosedLoopSimulator:
    """Holds only the configuration; the state travels in :class:`SimState`.

    ``ClosedLoopSimulator(reactive=True)`` is short for ``ClosedLoopSimulator(ClosedLoopConfig(reactive=True))``.
    """

    def __init__(self, config: ClosedLoopConfig | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or ClosedLoopConfig(), **overrides)
        if self.config.replan_interval < 1:
            raise ValueError(f"ClosedLoopConfig.replan_interval must be >= 1, got {self.config.replan_interval}")

    # ---------------------------------------------------------------------------------------------

    def reset(self, scenario: Scenario, map_api: MapProtocol | None = None) -> SimState:
        """Initial state: the log's history (up to the buffer length) and the first iteration's frame."""
        if self.config.reactive and map_api is None:
            raise ValueError(f"scenario {scenario.token}: reactive simulation needs the map ({scenario.map_name})")
        ego, ts, boxes, valid = _prefill(scenario, self.config.buffer_size - 1)
        idm = None
        if self.config.reactive and map_api is not None:
            idm = build_idm_agents(scenario, map_api, scenario.current_ego, scenario.current_index, self.config.idm)
            boxes[-1], valid[-1] = reactive_agent_boxes(scenario, scenario.current_index, idm)
        return SimState(scenario, map_api, 0, ego, ts, boxes, valid, num_history=len(ts) - 1, idm=idm)

    def observe(self, state: SimState) -> Observation:
        """The planner's view: the last ``buffer_size`` samples (oldest first)."""
        n = self.config.buffer_size
        sc = state.scenario
        frames = np.clip(np.arange(state.frame - len(state.timestamps_us[-n:]) + 1, state.frame + 1), 0, None)
        return Observation.from_window(
            sc,
            frames,
            state.map_api,
            ego_history=EgoStates(state.ego_states[-n:], state.timestamps_us[-n:]),
            agents=Agents(state.agent_boxes[-n:], sc.agents.types, sc.agents.track_ids, state.agent_valid[-n:]),
        )

    def step(self, state: SimState, trajectory: Trajectory | None, error: str | None = None) -> SimState:
        """Advance one iteration following ``trajectory`` (current rear-axle frame); ``None`` keeps the last plan."""
        if state.done:
            raise ValueError(f"scenario {state.scenario.token}: simulation already ended at frame {state.frame}")
        plan = state.plans[-1] if state.plans else None
        if trajectory is not None:
            times, poses = plan_to_global(trajectory, state.current_state)
            plan = (state.iteration, times, poses)
        sc, dt = state.scenario, self.config.dt
        ego_next = self._control(state, plan)
        idm, (boxes, valid) = state.idm, log_replay_agents(sc, state.frame + 1)
        if idm is not None:
            red = set(sc.traffic_lights.red_ids(state.frame))
            others = open_loop_obstacles(sc, state.frame, idm)
            idm = idm_step(idm, state.current_state, others, red, dt, self.config.idm)
            boxes, valid = reactive_agent_boxes(sc, state.frame + 1, idm)
        return dataclasses.replace(
            state,
            iteration=state.iteration + 1,
            ego_states=np.concatenate([state.ego_states, ego_next[None]]),
            timestamps_us=np.append(state.timestamps_us, sc.timestamps_us[state.frame + 1]),
            agent_boxes=np.concatenate([state.agent_boxes, boxes[None]]),
            agent_valid=np.concatenate([state.agent_valid, valid[None]]),
            idm=idm,
            plans=(*state.plans, plan),
            planner_errors=(*state.planner_errors, error),
        )

    def _control(self, state: SimState, plan: tuple[int, np.ndarray, np.ndarray] | None) -> np.ndarray:
        sc, dt = state.scenario, self.config.dt
        if self.config.controller == "log_playback":
            return log_playback(sc, state.frame + 1)
        if plan is None:  # nothing to follow: stay in place
            return _stopped(state.current_state)
        made_at, times, poses = plan
        elapsed = (state.iteration - made_at) * dt
        if self.config.controller == "perfect":
            return perfect_tracking(state.current_state, times - elapsed, poses, dt)
        return two_stage_tracking(state.current_state, times - elapsed, poses, dt)

    # ---------------------------------------------------------------------------------------------

    def run(self, scenario: Scenario, planner: Planner, map_api: MapProtocol | None = None) -> SimulationHistory:
        """Simulate ``scenario`` to its end with ``planner`` in the loop."""
        state = self.reset(scenario, map_api)
        while not state.done:
            trajectory, error = None, None
            if state.iteration % self.config.replan_interval == 0:
                trajectory, error = call_planner(planner, self.observe(state))
            state = self.step(state, trajectory, error)
        return self.history(state)

    @staticmethod
    def history(state: SimState) -> SimulationHistory:
        """The recorded samples of ``state``: iterations ``0 .. iteration - 1`` (one per planner step)."""
        sl = slice(state.num_history, state.num_history + state.iteration)
        sc = state.scenario
        frames = sc.current_index + np.arange(state.iteration)
        return SimulationHistory(
            token=sc.token,
            timestamps_us=state.timestamps_us[sl],
            ego_states=state.ego_states[sl],
            agent_boxes=state.agent_boxes[sl],
            agent_valid=state.agent_valid[sl],
            agent_types=sc.agents.types,
            track_ids=sc.agents.track_ids,
            traffic_lights=TrafficLights(sc.traffic_lights.lane_connector_ids, sc.traffic_lights.status[frames]),
            plans=tuple(None if p is None else p[2] for p in state.plans),
            plan_times_us=tuple(
                None
                if p is None
                else state.timestamps_us[state.num_history + p[0]] + np.round(p[1] * 1e6).astype(np.int64)
                for p in state.plans
            ),
            planner_errors=state.planner_errors,
        )


def call_planner(planner: Planner, observation: Observation) -> tuple[Trajectory | None, str | None]:
    try:
        trajectory = planner.plan(observation)
        trajectory.validate()
        return trajectory, None
    except Exception as err:  # noqa: BLE001 - a failing planner is recorded, the simulation goes on
        logger.warning("planner %s failed at %s: %s", getattr(planner, "name", "?"), observation.timestamp_us, err)
        return None, f"{type(err).__name__}: {err}"


def _stopped(state: np.ndarray) -> np.ndarray:
    out = np.zeros_like(state)
    out[:3] = state[:3]
    return out


def _prefill(scenario: Scenario, max_history: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Log samples before and at the first iteration: ego ``(H+1, 11)``, timestamps, boxes, validity."""
    ci = scenario.current_index
    ego = [scenario.ego.states[: ci + 1]]
    ts = [scenario.timestamps_us[: ci + 1]]
    boxes = [scenario.agents.boxes[: ci + 1]]
    valid = [scenario.agents.valid[: ci + 1]]
    if scenario.history_ego is not None and scenario.history_agents is not None:
        ego.insert(0, scenario.history_ego.states)
        ts.insert(0, scenario.history_ego.timestamps_us)
        boxes.insert(0, scenario.history_agents.boxes)
        valid.insert(0, scenario.history_agents.valid)
    keep = max_history + 1
    return (
        np.concatenate(ego)[-keep:].copy(),
        np.concatenate(ts)[-keep:].copy(),
        np.concatenate(boxes)[-keep:].copy(),
        np.concatenate(valid)[-keep:].copy(),
    )
