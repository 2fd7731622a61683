"""State perturbation for imitation: training samples whose ego starts off the logged state, with a target that
drives back onto the logged future.

A planner trained on logged states only never sees a state of its own making, and in closed loop it meets one
within seconds (ahead of the log, beside its lane, faster than the expert drove). ChauffeurNet's remedy is to
synthesise such states: move the ego's current pose and speed, keep the world where it was, and ask for a plan
that rejoins the expert's future. Here the sample's cached features are moved, not re-rendered:

- the pose deviation ``(dx, dy, dyaw)`` (the perturbed pose in the logged ego frame) resamples the BEV raster
  with :func:`bev_warp.warp.warp_bev` (nearest pixel, so binary channels stay binary; the ``ego`` channel, the
  footprint at the current pose, stays where it is) and moves the agent tokens into the perturbed frame, nearest
  first again;
- the speed factor scales the ego's velocity in ``ego_status`` (the car moves along its own heading, so its
  ego-frame velocity keeps its direction); accelerations and the command stay;
- the target is the logged future seen from the perturbed pose, with the offset between the perturbed and the
  logged current pose added back and faded out by a smoothstep over ``rejoin_s``: the plan starts at the
  perturbed ego and is the expert's from ``rejoin_s`` on. The target is not re-timed for the speed factor, so a
  faster ego learns to slow down to the expert's progress.

What the perturbation cannot show: the ego's own past boxes in the ``history`` channel stay those of the log, and a
region of the raster the logged frame did not cover is empty.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from bev_warp.warp import RasterGeometry, warp_bev
from rewards.torch.geometry import normalize_angle
from simulation.features import AgentFeature, PlannerInput
from simulation.render import RasterConfig


@dataclass(frozen=True)
class StatePerturbation:
    """How often and how far a training sample's ego state is moved (each draw uniform in ``[-max, max]``).

    Attributes:
        probability: share of the training samples perturbed (0 disables the augmentation).
        longitudinal_m, lateral_m: largest shift of the current pose along / across the logged heading.
        yaw_rad: largest heading change.
        speed_frac: largest relative change of the ego's speed (``1 +- speed_frac``).
        rejoin_s: time over which the target fades from the perturbed pose onto the logged future.
        interval_s: time between the target's poses.
    """

    probability: float = 0.5
    longitudinal_m: float = 1.0
    lateral_m: float = 0.5
    yaw_rad: float = 0.1
    speed_frac: float = 0.2
    rejoin_s: float = 2.0
    interval_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"state perturbation probability must lie in [0, 1], got {self.probability}")
        magnitudes = {k: getattr(self, k) for k in ("longitudinal_m", "lateral_m", "yaw_rad", "speed_frac")}
        if any(v < 0 for v in magnitudes.values()) or self.speed_frac >= 1.0:
            raise ValueError(f"state perturbation magnitudes must be >= 0 (speed_frac < 1), got {magnitudes}")
        if self.rejoin_s <= 0 or self.interval_s <= 0:
            raise ValueError(f"rejoin_s and interval_s must be > 0, got {self.rejoin_s}, {self.interval_s}")


def draw_perturbations(
    batch_size: int, config: StatePerturbation, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample a pose deviation ``(B, 3)`` (dx, dy, dyaw) and a speed factor ``(B,)``; the samples left alone
    (probability ``1 - config.probability``) get zeros and 1."""
    u = torch.rand(batch_size, 5, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    chosen = (u[:, 4] + 1.0) / 2.0 < config.probability
    scale = torch.tensor([config.longitudinal_m, config.lateral_m, config.yaw_rad], dtype=torch.float64)
    deviation = u[:, :3] * scale * chosen[:, None]
    factor = 1.0 + u[:, 3] * config.speed_frac * chosen
    return deviation, factor


def _to_perturbed_frame(xy: torch.Tensor, yaw: torch.Tensor, deviation: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Points ``(B, N, 2)`` and headings ``(B, N)`` of the logged ego frame in the perturbed one."""
    c, s = torch.cos(deviation[:, 2])[:, None], torch.sin(deviation[:, 2])[:, None]
    dx, dy = xy[..., 0] - deviation[:, None, 0], xy[..., 1] - deviation[:, None, 1]
    return c * dx + s * dy, -s * dx + c * dy, yaw - deviation[:, None, 2]


def perturb_state(
    features: PlannerInput[torch.Tensor],
    trajectory: torch.Tensor,
    deviation: torch.Tensor,
    speed_factor: torch.Tensor,
    raster: RasterConfig,
    config: StatePerturbation,
) -> tuple[PlannerInput[torch.Tensor], torch.Tensor]:
    """Features and target ``(B, P, 3)`` of the perturbed samples (see the module docstring).

    Args:
        features: a batch rendered at the logged poses (``route`` must be ``None``: nothing here moves it).
        trajectory: ``(B, P, 3)`` logged future poses in the logged rear-axle frame.
        deviation: ``(B, 3)`` perturbed pose in the logged frame; speed_factor: ``(B,)``.
        raster: the layout of ``features.bev``.
    """
    if features.route is not None:
        raise ValueError("state perturbation does not move a route tensor; train without one or without it")
    b = trajectory.shape[0]
    if deviation.shape != (b, 3) or speed_factor.shape != (b,):
        raise ValueError(f"deviation must be ({b}, 3) and speed_factor ({b},)")
    device = features.bev.device
    dev, speed_factor, trajectory = deviation.to(device, torch.float64), speed_factor.to(device), trajectory.to(device)
    # raster: warp the world, keep the ego footprint where the ego is
    geometry = RasterGeometry.from_raster_config(raster)
    warped = warp_bev(features.bev, dev, geometry, mode="nearest")
    if "ego" in raster.channels:
        k = raster.channels.index("ego")
        warped[:, k] = features.bev[:, k]
    # agents: poses and velocities into the perturbed frame, padding untouched
    agents = features.agents.to(torch.float64)
    heading = torch.atan2(agents[..., AgentFeature.SIN_HEADING], agents[..., AgentFeature.COS_HEADING])
    x, y, yaw = _to_perturbed_frame(agents[..., [AgentFeature.X, AgentFeature.Y]], heading, dev)
    c, s = torch.cos(dev[:, 2])[:, None], torch.sin(dev[:, 2])[:, None]
    vx, vy = agents[..., AgentFeature.VX], agents[..., AgentFeature.VY]
    moved = agents.clone()
    moved[..., AgentFeature.X], moved[..., AgentFeature.Y] = x, y
    moved[..., AgentFeature.COS_HEADING], moved[..., AgentFeature.SIN_HEADING] = torch.cos(yaw), torch.sin(yaw)
    moved[..., AgentFeature.VX], moved[..., AgentFeature.VY] = c * vx + s * vy, -s * vx + c * vy
    mask = features.agents_mask
    agents_out = torch.where(mask[..., None], moved.to(features.agents.dtype), features.agents)
    # nearest first again, as the feature builder orders them (padding stays last)
    distance = torch.hypot(x, y).masked_fill(~mask, torch.inf)
    order = torch.sort(distance, dim=1, stable=True).indices
    agents_out = torch.gather(agents_out, 1, order[..., None].expand_as(agents_out))
    mask_out = torch.gather(mask, 1, order)
    # ego status: the speed scaled along the ego's own heading
    ego = features.ego_status.clone()
    ego[:, :2] = ego[:, :2] * speed_factor[:, None].to(ego.dtype)
    # target: the logged future from the perturbed pose, the offset to the logged current pose faded out
    traj = trajectory.to(torch.float64)
    tx, ty, tyaw = _to_perturbed_frame(traj[..., :2], traj[..., 2], dev)
    origin = torch.zeros(b, 1, 2, dtype=torch.float64, device=traj.device)
    ox, oy, oyaw = _to_perturbed_frame(origin, torch.zeros(b, 1, dtype=torch.float64, device=traj.device), dev)
    tau = (torch.arange(1, traj.shape[1] + 1, dtype=torch.float64) * config.interval_s / config.rejoin_s).clamp(max=1)
    keep = (1.0 - (3.0 * tau**2 - 2.0 * tau**3)).to(traj.device)  # 1 at the start, 0 from rejoin_s on
    target = torch.stack([tx - keep * ox, ty - keep * oy, normalize_angle(tyaw - keep * oyaw)], -1).to(trajectory.dtype)
    out = dataclasses.replace(features, bev=warped, agents=agents_out, agents_mask=mask_out, ego_status=ego)
    return out, target


def perturb_batch(
    batch: dict[str, Any], config: StatePerturbation, raster: RasterConfig, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """A training batch (``features``, ``targets["trajectory"]``) with :func:`draw_perturbations` applied; only the
    drawn samples are touched (the others are returned bit for bit)."""
    features, trajectory = batch["features"], batch["targets"]["trajectory"]
    deviation, factor = draw_perturbations(trajectory.shape[0], config, generator)
    idx = torch.nonzero((deviation != 0).any(1) | (factor != 1.0)).squeeze(1)
    if len(idx) == 0:
        return batch
    sub = features.apply(lambda v: v[idx.to(v.device)])
    moved, target = perturb_state(
        sub, trajectory[idx.to(trajectory.device)], deviation[idx], factor[idx], raster, config
    )

    def put(full: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        full = full.clone()
        full[idx.to(full.device)] = part
        return full

    new_features = dataclasses.replace(
        features,
        bev=put(features.bev, moved.bev),
        ego_status=put(features.ego_status, moved.ego_status),
        agents=put(features.agents, moved.agents),
        agents_mask=put(features.agents_mask, moved.agents_mask),
    )
    targets = {**batch["targets"], "trajectory": put(trajectory, target)}
    return {**batch, "features": new_features, "targets": targets}
