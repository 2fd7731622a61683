"""Safety reflection: a stopped car on the path is avoided; a safe trajectory is left untouched."""

from __future__ import annotations

import numpy as np
import shapely
import torch

from planners.masked_diffusion import MaskedDiffusionConfig, MaskedDiffusionPlanner, headings_from_xy
from planners.reflection import SafetyChecker, reflect
from planners.tokenizer import CodebookConfig


def _setup() -> tuple[MaskedDiffusionPlanner, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    cfg = MaskedDiffusionConfig(bev_channels=4, d_model=32, num_layers=1, codebook=CodebookConfig(resolution=0.25))
    g = torch.Generator().manual_seed(1)
    feats = {
        "bev": torch.rand(1, 4, 64, 64, generator=g),
        "ego_status": torch.randn(1, 8, generator=g),
        "agents": torch.zeros(1, 2, 11),
        "agents_mask": torch.ones(1, 2, dtype=torch.bool),
    }
    return MaskedDiffusionPlanner(cfg).eval(), feats


def _straight() -> torch.Tensor:
    return torch.stack([torch.arange(1, 9) * 4.0, torch.zeros(8)], -1)  # 8 m/s straight ahead


def test_stopped_car_on_path_is_avoided() -> None:
    model, feats = _setup()
    road = shapely.box(-10, -8, 60, 8)
    car = np.array([[16.0, -1.6, 0.0, 0.0, 0.0, 4.5, 1.9]])  # stopped, overlapping the right half of the path
    checker = SafetyChecker(car, road)
    tokens = model.tokenizer.encode(_straight())
    before = checker.waypoint_safety(headings_from_xy(model.tokenizer.decode(tokens)).numpy()[None])[0]
    assert not before.all()
    fixed, record = reflect(model, feats, tokens, checker, max_iterations=10, radius=10)
    after = checker.waypoint_safety(headings_from_xy(model.tokenizer.decode(fixed)).numpy()[None])[0]
    assert record.initially_safe is False
    assert after.sum() > before.sum()
    assert record.finally_safe == bool(after.all())
    assert record.anchors and record.anchors[0][0] == int(np.argmax(~before))
    assert 1 <= record.iterations <= 10


def test_safe_trajectory_untouched() -> None:
    model, feats = _setup()
    checker = SafetyChecker(np.array([[16.0, 6.0, 0.0, 0.0, 0.0, 4.5, 1.9]]), shapely.box(-10, -8, 60, 8))
    tokens = model.tokenizer.encode(_straight())
    fixed, record = reflect(model, feats, tokens, checker)
    assert torch.equal(fixed, tokens) and record.iterations == 0 and record.initially_safe and not record.anchors


def test_safety_checker_constant_velocity_and_drivable() -> None:
    poses = headings_from_xy(_straight()).numpy()[None]
    moving_away = SafetyChecker(np.array([[8.0, 0.0, 0.0, 20.0, 0.0, 4.5, 1.9]]))  # 20 m/s ahead: never caught
    assert moving_away.waypoint_safety(poses).all()
    crossing = SafetyChecker(np.array([[18.0, -10.0, np.pi / 2, 0.0, 5.0, 4.5, 1.9]]))  # at (18, 0) at t = 2 s
    safe = crossing.waypoint_safety(poses)[0]
    assert not safe[3] and safe[:3].all()
    narrow = SafetyChecker(np.zeros((0, 7)), shapely.box(-10, -1.5, 18, 1.5))
    off = narrow.waypoint_safety(poses)[0]
    assert off[:3].all() and not off[-1]
