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

from simulation.protocols import CandidateMetric, Observation, Planner, Scorer
from simulation.types import LogWindow, Scene, Trajectory


class NonFiniteResultError(ValueError):
    """A planner returned NaN / inf poses, or a scorer NaN / inf values."""


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


def observation_from_scene(scene: LogWindow, map_api: Any = None) -> Observation:
    """The planner's view of a scene at its current frame: history frames up to and including the current one
    (:meth:`simulation.protocols.Observation.from_window`)."""
    return Observation.from_window(scene, None, map_api)


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
        map_api = self.maps(scenario.map_name) if self.maps is not None else None
        rollout = self.simulate(scenario, self.planner, map_api)
        metrics = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in self.score(scenario, rollout, map_api).items()}
        ego = getattr(rollout, "ego_states", None)
        ego_poses = None if ego is None else np.asarray(getattr(ego, "states", ego))[:, :3]
        return UnitResult(metrics, ego_poses=ego_poses)
