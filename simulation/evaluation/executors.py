"""Executors: run chunks of scene refs on workers and yield each chunk's rows as soon as it is done.

Every executor takes a picklable *factory* (a zero-argument callable) and calls it once per worker to
build that worker's evaluator, so planners, maps and caches are loaded once per worker, not per chunk.

- :class:`SequentialExecutor`: in this process (debugging, tests, small runs).
- :class:`ProcessExecutor`: one machine, ``concurrent.futures.ProcessPoolExecutor``.
- :class:`RayExecutor`: a Ray instance (a local one started here, or a cluster by ``address``); one
  actor per worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from simulation.evaluation.refs import SceneRef

logger = logging.getLogger(__name__)

Chunk = Sequence[SceneRef]
Rows = list[dict[str, Any]]
ChunkFn = Callable[[Chunk], Rows]
Factory = Callable[[], ChunkFn]


class Executor(Protocol):
    """Runs chunks; yields the rows of each chunk in completion order."""

    def map_chunks(self, factory: Factory, chunks: Sequence[Chunk]) -> Iterator[Rows]:
        """Rows of every chunk, each chunk's list as soon as it completes."""
        ...


class SequentialExecutor:
    """Runs every chunk in this process, in order."""

    def map_chunks(self, factory: Factory, chunks: Sequence[Chunk]) -> Iterator[Rows]:
        if not chunks:
            return
        evaluate = factory()
        for chunk in chunks:
            yield evaluate(chunk)


_WORKER_EVALUATOR: ChunkFn | None = None


def _init_worker(factory: Factory) -> None:
    """Process-pool initializer: build this worker's evaluator once."""
    global _WORKER_EVALUATOR
    _WORKER_EVALUATOR = factory()


def _run_chunk(chunk: Chunk) -> Rows:
    if _WORKER_EVALUATOR is None:
        raise RuntimeError("process-pool worker was not initialised with an evaluator factory")
    return _WORKER_EVALUATOR(chunk)


class ProcessExecutor:
    """A local process pool.

    Args:
        num_workers: worker processes (default: the CPUs this process may use).
        start_method: ``spawn`` (safe with threads, torch, Ray), ``forkserver`` or ``fork``.
        max_pending: chunks in flight at once (default: 2 per worker), so results stream in order of work.
    """

    def __init__(self, num_workers: int | None = None, start_method: str = "spawn", max_pending: int | None = None):
        self.num_workers = int(num_workers or len(os.sched_getaffinity(0)))
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.start_method = start_method
        self.max_pending = int(max_pending or 2 * self.num_workers)

    def map_chunks(self, factory: Factory, chunks: Sequence[Chunk]) -> Iterator[Rows]:
        if not chunks:
            return
        context = multiprocessing.get_context(self.start_method)
        workers = min(self.num_workers, len(chunks))
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(factory,))
        todo = list(chunks)[::-1]
        pending: set[Future[Rows]] = set()
        try:
            while todo or pending:
                while todo and len(pending) < self.max_pending:
                    pending.add(pool.submit(_run_chunk, list(todo.pop())))
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class _ChunkActor:
    """A Ray actor holding one evaluator."""

    def __init__(self, factory: Factory) -> None:
        self._evaluate = factory()

    def run(self, chunk: Chunk) -> Rows:
        return self._evaluate(chunk)


class RayExecutor:
    """Ray actors, one per worker.

    Args:
        address: a Ray cluster address (``auto``, ``ray://host:10001``); ``None`` starts a local instance.
        num_cpus: CPUs of a local instance (ignored with ``address``).
        num_workers: actors (default: the cluster's CPUs).
        shutdown: disconnect / stop Ray when the run ends if this executor started it.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        num_workers: int | None = None,
        shutdown: bool = True,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.num_workers = num_workers
        self.shutdown = shutdown

    def map_chunks(self, factory: Factory, chunks: Sequence[Chunk]) -> Iterator[Rows]:
        if not chunks:
            return
        import ray  # heavy optional import, paid only by Ray runs
        from ray.util import ActorPool

        started = not ray.is_initialized()
        if started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address is None:
                kwargs["num_cpus"] = self.num_cpus
            ray.init(address=self.address, **kwargs)
        actors: list[Any] = []
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            workers = max(1, min(self.num_workers or cpus, len(chunks)))
            actor_cls = ray.remote(num_cpus=1)(_ChunkActor)
            actors = [actor_cls.remote(factory) for _ in range(workers)]
            pool = ActorPool(actors)
            yield from pool.map_unordered(lambda actor, chunk: actor.run.remote(list(chunk)), list(chunks))
        finally:
            for actor in actors:
                ray.kill(actor)
            if started and self.shutdown:
                ray.shutdown()


def make_chunks(refs: Sequence[SceneRef], chunk_size: int) -> list[list[SceneRef]]:
    """Split ``refs`` into chunks of at most ``chunk_size``, never mixing groups (a worker loads a group once)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    by_group: dict[str, list[SceneRef]] = {}
    for ref in refs:
        by_group.setdefault(ref.group, []).append(ref)
    return [refs_[i : i + chunk_size] for refs_ in by_group.values() for i in range(0, len(refs_), chunk_size)]
