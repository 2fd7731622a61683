"""Scenes and scenarios cut out of logs.

* :func:`extract_scenes`: NAVSIM scenes (specs/navsim.md §4.2). The 20 Hz ``lidar_pc`` frames are sampled at
  2 Hz (every 10th frame from the first); windows of ``num_history_frames + num_future_frames`` slide over
  them with step ``frame_interval`` (``None``: non-overlapping); short windows, and with ``has_route`` windows
  whose current frame has no route, are dropped. The current frame is index ``num_history_frames - 1`` and
  its token is the scene token.
* :func:`extract_scenarios`: nuPlan scenarios (specs/nuplan.md "Scenario extraction"). Candidates are the
  frames of the valid scenes (scenes sorted by name, first two and last two dropped) with their scenario tag
  (``MAX(type)`` when a frame has several, ``unknown`` when it has none); each becomes a 15 s window starting
  3 s before the tagged frame, every 2nd frame (10 Hz, 151 iterations), with 2 s of history before it. Its route
  and mission goal are those of the tagged frame's scene (nuPlan's ``get_route_roadblock_ids`` and
  ``get_mission_goal`` query the scenario's token, the tagged frame), not of the window's first frame.

Splits of logs, and extraction over a split, are in :mod:`simulation.datasets.splits`.

Ego states are those of nuPlan's scenario API (``get_ego_state_for_lidarpc_token_from_db``, and NAVSIM's
``ego_status_to_ego_state`` for its scenes): pose, velocity and acceleration from the log, yaw rate, yaw
acceleration, steering angle and steering rate 0 (:func:`scenario_ego_states`). A closed loop therefore starts
with yaw rate 0, as nuPlan's and NAVSIM's do; a planner's ego status (velocity, acceleration) is unchanged.

The driving command of a scene follows OpenScene's rule: the point 20 m ahead along the route centre line,
in the centre line's frame at the ego; ``y >= 2 m`` is LEFT, ``y <= -2 m`` RIGHT, else STRAIGHT; UNKNOWN
without a route. With a :class:`~simulation.maps.api.MapAPI` the centre line is the route's; without a map
(the default) it is the path the ego drives in the log, which is the route the expert took.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from simulation.commands import command_from_path
from simulation.datasets.log_data import LogData
from simulation.maps.protocol import MapProtocol
from simulation.types import (
    Agents,
    DrivingCommand,
    EgoStates,
    Scenario,
    Scene,
    StateIndex,
    TrafficLights,
    TrafficLightStatus,
)

logger = logging.getLogger(__name__)

FRAME_RATE_HZ = 20.0
SCENE_STEP = 10  # 20 Hz -> 2 Hz

#: ``(log, frame) -> DrivingCommand``; ``frame`` indexes the log's 20 Hz frames.
DrivingCommandFn = Callable[[LogData, int], int]


# --------------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneFilter:
    """Which NAVSIM scenes to cut (NAVSIM's ``SceneFilter``).

    Args:
        num_history_frames: frames up to and including the current one (2 Hz).
        num_future_frames: frames after the current one.
        frame_interval: step between window starts in 2 Hz frames; ``None`` for non-overlapping windows.
        has_route: drop scenes whose current frame has no route roadblocks.
        max_scenes: keep at most this many (in log order).
        log_names: keep only these logs.
        tokens: keep only these scene tokens.
    """

    num_history_frames: int = 4
    num_future_frames: int = 10
    frame_interval: int | None = None
    has_route: bool = True
    max_scenes: int | None = None
    log_names: Sequence[str] | None = None
    tokens: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.num_history_frames < 1 or self.num_future_frames < 0:
            raise ValueError(
                f"SceneFilter needs num_history_frames >= 1 and num_future_frames >= 0, got "
                f"{self.num_history_frames} and {self.num_future_frames}"
            )
        if self.frame_interval is not None and self.frame_interval < 1:
            raise ValueError(f"SceneFilter.frame_interval must be >= 1 or None, got {self.frame_interval}")

    @property
    def num_frames(self) -> int:
        return self.num_history_frames + self.num_future_frames

    @property
    def step(self) -> int:
        return self.num_frames if self.frame_interval is None else self.frame_interval


@dataclass(frozen=True)
class ScenarioFilter:
    """Which nuPlan scenarios to cut (the parts of nuPlan's ``ScenarioFilter`` diffplan uses).

    Args:
        scenario_types: keep only these types; ``None`` keeps every tagged type.
        include_unknown: also make scenarios from untagged frames (type ``unknown``).
        duration_s / offset_s: window length and start relative to the tagged frame.
        subsample_ratio: fraction of the 20 Hz frames kept (0.5: 10 Hz).
        history_s: history before the window's first frame.
        timestamp_threshold_s: minimum time between the initial frames of two scenarios of one type
            (nuPlan's ``timestamp_threshold_s``); ``None`` keeps every candidate.
        remove_invalid_goals: drop scenarios whose scene has no goal.
        num_scenarios_per_type / limit_total_scenarios: caps, applied in log order.
        tokens: keep only these scenario tokens (the tagged frame's token).
    """

    scenario_types: Sequence[str] | None = None
    include_unknown: bool = False
    duration_s: float = 15.0
    offset_s: float = -3.0
    subsample_ratio: float = 0.5
    history_s: float = 2.0
    timestamp_threshold_s: float | None = 15.0
    remove_invalid_goals: bool = False
    num_scenarios_per_type: int | None = None
    limit_total_scenarios: int | None = None
    tokens: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.subsample_ratio <= 1.0:
            raise ValueError(f"ScenarioFilter.subsample_ratio must be in (0, 1], got {self.subsample_ratio}")
        if self.duration_s <= 0.0 or self.history_s < 0.0:
            raise ValueError("ScenarioFilter needs duration_s > 0 and history_s >= 0")


# --------------------------------------------------------------------------------------------------
# Windows of a log
# --------------------------------------------------------------------------------------------------


def _agents(log: LogData, frames: np.ndarray) -> Agents:
    """Agents of the log's frames ``frames`` (20 Hz indices), one column per track seen in them."""
    pos = np.full(log.num_frames, -1, dtype=np.int64)
    pos[frames] = np.arange(len(frames))
    row = pos[log.box_frame] if len(log.box_frame) else np.zeros(0, dtype=np.int64)
    sel = np.flatnonzero(row >= 0)
    tracks = np.unique(log.box_track[sel])
    if len(tracks) == 0:
        return Agents.empty(len(frames))
    col = np.searchsorted(tracks, log.box_track[sel])
    boxes = np.zeros((len(frames), len(tracks), log.box_states.shape[1]))
    valid = np.zeros((len(frames), len(tracks)), dtype=bool)
    boxes[row[sel], col] = log.box_states[sel]
    valid[row[sel], col] = True
    return Agents(
        boxes=boxes,
        types=log.track_types[tracks].astype(np.int64),
        track_ids=np.asarray(log.track_tokens)[tracks].astype("<U16"),
        valid=valid,
    )


def _traffic_lights(log: LogData, frames: np.ndarray) -> TrafficLights:
    pos = np.full(log.num_frames, -1, dtype=np.int64)
    pos[frames] = np.arange(len(frames))
    row = pos[log.tl_frame] if len(log.tl_frame) else np.zeros(0, dtype=np.int64)
    sel = np.flatnonzero(row >= 0)
    if len(sel) == 0:
        return TrafficLights.empty(len(frames))
    ids, col = np.unique(log.tl_lane_connector[sel], return_inverse=True)
    status = np.full((len(frames), len(ids)), TrafficLightStatus.UNKNOWN, dtype=np.int8)
    status[row[sel], col.reshape(-1)] = log.tl_status[sel]
    return TrafficLights(lane_connector_ids=np.array([str(int(i)) for i in ids]), status=status)


#: Columns nuPlan's and NAVSIM's scenario APIs never fill from a log: their ego states are built with 0 there.
UNLOGGED_EGO_COLUMNS = (StateIndex.STEERING_ANGLE, StateIndex.STEERING_RATE, StateIndex.YAW_RATE, StateIndex.YAW_ACCEL)


def scenario_ego_states(states: np.ndarray) -> np.ndarray:
    """Logged ego states ``(..., 11)`` as nuPlan's scenario API reports them: a copy with
    :data:`UNLOGGED_EGO_COLUMNS` (steering angle and rate, yaw rate and acceleration) set to 0."""
    out = np.array(states, dtype=np.float64, copy=True)
    out[..., list(UNLOGGED_EGO_COLUMNS)] = 0.0
    return out


def _ego(log: LogData, frames: np.ndarray) -> EgoStates:
    return EgoStates(scenario_ego_states(log.ego_states[frames]), log.timestamps_us[frames].astype(np.int64))


def _goal(log: LogData, scene: int) -> np.ndarray | None:
    goal = np.asarray(log.scene_goal[scene], dtype=np.float64)
    return None if not np.isfinite(goal).all() else goal.copy()


def _route(log: LogData, frame: int) -> tuple[str, ...]:
    return tuple(str(r) for r in log.scene_roadblock_ids[int(log.frame_scene[frame])])


# --------------------------------------------------------------------------------------------------
# Driving command
# --------------------------------------------------------------------------------------------------


def log_path_command(log: LogData, frame: int) -> DrivingCommand:
    """Driving command from the ego's own path in the log (the map-free default)."""
    if not _route(log, frame):
        return DrivingCommand.UNKNOWN
    xy = log.ego_states[frame:, :2]
    return command_from_path(log.ego_states[frame, :3], xy)


def route_command(map_api: MapProtocol) -> DrivingCommandFn:
    """Driving command from the route centre line of ``map_api`` (OpenScene's own rule)."""

    def command(log: LogData, frame: int) -> DrivingCommand:
        route = _route(log, frame)
        if not route:
            return DrivingCommand.UNKNOWN
        pose = log.ego_states[frame, :3]
        try:
            line = map_api.route_centerline(list(route), pose)
        except (KeyError, ValueError) as exc:
            logger.debug("%s: no route centre line at frame %d (%s)", log.log_name, frame, exc)
            return DrivingCommand.UNKNOWN
        return command_from_path(pose, line)

    return command


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


def scene_at(
    log: LogData, frames: np.ndarray, current_index: int, driving_command_fn: DrivingCommandFn | None = None
) -> Scene:
    """The :class:`Scene` over the log's frames ``frames`` (20 Hz indices) with its current frame at
    ``frames[current_index]``."""
    frames = np.asarray(frames, dtype=np.int64)
    current = int(frames[current_index])
    command_fn = log_path_command if driving_command_fn is None else driving_command_fn
    return Scene(
        log_name=log.log_name,
        token=str(log.frame_tokens[current]),
        map_name=log.map_location,
        frame_tokens=np.asarray(log.frame_tokens)[frames],
        timestamps_us=log.timestamps_us[frames].astype(np.int64),
        ego=_ego(log, frames),
        agents=_agents(log, frames),
        traffic_lights=_traffic_lights(log, frames),
        route_roadblock_ids=_route(log, current),
        current_index=int(current_index),
        driving_command=int(command_fn(log, current)),
        goal=_goal(log, int(log.frame_scene[current])),
    )


def extract_scenes(
    log: LogData, scene_filter: SceneFilter | None = None, driving_command_fn: DrivingCommandFn | None = None
) -> list[Scene]:
    """NAVSIM scenes of ``log`` (see the module docstring)."""
    sf = SceneFilter() if scene_filter is None else scene_filter
    if sf.log_names is not None and log.log_name not in set(sf.log_names):
        return []
    sampled = np.arange(0, log.num_frames, SCENE_STEP)
    tokens = None if sf.tokens is None else set(sf.tokens)
    scenes: list[Scene] = []
    for start in range(0, len(sampled) - sf.num_frames + 1, sf.step):
        frames = sampled[start : start + sf.num_frames]
        current = int(frames[sf.num_history_frames - 1])
        if sf.has_route and not _route(log, current):
            continue
        if tokens is not None and str(log.frame_tokens[current]) not in tokens:
            continue
        scenes.append(scene_at(log, frames, sf.num_history_frames - 1, driving_command_fn))
        if sf.max_scenes is not None and len(scenes) >= sf.max_scenes:
            break
    return scenes


def frame_scenario_types(log: LogData) -> np.ndarray:
    """``(F,)`` scenario type of each frame: the greatest of its tags (nuPlan's ``MAX(type)``), else ``unknown``."""
    types = np.full(len(log.frame_tokens), "unknown", dtype=object)
    if len(log.tag_frame):
        order = np.lexsort((np.asarray(log.tag_type, dtype=str), log.tag_frame))
        # the last tag of each frame in (frame, type) order is the maximum type
        last = np.ones(len(order), dtype=bool)
        last[:-1] = log.tag_frame[order][1:] != log.tag_frame[order][:-1]
        types[log.tag_frame[order][last]] = np.asarray(log.tag_type, dtype=object)[order][last]
    return types


def scenario_types_at(log: LogData, frame_tokens: Sequence[str]) -> list[str]:
    """The :func:`frame_scenario_types` of the frames named by ``frame_tokens`` (``unknown`` for a token that
    is not a frame of ``log``)."""
    types = frame_scenario_types(log)
    index = {str(tok): i for i, tok in enumerate(log.frame_tokens)}
    return [str(types[index[str(tok)]]) if str(tok) in index else "unknown" for tok in frame_tokens]


def valid_scene_frames(log: LogData) -> np.ndarray:
    """``(F,)`` bool: the frame belongs to a scene that is neither among the first two nor the last two of
    the log, scenes ordered by name (nuPlan's ``row_num >= 3 AND row_num < cnt - 1``)."""
    order = np.argsort(np.asarray(log.scene_names, dtype=str), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    valid_scene = (rank >= 3) & (rank < len(order) - 1)
    return valid_scene[log.frame_scene]


def extract_scenarios(log: LogData, scenario_filter: ScenarioFilter | None = None) -> list[Scenario]:
    """nuPlan scenarios of ``log`` (see the module docstring). Windows that do not fit in the log (with
    their history) are dropped."""
    sf = ScenarioFilter() if scenario_filter is None else scenario_filter
    t = (log.timestamps_us - log.timestamps_us[0]) / 1e6
    stride = max(int(round(1.0 / sf.subsample_ratio)), 1)
    n_iter = int(round(sf.duration_s * FRAME_RATE_HZ / stride)) + 1
    n_hist = int(round(sf.history_s * FRAME_RATE_HZ / stride))
    offset = int(round(sf.offset_s * FRAME_RATE_HZ))
    types = frame_scenario_types(log)
    candidates = valid_scene_frames(log) & (types != "unknown" if not sf.include_unknown else True)
    if sf.scenario_types is not None:
        candidates &= np.isin(types.astype(str), list(sf.scenario_types))
    if sf.remove_invalid_goals:
        candidates &= np.isfinite(log.scene_goal[log.frame_scene]).all(axis=1)
    tokens = None if sf.tokens is None else set(sf.tokens)
    last_start: dict[str, float] = {}
    per_type: dict[str, int] = {}
    scenarios: list[Scenario] = []
    for tagged in np.flatnonzero(candidates).tolist():
        kind = str(types[tagged])
        if tokens is not None and str(log.frame_tokens[tagged]) not in tokens:
            continue
        first = tagged + offset
        frames = first + stride * np.arange(-n_hist, n_iter)
        if frames[0] < 0 or frames[-1] >= log.num_frames:
            continue
        if sf.timestamp_threshold_s is not None and kind in last_start:
            if t[first] - last_start[kind] < sf.timestamp_threshold_s:
                continue
        if sf.num_scenarios_per_type is not None and per_type.get(kind, 0) >= sf.num_scenarios_per_type:
            continue
        last_start[kind] = float(t[first])
        per_type[kind] = per_type.get(kind, 0) + 1
        scenarios.append(_scenario(log, frames, n_hist, tagged, kind))
        if sf.limit_total_scenarios is not None and len(scenarios) >= sf.limit_total_scenarios:
            break
    return scenarios


def _scenario(log: LogData, frames: np.ndarray, n_hist: int, tagged: int, kind: str) -> Scenario:
    agents = _agents(log, frames)
    window = frames[n_hist:]
    lights = _traffic_lights(log, window)
    hist = frames[:n_hist]
    return Scenario(
        log_name=log.log_name,
        token=str(log.frame_tokens[tagged]),
        map_name=log.map_location,
        frame_tokens=np.asarray(log.frame_tokens)[window],
        timestamps_us=log.timestamps_us[window].astype(np.int64),
        ego=_ego(log, window),
        agents=Agents(agents.boxes[n_hist:], agents.types, agents.track_ids, agents.valid[n_hist:]),
        traffic_lights=lights,
        route_roadblock_ids=_route(log, tagged),
        current_index=0,
        scenario_type=kind,
        goal=_goal(log, int(log.frame_scene[tagged])),
        history_ego=_ego(log, hist),
        history_agents=Agents(agents.boxes[:n_hist], agents.types, agents.track_ids, agents.valid[:n_hist]),
    )
