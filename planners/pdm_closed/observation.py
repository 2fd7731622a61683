"""PDM-Closed's own observation (NAVSIM's ``PDMObservation``): the current detections forecast at constant
velocity, sampled every 0.2 s, plus the polygons of the red on-route lane connectors as obstacles.

Differences from the scene's metric cache: agents farther than ``map_radius`` from the ego centre are dropped (and
at most 50 vehicles, 25 pedestrians, 10 bicycles and 50 static objects, the nearest, are kept); a dynamic agent
moves along its heading (reversed when it drives backwards) at its speed; the forecast of step ``t`` (10 Hz) is the
one of step ``2 * (t // 2)``. Obstacles the ego footprint already overlaps now (red connectors only when the ego lies
wholly inside) are "collided" and ignored by the leader search and the scoring. Unlike NAVSIM, whose observation
object keeps its collided ids across the scenes it plans, the set is rebuilt at every call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from simulation.geometry import agent_box_corners, normalize_angle, rear_axle_to_center
from simulation.protocols import Observation
from simulation.types import PACIFICA, AgentIndex, Agents, TrackedObjectType, VehicleParameters

#: Nearest objects kept per type (NAVSIM's ``PDMObjectManager``); static objects share one budget.
MAX_DYNAMIC_OBJECTS = {TrackedObjectType.VEHICLE: 50, TrackedObjectType.PEDESTRIAN: 25, TrackedObjectType.BICYCLE: 10}
MAX_STATIC_OBJECTS = 50
#: Forecast resolution: one forecast per this many 10 Hz steps.
SAMPLE_RES = 2


def ego_footprint(poses: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """Shapely polygons ``(...)`` of the ego boxes at rear-axle poses ``(..., 3)`` (corners as
    :func:`simulation.geometry.box_corners` of the centre box, the same arithmetic in fewer array operations)."""
    poses = np.asarray(poses, dtype=np.float64)
    c, s = np.cos(poses[..., 2])[..., None], np.sin(poses[..., 2])[..., None]
    d = vehicle.rear_axle_to_center
    cx = (poses[..., 0] + d * c[..., 0])[..., None]
    cy = (poses[..., 1] + d * s[..., 0])[..., None]
    hl, hw = vehicle.length / 2.0, vehicle.width / 2.0
    lon, lat = np.array([hl, -hl, -hl, hl]), np.array([hw, hw, -hw, -hw])
    corners = np.stack([cx + c * lon - s * lat, cy + s * lon + c * lat], -1)
    return np.asarray(shapely.polygons(corners))


def _select(boxes: np.ndarray, types: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """Indices of the objects kept, static ones first, then vehicles, pedestrians, bicycles, each nearest first."""
    dist = np.hypot(boxes[:, AgentIndex.X] - center[0], boxes[:, AgentIndex.Y] - center[1])
    near = (types != TrackedObjectType.EGO) & (dist <= radius)
    dynamic = np.isin(types, list(MAX_DYNAMIC_OBJECTS))
    groups = [(near & ~dynamic, MAX_STATIC_OBJECTS)]
    groups += [(near & (types == t), k) for t, k in MAX_DYNAMIC_OBJECTS.items()]
    out = []
    for mask, limit in groups:
        idx = np.flatnonzero(mask)
        out.append(idx[np.argsort(dist[idx], kind="stable")][:limit])
    return np.concatenate(out).astype(np.int64)


def _heading_velocity(boxes: np.ndarray, dynamic: np.ndarray) -> np.ndarray:
    """``(M, 2)`` forecast velocity: the speed along the heading, or against it when the agent reverses; 0 if static."""
    speed = np.hypot(boxes[:, AgentIndex.VX], boxes[:, AgentIndex.VY])
    heading = boxes[:, AgentIndex.HEADING]
    moving_angle = np.arctan2(boxes[:, AgentIndex.VY], boxes[:, AgentIndex.VX])
    forward = np.abs(normalize_angle(heading - moving_angle)) < np.pi / 2
    track = np.where(forward, heading, normalize_angle(heading + np.pi))
    return np.where(dynamic[:, None], np.stack([np.cos(track), np.sin(track)], -1) * speed[:, None], 0.0)


@dataclass(frozen=True)
class PDMObservation:
    """The obstacles PDM-Closed sees over its horizon.

    Attributes:
        boxes: ``(S, M, 7)`` agent boxes at the forecast samples ``t = 0, 0.2, ... `` s (velocity columns: the
            observed velocity).
        types: ``(M,)`` :class:`TrackedObjectType`. track_ids: ``(M,)`` str.
        agent_polygons: ``(S, M)`` shapely polygons of ``boxes``.
        red_ids: ``(R,)`` str red on-route lane connectors. red_polygons: ``(R,)`` their polygons.
        collided: ``(M + R,)`` bool, the obstacle overlaps the ego now (ignored from then on).
        dt: 10 Hz step (s).
    """

    boxes: np.ndarray
    types: np.ndarray
    track_ids: np.ndarray
    agent_polygons: np.ndarray
    red_ids: np.ndarray
    red_polygons: np.ndarray
    collided: np.ndarray
    dt: float = 0.1

    @property
    def num_agents(self) -> int:
        return int(self.boxes.shape[1])

    @cached_property
    def _all_polygons(self) -> np.ndarray:
        """``(S, M + R)`` agents, then red connectors."""
        red = np.broadcast_to(self.red_polygons, (len(self.agent_polygons), len(self.red_polygons)))
        return np.concatenate([self.agent_polygons, red], axis=1)

    def polygons(self, time_idx: int) -> np.ndarray:
        """``(M + R,)`` obstacle polygons at 10 Hz step ``time_idx`` (agents, then red connectors)."""
        return self._all_polygons[time_idx // SAMPLE_RES]

    def speed_along(self, index: np.ndarray, heading: np.ndarray) -> np.ndarray:
        """``(P,)`` speed of obstacles ``index`` ``(P,)`` projected on ``heading`` ``(P,)``: ``|v| cos(heading
        difference)`` for vehicles, pedestrians and bicycles, 0 for static objects and red connectors."""
        if self.num_agents == 0:
            return np.zeros(len(index))
        agent = np.minimum(index, self.num_agents - 1)
        speed, dynamic = self._speed_dynamic
        moving = dynamic[agent] & (index < self.num_agents)
        relative = normalize_angle(self.boxes[0, agent, AgentIndex.HEADING] - heading)
        return np.where(moving, speed[agent] * np.cos(relative), 0.0)

    @cached_property
    def _speed_dynamic(self) -> tuple[np.ndarray, np.ndarray]:
        """``(M,)`` observed speeds and ``(M,)`` bool vehicle / pedestrian / bicycle."""
        box = self.boxes[0]
        return np.hypot(box[:, AgentIndex.VX], box[:, AgentIndex.VY]), np.isin(self.types, list(MAX_DYNAMIC_OBJECTS))

    def is_red(self) -> np.ndarray:
        """``(M + R,)`` bool, the obstacle is a red connector."""
        return np.concatenate([np.zeros(self.num_agents, bool), np.ones(len(self.red_polygons), bool)])

    def scoring_boxes(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """``(num_steps, M', 7)`` 10 Hz boxes of the not-collided agents (the forecast held for 0.2 s) and their
        ``(M',)`` indices."""
        keep = np.flatnonzero(~self.collided[: self.num_agents])
        sample = np.minimum(np.arange(num_steps) // SAMPLE_RES, len(self.boxes) - 1)
        return self.boxes[sample][:, keep], keep


def build_pdm_observation(
    observation: Observation,
    red_ids: list[str],
    red_polygons: list[BaseGeometry],
    num_steps: int = 51,
    map_radius: float = 100.0,
    dt: float = 0.1,
) -> PDMObservation:
    """The observation of one planning step.

    Args:
        observation: the planner's observation (current ego state and the agents valid now).
        red_ids / red_polygons: on-route lane connectors red now and their polygons.
        num_steps: 10 Hz steps covered (incl. t = 0): NAVSIM uses the 5 s trajectory horizon, 51.
        map_radius: objects whose centre is farther from the ego centre are dropped (m).
    """
    pose = np.asarray(observation.current_state[:3], dtype=np.float64)
    agents = observation.agents
    if agents.num_agents:
        now, types = agents.boxes[-1][agents.valid[-1]], np.asarray(agents.types)[agents.valid[-1]]
        ids = np.asarray(agents.track_ids).astype(str)[agents.valid[-1]]
    else:
        now, types, ids = np.zeros((0, 7)), np.zeros(0, np.int64), np.zeros(0, str)
    keep = _select(now, types, rear_axle_to_center(pose)[:2], map_radius)
    now, types, ids = now[keep], types[keep], ids[keep]
    dxy = _heading_velocity(now, np.isin(types, list(MAX_DYNAMIC_OBJECTS)))
    t = np.arange((num_steps - 1) // SAMPLE_RES + 1) * SAMPLE_RES * dt  # the forecast samples
    boxes = np.repeat(now[None], len(t), axis=0)
    boxes[..., :2] += t[:, None, None] * dxy[None]
    polys = np.asarray(shapely.polygons(agent_box_corners(boxes))).reshape(boxes.shape[:2])
    red_polys = np.empty(len(red_polygons), dtype=object)
    red_polys[:] = list(red_polygons)
    ego = ego_footprint(pose)
    hits = shapely.intersects(ego, np.concatenate([polys[0], red_polys])) if len(polys[0]) + len(red_polys) else []
    collided = np.asarray(hits, dtype=bool).reshape(-1)
    if len(red_polys):
        inside = np.asarray(shapely.within(ego, red_polys), dtype=bool)
        collided[len(now) :] &= inside
    return PDMObservation(boxes, types, ids, polys, np.asarray(red_ids, dtype=str), red_polys, collided, dt)


def scoring_observation(
    observation: Observation, pdm: PDMObservation, num_steps: int
) -> tuple[Observation, np.ndarray]:
    """``observation`` with its agents replaced by PDM-Closed's kept, not-collided ones (one frame) and their
    ``(num_steps, M', 7)`` 10 Hz boxes, ready for ``simulation.metric_cache.build_observation_metric_cache``."""
    boxes, keep = pdm.scoring_boxes(num_steps)
    agents = Agents(
        boxes=boxes[:1].copy(),
        types=pdm.types[keep].astype(np.int64),
        track_ids=pdm.track_ids[keep],
        valid=np.ones((1, len(keep)), dtype=bool),
    )
    return dataclasses.replace(observation, agents=agents), boxes
