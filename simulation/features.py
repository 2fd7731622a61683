"""The planner-input contract: what a learned planner sees (:class:`PlannerInput`) and how it is built.

One sample (numpy, no batch dimension) or a batch (torch, batch first):

- ``bev``: ``(B, C, H, W)`` float32 ego-centric raster (layout :class:`~simulation.render.RasterConfig`, by default
  :data:`PLANNER_RASTER`; the layout a planner was trained on travels with its checkpoint).
- ``ego_status``: ``(B, 8)`` float32 = ego-frame velocity (vx, vy), acceleration (ax, ay), driving command one-hot
  (left, straight, right, unknown).
- ``agents``: ``(B, N, F)`` float32 tokens of the ``N = MAX_AGENTS`` nearest agents in the current rear-axle frame,
  columns by :class:`AgentFeature`; ``agents_mask``: ``(B, N)`` bool, True where an agent is present.
- ``route``: optional ``(B, ...)`` route tensor (no planner reads one yet).

Targets: ``(B, 8, 3)`` future rear-axle poses (x, y, heading) at 0.5 s in the current frame (:func:`scene_targets`).

The feature keys of plain dicts and of the feature cache are spelt here only (:data:`FEATURE_KEYS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import IntEnum
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch.nn import functional as F

from simulation.geometry import global_to_local, rotate_vectors
from simulation.maps.protocol import MapProtocol
from simulation.protocols import Observation
from simulation.render import RasterConfig, render_window
from simulation.types import AgentIndex, Agents, DrivingCommand, LogWindow, StateIndex, TrackedObjectType, TrafficLights

EGO_STATUS_DIM = 8
#: The leading ``ego_status`` columns that are kinematics (vx, vy, ax, ay); the rest is the command one-hot.
EGO_KINEMATICS = 4
NUM_POSES = 8
MAX_AGENTS = 32

#: The raster learned planners see by default: 128 x 128 px at 0.5 m (16 m behind, 48 m ahead, 32 m aside).
PLANNER_RASTER = RasterConfig(height_px=128, width_px=128, resolution_m=0.5, behind_m=16.0)

#: Names of the required inputs, in the order of the positional (exported) interface and of the cache arrays.
BEV_KEY, EGO_STATUS_KEY, AGENTS_KEY, AGENTS_MASK_KEY, ROUTE_KEY = "bev", "ego_status", "agents", "agents_mask", "route"
FEATURE_KEYS = (BEV_KEY, EGO_STATUS_KEY, AGENTS_KEY, AGENTS_MASK_KEY)


class AgentFeature(IntEnum):
    """Columns of an agent token: pose and motion in the ego frame, size, coarse type one-hot."""

    X = 0
    Y = 1
    COS_HEADING = 2
    SIN_HEADING = 3
    VX = 4
    VY = 5
    LENGTH = 6
    WIDTH = 7
    IS_VEHICLE = 8
    IS_VULNERABLE = 9  # pedestrian or bicycle
    IS_STATIC = 10


AGENT_FEATURES = len(AgentFeature)

_VULNERABLE = (TrackedObjectType.PEDESTRIAN, TrackedObjectType.BICYCLE)
_MOTION = [StateIndex.VX, StateIndex.VY, StateIndex.AX, StateIndex.AY]

A = TypeVar("A", np.ndarray, torch.Tensor)


class PlannerInputError(ValueError):
    """Features that a planner cannot take: wrong shapes, NaN, a raster of another layout."""


@dataclass(frozen=True)
class PlannerInput(Generic[A]):
    """The inputs of a learned planner (see the module docstring for the fields and their shapes).

    ``PlannerInput[np.ndarray]`` holds one sample without a batch dimension (what the builders return);
    ``PlannerInput[torch.Tensor]`` holds a batch, batch first (what planners take; :func:`batch` makes one).
    """

    bev: A
    ego_status: A
    agents: A
    agents_mask: A
    route: A | None = None

    @property
    def batch_size(self) -> int:
        """Leading dimension (meaningful for batches only)."""
        return int(self.ego_status.shape[0])

    def tensors(self) -> tuple[A, A, A, A]:
        """``(bev, ego_status, agents, agents_mask)``: the positional form of exported planners."""
        return self.bev, self.ego_status, self.agents, self.agents_mask

    def as_dict(self) -> dict[str, A]:
        """``{key: array}`` by :data:`FEATURE_KEYS` (and :data:`ROUTE_KEY` when a route is present)."""
        out = dict(zip(FEATURE_KEYS, self.tensors()))
        if self.route is not None:
            out[ROUTE_KEY] = self.route
        return out

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> PlannerInput[Any]:
        """Inverse of :meth:`as_dict`; raises :class:`PlannerInputError` naming a missing key."""
        missing = [k for k in FEATURE_KEYS if k not in d]
        if missing:
            raise PlannerInputError(f"missing feature(s) {missing}")
        bev, ego, agents, mask = (d[k] for k in FEATURE_KEYS)
        return PlannerInput(bev, ego, agents, mask, route=d.get(ROUTE_KEY))

    def to(self: PlannerInput[torch.Tensor], device: str | torch.device, **kwargs: Any) -> PlannerInput[torch.Tensor]:
        """A copy on ``device`` (``kwargs`` as ``Tensor.to``, e.g. ``non_blocking``)."""
        return self.apply(lambda t: t.to(device, **kwargs))

    def pin_memory(self: PlannerInput[torch.Tensor]) -> PlannerInput[torch.Tensor]:
        """A copy in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        return self.apply(lambda t: t.pin_memory())

    def apply(self, fn: Callable[[A], Any]) -> PlannerInput[Any]:
        """A copy with ``fn`` applied to every array (the route too, when present)."""
        return replace(self, **{f.name: fn(v) for f in fields(self) if (v := getattr(self, f.name)) is not None})

    def validate(self: PlannerInput[torch.Tensor], bev_channels: int | None = None) -> None:
        """Raise :class:`PlannerInputError` on wrong shapes or non-finite values.

        Args:
            bev_channels: the raster channels the planner expects (``None``: the raster is not checked).
        """
        ego = self.ego_status
        if ego.dim() != 2 or ego.shape[-1] != EGO_STATUS_DIM:
            raise PlannerInputError(f"ego_status must be (B, {EGO_STATUS_DIM}), got {tuple(ego.shape)}")
        agents = self.agents
        if agents.dim() != 3 or agents.shape[-1] != AGENT_FEATURES:
            raise PlannerInputError(f"agents must be (B, N, {AGENT_FEATURES}), got {tuple(agents.shape)}")
        if bev_channels is not None and (self.bev.dim() != 4 or self.bev.shape[1] != bev_channels):
            raise PlannerInputError(
                f"bev must be (B, {bev_channels}, H, W) for this planner, got {tuple(self.bev.shape)}"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise PlannerInputError(f"feature {f.name!r} contains NaN or inf")


def raster_from_meta(raster: Mapping[str, Any] | None) -> RasterConfig:
    """The raster stored with a checkpoint / cache / export (``RasterConfig.to_dict``), else :data:`PLANNER_RASTER`."""
    return RasterConfig.from_dict(dict(raster)) if raster else PLANNER_RASTER


# --------------------------------------------------------------------------------------------------
# ego status and agent tokens: numpy (one sample) and batched torch
# --------------------------------------------------------------------------------------------------


def ego_status(state: np.ndarray, command: int) -> np.ndarray:
    """``(8,)`` float32: ego-frame vx, vy, ax, ay and the driving-command one-hot (left, straight, right, unknown).

    Args:
        state: ``(11,)`` ego state by :class:`~simulation.types.StateIndex`.
        command: :class:`~simulation.types.DrivingCommand`; values outside 0..3 count as unknown.
    """
    out = np.zeros(EGO_STATUS_DIM, dtype=np.float32)
    out[:4] = state[_MOTION]
    out[4 + int(command if 0 <= command <= 3 else DrivingCommand.UNKNOWN)] = 1.0
    return out


def ego_status_torch(states: torch.Tensor, commands: torch.Tensor) -> torch.Tensor:
    """Batched :func:`ego_status`: ``states (B, 11)``, ``commands (B,)`` integer -> ``(B, 8)`` float32."""
    valid = (commands >= 0) & (commands <= 3)
    command = torch.where(valid, commands, torch.full_like(commands, int(DrivingCommand.UNKNOWN))).long()
    return torch.cat([states[:, _MOTION].to(torch.float32), F.one_hot(command, 4).to(torch.float32)], dim=-1)


def agent_tokens(boxes: np.ndarray, types: np.ndarray, ego_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``MAX_AGENTS`` nearest agents as tokens ``(MAX_AGENTS, F)`` in the ego frame, and their mask.

    Args:
        boxes: ``(N, 7)`` global agent boxes by :class:`~simulation.types.AgentIndex` (valid ones only).
        types: ``(N,)`` tracked object types.
        ego_pose: ``(3,)`` global rear-axle pose.
    """
    tokens = np.zeros((MAX_AGENTS, AGENT_FEATURES), dtype=np.float32)
    mask = np.zeros(MAX_AGENTS, dtype=bool)
    if len(boxes) == 0:
        return tokens, mask
    local = global_to_local(boxes[:, :3], ego_pose)
    order = np.argsort(np.hypot(local[:, 0], local[:, 1]), kind="stable")[:MAX_AGENTS]
    n = len(order)
    local, boxes, types = local[order], boxes[order], types[order]
    vel = rotate_vectors(boxes[:, [AgentIndex.VX, AgentIndex.VY]], -ego_pose[2])
    tokens[:n, AgentFeature.X], tokens[:n, AgentFeature.Y] = local[:, 0], local[:, 1]
    tokens[:n, AgentFeature.COS_HEADING] = np.cos(local[:, 2])
    tokens[:n, AgentFeature.SIN_HEADING] = np.sin(local[:, 2])
    tokens[:n, AgentFeature.VX], tokens[:n, AgentFeature.VY] = vel[:, 0], vel[:, 1]
    tokens[:n, AgentFeature.LENGTH] = boxes[:, AgentIndex.LENGTH]
    tokens[:n, AgentFeature.WIDTH] = boxes[:, AgentIndex.WIDTH]
    tokens[:n, AgentFeature.IS_VEHICLE] = types == TrackedObjectType.VEHICLE
    tokens[:n, AgentFeature.IS_VULNERABLE] = np.isin(types, _VULNERABLE)
    tokens[:n, AgentFeature.IS_STATIC] = ~np.isin(types, (TrackedObjectType.VEHICLE, *_VULNERABLE))
    mask[:n] = True
    return tokens, mask


def agent_tokens_torch(
    boxes: torch.Tensor, types: torch.Tensor, valid: torch.Tensor, ego_pose: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched :func:`agent_tokens` over padded agents, on any device, without a loop over the batch.

    Args:
        boxes: ``(B, N, 7)`` global agent boxes (float64 for parity with numpy).
        types: ``(B, N)`` tracked object types (any value where not ``valid``).
        valid: ``(B, N)`` bool, the agents present.
        ego_pose: ``(B, 3)`` global rear-axle poses.

    Returns:
        tokens ``(B, MAX_AGENTS, F)`` float32 and mask ``(B, MAX_AGENTS)`` bool, nearest agent first (ties in
        column order, as :func:`agent_tokens` on the valid agents).
    """
    b, n = valid.shape
    dx, dy = boxes[..., AgentIndex.X] - ego_pose[:, None, 0], boxes[..., AgentIndex.Y] - ego_pose[:, None, 1]
    c, s = torch.cos(ego_pose[:, None, 2]), torch.sin(ego_pose[:, None, 2])
    x, y = c * dx + s * dy, -s * dx + c * dy
    heading = (boxes[..., AgentIndex.HEADING] - ego_pose[:, None, 2] + torch.pi) % (2.0 * torch.pi) - torch.pi
    cv, sv = torch.cos(-ego_pose[:, None, 2]), torch.sin(-ego_pose[:, None, 2])
    vx, vy = boxes[..., AgentIndex.VX], boxes[..., AgentIndex.VY]
    is_vehicle = types == TrackedObjectType.VEHICLE
    is_vulnerable = (types == _VULNERABLE[0]) | (types == _VULNERABLE[1])
    columns = [x, y, torch.cos(heading), torch.sin(heading), cv * vx - sv * vy, sv * vx + cv * vy]
    columns += [boxes[..., AgentIndex.LENGTH], boxes[..., AgentIndex.WIDTH]]
    columns += [is_vehicle, is_vulnerable, ~(is_vehicle | is_vulnerable)]
    tokens = torch.stack([col.to(torch.float32) for col in columns], dim=-1)  # (B, N, F)
    distance = torch.hypot(x, y).masked_fill(~valid, torch.inf)
    order = torch.sort(distance, dim=1, stable=True).indices[:, :MAX_AGENTS]
    mask = torch.gather(valid, 1, order)
    tokens = torch.gather(tokens, 1, order[..., None].expand(-1, -1, AGENT_FEATURES))
    tokens = torch.where(mask[..., None], tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
    if order.shape[1] < MAX_AGENTS:
        pad = MAX_AGENTS - order.shape[1]
        tokens, mask = F.pad(tokens, (0, 0, 0, pad)), F.pad(mask, (0, pad))
    return tokens, mask


# --------------------------------------------------------------------------------------------------
# builders and targets
# --------------------------------------------------------------------------------------------------


def window_features(
    map_api: MapProtocol | None,
    ego_states: np.ndarray,
    timestamps_us: np.ndarray,
    agents: Agents,
    traffic_lights: TrafficLights,
    route_ids: Any,
    current_index: int,
    command: int,
    raster: RasterConfig = PLANNER_RASTER,
) -> PlannerInput[np.ndarray]:
    """Features of frame ``current_index`` of a window of frames (one sample, no batch dimension).

    Args:
        ego_states: ``(T, 11)`` ego states; timestamps_us: ``(T,)``; agents, traffic_lights: of the same frames.
        route_ids: route roadblock ids; command: driving command; raster: layout of ``bev``.
    """
    state = ego_states[current_index]
    valid = agents.valid[current_index]
    tokens, mask = agent_tokens(agents.boxes[current_index][valid], agents.types[valid], state[:3])
    bev = render_window(map_api, ego_states, timestamps_us, agents, traffic_lights, route_ids, current_index, raster)
    return PlannerInput(bev=bev, ego_status=ego_status(state, command), agents=tokens, agents_mask=mask)


def scene_features(
    scene: LogWindow, map_api: MapProtocol, raster: RasterConfig = PLANNER_RASTER
) -> PlannerInput[np.ndarray]:
    """Features of a scene (or any log window) at its current frame."""
    return window_features(
        map_api,
        scene.ego.states,
        scene.timestamps_us,
        scene.agents,
        scene.traffic_lights,
        scene.route_roadblock_ids,
        scene.current_index,
        int(getattr(scene, "driving_command", DrivingCommand.UNKNOWN)),
        raster,
    )


def observation_features(observation: Observation, raster: RasterConfig = PLANNER_RASTER) -> PlannerInput[np.ndarray]:
    """Features of a closed-loop observation (its last frame is the current one)."""
    ego = observation.ego_history
    return window_features(
        observation.map_api,
        ego.states,
        ego.timestamps_us,
        observation.agents,
        observation.traffic_lights,
        observation.route_roadblock_ids,
        len(ego) - 1,
        int(observation.driving_command),
        raster,
    )


def scene_targets(scene: LogWindow) -> np.ndarray:
    """``(8, 3)`` float32: the logged future poses at 0.5 s in the current rear-axle frame.

    Raises ``ValueError`` when the scene has fewer than 8 future frames.
    """
    future = scene.ego.states[scene.current_index + 1 : scene.current_index + 1 + NUM_POSES, :3]
    if len(future) < NUM_POSES:
        raise ValueError(f"{scene.log_name}/{scene.token}: {len(future)} future frames, need {NUM_POSES}")
    return global_to_local(future, scene.current_ego[:3]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# collation and the feature cache's arrays
# --------------------------------------------------------------------------------------------------


def batch(samples: Sequence[PlannerInput[Any]], device: str | torch.device = "cpu") -> PlannerInput[torch.Tensor]:
    """Stack per-sample inputs (numpy or torch, no batch dimension) into one batch-first torch input.

    A route is kept when every sample has one; raises :class:`PlannerInputError` when only some have one.
    """
    if not samples:
        raise PlannerInputError("cannot batch zero samples")

    def stack(values: list[Any]) -> torch.Tensor:
        if isinstance(values[0], torch.Tensor):
            return torch.stack(values).to(device)
        return torch.as_tensor(np.stack(values), device=device)

    routes = [s.route for s in samples]
    if any(r is None for r in routes) and any(r is not None for r in routes):
        raise PlannerInputError("some samples have a route and some do not")
    route = None if routes[0] is None else stack(routes)
    bev, ego, agents, mask = (stack([getattr(s, k) for s in samples]) for k in FEATURE_KEYS)
    return PlannerInput(bev, ego, agents, mask, route=route)


def quantize_bev(bev: np.ndarray) -> np.ndarray:
    """Raster values in ``[0, 1]`` to ``uint8`` steps of 1/255 (the feature cache's storage)."""
    return np.clip(np.rint(bev * 255.0), 0, 255).astype(np.uint8)


def dequantize_bev(bev: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_bev`: ``uint8`` to float32 in ``[0, 1]``."""
    return bev.astype(np.float32) / 255.0


def cache_arrays(samples: Sequence[PlannerInput[np.ndarray]]) -> dict[str, np.ndarray]:
    """Shard arrays of per-sample features: ``{key: (n, ...)}`` by :data:`FEATURE_KEYS`, ``bev`` quantised."""
    out = {k: np.stack([getattr(s, k) for s in samples]) for k in FEATURE_KEYS}
    out[BEV_KEY] = quantize_bev(out[BEV_KEY])
    return out


def from_cache_arrays(arrays: Mapping[str, np.ndarray], index: int) -> PlannerInput[torch.Tensor]:
    """Sample ``index`` of shard arrays (:func:`cache_arrays`) as float32 / bool tensors, no batch dimension."""
    return PlannerInput(
        bev=torch.from_numpy(dequantize_bev(arrays[BEV_KEY][index])),
        ego_status=torch.from_numpy(arrays[EGO_STATUS_KEY][index].astype(np.float32)),
        agents=torch.from_numpy(arrays[AGENTS_KEY][index].astype(np.float32)),
        agents_mask=torch.from_numpy(arrays[AGENTS_MASK_KEY][index].astype(bool)),
    )
