"""Atomic file writes: write to a temporary file in the target's folder, then rename over the target.

A reader sees either the old file or the complete new one, never a half-written file: ``os.replace`` is atomic
within one file system, and the temporary file lives next to the target. On any error (or ``KeyboardInterrupt``)
the temporary file is removed and the target is left as it was.

- :func:`atomic_write` opens the temporary file for you (``with atomic_write(path, "w") as fh: fh.write(...)``);
- :func:`atomic_path` only names it, for writers that want a path (SQLite, ``savefig``, ``to_csv``, PIL);
- :func:`atomic_write_text` / :func:`atomic_write_bytes` write one string / one bytes object.

Temporary files are named ``.<name>.<random>.tmp`` (hidden, unique per writer, so concurrent writers of the same
target do not clobber each other's temporary file).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; rename it onto ``path`` when the block ends without error.

    The parent folder is created if needed. The temporary file exists (empty) when the block starts, which
    SQLite (``connect``, ``VACUUM INTO``) and every file writer accept. Whatever happens, no temporary file is
    left behind: on error it is deleted and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None, fsync: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    Args:
        path: the target file (its folder is created if needed).
        mode: ``"wb"`` (default) or ``"w"`` (text; ``encoding`` defaults to UTF-8).
        encoding: text encoding for ``"w"``.
        fsync: flush and ``os.fsync`` the data before the rename (durable across a power cut, not only a kill).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); returns the path."""
    with atomic_write(path, "w", encoding=encoding, fsync=fsync) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); returns the path."""
    with atomic_write(path, "wb", fsync=fsync) as fh:
        fh.write(data)
    return Path(path)
