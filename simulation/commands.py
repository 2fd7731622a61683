"""Driving commands: OpenScene's rule on a centre line, for one pose (numpy) and for a batch (torch).

The point ``lookahead_m`` (20 m) ahead along the centre line, from the pose's projection onto it, is classified by
its lateral offset in the centre line's frame at the projection: ``>= threshold_m`` (2 m) is LEFT, ``<= -2 m``
RIGHT, else STRAIGHT; a line without a segment of positive length gives UNKNOWN.

A NAVSIM scene carries the command of its current frame (:mod:`simulation.datasets.scenes`; without a map the centre
line is the path the ego drives in the log). A closed loop has to recompute it as the simulated ego moves:
:func:`window_command` applies the same rule to the simulated pose against the window's logged ego path, so a
planner trained on scenes sees the commands it was trained with (a scenario carries none, and a constant UNKNOWN
would tell it what a scene's UNKNOWN means in training: an ego that never moves again).
"""

from __future__ import annotations

import numpy as np
import torch

from simulation.types import DrivingCommand, LogWindow

COMMAND_LOOKAHEAD_M = 20.0
COMMAND_THRESHOLD_M = 2.0
_MIN_SEGMENT_M = 1e-6


def command_from_path(
    pose: np.ndarray,
    path_xy: np.ndarray,
    lookahead_m: float = COMMAND_LOOKAHEAD_M,
    threshold_m: float = COMMAND_THRESHOLD_M,
) -> DrivingCommand:
    """OpenScene's rule on a centre line ``path_xy`` ``(N, 2)``: project ``pose`` ``(3,)`` onto it, walk
    ``lookahead_m`` along it (clamped to its end) and classify the point's lateral offset in the centre
    line's frame at the projection."""
    path = np.asarray(path_xy, dtype=np.float64)
    if path.ndim != 2 or len(path) < 2:
        return DrivingCommand.UNKNOWN
    seg = np.diff(path, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    keep = seg_len > _MIN_SEGMENT_M
    if not keep.any():
        return DrivingCommand.UNKNOWN
    path = np.concatenate([path[:1], path[1:][keep]])
    seg, seg_len = seg[keep], seg_len[keep]
    rel = pose[:2] - path[:-1]
    u = np.clip(np.einsum("ij,ij->i", rel, seg) / seg_len**2, 0.0, 1.0)
    foot = path[:-1] + u[:, None] * seg
    k = int(np.argmin(np.linalg.norm(foot - pose[:2], axis=1)))
    station = np.concatenate([[0.0], np.cumsum(seg_len)])
    s0 = station[k] + u[k] * seg_len[k]
    target = np.array([np.interp(s0 + lookahead_m, station, path[:, i]) for i in range(2)])
    tangent = seg[k] / seg_len[k]
    d = target - foot[k]
    lateral = tangent[0] * d[1] - tangent[1] * d[0]
    if lateral >= threshold_m:
        return DrivingCommand.LEFT
    if lateral <= -threshold_m:
        return DrivingCommand.RIGHT
    return DrivingCommand.STRAIGHT


def command_from_path_torch(
    poses: torch.Tensor,
    paths: torch.Tensor,
    lookahead_m: float = COMMAND_LOOKAHEAD_M,
    threshold_m: float = COMMAND_THRESHOLD_M,
) -> torch.Tensor:
    """Batched :func:`command_from_path`: poses ``(B, 3)`` (at least x, y), centre lines ``(B, N, 2)`` (padding by
    repeating a vertex is harmless: zero-length segments are skipped) -> ``(B,)`` long commands, on their device."""
    if paths.ndim != 3 or paths.shape[1] < 2:
        return torch.full(poses.shape[:1], int(DrivingCommand.UNKNOWN), dtype=torch.long, device=poses.device)
    paths = paths.to(torch.float64)
    xy = poses[:, :2].to(torch.float64)
    seg = paths[:, 1:] - paths[:, :-1]  # (B, N-1, 2)
    seg_len = seg.norm(dim=-1)
    keep = seg_len > _MIN_SEGMENT_M
    safe_len = torch.where(keep, seg_len, torch.ones_like(seg_len))
    rel = xy[:, None] - paths[:, :-1]
    u = ((rel * seg).sum(-1) / safe_len**2).clamp(0.0, 1.0)
    foot = paths[:, :-1] + u[..., None] * seg
    dist = (foot - xy[:, None]).norm(dim=-1).masked_fill(~keep, float("inf"))
    k = dist.argmin(-1)  # (B,): the first nearest kept segment, as numpy's argmin over the kept ones
    rows = torch.arange(paths.shape[0], device=paths.device)
    station = torch.cat([torch.zeros_like(seg_len[:, :1]), torch.cumsum(seg_len * keep, -1)], -1)  # (B, N)
    s = torch.minimum(station[rows, k] + u[rows, k] * seg_len[rows, k] + lookahead_m, station[:, -1])
    j = (torch.searchsorted(station, s[:, None], right=True).squeeze(-1) - 1).clamp(0, paths.shape[1] - 2)
    span = station[rows, j + 1] - station[rows, j]
    w = ((s - station[rows, j]) / span.clamp(min=1e-12)).clamp(0.0, 1.0)
    target = paths[rows, j] + w[:, None] * (paths[rows, j + 1] - paths[rows, j])
    tangent = seg[rows, k] / safe_len[rows, k, None]
    d = target - foot[rows, k]
    lateral = tangent[:, 0] * d[:, 1] - tangent[:, 1] * d[:, 0]
    out = torch.full_like(k, int(DrivingCommand.STRAIGHT))
    out = torch.where(lateral >= threshold_m, int(DrivingCommand.LEFT), out)
    out = torch.where(lateral <= -threshold_m, int(DrivingCommand.RIGHT), out)
    return torch.where(keep.any(-1), out, int(DrivingCommand.UNKNOWN))


def fixed_command(window: LogWindow) -> DrivingCommand | None:
    """The command of ``window`` that does not depend on the pose: its own when it carries one (a NAVSIM scene),
    UNKNOWN for a window without a route (as in a scene); ``None`` when it follows the pose (:func:`window_command`)."""
    command = getattr(window, "driving_command", None)
    if command is not None:
        return DrivingCommand(int(command))
    return None if window.route_roadblock_ids else DrivingCommand.UNKNOWN


def window_command(window: LogWindow, pose: np.ndarray) -> DrivingCommand:
    """The command of ``window`` at ``pose``: :func:`fixed_command`, else OpenScene's rule at ``pose`` on the
    window's logged ego path."""
    fixed = fixed_command(window)
    if fixed is not None:
        return fixed
    return command_from_path(np.asarray(pose, dtype=np.float64), window.ego.states[:, :2])
