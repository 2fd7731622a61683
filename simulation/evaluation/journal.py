"""Append-only results journal: one JSON line per row, flushed and fsync'd as rows come in.

The first line is a header describing the run (protocol, planner, split); a later run with the same
output folder resumes only if its header matches. A ``kill -9`` can leave at most one half-written last
line; :meth:`Journal.open` drops it (rewriting the file atomically) so appends start on a clean line. Any
other unreadable line is corruption, not an interrupted write: :class:`JournalError` names the file and line.
When a token appears more than once (a chunk finished twice), the last row wins.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from simulation.io import atomic_write_text

logger = logging.getLogger(__name__)

JOURNAL_VERSION = 1


class JournalError(RuntimeError):
    """A journal that cannot be resumed: unreadable header or a different run's header."""


def _encode(row: Mapping[str, Any]) -> str:
    return json.dumps(row, separators=(",", ":"), allow_nan=True, default=_default)


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"journal cannot store {type(obj).__name__}")


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text, fsync=True)


class Journal:
    """Rows of one benchmark run, keyed by token.

    Args:
        path: the ``.jsonl`` file.
        header: what identifies the run; compared on resume (``JOURNAL_VERSION`` is added).
    """

    def __init__(self, path: str | os.PathLike[str], header: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.header = {"journal": JOURNAL_VERSION, **header}
        self._rows: dict[str, dict[str, Any]] = {}

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        """Token -> latest row."""
        return self._rows

    def open(self) -> dict[str, dict[str, Any]]:
        """Read what an earlier run left (validating its header), or start a new journal; returns the rows."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            _atomic_write_text(self.path, _encode(self.header) + "\n")
            return self._rows
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if not complete:
            raise JournalError(f"{self.path}: journal has no header line")
        old_header = self._parse_header(complete[0])
        if old_header != self.header:
            raise JournalError(
                f"{self.path}: belongs to another run ({old_header}); this run is {self.header}. "
                "Use another output_dir or delete the folder."
            )
        for number, line in enumerate(complete[1:], start=2):
            row = self._parse_row(line, number)
            self._rows[str(row["token"])] = row
        if tail:
            logger.warning("%s: half-written last line (interrupted write), dropped", self.path)
            _atomic_write_text(self.path, b"\n".join(complete).decode("utf-8") + "\n")
        logger.info("journal %s: resuming with %d rows", self.path, len(self._rows))
        return self._rows

    def _parse_row(self, line: bytes, number: int) -> dict[str, Any]:
        """A complete (newline-terminated) row line; a corrupt one is an error naming the file and the line."""
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise JournalError(
                f"{self.path}: line {number} is not a JSON row ({err}); repair or delete that line to resume"
            ) from None
        if not isinstance(row, dict) or "token" not in row:
            raise JournalError(f"{self.path}: line {number} is not a results row (no token); repair or delete it")
        return row

    def _parse_header(self, line: bytes) -> dict[str, Any]:
        try:
            header = json.loads(line)
        except json.JSONDecodeError as err:
            raise JournalError(f"{self.path}: unreadable header line: {err}") from None
        if not isinstance(header, dict) or header.get("journal") != JOURNAL_VERSION:
            raise JournalError(f"{self.path}: not a diffplan results journal (header {header!r})")
        return header

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows and make them durable (flush + fsync) before returning."""
        batch = list(rows)
        text = "".join(_encode(row) + "\n" for row in batch)
        if not text:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        for row in batch:
            self._rows[str(row["token"])] = dict(row)
