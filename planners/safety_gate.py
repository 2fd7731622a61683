"""A rule-based safety gate on a generator + discriminator pair (``planner=reranked_gated``, :func:`gated_planner`).

At every replanning step each pickable candidate of the pair is scored by the NAVSIM scorer on the metric cache
PDM-Closed scores its own proposals on (:meth:`planners.pdm_closed.planner.PDMClosedPlanner.observation_metric_cache`:
the agents valid now forecast at constant velocity, the on-route connectors red now held red, the drivable map),
and the pair drives the discriminator's best among the candidates that pass every metric of ``require`` (by default
no at-fault collision and inside the drivable area within the 4 s: NC = DAC = 1). Where none passes, it drives the
discriminator's own pick. The gate sees only what the planner sees (the agents now, no logged future): it is the
deployable counterpart of ``benchmarks/closed_loop_oracle.py --pick safe``, which checks the same metrics on the log's
future, and the check PDM-Closed makes of its own proposals.

The generator, the discriminator and their candidates are those of ``planner=reranked`` (same noise, same seed), so
with a gate that passes everything the plan is the pair's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from planners.adapter import LearnedPlanner
from planners.reranked import reranked_planner
from simulation.features import batch, observation_features
from simulation.protocols import Observation
from simulation.types import Trajectory

#: The NAVSIM metrics a candidate must score 1 on to pass the gate by default.
GATE_METRICS = ("no_at_fault_collisions", "drivable_area_compliance")


@dataclass
class PairDecision:
    """One decision of a generator + discriminator pair: ``candidates`` ``(K, 8, 3)`` (ego frame), ``pickable``
    ``(K,)`` bool, the discriminator's ``scores`` ``(K,)`` and its own pick ``own``."""

    candidates: np.ndarray
    pickable: np.ndarray
    scores: np.ndarray
    own: int


def pair_decision(planner: LearnedPlanner, observation: Observation) -> PairDecision:
    """The candidates, scores and pick of ``planner`` (a :class:`LearnedPlanner` around a
    :class:`~planners.reranked.RerankedPlanner`) for ``observation``, with the noise that
    :meth:`LearnedPlanner.plan` draws."""
    pair = planner.model
    inputs = batch([observation_features(observation, planner.raster)])
    g = torch.Generator().manual_seed(planner.seed)
    with torch.no_grad():
        noise = torch.randn(pair.initial_noise_shape(1), generator=g)
        candidates, _ = pair.propose(inputs, noise)
        pickable = pair.pickable(candidates)
        out = pair.discriminator(inputs, candidates, pickable)
    return PairDecision(
        candidates=candidates[0].double().numpy(),
        pickable=pickable[0].numpy(),
        scores=out.scores[0].double().numpy(),
        own=int(out.best[0]),
    )


def score_pickable(scorer: Any, metric_cache: Any, decision: PairDecision) -> dict[str, np.ndarray]:
    """The NAVSIM sub-metrics and ``score`` ``(K,)`` of a decision's pickable candidates by ``scorer`` on
    ``metric_cache`` (``rewards.pdm.PDMScorer``); the unpickable ones get 0."""
    keep = decision.pickable
    metrics = {}
    for name, value in scorer.score(metric_cache, decision.candidates[keep]).items():
        full = np.zeros(len(keep))
        full[keep] = value
        metrics[name] = full
    return metrics


def gate_pick(decision: PairDecision, metrics: dict[str, np.ndarray], require: Sequence[str]) -> tuple[int, bool]:
    """The gated choice and whether it fell back to the discriminator's own pick (no pickable candidate passed).

    Args:
        metrics: the NAVSIM sub-metrics ``(K,)`` of every candidate (unpickable ones ignored).
        require: the metrics a candidate must score 1 on.
    """
    passed = decision.pickable.copy()
    for name in require:
        if name not in metrics:
            raise KeyError(f"safety gate: the scorer gives no {name!r} (it gives {sorted(metrics)})")
        passed &= np.asarray(metrics[name]) >= 1.0
    if not passed.any():
        return decision.own, True
    return int(np.argmax(np.where(passed, decision.scores, -np.inf))), False


@dataclass
class GateCounts:
    """Decisions made, those where the gate changed the discriminator's pick, and those where nothing passed."""

    decisions: int = 0
    changed: int = 0
    fell_back: int = 0


class SafetyGatedPlanner:
    """A generator + discriminator pair whose pick is restricted to the candidates passing a rule-based check (the
    module docstring). A ``simulation.protocols.Planner``.

    Args:
        planner: ``planners.reranked.reranked_planner(...)`` without a gate.
        version: the NAVSIM scorer (``v1`` or ``v2``); ``require`` may name any metric it gives (v2 adds TLC, LK,
            HC to v1's).
        require: the metrics a candidate must score 1 on (:data:`GATE_METRICS`).
    """

    def __init__(self, planner: LearnedPlanner, version: str = "v1", require: Sequence[str] = GATE_METRICS) -> None:
        from planners.pdm_closed.planner import PDMClosedPlanner
        from rewards.pdm import PDMScorer

        if version not in ("v1", "v2"):
            raise ValueError(f"safety gate: version must be v1 or v2, got {version!r}")
        if not require:
            raise ValueError("safety gate: require names no metric")
        self.planner, self.name, self.require = planner, planner.name, tuple(require)
        self.scorer = PDMScorer(version)  # type: ignore[arg-type]
        self.pdm = PDMClosedPlanner(version=version)
        self.counts = GateCounts()
        self.last_candidates: np.ndarray | None = None

    def plan(self, observation: Observation) -> Trajectory:
        """The gated candidate ``(8, 3)``; raises ``ValueError`` when it is not finite."""
        decision = pair_decision(self.planner, observation)
        metrics = score_pickable(self.scorer, self.pdm.observation_metric_cache(observation), decision)
        pick, fell_back = gate_pick(decision, metrics, self.require)
        self.counts.decisions += 1
        self.counts.changed += int(pick != decision.own)
        self.counts.fell_back += int(fell_back)
        poses = decision.candidates[pick]
        if not np.isfinite(poses).all():
            raise ValueError(f"{self.name}: the gated candidate is not finite")
        self.last_candidates = decision.candidates
        return Trajectory(poses)


def gated_planner(ckpt_path: str, gate_version: str = "v1", **pair_args: Any) -> SafetyGatedPlanner:
    """``planner=reranked_gated``: the pair of :func:`planners.reranked.reranked_planner` (``ckpt_path`` and
    ``pair_args`` as it takes them) behind the gate, scored by NAVSIM ``gate_version``'s scorer."""
    return SafetyGatedPlanner(reranked_planner(ckpt_path, **pair_args), version=gate_version)
