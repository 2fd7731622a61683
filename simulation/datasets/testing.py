"""A small, consistent :class:`LogData` for tests: :func:`make_log_data`.

The log drives on the map of :mod:`simulation.maps.testing` (``fixture-town``, coordinates shifted by its
UTM origin). In local map metres, with ``t`` the time since the first frame:

* ego (rear axle): eastbound on lane 11 (``y = -2``), ``x = -55 + 4 t + 0.02 t^2`` (so ``v = 4 + 0.04 t``,
  ``a = 0.04``); it crosses junction 201 on connector 111 around ``t = 11 - 14 s``.
* tracks (column ``k`` of ``track_tokens``):
  0 vehicle leading the ego by 15 m on lane 11 (all frames);
  1 vehicle on lane 12, ``x = -40 + 6 t`` (frames with ``x <= 98``);
  2 pedestrian at ``y = 3``, ``x = -30 + 1.2 t`` (frames 100-499);
  3 bicycle northbound on lane 32, ``y = 12 + 3 t`` (frames 0-299);
  4 traffic cone parked at ``(30, -9.5)`` (all frames);
  5 vehicle on lane 22, ``x = 10 + 5 (t - 15)`` (frames 300 onwards).
* traffic lights (every frame): connectors 111 and 112 green until frame 399, yellow 400-439, red after;
  connector 113 (the left turn) always red.
* scenes of equal length (6 by default, 5 s each at 30 s); the route starts at the roadblock (connector)
  under the ego at the scene's first frame and follows ``1 101 2 103 4``; the goal is the last ego pose,
  except for the last scene whose goal is NULL.
* scenario tags: ``following_lane_with_lead`` (agent = track 0) every 20 frames,
  ``starting_straight_traffic_light_intersection_traversal`` at frame 210, and ``near_multiple_vehicles``
  plus ``following_lane_with_lead`` on frame 250 (two tags on one frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simulation.datasets.log_data import LogData
from simulation.maps.testing import FIXTURE_LOCATION, FIXTURE_ORIGIN, write_fixture_maps
from simulation.types import StateIndex, TrackedObjectType, TrafficLightStatus

DT_US = 50_000
START_US = 1_620_000_000_000_000
ROUTE = ("1", "101", "2", "103", "4")
#: ``(type, length, width, height)`` of the fixture tracks.
TRACKS = (
    (TrackedObjectType.VEHICLE, 4.6, 1.9, 1.6),
    (TrackedObjectType.VEHICLE, 4.8, 2.0, 1.7),
    (TrackedObjectType.PEDESTRIAN, 0.6, 0.6, 1.7),
    (TrackedObjectType.BICYCLE, 1.8, 0.7, 1.5),
    (TrackedObjectType.TRAFFIC_CONE, 0.4, 0.4, 0.8),
    (TrackedObjectType.VEHICLE, 4.4, 1.8, 1.5),
)
LIGHT_CONNECTORS = (111, 112, 113)


def fixture_tokens(prefix: int, kind: int, n: int) -> np.ndarray:
    """``(n,)`` distinct 16-hex-char tokens ``prefix | kind | index``."""
    return np.array([f"{prefix:08x}{kind:02x}{i:06x}" for i in range(n)], dtype="<U16")


def _ego(t: np.ndarray) -> np.ndarray:
    states = np.zeros((len(t), len(StateIndex)))
    states[:, StateIndex.X] = -55.0 + 4.0 * t + 0.02 * t**2
    states[:, StateIndex.Y] = -2.0
    states[:, StateIndex.VX] = 4.0 + 0.04 * t
    states[:, StateIndex.AX] = 0.04
    return states


def _track_states(t: np.ndarray, ego_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(F, 6, 7)`` local boxes (AgentIndex columns) and ``(F, 6)`` validity of the fixture tracks."""
    f = len(t)
    frame = np.arange(f)
    boxes = np.zeros((f, len(TRACKS), 7))
    valid = np.zeros((f, len(TRACKS)), dtype=bool)
    motion: list[tuple[Any, ...]] = [
        (ego_x + 15.0, -2.0, 0.0, 4.0 + 0.04 * t, 0.0, np.ones(f, bool)),
        (-40.0 + 6.0 * t, -6.0, 0.0, 6.0, 0.0, -40.0 + 6.0 * t <= 98.0),
        (-30.0 + 1.2 * t, 3.0, 0.0, 1.2, 0.0, (frame >= 100) & (frame < 500)),
        (6.0, 12.0 + 3.0 * t, np.pi / 2.0, 0.0, 3.0, frame < 300),
        (30.0, -9.5, 0.0, 0.0, 0.0, np.ones(f, bool)),
        (10.0 + 5.0 * (t - 15.0), -6.0, 0.0, 5.0, 0.0, frame >= 300),
    ]
    for k, (x, y, yaw, vx, vy, ok) in enumerate(motion):
        for col, value in enumerate((x, y, yaw, vx, vy)):
            boxes[:, k, col] = value
        boxes[:, k, 5], boxes[:, k, 6] = TRACKS[k][1], TRACKS[k][2]
        valid[:, k] = ok
    return boxes, valid


def _route_at(x: float) -> list[str]:
    """Route from the roadblock (connector) under a point of lane 11 / 21 / 41 at local ``x``."""
    start = 0 if x < -10.0 else 1 if x < 10.0 else 2 if x < 50.0 else 3 if x < 54.0 else 4
    return list(ROUTE[start:])


def _lights(f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = np.repeat(np.arange(f), len(LIGHT_CONNECTORS))
    connector = np.tile(np.array(LIGHT_CONNECTORS, dtype=np.int64), f)
    status = np.full(len(frame), TrafficLightStatus.RED, dtype=np.int64)
    straight = connector != 113
    status[straight & (frame < 400)] = TrafficLightStatus.GREEN
    status[straight & (frame >= 400) & (frame < 440)] = TrafficLightStatus.YELLOW
    return frame, connector, status


def _tags(f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lead = list(range(0, f, 20))
    frames = lead + [210, 250, 250]
    types = ["following_lane_with_lead"] * len(lead) + [
        "starting_straight_traffic_light_intersection_traversal",
        "near_multiple_vehicles",
        "following_lane_with_lead",
    ]
    tracks = [0] * len(lead) + [-1, -1, 0]
    keep = np.array(frames) < f
    tag_type = np.empty(int(keep.sum()), dtype=object)
    tag_type[:] = [t for t, k in zip(types, keep) if k]
    return np.array(frames, dtype=np.int64)[keep], tag_type, np.array(tracks, dtype=np.int64)[keep]


def make_log_data(
    duration_s: float = 30.0,
    num_scenes: int = 6,
    log_name: str = "2021.05.12.22.00.38_veh-35_00001_00601",
    origin: tuple[float, float] = FIXTURE_ORIGIN,
) -> LogData:
    """The fixture log described in the module docstring: ``duration_s`` at 20 Hz, global coordinates."""
    f = int(round(duration_s * 20))
    t = np.arange(f) * (DT_US * 1e-6)
    shift = np.asarray(origin, dtype=np.float64)
    ego = _ego(t)
    boxes, valid = _track_states(t, ego[:, StateIndex.X])
    ego[:, :2] += shift
    bf, bt = np.nonzero(valid)
    box_states = boxes[bf, bt]
    box_states[:, :2] += shift
    scene_len = int(np.ceil(f / num_scenes))
    frame_scene = np.arange(f, dtype=np.int64) // scene_len
    goal = np.repeat(ego[-1:, :3], num_scenes, 0)
    goal[-1] = np.nan
    heights = np.array([h for *_, h in TRACKS])
    tl_frame, tl_lc, tl_status = _lights(f)
    tag_frame, tag_type, tag_track = _tags(f)
    return LogData(
        log_name=log_name,
        log_token=fixture_tokens(0x5EED0001, 0, 1)[0],
        map_location=FIXTURE_LOCATION,
        vehicle_name="fixture-ego",
        date="2021-05-12",
        frame_tokens=fixture_tokens(0x5EED0001, 1, f),
        ego_pose_tokens=fixture_tokens(0x5EED0001, 2, f),
        timestamps_us=START_US + np.arange(f, dtype=np.int64) * DT_US,
        frame_scene=frame_scene,
        ego_states=ego,
        ego_z=np.zeros(f),
        track_tokens=fixture_tokens(0x5EED0001, 3, len(TRACKS)),
        track_types=np.array([int(k[0]) for k in TRACKS], dtype=np.int64),
        track_sizes=np.array([[w, length, h] for _, length, w, h in TRACKS]),
        box_tokens=fixture_tokens(0x5EED0001, 4, len(bf)),
        box_frame=bf.astype(np.int64),
        box_track=bt.astype(np.int64),
        box_states=box_states,
        box_z=heights[bt] / 2.0,
        box_height=heights[bt],
        box_confidence=np.ones(len(bf)),
        tl_frame=tl_frame,
        tl_lane_connector=tl_lc,
        tl_status=tl_status,
        scene_tokens=fixture_tokens(0x5EED0001, 5, num_scenes),
        scene_names=np.array([f"scene-{k:04d}" for k in range(num_scenes)]),
        scene_goal=goal,
        scene_roadblock_ids=[_route_at(float(ego[min(k * scene_len, f - 1), 0] - shift[0])) for k in range(num_scenes)],
        tag_frame=tag_frame,
        tag_type=tag_type,
        tag_track=tag_track,
    )


def write_fixture_data(
    root: Path, split: str = "synth_test", duration_s: float = 20.0, num_scenes: int = 4
) -> tuple[Path, Path]:
    """The fixture maps in ``root/maps`` and one :func:`make_log_data` log in ``root/logs/splits/<split>/``.

    Returns ``(data_root, maps_root)``, a ``NUPLAN_DATA_ROOT`` / ``NUPLAN_MAPS_ROOT`` pair for small benchmarks.
    """
    from simulation.datasets.nuplan_writer import write_log

    write_fixture_maps(root / "maps")
    log = make_log_data(duration_s=duration_s, num_scenes=num_scenes)
    write_log(log, root / "logs" / "splits" / split / f"{log.log_name}.db")
    return root / "logs", root / "maps"
