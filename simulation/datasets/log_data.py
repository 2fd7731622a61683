"""In-memory form of one nuPlan ``.db`` log: the contract between the DB reader/writer, scene
extraction and the synthetic city generator.

Columns mirror the nuPlan schema (specs/nuplan.md §1) but are stored as arrays, one per column, so a
whole table is read or written with one query. Tokens are 16-char lowercase hex strings (8-byte BLOBs
in the DB). Frames are the 20 Hz ``lidar_pc`` rows, sorted by timestamp; every frame has exactly one
ego pose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LogData:
    """One log.

    Log:
        log_name, log_token, map_location (``log.map_version``: the map location name), vehicle_name, date.
        map_version: version of the map the log was recorded on, when the log says (``""`` otherwise: nuPlan's
            logs name only the location; diffplan's synthetic logs write ``<location>@<version>`` in
            ``log.location``).

    Frames (``F`` rows of ``lidar_pc`` joined with ``ego_pose``):
        frame_tokens: ``(F,)`` str lidar_pc tokens.
        ego_pose_tokens: ``(F,)`` str.
        timestamps_us: ``(F,)`` int64 (the lidar_pc timestamp; ego_pose gets the same).
        frame_scene: ``(F,)`` int64 index into the scene arrays.
        ego_states: ``(F, 11)`` by :class:`~simulation.types.StateIndex`: global rear-axle pose,
            ego-frame velocity / acceleration, yaw rate from ``angular_rate_z`` (steering columns 0).
        ego_z: ``(F,)`` float64.

    Tracks (``N`` rows of ``track`` with their ``category``):
        track_tokens: ``(N,)`` str.
        track_types: ``(N,)`` int64 :class:`~simulation.types.TrackedObjectType`.
        track_sizes: ``(N, 3)`` width, length, height.

    Boxes (``M`` rows of ``lidar_box``):
        box_tokens: ``(M,)`` str.
        box_frame: ``(M,)`` int64 frame index. box_track: ``(M,)`` int64 track index.
        box_states: ``(M, 7)`` by :class:`~simulation.types.AgentIndex` (centre x, y, yaw, global vx, vy,
            length, width). box_z: ``(M,)``; box_height: ``(M,)``; box_confidence: ``(M,)``.

    Traffic lights (``K`` rows of ``traffic_light_status``):
        tl_frame: ``(K,)`` int64; tl_lane_connector: ``(K,)`` int64 map fid;
        tl_status: ``(K,)`` int64 :class:`~simulation.types.TrafficLightStatus`.

    Scenes (``S`` rows of ``scene``):
        scene_tokens, scene_names: ``(S,)`` str; scene_goal: ``(S, 3)`` global goal pose (NaN if NULL);
        scene_roadblock_ids: list of ``S`` lists of roadblock id strings.

    Scenario tags (``Q`` rows of ``scenario_tag``):
        tag_frame: ``(Q,)`` int64; tag_type: ``(Q,)`` str; tag_track: ``(Q,)`` int64 (-1 when NULL).
    """

    log_name: str
    log_token: str
    map_location: str
    vehicle_name: str
    date: str
    frame_tokens: np.ndarray
    ego_pose_tokens: np.ndarray
    timestamps_us: np.ndarray
    frame_scene: np.ndarray
    ego_states: np.ndarray
    ego_z: np.ndarray
    track_tokens: np.ndarray
    track_types: np.ndarray
    track_sizes: np.ndarray
    box_tokens: np.ndarray
    box_frame: np.ndarray
    box_track: np.ndarray
    box_states: np.ndarray
    box_z: np.ndarray
    box_height: np.ndarray
    box_confidence: np.ndarray
    tl_frame: np.ndarray
    tl_lane_connector: np.ndarray
    tl_status: np.ndarray
    scene_tokens: np.ndarray
    scene_names: np.ndarray
    scene_goal: np.ndarray
    scene_roadblock_ids: list[list[str]]
    tag_frame: np.ndarray
    tag_type: np.ndarray
    tag_track: np.ndarray
    map_version: str = ""
    source: str = field(default="", compare=False)  # file the log was read from, for error messages

    @property
    def num_frames(self) -> int:
        return int(self.frame_tokens.shape[0])
