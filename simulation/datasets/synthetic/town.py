"""The data model of a synthetic town's road network: lanes and connectors (:class:`Path`), roadblocks and
roadblock connectors (:class:`Block`), junctions and the :class:`Town` that holds them, with the
:class:`TownConfig` it is generated from (by :func:`simulation.datasets.synthetic.network.build_town`, whose
docstring states the conventions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from shapely.geometry import LineString, Polygon

from simulation.datasets.synthetic.geometry2d import strip_polygon
from simulation.geometry import polyline_lengths


class TurnType(IntEnum):
    """``lane_connectors.turn_type_fid`` values written by the synthetic city."""

    STRAIGHT = 0
    LEFT = 1
    RIGHT = 2
    UTURN = 3


class NetworkConfigError(ValueError):
    """Impossible town parameters."""


@dataclass(frozen=True)
class TownConfig:
    """Parameters of one town.

    Attributes:
        grid: ``(columns, rows)`` of junctions (each >= 2).
        spacing: ``(min, max)`` distance between neighbouring junctions, metres.
        jitter: junction position noise, metres.
        lane_width: ``(min, max)`` lane width, metres.
        max_lanes: most lanes per direction (1-3).
        speed_limit: ``(min, max)`` speed limit, m/s.
        bend: largest bend of a road at its ends, radians (0 = straight roads).
        wiggle: largest sideways shift of a road's middle from the line between its ends, metres (curves
            along the road; 0 = none).
    """

    grid: tuple[int, int] = (3, 3)
    spacing: tuple[float, float] = (120.0, 170.0)
    jitter: float = 10.0
    lane_width: tuple[float, float] = (3.3, 3.9)
    max_lanes: int = 3
    speed_limit: tuple[float, float] = (8.0, 20.0)
    bend: float = 0.12
    wiggle: float = 0.0

    def validate(self) -> None:
        if min(self.grid) < 2 or max(self.grid) > 12:
            raise NetworkConfigError(f"grid {self.grid}: need 2..12 junctions per axis")
        if not 2.5 <= self.lane_width[0] <= self.lane_width[1] <= 5.0:
            raise NetworkConfigError(f"lane width {self.lane_width}: need 2.5 <= min <= max <= 5.0 m")
        if not 1 <= self.max_lanes <= 3:
            raise NetworkConfigError(f"max_lanes {self.max_lanes}: need 1..3")
        if not 2.0 <= self.speed_limit[0] <= self.speed_limit[1] <= 40.0:
            raise NetworkConfigError(f"speed limit {self.speed_limit}: need 2 <= min <= max <= 40 m/s")
        if not 80.0 <= self.spacing[0] <= self.spacing[1]:
            raise NetworkConfigError(f"spacing {self.spacing}: need 80 <= min <= max metres")
        if not 0.0 <= self.jitter <= 0.15 * self.spacing[0] or not 0.0 <= self.bend <= 0.3:
            raise NetworkConfigError(f"jitter {self.jitter} / bend {self.bend} out of range")
        if not 0.0 <= self.wiggle <= 0.15 * self.spacing[0]:
            raise NetworkConfigError(f"wiggle {self.wiggle}: need 0 <= wiggle <= 0.15 * min spacing")


@dataclass
class Path:
    """A lane or a lane connector (a drivable path with a baseline)."""

    fid: int
    is_connector: bool
    centre: np.ndarray  # (N, 2)
    left: np.ndarray  # (N, 2)
    right: np.ndarray  # (N, 2)
    width: float
    speed_limit: float
    roadblock: int
    index: int = -1
    turn_type: int = -1
    junction: int = -1
    phase: int = -1  # traffic-light phase index at its junction, -1 without light
    minor: bool = False  # connector from the minor arm of an uncontrolled junction: it gives way to the main street
    stop_fid: int = -1
    left_boundary: int = -1
    right_boundary: int = -1
    incoming: list[int] = field(default_factory=list)
    outgoing: list[int] = field(default_factory=list)

    @property
    def length(self) -> float:
        return float(polyline_lengths(self.centre)[-1])

    @property
    def polygon(self) -> Polygon:
        """The strip between the boundaries; where a tight turn folds its inner boundary over itself, the
        baseline buffered by half the width (a valid polygon either way)."""
        poly = Polygon(strip_polygon(self.left, self.right))
        if not poly.is_valid:
            poly = LineString(self.centre).buffer(self.width / 2.0, cap_style="flat")
        return poly


@dataclass
class Block:
    """A roadblock (one direction of a road) or roadblock connector (one movement at a junction)."""

    fid: int
    is_connector: bool
    paths: list[int]  # lanes ordered by index, or connectors
    polygon: Polygon
    junction: int = -1  # intersection fid (connectors) / junction at the end (roadblocks)
    start_junction: int = -1
    road: int = -1  # road_segment fid (roadblocks)
    incoming: list[int] = field(default_factory=list)
    outgoing: list[int] = field(default_factory=list)


@dataclass
class Junction:
    """A junction: its intersection polygon and traffic-light plan."""

    fid: int
    centre: np.ndarray
    polygon: Polygon
    num_arms: int
    has_lights: bool
    phase_green: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (P,) green seconds per phase
    cycle_offset: float = 0.0


@dataclass
class Town:
    """Everything of one town's road network, in its metric frame."""

    paths: dict[int, Path]
    blocks: dict[int, Block]
    junctions: dict[int, Junction]
    road_segments: dict[int, Polygon]
    boundaries: dict[int, np.ndarray]
    crosswalks: dict[int, tuple[Polygon, int]]  # fid -> (polygon, junction fid)
    stop_polygons: dict[int, tuple[Polygon, list[int], list[int]]]  # fid -> (polygon, lane fids, connector fids)
    walkways: dict[int, Polygon]
    carparks: dict[int, tuple[Polygon, float]]
    shoulders: list[tuple[int, np.ndarray, np.ndarray]]  # (lane fid, centre (N,2), heading (N,)) parking strips
    crosswalk_signal: dict[int, int] = field(default_factory=dict)  # crosswalk fid -> a connector of its arm

    @property
    def lanes(self) -> list[Path]:
        return [p for p in self.paths.values() if not p.is_connector]

    @property
    def connectors(self) -> list[Path]:
        return [p for p in self.paths.values() if p.is_connector]


__all__ = ["Block", "Junction", "NetworkConfigError", "Path", "Town", "TownConfig", "TurnType"]
