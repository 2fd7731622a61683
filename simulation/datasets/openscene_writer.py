"""Writing OpenScene log pickles (specs/navsim.md §4.2) from a :class:`LogData`: :func:`write_openscene_log`.

The layout is OpenScene's (``create_openscene_metadata``): a list of 2 Hz frame dicts, boxes and velocities in
the ego rear-axle frame, quaternions (w, x, y, z), an 18-entry ``can_bus``; see :mod:`simulation.datasets.openscene`
for the reading side. The lidar is taken as the ego frame (identity ``lidar2ego``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from simulation.datasets.log_data import LogData
from simulation.datasets.nuplan_schema import yaw_to_quaternion
from simulation.datasets.scenes import SCENE_STEP, DrivingCommandFn, log_path_command
from simulation.geometry import normalize_angle, rotate_vectors, transform_points_to_local
from simulation.io import atomic_write
from simulation.types import (
    TYPE_TO_CATEGORY,
    AgentIndex,
    DrivingCommand,
    StateIndex,
    TrackedObjectType,
    TrafficLightStatus,
)

#: OpenScene's camera channels, the keys of a frame's ``cams`` (NAVSIM's ``Cameras`` needs all eight).
CAMERA_CHANNELS = ("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0")
#: Length of a camera's ``distortion`` vector (OpenCV's k1, k2, p1, p2, k3).
DISTORTION_SIZE = 5

#: Entry of ``can_bus`` holding the yaw rate (x, y, z, qw, qx, qy, qz, ax, ay, az, vx, vy, vz, wx, wy, wz, 0, 0).
CAN_BUS_YAW_RATE = 15
CAN_BUS_SIZE = 18


class BoxIndex(IntEnum):
    """Columns of ``anns["gt_boxes"]`` ``(N, 7)`` (NAVSIM's ``BoundingBoxIndex``), ego rear-axle frame."""

    X = 0
    Y = 1
    Z = 2
    LENGTH = 3
    WIDTH = 4
    HEIGHT = 5
    HEADING = 6


def _annotations(log: LogData, rows: np.ndarray, ego: np.ndarray, ego_z: float) -> dict[str, Any]:
    """``anns`` of one frame from the log's box rows ``rows`` (global boxes -> ego frame)."""
    states = log.box_states[rows]
    pose = ego[: StateIndex.HEADING + 1]
    boxes = np.zeros((len(rows), len(BoxIndex)))
    boxes[:, [BoxIndex.X, BoxIndex.Y]] = transform_points_to_local(states[:, [AgentIndex.X, AgentIndex.Y]], pose)
    boxes[:, BoxIndex.Z] = log.box_z[rows] - ego_z
    boxes[:, BoxIndex.LENGTH] = states[:, AgentIndex.LENGTH]
    boxes[:, BoxIndex.WIDTH] = states[:, AgentIndex.WIDTH]
    boxes[:, BoxIndex.HEIGHT] = log.box_height[rows]
    boxes[:, BoxIndex.HEADING] = normalize_angle(states[:, AgentIndex.HEADING] - pose[2])
    velocity = np.zeros((len(rows), 3))
    velocity[:, :2] = rotate_vectors(states[:, [AgentIndex.VX, AgentIndex.VY]], -pose[2])
    tracks = log.box_track[rows]
    return {
        "gt_boxes": boxes,
        "gt_names": np.array([TYPE_TO_CATEGORY[TrackedObjectType(int(t))] for t in log.track_types[tracks]], dtype=str),
        "gt_velocity_3d": velocity,
        "instance_tokens": [str(t) for t in np.asarray(log.box_tokens)[rows]],
        "track_tokens": [str(t) for t in np.asarray(log.track_tokens)[tracks]],
    }


def _poses(ego: np.ndarray, z: float) -> dict[str, Any]:
    """Pose keys of a frame: translation, quaternion, can_bus and the 4x4 transforms (lidar = ego)."""
    quaternion = yaw_to_quaternion(ego[StateIndex.HEADING])
    translation = np.array([ego[StateIndex.X], ego[StateIndex.Y], z])
    can_bus = np.zeros(CAN_BUS_SIZE)
    can_bus[:3], can_bus[3:7] = translation, quaternion
    can_bus[7:9] = ego[[StateIndex.AX, StateIndex.AY]]
    can_bus[10:12] = ego[[StateIndex.VX, StateIndex.VY]]
    can_bus[CAN_BUS_YAW_RATE] = ego[StateIndex.YAW_RATE]
    ego2global = np.eye(4)
    c, s = np.cos(ego[StateIndex.HEADING]), np.sin(ego[StateIndex.HEADING])
    ego2global[:2, :2] = [[c, -s], [s, c]]
    ego2global[:3, 3] = translation
    return {
        "can_bus": can_bus,
        "lidar2ego_translation": np.zeros(3),
        "lidar2ego_rotation": [1.0, 0.0, 0.0, 0.0],
        "ego2global_translation": translation,
        "ego2global_rotation": quaternion,
        "ego_dynamic_state": [float(v) for v in ego[[StateIndex.VX, StateIndex.VY, StateIndex.AX, StateIndex.AY]]],
        "ego2global": ego2global,
        "lidar2ego": np.eye(4),
        "lidar2global": ego2global.copy(),
    }


def _cameras(log_name: str, token: str) -> dict[str, dict[str, Any]]:
    """Placeholder ``cams`` of a frame without images: every channel, with the fields NAVSIM's
    ``Cameras.from_camera_dict`` reads (``data_path``, ``sensor2lidar_rotation`` ``(3, 3)``,
    ``sensor2lidar_translation`` ``(3,)``, ``cam_intrinsic`` ``(3, 3)``, ``distortion`` ``(5,)``). ``data_path``
    names the sensor-blob file a real log would have (absent here); the transforms are identities."""
    return {
        channel: {
            "data_path": f"{log_name}/{channel}/{token}.jpg",
            "sensor2lidar_rotation": np.eye(3),
            "sensor2lidar_translation": np.zeros(3),
            "cam_intrinsic": np.eye(3),
            "distortion": np.zeros(DISTORTION_SIZE),
        }
        for channel in CAMERA_CHANNELS
    }


def _frame_rows(keys: np.ndarray, frames: np.ndarray) -> list[np.ndarray]:
    """Per frame of ``frames``, the row indices ``r`` with ``keys[r] == frame`` (in row order)."""
    order = np.argsort(keys, kind="stable")
    lo = np.searchsorted(keys[order], frames, side="left")
    hi = np.searchsorted(keys[order], frames, side="right")
    return [order[a:b] for a, b in zip(lo, hi, strict=True)]


def openscene_frames(log: LogData, driving_command_fn: DrivingCommandFn | None = None) -> list[dict[str, Any]]:
    """The 2 Hz OpenScene frames of ``log`` (every 10th frame from the first, as :func:`extract_scenes`).

    The driving command is ``driving_command_fn(log, frame)`` (default: the command of the ego's own path,
    :func:`~simulation.datasets.scenes.log_path_command`). No sensor data: ``cams`` holds a placeholder entry
    per camera (:func:`_cameras`) and ``lidar_path`` names the ``sensor_blobs`` file a real log would have, so
    NAVSIM's ``SceneLoader`` builds every scene and agent input with a sensor config that loads no sensor.
    """
    command_fn = log_path_command if driving_command_fn is None else driving_command_fn
    sampled = np.arange(0, log.num_frames, SCENE_STEP)
    box_rows = _frame_rows(log.box_frame, sampled)
    tl_rows = _frame_rows(log.tl_frame, sampled)
    scene_of = log.frame_scene[sampled]
    out: list[dict[str, Any]] = []
    frame_idx = 0  # position of the frame in its scene
    for k, f in enumerate(sampled.tolist()):
        ego, scene, token = log.ego_states[f], int(scene_of[k]), str(log.frame_tokens[f])
        command = np.zeros(len(DrivingCommand), dtype=np.int64)
        command[int(command_fn(log, f))] = 1
        frame_idx = frame_idx + 1 if k > 0 and scene == scene_of[k - 1] else 0
        out.append(
            {
                "token": token,
                "frame_idx": frame_idx,
                "timestamp": int(log.timestamps_us[f]),
                "log_name": log.log_name,
                "log_token": log.log_token,
                "scene_name": str(log.scene_names[scene]),
                "scene_token": str(log.scene_tokens[scene]),
                "map_location": log.map_location,
                "roadblock_ids": [str(r) for r in log.scene_roadblock_ids[scene]],
                "vehicle_name": log.vehicle_name,
                "lidar_path": f"{log.log_name}/MergedPointCloud/{token}.pcd",
                **_poses(ego, float(log.ego_z[f])),
                "traffic_lights": [
                    (int(lc), bool(st == TrafficLightStatus.RED))
                    for lc, st in zip(log.tl_lane_connector[tl_rows[k]], log.tl_status[tl_rows[k]], strict=True)
                ],
                "driving_command": command,
                "cams": _cameras(log.log_name, token),
                "sample_prev": str(log.frame_tokens[sampled[k - 1]]) if k > 0 else None,
                "sample_next": str(log.frame_tokens[sampled[k + 1]]) if k + 1 < len(sampled) else None,
                "anns": _annotations(log, box_rows[k], ego, float(log.ego_z[f])),
            }
        )
    return out


def write_openscene_frames(frames: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Pickle ``frames`` (a list of frame dicts) at ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    with atomic_write(path) as fh:
        pickle.dump(list(frames), fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def write_openscene_log(
    log: LogData, path: str | os.PathLike[str], driving_command_fn: DrivingCommandFn | None = None
) -> Path:
    """Write ``log`` as an OpenScene log pickle at ``path`` (``navsim_logs/<split>/<log_name>.pkl``), atomically.
    See :func:`openscene_frames`. Returns the path."""
    return write_openscene_frames(openscene_frames(log, driving_command_fn), path)
