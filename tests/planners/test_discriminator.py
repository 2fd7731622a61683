"""Discriminator: shapes, masking, permutation equivariance, the aggregate, the categorical log-probs, the
supervised loss on a hand-built batch, coarse-to-fine, and the generator + discriminator pair as one planner."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from planners.anchors import kmeans_anchors
from planners.checkpoint import CheckpointRecord, load_planner, write
from planners.discriminator import (
    INVALID_SCORE,
    Discriminator,
    DiscriminatorConfig,
    DiscriminatorOutput,
    StageOutput,
    aggregate,
    head_names,
    log_probs,
    margin_rank_loss,
    supervised_loss,
)
from planners.reranked import RerankedConfig, RerankedPlanner, forward_mask, slowed
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from simulation.features import PlannerInput

V1 = ("no_at_fault_collisions", "drivable_area_compliance", "driving_direction_compliance",
      "time_to_collision_within_bound", "ego_progress", "comfort")  # fmt: skip


def _features(b: int = 2, seed: int = 0) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return PlannerInput(
        bev=torch.rand(b, 4, 64, 64, generator=g),
        ego_status=torch.randn(b, 8, generator=g),
        agents=torch.randn(b, 6, 11, generator=g),
        agents_mask=torch.rand(b, 6, generator=g) > 0.5,
    )


def _candidates(b: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(1, 9) * 0.5
    speed = torch.rand(b, k, 1, generator=g) * 15
    lateral = (torch.rand(b, k, 1, generator=g) - 0.5) * 0.2
    x, y = speed * t, lateral * (speed * t) ** 2 / 10
    return torch.stack([x, y, torch.atan2(y, x.clamp(min=1e-3))], -1)


def _disc(**overrides: object) -> Discriminator:
    torch.manual_seed(0)
    config = DiscriminatorConfig(bev_channels=4, d_model=32, num_heads=4, dropout=0.0, **overrides)  # type: ignore[arg-type]
    return Discriminator(config).eval()


def test_heads_follow_the_version() -> None:
    assert head_names("v1") == V1
    v2 = head_names("v2")
    assert {"traffic_light_compliance", "lane_keeping", "history_comfort"} <= set(v2) and "comfort" not in v2
    assert tuple(_disc(version="v2").coarse.heads) == v2
    with pytest.raises(ValueError, match="version"):
        head_names("v3")  # type: ignore[arg-type]


def test_aggregate_matches_a_hand_computed_case() -> None:
    probs = {n: torch.tensor([0.5]) for n in V1}
    probs.update(
        no_at_fault_collisions=torch.tensor([0.9]),
        drivable_area_compliance=torch.tensor([0.8]),
        time_to_collision_within_bound=torch.tensor([0.6]),
        ego_progress=torch.tensor([0.7]),
        comfort=torch.tensor([1.0]),
        driving_direction_compliance=torch.tensor([0.0]),  # weight 0 in PDMS
    )
    expected = 0.9 * 0.8 * (5 * 0.6 + 5 * 0.7 + 2 * 1.0) / 12
    assert float(aggregate(probs, "v1")) == pytest.approx(expected, abs=1e-6)
    v2 = {n: torch.tensor([1.0]) for n in head_names("v2")}
    v2["traffic_light_compliance"] = torch.tensor([0.5])
    v2["lane_keeping"] = torch.tensor([0.0])
    assert float(aggregate(v2, "v2")) == pytest.approx(0.5 * (5 + 5 + 0 + 2) / 14, abs=1e-6)


def test_shapes_and_padded_candidates_never_win() -> None:
    disc, feats = _disc(), _features()
    cands = _candidates(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 3:] = False
    cands[0, 3:] = float("nan")  # whatever sits in the padding must not matter
    with torch.no_grad():
        out = disc(feats, cands, mask)
    assert out.scores.shape == (2, 10) and out.best.shape == (2,)
    assert set(out.stages[0].logits) == set(V1) and out.stages[0].logits["comfort"].shape == (2, 10)
    assert torch.isfinite(out.scores).all()
    assert (out.scores[0, 3:] == INVALID_SCORE).all() and (out.scores[mask] >= 0).all()
    assert int(out.best[0]) < 3
    # the padding does not change the valid candidates' scores
    with torch.no_grad():
        alone = disc(_features(), cands[:, :3].nan_to_num(), None)
    torch.testing.assert_close(alone.scores[0], out.scores[0, :3], atol=1e-5, rtol=0)


def test_scores_are_permutation_equivariant() -> None:
    disc, feats, cands = _disc(), _features(), _candidates(2, 12)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = disc(feats, cands), disc(feats, cands[:, perm])
    torch.testing.assert_close(b.scores, a.scores[:, perm], atol=1e-5, rtol=0)
    assert (perm[b.best] == a.best).all()


def test_coarse_to_fine_picks_among_the_top_k() -> None:
    disc, feats, cands = _disc(coarse_to_fine=True, top_k=4, fine_layers=1), _features(), _candidates(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 2:] = False  # fewer valid candidates than top_k
    with torch.no_grad():
        out = disc(feats, cands, mask)
    coarse, fine = out.stages
    assert out.mask.sum(-1).tolist() == [4, 2]
    top = coarse.scores[0].topk(4).indices
    assert set(top.tolist()) == set(out.mask[0].nonzero().flatten().tolist())
    assert bool(out.mask[0, out.best[0]]) and bool(out.mask[1, out.best[1]])
    torch.testing.assert_close(out.scores[out.mask], fine.scores[out.mask])
    assert (out.scores[~mask] == INVALID_SCORE).all()


def test_log_probs_sum_to_one_over_valid_candidates() -> None:
    scores = torch.tensor([[0.2, 0.9, 0.5, INVALID_SCORE], [0.1, 0.1, INVALID_SCORE, INVALID_SCORE]])
    mask = scores >= 0
    lp = log_probs(scores, mask, temperature=0.1)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2))
    assert (lp[~mask] == float("-inf")).all()
    expected = torch.log_softmax(torch.tensor([0.2, 0.9, 0.5]) / 0.1, 0)
    torch.testing.assert_close(lp[0, :3], expected)
    assert lp[1, 0] == pytest.approx(math.log(0.5))
    with pytest.raises(ValueError):
        log_probs(scores, mask, 0.0)


def test_margin_rank_loss_hand_built() -> None:
    probs = torch.tensor([[0.8, 0.5, 0.1]])
    target = torch.tensor([[1.0, 0.2, 0.2]])
    mask = torch.tensor([[True, True, True]])
    # ordered pairs with distinct targets: (0,1), (1,0), (0,2), (2,0); (1,2), (2,1) tie
    # (0,1): relu(0.05 - (0.3)) = 0, (0,2): relu(0.05 - 0.7) = 0 -> 0
    assert float(margin_rank_loss(probs, target, mask)) == pytest.approx(0.0)
    wrong = torch.tensor([[0.48, 0.5, 0.1]])
    # (0,1) and (1,0): relu(0.05 + 0.02) = 0.07 each; (0,2), (2,0): 0 -> 0.14 / 4
    assert float(margin_rank_loss(wrong, target, mask)) == pytest.approx(0.14 / 4, abs=1e-6)


def test_supervised_loss_hand_built() -> None:
    logits = {n: torch.zeros(1, 3) for n in V1}
    logits["ego_progress"] = torch.tensor([[0.0, 2.0, 0.0]])
    stage = StageOutput(logits, torch.zeros(1, 3), torch.tensor([[True, True, False]]))
    out = DiscriminatorOutput(torch.zeros(1, 3), stage.mask, torch.zeros(1, dtype=torch.long), [stage])
    terms = {n: torch.ones(1, 3) for n in V1}
    terms["no_at_fault_collisions"] = torch.tensor([[0.5, 1.0, 0.0]])  # 0.5 -> hard target 0
    terms["ego_progress"] = torch.tensor([[0.8, 0.3, 0.0]])  # soft
    loss = supervised_loss(out, terms, rank_weight=2.0, margin=0.05)
    ln2 = math.log(2.0)
    sig2 = 1 / (1 + math.exp(-2.0))
    bce_ep = ((-(0.8 * math.log(0.5) + 0.2 * math.log(0.5))) + (-(0.3 * math.log(sig2) + 0.7 * math.log(1 - sig2)))) / 2
    # every head with logit 0 costs ln 2 per candidate, whatever its (hard) target
    assert float(loss["bce/no_at_fault_collisions"]) == pytest.approx(ln2, abs=1e-6)
    assert float(loss["bce/ego_progress"]) == pytest.approx(bce_ep, abs=1e-6)
    assert float(loss["bce"]) == pytest.approx(5 * ln2 + bce_ep, abs=1e-5)
    # EP pair (0,1): target 0.8 > 0.3 but p 0.5 < 0.881: relu(0.05 + 0.381) twice (both orders)
    rank = 0.05 + (sig2 - 0.5)
    assert float(loss["rank"]) == pytest.approx(rank, abs=1e-6)
    assert float(loss["loss"]) == pytest.approx(5 * ln2 + bce_ep + 2 * rank, abs=1e-5)


def test_supervised_loss_trains_the_heads() -> None:
    disc, feats, cands = _disc(coarse_to_fine=True, top_k=4, fine_layers=1), _features(), _candidates(2, 8)
    disc.train()
    terms = {n: torch.ones(2, 8) for n in V1}
    terms["ego_progress"] = (cands[..., -1, 0] / cands[..., -1, 0].max()).clamp(0, 1)
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = supervised_loss(disc(feats, cands), terms)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def _generator() -> TruncatedDiffusionPlanner:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t = np.arange(1, 9) * 0.5
    s = rng.uniform(0, 15, (100, 1)) * t
    trajs = np.stack([s, 0 * s, 0 * s], -1)
    anchors = torch.from_numpy(kmeans_anchors(trajs, k=4)).float()
    return TruncatedDiffusionPlanner(TruncatedDiffusionConfig(bev_channels=4, d_model=32, num_anchors=4), anchors)


def test_pair_is_one_planner_and_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    gen, disc = _generator().eval(), _disc()
    config = RerankedConfig("planners.truncated_diffusion.TruncatedDiffusionPlanner", gen.config.to_dict(),
                            disc.config.to_dict(), num_samples=8, own_candidates=True)  # fmt: skip
    pair = RerankedPlanner(gen, disc, config).eval()
    feats = _features()
    noise = torch.randn(pair.initial_noise_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = pair(feats, noise)
        again = pair(feats, noise)
    assert out.candidates is not None and out.scores is not None
    assert out.candidates.shape == (2, 4 + 8, 8, 3) and out.scores.shape == (2, 12)
    best = out.scores.masked_fill(~pair.pickable(out.candidates), float("-inf")).argmax(-1)
    torch.testing.assert_close(out.trajectory, out.candidates[torch.arange(2), best])
    torch.testing.assert_close(out.trajectory, again.trajectory)  # the policy samples are seeded
    cands, own = pair.propose(feats, noise)
    generator_pick = gen(feats, noise).trajectory
    torch.testing.assert_close(cands[torch.arange(2), own], generator_pick)
    # one file holds generator and discriminator; loaded with weights_only=True
    path = write(tmp_path / "pair.ckpt", CheckpointRecord.of(pair))
    loaded = load_planner(path, expect_class="RerankedPlanner")
    assert isinstance(loaded, RerankedPlanner) and loaded.config.num_samples == 8
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats, noise).trajectory, out.trajectory)


def _poses(*xyh: tuple[float, float, float]) -> torch.Tensor:
    """An 8-pose candidate: the given poses, then the last one held."""
    rows = list(xyh) + [xyh[-1]] * (8 - len(xyh))
    return torch.tensor(rows, dtype=torch.float32)


def test_forward_mask_measures_backward_steps_along_the_earlier_heading() -> None:
    half = math.pi / 2
    cands = torch.stack([
        _poses((1.0, 0, 0), (2.0, 0, 0), (3.0, 0, 0)),          # forward
        _poses((1.0, 0, 0), (0.85, 0, 0)),                      # 0.15 m back: out
        _poses((1.0, 0, 0), (0.95, 0, 0)),                      # 0.05 m back: within 0.1
        _poses((-0.2, 0, 0)),                                   # backwards from the origin: out
        _poses((0, 0, half), (0, 1.0, half), (0, 2.0, half)),  # sideways from the origin, then along its heading
        _poses((0, 0, half), (0, -0.5, half)),                  # against its heading: out
        _poses((1.0, 0, 0), (float("nan"), 0, 0)),              # not finite: out
    ])[None]  # fmt: skip
    assert forward_mask(cands, 0.1).tolist() == [[True, False, True, False, True, False, False]]
    assert forward_mask(cands, 0.2).tolist() == [[True, True, True, True, True, False, False]]


class _Preferring(Discriminator):
    """Scores the candidates by a fixed preference (the real masking and pick of :class:`Discriminator`)."""

    def __init__(self, preference: list[float]) -> None:
        super().__init__(DiscriminatorConfig(bev_channels=4, d_model=32, num_heads=4, dropout=0.0))
        self.preference = torch.tensor(preference)

    def forward(self, inputs, candidates, mask=None):  # type: ignore[no-untyped-def, override]
        mask = torch.ones(candidates.shape[:2], dtype=torch.bool) if mask is None else mask
        scores = self.preference.expand(candidates.shape[:2]).clone()
        best = scores.masked_fill(~mask, float("-inf")).argmax(-1)
        return DiscriminatorOutput(scores, mask, best, [])


@pytest.mark.parametrize(
    ("max_reverse", "reversing", "expected"),
    [(0.1, (0, 1), 2), (None, (0, 1), 0), (0.1, (0, 1, 2), 0), (0.1, (), 0)],
)
def test_pair_never_drives_a_reversing_candidate_unless_all_reverse(
    max_reverse: float | None, reversing: tuple[int, ...], expected: int
) -> None:
    gen = _generator().eval()
    config = RerankedConfig("planners.truncated_diffusion.TruncatedDiffusionPlanner", gen.config.to_dict(),
                            max_reverse=max_reverse)  # fmt: skip
    pair = RerankedPlanner(gen, _Preferring([3.0, 2.0, 1.0]), config).eval()
    backward = _poses((-0.3, 0, 0), (0.5, 0, 0))
    forward = [_poses((i + 1.0, 0, 0), (2 * i + 2.0, 0, 0)) for i in range(3)]
    cands = torch.stack([backward if i in reversing else forward[i] for i in range(3)])[None]
    pair.propose = lambda inputs, noise=None, generator=None: (cands, torch.zeros(1, dtype=torch.long))  # type: ignore[method-assign]
    out = pair(_features(1), None)
    torch.testing.assert_close(out.trajectory, cands[0, expected][None])


def test_slowed_copies_of_a_straight_and_a_turning_candidate_hand_computed() -> None:
    straight = _poses(*[(2.0 * (i + 1), 0.0, 0.0) for i in range(8)])
    # a quarter turn: 1 m straight, then a left turn on the spot, then 1 m per pose along +y
    turn = _poses((1.0, 0, 0), (1.0, 1.0, math.pi / 2), (1.0, 2.0, math.pi / 2))
    out = slowed(torch.stack([straight, turn])[None], [0.5, 0.0])
    assert out.shape == (1, 4, 8, 3)
    torch.testing.assert_close(out[0, 0, :, 0], torch.arange(1, 9, dtype=torch.float32))  # half the speed
    torch.testing.assert_close(out[0, 0, :, 1:], torch.zeros(8, 2))
    # the turn's arc lengths are 1, 2, 3 (then held): at half speed 0.5, 1, 1.5, then 1.5 for good
    expected = torch.tensor([[0.5, 0, 0], [1.0, 0, 0], [1.0, 0.5, math.pi / 4]] + [[1.0, 0.5, math.pi / 4]] * 5)
    torch.testing.assert_close(out[0, 1], expected)
    torch.testing.assert_close(out[0, 2:], torch.zeros(2, 8, 3))  # 0: standing at the origin


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-0.3, 0.3), min_size=8, max_size=8),
    st.lists(st.floats(0.0, 3.0), min_size=8, max_size=8),
    st.floats(0.0, 1.0),
)
def test_slowed_stays_on_the_path_and_scales_its_length(turns: list[float], steps: list[float], scale: float) -> None:
    heading = torch.tensor(turns, dtype=torch.float64).cumsum(0)
    step = torch.tensor(steps, dtype=torch.float64)
    xy = torch.stack([step * torch.cos(heading), step * torch.sin(heading)], -1).cumsum(0)
    cand = torch.cat([xy, heading[:, None]], -1)[None, None]
    out = slowed(cand, [scale, 1.0])
    # full speed: the candidate itself (a pose that did not move keeps the heading of the first pose at that spot)
    torch.testing.assert_close(out[0, 1, :, :2], cand[0, 0, :, :2])
    moved = step > 1e-6
    torch.testing.assert_close(out[0, 1, moved, 2], cand[0, 0, moved, 2])
    length = step.cumsum(0)
    got = torch.cat([torch.zeros(1, 2, dtype=torch.float64), out[0, 0, :, :2]]).diff(dim=0).norm(dim=-1).cumsum(0)
    # the copy's poses lie on the path at scale x its arc length: chords never exceed the path's arc length
    assert bool((got <= scale * length + 1e-9).all())
    points = torch.cat([torch.zeros(1, 2, dtype=torch.float64), xy])
    for pose in out[0, 0, :, :2]:  # every pose on a segment of the path
        a, b = points[:-1], points[1:]
        t = (((pose - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1).clamp_min(1e-12)).clamp(0, 1)
        assert float(((a + t[:, None] * (b - a)) - pose).norm(dim=-1).min()) < 1e-6


def test_pair_adds_slowed_copies_of_its_candidates(tmp_path: Path) -> None:
    gen = _generator().eval()
    config = RerankedConfig("planners.truncated_diffusion.TruncatedDiffusionPlanner", gen.config.to_dict(),
                            speed_scales=[0.5, 0.0])  # fmt: skip
    pair = RerankedPlanner(gen, _Preferring([0.0] * 4 + [0.0] * 4 + [1.0] * 4), config).eval()
    feats = _features(1)
    noise = torch.randn(pair.initial_noise_shape(1), generator=torch.Generator().manual_seed(0))
    cands, own = pair.propose(feats, noise)
    plain = gen(feats, noise).candidates
    assert plain is not None and cands.shape == (1, 12, 8, 3)
    torch.testing.assert_close(cands[:, :4], plain)
    torch.testing.assert_close(cands[:, 4:], slowed(plain, [0.5, 0.0]))
    out = pair(feats, noise)  # the standing copies are pickable and preferred here
    torch.testing.assert_close(out.trajectory, torch.zeros(1, 8, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        slowed(plain, [1.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RerankedPlanner(gen, _disc(), dataclasses.replace(config, speed_scales=[-0.5]))
    # the pair's checkpoint keeps them
    disc = _disc()
    real = RerankedPlanner(gen, disc, dataclasses.replace(config, discriminator=disc.config.to_dict())).eval()
    loaded = load_planner(write(tmp_path / "pair.ckpt", CheckpointRecord.of(real)), expect_class="RerankedPlanner")
    assert isinstance(loaded, RerankedPlanner) and loaded.config.speed_scales == [0.5, 0.0]
    torch.testing.assert_close(loaded.propose(feats, noise)[0], cands)
