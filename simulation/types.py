"""Data contracts of diffplan (DESIGN.md §2).

Everything is plain numpy in metres, seconds and radians. The global frame is the map's metric frame
(UTM for real nuPlan maps). The ego pose is the **rear axle**; agent poses are **box centres**.

Packed arrays are indexed by ``IntEnum`` columns (``StateIndex.X``), never by magic numbers. Shapes
are documented on every field; leading batch dimensions come first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

# --------------------------------------------------------------------------------------------------
# Column indices and enums
# --------------------------------------------------------------------------------------------------


class StateIndex(IntEnum):
    """Columns of an ego state array ``(..., 11)``; velocities / accelerations are in the ego frame."""

    X = 0
    Y = 1
    HEADING = 2
    VX = 3
    VY = 4
    AX = 5
    AY = 6
    STEERING_ANGLE = 7
    STEERING_RATE = 8
    YAW_RATE = 9
    YAW_ACCEL = 10


STATE_DIM = len(StateIndex)


class AgentIndex(IntEnum):
    """Columns of an agent box array ``(..., 7)``: box centre, heading, global velocity, size."""

    X = 0
    Y = 1
    HEADING = 2
    VX = 3
    VY = 4
    LENGTH = 5
    WIDTH = 6


AGENT_DIM = len(AgentIndex)


class PoseIndex(IntEnum):
    """Columns of a pose array ``(..., 3)``."""

    X = 0
    Y = 1
    HEADING = 2


class TrackedObjectType(IntEnum):
    """nuPlan's ``TrackedObjectType`` ids."""

    VEHICLE = 0
    PEDESTRIAN = 1
    BICYCLE = 2
    TRAFFIC_CONE = 3
    BARRIER = 4
    CZONE_SIGN = 5
    GENERIC_OBJECT = 6
    EGO = 7


#: nuPlan ``category.name`` -> ``TrackedObjectType``.
CATEGORY_TO_TYPE: dict[str, TrackedObjectType] = {
    "vehicle": TrackedObjectType.VEHICLE,
    "pedestrian": TrackedObjectType.PEDESTRIAN,
    "bicycle": TrackedObjectType.BICYCLE,
    "traffic_cone": TrackedObjectType.TRAFFIC_CONE,
    "barrier": TrackedObjectType.BARRIER,
    "czone_sign": TrackedObjectType.CZONE_SIGN,
    "generic_object": TrackedObjectType.GENERIC_OBJECT,
}
TYPE_TO_CATEGORY: dict[TrackedObjectType, str] = {v: k for k, v in CATEGORY_TO_TYPE.items()}

#: Agents that move (the others are static objects).
DYNAMIC_TYPES = (TrackedObjectType.VEHICLE, TrackedObjectType.PEDESTRIAN, TrackedObjectType.BICYCLE)


class TrafficLightStatus(IntEnum):
    """nuPlan's ``TrafficLightStatusType``."""

    GREEN = 0
    YELLOW = 1
    RED = 2
    UNKNOWN = 3


TRAFFIC_LIGHT_NAMES = {s: s.name.lower() for s in TrafficLightStatus}


class DrivingCommand(IntEnum):
    """NAVSIM's driving command (one-hot of length 4 in that order)."""

    LEFT = 0
    STRAIGHT = 1
    RIGHT = 2
    UNKNOWN = 3


# --------------------------------------------------------------------------------------------------
# Vehicle
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VehicleParameters:
    """Ego vehicle geometry; all lengths in metres (nuPlan ``VehicleParameters``)."""

    width: float
    front_length: float  # rear axle to front bumper
    rear_length: float  # rear axle to rear bumper
    wheel_base: float
    cog_position_from_rear_axle: float
    height: float

    @property
    def length(self) -> float:
        return self.front_length + self.rear_length

    @property
    def rear_axle_to_center(self) -> float:
        """Longitudinal offset from the rear axle to the box centre (1.461 m for the Pacifica)."""
        return self.length / 2.0 - self.rear_length


#: Chrysler Pacifica, nuPlan's and NAVSIM's ego vehicle.
PACIFICA = VehicleParameters(
    width=2.297,
    front_length=4.049,
    rear_length=1.127,
    wheel_base=3.089,
    cog_position_from_rear_axle=1.67,
    height=1.777,
)


# --------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------


class DataValidationError(ValueError):
    """A container holds arrays of the wrong shape or non-finite values."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise DataValidationError(msg)


@dataclass(frozen=True)
class EgoStates:
    """Ego trajectory of rear-axle states.

    Attributes:
        states: ``(T, 11)`` float64 columns by :class:`StateIndex` (global pose, ego-frame dynamics).
        timestamps_us: ``(T,)`` int64 microseconds.
    """

    states: np.ndarray
    timestamps_us: np.ndarray

    def __len__(self) -> int:
        return int(self.states.shape[0])

    @property
    def poses(self) -> np.ndarray:
        """``(T, 3)`` rear-axle poses (x, y, heading)."""
        return self.states[:, : StateIndex.HEADING + 1]

    def validate(self) -> None:
        _check(self.states.ndim == 2 and self.states.shape[1] == STATE_DIM, f"ego states shape {self.states.shape}")
        _check(self.timestamps_us.shape == (self.states.shape[0],), "ego timestamps do not match states")
        _check(bool(np.isfinite(self.states).all()), "ego states contain NaN or inf")


@dataclass(frozen=True)
class Agents:
    """Tracked objects over time (padded: one column per track).

    Attributes:
        boxes: ``(T, N, 7)`` float64 columns by :class:`AgentIndex`; garbage where ``valid`` is False.
        types: ``(N,)`` int64 :class:`TrackedObjectType` ids.
        track_ids: ``(N,)`` str, 16-hex-char track tokens.
        valid: ``(T, N)`` bool, track observed at that frame.
    """

    boxes: np.ndarray
    types: np.ndarray
    track_ids: np.ndarray
    valid: np.ndarray

    @property
    def num_agents(self) -> int:
        return int(self.boxes.shape[1])

    @staticmethod
    def empty(num_frames: int) -> Agents:
        return Agents(
            boxes=np.zeros((num_frames, 0, AGENT_DIM)),
            types=np.zeros((0,), dtype=np.int64),
            track_ids=np.zeros((0,), dtype="<U16"),
            valid=np.zeros((num_frames, 0), dtype=bool),
        )

    def validate(self) -> None:
        t, n = self.valid.shape
        _check(self.boxes.shape == (t, n, AGENT_DIM), f"agent boxes shape {self.boxes.shape} vs valid {(t, n)}")
        _check(self.types.shape == (n,) and self.track_ids.shape == (n,), "agent types/track_ids length mismatch")
        _check(bool(np.isfinite(self.boxes[self.valid]).all()), "valid agent boxes contain NaN or inf")


@dataclass(frozen=True)
class TrafficLights:
    """Traffic-light status per lane connector.

    Attributes:
        lane_connector_ids: ``(L,)`` str, map ids of the lane connectors.
        status: ``(T, L)`` int8 :class:`TrafficLightStatus` (UNKNOWN where not reported).
    """

    lane_connector_ids: np.ndarray
    status: np.ndarray

    @staticmethod
    def empty(num_frames: int) -> TrafficLights:
        return TrafficLights(np.zeros((0,), dtype="<U16"), np.zeros((num_frames, 0), dtype=np.int8))

    def red_ids(self, frame: int) -> list[str]:
        """Lane-connector ids that are red at ``frame``."""
        return [str(i) for i in self.lane_connector_ids[self.status[frame] == TrafficLightStatus.RED]]

    def validate(self) -> None:
        _check(self.status.shape[1:] == self.lane_connector_ids.shape, "traffic light status shape mismatch")


@dataclass(frozen=True)
class LogWindow:
    """Frames of one log, sampled at a fixed interval: the common part of :class:`Scene` and :class:`Scenario`.

    Attributes:
        log_name: nuPlan log name.
        token: the window's token (hex of the current / initial ``lidar_pc`` token).
        map_name: map location, e.g. ``us-nv-las-vegas-strip``.
        frame_tokens: ``(T,)`` str lidar_pc tokens of the frames.
        timestamps_us: ``(T,)`` int64.
        ego: ``T`` ego states.
        agents: agents over the ``T`` frames.
        traffic_lights: status over the ``T`` frames.
        route_roadblock_ids: roadblock ids of the mission route.
        current_index: index of the current frame (history before it, future after it).
    """

    log_name: str
    token: str
    map_name: str
    frame_tokens: np.ndarray
    timestamps_us: np.ndarray
    ego: EgoStates
    agents: Agents
    traffic_lights: TrafficLights
    route_roadblock_ids: tuple[str, ...]
    current_index: int

    @property
    def num_frames(self) -> int:
        return int(self.timestamps_us.shape[0])

    @property
    def current_ego(self) -> np.ndarray:
        """``(11,)`` ego state at the current frame."""
        return self.ego.states[self.current_index]

    def validate(self) -> None:
        t = self.num_frames
        _check(self.frame_tokens.shape == (t,), f"{self.token}: frame tokens length mismatch")
        _check(len(self.ego) == t, f"{self.token}: ego length {len(self.ego)} != {t} frames")
        _check(self.agents.valid.shape[0] == t, f"{self.token}: agents length mismatch")
        _check(self.traffic_lights.status.shape[0] == t, f"{self.token}: traffic lights length mismatch")
        _check(0 <= self.current_index < t, f"{self.token}: current index {self.current_index} out of range")
        for part in (self.ego, self.agents, self.traffic_lights):
            try:
                part.validate()
            except DataValidationError as err:
                raise DataValidationError(f"{self.log_name}/{self.token}: {err}") from None


@dataclass(frozen=True)
class Scene(LogWindow):
    """A NAVSIM-style sample: 2 Hz frames, 4 history frames (current = index 3) and up to 10 future frames.

    Attributes:
        driving_command: :class:`DrivingCommand` at the current frame.
        goal: ``(3,)`` global rear-axle goal pose of the mission, or ``None``.
    """

    driving_command: int = DrivingCommand.UNKNOWN
    goal: np.ndarray | None = None

    @property
    def num_history_frames(self) -> int:
        return self.current_index + 1

    @property
    def num_future_frames(self) -> int:
        return self.num_frames - self.current_index - 1


@dataclass(frozen=True)
class Scenario(LogWindow):
    """A nuPlan-style closed-loop scenario: 10 Hz, 15 s window starting 3 s before the tagged frame.

    ``current_index`` is the first simulated iteration (0 for nuPlan's windows); ``history`` holds the
    2 s before it at 10 Hz, for the planner's history buffer.

    Attributes:
        scenario_type: nuPlan scenario type of the tagged frame (``unknown`` when untagged).
        goal: ``(3,)`` global rear-axle goal pose, or ``None``.
        history_ego: ego states before the first iteration, oldest first (``(H, 11)``).
        history_agents: agents over the same ``H`` history frames (same tracks as ``agents``).
    """

    scenario_type: str = "unknown"
    goal: np.ndarray | None = None
    history_ego: EgoStates | None = None
    history_agents: Agents | None = None

    @property
    def dt(self) -> float:
        return float(np.median(np.diff(self.timestamps_us))) * 1e-6 if self.num_frames > 1 else 0.1


@dataclass(frozen=True)
class Trajectory:
    """Planned poses in the current rear-axle frame.

    Attributes:
        poses: ``(..., 8, 3)`` (x, y, heading) at t = 0.5 ... 4.0 s by default.
        interval_s: time between poses.
    """

    poses: np.ndarray
    interval_s: float = 0.5

    @property
    def num_poses(self) -> int:
        return int(self.poses.shape[-2])

    @property
    def horizon_s(self) -> float:
        return self.num_poses * self.interval_s

    def validate(self) -> None:
        _check(self.poses.ndim >= 2 and self.poses.shape[-1] == 3, f"trajectory poses shape {self.poses.shape}")
        _check(bool(np.isfinite(self.poses).all()), "trajectory contains NaN or inf")


#: NAVSIM's sampling: 8 poses at 0.5 s (4 s).
NUM_TRAJECTORY_POSES = 8
TRAJECTORY_INTERVAL_S = 0.5

__all__ = [
    "AGENT_DIM",
    "STATE_DIM",
    "AgentIndex",
    "Agents",
    "CATEGORY_TO_TYPE",
    "DataValidationError",
    "DrivingCommand",
    "DYNAMIC_TYPES",
    "EgoStates",
    "LogWindow",
    "PACIFICA",
    "PoseIndex",
    "Scenario",
    "Scene",
    "StateIndex",
    "TrackedObjectType",
    "TrafficLightStatus",
    "TrafficLights",
    "Trajectory",
    "TYPE_TO_CATEGORY",
    "VehicleParameters",
]
