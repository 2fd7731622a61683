"""Safety reflection: a stopped car on the path is avoided; a safe trajectory is left untouched; the anchor
search, the caller's whole-trajectory check and the fallback."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch

from planners.masked_diffusion import MaskedDiffusionConfig, MaskedDiffusionPlanner, headings_from_xy
from planners.reflection import SafetyChecker, local_anchor, reflect
from planners.tokenizer import CodebookConfig
from simulation.features import PlannerInput

# A stopped car whose left edge (y = -0.65) reaches 0.5 m into the ego's straight path (ego half width 1.1485).
CAR = np.array([[16.0, -1.6, 0.0, 0.0, 0.0, 4.5, 1.9]])
ROAD = shapely.box(-10, -8, 60, 8)


class InterpolatingPlanner(MaskedDiffusionPlanner):
    """A stand-in for a trained model: every masked coordinate is inpainted on the straight line between the
    nearest known coordinates of its axis (the origin before the first waypoint, held after the last)."""

    def logits(self, tokens: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        tok, c = self.tokenizer, self.tokenizer.config
        out = torch.full((tokens.shape[0], tok.seq_len, tok.vocab_size), -1e4)
        w = np.arange(-1, c.num_poses)
        for b in range(tokens.shape[0]):
            for axis, (low, first_id) in enumerate(((c.x_min, 0), (c.y_min, tok.num_x))):
                ids = tokens[b, axis::2]
                known = np.concatenate([[True], (ids != tok.mask_id).numpy()])
                values = np.concatenate([[0.0], low + (ids - first_id).double().numpy() * c.resolution])
                line = np.interp(w, w[known], values[known])[1:]
                target = np.round((line - low) / c.resolution).astype(int) + first_id
                out[b, torch.arange(axis, tok.seq_len, 2), torch.from_numpy(target)] = 0.0
        return out.masked_fill(~self.legal, float("-inf"))


def _features() -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return PlannerInput(
        bev=torch.rand(1, 4, 64, 64, generator=g),
        ego_status=torch.randn(1, 8, generator=g),
        agents=torch.zeros(1, 2, 11),
        agents_mask=torch.ones(1, 2, dtype=torch.bool),
    )


def _setup() -> tuple[MaskedDiffusionPlanner, PlannerInput[torch.Tensor]]:
    torch.manual_seed(0)
    cfg = MaskedDiffusionConfig(bev_channels=4, d_model=32, num_layers=1, codebook=CodebookConfig(resolution=0.25))
    return MaskedDiffusionPlanner(cfg).eval(), _features()


def _interpolating() -> InterpolatingPlanner:
    torch.manual_seed(0)
    return InterpolatingPlanner(MaskedDiffusionConfig(bev_channels=4, d_model=32, num_layers=1)).eval()


def _straight() -> torch.Tensor:
    return torch.stack([torch.arange(1, 9) * 4.0, torch.zeros(8)], -1)  # 8 m/s straight ahead


def _safe(checker: SafetyChecker, model: MaskedDiffusionPlanner, tokens: torch.Tensor) -> np.ndarray:
    return checker.waypoint_safety(headings_from_xy(model.tokenizer.decode(tokens)).numpy()[None])[0]


def test_interpolating_stand_in_inpaints_straight_lines() -> None:
    model = _interpolating()
    tokens = model.tokenizer.encode(_straight())
    fixed = torch.where(torch.arange(16) >= 14, tokens, torch.full_like(tokens, -1))[None]  # the goal only
    with torch.no_grad():
        out = model.generate(_features(), fixed=fixed, num_steps=4)
    torch.testing.assert_close(model.tokenizer.decode(out)[0], _straight())


def test_stopped_car_on_path_is_fixed() -> None:
    """The stand-in model inpaints straight lines, so what fixes the plan is the anchor search + inpainting."""
    model, feats = _interpolating(), _features()
    checker = SafetyChecker(CAR, ROAD)
    tokens = model.tokenizer.encode(_straight())
    # By hand (front 4.049 m, rear 1.127 m from the rear axle): at x = 8 the front (12.05) stays short of the car's
    # rear (13.75); x = 12 and 16 overlap it; at x = 20 the ego's rear (18.87) is past its front (18.25).
    np.testing.assert_array_equal(_safe(checker, model, tokens), [1, 1, 0, 0, 1, 1, 1, 1])
    fixed, record = reflect(model, feats, tokens, checker)
    assert record.initially_safe is False and record.finally_safe is True and record.fell_back is False
    assert _safe(checker, model, fixed).all()
    # The first anchor is placed at the earliest unsafe waypoint, within 10 tokens (1 m Manhattan), to the left.
    first = record.steps[0]
    assert first.waypoint == 2 and first.anchor_safe and first.before == pytest.approx((12.0, 0.0))
    assert first.anchor[0] == pytest.approx(12.0, abs=1e-4) and 0.0 < first.anchor[1] <= 1.0
    assert first.remasked == [1, 3] and first.unsafe_before == 2
    assert 1 <= record.iterations <= 10 and len(record.steps) == len(record.anchors) == record.iterations
    assert record.steps[-1].unsafe_after == 0
    # Only waypoints around the car moved, to the left; the rest of the plan is the original.
    assert record.initial is not None and record.final is not None
    np.testing.assert_allclose(record.initial, _straight().numpy(), atol=1e-4)
    np.testing.assert_allclose(record.final, model.tokenizer.decode(fixed).numpy())
    moved = record.changed_waypoints
    assert moved and set(moved) <= {1, 2, 3, 4} and {2, 3} <= set(moved)
    assert (record.final[moved, 1] > 0).all() and (record.final[moved, 1] <= 1.0 + 1e-4).all()
    np.testing.assert_allclose(np.delete(record.final, moved, 0), np.delete(record.initial, moved, 0))


def test_stopped_car_with_an_untrained_model_is_no_worse() -> None:
    model, feats = _setup()
    checker = SafetyChecker(CAR, ROAD)
    tokens = model.tokenizer.encode(_straight())
    before = _safe(checker, model, tokens)
    fixed, record = reflect(model, feats, tokens, checker, max_iterations=10, radius=10)
    after = _safe(checker, model, fixed)
    assert record.initially_safe is False and after.sum() > before.sum()
    assert record.finally_safe == bool(after.all())
    assert record.anchors and record.anchors[0][0] == int(np.argmax(~before))
    assert 1 <= record.iterations <= 10


def test_safe_trajectory_untouched() -> None:
    model, feats = _setup()
    checker = SafetyChecker(np.array([[16.0, 6.0, 0.0, 0.0, 0.0, 4.5, 1.9]]), ROAD)
    tokens = model.tokenizer.encode(_straight())
    fixed, record = reflect(model, feats, tokens, checker)
    assert torch.equal(fixed, tokens) and record.iterations == 0 and record.initially_safe and not record.anchors
    assert record.finally_safe and not record.fell_back and not record.changed_waypoints and not record.steps


def test_unrepairable_trajectory_falls_back_to_the_safest_seen() -> None:
    """A wall across the road: no anchor within reach is safe; the returned plan is never less safe."""
    model, feats = _interpolating(), _features()
    wall = np.array([[14.0, 0.0, 0.0, 0.0, 0.0, 1.0, 16.0]])
    checker = SafetyChecker(wall, ROAD)
    tokens = model.tokenizer.encode(_straight())
    before = _safe(checker, model, tokens)
    fixed, record = reflect(model, feats, tokens, checker, max_iterations=3)
    assert record.fell_back and not record.finally_safe and record.iterations == 3
    assert not any(step.anchor_safe for step in record.steps) and all(not s.remasked for s in record.steps)
    assert (~_safe(checker, model, fixed)).sum() <= (~before).sum()
    assert min(s.unsafe_after for s in record.steps) >= (~_safe(checker, model, fixed)).sum()


def test_patience_stops_rounds_without_progress() -> None:
    model, feats = _interpolating(), _features()
    checker = SafetyChecker(np.array([[14.0, 0.0, 0.0, 0.0, 0.0, 1.0, 16.0]]), ROAD)  # the wall again
    tokens = model.tokenizer.encode(_straight())
    _, full = reflect(model, feats, tokens, checker)
    _, patient = reflect(model, feats, tokens, checker, patience=2)
    assert full.iterations == 10 and patient.iterations == 2 and patient.fell_back
    with pytest.raises(ValueError, match="patience"):
        reflect(model, feats, tokens, checker, patience=0)
    _, fixed = reflect(model, feats, tokens, SafetyChecker(CAR, ROAD), patience=1)  # progress every round
    assert fixed.finally_safe and not fixed.fell_back


def test_local_anchor_by_hand() -> None:
    """Waypoint 3 pushed 0.5 m to the side of a straight plan, nothing around: continuity pulls it back."""
    model = _interpolating()
    tok = model.tokenizer
    xy = _straight().clone()
    xy[3, 1] = 0.5
    tokens = tok.encode(xy).numpy()
    checker = SafetyChecker(np.zeros((0, 7)), ROAD)

    def y_of(pair: np.ndarray) -> float:
        return tok.config.y_min + float(pair[1] - tok.num_x) * tok.config.resolution

    # Radius 10 (1 m) reaches the neighbours' midpoint (16, 0): continuity 0 there.
    pair, safe = local_anchor(tokens, 3, checker, model, radius=10)
    assert safe and pair[0] == tokens[6] and y_of(pair) == pytest.approx(0.0, abs=1e-6)
    # Radius 3 (0.3 m): the closest reachable point to the midpoint, (16, 0.2); moving x only adds distance.
    pair, safe = local_anchor(tokens, 3, checker, model, radius=3)
    assert safe and pair[0] == tokens[6] and y_of(pair) == pytest.approx(0.2, abs=1e-6)
    # Radius 0: the pair itself.
    pair, _ = local_anchor(tokens, 3, checker, model, radius=0)
    assert np.array_equal(pair, tokens[6:8])
    # A safe pair beats a closer unsafe one: an agent standing on the midpoint at t = 2 s.
    blocked = SafetyChecker(np.array([[16.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0]]), ROAD)  # y in [-1.5, -0.5]
    pair, safe = local_anchor(tokens, 3, blocked, model, radius=10)
    assert safe and y_of(pair) > 0.0


def test_callers_safety_check_drives_the_loop() -> None:
    """With ``safety`` (e.g. the tracked motion), reflection repairs what that check flags, not the waypoints."""
    model, feats = _interpolating(), _features()
    checker = SafetyChecker(np.zeros((0, 7)), ROAD)  # every waypoint of the straight plan is safe here
    tokens = model.tokenizer.encode(_straight())

    def keep_left_from_5(poses: np.ndarray) -> np.ndarray:
        safe = np.ones(poses.shape[:2], dtype=bool)
        safe[:, 5:] = poses[:, 5:, 1] > 0.25
        return safe

    _, untouched = reflect(model, feats, tokens, checker)
    assert untouched.iterations == 0
    fixed, record = reflect(model, feats, tokens, checker, safety=keep_left_from_5)
    assert not record.initially_safe and record.steps[0].waypoint == 5
    poses = headings_from_xy(model.tokenizer.decode(fixed)).numpy()[None]
    assert record.finally_safe and keep_left_from_5(poses).all() and not record.fell_back
    # The first anchor is the closest pair left of 0.25 m (0.3 m); waypoints before 4 never move.
    assert record.steps[0].anchor == pytest.approx((24.0, 0.3), abs=1e-4)
    assert min(record.changed_waypoints) >= 4 and 5 in record.changed_waypoints


def test_bad_budget_is_an_error() -> None:
    model, feats = _interpolating(), _features()
    with pytest.raises(ValueError, match="max_iterations"):
        reflect(model, feats, model.tokenizer.encode(_straight()), SafetyChecker(CAR), max_iterations=-1)


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
