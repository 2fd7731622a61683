"""The per-scene units of work of the benchmark protocols: NAVSIM one-shot and closed loop.

A unit takes one scene (NAVSIM protocols) or scenario (closed-loop protocols) and returns a
:class:`UnitResult`; the planner, the scorer and any candidate metrics are objects it receives
(:mod:`simulation.protocols`), composed by the Hydra config. Rows, error capture and chunks are the
evaluator's (:mod:`simulation.evaluation.evaluator`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulation.maps.protocol import MapProtocol
from simulation.protocols import CandidateMetric, Observation, Planner, Scorer
from simulation.types import NUM_TRAJECTORY_POSES, TRAJECTORY_INTERVAL_S, LogWindow, Scene, Trajectory


class NonFiniteResultError(ValueError):
    """A planner returned NaN / inf poses, or a scorer NaN / inf values."""


class InvalidPlanError(ValueError):
    """A plan that the protocols do not score: not ``(8, 3)`` poses at 0.5 s, or NaN / inf poses."""


class NonFinitePlanError(InvalidPlanError, NonFiniteResultError):
    """A planner returned NaN / inf poses."""


class DataError(RuntimeError):
    """A scene failed because of its data or the configuration (map, metric cache), not because of the planner.

    Rows that fail this way are not final results (:mod:`simulation.evaluation.runner` does not journal them).
    """


@dataclass
class UnitResult:
    """What a unit returns for one scene.

    Attributes:
        metrics: sub-metric values and ``score`` (floats).
        plan: ``(8, 3)`` planned poses in the current rear-axle frame (NAVSIM protocols) or ``None``.
        ego_poses: ``(T, 3)`` driven global rear-axle poses (closed loop) or ``None``.
        states: ``(41, 11)`` simulated ego states of the plan (NAVSIM protocols that pair frames) or ``None``.
        timestamp_us: time of the scene's current frame (NAVSIM protocols) or ``None``.
        candidate_metrics: name -> value of each candidate metric (e.g. ``diversity``) of the planner's
            candidates for this scene; metrics without a value (planners with fewer than two) are left out.
    """

    metrics: dict[str, float]
    plan: np.ndarray | None = None
    ego_poses: np.ndarray | None = None
    states: np.ndarray | None = None
    timestamp_us: int | None = None
    candidate_metrics: dict[str, float] = field(default_factory=dict)


Unit = Callable[[LogWindow], UnitResult]


def observation_from_scene(scene: LogWindow, map_api: MapProtocol | None = None) -> Observation:
    """The planner's view of a scene at its current frame: history frames up to and including the current one
    (:meth:`simulation.protocols.Observation.from_window`)."""
    return Observation.from_window(scene, None, map_api)


def check_plan(trajectory: Trajectory | np.ndarray) -> np.ndarray:
    """``(8, 3)`` float64 poses of a planner's output (a leading batch axis of one is dropped).

    Raises :class:`InvalidPlanError` unless the plan is 8 poses at 0.5 s (a :class:`Trajectory` of another
    ``interval_s``, another number of poses, a non-numeric plan) and :class:`NonFinitePlanError` (an
    :class:`InvalidPlanError` and a :class:`NonFiniteResultError`) on NaN / inf poses.
    """
    if isinstance(trajectory, Trajectory):
        interval = float(trajectory.interval_s)
        if not np.isclose(interval, TRAJECTORY_INTERVAL_S):
            raise InvalidPlanError(f"planner returned poses at {interval} s, expected {TRAJECTORY_INTERVAL_S} s")
        trajectory = trajectory.poses
    try:
        poses = np.asarray(trajectory, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidPlanError(f"planner returned a plan that is not an array of poses: {err}") from None
    if poses.ndim == 3 and poses.shape[0] == 1:
        poses = poses[0]
    if poses.shape != (NUM_TRAJECTORY_POSES, 3):
        raise InvalidPlanError(f"planner returned poses of shape {poses.shape}, expected ({NUM_TRAJECTORY_POSES}, 3)")
    if not np.isfinite(poses).all():
        raise NonFinitePlanError("planner returned NaN or inf poses")
    return poses


def data_step(what: str, step: Callable[[], Any]) -> Any:
    """``step()``, with any failure re-raised as :class:`DataError` naming ``what`` (a map, a metric cache)."""
    try:
        return step()
    except Exception as err:  # noqa: BLE001 - re-raised with its cause
        raise DataError(f"{what}: {type(err).__name__}: {err}") from err


def candidate_metrics(planner: Planner, metrics: Mapping[str, CandidateMetric]) -> dict[str, float]:
    """``metrics`` of the candidates behind the planner's last plan (its ``last_candidates``, ``(K, 8, 2+)``).

    Empty when the planner keeps no candidates; a metric that returns ``None`` is left out.
    """
    candidates = getattr(planner, "last_candidates", None)
    if candidates is None or not metrics:
        return {}
    candidates = np.asarray(candidates, dtype=np.float64)
    values = {name: metric(candidates) for name, metric in metrics.items()}
    return {name: float(value) for name, value in values.items() if value is not None}


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
        candidate_metrics: column name -> metric of the planner's candidates (e.g.
            ``rewards.diversity.CandidateDiversity``), reported where the planner keeps candidates.
    """

    planner: Planner
    scorer: Scorer
    metric_cache: Callable[[Scene, Any], Any]
    maps: Callable[[str], Any] | None = None
    keep_states: bool = False
    candidate_metrics: Mapping[str, CandidateMetric] = field(default_factory=dict)

    def __call__(self, scene: LogWindow) -> UnitResult:
        maps = self.maps
        map_api = None if maps is None else data_step(f"map {scene.map_name}", lambda: maps(scene.map_name))
        cache = data_step("metric cache", lambda: self.metric_cache(scene, map_api))  # type: ignore[arg-type]
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
            candidate_metrics=candidate_metrics(self.planner, self.candidate_metrics),
        )


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
        maps = self.maps
        map_api = None if maps is None else data_step(f"map {scenario.map_name}", lambda: maps(scenario.map_name))
        rollout = self.simulate(scenario, CheckedPlanner(self.planner), map_api)
        check_rollout(rollout)
        metrics = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in self.score(scenario, rollout, map_api).items()}
        ego = getattr(rollout, "ego_states", None)
        ego_poses = None if ego is None else np.asarray(getattr(ego, "states", ego))[:, :3]
        return UnitResult(metrics, ego_poses=ego_poses)


@dataclass
class CheckedPlanner:
    """``planner`` whose every plan must pass :func:`check_plan` (else :class:`InvalidPlanError` is raised,
    which the closed-loop simulator records in its ``planner_errors``)."""

    planner: Planner
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or str(getattr(self.planner, "name", type(self.planner).__name__))

    def plan(self, observation: Observation) -> Trajectory:
        trajectory = self.planner.plan(observation)
        check_plan(trajectory)
        return trajectory


def check_rollout(rollout: Any) -> None:
    """Raise :class:`InvalidPlanError` if any planner call of a closed-loop rollout failed or returned an invalid
    plan (its ``planner_errors``; the simulator itself goes on with the last valid plan)."""
    errors = [(step, text) for step, text in enumerate(getattr(rollout, "planner_errors", ()) or ()) if text]
    if errors:
        step, text = errors[0]
        raise InvalidPlanError(f"{len(errors)} planner step(s) failed, first at step {step}: {text}")
