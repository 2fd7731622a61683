"""The benchmark runner: journal-backed, resumable fan-out of scene refs over an executor.

``run_benchmark`` knows nothing of planners, scorers or data formats: it receives the refs, a picklable
factory that builds each worker's evaluator, and an executor. Rows are journaled as chunks finish;
tokens already in the journal (from an interrupted run with the same output folder) are skipped, so
the returned rows hold every token exactly once. Rows that failed because of data or configuration
(``failure == "data"``, :mod:`simulation.evaluation.evaluator`) are returned but not journaled: they are
not results, and the next run with the same output folder evaluates them again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simulation.evaluation.evaluator import DATA_FAILURE
from simulation.evaluation.executors import Executor, Factory, make_chunks
from simulation.evaluation.journal import Journal
from simulation.evaluation.refs import SceneRef

logger = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"


def unique_refs(refs: Sequence[SceneRef]) -> list[SceneRef]:
    """``refs`` without repeated tokens (the first one wins; repeats are logged)."""
    seen: dict[str, SceneRef] = {}
    for ref in refs:
        if ref.token in seen:
            logger.warning(
                "token %s listed twice (groups %s, %s); evaluated once", ref.token, seen[ref.token].group, ref.group
            )
            continue
        seen[ref.token] = ref
    return list(seen.values())


def run_benchmark(
    refs: Sequence[SceneRef],
    factory: Factory,
    executor: Executor,
    output_dir: str | Path,
    header: Mapping[str, Any],
    chunk_size: int = 4,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate every ref not yet journaled in ``output_dir``; return one row per ref, in ref order.

    Args:
        refs: the benchmark's tokens.
        factory: picklable zero-argument callable returning ``chunk -> rows`` (built once per worker).
        executor: sequential, process pool or Ray (:mod:`simulation.evaluation.executors`).
        output_dir: run folder; holds ``journal.jsonl``.
        header: identifies the run (protocol, planner, split ...); a resumed run must match it.
        chunk_size: refs per task (chunks never mix groups).
        progress: show a progress bar.
    """
    refs = unique_refs(refs)
    journal = Journal(Path(output_dir) / JOURNAL_NAME, header)
    done = journal.open()
    todo = [ref for ref in refs if ref.token not in done]
    if done:
        logger.info("resuming: %d of %d tokens already in the journal", len(refs) - len(todo), len(refs))
    chunks = make_chunks(todo, chunk_size)
    not_results: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(todo), disable=not progress, desc="bench", unit="scene") as bar:
        for rows in executor.map_chunks(factory, chunks):
            journal.append(row for row in rows if row.get("failure") != DATA_FAILURE)
            not_results.update((str(row["token"]), row) for row in rows if row.get("failure") == DATA_FAILURE)
            bar.update(len(rows))
    if not_results:
        logger.warning("%d tokens failed because of data or configuration; not journaled", len(not_results))
    rows_by_token = {**journal.rows, **not_results}
    missing = [ref.token for ref in refs if ref.token not in rows_by_token]
    if missing:
        raise RuntimeError(f"{len(missing)} tokens have no result after the run (first: {missing[:3]})")
    return [rows_by_token[ref.token] for ref in refs]
