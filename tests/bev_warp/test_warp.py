"""BEV warp: exact on whole-pixel translations and quarter turns, consistent with re-rendering."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bev_warp.warp import RasterGeometry, relative_pose, warp_bev
from simulation.render import RasterConfig

CONFIG = RasterConfig(height_px=64, width_px=64, resolution_m=0.5, behind_m=8.0)
GEOM = RasterGeometry.from_raster_config(CONFIG)


def _raster(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identity() -> None:
    bev = _raster()
    torch.testing.assert_close(warp_bev(bev, torch.zeros(1, 3, dtype=torch.float64), GEOM), bev)


@settings(max_examples=30, deadline=None)
@given(st.integers(-10, 10), st.integers(-10, 10))
def test_whole_pixel_translation_is_exact(di: int, dj: int) -> None:
    """Moving the ego forward by k pixels shifts the content down by k rows (ego +x is up)."""
    bev = _raster()
    dev = torch.tensor([[di * CONFIG.resolution_m, dj * CONFIG.resolution_m, 0.0]], dtype=torch.float64)
    out = warp_bev(bev, dev, GEOM)
    # Simulated ego di px ahead and dj px left: output pixel (r, c) shows logged pixel (r - di, c - dj).
    rows = slice(max(0, di), 64 + min(0, di))
    cols = slice(max(0, dj), 64 + min(0, dj))
    src_rows = slice(rows.start - di, rows.stop - di)
    src_cols = slice(cols.start - dj, cols.stop - dj)
    torch.testing.assert_close(out[..., rows, cols], bev[..., src_rows, src_cols], atol=1e-9, rtol=0)


@pytest.mark.parametrize("quarter", [1, 2, 3])
def test_quarter_turns_are_exact(quarter: int) -> None:
    geom = RasterGeometry(64, 64, 0.5, 32.0, 32.0)  # ego at the raster centre so the turn stays inside
    bev = _raster()
    dev = torch.tensor([[0.0, 0.0, quarter * math.pi / 2]], dtype=torch.float64)
    out = warp_bev(bev, dev, geom)
    # Turning the ego left by 90 degrees rotates the image clockwise by 90 degrees.
    torch.testing.assert_close(out, torch.rot90(bev, k=-quarter, dims=(2, 3)), atol=1e-9, rtol=0)


def test_revealed_region_gets_fill_value() -> None:
    bev = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    dev = torch.tensor([[10 * CONFIG.resolution_m, 0.0, 0.0]], dtype=torch.float64)  # 10 px ahead
    out = warp_bev(bev, dev, GEOM, fill_value=-1.0)
    assert torch.all(out[..., :10, :] == -1.0) and torch.all(out[..., 10:, :] == 0.0)


def test_relative_pose_round_trip() -> None:
    logged = torch.tensor([[100.0, 50.0, 0.3]], dtype=torch.float64)
    dev = torch.tensor([[1.5, -0.5, 0.2]], dtype=torch.float64)
    c, s = math.cos(0.3), math.sin(0.3)
    sim = torch.tensor([[100 + c * 1.5 + s * 0.5, 50 + s * 1.5 - c * 0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(relative_pose(logged, sim), dev)


def test_point_feature_lands_where_geometry_says() -> None:
    """A single lit pixel at a known ego point appears at that point's pixel in the simulated frame."""
    bev = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    u0, v0 = CONFIG.ego_pixel
    x, y = 10.0, 3.0  # logged ego frame
    col, row = int(u0 - y / 0.5), int(v0 - x / 0.5)
    bev[0, 0, row, col] = 1.0
    dev = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)  # sim ego 2 m ahead, 1 m left
    out = warp_bev(bev, dev, GEOM, mode="nearest")
    r, c = np.unravel_index(int(out[0, 0].argmax()), (64, 64))
    assert (r, c) == (int(v0 - (x - 2.0) / 0.5), int(u0 - (y - 1.0) / 0.5))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="deviation"):
        warp_bev(torch.zeros(2, 1, 64, 64), torch.zeros(3, 3), GEOM)
    with pytest.raises(ValueError, match="px"):
        warp_bev(torch.zeros(1, 1, 32, 32), torch.zeros(1, 3), GEOM)
