"""Executors: run chunks of scene refs on workers and yield each chunk's rows as soon as it is done.

Every executor takes a picklable *factory* (a zero-argument callable) and calls it once per worker to
build that worker's evaluator, so planners, maps and caches are loaded once per worker, not per chunk.

- :class:`SequentialExecutor`: one chunk after another, in order, in one supervised child process (no pool);
  a planner that kills it (``os._exit``, a segfault, a signal) costs its scene only: the child is replaced and
  the scene gets an invalid row, as with the process pool. ``isolate=False`` runs in this process instead (for
  ``pdb``); there ``sys.exit`` still costs its scene only, but ``os._exit`` or a segfault ends the run.
- :class:`ProcessExecutor`: one machine, ``concurrent.futures.ProcessPoolExecutor``; survives dead
  workers (the scene that killed one gets an invalid row) and its workers exit with the driver.
- :class:`RayExecutor`: a Ray instance (a local one started here, or a cluster by ``address``); one
  actor per worker.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from typing import Any, Protocol

from simulation.evaluation.evaluator import PLANNER_FAILURE, invalid_row
from simulation.evaluation.refs import SceneRef
from simulation.evaluation.sources import BenchConfigError

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


_WORKER_EVALUATOR: ChunkFn | None = None
_WORKER_INIT_ERROR: Exception | None = None

#: Seconds between a pool worker's checks that the process that started it still runs.
PARENT_POLL_S = 0.5

#: Error text of the row of a scene whose worker process died while evaluating it.
WORKER_DIED = (
    "WorkerDiedError: the worker process died while evaluating this scene "
    "(the planner called os._exit, was killed by a signal or crashed)"
)


def _watch_parent(parent_pid: int) -> None:
    """Exit this worker (``os._exit``) as soon as the process that started it is gone (e.g. ``kill -9``)."""
    from simulation.evaluation.lock import pid_alive

    first_ppid = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != first_ppid or not pid_alive(parent_pid):
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _init_worker(factory: Factory, parent_pid: int | None = None) -> None:
    """Process-pool initializer: watch the parent, build this worker's evaluator once.

    An evaluator that cannot be built is remembered and raised by the first chunk, so the driver sees the
    error itself rather than a broken pool.
    """
    global _WORKER_EVALUATOR, _WORKER_INIT_ERROR
    if parent_pid is not None:
        _watch_parent(parent_pid)
    try:
        _WORKER_EVALUATOR = factory()
    except Exception as err:  # noqa: BLE001 - raised again by _run_chunk, in the driver
        _WORKER_INIT_ERROR = err


def _run_chunk(chunk: Chunk) -> Rows:
    if _WORKER_INIT_ERROR is not None:
        raise _WORKER_INIT_ERROR
    if _WORKER_EVALUATOR is None:
        raise RuntimeError("process-pool worker was not initialised with an evaluator factory")
    return _WORKER_EVALUATOR(chunk)


def worker_died_row(ref: SceneRef) -> dict[str, Any]:
    """The invalid row of ``ref`` when its worker process died evaluating it (a planner failure)."""
    row: dict[str, Any] = {"token": ref.token, "log_name": ref.log_name, "scenario_type": ref.scenario_type}
    row.update(invalid_row(None, WORKER_DIED, PLANNER_FAILURE), seconds=math.nan)
    return row


class ProcessExecutor:
    """A local process pool that survives its workers dying.

    When a worker dies (a planner calling ``os._exit``, a segfault, a signal), the pool is replaced and the
    scenes of every chunk lost with it are evaluated again one at a time; a scene whose worker dies alone is
    the culprit and gets an invalid row (:data:`WORKER_DIED`). Workers exit by themselves when this process
    disappears (``kill -9``), so no worker outlives the run.

    Args:
        num_workers: worker processes (default: the CPUs this process may use).
        start_method: ``spawn`` (safe with threads, torch, Ray), ``forkserver`` or ``fork``.
        max_pending: chunks in flight at once (default: 2 per worker), so results stream in order of work.
    """

    def __init__(self, num_workers: int | None = None, start_method: str = "spawn", max_pending: int | None = None):
        if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) != num_workers):
            raise BenchConfigError(f"worker.num_workers={num_workers} must be a positive integer (or null)")
        if num_workers is not None and num_workers < 1:
            raise BenchConfigError(f"worker.num_workers={num_workers} must be >= 1 (or null: one per CPU)")
        self.num_workers = int(num_workers) if num_workers is not None else len(os.sched_getaffinity(0))
        self.start_method = start_method
        self.max_pending = int(max_pending or 2 * self.num_workers)

    def _pool(self, factory: Factory, workers: int) -> ProcessPoolExecutor:
        context = multiprocessing.get_context(self.start_method)
        initargs = (factory, os.getpid())
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs)

    def map_chunks(self, factory: Factory, chunks: Sequence[Chunk]) -> Iterator[Rows]:
        if not chunks:
            return
        workers = min(self.num_workers, len(chunks))
        todo = [list(chunk) for chunk in chunks][::-1]
        alone: list[SceneRef] = []  # scenes of chunks lost with a dead worker, evaluated one at a time
        pending: dict[Future[Rows], list[SceneRef]] = {}
        pool: ProcessPoolExecutor | None = None
        try:
            while todo or alone or pending:
                pool = pool or self._pool(factory, workers)
                if alone:
                    rows, broken = _run_alone(pool, alone.pop())
                else:
                    rows, lost, broken = _run_batch(pool, todo, pending, self.max_pending)
                    alone += [ref for chunk in lost for ref in chunk][::-1]
                if broken:
                    logger.warning("a worker process died; pool replaced")
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = None
                yield from rows
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _run_alone(pool: ProcessPoolExecutor, ref: SceneRef) -> tuple[list[Rows], bool]:
    """``ref`` alone on ``pool``: its rows, or its worker-died row if the pool broke meanwhile."""
    try:
        return [pool.submit(_run_chunk, [ref]).result()], False
    except BrokenProcessPool:
        logger.warning("token %s: %s", ref.token, WORKER_DIED)
        return [[worker_died_row(ref)]], True


def _run_batch(
    pool: ProcessPoolExecutor,
    todo: list[list[SceneRef]],
    pending: dict[Future[Rows], list[SceneRef]],
    max_pending: int,
) -> tuple[list[Rows], list[list[SceneRef]], bool]:
    """Keep up to ``max_pending`` chunks of ``todo`` (popped from its end) in flight (``pending``) until one
    finishes; returns the finished chunks' rows and the chunks lost with a dead worker (then ``broken``:
    every chunk that was in flight is finished or lost, ``pending`` is empty)."""
    broken = False
    while todo and len(pending) < max_pending and not broken:
        chunk = todo.pop()
        try:
            pending[pool.submit(_run_chunk, chunk)] = chunk
        except BrokenProcessPool:
            todo.append(chunk)
            broken = True
    done, _ = wait(pending, return_when=FIRST_COMPLETED) if pending else (set(), set())
    rows: list[Rows] = []
    lost: list[list[SceneRef]] = []
    for future in done:
        chunk = pending.pop(future)
        try:
            rows.append(future.result())
        except BrokenProcessPool:
            lost.append(chunk)
    if lost or broken:  # the pool is gone: collect what finished, the rest is lost
        for future, chunk in list(pending.items()):
            try:
                rows.append(future.result())
            except BrokenProcessPool:
                lost.append(chunk)
        pending.clear()
        broken = True
    return rows, lost, broken


def _cuda_initialized() -> bool:
    """Whether this process has initialised CUDA through torch (checked without importing torch)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def _default_start_method() -> str:
    """``fork`` when it is safe: the platform has it, this process runs one thread and has not initialised CUDA
    (a child forked while another thread holds a lock, e.g. after training in the same process, can wait on that
    lock for ever); else ``forkserver`` (children forked from a clean single-threaded server) where available, else
    ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and not _cuda_initialized() and _single_threaded():
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _single_threaded() -> bool:
    """This process runs one OS thread (Python's and native ones such as torch's thread pools alike)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1 and "torch" not in sys.modules


def _portable_error(err: Exception) -> Exception:
    """``err`` if it pickles, else a ``RuntimeError`` with its type and text (sent from the child to the driver)."""
    try:
        pickle.dumps(err)
    except Exception:  # noqa: BLE001 - any pickling failure: send the text instead
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def _serve_chunks(factory: Factory, conn: Connection, parent_pid: int) -> None:
    """The sequential executor's child: build the evaluator, then answer each chunk received on ``conn`` with
    ``("rows", rows)`` or ``("error", exception)`` until ``None`` or the end of the pipe. Ctrl-C is the driver's
    to handle (it stops this child)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent(parent_pid)
    evaluate: ChunkFn | None = None
    init_error: Exception | None = None
    try:
        evaluate = factory()
    except Exception as err:  # noqa: BLE001 - raised again in the driver by the first chunk
        init_error = err
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        try:
            if evaluate is None:
                raise init_error or RuntimeError("the sequential worker has no evaluator")
            reply: tuple[str, Any] = ("rows", evaluate(chunk))
        except Exception as err:  # noqa: BLE001 - raised again in the driver, as in-process evaluation would
            reply = ("error", _portable_error(err))
        conn.send(reply)


class _SupervisedChild:
    """One child process serving chunks over a pipe (:func:`_serve_chunks`)."""

    def __init__(self, factory: Factory, context: Any) -> None:
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_serve_chunks, args=(factory, child_conn, os.getpid()), name="bench-sequential", daemon=True
        )
        self.process.start()
        child_conn.close()  # the child holds the other end: its death ends the pipe

    def run(self, chunk: Chunk) -> Rows | None:
        """Rows of ``chunk``; ``None`` if the child died before answering. Raises what the evaluator raised."""
        try:
            self.conn.send(list(chunk))
        except OSError:
            return None
        ready = connection_wait([self.conn, self.process.sentinel])
        if self.conn not in ready:
            return None
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            return None
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """Ask the child to stop; kill it if it does not within a few seconds."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=CHILD_STOP_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


#: Seconds a sequential child is given to stop when asked before it is killed.
CHILD_STOP_S = 5.0


class SequentialExecutor:
    """Runs every chunk in order, one at a time, in one supervised child process (or in this process).

    The child builds the evaluator once and evaluates the chunks in order, so rows come in the order of the work
    and no pool is involved. When it dies (a planner calling ``os._exit``, a segfault, a signal) it is replaced,
    and the scenes of the chunk it was evaluating are evaluated again one at a time: a scene whose child dies
    alone gets an invalid row (:data:`WORKER_DIED`) and the run goes on. The child exits by itself when this
    process disappears.

    Args:
        isolate: ``False`` evaluates in this process (debugging with ``pdb``; a planner that ends the process
            ends the run).
        start_method: ``fork``, ``spawn`` or ``forkserver``; ``None``: ``fork`` where it is safe (the child shares
            what this process loaded; see ``_default_start_method``), else ``forkserver`` or ``spawn``.
    """

    def __init__(self, isolate: bool = True, start_method: str | None = None) -> None:
        methods = multiprocessing.get_all_start_methods()
        if start_method is not None and start_method not in methods:
            raise BenchConfigError(f"worker.start_method={start_method} is not one of {methods} here")
        self.isolate = bool(isolate)
        self.start_method = start_method

    def map_chunks(self, factory: Factory, chunks: Sequence[Chunk]) -> Iterator[Rows]:
        if not chunks:
            return
        if not self.isolate:
            evaluate = factory()
            for chunk in chunks:
                yield evaluate(chunk)
            return
        context = multiprocessing.get_context(self.start_method or _default_start_method())
        child: _SupervisedChild | None = None
        try:
            for chunk in chunks:
                child = child or _SupervisedChild(factory, context)
                rows = child.run(chunk)
                if rows is None:
                    logger.warning("the sequential worker process died; replaced, its chunk evaluated scene by scene")
                    child.close()
                    rows, child = _run_one_by_one(chunk, factory, context)
                yield rows
        finally:
            if child is not None:
                child.close()


def _run_one_by_one(chunk: Chunk, factory: Factory, context: Any) -> tuple[Rows, _SupervisedChild | None]:
    """The rows of ``chunk``'s scenes, each evaluated alone in a supervised child (replaced whenever one dies:
    that scene gets its worker-died row); returns the child still alive, if any."""
    rows: Rows = []
    child: _SupervisedChild | None = None
    for ref in chunk:
        child = child or _SupervisedChild(factory, context)
        got = child.run([ref])
        if got is None:
            logger.warning("token %s: %s", ref.token, WORKER_DIED)
            got = [worker_died_row(ref)]
            child.close()
            child = None
        rows.extend(got)
    return rows, child


class _ChunkActor:
    """A Ray actor holding one evaluator."""

    def __init__(self, factory: Factory) -> None:
        self._evaluate = factory()

    def run(self, chunk: Chunk) -> Rows:
        return self._evaluate(chunk)


#: Seconds to wait for a Ray cluster's port before the run is refused.
RAY_CONNECT_TIMEOUT_S = 3.0


def check_ray_address(address: str | None, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse a Ray cluster address that cannot be reached, before any work (``ray.init`` would retry for ~30 s).

    ``None`` (a local instance) and ``auto`` (the cluster this machine belongs to) are not checked; ``host:port`` and
    ``ray://host:port`` must accept a TCP connection within ``timeout_s``. Raises :class:`BenchConfigError` naming
    the address.
    """
    if address is None or address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise BenchConfigError(f"worker.address={address}: expected host:port, ray://host:port, auto or null")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise BenchConfigError(f"worker.address={address}: cannot reach {host}:{port} ({err})") from None


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
        if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) != num_workers):
            raise BenchConfigError(f"worker.num_workers={num_workers} must be a positive integer (or null)")
        if num_workers is not None and num_workers < 1:
            raise BenchConfigError(f"worker.num_workers={num_workers} must be >= 1 (or null: the cluster's CPUs)")
        check_ray_address(address)
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
        raise BenchConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    by_group: dict[str, list[SceneRef]] = {}
    for ref in refs:
        by_group.setdefault(ref.group, []).append(ref)
    return [refs_[i : i + chunk_size] for refs_ in by_group.values() for i in range(0, len(refs_), chunk_size)]
