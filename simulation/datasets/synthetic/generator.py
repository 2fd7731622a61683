"""Assemble synthetic towns and drives into nuPlan containers (:class:`MapData`, :class:`LogData`).

Everything is derived from ``(seed, town index)`` and ``(seed, log index)`` through numpy
``SeedSequence`` s, so a log can be generated alone, in any process, and comes out identical.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from simulation.datasets.log_data import LogData
from simulation.datasets.synthetic.map_layers import location_name, synth_map_version, town_origin, town_to_map
from simulation.datasets.synthetic.network import Town, TownConfig, TurnType, build_town
from simulation.datasets.synthetic.tags import TAG_STRIDE, difficulty, frame_tags
from simulation.datasets.synthetic.world import BICYCLE, DT, TRUCK, DriveConfig, DriveRecord, simulate_drive
from simulation.maps.layers import MapData
from simulation.types import StateIndex

SPLITS = ("synth_train", "synth_val", "synth_test")
#: Split of log ``i`` is ``SPLITS[SPLIT_PATTERN[i % 7]]``: 3 / 1 / 3 of 7 (43 / 14 / 43 %), val / test logs early
#: on (the demo preset's 14 logs: 6 / 2 / 6). The test share is large because the test split of a small city
#: must hold every scenario type in useful numbers (with 4 test logs of 14, 7-9 of the 17 types reached 30 scenes).
SPLIT_PATTERN = (0, 2, 0, 1, 2, 0, 2)
#: The situation of the k-th log of each split, in turn, so that every split (the demo preset's 6 test logs
#: included) gets each: (lead placed ahead of the ego (:attr:`DriveConfig.ego_lead`), the ego's first light
#: turns red as it arrives (:attr:`DriveConfig.red_on_arrival`), congestion). A lead and a red light together
#: put the ego behind a vehicle stopping at the light. Drives that are not congested draw their density.
SITUATIONS = (
    (TRUCK, False, False),
    (-1, True, False),
    (BICYCLE, False, False),
    (-1, False, True),
    (TRUCK, True, False),
    (BICYCLE, True, False),
)
#: Vehicles per km of lane of a congested drive, and crossers per crosswalk per minute where the ego waits at a
#: light (pedestrians cross in front of it).
CONGESTED_PER_KM = 45.0
BUSY_CROSSWALKS = (4.0, 6.0)
#: Index of the first top-up log (:func:`top_up_spec`): planned logs are numbered below it.
TOP_UP_BASE = 90_000
#: The drive a top-up log of the test split gets to add scenes of a scenario type that is short there:
#: type -> (lead kind placed ahead (-1 none), red on arrival, vehicles per km (``None``: congested),
#: preferred :class:`TurnType` at junctions (-1 none)).
TYPE_DRIVES: dict[str, tuple[int, bool, float | None, int]] = {
    "following_lane_with_lead": (-1, False, 28.0, -1),
    "stopping_with_lead": (TRUCK, False, 20.0, -1),
    "stopping_at_traffic_light_with_lead": (TRUCK, True, 20.0, -1),
    "stopping_at_traffic_light_without_lead": (-1, True, 4.0, -1),
    "stationary_at_traffic_light_with_lead": (TRUCK, True, 20.0, -1),
    "stationary_at_traffic_light_without_lead": (-1, True, 4.0, -1),
    "starting_left_turn": (-1, False, 12.0, int(TurnType.LEFT)),
    "starting_right_turn": (-1, False, 12.0, int(TurnType.RIGHT)),
    "starting_straight_traffic_light_intersection_traversal": (-1, True, 12.0, int(TurnType.STRAIGHT)),
    "changing_lane": (BICYCLE, False, 20.0, -1),
    "waiting_for_pedestrian_to_cross": (-1, True, 12.0, -1),
    "stationary_in_traffic": (-1, False, None, -1),
    "behind_long_vehicle": (TRUCK, False, 12.0, -1),
    "behind_bike": (BICYCLE, False, 12.0, -1),
    "near_multiple_vehicles": (-1, True, 38.0, -1),
    "high_magnitude_speed": (-1, False, 4.0, -1),
    "low_magnitude_speed": (-1, False, None, -1),
}
SCENE_FRAMES = 160  # 8 s scenes: a 60 s log has 8, so nuPlan's scenario extraction keeps 16-48 s
LOG_START_US = 1_704_103_200_000_000  # 2024-01-01 10:00 UTC
TL_RADIUS = 150.0  # lights of junctions within this distance of the ego are reported


@dataclass(frozen=True)
class LogSpec:
    """What one log is: its name, town, split, seed and drive parameters."""

    name: str
    index: int
    town: int
    split: str
    seed: int
    drive: DriveConfig


def town_config(seed: int, town_index: int) -> TownConfig:
    """Randomised town parameters (grid size, spacing, bends) of town ``town_index``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, town_index]))
    grid = (int(rng.integers(3, 5)), int(rng.integers(3, 5)))
    lo = float(rng.uniform(90.0, 120.0))
    return TownConfig(
        grid=grid,
        spacing=(lo, lo + 50.0),
        jitter=float(rng.uniform(4.0, 12.0)),
        bend=float(rng.uniform(0.15, 0.3)),
        wiggle=float(rng.uniform(0.08, 0.14) * lo),
    )


@lru_cache(maxsize=8)
def make_town(seed: int, town_index: int) -> Town:
    """The road network of town ``town_index`` (cached per process)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, town_index]))
    return build_town(town_config(seed, town_index), rng)


def make_map(seed: int, town_index: int) -> MapData:
    return town_to_map(make_town(seed, town_index), town_index, synth_map_version(seed))


def plan_logs(
    num_logs: int, num_towns: int, seed: int, duration_s: float, disjoint_test: bool = False
) -> list[LogSpec]:
    """Log specs: towns round-robin, splits 3 / 1 / 3 by log (:data:`SPLIT_PATTERN`; test logs on the
    last town if ``disjoint_test``), traffic density varying from nearly empty roads to congestion, the
    situations of :data:`SITUATIONS` in turn within each split."""
    specs = []
    ordinal: Counter = Counter()  # logs of each split so far
    for i in range(num_logs):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, i]))
        split = SPLITS[SPLIT_PATTERN[i % len(SPLIT_PATTERN)]]
        town = i % num_towns
        if disjoint_test and num_towns > 1:
            town = num_towns - 1 if split == SPLITS[2] else i % (num_towns - 1)
        density = float(rng.choice([4.0, 12.0, 20.0, 28.0, 38.0], p=[0.15, 0.25, 0.3, 0.2, 0.1]))
        peds = float(rng.uniform(2.0, 5.0))
        lead, red, congested = SITUATIONS[ordinal[split] % len(SITUATIONS)]
        drive = DriveConfig(
            duration_s=duration_s,
            vehicles_per_km=CONGESTED_PER_KM if congested else density,
            pedestrian_density=float(rng.uniform(*BUSY_CROSSWALKS)) if red else peds,
            parked_share=float(rng.uniform(0.1, 0.4)),
            ego_lead=lead,
            red_on_arrival=red,
        )
        ordinal[split] += 1
        specs.append(LogSpec(f"synth-{seed}_{location_name(town)}_{i:05d}", i, town, split, seed, drive))
    return specs


def top_up_spec(
    k: int, short_type: str, num_towns: int, seed: int, duration_s: float, disjoint_test: bool = False
) -> LogSpec:
    """The ``k``-th top-up log of the test split: a drive made to hold ``short_type`` (:data:`TYPE_DRIVES`),
    on the towns in turn (the last one with ``disjoint_test``). Its index is ``TOP_UP_BASE + k``."""
    index = TOP_UP_BASE + k
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, index]))
    town = num_towns - 1 if disjoint_test and num_towns > 1 else k % num_towns
    lead, red, density, turn = TYPE_DRIVES[short_type]
    drive = DriveConfig(
        duration_s=duration_s,
        vehicles_per_km=CONGESTED_PER_KM if density is None else density,
        pedestrian_density=float(rng.uniform(*BUSY_CROSSWALKS)) if red else float(rng.uniform(2.0, 5.0)),
        parked_share=float(rng.uniform(0.1, 0.4)),
        ego_lead=lead,
        red_on_arrival=red,
        prefer_turn=turn,
    )
    return LogSpec(f"synth-{seed}_{location_name(town)}_{index:05d}", index, town, SPLITS[2], seed, drive)


def _tokens(prefix: int, kind: int, n: int) -> np.ndarray:
    """``(n,)`` unique 16-hex-char tokens ``<prefix:8><kind:2><index:6>``."""
    head = np.frombuffer(f"{prefix:08x}{kind:02x}".encode(), dtype="S1")
    digits = (np.arange(n, dtype=np.int64)[:, None] >> (4 * np.arange(5, -1, -1))[None, :]) & 15
    chars = np.concatenate([np.broadcast_to(head, (n, 10)), _HEX[digits]], 1)
    return np.ascontiguousarray(chars).view("S16").ravel().astype("<U16")


_HEX = np.frombuffer(b"0123456789abcdef", dtype="S1")


def ego_states(record: DriveRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(F, 11)`` logged ego states (rear axle, ego-frame dynamics) plus speed and acceleration ``(F,)``."""
    pose = record.ego_pose
    v = np.array([f.v for f in record.ego_frames])
    a = np.array([f.a for f in record.ego_frames])
    heading = np.unwrap(pose[:, 2])
    yaw_rate = np.gradient(heading, DT) if len(pose) > 1 else np.zeros(len(pose))
    states = np.zeros((len(pose), len(StateIndex)))
    states[:, : StateIndex.HEADING + 1] = pose
    states[:, StateIndex.HEADING] = np.angle(np.exp(1j * pose[:, 2]))
    states[:, StateIndex.VX] = v
    states[:, StateIndex.AX] = a
    states[:, StateIndex.AY] = v * yaw_rate
    states[:, StateIndex.YAW_RATE] = yaw_rate
    states[:, StateIndex.YAW_ACCEL] = np.gradient(yaw_rate, DT) if len(pose) > 1 else 0.0
    return states, v, a


def record_to_log(town: Town, record: DriveRecord, spec: LogSpec) -> tuple[LogData, Counter]:
    """Convert a drive to a :class:`LogData` (global UTM frame) plus its tag / difficulty counters."""
    origin = town_origin(spec.town)
    prefix = zlib.crc32(spec.name.encode())
    n_frames = len(record.ego_pose)
    states, v, a = ego_states(record)
    states[:, :2] += origin
    track_cols, track_of_col, bf, bc, box_states = _tracks_and_boxes(record, origin)
    tl_f, tl_c = _visible_lights(town, record)
    tags = frame_tags(town, record, v, a)
    n_scenes = max(int(np.ceil(n_frames / SCENE_FRAMES)), 1)
    scene_routes = [_scene_route(record, k * SCENE_FRAMES) for k in range(n_scenes)]
    goal = np.repeat(states[-1:, :3], n_scenes, 0)
    log = LogData(
        log_name=spec.name,
        log_token=_tokens(prefix, 0, 1)[0],
        map_location=location_name(spec.town),
        map_version=synth_map_version(spec.seed),
        vehicle_name="synth-ego",
        date="2024-01-01",
        frame_tokens=_tokens(prefix, 1, n_frames),
        ego_pose_tokens=_tokens(prefix, 2, n_frames),
        timestamps_us=LOG_START_US + spec.index * 3_600_000_000 + np.arange(n_frames, dtype=np.int64) * 50_000,
        frame_scene=np.arange(n_frames, dtype=np.int64) // SCENE_FRAMES,
        ego_states=states,
        ego_z=np.zeros(n_frames),
        track_tokens=_tokens(prefix, 3, len(track_cols)),
        track_types=record.types[track_cols].astype(np.int64),
        track_sizes=np.stack(
            [record.boxes[:, track_cols, 6].max(0), record.boxes[:, track_cols, 5].max(0), record.heights[track_cols]],
            -1,
        ),
        box_tokens=_tokens(prefix, 4, len(bf)),
        box_frame=bf.astype(np.int64),
        box_track=track_of_col[bc].astype(np.int64),
        box_states=box_states,
        box_z=record.heights[bc] / 2.0,
        box_height=record.heights[bc].astype(np.float64),
        box_confidence=np.ones(len(bf)),
        tl_frame=tl_f,
        tl_lane_connector=record.light_fids[tl_c].astype(np.int64),
        tl_status=record.light[tl_f, tl_c].astype(np.int64),
        scene_tokens=_tokens(prefix, 5, n_scenes),
        scene_names=np.array([f"scene-{k:04d}" for k in range(n_scenes)]),
        scene_goal=goal,
        scene_roadblock_ids=scene_routes,
        tag_frame=np.array([t[0] for t in tags], dtype=np.int64),
        tag_type=np.array([t[1] for t in tags], dtype=object),
        tag_track=np.array([track_of_col[t[2]] if t[2] >= 0 else -1 for t in tags], dtype=np.int64),
    )
    return log, _log_stats(town, record, tags, v, len(bf))


def _tracks_and_boxes(
    record: DriveRecord, origin: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The agents a drive logs: columns of ``record`` seen at least once ``(K,)``, the track of each column
    ``(A,)`` (-1: never seen), and frame ``(M,)``, column ``(M,)`` and global UTM box ``(M, 7)`` of every valid
    box (``origin``: ``(2,)`` the town's UTM offset)."""
    track_cols = np.flatnonzero(record.valid.any(0))
    track_of_col = np.full(record.valid.shape[1], -1)
    track_of_col[track_cols] = np.arange(len(track_cols))
    bf, bc = np.nonzero(record.valid)
    box_states = record.boxes[bf, bc].copy()
    box_states[:, :2] += origin
    return track_cols, track_of_col, bf, bc, box_states


def _log_stats(
    town: Town, record: DriveRecord, tags: list[tuple[int, str, int]], v: np.ndarray, num_boxes: int
) -> Counter:
    """Tag and difficulty counters of a drive, with its frames, boxes and metres driven (``v``: ``(T,)`` ego
    speeds)."""
    stats: Counter = Counter()
    stats.update(f"tag:{t[1]}" for t in tags)
    stats.update(difficulty(town, record))
    stats["frames"] = len(record.ego_pose)
    stats["boxes"] = num_boxes
    stats["metres"] = int(round(float(np.sum(v) * DT)))
    return stats


def _visible_lights(town: Town, record: DriveRecord) -> tuple[np.ndarray, np.ndarray]:
    """(frame, light column) pairs of lights at junctions within :data:`TL_RADIUS` of the ego."""
    if len(record.light_fids) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    centre = np.array([town.junctions[town.paths[int(f)].junction].centre for f in record.light_fids])
    dist = np.linalg.norm(record.ego_pose[:, None, :2] - centre[None], axis=-1)
    f, c = np.nonzero(dist < TL_RADIUS)
    return f.astype(np.int64), c.astype(np.int64)


def _scene_route(record: DriveRecord, frame: int) -> list[str]:
    """Roadblock / connector ids from the block under the ego at ``frame`` to the end of the planned route.

    ``route_blocks`` starts with the runs of ``frame_blocks`` (consecutive duplicates removed), so the
    block at ``frame`` is the last run up to it.
    """
    driven = record.frame_blocks[: frame + 1]
    runs = 1 + int(np.count_nonzero(np.diff(driven))) if len(driven) else 1
    return [str(b) for b in record.route_blocks[runs - 1 :]]


def generate_log(spec: LogSpec) -> tuple[LogData, Counter]:
    """Simulate and assemble one log."""
    town = make_town(spec.seed, spec.town)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 3, spec.index]))
    record = simulate_drive(town, spec.drive, rng)
    return record_to_log(town, record, spec)


__all__ = [
    "LogSpec",
    "SPLITS",
    "TAG_STRIDE",
    "TOP_UP_BASE",
    "TYPE_DRIVES",
    "generate_log",
    "make_map",
    "make_town",
    "plan_logs",
    "record_to_log",
    "top_up_spec",
]
