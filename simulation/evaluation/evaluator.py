"""The chunk evaluator that executors run: one row per token, whatever the unit of work does.

Executors ship chunks of :class:`~simulation.evaluation.refs.SceneRef` to workers; each worker holds one
:class:`SceneEvaluator`, built once by a picklable factory, that loads the scenes from its source and runs the
protocol's unit (:mod:`simulation.evaluation.units`) on each. Whatever a unit raises, and any NaN it returns,
turns into an invalid row carrying the error text; the run goes on.

A row is a plain JSON-able dict: ``token, log_name, scenario_type, valid, error, <metric columns>,
score, seconds`` and, where available, ``plan`` (the 8 planned poses, local frame) or ``ego_poses``
(the driven closed-loop rear-axle poses, global frame), ``states``, ``timestamp_us`` and one column per
candidate metric (e.g. ``diversity``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulation.evaluation.protocols import BenchmarkProtocol
from simulation.evaluation.refs import SceneRef, SceneSource
from simulation.evaluation.units import NonFiniteResultError, Unit

logger = logging.getLogger(__name__)


class MissingMetricError(KeyError):
    """A scorer's result lacks a column the protocol reports."""


#: NAVSIM column -> the name ``rewards.pdm`` gives the same metric.
METRIC_ALIASES = {"two_frame_extended_comfort": "extended_comfort"}


def _nan_metrics(protocol: BenchmarkProtocol) -> dict[str, float]:
    return {c: math.nan for c in (*protocol.columns, "score")}


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
        row.update(result.candidate_metrics)
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
