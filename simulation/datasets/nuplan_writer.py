"""Writer of nuPlan ``.db`` logs (specs/nuplan.md §1): :func:`write_log`.

It creates every table of the nuPlan schema (``log, ego_pose, lidar, lidar_pc, camera, image, category,
track, lidar_box, scene, scenario_tag, traffic_light_status``) with nuPlan's column names, tokens as
8-byte BLOBs, ``next``/``prev`` links along ``lidar_pc`` and along each track's boxes, and writes to a
temporary file in the target folder before renaming it into place. Its output depends only on the
:class:`LogData` (tokens it has to invent are hashes of the log token), so reruns are byte-identical.
Columns :class:`LogData` does not hold are written as zeros (``vz``, ``acceleration_z``,
``angular_rate_x/y``, ``epsg``); ``image`` is left empty. A scene goal that is not the pose of a logged
frame gets its own ``ego_pose`` row (not linked to any ``lidar_pc``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from simulation.datasets.log_data import LogData
from simulation.datasets.nuplan_schema import CAMERA_CHANNELS, SCHEMA, hex_to_blobs, yaw_to_quaternion
from simulation.io import atomic_path
from simulation.types import TRAFFIC_LIGHT_NAMES, TYPE_TO_CATEGORY, StateIndex, TrafficLightStatus

__all__ = ["write_log"]


# --------------------------------------------------------------------------------------------------


def _derived_tokens(log_token: str, kind: str, n: int) -> list[bytes]:
    """``n`` deterministic 8-byte tokens for rows :class:`LogData` holds no token for."""
    base = int.from_bytes(hashlib.blake2b(f"{log_token}/{kind}".encode(), digest_size=8).digest(), "big")
    keys = (np.uint64(base) + np.arange(n, dtype=np.uint64)).astype(">u8")
    raw = keys.tobytes()
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]


def _links(order: np.ndarray, same_chain: np.ndarray, tokens: list[bytes]) -> tuple[list[Any], list[Any]]:
    """``next`` and ``prev`` tokens of rows visited in ``order``; ``same_chain[k]`` says whether the row
    ``order[k + 1]`` continues the chain of ``order[k]``."""
    n = len(order)
    nxt: list[Any] = [None] * n
    prv: list[Any] = [None] * n
    for k in np.flatnonzero(same_chain).tolist():
        a, b = int(order[k]), int(order[k + 1])
        nxt[a], prv[b] = tokens[b], tokens[a]
    return nxt, prv


def _check_lengths(log: LogData) -> None:
    f, n, m = log.num_frames, len(log.track_tokens), len(log.box_tokens)
    checks = {
        "ego_pose_tokens": (log.ego_pose_tokens.shape, (f,)),
        "timestamps_us": (log.timestamps_us.shape, (f,)),
        "frame_scene": (log.frame_scene.shape, (f,)),
        "ego_states": (log.ego_states.shape, (f, len(StateIndex))),
        "track_sizes": (log.track_sizes.shape, (n, 3)),
        "box_states": (log.box_states.shape, (m, 7)),
        "box_frame": (log.box_frame.shape, (m,)),
        "box_track": (log.box_track.shape, (m,)),
        "scene_goal": (log.scene_goal.shape, (len(log.scene_tokens), 3)),
        "tl_status": (log.tl_status.shape, log.tl_frame.shape),
        "tag_type": (log.tag_type.shape, log.tag_frame.shape),
    }
    for name, (got, want) in checks.items():
        if got != want:
            raise ValueError(f"log {log.log_name}: {name} has shape {got}, expected {want}")
    if f == 0:
        raise ValueError(f"log {log.log_name}: no frames")


def _goal_tokens(log: LogData, pose_tokens: list[bytes]) -> tuple[list[Any], list[tuple[Any, ...]]]:
    """Goal ego_pose token of each scene (None when the goal is NaN) and the extra ego_pose rows needed
    for goals that are not the pose of a logged frame."""
    goals: list[Any] = []
    extra: list[tuple[Any, ...]] = []
    new_tokens = _derived_tokens(log.log_token, "goal", len(log.scene_tokens))
    for s, goal in enumerate(log.scene_goal):
        if not np.isfinite(goal).all():
            goals.append(None)
            continue
        same = np.flatnonzero((log.ego_states[:, :3] == goal).all(1))
        if len(same):
            goals.append(pose_tokens[int(same[-1])])
            continue
        qw, qx, qy, qz = yaw_to_quaternion(np.float64(goal[2])).tolist()
        token = new_tokens[s]
        goals.append(token)
        extra.append((token, int(log.timestamps_us[-1]), float(goal[0]), float(goal[1]), 0.0, qw, qx, qy, qz)
                     + (0.0,) * 9)  # fmt: skip
    return goals, extra


def _ego_rows(log: LogData, log_blob: bytes, pose_tokens: list[bytes]) -> Iterable[tuple[Any, ...]]:
    s = log.ego_states
    q = yaw_to_quaternion(s[:, StateIndex.HEADING])
    zero = np.zeros(log.num_frames)
    cols = [
        log.timestamps_us,
        s[:, StateIndex.X],
        s[:, StateIndex.Y],
        log.ego_z,
        *q.T,
        s[:, StateIndex.VX],
        s[:, StateIndex.VY],
        zero,
        s[:, StateIndex.AX],
        s[:, StateIndex.AY],
        zero,
        zero,
        zero,
        s[:, StateIndex.YAW_RATE],
    ]
    return zip(pose_tokens, [log_blob] * log.num_frames, *[np.asarray(c).tolist() for c in cols], [0] * log.num_frames)


def location_column(log: LogData) -> str:
    """``log.location``: the map location, with ``@<map version>`` when the log knows its map's version."""
    return f"{log.map_location}@{log.map_version}" if log.map_version else log.map_location


def _write_static(con: sqlite3.Connection, log: LogData, log_blob: bytes) -> tuple[bytes, dict[int, bytes]]:
    """Rows of ``log``, ``lidar``, ``camera`` and ``category``; returns the lidar token and category tokens."""
    t0 = int(log.timestamps_us[0])
    con.execute(
        "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)",
        (log_blob, log.vehicle_name, log.date, t0, log.log_name, location_column(log), log.map_location),
    )
    identity = (pickle.dumps([0.0, 0.0, 0.0]), pickle.dumps([1.0, 0.0, 0.0, 0.0]))
    lidar = _derived_tokens(log.log_token, "lidar", 1)[0]
    con.execute(
        "INSERT INTO lidar VALUES (?, ?, ?, ?, ?, ?)", (lidar, log_blob, "MergedPointCloud", "merged", *identity)
    )
    intrinsic = pickle.dumps([[1545.0, 0.0, 960.0], [0.0, 1545.0, 560.0], [0.0, 0.0, 1.0]])
    distortion = pickle.dumps([0.0] * 5)
    cams = _derived_tokens(log.log_token, "camera", len(CAMERA_CHANNELS))
    con.executemany(
        "INSERT INTO camera VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(tok, log_blob, ch, "pinhole", *identity, intrinsic, distortion, 1920, 1080)
         for tok, ch in zip(cams, CAMERA_CHANNELS)],
    )  # fmt: skip
    cat_tokens = _derived_tokens(log.log_token, "category", len(TYPE_TO_CATEGORY))
    categories = dict(zip([int(t) for t in TYPE_TO_CATEGORY], cat_tokens))
    con.executemany(
        "INSERT INTO category VALUES (?, ?, ?)",
        [(categories[int(t)], name, f"{name} objects") for t, name in TYPE_TO_CATEGORY.items()],
    )
    return lidar, categories


def _write_frames(con: sqlite3.Connection, log: LogData, log_blob: bytes, lidar: bytes) -> list[bytes]:
    f = log.num_frames
    frame_tokens = hex_to_blobs(log.frame_tokens)
    pose_tokens = hex_to_blobs(log.ego_pose_tokens)
    scene_tokens = hex_to_blobs(log.scene_tokens)
    goals, extra_poses = _goal_tokens(log, pose_tokens)
    con.executemany(f"INSERT INTO ego_pose VALUES ({', '.join('?' * 20)})", _ego_rows(log, log_blob, pose_tokens))
    extra_rows = [e[:1] + (log_blob,) + e[1:] + (0,) for e in extra_poses]
    con.executemany(f"INSERT INTO ego_pose VALUES ({', '.join('?' * 20)})", extra_rows)
    order = np.argsort(log.timestamps_us, kind="stable")
    nxt, prv = _links(order, np.ones(max(f - 1, 0), dtype=bool), frame_tokens)
    names = [f"{log.log_name}/MergedPointCloud/{t}.pcd" for t in log.frame_tokens.tolist()]
    con.executemany(
        "INSERT INTO lidar_pc VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        zip(frame_tokens, nxt, prv, [scene_tokens[i] for i in log.frame_scene.tolist()], pose_tokens,
            [lidar] * f, names, log.timestamps_us.tolist()),
    )  # fmt: skip
    con.executemany(
        "INSERT INTO scene VALUES (?, ?, ?, ?, ?)",
        [(tok, log_blob, str(name), goal, " ".join(route))
         for tok, name, goal, route in zip(scene_tokens, log.scene_names.tolist(), goals, log.scene_roadblock_ids)],
    )  # fmt: skip
    return frame_tokens


def _write_tracks(con: sqlite3.Connection, log: LogData, frame_tokens: list[bytes], categories: dict[int, bytes]):
    track_tokens = hex_to_blobs(log.track_tokens)
    con.executemany(
        "INSERT INTO track VALUES (?, ?, ?, ?, ?)",
        zip(track_tokens, [categories[int(t)] for t in log.track_types], *log.track_sizes.T.tolist()),
    )
    box_tokens = hex_to_blobs(log.box_tokens)
    order = np.lexsort((log.timestamps_us[log.box_frame], log.box_track))
    nxt, prv = _links(order, log.box_track[order][1:] == log.box_track[order][:-1], box_tokens)
    b = log.box_states
    zero = [0.0] * len(box_tokens)
    con.executemany(
        f"INSERT INTO lidar_box VALUES ({', '.join('?' * 16)})",
        zip(box_tokens, [frame_tokens[i] for i in log.box_frame.tolist()],
            [track_tokens[i] for i in log.box_track.tolist()], nxt, prv,
            b[:, 0].tolist(), b[:, 1].tolist(), log.box_z.tolist(), b[:, 6].tolist(), b[:, 5].tolist(),
            log.box_height.tolist(), b[:, 3].tolist(), b[:, 4].tolist(), zero, b[:, 2].tolist(),
            log.box_confidence.tolist()),
    )  # fmt: skip
    return track_tokens


def _write_lights_and_tags(con: sqlite3.Connection, log: LogData, frame_tokens: list[bytes], track_tokens):
    names = [TRAFFIC_LIGHT_NAMES[TrafficLightStatus(int(s))] for s in range(len(TrafficLightStatus))]
    con.executemany(
        "INSERT INTO traffic_light_status VALUES (?, ?, ?, ?)",
        zip(_derived_tokens(log.log_token, "traffic_light_status", len(log.tl_frame)),
            [frame_tokens[i] for i in log.tl_frame.tolist()], log.tl_lane_connector.astype(np.int64).tolist(),
            [names[s] for s in log.tl_status.tolist()]),
    )  # fmt: skip
    con.executemany(
        "INSERT INTO scenario_tag VALUES (?, ?, ?, ?)",
        zip(_derived_tokens(log.log_token, "scenario_tag", len(log.tag_frame)),
            [frame_tokens[i] for i in log.tag_frame.tolist()], [str(t) for t in log.tag_type],
            [track_tokens[i] if i >= 0 else None for i in log.tag_track.tolist()]),
    )  # fmt: skip


def write_log(log: LogData, path: str | os.PathLike[str]) -> Path:
    """Write ``log`` as a nuPlan ``.db`` at ``path`` (atomic: temporary file in the same folder + rename).

    Returns the path. Raises ``ValueError`` when the arrays of ``log`` do not have consistent lengths.
    """
    path = Path(path)
    _check_lengths(log)
    with atomic_path(path) as tmp, closing(sqlite3.connect(tmp)) as con:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        # tables first, indexes once the rows are in (building an index in one pass beats updating it per row)
        indexes = [st for st in SCHEMA if st.startswith("CREATE INDEX")]
        for statement in SCHEMA:
            if statement not in indexes:
                con.execute(statement)
        log_blob = hex_to_blobs(np.array([log.log_token]))[0]
        lidar, categories = _write_static(con, log, log_blob)
        frame_tokens = _write_frames(con, log, log_blob, lidar)
        track_tokens = _write_tracks(con, log, frame_tokens, categories)
        _write_lights_and_tags(con, log, frame_tokens, track_tokens)
        for statement in indexes:
            con.execute(statement)
        con.commit()
    return path
