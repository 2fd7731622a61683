"""A discriminator that scores a generator's candidate trajectories of a scene (DiffusionDriveV2's mode selector,
RAD-2's discriminator; methods.md §1b.2, §2.2).

Every candidate (``(K, 8, 3)`` local poses at 0.5 s in the rear-axle frame, ``K`` up to a few hundred, padded with a
mask) is a query embedded from its poses. A scorer layer lets each query

1. read the BEV feature map at its own waypoints (bilinear ``grid_sample``, the raster layout of
   :mod:`simulation.features`), weighted over the 8 points by the query,
2. attend to the scene tokens (agents + ego),
3. attend to the other candidates of its scene (self-attention under the padding mask),
4. attend to the ego token alone, then an FFN.

One logit per sub-metric of the scorer (the heads follow ``version``: the terms of
:data:`rewards.composite.TERMS`), each a sigmoid probability; the candidate's score is their PDMS-style aggregate,
the multipliers' product times the weighted average of the weighted metrics (weights and multiplier names from
:mod:`rewards.pdm`). With ``coarse_to_fine`` the coarse stage scores every candidate, the ``top_k`` best are re-scored
by a deeper fine stage, and only those can be picked.

The scores define a categorical policy over the candidates, :func:`log_probs` (exact), for RL of the discriminator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from planners.encoders import AgentEncoder, BEVEncoder, EgoEncoder
from rewards.composite import TERMS
from rewards.pdm import EPDMS_MULTIPLIERS, EPDMS_WEIGHTS, PDMS_MULTIPLIERS, PDMS_WEIGHTS
from simulation.features import NUM_POSES, PLANNER_RASTER, PlannerInput

Version = Literal["v1", "v2"]
#: Score of a padded candidate: below every aggregate (which lies in [0, 1]), so a padded candidate never wins.
INVALID_SCORE = -1.0
#: Pose normalisation of the candidate embedding (metres, metres, -): DiffusionDriveV2's x / 50, y / 20.
POSE_SCALE = (50.0, 20.0)


def head_names(version: Version) -> tuple[str, ...]:
    """The sub-metrics a discriminator of ``version`` predicts: the rule reward's terms (v1: NC, DAC, DDC, TTC, EP,
    C; v2: NC, DAC, DDC, TLC, TTC, EP, LK, HC; extended comfort needs two frames and is not a term of a single plan)."""
    if version not in TERMS:
        raise ValueError(f"version must be one of {sorted(TERMS)}, got {version!r}")
    return TERMS[version]


def aggregate_weights(version: Version) -> tuple[tuple[str, ...], dict[str, float]]:
    """``(multiplier names, {weighted name: weight})`` of ``version``'s aggregate, restricted to its heads."""
    heads = head_names(version)
    multipliers = PDMS_MULTIPLIERS if version == "v1" else EPDMS_MULTIPLIERS
    weights = PDMS_WEIGHTS if version == "v1" else EPDMS_WEIGHTS
    return tuple(m for m in multipliers if m in heads), {n: w for n, w in weights.items() if n in heads and w > 0}


def aggregate(probs: Mapping[str, torch.Tensor], version: Version) -> torch.Tensor:
    """PDMS-style aggregate ``prod(multipliers) * sum(w_i p_i) / sum(w_i)`` of per-head probabilities ``(...)``.

    v1: ``NC * DAC * (5 TTC + 5 EP + 2 C) / 12``; v2: ``NC * DAC * DDC * TLC * (5 EP + 5 TTC + 2 LK + 2 HC) / 14``
    (the rule reward's ``total`` of a single plan).
    """
    multipliers, weights = aggregate_weights(version)
    first = next(iter(probs.values()))
    product = torch.ones_like(first)
    for name in multipliers:
        product = product * probs[name]
    weighted = sum(w * probs[n] for n, w in weights.items())
    return product * weighted / sum(weights.values())


def log_probs(scores: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Exact log-probabilities ``(B, K)`` of the categorical policy ``softmax(scores / temperature)`` over the valid
    candidates (``mask`` ``(B, K)`` bool); padded candidates get ``-inf`` (probability 0)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = (scores / temperature).masked_fill(~mask, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


@dataclass
class DiscriminatorConfig:
    """Hyper-parameters; stored with checkpoints.

    ``bev_extent`` is the raster's ``(x_min, x_max, y_min, y_max)`` in metres (:data:`PLANNER_RASTER` by default).
    """

    version: Version = "v1"
    bev_channels: int = 12
    bev_extent: tuple[float, float, float, float] = field(default_factory=lambda: PLANNER_RASTER.extent)
    d_model: int = 128
    num_heads: int = 4
    dropout: float = 0.1
    backbone: str = "resnet10t"
    backbone_stage: int = -2
    coarse_layers: int = 1
    coarse_to_fine: bool = False
    fine_layers: int = 2
    top_k: int = 32
    #: a ``score`` head whose logit is the candidate's score (a learned reward, :mod:`planners.reward_model`); the
    #: sub-metric heads stay as an auxiliary output
    scalar_head: bool = False
    #: the candidates of a scene attend to each other (off: each candidate is scored on its own)
    self_attention: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> DiscriminatorConfig:
        fields = dict(config)
        if "bev_extent" in fields:
            fields["bev_extent"] = tuple(fields["bev_extent"])
        return cls(**fields)


@dataclass
class StageOutput:
    """One stage's predictions.

    Attributes:
        logits: ``{head: (B, K)}`` sub-metric logits (meaningful where ``mask``).
        scores: ``(B, K)`` aggregate of the heads' probabilities (the ``score`` logit with ``scalar_head``),
            :data:`INVALID_SCORE` where not ``mask``.
        mask: ``(B, K)`` bool, the candidates this stage scored.
    """

    logits: dict[str, torch.Tensor]
    scores: torch.Tensor
    mask: torch.Tensor


@dataclass
class DiscriminatorOutput:
    """Scores of ``K`` candidates of ``B`` scenes.

    Attributes:
        scores: ``(B, K)`` the final score (the fine stage's where it ran, else the coarse one's).
        mask: ``(B, K)`` bool, the candidates that can be picked (valid; with coarse-to-fine, the top ``k``).
        best: ``(B,)`` long, the index of the highest-scored pickable candidate.
        stages: the coarse stage, then the fine stage when it ran.
    """

    scores: torch.Tensor
    mask: torch.Tensor
    best: torch.Tensor
    stages: list[StageOutput]


class ScorerLayer(nn.Module):
    """BEV sampling at the waypoints, attention to the scene, to the other candidates and to the ego, FFN."""

    def __init__(self, d: int, heads: int, dropout: float, self_attention: bool = True) -> None:
        super().__init__()
        self.point_weights = nn.Linear(d, NUM_POSES)
        self.bev_out = nn.Linear(d, d)
        self.scene_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True) if self_attention else None
        self.self_attn = attn
        self.ego_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(5)])

    def forward(
        self,
        query: torch.Tensor,
        samples: torch.Tensor,
        scene: torch.Tensor,
        scene_pad: torch.Tensor,
        candidate_pad: torch.Tensor,
    ) -> torch.Tensor:
        """``query (B,K,d)``, BEV ``samples (B,K,8,d)`` at its waypoints, ``scene (B,N+1,d)`` (agents, then ego)
        with padding ``scene_pad (B,N+1)``, ``candidate_pad (B,K)`` bool -> ``(B,K,d)``."""
        weights = torch.softmax(self.point_weights(query), dim=-1).unsqueeze(-1)
        query = self.norms[0](query + self.bev_out((samples * weights).sum(2)))
        attended, _ = self.scene_attn(query, scene, scene, key_padding_mask=scene_pad, need_weights=False)
        query = self.norms[1](query + attended)
        if self.self_attn is not None:
            attended, _ = self.self_attn(query, query, query, key_padding_mask=candidate_pad, need_weights=False)
            query = self.norms[2](query + attended)
        ego = scene[:, -1:]
        attended, _ = self.ego_attn(query, ego, ego, need_weights=False)
        query = self.norms[3](query + attended)
        return self.norms[4](query + self.ffn(query))


class ScorerStage(nn.Module):
    """A stack of :class:`ScorerLayer` and one linear head per sub-metric (and the ``score`` head when
    ``config.scalar_head``: its logit is then the stage's score instead of the heads' aggregate)."""

    def __init__(self, config: DiscriminatorConfig, num_layers: int) -> None:
        super().__init__()
        d = config.d_model
        self.version: Version = config.version
        self.layers = nn.ModuleList(
            [ScorerLayer(d, config.num_heads, config.dropout, config.self_attention) for _ in range(num_layers)]
        )
        self.heads = nn.ModuleDict({name: nn.Linear(d, 1) for name in head_names(config.version)})
        self.score_head = nn.Linear(d, 1) if config.scalar_head else None

    def forward(
        self,
        query: torch.Tensor,
        samples: torch.Tensor,
        scene: torch.Tensor,
        scene_pad: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, StageOutput]:
        """Refined queries ``(B,K,d)`` and the stage's predictions for the candidates under ``mask`` ``(B,K)``."""
        # a scene without any valid candidate attends to all of them (no NaN); its scores are masked anyway
        pad = ~mask & mask.any(-1, keepdim=True)
        for layer in self.layers:
            query = layer(query, samples, scene, scene_pad, pad)
        logits = {name: head(query).squeeze(-1) for name, head in self.heads.items()}
        if self.score_head is not None:
            scores = self.score_head(query).squeeze(-1)
        else:
            scores = aggregate({n: torch.sigmoid(v) for n, v in logits.items()}, self.version)
        return query, StageOutput(logits, scores.masked_fill(~mask, INVALID_SCORE), mask)


class Discriminator(nn.Module):
    """Scores candidate trajectories of a scene (see the module docstring).

    Args:
        config: hyper-parameters (``version`` picks the heads and the aggregate).
    """

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        config = config or DiscriminatorConfig()
        self.config = config
        d = config.d_model
        self.bev_encoder = BEVEncoder(config.bev_channels, d, config.backbone, config.backbone_stage)
        self.bev_proj = nn.Conv2d(d, d, 3, padding=1)
        self.agent_encoder = AgentEncoder(d)
        self.ego_encoder = EgoEncoder(d)
        self.traj_embed = nn.Sequential(
            nn.Linear(NUM_POSES * 4, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.LayerNorm(d), nn.Linear(d, d)
        )
        self.coarse = ScorerStage(config, config.coarse_layers)
        self.fine = ScorerStage(config, config.fine_layers) if config.coarse_to_fine else None

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> Discriminator:
        return cls(DiscriminatorConfig.from_dict(config))

    @property
    def heads(self) -> tuple[str, ...]:
        return head_names(self.config.version)

    def encode(self, inputs: PlannerInput[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """BEV map ``(B,d,h,w)``, scene tokens ``(B,N+1,d)`` (agents then ego) and their padding mask."""
        inputs.validate(self.config.bev_channels)
        bev = self.bev_proj(self.bev_encoder(inputs.bev))
        scene = torch.cat([self.agent_encoder(inputs.agents), self.ego_encoder(inputs.ego_status)], dim=1)
        pad = torch.cat([~inputs.agents_mask, torch.zeros_like(inputs.agents_mask[:, :1])], dim=1)
        return bev, scene, pad

    def sample_bev(self, bev: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Bilinear samples ``(B, K, 8, d)`` of ``bev`` ``(B, d, h, w)`` at ego-frame points ``(B, K, 8, 2)`` (ego +x
        up the raster, +y to its left; zeros outside)."""
        x_min, x_max, y_min, y_max = self.config.bev_extent
        gx = 1.0 - 2.0 * (points[..., 1] - y_min) / (y_max - y_min)
        gy = 1.0 - 2.0 * (points[..., 0] - x_min) / (x_max - x_min)
        b, k, p, _ = points.shape
        grid = torch.stack([gx, gy], dim=-1).reshape(b, k * p, 1, 2)
        sampled = F.grid_sample(bev, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return sampled.reshape(b, -1, k, p).permute(0, 2, 3, 1)

    def embed(self, candidates: torch.Tensor) -> torch.Tensor:
        """Queries ``(B, K, d)`` of candidates ``(B, K, 8, 3)``: an MLP of (x / 50, y / 20, cos, sin) per pose."""
        x, y, h = candidates.unbind(-1)
        feats = torch.stack([x / POSE_SCALE[0], y / POSE_SCALE[1], torch.cos(h), torch.sin(h)], dim=-1)
        return self.traj_embed(feats.flatten(2))

    def forward(
        self, inputs: PlannerInput[torch.Tensor], candidates: torch.Tensor, mask: torch.Tensor | None = None
    ) -> DiscriminatorOutput:
        """Score ``candidates`` ``(B, K, 8, 3)`` (``mask`` ``(B, K)`` bool, ``True`` where valid; ``None``: all)."""
        b, k = candidates.shape[:2]
        if candidates.shape[2:] != (NUM_POSES, 3):
            raise ValueError(f"candidates must be (B, K, {NUM_POSES}, 3), got {tuple(candidates.shape)}")
        if mask is None:
            mask = torch.ones(b, k, dtype=torch.bool, device=candidates.device)
        # padded candidates may hold anything (NaN included): they are zeroed before they reach the network
        candidates = torch.where(mask[..., None, None], candidates, torch.zeros_like(candidates))
        bev, scene, scene_pad = self.encode(inputs)
        samples = self.sample_bev(bev, candidates[..., :2])
        query, coarse = self.coarse(self.embed(candidates), samples, scene, scene_pad, mask)
        stages = [coarse]
        scores, pickable = coarse.scores, mask
        if self.fine is not None:
            fine = self._fine_stage(query, samples, scene, scene_pad, coarse)
            stages.append(fine)
            scores, pickable = torch.where(fine.mask, fine.scores, coarse.scores), fine.mask
        best = scores.masked_fill(~pickable, float("-inf")).argmax(dim=-1)
        return DiscriminatorOutput(scores, pickable, best, stages)

    def _fine_stage(
        self,
        query: torch.Tensor,
        samples: torch.Tensor,
        scene: torch.Tensor,
        scene_pad: torch.Tensor,
        coarse: StageOutput,
    ) -> StageOutput:
        """Re-score the ``top_k`` valid candidates of the coarse stage; predictions scattered back to ``(B, K)``."""
        assert self.fine is not None
        b, k = coarse.scores.shape
        top = min(self.config.top_k, k)
        ranked = coarse.scores.detach().masked_fill(~coarse.mask, float("-inf"))
        index = ranked.topk(top, dim=-1).indices  # (B, top)
        kept = coarse.mask.gather(1, index)

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.gather(1, index.reshape(b, top, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))

        _, fine = self.fine(pick(query), pick(samples), scene, scene_pad, kept)

        def scatter(t: torch.Tensor, fill: float) -> torch.Tensor:
            return torch.full((b, k), fill, dtype=t.dtype, device=t.device).scatter(1, index, t)

        mask = torch.zeros_like(coarse.mask).scatter(1, index, kept)
        logits = {n: scatter(v, 0.0) for n, v in fine.logits.items()}
        return StageOutput(logits, scatter(fine.scores, INVALID_SCORE), mask)


# --------------------------------------------------------------------------------------------------
# supervised loss (the warm start on the scorer's sub-metrics)
# --------------------------------------------------------------------------------------------------


def head_targets(terms: Mapping[str, torch.Tensor], soft_terms: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """BCE targets of the sub-metrics ``(B, K)``: the value itself for ``soft_terms`` (EP, TTC), else 1 where the
    sub-metric is fully satisfied (a static-object collision's NC of 0.5 counts as a failure, as in
    DiffusionDriveV2's selector)."""
    return {n: v.float() if n in soft_terms else (v >= 1.0).float() for n, v in terms.items()}


def margin_rank_loss(
    probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, margin: float = 0.05, tie_eps: float = 1e-6
) -> torch.Tensor:
    """Margin ranking over all ordered pairs of valid candidates of a scene, ``mean(relu(margin - s_ij (p_i - p_j)))``
    with ``s_ij`` the sign of ``target_i - target_j``; pairs whose targets tie (within ``tie_eps``) are skipped.

    Args:
        probs: ``(B, K)`` predicted probabilities; ``target``: ``(B, K)``; ``mask``: ``(B, K)`` bool.

    Returns:
        A scalar (0 when no pair counts).
    """
    diff = target[:, :, None] - target[:, None, :]
    pairs = mask[:, :, None] & mask[:, None, :] & (diff.abs() > tie_eps)
    loss = F.relu(margin - torch.sign(diff) * (probs[:, :, None] - probs[:, None, :]))
    return (loss * pairs).sum() / pairs.sum().clamp(min=1)


def supervised_loss(
    output: DiscriminatorOutput,
    terms: Mapping[str, torch.Tensor],
    soft_terms: tuple[str, ...] = ("ego_progress", "time_to_collision_within_bound"),
    rank_term: str = "ego_progress",
    rank_weight: float = 2.0,
    margin: float = 0.05,
) -> dict[str, torch.Tensor]:
    """BCE per sub-metric head + ``rank_weight`` x the EP margin-ranking loss, summed over the stages.

    Args:
        output: the discriminator's output; each stage is trained on the candidates it scored (``stage.mask``).
        terms: ``{head: (B, K)}`` the scorer's sub-metrics of the candidates (every head must be present).
        soft_terms: heads trained on the value itself; the others on ``value >= 1``.

    Returns:
        ``loss`` (the total), ``bce`` (summed over heads and stages), ``rank`` (summed over stages) and
        ``bce/<head>`` (summed over stages).
    """
    targets = head_targets({n: terms[n] for n in output.stages[0].logits}, soft_terms)
    zero = output.scores.new_zeros(())
    out: dict[str, torch.Tensor] = {"bce": zero, "rank": zero}
    for stage in output.stages:
        weight = stage.mask.float()
        count = weight.sum().clamp(min=1)
        for name, logits in stage.logits.items():
            bce = F.binary_cross_entropy_with_logits(logits, targets[name], reduction="none")
            value = (bce * weight).sum() / count
            out[f"bce/{name}"] = out.get(f"bce/{name}", zero) + value
            out["bce"] = out["bce"] + value
        if rank_weight > 0:
            probs = torch.sigmoid(stage.logits[rank_term])
            out["rank"] = out["rank"] + margin_rank_loss(probs, targets[rank_term], stage.mask, margin)
    out["loss"] = out["bce"] + rank_weight * out["rank"]
    return out
