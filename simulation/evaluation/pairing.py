"""Two-frame metrics of a NAVSIM run: each row scored together with the same log's row 0.5 s earlier.

NAVSIM v2's extended comfort (EC) compares the simulated plan of a frame with the plan made at the previous
frame. In a one-stage run NAVSIM pairs consecutive original frames of one log whose time stamps differ by at
most 0.55 s (specs/navsim.md §2.1-2.2); a row without such a predecessor keeps EC unmeasured (NaN, weight 0).

This module finds the pairs among benchmark rows (each holding ``log_name``, ``timestamp_us`` and the plan's
simulated ``states``) and asks the scorer for the paired metrics, so it needs no import of ``rewards``: the
scorer provides ``two_frame_metrics(metrics, states, previous_states) -> {column: value}``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

#: Largest time between paired frames (NAVSIM one-stage: 0.55 s for 2 Hz frames).
MAX_PAIR_GAP_US = 550_000


class TwoFrameScorer(Protocol):
    """A scorer that rescores a row given the simulated states of its plan and of the previous frame's plan."""

    def two_frame_metrics(
        self, metrics: Mapping[str, float], states: np.ndarray, previous_states: np.ndarray
    ) -> dict[str, float]: ...


def _pairable(row: Mapping[str, Any]) -> bool:
    return bool(row.get("valid")) and row.get("states") is not None and row.get("timestamp_us") is not None


def predecessors(rows: Sequence[Mapping[str, Any]], max_gap_us: int = MAX_PAIR_GAP_US) -> dict[int, int]:
    """``{i: j}``: row ``j`` is the latest valid row of row ``i``'s log at most ``max_gap_us`` before it."""
    by_log: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if _pairable(row):
            by_log[str(row.get("log_name", ""))].append(i)
    pairs: dict[int, int] = {}
    for indices in by_log.values():
        indices.sort(key=lambda k: int(rows[k]["timestamp_us"]))
        for prev, cur in zip(indices, indices[1:]):
            gap = int(rows[cur]["timestamp_us"]) - int(rows[prev]["timestamp_us"])
            if 0 < gap <= max_gap_us:
                pairs[cur] = prev
    return pairs


def with_two_frame_metrics(rows: Sequence[Mapping[str, Any]], scorer: Any) -> list[dict[str, Any]]:
    """``rows`` with the paired metrics of :func:`predecessors` merged in (copies; unpaired rows unchanged).

    A scorer without ``two_frame_metrics`` leaves every row as it is.
    """
    out = [dict(row) for row in rows]
    pair = getattr(scorer, "two_frame_metrics", None)
    if pair is None:
        return out
    for cur, prev in predecessors(rows).items():
        states = np.asarray(rows[cur]["states"], dtype=np.float64)
        previous = np.asarray(rows[prev]["states"], dtype=np.float64)
        out[cur].update(pair(rows[cur], states, previous))
    return out
