"""Warp logged BEV tensors into the simulated ego frame with one batched affine resampling.

A raster (or an encoder feature map with the same extent) rendered at the logged rear-axle pose
``P_log`` is resampled as if it had been rendered at the simulated pose ``P_sim``. Every output pixel
is an ego-frame point ``q`` of the simulated frame; it shows what the logged raster shows at
``R(dtheta) q + (dx, dy)``, where ``(dx, dy, dtheta) = P_log^-1 P_sim`` is the simulated pose seen
from the logged one. Pixel <-> metre conventions are those of :mod:`simulation.render` (ego +x up,
+y left, rear axle at ``RasterConfig.ego_pixel``), so the whole map is one ``2 x 3`` affine matrix per
sample and the warp is a single ``affine_grid`` + ``grid_sample`` call for the batch.

Pure translations by whole pixels and rotations by multiples of 90 degrees map pixel centres onto
pixel centres, so the warp is exact for them; other deviations interpolate bilinearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class RasterGeometry:
    """Where the ego sits in a raster: size in pixels, metres per pixel, rear-axle pixel ``(u0, v0)``."""

    height_px: int
    width_px: int
    resolution_m: float
    ego_u: float
    ego_v: float

    @classmethod
    def from_raster_config(cls, config: object, feature_stride: int = 1) -> RasterGeometry:
        """From a :class:`simulation.render.RasterConfig`; ``feature_stride`` > 1 for a downsampled feature map."""
        u0, v0 = config.ego_pixel  # type: ignore[attr-defined]
        s = feature_stride
        return cls(
            config.height_px // s,  # type: ignore[attr-defined]
            config.width_px // s,  # type: ignore[attr-defined]
            config.resolution_m * s,  # type: ignore[attr-defined]
            u0 / s,
            v0 / s,
        )

    def pixel_from_ego(self, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
        """``(3, 3)`` homogeneous map from ego metres ``(x, y)`` to continuous pixels ``(u, v)``."""
        r = self.resolution_m
        return torch.tensor(
            [[0.0, -1.0 / r, self.ego_u], [-1.0 / r, 0.0, self.ego_v], [0.0, 0.0, 1.0]], dtype=dtype, device=device
        )

    def normalized_from_pixel(self, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
        """``(3, 3)`` map from continuous pixels to ``grid_sample`` coordinates (``align_corners=False``)."""
        return torch.tensor(
            [[2.0 / self.width_px, 0.0, -1.0], [0.0, 2.0 / self.height_px, -1.0], [0.0, 0.0, 1.0]],
            dtype=dtype,
            device=device,
        )


def relative_pose(logged: torch.Tensor, simulated: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` simulated poses expressed in the logged frames: ``P_log^-1 P_sim`` (both ``(B, 3)`` global)."""
    d = simulated[:, :2] - logged[:, :2]
    c, s = torch.cos(logged[:, 2]), torch.sin(logged[:, 2])
    dx = c * d[:, 0] + s * d[:, 1]
    dy = -s * d[:, 0] + c * d[:, 1]
    dtheta = torch.atan2(torch.sin(simulated[:, 2] - logged[:, 2]), torch.cos(simulated[:, 2] - logged[:, 2]))
    return torch.stack([dx, dy, dtheta], dim=1)


def warp_theta(deviation: torch.Tensor, geometry: RasterGeometry) -> torch.Tensor:
    """``(B, 2, 3)`` ``affine_grid`` matrices for deviations ``(B, 3)`` = (dx, dy, dtheta) of the simulated pose."""
    dtype, device = deviation.dtype, deviation.device
    c, s = torch.cos(deviation[:, 2]), torch.sin(deviation[:, 2])
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rigid = torch.stack(
        [
            torch.stack([c, -s, deviation[:, 0]], -1),
            torch.stack([s, c, deviation[:, 1]], -1),
            torch.stack([zero, zero, one], -1),
        ],
        dim=1,
    )
    to_pix = geometry.pixel_from_ego(dtype, device)
    to_norm = geometry.normalized_from_pixel(dtype, device)
    forward = to_norm @ to_pix
    full = forward @ rigid @ torch.linalg.inv(forward)
    return full[:, :2, :]


def warp_bev(
    bev: torch.Tensor,
    deviation: torch.Tensor,
    geometry: RasterGeometry,
    fill_value: float = 0.0,
    mode: Literal["bilinear", "nearest"] = "bilinear",
) -> torch.Tensor:
    """Resample logged rasters / feature maps ``(B, C, H, W)`` into the simulated ego frames.

    Args:
        bev: logged tensors, rendered at the logged poses.
        deviation: ``(B, 3)`` simulated pose in the logged frame (:func:`relative_pose`).
        geometry: pixel geometry of ``bev`` (``RasterGeometry.from_raster_config``).
        fill_value: value of the regions the logged raster did not cover ("revealed" by the deviation).
        mode: interpolation.

    Returns:
        ``(B, C, H, W)`` warped tensors.
    """
    if bev.dim() != 4 or deviation.shape != (bev.shape[0], 3):
        raise ValueError(
            f"expected bev (B, C, H, W) and deviation (B, 3), got {tuple(bev.shape)}, {tuple(deviation.shape)}"
        )
    if (bev.shape[2], bev.shape[3]) != (geometry.height_px, geometry.width_px):
        raise ValueError(f"bev is {tuple(bev.shape[2:])} px, geometry says {(geometry.height_px, geometry.width_px)}")
    if bev.device != deviation.device:
        raise ValueError(f"bev on {bev.device} but deviation on {deviation.device}")
    theta = warp_theta(deviation.to(torch.float64), geometry).to(bev.dtype)
    grid = F.affine_grid(theta, list(bev.shape), align_corners=False)
    warped = F.grid_sample(bev, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if fill_value != 0.0:
        coverage = F.grid_sample(
            torch.ones_like(bev[:, :1]), grid, mode=mode, padding_mode="zeros", align_corners=False
        )
        warped = warped + fill_value * (1.0 - coverage)
    return warped
