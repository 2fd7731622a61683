"""The nuPlan log schema (specs/nuplan.md §1), its typed errors and vectorised token codecs.

Tokens are 8-byte BLOBs in the DB and 16-char lowercase hex strings in Python. The codecs convert
whole columns at once: ``(N,)`` ``S8`` BLOB bytes <-> ``(N,)`` ``<U16`` hex strings, and ``S8`` ->
``uint64`` keys for sorted-key joins.
"""

from __future__ import annotations

import os

import numpy as np

from simulation.types import TrafficLightStatus

# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class LogError(Exception):
    """A nuPlan log cannot be read; the message starts with the file."""

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class LogFileError(LogError):
    """Missing, not a SQLite file, truncated or corrupt."""


class LogSchemaError(LogError):
    """A table or column of the nuPlan schema is missing."""


class LogContentError(LogError):
    """The tables are there but their content is unusable (empty log, NaN poses, dangling tokens, ...)."""


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------

_TOKEN = "BLOB NOT NULL PRIMARY KEY"

#: ``CREATE TABLE`` statements with nuPlan's table and column names and SQLite types.
SCHEMA: tuple[str, ...] = (
    f"CREATE TABLE log (token {_TOKEN}, vehicle_name VARCHAR(64), date VARCHAR(64), timestamp INTEGER, "
    "logfile VARCHAR(64), location VARCHAR(64), map_version VARCHAR(64))",
    f"CREATE TABLE ego_pose (token {_TOKEN}, log_token BLOB NOT NULL, timestamp INTEGER, x FLOAT, y FLOAT, "
    "z FLOAT, qw FLOAT, qx FLOAT, qy FLOAT, qz FLOAT, vx FLOAT, vy FLOAT, vz FLOAT, acceleration_x FLOAT, "
    "acceleration_y FLOAT, acceleration_z FLOAT, angular_rate_x FLOAT, angular_rate_y FLOAT, "
    "angular_rate_z FLOAT, epsg INTEGER)",
    f"CREATE TABLE lidar (token {_TOKEN}, log_token BLOB NOT NULL, channel VARCHAR(64), model VARCHAR(64), "
    "translation BLOB, rotation BLOB)",
    f"CREATE TABLE lidar_pc (token {_TOKEN}, next_token BLOB, prev_token BLOB, scene_token BLOB, "
    "ego_pose_token BLOB NOT NULL, lidar_token BLOB NOT NULL, filename VARCHAR(128), timestamp INTEGER)",
    f"CREATE TABLE camera (token {_TOKEN}, log_token BLOB NOT NULL, channel VARCHAR(64), model VARCHAR(64), "
    "translation BLOB, rotation BLOB, intrinsic BLOB, distortion BLOB, width INTEGER, height INTEGER)",
    f"CREATE TABLE image (token {_TOKEN}, next_token BLOB, prev_token BLOB, ego_pose_token BLOB NOT NULL, "
    "camera_token BLOB NOT NULL, filename_jpg VARCHAR(128), timestamp INTEGER)",
    f"CREATE TABLE category (token {_TOKEN}, name VARCHAR(64), description TEXT)",
    f"CREATE TABLE track (token {_TOKEN}, category_token BLOB NOT NULL, width FLOAT, length FLOAT, height FLOAT)",
    f"CREATE TABLE lidar_box (token {_TOKEN}, lidar_pc_token BLOB NOT NULL, track_token BLOB NOT NULL, "
    "next_token BLOB, prev_token BLOB, x FLOAT, y FLOAT, z FLOAT, width FLOAT, length FLOAT, height FLOAT, "
    "vx FLOAT, vy FLOAT, vz FLOAT, yaw FLOAT, confidence FLOAT)",
    f"CREATE TABLE scene (token {_TOKEN}, log_token BLOB NOT NULL, name TEXT, goal_ego_pose_token BLOB, "
    "roadblock_ids TEXT)",
    f"CREATE TABLE scenario_tag (token {_TOKEN}, lidar_pc_token BLOB NOT NULL, type TEXT, agent_track_token BLOB)",
    f"CREATE TABLE traffic_light_status (token {_TOKEN}, lidar_pc_token BLOB NOT NULL, lane_connector_id INTEGER, "
    "status VARCHAR(8))",
    "CREATE INDEX idx_lidar_pc_scene ON lidar_pc (scene_token)",
    "CREATE INDEX idx_lidar_box_lidar_pc ON lidar_box (lidar_pc_token)",
    "CREATE INDEX idx_lidar_box_track ON lidar_box (track_token)",
    "CREATE INDEX idx_traffic_light_status_lidar_pc ON traffic_light_status (lidar_pc_token)",
    "CREATE INDEX idx_scenario_tag_lidar_pc ON scenario_tag (lidar_pc_token)",
)

#: Tables and columns :func:`~simulation.datasets.nuplan_db.read_log` needs.
READ_COLUMNS: dict[str, tuple[str, ...]] = {
    "log": ("token", "logfile", "map_version", "vehicle_name", "date"),
    "ego_pose": ("token", "x", "y", "z", "qw", "qx", "qy", "qz", "vx", "vy", "acceleration_x", "acceleration_y",
                 "angular_rate_z"),
    "lidar_pc": ("token", "ego_pose_token", "scene_token", "timestamp"),
    "category": ("token", "name"),
    "track": ("token", "category_token", "width", "length", "height"),
    "lidar_box": ("token", "lidar_pc_token", "track_token", "x", "y", "z", "width", "length", "height", "vx", "vy",
                  "yaw", "confidence"),
    "scene": ("token", "name", "goal_ego_pose_token", "roadblock_ids"),
    "scenario_tag": ("lidar_pc_token", "type", "agent_track_token"),
    "traffic_light_status": ("lidar_pc_token", "lane_connector_id", "status"),
}  # fmt: skip

#: ``traffic_light_status.status`` text (lower case) -> :class:`TrafficLightStatus`.
STATUS_FROM_NAME: dict[str, int] = {s.name.lower(): int(s) for s in TrafficLightStatus}

CAMERA_CHANNELS = ("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0")

# --------------------------------------------------------------------------------------------------
# Quaternions
# --------------------------------------------------------------------------------------------------


def quaternion_to_yaw(q: np.ndarray) -> np.ndarray:
    """Yaw of ``(..., 4)`` quaternions ``(qw, qx, qy, qz)`` (rotation about z of the ZYX decomposition)."""
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def yaw_to_quaternion(yaw: np.ndarray | float) -> np.ndarray:
    """``(..., 4)`` quaternions ``(qw, qx, qy, qz)`` of pure rotations by ``yaw`` ``(...)`` about z."""
    yaw = np.asarray(yaw, dtype=np.float64)
    zeros = np.zeros_like(yaw)
    return np.stack([np.cos(yaw / 2.0), zeros, zeros, np.sin(yaw / 2.0)], -1)


# --------------------------------------------------------------------------------------------------
# Token codecs
# --------------------------------------------------------------------------------------------------

_HEX_PAIRS = np.array([f"{i:02x}" for i in range(256)], dtype="S2")


def hex_tokens(blobs: np.ndarray) -> np.ndarray:
    """``(N,)`` ``S8`` token BLOBs -> ``(N,)`` ``<U16`` lowercase hex strings."""
    raw = np.ascontiguousarray(blobs, dtype="S8").view(np.uint8).reshape(-1, 8)
    pairs = np.ascontiguousarray(_HEX_PAIRS[raw])
    return pairs.view("S16").reshape(-1).astype("<U16")


def token_keys(blobs: np.ndarray) -> np.ndarray:
    """``(N,)`` ``S8`` token BLOBs -> ``(N,)`` ``uint64`` keys (for sorting and joins)."""
    return np.ascontiguousarray(blobs, dtype="S8").view(np.uint64).reshape(-1)


def hex_to_blobs(tokens: np.ndarray) -> list[bytes]:
    """``(N,)`` 16-char hex strings -> list of ``N`` 8-byte ``bytes`` (ready to bind as BLOBs)."""
    strings = [str(t) for t in np.asarray(tokens).reshape(-1).tolist()]
    bad = [s for s in strings if len(s) != 16]
    if bad:
        raise ValueError(f"tokens must be 16 hex characters, got {bad[:3]}")
    raw = bytes.fromhex("".join(strings))
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]
