"""Truncated diffusion planner: an anchored Gaussian around K-means trajectory anchors, denoised in 2 steps.

Training noises the anchors to a small timestep (``t < 50``); the cascade decoder predicts, for every
noisy anchor, a classification logit and a clean trajectory. The anchor nearest the ground truth is the
positive: focal loss on the logits, L1 on its trajectory. Inference noises the anchors to ``t = 8`` and
runs two DDIM steps; the output is the best-scored candidate of the last call. With ``truncated=False``
the same network is the vanilla baseline: it denoises pure noise with 20 DDIM steps.

The trajectory head has three forms:

- offset from the noisy points (the default, DiffusionDrive's): the head must learn to cancel the
  sampling noise (about 1.5 m per waypoint at ``t = 8``), and what it does not cancel stays as jitter;
- ``anchor_offset``: an offset from the candidate's anchor, the mean of its anchored Gaussian (the
  shipped truncated config): nothing to cancel, and the candidates start as spread as the anchors;
- ``absolute_output``: the clean waypoints themselves, normalised over ``x_range`` / ``y_range``
  (the vanilla config: an offset from a pure-noise waypoint is not learnable; for the truncated planner
  the candidates collapse onto one mode).

In the two offset forms the later cascade layers add their offsets to the previous layer's waypoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from planners.anchors import kmeans_anchors
from planners.base import PlanOutput
from planners.encoders import AgentEncoder, BEVEncoder, EgoEncoder, sinusoidal_embedding
from planners.policy import Rollout
from planners.schedulers import TruncatedDDIMScheduler, ddim_step
from planners.truncated_policy import RolloutConfig, sample_rollout, score_rollout
from simulation.features import NUM_POSES, PlannerInput


@dataclass
class TruncatedDiffusionConfig:
    """Hyper-parameters; stored with checkpoints and compared on load."""

    bev_channels: int = 12
    bev_extent: tuple[float, float, float, float] = (-16.0, 48.0, -32.0, 32.0)  # x_min, x_max, y_min, y_max (m)
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 2
    backbone: str = "resnet10t"
    backbone_stage: int = -1
    num_anchors: int = 20
    x_range: tuple[float, float] = (-2.0, 90.0)
    y_range: tuple[float, float] = (-30.0, 30.0)
    train_max_timestep: int = 50
    inference_start_timestep: int = 8
    num_inference_steps: int = 2
    truncated: bool = True
    vanilla_steps: int = 20
    absolute_output: bool = False
    anchor_offset: bool = False
    cls_weight: float = 10.0
    reg_weight: float = 8.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    kmeans_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class CascadeLayer(nn.Module):
    """One decoder layer: BEV sampling at the waypoints, attention to the scene tokens (agents + ego), attention
    to the ego token alone (its status must not drown among the agents), FFN, time FiLM, heads."""

    def __init__(
        self,
        d: int,
        heads: int,
        bev_extent: tuple[float, float, float, float],
        output_frame: tuple[tuple[float, float], tuple[float, float]] | None = None,
    ) -> None:
        super().__init__()
        self.bev_extent = bev_extent
        #: ``None``: waypoints = input points + regressed offsets (DiffusionDrive); else ``(x_range, y_range)``
        #: and the head regresses the waypoints themselves, normalised to ``[-1, 1]`` over those ranges.
        self.output_frame = output_frame
        self.bev_proj = nn.Conv2d(d, d, 3, padding=1)
        self.point_weights = nn.Linear(d, NUM_POSES)
        self.bev_out = nn.Linear(d, d)
        self.scene_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ego_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(4)])
        self.film = nn.Sequential(nn.Mish(), nn.Linear(d, 2 * d))
        cls_out = nn.Linear(d, 1)
        nn.init.constant_(cls_out.bias, -4.595)  # prior probability 0.01
        self.cls_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.LayerNorm(d), cls_out)
        self.reg_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, NUM_POSES * 3))

    def sample_bev(self, bev: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Bilinear samples ``(B, K, 8, d)`` of ``bev`` ``(B, d, h, w)`` at ego-frame points ``(B, K, 8, 2)``.

        The raster has ego +x pointing up (row 0 = x_max) and ego +y pointing left (column 0 = y_max).
        """
        x_min, x_max, y_min, y_max = self.bev_extent
        gx = 1.0 - 2.0 * (points[..., 1] - y_min) / (y_max - y_min)
        gy = 1.0 - 2.0 * (points[..., 0] - x_min) / (x_max - x_min)
        b, k, p, _ = points.shape
        grid = torch.stack([gx, gy], dim=-1).reshape(b, k * p, 1, 2)
        sampled = F.grid_sample(bev, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return sampled.reshape(b, -1, k, p).permute(0, 2, 3, 1)

    def forward(
        self,
        query: torch.Tensor,
        points: torch.Tensor,
        bev: torch.Tensor,
        scene: torch.Tensor,
        scene_pad: torch.Tensor,
        time_emb: torch.Tensor,
        base: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``query (B,K,d)``, ``points (B,K,8,2)`` metres -> (query, poses (B,K,8,3), logits (B,K)).

        In offset mode the regressed offsets are added to ``base`` ``(B,K,8,2)`` metres, or to ``points`` when
        it is ``None``.
        """
        samples = self.sample_bev(self.bev_proj(bev), points)
        weights = torch.softmax(self.point_weights(query), dim=-1).unsqueeze(-1)
        query = self.norms[0](query + self.bev_out((samples * weights).sum(2)))
        attended, _ = self.scene_attn(query, scene, scene, key_padding_mask=scene_pad, need_weights=False)
        query = self.norms[1](query + attended)
        ego = scene[:, -1:]  # the ego token closes the scene tokens (see TruncatedDiffusionPlanner.encode)
        attended, _ = self.ego_attn(query, ego, ego, need_weights=False)
        query = self.norms[2](query + attended)
        query = self.norms[3](query + self.ffn(query))
        scale, shift = self.film(time_emb).unsqueeze(1).chunk(2, dim=-1)
        query = query * (1.0 + scale) + shift
        reg = self.reg_head(query).reshape(query.shape[0], query.shape[1], NUM_POSES, 3)
        if self.output_frame is None:
            xy = (points if base is None else base) + reg[..., :2]
        else:
            (x_lo, x_hi), (y_lo, y_hi) = self.output_frame
            xy = torch.stack(
                [(reg[..., 0] + 1.0) / 2.0 * (x_hi - x_lo) + x_lo, (reg[..., 1] + 1.0) / 2.0 * (y_hi - y_lo) + y_lo], -1
            )
        heading = torch.tanh(reg[..., 2:]) * torch.pi
        return query, torch.cat([xy, heading], dim=-1), self.cls_head(query).squeeze(-1)


def focal_bce(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Sigmoid focal loss, mean over all elements."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * (1 - p_t) ** gamma * ce).mean()


class TruncatedDiffusionPlanner(nn.Module):
    """DiffusionDrive-style planner over the BEV raster, agent tokens and ego status.

    Args:
        config: hyper-parameters.
        anchors: ``(K, 8, 2)`` trajectory anchors in metres (K-means of the training split), a ``.npy`` file
            holding them, or ``None``: then they are computed from the training split by :meth:`init_from_data`
            before training starts, and stored with the checkpoint.
    """

    anchors: torch.Tensor
    anchors_ready: torch.Tensor
    lo: torch.Tensor
    span: torch.Tensor

    def __init__(
        self, config: TruncatedDiffusionConfig | None = None, anchors: torch.Tensor | str | None = None
    ) -> None:
        super().__init__()
        config = config or TruncatedDiffusionConfig()
        ready = anchors is not None
        if isinstance(anchors, str | Path):
            anchors = torch.from_numpy(np.load(anchors))
        if anchors is None:
            anchors = torch.zeros(config.num_anchors, NUM_POSES, 2)
        if anchors.shape != (config.num_anchors, NUM_POSES, 2):
            raise ValueError(f"anchors must be ({config.num_anchors}, {NUM_POSES}, 2), got {tuple(anchors.shape)}")
        if config.anchor_offset and (config.absolute_output or not config.truncated):
            raise ValueError("anchor_offset needs the truncated sampler and the offset head (absolute_output: false)")
        self.config = config
        d = config.d_model
        self.bev_encoder = BEVEncoder(config.bev_channels, d, config.backbone, config.backbone_stage)
        self.agent_encoder = AgentEncoder(d)
        self.ego_encoder = EgoEncoder(d)
        self.traj_embed = nn.Sequential(nn.Linear(NUM_POSES * 2 * 32, d), nn.ReLU(), nn.LayerNorm(d), nn.Linear(d, d))
        self.time_embed = nn.Sequential(nn.Linear(d, 4 * d), nn.Mish(), nn.Linear(4 * d, d))
        self.layers = nn.ModuleList(
            [
                CascadeLayer(
                    d,
                    config.num_heads,
                    config.bev_extent,
                    (config.x_range, config.y_range) if config.absolute_output else None,
                )
                for _ in range(config.num_layers)
            ]
        )
        self.register_buffer("anchors", anchors.float())
        self.register_buffer("anchors_ready", torch.tensor(ready))
        self.register_buffer("lo", torch.tensor([config.x_range[0], config.y_range[0]]))
        self.register_buffer(
            "span", torch.tensor([config.x_range[1] - config.x_range[0], config.y_range[1] - config.y_range[0]])
        )
        self.scheduler = TruncatedDDIMScheduler()
        if config.truncated:
            steps = self.scheduler.set_timesteps(config.num_inference_steps, config.inference_start_timestep)
        else:
            steps = self.scheduler.set_timesteps(config.vanilla_steps)
        self.inference_timesteps: list[int] = steps
        self.alpha_pairs: list[tuple[float, float]] = [
            (float(self.scheduler.alpha(t)), float(self.scheduler.alpha(self.scheduler.previous_timestep(t))))
            for t in steps
        ]
        #: how :meth:`rollout` samples (RL); not part of the checkpointed config
        self.rollout_config = RolloutConfig()

    @classmethod
    def from_config_dict(cls, config: dict) -> TruncatedDiffusionPlanner:
        """Rebuild from a stored config (anchors come with the state dict)."""
        fields = dict(config)
        for key in ("bev_extent", "x_range", "y_range"):
            fields[key] = tuple(fields[key])
        return cls(TruncatedDiffusionConfig(**fields))

    def needs_data_init(self) -> bool:
        return not bool(self.anchors_ready)

    def init_from_data(self, trajectories: np.ndarray) -> None:
        """Set the anchors to the K-means of training trajectories ``(M, 8, 2+)``."""
        anchors = kmeans_anchors(trajectories, self.config.num_anchors, seed=self.config.kmeans_seed)
        self.anchors.copy_(torch.from_numpy(anchors).float())
        self.anchors_ready.fill_(True)

    # ---------------------------------------------------------------- normalisation
    def normalize(self, xy: torch.Tensor) -> torch.Tensor:
        """Metres -> ``[-1, 1]``."""
        return 2.0 * (xy - self.lo) / self.span - 1.0

    def denormalize(self, xy: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` -> metres."""
        return (xy + 1.0) / 2.0 * self.span + self.lo

    # ---------------------------------------------------------------- network
    def encode_bev(self, raster: torch.Tensor) -> torch.Tensor:
        """The BEV encoder alone: raster ``(B, C, H, W)`` -> feature map ``(B, d, H / s, W / s)``."""
        return self.bev_encoder(raster)

    def encode(
        self, inputs: PlannerInput[torch.Tensor], bev_features: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """BEV map ``(B,d,h,w)``, scene tokens ``(B,N+1,d)`` (agents then ego) and their padding mask.

        ``bev_features``: ``inputs.bev`` already holds the feature map of :meth:`encode_bev`."""
        bev = inputs.bev if bev_features else self.encode_bev(inputs.bev)
        agents = self.agent_encoder(inputs.agents)
        ego = self.ego_encoder(inputs.ego_status)
        scene = torch.cat([agents, ego], dim=1)
        pad = torch.cat([~inputs.agents_mask, torch.zeros_like(inputs.agents_mask[:, :1])], dim=1)
        return bev, scene, pad

    def decode(
        self,
        noisy_norm: torch.Tensor,
        timestep: torch.Tensor,
        context: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        anchors: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cascade decoder on normalised noisy waypoints ``(B,K,8,2)`` at ``timestep`` (scalar or ``(B,)``).

        ``anchors`` ``(B,K,8,2)`` metres: each candidate's anchor (the ``anchor_offset`` head's base), by default
        the planner's ``K`` anchors in order; candidates are independent, so ``K`` may be any number of samples.
        Returns per layer (poses ``(B,K,8,3)`` metres, logits ``(B,K)``).
        """
        bev, scene, pad = context
        points = self.denormalize(noisy_norm.clamp(-1.0, 1.0))
        b, k = points.shape[:2]
        query = self.traj_embed(sinusoidal_embedding(noisy_norm.clamp(-1.0, 1.0) * 100.0, 32).reshape(b, k, -1))
        time_emb = self.time_embed(sinusoidal_embedding(timestep.float().reshape(-1).expand(b), self.config.d_model))
        # the first layer's offsets start from the anchors (the means of the anchored Gaussian) or from the noisy
        # points (DiffusionDrive); every later layer refines the previous layer's waypoints
        base: torch.Tensor | None = None
        if self.config.anchor_offset:
            base = self.anchors.expand(b, -1, -1, -1) if anchors is None else anchors
        outputs = []
        for layer in self.layers:
            query, poses, logits = layer(query, points, bev, scene, pad, time_emb, base)
            outputs.append((poses, logits))
            points = poses[..., :2].detach()
            base = None
        return outputs

    # ---------------------------------------------------------------- training
    def compute_loss(
        self,
        inputs: PlannerInput[torch.Tensor],
        targets: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Focal classification of the anchor nearest the ground truth + L1 on its trajectory, summed over layers."""
        inputs.validate(self.config.bev_channels)
        gt = targets["trajectory"]
        b, device = gt.shape[0], gt.device
        if self.config.truncated:
            x0 = self.normalize(self.anchors).unsqueeze(0).expand(b, -1, -1, -1)
            high = self.config.train_max_timestep
        else:
            x0 = self.normalize(gt[..., :2]).unsqueeze(1)
            high = self.scheduler.num_train_timesteps
        t = torch.randint(0, high, (b,), device=device, generator=generator)
        noise = torch.randn(x0.shape, device=device, generator=generator)
        noisy = self.scheduler.add_noise(x0, noise, t)
        context = self.encode(inputs)
        outputs = self.decode(noisy, t, context)
        if self.config.truncated:
            dist = (self.anchors.unsqueeze(0) - gt[:, None, :, :2]).norm(dim=-1).mean(-1)
            positive = dist.argmin(dim=1)
        else:
            positive = torch.zeros(b, dtype=torch.long, device=device)
        cls_loss, reg_loss = gt.new_zeros(()), gt.new_zeros(())
        for layer_idx in range(self.config.num_layers):
            poses, logits = outputs[layer_idx]
            chosen = poses[torch.arange(b, device=device), positive]
            reg_loss = reg_loss + F.l1_loss(chosen, gt)
            if self.config.truncated:
                target = F.one_hot(positive, self.config.num_anchors).float()
                cls_loss = cls_loss + focal_bce(logits, target, self.config.focal_gamma, self.config.focal_alpha)
        loss = self.config.cls_weight * cls_loss + self.config.reg_weight * reg_loss
        return {"loss": loss, "cls_loss": cls_loss, "reg_loss": reg_loss}

    # ---------------------------------------------------------------- inference
    def initial_noise_shape(self, batch: int, num_samples: int | None = None) -> tuple[int, int, int, int]:
        k = self.config.num_anchors if num_samples is None else num_samples
        return (batch, k, NUM_POSES, 2)

    def forward(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor | None = None) -> PlanOutput:
        """Sample candidates and pick the best; ``noise`` ``(B, K, 8, 2)`` makes the output reproducible."""
        inputs.validate(self.config.bev_channels)
        return self.sample(inputs, noise)

    def forward_features(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor | None = None) -> PlanOutput:
        """:meth:`forward` on ``inputs`` whose ``bev`` is the feature map ``(B, d, h, w)`` of :meth:`encode_bev`."""
        if noise is None:
            noise = torch.randn(self.initial_noise_shape(inputs.ego_status.shape[0]), device=inputs.bev.device)
        return self.denoise(self.encode(inputs, bev_features=True), noise)

    def sample(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor | None = None) -> PlanOutput:
        b = inputs.ego_status.shape[0]
        if noise is None:
            noise = torch.randn(self.initial_noise_shape(b), device=inputs.ego_status.device)
        return self.denoise(self.encode(inputs), noise)

    def denoise(self, context: tuple[torch.Tensor, torch.Tensor, torch.Tensor], noise: torch.Tensor) -> PlanOutput:
        """The sampler alone: anchored (or pure) noise ``(B, K, 8, 2)`` -> candidates, given the encoded scene."""
        b = noise.shape[0]
        if self.config.truncated:
            a0 = self.alpha_pairs[0][0]
            x = a0**0.5 * self.normalize(self.anchors).unsqueeze(0) + (1.0 - a0) ** 0.5 * noise
        else:
            x = noise
        poses = logits = x.new_zeros(())
        zero = x.new_zeros(())
        for t, (a_t, a_prev) in zip(self.inference_timesteps, self.alpha_pairs):
            poses, logits = self.decode(x, torch.tensor(t, device=x.device), context)[-1]
            x0 = self.normalize(poses[..., :2]).clamp(-1.0, 1.0)
            x, _ = ddim_step(x0, x, x.new_tensor(a_t), x.new_tensor(a_prev), zero, zero)
        if self.config.truncated:
            best = logits.argmax(dim=1)
        else:  # medoid of the samples: the vanilla baseline has no scores
            flat = poses[..., :2].flatten(2)
            best = torch.cdist(flat, flat).sum(-1).argmin(dim=1)
        trajectory = poses[torch.arange(b, device=poses.device), best]
        return PlanOutput(trajectory=trajectory, candidates=poses, scores=logits)

    # ---------------------------------------------------------------- RL policy (planners.policy.PlanningPolicy)
    def rollout(
        self, inputs: PlannerInput[torch.Tensor], num_samples: int, generator: torch.Generator | None = None
    ) -> Rollout:
        """``num_samples`` (a multiple of the anchors) stochastic chains per scene under :attr:`rollout_config`;
        the plans are the final samples (see :mod:`planners.truncated_policy`)."""
        return sample_rollout(self, inputs, num_samples, self.rollout_config, generator)

    def log_prob(self, inputs: PlannerInput[torch.Tensor], rollout: Rollout) -> torch.Tensor:
        """``(B, N, S)`` per-step log-probs of ``rollout`` under the current weights, with gradients."""
        return score_rollout(self, inputs, rollout)
