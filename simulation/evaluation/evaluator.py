"""The chunk evaluator that executors run: one row per token, whatever the unit of work does.

Executors ship chunks of :class:`~simulation.evaluation.refs.SceneRef` to workers; each worker holds one
:class:`SceneEvaluator`, built once by a picklable factory, that loads the scenes from its source and runs the
protocol's unit (:mod:`simulation.evaluation.units`) on each. Whatever a unit raises (``sys.exit`` included),
and any NaN it returns, turns into an invalid row carrying the error text; the run goes on.

An invalid row says whose failure it is in ``failure``: ``planner`` (the planner raised, exited or returned
an invalid plan: a result, scored as a failure) or ``data`` (the scene, its map or its metric cache could not
be read: not a result; the runner does not journal it, so a re-run after the data is fixed scores it).

A row is a plain JSON-able dict: ``token, log_name, scenario_type, valid, error, <metric columns>,
score, seconds`` (and ``failure`` on invalid rows) and, where available, ``plan`` (the 8 planned poses,
local frame) or ``ego_poses`` (the driven closed-loop rear-axle poses, global frame), ``states``,
``timestamp_us`` and one column per
candidate metric (e.g. ``diversity``).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulation.evaluation.protocols import BenchmarkProtocol
from simulation.evaluation.refs import SceneRef, SceneSource
from simulation.evaluation.units import DataError, NonFiniteResultError, Unit
from simulation.maps.errors import MapError
from simulation.metric_cache import MetricCacheError

logger = logging.getLogger(__name__)


class MissingMetricError(KeyError):
    """A scorer's result lacks a column the protocol reports."""


#: ``failure`` of a row that failed because of the planner (a result) or of data / configuration (not a result).
PLANNER_FAILURE = "planner"
DATA_FAILURE = "data"

#: Errors that are the data's or the configuration's wherever they are raised (unreadable files, maps, caches).
DATA_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    MapError,
    MetricCacheError,
    MissingMetricError,
    OSError,
    sqlite3.Error,
)

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


def invalid_row(protocol: BenchmarkProtocol | None, error: str, failure: str) -> dict[str, Any]:
    """The columns of an invalid row: ``valid=False``, the error text, whose ``failure`` it is, NaN metrics."""
    metrics = {} if protocol is None else _nan_metrics(protocol)
    return {"valid": False, "error": error, "failure": failure, **metrics}


def evaluate_ref(ref: SceneRef, source: SceneSource, unit: Unit, protocol: BenchmarkProtocol) -> dict[str, Any]:
    """One row for ``ref``: the unit's metrics, or an invalid row with the error text if anything fails."""
    start = time.perf_counter()
    row: dict[str, Any] = {"token": ref.token, "log_name": ref.log_name, "scenario_type": ref.scenario_type}
    try:
        try:
            window = source.load(ref)
        except Exception as err:  # noqa: BLE001 - a scene that cannot be read is the data's failure
            raise DataError(f"scene {ref.token} of {ref.group}: {type(err).__name__}: {err}") from err
        result = unit(window)
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
    except SystemExit as err:  # the planner called sys.exit: that scene fails, the run goes on
        logger.warning("token %s: planner called sys.exit(%s)", ref.token, err.code)
        row.update(invalid_row(protocol, f"SystemExit: planner called sys.exit({err.code!r})", PLANNER_FAILURE))
    except Exception as err:  # noqa: BLE001 - any failure of one scene is recorded, the run goes on
        failure = DATA_FAILURE if isinstance(err, DATA_ERRORS) else PLANNER_FAILURE
        logger.warning("token %s failed (%s): %s: %s", ref.token, failure, type(err).__name__, err)
        row.update(invalid_row(protocol, f"{type(err).__name__}: {err}", failure))
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
