"""The per-scene unit of work of a benchmark, and the chunk evaluator that executors run.

A benchmark is a list of :class:`SceneRef` (token, the group a worker loads at once, scenario type).
Executors ship chunks of refs to workers; each worker holds one :class:`SceneEvaluator`, built once by
a picklable factory, that loads the scenes from its :class:`SceneSource` and runs the protocol's unit
(:class:`NavsimUnit` or :class:`ClosedLoopUnit`) on each. Whatever a unit raises, and any NaN it
returns, turns into an invalid row carrying the error text; the run goes on.

A row is a plain JSON-able dict: ``token, log_name, scenario_type, valid, error, <metric columns>,
score, seconds`` and, where available, ``plan`` (the 8 planned poses, local frame) or ``ego_poses``
(the driven closed-loop rear-axle poses, global frame).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rewards.diversity import pairwise_diversity
from simulation.evaluation.protocols import BenchmarkProtocol
from simulation.protocols import Observation, Planner, Scorer
from simulation.types import Agents, DrivingCommand, EgoStates, LogWindow, Scene, TrafficLights, Trajectory

logger = logging.getLogger(__name__)


class NonFiniteResultError(ValueError):
    """A planner returned NaN / inf poses, or a scorer NaN / inf values."""


class MissingMetricError(KeyError):
    """A scorer's result lacks a column the protocol reports."""


@dataclass(frozen=True)
class SceneRef:
    """One token of a benchmark.

    Attributes:
        token: scene / scenario token (unique within a run).
        group: what a worker loads at once to get this token (a log file path, or any key of the source).
        log_name: the log the token comes from.
        scenario_type: nuPlan scenario type (``unknown`` when untagged).
    """

    token: str
    group: str
    log_name: str = ""
    scenario_type: str = "unknown"


class SceneSource(Protocol):
    """Where a worker gets scenes: ``refs()`` in the driver, ``load(ref)`` in the workers."""

    def refs(self) -> list[SceneRef]:
        """Every token of the benchmark, in a stable order."""
        ...

    def load(self, ref: SceneRef) -> LogWindow:
        """The scene or scenario of ``ref``."""
        ...


@dataclass
class InMemorySource:
    """A source over windows already in memory (small runs, tests); the group is the log name."""

    windows: Sequence[LogWindow]
    _by_token: dict[str, LogWindow] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_token = {w.token: w for w in self.windows}

    def refs(self) -> list[SceneRef]:
        return [
            SceneRef(w.token, w.log_name, w.log_name, str(getattr(w, "scenario_type", "unknown"))) for w in self.windows
        ]

    def load(self, ref: SceneRef) -> LogWindow:
        try:
            return self._by_token[ref.token]
        except KeyError:
            raise KeyError(f"token {ref.token} is not in this in-memory source") from None


@dataclass
class UnitResult:
    """What a unit returns for one scene.

    Attributes:
        metrics: sub-metric values and ``score`` (floats).
        plan: ``(8, 3)`` planned poses in the current rear-axle frame (NAVSIM protocols) or ``None``.
        ego_poses: ``(T, 3)`` driven global rear-axle poses (closed loop) or ``None``.
        states: ``(41, 11)`` simulated ego states of the plan (NAVSIM protocols that pair frames) or ``None``.
        timestamp_us: time of the scene's current frame (NAVSIM protocols) or ``None``.
        diversity: mode diversity of the planner's candidates for this scene
            (:func:`rewards.diversity.pairwise_diversity`), or ``None`` for planners with fewer than two.
    """

    metrics: dict[str, float]
    plan: np.ndarray | None = None
    ego_poses: np.ndarray | None = None
    states: np.ndarray | None = None
    timestamp_us: int | None = None
    diversity: float | None = None


Unit = Callable[[LogWindow], UnitResult]


def _history_slice(window: LogWindow) -> slice:
    return slice(0, window.current_index + 1)


def observation_from_scene(scene: LogWindow, map_api: Any = None) -> Observation:
    """The planner's view of a scene at its current frame: history frames up to and including the current one."""
    hist = _history_slice(scene)
    agents = scene.agents
    lights = scene.traffic_lights
    return Observation(
        ego_history=EgoStates(scene.ego.states[hist], scene.ego.timestamps_us[hist]),
        agents=Agents(agents.boxes[hist], agents.types, agents.track_ids, agents.valid[hist]),
        traffic_lights=TrafficLights(lights.lane_connector_ids, lights.status[hist]),
        route_roadblock_ids=tuple(scene.route_roadblock_ids),
        map_name=scene.map_name,
        map_api=map_api,
        driving_command=int(getattr(scene, "driving_command", DrivingCommand.UNKNOWN)),
        goal=getattr(scene, "goal", None),
        log=scene,
        log_index=scene.current_index,
    )


def check_plan(trajectory: Trajectory | np.ndarray) -> np.ndarray:
    """``(8, 3)`` float64 poses of a planner's output; raises :class:`NonFiniteResultError` on NaN / inf."""
    poses = np.asarray(trajectory.poses if isinstance(trajectory, Trajectory) else trajectory, dtype=np.float64)
    if poses.ndim == 3 and poses.shape[0] == 1:
        poses = poses[0]
    if poses.ndim != 2 or poses.shape[1] != 3:
        raise ValueError(f"planner returned poses of shape {poses.shape}, expected (8, 3)")
    if not np.isfinite(poses).all():
        raise NonFiniteResultError("planner returned NaN or inf poses")
    return poses


@dataclass
class NavsimUnit:
    """NAVSIM one-shot unit: metric cache -> plan once -> score the plan against the cache.

    Attributes:
        planner: the evaluated planner.
        scorer: scores ``(K, 8, 3)`` plans against a metric cache (e.g. ``rewards.pdm.PDMScorer``).
        metric_cache: ``(scene, map_api) -> metric cache`` (build or load).
        maps: ``map_name -> MapAPI`` or ``None`` for map-free fakes.
        keep_states: also return the simulated states of the plan (for two-frame metrics, NAVSIM v2's
            extended comfort); needs a scorer with ``simulate(cache, poses)`` and ``score_simulated(cache,
            states)``.
    """

    planner: Planner
    scorer: Scorer
    metric_cache: Callable[[Scene, Any], Any]
    maps: Callable[[str], Any] | None = None
    keep_states: bool = False

    def __call__(self, scene: LogWindow) -> UnitResult:
        map_api = self.maps(scene.map_name) if self.maps is not None else None
        cache = self.metric_cache(scene, map_api)  # type: ignore[arg-type]
        plan = check_plan(self.planner.plan(observation_from_scene(scene, map_api)))
        states = None
        if self.keep_states and hasattr(self.scorer, "simulate") and hasattr(self.scorer, "score_simulated"):
            states = np.asarray(self.scorer.simulate(cache, plan[None]), dtype=np.float64)
            scores = self.scorer.score_simulated(cache, states)
        else:
            scores = self.scorer.score(cache, plan[None])
        metrics = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in scores.items()}
        stamp = int(scene.timestamps_us[scene.current_index])
        return UnitResult(
            metrics,
            plan=plan,
            states=None if states is None else states[0],
            timestamp_us=stamp,
            diversity=candidate_diversity(self.planner),
        )


def candidate_diversity(planner: Planner) -> float | None:
    """Mode diversity of the candidates behind the planner's last plan (``last_candidates`` ``(K, 8, 2+)``)."""
    candidates = getattr(planner, "last_candidates", None)
    if candidates is None:
        return None
    candidates = np.asarray(candidates, dtype=np.float64)
    if candidates.ndim != 3 or candidates.shape[0] < 2:
        return None
    return float(pairwise_diversity(candidates[None, ..., :2])[0])


@dataclass
class ClosedLoopUnit:
    """Closed-loop unit: simulate the scenario with the planner in the loop, then score the rollout.

    Attributes:
        planner: the evaluated planner (called by the simulator every planning step).
        simulate: ``(scenario, planner, map_api) -> rollout``; the rollout exposes ``ego_states`` ``(T, 11)``.
        score: ``(scenario, rollout, map_api) -> dict of metric -> float`` (nuPlan closed-loop metrics
            and ``score``).
        maps: ``map_name -> MapAPI``.
    """

    planner: Planner
    simulate: Callable[[Any, Planner, Any], Any]
    score: Callable[[Any, Any, Any], Mapping[str, Any]]
    maps: Callable[[str], Any] | None = None

    def __call__(self, scenario: LogWindow) -> UnitResult:
        map_api = self.maps(scenario.map_name) if self.maps is not None else None
        rollout = self.simulate(scenario, self.planner, map_api)
        metrics = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in self.score(scenario, rollout, map_api).items()}
        ego = getattr(rollout, "ego_states", None)
        ego_poses = None if ego is None else np.asarray(getattr(ego, "states", ego))[:, :3]
        return UnitResult(metrics, ego_poses=ego_poses)


def _nan_metrics(protocol: BenchmarkProtocol) -> dict[str, float]:
    return {c: math.nan for c in (*protocol.columns, "score")}


#: NAVSIM column -> the name ``rewards.pdm`` gives the same metric.
METRIC_ALIASES = {"two_frame_extended_comfort": "extended_comfort"}


def _checked_metrics(protocol: BenchmarkProtocol, metrics: Mapping[str, float]) -> dict[str, float]:
    """The protocol's columns from ``metrics``; missing optional columns become NaN."""
    out: dict[str, float] = {}
    metrics = {**{c: metrics[a] for c, a in METRIC_ALIASES.items() if a in metrics}, **metrics}
    for col in (*protocol.columns, "score"):
        if col in metrics:
            out[col] = float(metrics[col])
        elif col in protocol.optional_columns:
            out[col] = math.nan
        else:
            raise MissingMetricError(f"scorer result has no {col!r} (has {sorted(metrics)})")
        if col not in protocol.optional_columns and not math.isfinite(out[col]):
            raise NonFiniteResultError(f"metric {col} is {out[col]}")
    return out


def evaluate_ref(ref: SceneRef, source: SceneSource, unit: Unit, protocol: BenchmarkProtocol) -> dict[str, Any]:
    """One row for ``ref``: the unit's metrics, or an invalid row with the error text if anything fails."""
    start = time.perf_counter()
    row: dict[str, Any] = {"token": ref.token, "log_name": ref.log_name, "scenario_type": ref.scenario_type}
    try:
        result = unit(source.load(ref))
        row.update(valid=True, error=None, **_checked_metrics(protocol, result.metrics))
        if result.plan is not None:
            row["plan"] = np.round(result.plan, 4).tolist()
        if result.ego_poses is not None:
            row["ego_poses"] = np.round(result.ego_poses, 3).tolist()
        if result.states is not None:
            row["states"] = np.round(result.states, 6).tolist()
        if result.timestamp_us is not None:
            row["timestamp_us"] = result.timestamp_us
        if result.diversity is not None:
            row["diversity"] = result.diversity
    except Exception as err:  # noqa: BLE001 - any failure of one scene is recorded, the run goes on
        logger.warning("token %s failed: %s: %s", ref.token, type(err).__name__, err)
        row.update(valid=False, error=f"{type(err).__name__}: {err}", **_nan_metrics(protocol))
    row["seconds"] = round(time.perf_counter() - start, 4)
    return row


@dataclass
class SceneEvaluator:
    """What a worker holds: a source, a unit and the protocol; called on chunks of refs."""

    source: SceneSource
    unit: Unit
    protocol: BenchmarkProtocol

    def __call__(self, refs: Sequence[SceneRef]) -> list[dict[str, Any]]:
        return [evaluate_ref(ref, self.source, self.unit, self.protocol) for ref in refs]


#: A picklable zero-argument callable that builds a worker's evaluator (called once per worker).
EvaluatorFactory = Callable[[], Callable[[Sequence[SceneRef]], list[dict[str, Any]]]]
