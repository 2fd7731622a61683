"""Masked discrete diffusion planner over trajectory tokens (WAM-Diff / ReflectDrive style).

A bidirectional transformer reads the 16 trajectory tokens (some masked) and attends to the scene
(BEV encoder tokens, agent tokens, ego token). Training masks each token with probability
``r ~ U(0, 1)`` and weights the cross-entropy on masked tokens by ``1 / r``. Decoding starts fully
masked and unmasks a fixed number of tokens per step in one of three orders: by confidence, causal
(near to far) or reverse-causal (far to near); with temperature / top-k sampling and optional
classifier-free guidance (the condition is dropped during training with ``cond_drop_prob``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from planners.base import PlanOutput
from planners.encoders import AgentEncoder, BEVEncoder, EgoEncoder, sinusoidal_embedding
from planners.tokenizer import CodebookConfig, TrajectoryTokenizer
from simulation.features import NUM_POSES, PlannerInput

logger = logging.getLogger(__name__)

DecodingOrder = Literal["confidence", "causal", "reverse_causal"]
ORDERS: tuple[str, ...] = ("confidence", "causal", "reverse_causal")


@dataclass
class MaskedDiffusionConfig:
    """Hyper-parameters; stored with checkpoints."""

    bev_channels: int = 12
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 3
    backbone: str = "resnet10t"
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    num_steps: int = 8
    order: str = "reverse_causal"
    temperature: float = 0.0
    top_k: int = 0
    cfg_scale: float = 0.0
    cond_drop_prob: float = 0.1
    num_candidates: int = 3
    goal_top_k: int = 20
    goal_nms_m: float = 0.9

    def __post_init__(self) -> None:
        if isinstance(self.codebook, dict):
            self.codebook = CodebookConfig(**self.codebook)
        if self.order not in ORDERS:
            raise ValueError(f"unknown decoding order {self.order!r}; choose one of {ORDERS}")

    def to_dict(self) -> dict:
        return asdict(self)


def headings_from_xy(xy: torch.Tensor) -> torch.Tensor:
    """``(..., 8, 2)`` waypoints -> ``(..., 8, 3)`` poses, heading of the displacement from the previous point."""
    prev = torch.cat([torch.zeros_like(xy[..., :1, :]), xy[..., :-1, :]], dim=-2)
    d = xy - prev
    heading = torch.atan2(d[..., 1], d[..., 0])
    still = d.norm(dim=-1) < 0.05
    heading = torch.where(still, torch.zeros_like(heading), heading)
    return torch.cat([xy, heading.unsqueeze(-1)], dim=-1)


class MaskedDiffusionPlanner(nn.Module):
    """Masked diffusion over the 16 trajectory tokens, conditioned on the scene."""

    def __init__(self, config: MaskedDiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MaskedDiffusionConfig()
        self.tokenizer = TrajectoryTokenizer(config.codebook)
        d, tok = config.d_model, self.tokenizer
        self.bev_encoder = BEVEncoder(config.bev_channels, d, config.backbone)
        self.agent_encoder = AgentEncoder(d)
        self.ego_encoder = EgoEncoder(d)
        self.null_condition = nn.Parameter(torch.zeros(1, 1, d))
        self.token_embed = nn.Embedding(tok.vocab_size, d)
        self.position_embed = nn.Parameter(torch.randn(tok.seq_len, d) * 0.02)
        layer = nn.TransformerDecoderLayer(d, config.num_heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, config.num_layers)
        self.head = nn.Linear(d, tok.vocab_size)
        self.register_buffer("legal", tok.position_vocab_mask(), persistent=False)
        self.register_buffer("codebook", self._codebook_tensor())

    legal: torch.Tensor
    codebook: torch.Tensor

    @classmethod
    def from_config_dict(cls, config: dict) -> MaskedDiffusionPlanner:
        return cls(MaskedDiffusionConfig(**config))

    # ------------------------------------------------------------------ codebook with the weights
    def _codebook_tensor(self) -> torch.Tensor:
        c = self.config.codebook
        values = [c.x_min, c.x_max, c.y_min, c.y_max, c.resolution, float(c.num_poses)]
        return torch.tensor(values, dtype=torch.float64)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Refuse weights trained on another codebook (same vocabulary size or not): they would decode wrongly.

        The codebook travels with the weights as the ``codebook`` buffer (``x_min, x_max, y_min, y_max,
        resolution, num_poses``; a tensor, so TorchScript and ONNX exports carry it too). Weights saved before
        it was stored are taken to use this planner's codebook (logged).
        """
        key = f"{prefix}codebook"
        legacy = state_dict.pop(f"{prefix}_extra_state", None)  # an earlier layout: {"codebook": {...}}
        if key not in state_dict and isinstance(legacy, dict) and "codebook" in legacy:
            c = legacy["codebook"]
            state_dict[key] = torch.tensor(
                [c["x_min"], c["x_max"], c["y_min"], c["y_max"], c["resolution"], float(c["num_poses"])],
                dtype=torch.float64,
            )
        if key not in state_dict:
            logger.warning("state dict without a stored codebook: assuming %s", self.config.codebook)
            state_dict[key] = self._codebook_tensor()
        stored = [float(v) for v in state_dict[key].tolist()]
        names = ("x_min", "x_max", "y_min", "y_max", "resolution", "num_poses")
        self.tokenizer.check_compatible({**dict(zip(names, stored, strict=True)), "num_poses": int(stored[5])})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ network
    def encode_bev(self, raster: torch.Tensor) -> torch.Tensor:
        """The BEV encoder alone: raster ``(B, C, H, W)`` -> feature map ``(B, d, H / 32, W / 32)``."""
        return self.bev_encoder(raster)

    def encode(
        self, inputs: PlannerInput[torch.Tensor], bev_features: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene memory ``(B, M, d)`` (BEV cells, agents, ego) and its padding mask ``(B, M)``.

        ``bev_features``: ``inputs.bev`` already holds the feature map of :meth:`encode_bev`."""
        bev = inputs.bev if bev_features else self.encode_bev(inputs.bev)
        b, d, h, w = bev.shape
        rows = torch.arange(h, device=bev.device).repeat_interleave(w)
        cols = torch.arange(w, device=bev.device).repeat(h)
        pos = torch.cat([sinusoidal_embedding(rows, d // 2), sinusoidal_embedding(cols, d // 2)], dim=-1)
        bev_tokens = bev.flatten(2).transpose(1, 2) + pos
        memory = torch.cat([bev_tokens, self.agent_encoder(inputs.agents), self.ego_encoder(inputs.ego_status)], 1)
        pad = torch.zeros(b, memory.shape[1], dtype=torch.bool, device=bev.device)
        pad[:, h * w : h * w + inputs.agents_mask.shape[1]] = ~inputs.agents_mask
        return memory, pad

    def logits(self, tokens: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """``(B, 16)`` tokens -> ``(B, 16, vocab)`` logits, illegal ids (other axis, mask) at ``-inf``."""
        x = self.token_embed(tokens) + self.position_embed
        x = self.decoder(x, memory, memory_key_padding_mask=pad)
        return self.head(x).masked_fill(~self.legal, float("-inf"))

    def _guided_logits(
        self, tokens: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor, cfg_scale: float
    ) -> torch.Tensor:
        cond = self.logits(tokens, memory, pad)
        if cfg_scale <= 0.0:
            return cond
        null = self.null_condition.expand(tokens.shape[0], 1, -1)
        uncond = self.logits(tokens, null, torch.zeros(tokens.shape[0], 1, dtype=torch.bool, device=tokens.device))
        guided = uncond + (1.0 + cfg_scale) * (cond - uncond)
        return guided.masked_fill(~self.legal, float("-inf"))

    # ------------------------------------------------------------------ training
    def compute_loss(
        self,
        inputs: PlannerInput[torch.Tensor],
        targets: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Masked-token cross-entropy weighted by ``1 / r`` (an upper bound of the sequence NLL)."""
        inputs.validate(self.config.bev_channels)
        tokens = self.tokenizer.encode(targets["trajectory"])
        b, length = tokens.shape
        device = tokens.device
        r = torch.rand(b, 1, device=device, generator=generator).clamp(min=1.0 / length)
        masked = torch.rand(b, length, device=device, generator=generator) < r
        none = ~masked.any(1)
        masked[none, torch.randint(0, length, (int(none.sum()),), device=device, generator=generator)] = True
        corrupted = torch.where(masked, torch.full_like(tokens, self.tokenizer.mask_id), tokens)
        memory, pad = self.encode(inputs)
        drop = torch.rand(b, device=device, generator=generator) < self.config.cond_drop_prob
        if bool(drop.any()):
            memory = torch.where(drop[:, None, None], self.null_condition.expand_as(memory[:, :1]), memory)
            pad = pad & ~drop[:, None]
            pad[:, 1:] |= drop[:, None]
        logits = self.logits(corrupted, memory, pad)
        ce = F.cross_entropy(logits.reshape(b * length, -1), tokens.reshape(-1), reduction="none").reshape(b, length)
        loss = ((ce * masked).sum(1) / (r.squeeze(1) * length)).mean()
        accuracy = ((logits.argmax(-1) == tokens) & masked).sum() / masked.sum()
        return {"loss": loss, "masked_accuracy": accuracy}

    # ------------------------------------------------------------------ decoding
    @staticmethod
    def _order_scores(order: str, confidence: torch.Tensor) -> torch.Tensor:
        position = torch.arange(confidence.shape[1], device=confidence.device, dtype=confidence.dtype)
        if order == "confidence":
            return confidence
        if order == "causal":  # near waypoints first
            return -position.expand_as(confidence)
        if order == "reverse_causal":  # far waypoints first
            return position.expand_as(confidence)
        raise ValueError(f"unknown decoding order {order!r}; choose one of {ORDERS}")

    @staticmethod
    def sampling_logits(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
        """``(..., vocab)`` logits of the sampling distribution: ``logits / temperature``, all but the ``top_k``
        largest set to ``-inf`` when ``top_k > 0`` (ties with the k-th value are kept); ``temperature > 0``."""
        scaled = logits / temperature
        if top_k > 0:
            kth = scaled.topk(top_k, dim=-1).values[..., -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        return scaled

    def _pick(
        self, logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token and its probability per position, by argmax or temperature / top-k sampling.

        The probability returned (the confidence the ``confidence`` order ranks by) is the untempered
        ``softmax(logits)`` of the token, whatever the temperature; tokens are drawn from
        ``softmax(sampling_logits(logits, temperature, top_k))``.
        """
        probs = torch.softmax(logits, dim=-1)
        if temperature <= 0.0:
            conf, token = probs.max(-1)
            return token, conf
        sample_probs = torch.softmax(self.sampling_logits(logits, temperature, top_k), dim=-1)
        flat = torch.multinomial(sample_probs.reshape(-1, sample_probs.shape[-1]), 1, generator=generator)
        token = flat.reshape(logits.shape[:-1])
        return token, probs.gather(-1, token.unsqueeze(-1)).squeeze(-1)

    def generate(
        self,
        inputs: PlannerInput[torch.Tensor] | None,
        fixed: torch.Tensor | None = None,
        num_steps: int | None = None,
        order: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        cfg_scale: float | None = None,
        generator: torch.Generator | None = None,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Decode ``(B, 16)`` tokens in ``num_steps`` steps; ``fixed`` ``(B, 16)`` holds ids to keep (-1 = free)."""
        c = self.config
        steps = c.num_steps if num_steps is None else num_steps
        order = c.order if order is None else order
        temperature = c.temperature if temperature is None else temperature
        top_k = c.top_k if top_k is None else top_k
        cfg_scale = c.cfg_scale if cfg_scale is None else cfg_scale
        if context is None:
            if inputs is None:
                raise ValueError("generate needs the inputs or their encoded context")
            context = self.encode(inputs)
        memory, pad = context
        b, length = memory.shape[0], self.tokenizer.seq_len
        tokens = torch.full((b, length), self.tokenizer.mask_id, dtype=torch.long, device=memory.device)
        if fixed is not None:
            tokens = torch.where(fixed >= 0, fixed, tokens)
        for step in range(steps):
            masked = tokens == self.tokenizer.mask_id
            remaining = masked.sum(1)
            quota = torch.ceil(remaining.float() / (steps - step)).long()  # (B,): all unmasked after the last step
            logits = self._guided_logits(tokens, memory, pad, cfg_scale)
            token, conf = self._pick(logits, temperature, top_k, generator)
            score = self._order_scores(order, conf).masked_fill(~masked, float("-inf"))
            rank = score.argsort(dim=1, descending=True).argsort(dim=1)
            chosen = masked & (rank < quota[:, None])
            tokens = torch.where(chosen, token, tokens)
        return tokens

    def sample(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor | None = None) -> PlanOutput:
        """Fixed-step decoding (the configured order, argmax); ``noise`` is unused (export interface)."""
        tokens = self.generate(inputs, temperature=0.0)
        xy = self.tokenizer.decode(tokens)
        return PlanOutput(trajectory=headings_from_xy(xy))

    def initial_noise_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, 1)

    def forward(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor | None = None) -> PlanOutput:
        """Goal-conditioned candidates, the most likely one chosen (see :meth:`goal_candidates`)."""
        inputs.validate(self.config.bev_channels)
        return self.goal_candidates(inputs)

    def forward_features(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor | None = None) -> PlanOutput:
        """:meth:`forward` on ``inputs`` whose ``bev`` is the feature map of :meth:`encode_bev`."""
        return self.goal_candidates(inputs, bev_features=True)

    # ------------------------------------------------------------------ log-probabilities
    def log_prob_exact(self, inputs: PlannerInput[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """``(B,)`` exact sequence log-probability under the left-to-right factorisation.

        ``log p(o) = sum_t log p(o_t | o_<t, o_>=t masked)``: 16 conditionals evaluated in one batched pass
        (JustGRPO's estimator). It is the exact likelihood of the final sequence under the causal order at
        temperature 1, not the probability of the decoding path a sampler took (see
        ``planners.masked_policy`` for that); a valid sequence-level log-probability for a GSPO ratio.
        """
        memory, pad = self.encode(inputs)
        b, length = tokens.shape
        keep = torch.tril(torch.ones(length, length, dtype=torch.bool, device=tokens.device), diagonal=-1)
        prefixes = torch.where(
            keep[None], tokens[:, None, :], torch.full_like(tokens[:, None, :], self.tokenizer.mask_id)
        )
        flat = prefixes.reshape(b * length, length)
        logits = self.logits(flat, memory.repeat_interleave(length, 0), pad.repeat_interleave(length, 0))
        logp = torch.log_softmax(logits.reshape(b, length, length, -1), dim=-1)
        diag = logp[:, torch.arange(length), torch.arange(length)]  # (B, L, vocab): position t given o_<t
        return diag.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(1)

    def log_prob_one_pass(self, inputs: PlannerInput[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """``(B,)`` one-pass (mean-field) estimate: every token scored from the fully masked sequence.

        d1 / WAM-Diff's estimator: one forward pass, biased (it ignores the dependence between tokens), but
        normalised over all sequences; cheap enough for a GSPO sequence ratio.
        """
        memory, pad = self.encode(inputs)
        masked = torch.full_like(tokens, self.tokenizer.mask_id)
        logp = torch.log_softmax(self.logits(masked, memory, pad), dim=-1)
        return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(1)

    # ------------------------------------------------------------------ goal-conditioned candidates
    def endpoint_goals(
        self, context: tuple[torch.Tensor, torch.Tensor], num_goals: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``num_goals`` endpoint goals of each scene from the fully masked sequence.

        ``context``: the scene memory ``(memory (B, M, d), pad (B, M))`` of :meth:`encode`. Returns token ids
        ``(B, K, 2)`` of the last waypoint (x id, y id in the joint vocabulary, ready to be fixed at positions
        14 and 15) and their scores ``(B, K)`` (``log p(x) + log p(y)``), best first; see :meth:`nms_goals`.
        """
        memory, pad = context
        tok = self.tokenizer
        masked = torch.full((memory.shape[0], tok.seq_len), tok.mask_id, dtype=torch.long, device=memory.device)
        logp = torch.log_softmax(self.logits(masked, memory, pad), dim=-1)
        goals, scores = self.nms_goals(logp[:, -2, : tok.num_x], logp[:, -1, tok.num_x : tok.mask_id], num_goals)
        return torch.stack([goals[..., 0], goals[..., 1] + tok.num_x], -1), scores

    def goal_candidates(
        self,
        inputs: PlannerInput[torch.Tensor],
        num_candidates: int | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        bev_features: bool = False,
    ) -> PlanOutput:
        """Top endpoint goals (distance NMS), one inpainted trajectory per goal; chosen = most likely goal.

        The goals are always the deterministic NMS goals; ``temperature > 0`` samples the inpainted tokens
        (``top_k``: the configured one when ``None``; ``generator`` for reproducible draws). ``temperature = 0``
        decodes by argmax (the default, deterministic). Returns trajectory ``(B, 8, 3)``, candidates
        ``(B, K, 8, 3)`` and goal scores ``(B, K)``.
        """
        k = self.config.num_candidates if num_candidates is None else num_candidates
        memory, pad = self.encode(inputs, bev_features)
        tok = self.tokenizer
        b = memory.shape[0]
        goals, goal_scores = self.endpoint_goals((memory, pad), k)  # (B, K, 2) ids, (B, K)
        fixed = torch.full((b, k, tok.seq_len), -1, dtype=torch.long, device=memory.device)
        fixed[..., -2:] = goals
        tokens = self.generate(
            None,
            fixed=fixed.reshape(b * k, -1),
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            context=(memory.repeat_interleave(k, 0), pad.repeat_interleave(k, 0)),
        )
        poses = headings_from_xy(tok.decode(tokens)).reshape(b, k, NUM_POSES, 3)
        best = goal_scores.argmax(1)
        return PlanOutput(poses[torch.arange(b), best], poses, goal_scores)

    def nms_goals(self, lx: torch.Tensor, ly: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy distance NMS over the most likely endpoint cells.

        Args:
            lx: ``(B, Nx)`` log-probabilities of the last waypoint's x bins (per-axis bin index).
            ly: ``(B, Ny)`` log-probabilities of its y bins.
            k: goals to return.

        The ``goal_top_k`` best cells of ``log p(x) + log p(y)`` are visited best first; a cell is kept when it
        lies at least ``goal_nms_m`` metres from every kept one. Returns per-axis bin indices ``(B, K, 2)``
        (x bin, y bin; add ``tokenizer.num_x`` to the y bin for its token id) and the scores ``(B, K)``, best
        first. With fewer than ``k`` distinct goals the best one is repeated.
        """
        c = self.config
        top = min(c.goal_top_k, lx.shape[1] * ly.shape[1])
        kx = min(top, lx.shape[1])
        ky = min(top, ly.shape[1])
        vx, ix = lx.topk(kx, dim=1)
        vy, iy = ly.topk(ky, dim=1)
        joint = (vx[:, :, None] + vy[:, None, :]).flatten(1)
        scores, flat = joint.topk(min(top, joint.shape[1]), dim=1)
        gx, gy = ix.gather(1, flat // ky), iy.gather(1, flat % ky)
        res = c.codebook.resolution
        out_ids, out_scores = [], []
        for bi in range(lx.shape[0]):
            xy = torch.stack([gx[bi], gy[bi]], -1).float() * res
            keep: list[int] = []
            for j in range(xy.shape[0]):
                if all(float((xy[j] - xy[i]).norm()) >= c.goal_nms_m for i in keep):
                    keep.append(j)
                if len(keep) == k:
                    break
            while len(keep) < k:  # fewer distinct goals than candidates: repeat the best
                keep.append(keep[0])
            idx = torch.tensor(keep, device=lx.device)
            out_ids.append(torch.stack([gx[bi, idx], gy[bi, idx]], -1))
            out_scores.append(scores[bi, idx])
        return torch.stack(out_ids), torch.stack(out_scores)


def masking_schedule(num_tokens: int, num_steps: int) -> list[int]:
    """Tokens unmasked at each step when decoding ``num_tokens`` in ``num_steps`` steps (sums to ``num_tokens``)."""
    out, remaining = [], num_tokens
    for step in range(num_steps):
        n = math.ceil(remaining / (num_steps - step))
        out.append(n)
        remaining -= n
    return out
