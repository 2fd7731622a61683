"""One ``diffplan bench`` per output folder: a lock file holding the pid of the run that owns the folder.

A second run on the same folder refuses to start while the owner lives; the lock of a process that died
(``kill -9``, a crash) is stale and is taken over, so nothing stays blocked.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from simulation.evaluation.sources import BenchConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = "bench.lock"


class BenchLockError(BenchConfigError):
    """The output folder belongs to a ``diffplan bench`` that is still running."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux ``/proc``; elsewhere whether it exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _owner(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        return None


def _try_create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    return True


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``<folder>/bench.lock`` for the ``with`` block; raises :class:`BenchLockError` if a live process holds it.

    A lock whose pid is gone (or unreadable) is stale: it is replaced, with a warning.
    """
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    while not _try_create(path):
        pid = _owner(path)
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            raise BenchLockError(
                f"{path.parent} is in use by another diffplan bench (pid {pid}, lock {path}); "
                "wait for it to finish or use another output_dir"
            )
        logger.warning("%s: stale lock of pid %s (not running), taken over", path, pid)
        path.unlink(missing_ok=True)
    try:
        yield path
    finally:
        if _owner(path) == os.getpid():
            path.unlink(missing_ok=True)
