"""Masked diffusion planner: tokenizer, decoding orders, log-probabilities against brute force."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from planners.masked_diffusion import MaskedDiffusionConfig, MaskedDiffusionPlanner, masking_schedule
from planners.tokenizer import CodebookConfig, TokenizerError, TrajectoryTokenizer
from simulation.features import PlannerInput


def _features(b: int = 2, seed: int = 0) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return PlannerInput(
        bev=torch.rand(b, 4, 64, 64, generator=g),
        ego_status=torch.randn(b, 8, generator=g),
        agents=torch.randn(b, 5, 11, generator=g),
        agents_mask=torch.rand(b, 5, generator=g) > 0.3,
    )


def _planner(codebook: CodebookConfig | None = None, **kw: object) -> MaskedDiffusionPlanner:
    torch.manual_seed(0)
    cfg = MaskedDiffusionConfig(bev_channels=4, d_model=32, num_layers=2, codebook=codebook or CodebookConfig(), **kw)
    return MaskedDiffusionPlanner(cfg).eval()


def test_tokenizer_round_trip_and_bounds() -> None:
    tok = TrajectoryTokenizer()
    xy = torch.stack([torch.linspace(1, 40, 8), torch.linspace(-3, 3, 8)], -1)
    tokens = tok.encode(xy)
    assert tokens.shape == (16,) and int(tokens[0::2].max()) < tok.num_x and int(tokens[1::2].min()) >= tok.num_x
    assert float((tok.decode(tokens) - xy).abs().max()) <= tok.config.resolution / 2 + 1e-6
    centres = tok.decode(tokens)
    assert torch.equal(tok.encode(centres), tokens)  # exact on bin centres
    far = xy.clone()
    far[3, 0] = 500.0
    clipped = tok.decode(tok.encode(far))
    assert float(clipped[3, 0]) == pytest.approx(tok.config.x_max) and tok.clipped == 1
    with pytest.raises(TokenizerError):
        tok.encode(torch.full((8, 2), float("nan")))
    with pytest.raises(TokenizerError):
        tok.decode(torch.full((16,), tok.mask_id))
    with pytest.raises(TokenizerError, match="codebook mismatch"):
        tok.check_compatible(CodebookConfig(resolution=0.2).to_dict())


def test_masking_schedule_sums() -> None:
    assert masking_schedule(16, 4) == [4, 4, 4, 4]
    assert masking_schedule(16, 5) == [4, 3, 3, 3, 3]
    assert sum(masking_schedule(16, 16)) == 16


@pytest.mark.parametrize("order", ["confidence", "causal", "reverse_causal"])
def test_each_order_fully_unmasks_in_configured_steps(order: str) -> None:
    planner = _planner()
    with torch.no_grad():
        tokens = planner.generate(_features(), num_steps=4, order=order)
    assert tokens.shape == (2, 16) and not bool((tokens == planner.tokenizer.mask_id).any())
    planner.tokenizer.decode(tokens)  # every position holds a token of its own axis


def test_causal_orders_unmask_near_or_far_first() -> None:
    planner = _planner()
    seen = {}
    for order in ("causal", "reverse_causal"):
        with torch.no_grad():
            tokens = planner.generate(_features(b=1), num_steps=16, order=order)
            partial = planner.generate(_features(b=1), num_steps=16, order=order)
        seen[order] = tokens
        assert not bool((partial == planner.tokenizer.mask_id).any())
    # One step of four: causal fixes positions 0-3, reverse-causal positions 12-15.
    with torch.no_grad():
        memory, pad = planner.encode(_features(b=1))
        for order, expected in (("causal", range(0, 4)), ("reverse_causal", range(12, 16))):
            tokens = torch.full((1, 16), planner.tokenizer.mask_id)
            logits = planner.logits(tokens, memory, pad)
            token, conf = planner._pick(logits, 0.0, 0, None)
            score = planner._order_scores(order, conf)
            chosen = score.argsort(1, descending=True)[0, :4]
            assert sorted(chosen.tolist()) == list(expected)


def test_log_probs_against_brute_force_on_tiny_vocab() -> None:
    """Both factorisations are normalised distributions over all sequences of a 2-waypoint, 3-bin codebook."""
    codebook = CodebookConfig(x_min=0.0, x_max=2.0, y_min=0.0, y_max=2.0, resolution=1.0, num_poses=2)
    planner = _planner(codebook)
    tok = planner.tokenizer
    seqs = torch.tensor(
        [[x1, y1 + 3, x2, y2 + 3] for x1, y1, x2, y2 in itertools.product(range(3), repeat=4)], dtype=torch.long
    )
    feats = _features(b=1).apply(lambda v: v[:1].expand(len(seqs), *v.shape[1:]))
    with torch.no_grad():
        exact = planner.log_prob_exact(feats, seqs)
        one_pass = planner.log_prob_one_pass(feats, seqs)
    assert float(exact.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(one_pass.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    # Exact chain rule by hand for one sequence: p(o0) p(o1 | o0) p(o2 | o0 o1) p(o3 | o0 o1 o2).
    s = seqs[17:18]
    with torch.no_grad():
        memory, pad = planner.encode(feats.apply(lambda v: v[:1]))
        total = 0.0
        for t in range(4):
            inp = torch.where(torch.arange(4) < t, s, torch.full_like(s, tok.mask_id))
            total += float(torch.log_softmax(planner.logits(inp, memory, pad), -1)[0, t, s[0, t]])
    assert float(exact[17]) == pytest.approx(total, abs=1e-5)


def test_training_loss_falls_and_decodes_target() -> None:
    """A few optimiser steps on one target (BEV backbone frozen to keep the test short, 0.5 m bins)."""
    planner = _planner(CodebookConfig(resolution=0.5), num_steps=4).train()
    planner.bev_encoder.requires_grad_(False).eval()
    feats = _features(b=2)
    target = torch.stack([torch.linspace(2, 30, 8), torch.linspace(0, 2, 8), torch.zeros(8)], -1)[None].repeat(2, 1, 1)
    opt = torch.optim.Adam([p for p in planner.parameters() if p.requires_grad], lr=5e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        loss = planner.compute_loss(feats, {"trajectory": target}, generator=g)["loss"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sum(losses[-10:]) / 10 < 0.2 * losses[0]
    planner.eval()
    with torch.no_grad():
        out = planner.sample(feats)
        cands = planner(feats)
    assert float((out.trajectory[..., :2] - target[..., :2]).abs().max()) <= 0.25 + 1e-5  # the nearest bins
    assert float((cands.trajectory[..., :2] - target[..., :2]).abs().max()) <= 0.25 + 1e-5
    assert cands.candidates.shape == (2, 3, 8, 3) and cands.scores.shape == (2, 3)


def test_unknown_order_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown decoding order"):
        MaskedDiffusionConfig(order="random_walk")


def test_tokenizer_clips_with_a_warning_and_never_wraps(caplog: pytest.LogCaptureFixture) -> None:
    tok = TrajectoryTokenizer()
    xy = torch.zeros(2, 8, 2)
    xy[0, 2] = torch.tensor([-50.0, 0.0])  # behind the x range
    xy[1, 5] = torch.tensor([10.0, 41.0])  # left of the y range
    xy[1, 6] = torch.tensor([200.0, -300.0])  # out on both axes: one waypoint, counted once
    with caplog.at_level(logging.WARNING, logger="planners.tokenizer"):
        back = tok.decode(tok.encode(xy))
    assert tok.clipped == 3 and "clipped 3 out-of-range waypoints" in caplog.text
    assert back[0, 2].tolist() == pytest.approx([tok.config.x_min, 0.0], abs=1e-5)
    assert back[1, 5].tolist() == pytest.approx([10.0, tok.config.y_max], abs=1e-5)
    assert back[1, 6].tolist() == pytest.approx([tok.config.x_max, tok.config.y_min], abs=1e-5)
    caplog.clear()
    tok.encode(torch.zeros(8, 2))
    assert tok.clipped == 3 and not caplog.text  # in range: no warning, counter unchanged


def test_default_codebook_round_trip_error_below_10_cm() -> None:
    """Worst case of the default codebook: half a bin per axis (0.05 m), so at most 0.0707 m per waypoint."""
    tok = TrajectoryTokenizer()
    g = torch.Generator().manual_seed(0)
    xy = torch.stack([torch.rand(500, 8, generator=g) * 90.0, (torch.rand(500, 8, generator=g) - 0.5) * 70.0], -1)
    err = (tok.decode(tok.encode(xy)) - xy).norm(dim=-1)
    assert float(err.max()) <= 0.05 * 2**0.5 + 1e-5 and tok.clipped == 0


def test_generate_follows_the_masking_schedule() -> None:
    """Masks left before each step: 16 tokens in 5 steps unmask 4, 3, 3, 3, 3; a fixed goal leaves 14 in 4 steps."""
    planner = _planner(num_steps=4)
    seen: list[int] = []
    logits = planner.logits

    def counting(tokens: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        seen.append(int((tokens[0] == planner.tokenizer.mask_id).sum()))
        return logits(tokens, memory, pad)

    planner.logits = counting  # type: ignore[method-assign]
    with torch.no_grad():
        planner.generate(_features(b=1), num_steps=5, order="confidence")
        assert seen == [16, 12, 9, 6, 3]
        assert [a - b for a, b in zip(seen, [*seen[1:], 0])] == masking_schedule(16, 5)
        seen.clear()
        fixed = torch.full((1, 16), -1)
        fixed[0, 14:] = torch.tensor([500, planner.tokenizer.num_x + 400])
        out = planner.generate(_features(b=1), fixed=fixed)  # the configured 4 steps
    assert seen == [14, 10, 6, 3] and out[0, 14:].tolist() == fixed[0, 14:].tolist()


def test_masked_loss_by_hand() -> None:
    """Masks drawn with rate r ~ U(0, 1) per sample; cross-entropy of the masked tokens weighted by 1 / r."""
    planner = _planner(cond_drop_prob=0.0)
    feats = _features(b=3)
    target = torch.stack([torch.linspace(2, 30, 8), torch.linspace(0, 2, 8), torch.zeros(8)], -1)[None].repeat(3, 1, 1)
    with torch.no_grad():
        out = planner.compute_loss(feats, {"trajectory": target}, generator=torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        r = torch.rand(3, 1, generator=g).clamp(min=1 / 16)
        masked = torch.rand(3, 16, generator=g) < r
        assert bool(masked.any(1).all())  # no sample needs its one forced mask with this seed
        tokens = planner.tokenizer.encode(target)
        inputs = torch.where(masked, torch.full_like(tokens, planner.tokenizer.mask_id), tokens)
        logp = torch.log_softmax(planner.logits(inputs, *planner.encode(feats)), -1)
        nll = -logp.gather(-1, tokens[..., None])[..., 0]
    expected = sum(float((nll[i] * masked[i]).sum()) / (float(r[i]) * 16) for i in range(3)) / 3
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)


def test_one_pass_log_prob_by_hand() -> None:
    codebook = CodebookConfig(x_min=0.0, x_max=2.0, y_min=0.0, y_max=2.0, resolution=1.0, num_poses=2)
    planner = _planner(codebook)
    feats = _features(b=1)
    seq = torch.tensor([[2, 3, 0, 5]])
    with torch.no_grad():
        memory, pad = planner.encode(feats)
        logp = torch.log_softmax(planner.logits(torch.full((1, 4), planner.tokenizer.mask_id), memory, pad), -1)
        one_pass = planner.log_prob_one_pass(feats, seq)
    assert float(one_pass[0]) == pytest.approx(sum(float(logp[0, t, seq[0, t]]) for t in range(4)), abs=1e-5)


def test_nms_goals_by_hand() -> None:
    planner = _planner(goal_top_k=20, goal_nms_m=0.9)
    tok = planner.tokenizer
    lx = torch.full((1, tok.num_x), -1e9)
    ly = torch.full((1, tok.num_y), -1e9)
    lx[0, [100, 101, 120]] = torch.tensor([0.5, 0.3, 0.2]).log()
    ly[0, [400, 430]] = torch.tensor([0.7, 0.3]).log()
    goals, scores = planner.nms_goals(lx, ly, 3)
    # joint: (100,400) .35, (101,400) .21 (0.1 m from the first: suppressed), (100,430) .15 (3 m), (120,400) .14
    assert goals[0].tolist() == [[100, 400], [100, 430], [120, 400]]
    torch.testing.assert_close(scores[0], torch.tensor([0.35, 0.15, 0.14]).log())
    few = _planner(goal_top_k=2)  # only (100,400) and (101,400) visited: the best goal is repeated
    goals, scores = few.nms_goals(lx, ly, 3)
    assert goals[0].tolist() == [[100, 400]] * 3


def test_endpoint_goals_are_last_waypoint_tokens() -> None:
    planner = _planner(num_candidates=3)
    with torch.no_grad():
        goals, scores = planner.endpoint_goals(planner.encode(_features(b=2)), 3)
        out = planner.goal_candidates(_features(b=2))
    tok = planner.tokenizer
    assert goals.shape == (2, 3, 2) and scores.shape == (2, 3)
    assert bool((goals[..., 0] < tok.num_x).all()) and bool((goals[..., 1] >= tok.num_x).all())
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())  # best first
    c = tok.config
    ends = torch.stack(
        [c.x_min + goals[..., 0] * c.resolution, c.y_min + (goals[..., 1] - tok.num_x) * c.resolution], -1
    )
    torch.testing.assert_close(out.candidates[..., -1, :2], ends)  # every candidate ends on its goal


def test_codebook_mismatch_with_the_weights_is_an_error(caplog: pytest.LogCaptureFixture) -> None:
    trained = _planner()
    state = trained.state_dict()
    assert state["codebook"].tolist() == [-5.0, 95.0, -40.0, 40.0, 0.1, 8.0]
    shifted = _planner(CodebookConfig(x_min=-4.0, x_max=96.0))  # same vocabulary size: would load silently
    assert shifted.tokenizer.vocab_size == trained.tokenizer.vocab_size
    with pytest.raises(TokenizerError, match="codebook mismatch"):
        shifted.load_state_dict(state)
    _planner().load_state_dict(state)  # the same codebook loads
    older = {k: v for k, v in state.items() if k != "codebook"}  # saved before the codebook travelled along
    with caplog.at_level(logging.WARNING, logger="planners.masked_diffusion"):
        _planner().load_state_dict(older)
    assert "without a stored codebook" in caplog.text


def test_unknown_order_in_generate_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"unknown decoding order 'zigzag'; choose one of"):
        _planner().generate(_features(b=1), order="zigzag")


def test_classifier_free_guidance_by_hand() -> None:
    """Guided logits = uncond + (1 + s) (cond - uncond), the unconditional pass reading the learnt null condition."""
    planner = _planner()
    with torch.no_grad():
        planner.null_condition.normal_()
        memory, pad = planner.encode(_features(b=1))
        tokens = torch.full((1, 16), planner.tokenizer.mask_id)
        cond = planner.logits(tokens, memory, pad)
        uncond = planner.logits(tokens, planner.null_condition, torch.zeros(1, 1, dtype=torch.bool))
        guided = planner._guided_logits(tokens, memory, pad, 2.0)
        legal = planner.legal
        torch.testing.assert_close(guided[0][legal], (uncond + 3.0 * (cond - uncond))[0][legal])
        assert bool(torch.isinf(guided[0][~legal]).all())
        torch.testing.assert_close(planner._guided_logits(tokens, memory, pad, 0.0), cond)
        out = planner.generate(None, context=(memory, pad), cfg_scale=2.0, num_steps=4)
    assert not bool((out == planner.tokenizer.mask_id).any())
