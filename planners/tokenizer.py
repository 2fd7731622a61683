"""Trajectory tokens: per-axis uniform codebooks, one token per coordinate, 16 tokens per trajectory.

A trajectory ``(8, 2+)`` becomes ``(x1, y1, x2, y2, ..., x8, y8)``. x tokens take ids ``[0, Nx)``, y tokens
``[Nx, Nx + Ny)`` and the mask token is ``Nx + Ny``; position ``2k`` always holds an x token and ``2k + 1``
a y token. Decoding returns bin centres, so ``decode(encode(p)) == p`` for bin centres and the error
is at most half a bin otherwise. Out-of-range coordinates are clipped (counted in
:attr:`TrajectoryTokenizer.clipped`), never wrapped.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodebookConfig:
    """Range (m) and resolution (m per bin) of each axis; stored with checkpoints and compared on load."""

    x_min: float = -5.0
    x_max: float = 95.0
    y_min: float = -40.0
    y_max: float = 40.0
    resolution: float = 0.1
    num_poses: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


class TokenizerError(ValueError):
    """A codebook that does not match, or input of the wrong shape."""


class TrajectoryTokenizer:
    """Encode / decode trajectories to / from token ids (torch, any leading batch shape)."""

    def __init__(self, config: CodebookConfig | None = None) -> None:
        self.config = config or CodebookConfig()
        c = self.config
        if c.resolution <= 0 or c.x_max <= c.x_min or c.y_max <= c.y_min:
            raise TokenizerError(f"invalid codebook {c}")
        self.num_x = int(round((c.x_max - c.x_min) / c.resolution)) + 1
        self.num_y = int(round((c.y_max - c.y_min) / c.resolution)) + 1
        self.mask_id = self.num_x + self.num_y
        self.vocab_size = self.mask_id + 1
        self.seq_len = 2 * c.num_poses
        self.clipped = 0

    # ids of each position's axis
    def axis_offsets(self, device: torch.device | None = None) -> torch.Tensor:
        """``(16,)`` first id of each position's codebook (0 for x positions, ``Nx`` for y positions)."""
        return torch.tensor([0, self.num_x] * self.config.num_poses, device=device)

    def position_vocab_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """``(16, vocab)`` bool: which ids are legal at each position (never the mask token)."""
        legal = torch.zeros(self.seq_len, self.vocab_size, dtype=torch.bool, device=device)
        legal[0::2, : self.num_x] = True
        legal[1::2, self.num_x : self.mask_id] = True
        return legal

    def encode(self, poses: torch.Tensor) -> torch.Tensor:
        """``(..., 8, 2+)`` metres -> ``(..., 16)`` int64 token ids (nearest bin centre, clipped to the range)."""
        c = self.config
        if poses.shape[-2] != c.num_poses or poses.shape[-1] < 2:
            raise TokenizerError(f"expected (..., {c.num_poses}, 2+) poses, got {tuple(poses.shape)}")
        if not bool(torch.isfinite(poses[..., :2]).all()):
            raise TokenizerError("cannot tokenise NaN / inf coordinates")
        ix = torch.round((poses[..., 0] - c.x_min) / c.resolution)
        iy = torch.round((poses[..., 1] - c.y_min) / c.resolution)
        out_of_range = (ix < 0) | (ix >= self.num_x) | (iy < 0) | (iy >= self.num_y)
        n_out = int(out_of_range.sum())
        if n_out:
            self.clipped += n_out
            logger.warning("tokenizer: clipped %d out-of-range waypoints (total %d)", n_out, self.clipped)
        ix = ix.clamp(0, self.num_x - 1).long()
        iy = iy.clamp(0, self.num_y - 1).long() + self.num_x
        return torch.stack([ix, iy], dim=-1).flatten(-2)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(..., 16)`` ids -> ``(..., 8, 2)`` bin centres in metres (raises on mask tokens)."""
        if tokens.shape[-1] != self.seq_len:
            raise TokenizerError(f"expected (..., {self.seq_len}) tokens, got {tuple(tokens.shape)}")
        pairs = tokens.reshape(*tokens.shape[:-1], self.config.num_poses, 2)
        ix, iy = pairs[..., 0], pairs[..., 1] - self.num_x
        if bool(((ix < 0) | (ix >= self.num_x) | (iy < 0) | (iy >= self.num_y)).any()):
            raise TokenizerError("tokens outside their axis codebook (mask tokens cannot be decoded)")
        c = self.config
        return torch.stack([c.x_min + ix * c.resolution, c.y_min + iy * c.resolution], dim=-1).float()

    def check_compatible(self, stored: dict) -> None:
        """Raise :class:`TokenizerError` when a checkpoint's codebook differs from this one."""
        if stored != self.config.to_dict():
            raise TokenizerError(f"codebook mismatch: checkpoint {stored} vs tokenizer {self.config.to_dict()}")
