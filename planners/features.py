"""Feature and target builders: a :class:`~simulation.types.Scene` (or a closed-loop observation) to the
tensors of :mod:`planners.base`, and the adapter that lets a learned planner drive in closed loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from planners.base import AGENT_FEATURES, EGO_STATUS_DIM, MAX_AGENTS, NUM_POSES, AgentFeature
from simulation.geometry import global_to_local, rotate_vectors
from simulation.protocols import Observation
from simulation.render import RasterConfig, render_window
from simulation.types import (
    AgentIndex,
    Agents,
    DrivingCommand,
    LogWindow,
    StateIndex,
    TrackedObjectType,
    TrafficLights,
    Trajectory,
)

#: The raster learned planners see by default: 128 x 128 px at 0.5 m (16 m behind, 48 m ahead, 32 m aside).
PLANNER_RASTER = RasterConfig(height_px=128, width_px=128, resolution_m=0.5, behind_m=16.0)

_VULNERABLE = (TrackedObjectType.PEDESTRIAN, TrackedObjectType.BICYCLE)


def ego_status(state: np.ndarray, command: int) -> np.ndarray:
    """``(8,)`` float32: ego-frame vx, vy, ax, ay and the driving-command one-hot (left, straight, right, unknown)."""
    out = np.zeros(EGO_STATUS_DIM, dtype=np.float32)
    out[:4] = state[[StateIndex.VX, StateIndex.VY, StateIndex.AX, StateIndex.AY]]
    out[4 + int(command if 0 <= command <= 3 else DrivingCommand.UNKNOWN)] = 1.0
    return out


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
    tokens[:n, AgentFeature.COS_HEADING], tokens[:n, AgentFeature.SIN_HEADING] = (
        np.cos(local[:, 2]),
        np.sin(local[:, 2]),
    )
    tokens[:n, AgentFeature.VX], tokens[:n, AgentFeature.VY] = vel[:, 0], vel[:, 1]
    tokens[:n, AgentFeature.LENGTH] = boxes[:, AgentIndex.LENGTH]
    tokens[:n, AgentFeature.WIDTH] = boxes[:, AgentIndex.WIDTH]
    tokens[:n, AgentFeature.IS_VEHICLE] = types == TrackedObjectType.VEHICLE
    tokens[:n, AgentFeature.IS_VULNERABLE] = np.isin(types, _VULNERABLE)
    tokens[:n, AgentFeature.IS_STATIC] = ~np.isin(types, (TrackedObjectType.VEHICLE, *_VULNERABLE))
    mask[:n] = True
    return tokens, mask


def window_features(
    map_api: Any,
    ego_states: np.ndarray,
    timestamps_us: np.ndarray,
    agents: Agents,
    traffic_lights: TrafficLights,
    route_ids: Any,
    current_index: int,
    command: int,
    raster: RasterConfig = PLANNER_RASTER,
) -> dict[str, np.ndarray]:
    """Features of frame ``current_index`` of a window of frames (numpy, no batch dimension)."""
    state = ego_states[current_index]
    valid = agents.valid[current_index]
    tokens, mask = agent_tokens(agents.boxes[current_index][valid], agents.types[valid], state[:3])
    bev = render_window(map_api, ego_states, timestamps_us, agents, traffic_lights, route_ids, current_index, raster)
    return {"bev": bev, "ego_status": ego_status(state, command), "agents": tokens, "agents_mask": mask}


def scene_features(scene: LogWindow, map_api: Any, raster: RasterConfig = PLANNER_RASTER) -> dict[str, np.ndarray]:
    """Features of a scene at its current frame."""
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


def observation_features(observation: Observation, raster: RasterConfig = PLANNER_RASTER) -> dict[str, np.ndarray]:
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


def batch(features: list[dict[str, np.ndarray]], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Stack per-sample numpy features into batch-first tensors."""
    return {k: torch.as_tensor(np.stack([f[k] for f in features]), device=device) for k in features[0]}


class LearnedPlanner:
    """Adapter: a torch planner (eager ``nn.Module`` or an exported one) as a ``simulation.protocols.Planner``.

    Args:
        model: eager planner (``forward(features) -> PlanOutput``) or a callable on
            ``(bev, ego_status, agents, agents_mask, noise)`` returning ``(trajectory, candidates, scores)``.
        name: the planner's name in result tables.
        raster: the raster the model was trained on.
        seed: seed of the sampling noise (the same observation gives the same plan).
    """

    def __init__(self, model: Any, name: str = "learned", raster: RasterConfig = PLANNER_RASTER, seed: int = 0) -> None:
        self.model = model
        self.name = name
        self.raster = raster
        self.seed = seed
        self.last_candidates: np.ndarray | None = None

    def plan(self, observation: Observation) -> Trajectory:
        feats = batch([observation_features(observation, self.raster)])
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            if isinstance(self.model, torch.nn.Module):
                noise = torch.randn(self.model.initial_noise_shape(1), generator=g)  # type: ignore[operator]
                out = self.model(feats, noise)
                trajectory, candidates = out.trajectory, out.candidates
            else:
                noise = torch.randn(self.model.noise_shape(1), generator=g)
                trajectory, candidates, _ = self.model(
                    feats["bev"], feats["ego_status"], feats["agents"], feats["agents_mask"], noise
                )
        poses = trajectory[0].double().numpy()
        if not np.isfinite(poses).all():
            raise ValueError(f"{self.name}: planner returned a non-finite trajectory")
        self.last_candidates = None if candidates is None else candidates[0].double().numpy()
        return Trajectory(poses)


def exported_planner(path: str, name: str = "exported", seed: int = 0) -> LearnedPlanner:
    """A closed-loop planner from an exported TorchScript / ONNX file (Hydra ``_target_``)."""
    from planners.export import ExportedPlanner

    model = ExportedPlanner(path)
    raster = model.meta.get("raster")
    return LearnedPlanner(
        model, name=name, raster=RasterConfig.from_dict(raster) if raster else PLANNER_RASTER, seed=seed
    )
