"""The BEV raster's layout, declared once: channel names, the agent types of each agent channel, and
:class:`RasterConfig` (size, resolution, placement of the rear axle, channels, history frames).

:mod:`simulation.render` draws rasters of this layout (its docstring states the frame and pixel conventions);
checkpoints store the config (:meth:`RasterConfig.to_dict`) so a planner always reads the raster it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from simulation.types import TrackedObjectType

#: Every channel diffplan can render, in raster order.
CHANNELS: tuple[str, ...] = (
    "drivable_area",  # union of road segments, intersections, generic drivable areas, car parks
    "lane_centerlines",  # baselines of lanes and lane connectors (1 px lines)
    "lane_boundaries",  # left/right boundaries of lanes (1 px lines; connectors have no painted lines)
    "route",  # lanes and lane connectors inside the route roadblocks
    "red_lights",  # lane connectors whose traffic light is red
    "crosswalks",
    "vehicles",
    "pedestrians",
    "cyclists",
    "static_objects",  # traffic cones, barriers, construction-zone signs, generic objects
    "ego",  # the ego footprint (PACIFICA) at the current frame
    "history",  # agents' and ego's past boxes, fading with age
)

#: Agent channel -> tracked object types drawn in it.
AGENT_CHANNEL_TYPES: dict[str, tuple[TrackedObjectType, ...]] = {
    "vehicles": (TrackedObjectType.VEHICLE,),
    "pedestrians": (TrackedObjectType.PEDESTRIAN,),
    "cyclists": (TrackedObjectType.BICYCLE,),
    "static_objects": (
        TrackedObjectType.TRAFFIC_CONE,
        TrackedObjectType.BARRIER,
        TrackedObjectType.CZONE_SIGN,
        TrackedObjectType.GENERIC_OBJECT,
    ),
}


class RenderError(ValueError):
    """Bad input to the rasteriser (shapes, non-finite values, unknown channels)."""


@dataclass(frozen=True)
class RasterConfig:
    """Size, resolution, placement and channels of the BEV raster.

    Attributes:
        height_px, width_px: raster size in pixels.
        resolution_m: metres per pixel.
        behind_m: metres visible behind the rear axle (the rest of the height is ahead); the width is centred.
        channels: names from :data:`CHANNELS`, in the order of the output planes.
        history_s: how far back the ``history`` channel looks.
        history_interval_s: spacing of its frames (frames nearest to ``t - k * interval`` are used).
    """

    height_px: int = 256
    width_px: int = 256
    resolution_m: float = 0.25
    behind_m: float = 16.0
    channels: tuple[str, ...] = field(default=CHANNELS)
    history_s: float = 1.5
    history_interval_s: float = 0.5

    def __post_init__(self) -> None:
        if self.height_px <= 0 or self.width_px <= 0 or self.resolution_m <= 0:
            raise RenderError(f"raster size and resolution must be positive, got {self}")
        if not 0.0 <= self.behind_m <= self.height_px * self.resolution_m:
            raise RenderError(f"behind_m {self.behind_m} outside the raster height")
        unknown = [c for c in self.channels if c not in CHANNELS]
        if unknown or len(set(self.channels)) != len(self.channels) or not self.channels:
            raise RenderError(f"channels must be distinct names from {CHANNELS}, got {self.channels}")
        if self.history_s < 0 or self.history_interval_s <= 0:
            raise RenderError("history_s must be >= 0 and history_interval_s > 0")

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.num_channels, self.height_px, self.width_px)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` in metres of the ego frame covered by the raster."""
        half_w = self.width_px * self.resolution_m / 2.0
        return (-self.behind_m, self.height_px * self.resolution_m - self.behind_m, -half_w, half_w)

    @property
    def ego_pixel(self) -> tuple[float, float]:
        """Continuous ``(u, v)`` = (column, row) of the rear axle (pixel corners are integers)."""
        return (self.width_px / 2.0, self.height_px - self.behind_m / self.resolution_m)

    @property
    def radius_m(self) -> float:
        """Distance from the rear axle to the farthest raster corner."""
        x_min, x_max, _, y_max = self.extent
        return float(np.hypot(max(-x_min, x_max), y_max))

    def channel_index(self, name: str) -> int:
        return self.channels.index(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML friendly) to store with checkpoints."""
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RasterConfig:
        try:
            kwargs = dict(data)
            kwargs["channels"] = tuple(kwargs.get("channels", CHANNELS))
            return cls(**kwargs)
        except TypeError as err:
            raise RenderError(f"not a RasterConfig dict: {err}") from None


DEFAULT_RASTER = RasterConfig()


__all__ = ["AGENT_CHANNEL_TYPES", "CHANNELS", "DEFAULT_RASTER", "RasterConfig", "RenderError"]
