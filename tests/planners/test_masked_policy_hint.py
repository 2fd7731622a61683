"""Rollouts of the masked diffusion policy from an inpainted hint: the fixed tokens stay, carry no log-prob, and
the path log-prob given the hint matches brute-force enumeration on a tiny vocabulary."""

from __future__ import annotations

import math

import pytest
import torch
from test_masked_policy import ORDERS, TINY, PathKey, _features, _planner, _step_outcomes

from planners.masked_policy import MaskedDiffusionPolicy, attention_fast_path_off, fragment_tokens
from planners.policy import Rollout
from planners.tokenizer import CodebookConfig, TrajectoryTokenizer
from simulation.features import PlannerInput

TINY3 = CodebookConfig(x_min=0.0, x_max=2.0, y_min=0.0, y_max=2.0, resolution=1.0, num_poses=3)  # 6 tokens


def _enumerate_from(
    policy: MaskedDiffusionPolicy, feats: PlannerInput[torch.Tensor], start: tuple[int, ...]
) -> dict[PathKey, float]:
    """Probability of every decoding path from the partial sequence ``start`` (fixed positions: reveal step -1)."""
    planner, tok, steps = policy.planner, policy.planner.tokenizer, policy.num_steps
    legal = planner.legal.tolist()
    reveal0 = tuple(steps if t == tok.mask_id else -1 for t in start)
    frontier: list[tuple[tuple[int, ...], tuple[int, ...], float]] = [(start, reveal0, 1.0)]
    with torch.no_grad(), attention_fast_path_off():
        memory, pad = planner.encode(feats)
        for step in range(steps):
            batch = torch.tensor([t for t, _, _ in frontier])
            n = len(frontier)
            logits = planner._guided_logits(batch, memory.expand(n, -1, -1), pad.expand(n, -1), policy.cfg_scale)
            q = torch.softmax(planner.sampling_logits(logits, policy.temperature, policy.top_k), -1).tolist()
            p = torch.softmax(logits, -1).tolist()
            grown = []
            for row, (tokens, reveal, prob) in enumerate(frontier):
                masked = [j for j, t in enumerate(tokens) if t == tok.mask_id]
                quota = math.ceil(len(masked) / (steps - step))
                if quota == 0:
                    grown.append((tokens, reveal, prob))
                    continue
                for outcome, pr in _step_outcomes(policy.order, masked, quota, q[row], p[row], legal).items():
                    t, r = list(tokens), list(reveal)
                    for j, v in outcome:
                        t[j], r[j] = v, step
                    grown.append((tuple(t), tuple(r), prob * pr))
            frontier = grown
    return {(r, t): prob for t, r, prob in frontier}


def _rollout_of(paths: list[PathKey], steps: int, counted: list[bool]) -> Rollout:
    n = len(paths)
    return Rollout(
        plans=torch.zeros(1, n, 3, 3),
        log_prob=torch.zeros(1, n, steps),
        step_mask=torch.tensor(counted).expand(1, n, steps),
        groups=torch.zeros(1, n, dtype=torch.long),
        chains={
            "tokens": torch.tensor([t for _, t in paths])[None],
            "reveal_step": torch.tensor([r for r, _ in paths])[None],
        },
    )


@pytest.mark.parametrize("order", ORDERS)
def test_hinted_path_log_prob_matches_brute_force(order: str) -> None:
    """6 tokens (3 ids each), the first pose fixed: the 4 others decoded in 3 steps (2, 1, 1 tokens)."""
    planner = _planner(TINY3)
    policy = MaskedDiffusionPolicy(planner, temperature=0.8, top_k=0, order=order, num_steps=3, cfg_scale=1.0)
    feats = _features()
    tok = planner.tokenizer
    fixed = fragment_tokens(tok, torch.tensor([[[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]]), 1)
    assert fixed[0].tolist() == [1, 3 + 2, tok.mask_id, tok.mask_id, tok.mask_id, tok.mask_id]
    brute = _enumerate_from(policy, feats, tuple(fixed[0].tolist()))
    assert sum(brute.values()) == pytest.approx(1.0, abs=1e-6)
    paths = list(brute)
    with torch.no_grad():
        ours = policy.log_prob(feats, _rollout_of(paths, 3, [True] * 3))[0].sum(-1)
    torch.testing.assert_close(ours, torch.tensor([math.log(brute[k]) for k in paths]), atol=2e-5, rtol=0)
    # samples: the hint is kept, never revealed, and the recorded log-probs are the enumerated ones
    rollout = policy.rollout(feats, 300, torch.Generator().manual_seed(2), fixed=fixed)
    tokens, reveal = rollout.chains["tokens"][0], rollout.chains["reveal_step"][0]
    assert torch.equal(tokens[:, :2], fixed[:, :2].expand(300, 2))
    assert bool((reveal[:, :2] == -1).all()) and bool((reveal[:, 2:] >= 0).all())
    sampled = [(tuple(r), tuple(t)) for r, t in zip(reveal.tolist(), tokens.tolist(), strict=True)]
    recorded = rollout.log_prob[0].sum(-1)
    torch.testing.assert_close(recorded, torch.tensor([math.log(brute[k]) for k in sampled]), atol=2e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(policy.log_prob(feats, rollout), rollout.log_prob, atol=1e-6, rtol=0)


def test_fixed_tokens_carry_no_log_prob_and_empty_steps_do_not_count() -> None:
    """Three of four tokens given, three steps: one step reveals the last token, the two others are empty."""
    planner = _planner(TINY)
    policy = MaskedDiffusionPolicy(planner, order="causal", num_steps=3)
    feats = _features(b=2)
    mask = planner.tokenizer.mask_id
    fixed = torch.tensor([[0, 3, 1, mask], [2, 4, 0, mask]])
    rollout = policy.rollout(feats, 5, torch.Generator().manual_seed(0), fixed=fixed)
    assert torch.equal(rollout.chains["tokens"][..., :3], fixed[:, None, :3].expand(2, 5, 3))
    assert rollout.step_mask.tolist() == [[[True, False, False]] * 5] * 2
    assert bool((rollout.log_prob[..., 1:] == 0).all())
    # the one step's log-prob is the last position's sampling log-prob given the three fixed tokens
    with torch.no_grad(), attention_fast_path_off():
        memory, pad = planner.encode(feats)
        log_q = torch.log_softmax(planner._guided_logits(fixed, memory, pad, 0.0), -1)[:, 3]
    last = rollout.chains["tokens"][..., 3]
    torch.testing.assert_close(rollout.log_prob[..., 0], log_q.gather(1, last), atol=1e-6, rtol=0)


def test_fragment_tokens_first_and_last_and_bad_hints() -> None:
    tok = TrajectoryTokenizer(TINY3)
    traj = torch.tensor([[[0.0, 1.0], [1.0, 2.0], [2.0, 0.0]]])
    m = tok.mask_id
    assert fragment_tokens(tok, traj, 2)[0].tolist() == [0, 4, 1, 5, m, m]
    assert fragment_tokens(tok, traj, 1, end="last")[0].tolist() == [m, m, m, m, 2, 3]
    assert fragment_tokens(tok, traj, 0)[0].tolist() == [m] * 6
    with pytest.raises(ValueError, match="waypoints"):
        fragment_tokens(tok, traj, 4)
    policy = MaskedDiffusionPolicy(_planner(TINY3), num_steps=3)
    with pytest.raises(ValueError, match="codebook"):
        policy.rollout(_features(), 2, fixed=torch.tensor([[3, 4, m, m, m, m]]))  # a y id at an x position
    with pytest.raises(ValueError, match="fixed tokens must be"):
        policy.rollout(_features(), 2, fixed=torch.tensor([[0, 4, m, m]]))
