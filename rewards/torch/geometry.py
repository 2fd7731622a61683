"""Batched torch geometry of the torch scorers: box corners, box overlap, broad phase, grids and polylines.

Every function keeps its inputs' device and dtype and is batched over the leading axes.
"""

from __future__ import annotations

import torch

from simulation.types import PACIFICA, AgentIndex

A = AgentIndex


def normalize_angle(angle: torch.Tensor) -> torch.Tensor:
    """Wrap to ``[-pi, pi]``."""
    return torch.atan2(torch.sin(angle), torch.cos(angle))


def box_corners(
    x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, length: torch.Tensor, width: torch.Tensor
) -> torch.Tensor:
    """``(..., 4, 2)`` corners (front-left, rear-left, rear-right, front-right) of oriented boxes."""
    c, s = torch.cos(h), torch.sin(h)
    hl, hw = length / 2, width / 2
    sx = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=x.dtype, device=x.device)
    sy = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=x.dtype, device=x.device)
    lx, ly = sx * hl[..., None], sy * hw[..., None]
    return torch.stack(
        [x[..., None] + c[..., None] * lx - s[..., None] * ly, y[..., None] + s[..., None] * lx + c[..., None] * ly], -1
    )


def ego_corners(poses: torch.Tensor) -> torch.Tensor:
    """``(..., 4, 2)`` Pacifica footprint corners of rear-axle poses ``(..., 3)``."""
    off = PACIFICA.rear_axle_to_center
    cx = poses[..., 0] + off * torch.cos(poses[..., 2])
    cy = poses[..., 1] + off * torch.sin(poses[..., 2])
    full = torch.ones_like(cx)
    return box_corners(cx, cy, poses[..., 2], full * PACIFICA.length, full * PACIFICA.width)


def agent_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4, 2)`` corners of agent boxes ``(..., 7)`` (:class:`~simulation.types.AgentIndex` columns)."""
    return box_corners(
        boxes[..., A.X], boxes[..., A.Y], boxes[..., A.HEADING], boxes[..., A.LENGTH], boxes[..., A.WIDTH]
    )


def overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Separating-axis test of convex quads ``a`` ``(..., 4, 2)`` and ``b`` (broadcast); ``(...)`` bool."""
    a, b = torch.broadcast_tensors(a, b)
    edges = torch.cat([a[..., 1:3, :] - a[..., 0:2, :], b[..., 1:3, :] - b[..., 0:2, :]], -2)  # (..., 4, 2)
    nx, ny = -edges[..., 1, None], edges[..., 0, None]  # axes (..., 4, 1)
    pa = nx * a[..., None, :, 0] + ny * a[..., None, :, 1]  # (..., 4 axes, 4 corners)
    pb = nx * b[..., None, :, 0] + ny * b[..., None, :, 1]
    separated = (pa.amax(-1) < pb.amin(-1)) | (pb.amax(-1) < pa.amin(-1))
    return ~separated.any(-1)


def compact(keep: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Gather the True entries of ``keep`` ``(..., N)`` to the front of the last batch axis, for a broad phase.

    Returns ``(index, kept, gathered)``: ``index`` ``(..., M)`` into ``N`` with ``M`` the largest number of True
    entries in any row, ``kept`` ``(..., M)`` whether each gathered slot holds a True entry, and every tensor of
    ``tensors`` ``(..., N, ...)`` gathered to ``(..., M, ...)``. One host sync (``M`` is data-dependent).
    """
    m = int(keep.sum(-1).max()) if keep.numel() else 0
    index = torch.sort(keep.to(torch.uint8), dim=-1, descending=True, stable=True).indices[..., :m]
    gathered = []
    for t in tensors:
        idx = index.reshape(*index.shape, *([1] * (t.dim() - keep.dim())))
        gathered.append(torch.gather(t, keep.dim() - 1, idx.expand(*index.shape, *t.shape[keep.dim() :])))
    return index, torch.gather(keep, -1, index), gathered


def bounding_radius(length: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Radius of the circle around a box's centre that holds the whole box."""
    return 0.5 * torch.hypot(length, width)


def centre_distance(ego: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``(..., N)`` distance from the ego footprint's centre (``(..., 11)`` rear-axle states) to box centres
    ``(..., N, 7)``."""
    cx = ego[..., 0] + PACIFICA.rear_axle_to_center * torch.cos(ego[..., 2])
    cy = ego[..., 1] + PACIFICA.rear_axle_to_center * torch.sin(ego[..., 2])
    return torch.hypot(boxes[..., A.X] - cx[..., None], boxes[..., A.Y] - cy[..., None])


def in_grid(points: torch.Tensor, grid: torch.Tensor, origin: torch.Tensor, res: float) -> torch.Tensor:
    """Whether points ``(B, K, 2)`` fall in True cells of ``grid`` ``(B, GH, GW)`` (outside the grid: False).

    ``origin`` ``(B, 2)`` is the corner of cell ``(0, 0)``; rows run along y, columns along x, ``res`` metres each.
    """
    rel = (points - origin[:, None, :]) / res
    j, i = torch.floor(rel[..., 0]).long(), torch.floor(rel[..., 1]).long()
    h, w = grid.shape[1:]
    ok = (i >= 0) & (i < h) & (j >= 0) & (j < w)
    flat = grid.reshape(grid.shape[0], -1)
    idx = (i.clamp(0, h - 1) * w + j.clamp(0, w - 1)).reshape(grid.shape[0], -1)
    return ok & torch.gather(flat, 1, idx).reshape(ok.shape)


def project(points: torch.Tensor, line: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest points of polylines ``(B, M, 2)`` to points ``(B, 2)`` or ``(B, K, 2)``.

    Returns:
        arc length, distance and segment index, each ``(B,)`` or ``(B, K)``.
    """
    single = points.dim() == 2
    pts = points[:, None] if single else points  # (B, K, 2)
    a, d = line[:, None, :-1], line[:, None, 1:] - line[:, None, :-1]  # (B, 1, M-1, 2)
    seg = torch.linalg.norm(d, dim=-1)
    t = (((pts[:, :, None] - a) * d).sum(-1) / (seg**2).clamp_min(1e-12)).clamp(0.0, 1.0)  # (B, K, M-1)
    dist = torch.linalg.norm(pts[:, :, None] - (a + t[..., None] * d), dim=-1)
    k = dist.argmin(-1, keepdim=True)  # (B, K, 1)
    cum = torch.nn.functional.pad(torch.cumsum(seg[:, 0], -1), (1, 0))  # (B, M)
    seg_k = torch.gather(seg.expand_as(t), 2, k)[..., 0]
    s = torch.gather(cum, 1, k[..., 0]) + torch.gather(t, 2, k)[..., 0] * seg_k
    out = (s, torch.gather(dist, 2, k)[..., 0], k[..., 0])
    return (out[0][:, 0], out[1][:, 0], out[2][:, 0]) if single else out


def ahead(poses: torch.Tensor, distance: float) -> torch.Tensor:
    """Poses ``(..., 3)`` moved ``distance`` metres along their heading."""
    h = poses[..., 2:3]
    return torch.cat([poses[..., :1] + distance * torch.cos(h), poses[..., 1:2] + distance * torch.sin(h), h], -1)
