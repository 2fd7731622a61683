"""Masked diffusion planner: tokenizer, decoding orders, log-probabilities against brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from planners.masked_diffusion import MaskedDiffusionConfig, MaskedDiffusionPlanner, masking_schedule
from planners.tokenizer import CodebookConfig, TokenizerError, TrajectoryTokenizer


def _features(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "bev": torch.rand(b, 4, 64, 64, generator=g),
        "ego_status": torch.randn(b, 8, generator=g),
        "agents": torch.randn(b, 5, 11, generator=g),
        "agents_mask": torch.rand(b, 5, generator=g) > 0.3,
    }


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
    feats = {k: v[:1].expand(len(seqs), *v.shape[1:]) for k, v in _features(b=1).items()}
    with torch.no_grad():
        exact = planner.log_prob_exact(feats, seqs)
        one_pass = planner.log_prob_one_pass(feats, seqs)
    assert float(exact.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(one_pass.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    # Exact chain rule by hand for one sequence: p(o0) p(o1 | o0) p(o2 | o0 o1) p(o3 | o0 o1 o2).
    s = seqs[17:18]
    with torch.no_grad():
        memory, pad = planner.encode({k: v[:1] for k, v in feats.items()})
        total = 0.0
        for t in range(4):
            inp = torch.where(torch.arange(4) < t, s, torch.full_like(s, tok.mask_id))
            total += float(torch.log_softmax(planner.logits(inp, memory, pad), -1)[0, t, s[0, t]])
    assert float(exact[17]) == pytest.approx(total, abs=1e-5)


def test_training_loss_falls_and_decodes_target() -> None:
    planner = _planner(num_steps=4).train()
    feats = _features(b=2)
    target = torch.stack([torch.linspace(2, 30, 8), torch.linspace(0, 2, 8), torch.zeros(8)], -1)[None].repeat(2, 1, 1)
    opt = torch.optim.Adam(planner.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(250):
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
    assert float((out.trajectory[..., :2] - target[..., :2]).abs().max()) < 0.5
    assert cands.candidates.shape == (2, 3, 8, 3) and cands.scores.shape == (2, 3)


def test_unknown_order_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown decoding order"):
        MaskedDiffusionConfig(order="random_walk")
