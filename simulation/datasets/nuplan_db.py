"""nuPlan ``.db`` logs (specs/nuplan.md §1): :func:`read_log` (and :func:`write_log`, from
:mod:`simulation.datasets.nuplan_writer`) for :class:`LogData`.

The reader runs one query per table and decodes whole columns with numpy: 8-byte BLOB tokens become
16-char hex strings through a byte lookup table, quaternions become yaws in one vectorised call, and
the joins (box -> frame, box -> track, frame -> ego pose / scene, ...) are sorted-key lookups on the
tokens viewed as ``uint64``. Nothing is queried per frame. Steering and yaw acceleration are not part
of the schema and read as 0; the yaw rate is ``angular_rate_z``.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from simulation.datasets.log_data import LogData
from simulation.datasets.nuplan_schema import (
    READ_COLUMNS,
    STATUS_FROM_NAME,
    LogContentError,
    LogError,
    LogFileError,
    LogSchemaError,
    hex_tokens,
    quaternion_to_yaw,
    token_keys,
    yaw_to_quaternion,
)
from simulation.datasets.nuplan_writer import write_log
from simulation.types import CATEGORY_TO_TYPE, StateIndex

logger = logging.getLogger(__name__)

__all__ = [
    "LogContentError",
    "LogError",
    "LogFileError",
    "LogSchemaError",
    "read_log",
    "write_log",
    "quaternion_to_yaw",
    "yaw_to_quaternion",
]

_SQLITE_MAGIC = b"SQLite format 3\x00"


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _open(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise LogFileError(path, "no such file")
    with open(path, "rb") as fh:
        head = fh.read(100)
    if len(head) < 100:
        raise LogFileError(path, f"not a SQLite file (only {len(head)} bytes)")
    if head[:16] != _SQLITE_MAGIC:
        raise LogFileError(path, "not a SQLite file (bad header)")
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    size = path.stat().st_size
    if pages and page and size < pages * page:
        raise LogFileError(path, f"truncated SQLite file ({size} bytes, header says {pages * page})")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _check_schema(con: sqlite3.Connection, path: Path) -> None:
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table, columns in READ_COLUMNS.items():
        if table not in tables:
            raise LogSchemaError(path, f"missing table {table!r}")
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        missing = [c for c in columns if c not in have]
        if missing:
            raise LogSchemaError(path, f"table {table!r} lacks column(s) {missing}")


def _fetch(con: sqlite3.Connection, path: Path, table: str, select: Sequence[str], dtype: list[tuple[str, str]]):
    """One ``SELECT`` over ``table`` decoded into a structured array with fields ``dtype``."""
    sql = f"SELECT {', '.join(select)} FROM {table} ORDER BY rowid"
    try:
        return np.fromiter(con.execute(sql), dtype=np.dtype(dtype))
    except (TypeError, ValueError) as exc:
        raise LogContentError(path, f"table {table!r}: NULL or non-numeric value ({exc})") from None


def _index_of(keys: np.ndarray, sorted_keys: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Row index in the table of ``sorted_keys[order]`` of each of ``keys``; -1 where absent."""
    if len(sorted_keys) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == keys, order[pos], -1).astype(np.int64)


class _Lookup:
    """Token -> row lookups for one table (tokens as ``(N,)`` ``S8`` BLOB bytes)."""

    def __init__(self, tokens: np.ndarray):
        keys = token_keys(tokens)
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        return _index_of(token_keys(tokens), self.sorted, self.order)


def _require(ok: np.ndarray, path: Path, what: str) -> None:
    if not bool(np.all(ok)):
        raise LogContentError(path, f"{int(np.count_nonzero(~ok))} {what}")


def _read_frames(con: sqlite3.Connection, path: Path) -> dict[str, Any]:
    pc = _fetch(
        con,
        path,
        "lidar_pc",
        ["token", "ego_pose_token", "scene_token", "timestamp"],
        [("token", "S8"), ("ego", "S8"), ("scene", "S8"), ("t", "i8")],
    )
    if len(pc) == 0:
        raise LogContentError(path, "empty log (no lidar_pc rows)")
    pc = pc[np.argsort(pc["t"], kind="stable")]
    cols = ["x", "y", "z", "qw", "qx", "qy", "qz", "vx", "vy", "acceleration_x", "acceleration_y", "angular_rate_z"]
    ego = _fetch(con, path, "ego_pose", ["token", *cols], [("token", "S8")] + [(c, "f8") for c in cols])
    ego_lookup = _Lookup(ego["token"])
    row = ego_lookup(pc["ego"])
    _require(row >= 0, path, "lidar_pc rows point to a missing ego_pose")
    e = ego[row]
    q = np.stack([e["qw"], e["qx"], e["qy"], e["qz"]], -1)
    pose_ok = np.isfinite(np.stack([e["x"], e["y"]], -1)).all(-1) & np.isfinite(q).all(-1)
    pose_ok &= np.einsum("ij,ij->i", q, q) > 1e-12
    if not pose_ok.all():
        bad = np.flatnonzero(~pose_ok)
        raise LogContentError(path, f"{len(bad)} ego poses are NaN or have a zero quaternion (first at frame {bad[0]})")
    states = np.zeros((len(pc), len(StateIndex)))
    states[:, StateIndex.X], states[:, StateIndex.Y] = e["x"], e["y"]
    states[:, StateIndex.HEADING] = quaternion_to_yaw(q)
    states[:, StateIndex.VX], states[:, StateIndex.VY] = e["vx"], e["vy"]
    states[:, StateIndex.AX], states[:, StateIndex.AY] = e["acceleration_x"], e["acceleration_y"]
    states[:, StateIndex.YAW_RATE] = e["angular_rate_z"]
    return {"pc": pc, "ego": ego, "ego_lookup": ego_lookup, "states": states, "z": e["z"].copy()}


def _read_scenes(con: sqlite3.Connection, path: Path, frames: dict[str, Any]) -> dict[str, Any]:
    rows = con.execute("SELECT token, name, goal_ego_pose_token, roadblock_ids FROM scene ORDER BY rowid").fetchall()
    tokens = np.array([r[0] for r in rows], dtype="S8")
    goal = np.full((len(rows), 3), np.nan)
    has_goal = np.array([r[2] is not None for r in rows], dtype=bool)
    if has_goal.any():
        ego = frames["ego"]
        goal_rows = frames["ego_lookup"](np.array([r[2] for r in rows if r[2] is not None], dtype="S8"))
        if (goal_rows < 0).any():
            logger.warning("%s: %d scene goals point to a missing ego_pose", path, int((goal_rows < 0).sum()))
        g = ego[np.maximum(goal_rows, 0)]
        q = np.stack([g["qw"], g["qx"], g["qy"], g["qz"]], -1)
        found = np.stack([g["x"], g["y"], quaternion_to_yaw(q)], -1)
        found[goal_rows < 0] = np.nan
        goal[has_goal] = found
    scene_row = _Lookup(tokens)(frames["pc"]["scene"])
    _require(scene_row >= 0, path, "lidar_pc rows point to a missing scene")
    return {
        "scene_tokens": hex_tokens(tokens),
        "scene_names": np.array([str(r[1]) for r in rows], dtype=str),
        "scene_goal": goal,
        "scene_roadblock_ids": [[s for s in re.split(r"[\s,]+", r[3] or "") if s] for r in rows],
        "frame_scene": scene_row,
    }


def _read_tracks(con: sqlite3.Connection, path: Path) -> dict[str, Any]:
    cat = con.execute("SELECT token, name FROM category ORDER BY rowid").fetchall()
    unknown = sorted({str(r[1]) for r in cat} - set(CATEGORY_TO_TYPE))
    if unknown:
        raise LogContentError(path, f"unknown category name(s) {unknown}")
    cat_tokens = np.array([r[0] for r in cat], dtype="S8")
    cat_types = np.array([CATEGORY_TO_TYPE[str(r[1])] for r in cat], dtype=np.int64)
    tr = _fetch(
        con,
        path,
        "track",
        ["token", "category_token", "width", "length", "height"],
        [("token", "S8"), ("cat", "S8"), ("w", "f8"), ("l", "f8"), ("h", "f8")],
    )
    cat_row = _Lookup(cat_tokens)(tr["cat"])
    _require(cat_row >= 0, path, "tracks point to a missing category")
    return {
        "track_raw": tr["token"],
        "track_tokens": hex_tokens(tr["token"]),
        "track_types": cat_types[cat_row] if len(tr) else np.zeros(0, dtype=np.int64),
        "track_sizes": np.stack([tr["w"], tr["l"], tr["h"]], -1).reshape(-1, 3),
    }


def _read_boxes(con: sqlite3.Connection, path: Path, frame_lookup: _Lookup, track_lookup: _Lookup) -> dict[str, Any]:
    cols = ["x", "y", "z", "width", "length", "height", "vx", "vy", "yaw", "confidence"]
    b = _fetch(
        con,
        path,
        "lidar_box",
        ["token", "lidar_pc_token", "track_token", *cols],
        [("token", "S8"), ("pc", "S8"), ("track", "S8")] + [(c, "f8") for c in cols],
    )
    frame, track = frame_lookup(b["pc"]), track_lookup(b["track"])
    _require(frame >= 0, path, "lidar_box rows point to a missing lidar_pc")
    _require(track >= 0, path, "lidar_box rows point to a missing track")
    states = np.stack([b["x"], b["y"], b["yaw"], b["vx"], b["vy"], b["length"], b["width"]], -1).reshape(-1, 7)
    return {
        "box_tokens": hex_tokens(b["token"]),
        "box_frame": frame,
        "box_track": track,
        "box_states": states,
        "box_z": b["z"].copy(),
        "box_height": b["height"].copy(),
        "box_confidence": b["confidence"].copy(),
    }


def _read_lights_and_tags(
    con: sqlite3.Connection, path: Path, frame_lookup: _Lookup, track_lookup: _Lookup
) -> dict[str, Any]:
    tl = _fetch(
        con,
        path,
        "traffic_light_status",
        ["lidar_pc_token", "lane_connector_id", "lower(status)"],
        [("pc", "S8"), ("lc", "i8"), ("status", "U16")],
    )
    names, inverse = np.unique(tl["status"], return_inverse=True)
    unknown = [str(n) for n in names if str(n) not in STATUS_FROM_NAME]
    if unknown:
        raise LogContentError(path, f"unknown traffic light status value(s) {unknown}")
    codes = np.array([STATUS_FROM_NAME[str(n)] for n in names], dtype=np.int64)
    tl_frame = frame_lookup(tl["pc"])
    _require(tl_frame >= 0, path, "traffic_light_status rows point to a missing lidar_pc")
    tags = con.execute("SELECT lidar_pc_token, type, agent_track_token FROM scenario_tag ORDER BY rowid").fetchall()
    tag_frame = frame_lookup(np.array([r[0] for r in tags], dtype="S8"))
    _require(tag_frame >= 0, path, "scenario_tag rows point to a missing lidar_pc")
    has_track = np.array([r[2] is not None for r in tags], dtype=bool)
    tag_track = np.full(len(tags), -1, dtype=np.int64)
    tag_track[has_track] = track_lookup(np.array([r[2] for r in tags if r[2] is not None], dtype="S8"))
    tag_type = np.empty(len(tags), dtype=object)
    tag_type[:] = [str(r[1]) for r in tags]
    return {
        "tl_frame": tl_frame,
        "tl_lane_connector": tl["lc"].copy(),
        "tl_status": codes[inverse.reshape(-1)] if len(tl) else np.zeros(0, dtype=np.int64),
        "tag_frame": tag_frame,
        "tag_type": tag_type,
        "tag_track": tag_track,
    }


def read_log(path: str | os.PathLike[str]) -> LogData:
    """Read one nuPlan ``.db`` log into a :class:`LogData` (one query per table).

    Raises:
        LogFileError: missing file, not SQLite, truncated or corrupt.
        LogSchemaError: a table or column the reader needs is missing.
        LogContentError: empty log, NaN ego poses, dangling token references, unknown categories.
    """
    path = Path(path)
    con = _open(path)
    try:
        _check_schema(con, path)
        log_row = con.execute(
            "SELECT token, logfile, map_version, vehicle_name, date, location FROM log ORDER BY rowid LIMIT 1"
        ).fetchone()
        if log_row is None:
            raise LogContentError(path, "empty log (no row in table 'log')")
        frames = _read_frames(con, path)
        pc = frames["pc"]
        frame_lookup = _Lookup(pc["token"])
        scenes = _read_scenes(con, path, frames)
        tracks = _read_tracks(con, path)
        track_lookup = _Lookup(tracks.pop("track_raw"))
        boxes = _read_boxes(con, path, frame_lookup, track_lookup)
        lights = _read_lights_and_tags(con, path, frame_lookup, track_lookup)
    except sqlite3.DatabaseError as exc:
        raise LogFileError(path, f"corrupt SQLite file ({exc})") from None
    finally:
        con.close()
    return LogData(
        log_name=str(log_row[1] or path.stem),
        log_token=hex_tokens(np.array([log_row[0]], dtype="S8"))[0],
        map_location=str(log_row[2] or ""),
        vehicle_name=str(log_row[3] or ""),
        date=str(log_row[4] or ""),
        map_version=_map_version(str(log_row[2] or ""), str(log_row[5] or "")),
        frame_tokens=hex_tokens(pc["token"]),
        ego_pose_tokens=hex_tokens(pc["ego"]),
        timestamps_us=pc["t"].copy(),
        ego_states=frames["states"],
        ego_z=frames["z"],
        **scenes,
        **tracks,
        **boxes,
        **lights,
        source=str(path),
    )


#: Decoded logs :func:`cached_read_log` keeps in this process: (resolved path, size, mtime) -> (log, bytes).
_LOG_CACHE: OrderedDict[tuple[str, int, int], tuple[LogData, int]] = OrderedDict()


def log_cache_budget() -> int:
    """Bytes of arrays :func:`cached_read_log` may keep: ``$DIFFPLAN_LOG_CACHE_MB`` MiB (default 1024; 0: none)."""
    raw = os.environ.get("DIFFPLAN_LOG_CACHE_MB", "1024")
    try:
        mib = float(raw)
    except ValueError:
        raise ValueError(f"DIFFPLAN_LOG_CACHE_MB={raw!r} is not a number of MiB") from None
    return max(int(mib * 2**20), 0)


def cached_read_log(path: str | os.PathLike[str]) -> LogData:
    """:func:`read_log`, keeping the logs read last in this process (up to :func:`log_cache_budget` bytes of
    arrays, least recently used first out; a log larger than the budget is not kept), so that a process which
    benchmarks the same split several times (``make demo``: 40 runs in one process) decodes each log once.

    A file is known by its resolved path, size and modification time: a rewritten log is read again. The
    arrays of a returned log are read-only, because every caller shares them; copy before modifying.
    """
    budget = log_cache_budget()
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError:
        return read_log(path)  # read_log names the problem
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    hit = _LOG_CACHE.get(key)
    if hit is not None:
        _LOG_CACHE.move_to_end(key)
        return hit[0]
    log = read_log(path)
    arrays = [v for v in (getattr(log, f.name) for f in fields(log)) if isinstance(v, np.ndarray)]
    size = sum(a.nbytes for a in arrays)
    if size <= budget:
        for a in arrays:
            a.flags.writeable = False
        _LOG_CACHE[key] = (log, size)
        while sum(n for _, n in _LOG_CACHE.values()) > budget:
            _LOG_CACHE.popitem(last=False)
    return log


def _map_version(map_location: str, location: str) -> str:
    """The map version a log records in ``log.location`` as ``<map location>@<version>`` (``""`` when it does
    not, as in nuPlan's own logs, whose ``location`` is a city name)."""
    prefix = f"{map_location}@"
    return location[len(prefix) :] if map_location and location.startswith(prefix) else ""
