"""Atomic writes: the target is either the old file or the complete new one, and no temporary file stays."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from simulation.io import atomic_path, atomic_write, atomic_write_bytes, atomic_write_text


def _leftovers(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*"))


def test_atomic_write_creates_parents_and_writes(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.bin"
    with atomic_write(path) as fh:
        fh.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert _leftovers(path.parent) == []


def test_atomic_write_text_mode_and_fsync(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    with atomic_write(path, "w", fsync=True) as fh:
        fh.write("é\n")
    assert path.read_bytes() == "é\n".encode()
    assert atomic_write_text(path, "second") == path
    assert path.read_text() == "second"
    assert atomic_write_bytes(path, b"third", fsync=True) == path
    assert path.read_bytes() == b"third"
    assert _leftovers(tmp_path) == []


def test_failure_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(path, "w") as fh:
        fh.write("half of the new")
        fh.flush()
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_failure_without_old_file_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    with pytest.raises(KeyboardInterrupt), atomic_write(path):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_file_is_hidden_beside_the_target(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    with atomic_write(path, "w") as fh:
        tmp = Path(fh.name)
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".x.csv.") and tmp.name.endswith(".tmp")
        assert not path.exists()
    assert path.exists() and not tmp.exists()


def test_atomic_path_for_sqlite(tmp_path: Path) -> None:
    """SQLite accepts the (empty) temporary file; ``VACUUM INTO`` as well."""
    path = tmp_path / "db" / "x.db"
    with atomic_path(path) as tmp:
        assert tmp.exists() and tmp.stat().st_size == 0
        con = sqlite3.connect(tmp)
        with con:
            con.execute("CREATE TABLE t (v INTEGER)")
            con.execute("INSERT INTO t VALUES (7)")
        con.close()
    copy = tmp_path / "copy.db"
    with atomic_path(copy) as tmp:
        con = sqlite3.connect(path)
        con.execute("VACUUM INTO ?", (str(tmp),))
        con.close()
    con = sqlite3.connect(copy)
    assert con.execute("SELECT v FROM t").fetchall() == [(7,)]
    con.close()
    assert _leftovers(path.parent) == [] and _leftovers(tmp_path) == []


def test_atomic_path_failure_keeps_old(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(ValueError), atomic_path(path) as tmp:
        tmp.write_text('{"half": ')
        raise ValueError
    assert path.read_text() == "{}"
    assert _leftovers(tmp_path) == []


def test_bad_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "a"):
        pass
    assert list(tmp_path.iterdir()) == []
