"""The sequential executor: chunks in order in one supervised child process that a dying planner costs one scene."""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from test_bench_reliability_runs import crash_evaluator
from test_benchmarks import HEADER, toy_scenes

from simulation.evaluation.executors import WORKER_DIED, SequentialExecutor, make_chunks
from simulation.evaluation.journal import Journal
from simulation.evaluation.refs import InMemorySource, SceneRef
from simulation.evaluation.runner import JOURNAL_NAME, run_benchmark
from simulation.evaluation.sources import BenchConfigError


def _refs() -> list[SceneRef]:
    return InMemorySource(toy_scenes()).refs()


def _without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def pid_evaluator() -> Any:
    """Rows naming the process that evaluated each ref (module level: picklable)."""

    def evaluate(refs: Sequence[SceneRef]) -> list[dict[str, Any]]:
        return [{"token": ref.token, "pid": os.getpid()} for ref in refs]

    return evaluate


def broken_evaluator() -> Any:
    raise ValueError("no such planner checkpoint")


@pytest.mark.parametrize("how", ["os_exit", "segfault"])
def test_a_dying_planner_costs_its_scene_sequentially(tmp_path: Path, how: str) -> None:
    bad = functools.partial(crash_evaluator, how, ("tok04",))
    rows = run_benchmark(_refs(), bad, SequentialExecutor(), tmp_path / "bad", HEADER, chunk_size=3)
    good = run_benchmark(_refs(), crash_evaluator, SequentialExecutor(), tmp_path / "good", HEADER, chunk_size=3)
    assert [r["token"] for r in rows] == [f"tok{i:02d}" for i in range(10)]
    dead = rows[4]
    assert dead["token"] == "tok04" and dead["log_name"] == good[4]["log_name"]
    assert not dead["valid"] and dead["failure"] == "planner" and dead["error"] == WORKER_DIED
    assert _without_timing(rows[:4] + rows[5:]) == _without_timing(good[:4] + good[5:])
    assert all(r["valid"] for r in good)
    assert len(Journal(tmp_path / "bad" / JOURNAL_NAME, HEADER).open()) == 10


def test_a_run_with_a_dying_planner_resumes(tmp_path: Path) -> None:
    bad = functools.partial(crash_evaluator, "os_exit", ("tok04",))
    first = run_benchmark(_refs()[:6], bad, SequentialExecutor(), tmp_path, HEADER, chunk_size=3)
    assert first[4]["error"] == WORKER_DIED
    calls: list[str] = []

    class CountingExecutor(SequentialExecutor):
        def map_chunks(self, factory, chunks):  # type: ignore[no-untyped-def]
            calls.extend(ref.token for chunk in chunks for ref in chunk)
            yield from super().map_chunks(factory, chunks)

    rows = run_benchmark(_refs(), bad, CountingExecutor(), tmp_path, HEADER, chunk_size=3)
    assert sorted(calls) == [f"tok{i:02d}" for i in range(6, 10)]  # the dead scene is a result: not evaluated again
    assert rows[4]["error"] == WORKER_DIED and all(r["valid"] for i, r in enumerate(rows) if i != 4)


def test_chunks_run_in_order_in_one_child_or_in_this_process() -> None:
    chunks = make_chunks(_refs(), 3)
    isolated = [row for rows in SequentialExecutor().map_chunks(pid_evaluator, chunks) for row in rows]
    in_order = [ref.token for chunk in chunks for ref in chunk]
    assert [r["token"] for r in isolated] == in_order
    assert len({r["pid"] for r in isolated}) == 1 and isolated[0]["pid"] != os.getpid()
    inline = [row for rows in SequentialExecutor(isolate=False).map_chunks(pid_evaluator, chunks) for row in rows]
    assert [r["token"] for r in inline] == in_order
    assert {r["pid"] for r in inline} == {os.getpid()}


@pytest.mark.parametrize("isolate", [True, False])
def test_an_evaluator_that_cannot_be_built_fails_the_run(isolate: bool) -> None:
    with pytest.raises(ValueError, match="no such planner checkpoint"):
        list(SequentialExecutor(isolate=isolate).map_chunks(broken_evaluator, make_chunks(_refs(), 3)))


def test_an_unknown_start_method_is_refused() -> None:
    with pytest.raises(BenchConfigError, match="start_method"):
        SequentialExecutor(start_method="teleport")


def test_the_child_is_forked_only_from_a_single_threaded_process_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork while another thread holds a lock (after training in the same process) can hang the child, and a
    forked child cannot use CUDA: then the child comes from the fork server (or is spawned)."""
    from types import SimpleNamespace

    from simulation.evaluation import executors

    methods = multiprocessing.get_all_start_methods()
    clean = "forkserver" if "forkserver" in methods else "spawn"
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setattr(executors, "_single_threaded", lambda: True)
    assert executors._default_start_method() == clean
    fake_torch.cuda.is_initialized = lambda: False
    assert executors._default_start_method() == ("fork" if "fork" in methods else clean)
    monkeypatch.setattr(executors, "_single_threaded", lambda: False)
    assert executors._default_start_method() == clean
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        monkeypatch.undo()
        assert not executors._single_threaded()
    finally:
        stop.set()
        worker.join()


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_child_started_cleanly_evaluates_in_order(method: str) -> None:
    chunks = make_chunks(_refs(), 5)
    rows = [row for rows in SequentialExecutor(start_method=method).map_chunks(pid_evaluator, chunks) for row in rows]
    assert [r["token"] for r in rows] == [ref.token for chunk in chunks for ref in chunk]
    assert len({r["pid"] for r in rows}) == 1 and rows[0]["pid"] != os.getpid()
