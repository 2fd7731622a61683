"""The masked diffusion policy: decoding-path probabilities against brute-force enumeration on a tiny vocabulary."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import pytest
import torch
from scipy import stats

from planners.masked_diffusion import MaskedDiffusionConfig, MaskedDiffusionPlanner, masking_schedule
from planners.masked_policy import MaskedDiffusionPolicy, attention_fast_path_off
from planners.policy import PlanningPolicy, Rollout
from planners.tokenizer import CodebookConfig
from simulation.features import PlannerInput

ORDERS = ("confidence", "causal", "reverse_causal")
TINY = CodebookConfig(x_min=0.0, x_max=2.0, y_min=0.0, y_max=2.0, resolution=1.0, num_poses=2)  # 4 tokens, 3 ids each

PathKey = tuple[tuple[int, ...], tuple[int, ...]]  # (reveal step per position, final ids)


def _features(b: int = 1, seed: int = 0) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return PlannerInput(
        bev=torch.rand(b, 4, 32, 32, generator=g),
        ego_status=torch.randn(b, 8, generator=g),
        agents=torch.randn(b, 5, 11, generator=g),
        agents_mask=torch.rand(b, 5, generator=g) > 0.3,
    )


def _planner(codebook: CodebookConfig = TINY, sharpness: float = 6.0, **kw: object) -> MaskedDiffusionPlanner:
    """A small random planner; ``sharpness`` scales the output layer so the token distributions are uneven."""
    torch.manual_seed(0)
    cfg = MaskedDiffusionConfig(bev_channels=4, d_model=16, num_heads=2, num_layers=1, codebook=codebook, **kw)
    planner = MaskedDiffusionPlanner(cfg).eval()
    with torch.no_grad():
        planner.head.weight.mul_(sharpness)
        planner.null_condition.normal_()
    return planner


def _enumerate(policy: MaskedDiffusionPolicy, feats: PlannerInput[torch.Tensor]) -> dict[PathKey, float]:
    """Probability of every decoding path by brute force over the sampling procedure itself.

    At each state every joint draw of the masked positions is enumerated with its probability (product of the
    per-position sampling probabilities); the draw's keys (score, -position) pick the revealed positions, and the
    outcome (revealed positions, their tokens) accumulates the draw's probability.
    """
    planner, tok, steps = policy.planner, policy.planner.tokenizer, policy.num_steps
    legal = planner.legal.tolist()
    frontier: list[tuple[tuple[int, ...], tuple[int, ...], float]] = [
        ((tok.mask_id,) * tok.seq_len, (steps,) * tok.seq_len, 1.0)
    ]
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
                outcomes = _step_outcomes(policy.order, masked, quota, q[row], p[row], legal)
                for outcome, pr in outcomes.items():
                    t, r = list(tokens), list(reveal)
                    for j, v in outcome:
                        t[j], r[j] = v, step
                    grown.append((tuple(t), tuple(r), prob * pr))
            frontier = grown
    return {(r, t): prob for t, r, prob in frontier}


def _step_outcomes(
    order: str, masked: list[int], quota: int, q: list[list[float]], p: list[list[float]], legal: list[list[bool]]
) -> dict[tuple[tuple[int, int], ...], float]:
    """Probability of each (revealed position, id) set of one step, summed over every joint draw."""
    outcomes: dict[tuple[tuple[int, int], ...], float] = defaultdict(float)
    choices = [[v for v in range(len(q[j])) if legal[j][v] and q[j][v] > 0] for j in masked]
    for draw in itertools.product(*choices):
        pr = math.prod(q[j][v] for j, v in zip(masked, draw, strict=True))
        keys = [
            (p[j][v] if order == "confidence" else (-j if order == "causal" else j), -j, j, v)
            for j, v in zip(masked, draw, strict=True)
        ]
        ranked = sorted(keys, reverse=True)  # largest score first, ties to the lower position
        outcomes[tuple(sorted((j, v) for _, _, j, v in ranked[:quota]))] += pr
    return outcomes


def _rollout_of(paths: list[PathKey], steps: int) -> Rollout:
    """The given paths as one scene's rollout (plans unused by ``log_prob``)."""
    n = len(paths)
    reveal = torch.tensor([r for r, _ in paths])[None]
    tokens = torch.tensor([t for _, t in paths])[None]
    return Rollout(
        plans=torch.zeros(1, n, 2, 3),
        log_prob=torch.zeros(1, n, steps),
        step_mask=torch.ones(1, n, steps, dtype=torch.bool),
        groups=torch.zeros(1, n, dtype=torch.long),
        chains={"tokens": tokens, "reveal_step": reveal},
    )


CASES = [
    pytest.param(order, temperature, top_k, cfg, id=f"{order}-T{temperature}-k{top_k}-cfg{cfg}")
    for order in ORDERS
    for temperature, top_k, cfg in ((1.0, 0, 0.0), (0.7, 2, 1.5))
]


@pytest.mark.parametrize(("order", "temperature", "top_k", "cfg"), CASES)
def test_path_probabilities_match_brute_force(order: str, temperature: float, top_k: int, cfg: float) -> None:
    """Every path of a 4-token, 3-ids-per-position sequence decoded in 3 steps (2, 1, 1 tokens)."""
    policy = MaskedDiffusionPolicy(_planner(), temperature, top_k, order=order, num_steps=3, cfg_scale=cfg)
    feats = _features()
    brute = _enumerate(policy, feats)
    assert sum(brute.values()) == pytest.approx(1.0, abs=1e-6)
    paths = list(brute)
    with torch.no_grad():
        ours = policy.log_prob(feats, _rollout_of(paths, 3))[0].sum(-1)
    expected = torch.tensor([math.log(brute[k]) for k in paths], dtype=torch.float32)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=0)
    assert float(ours.double().exp().sum()) == pytest.approx(1.0, abs=1e-5)
    # Samples: their recorded path log-probs are the enumerated ones, their final sequences follow the distribution.
    rollout = policy.rollout(feats, 4000, torch.Generator().manual_seed(1))
    reveal, tokens = rollout.chains["reveal_step"][0].tolist(), rollout.chains["tokens"][0].tolist()
    sampled = [(tuple(r), tuple(t)) for r, t in zip(reveal, tokens, strict=True)]
    recorded = rollout.log_prob[0].sum(-1)
    torch.testing.assert_close(recorded, torch.tensor([math.log(brute[k]) for k in sampled]), atol=2e-5, rtol=0)
    final: dict[tuple[int, ...], float] = defaultdict(float)
    for (_, t), prob in brute.items():
        final[t] += prob
    counts = Counter(t for _, t in sampled)
    assert _chi_square_p_value(counts, final, len(sampled)) > 1e-3


def _chi_square_p_value(counts: Counter, probs: dict[tuple[int, ...], float], n: int) -> float:
    """Pearson's test of observed counts against probabilities; categories expected < 5 times are pooled."""
    big = [k for k, p in probs.items() if p * n >= 5]
    observed = [counts[k] for k in big] + [n - sum(counts[k] for k in big)]
    expected = [probs[k] * n for k in big] + [n * (1.0 - sum(probs[k] for k in big))]
    if expected[-1] < 1e-9:
        observed, expected = observed[:-1], expected[:-1]
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    return float(stats.chi2.sf(statistic, len(observed) - 1))


def test_ties_go_to_the_lower_position() -> None:
    """Confidences that tie (an input-independent output layer) are ranked by position, lower first."""
    planner = _planner()
    with torch.no_grad():
        planner.head.weight.zero_()
        planner.head.bias.copy_(torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]))  # ids 0 / 1 and 3 / 4 tie
    policy = MaskedDiffusionPolicy(planner, order="confidence", num_steps=3)
    feats = _features()
    brute = _enumerate(policy, feats)
    paths = list(brute)
    with torch.no_grad():
        ours = policy.log_prob(feats, _rollout_of(paths, 3))[0].sum(-1)
    torch.testing.assert_close(ours, torch.tensor([math.log(brute[k]) for k in paths]), atol=2e-5, rtol=0)
    with torch.no_grad():
        planner.head.bias.zero_()  # every draw ties: the confidence order decodes near to far
    rollout = policy.rollout(feats, 20, torch.Generator().manual_seed(0))
    assert rollout.chains["reveal_step"][0].tolist() == [[0, 0, 1, 2]] * 20
    torch.testing.assert_close(rollout.log_prob[0].sum(-1), torch.full((20,), 4 * math.log(1 / 3)))


def test_the_discarded_draws_matter_for_the_confidence_order() -> None:
    """Without the factor of the discarded draws, the confidence-order paths would sum to more than 1."""
    policy = MaskedDiffusionPolicy(_planner(), order="confidence", num_steps=3)
    feats = _features()
    paths = list(_enumerate(policy, feats))
    rollout = _rollout_of(paths, 3)
    tokens, reveal = rollout.chains["tokens"][0], rollout.chains["reveal_step"][0]
    with torch.no_grad(), attention_fast_path_off():
        memory, pad = policy._context(feats, len(paths))
        revealed_only = torch.zeros(len(paths))
        for step in range(3):
            partial = torch.where(reveal < step, tokens, policy.planner.tokenizer.mask_id)
            logits = policy.planner._guided_logits(partial, memory, pad, 0.0)
            log_q = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
            revealed_only += torch.where(reveal == step, log_q, 0.0).sum(-1)
    assert float(revealed_only.double().exp().sum()) > 1.5


def test_probabilities_sum_to_one_in_gradient_too() -> None:
    """d/dtheta sum_paths p(path) = 0, while single paths have non-zero gradients (confidence order)."""
    policy = MaskedDiffusionPolicy(_planner(), order="confidence", num_steps=3, cfg_scale=1.0)
    feats = _features()
    paths = list(_enumerate(policy, feats))
    total = policy.log_prob(feats, _rollout_of(paths, 3))[0].sum(-1).double().exp()
    params = [policy.planner.head.weight, policy.planner.null_condition]
    grads = torch.autograd.grad(total.sum(), params, retain_graph=True)
    one = torch.autograd.grad(total.max(), params)  # the most likely path
    for g, g1 in zip(grads, one, strict=True):
        assert float(g.abs().max()) < 1e-5 * max(1.0, float(g1.abs().max())) and float(g1.abs().max()) > 1e-4


def test_temperature_sharpens_and_top_k_restricts() -> None:
    feats = _features()
    entropies = []
    for temperature in (0.5, 1.0, 2.0):
        brute = _enumerate(MaskedDiffusionPolicy(_planner(), temperature, order="causal", num_steps=3), feats)
        entropies.append(-sum(p * math.log(p) for p in brute.values()))
    assert entropies[0] < entropies[1] < entropies[2]
    planner = _planner(num_steps=4)
    greedy = planner.generate(feats, temperature=0.0, order="causal")[0].tolist()
    # the path revealing near to far with each position's third choice: impossible under top-2 sampling
    with torch.no_grad():
        logits = planner.logits(torch.full((1, 4), planner.tokenizer.mask_id), *planner.encode(feats))
    worst = logits[0].masked_fill(~planner.legal, float("inf")).argmin(-1)  # each position's third choice
    partial = _rollout_of([((0, 1, 2, 3), tuple(greedy))], 4)
    third = _rollout_of([((0, 1, 2, 3), (int(worst[0]), *greedy[1:]))], 4)
    for k, finite in ((0, True), (2, False)):
        policy = MaskedDiffusionPolicy(planner, top_k=k, order="causal", num_steps=4)
        with torch.no_grad():
            assert bool(torch.isfinite(policy.log_prob(feats, third)).all()) == finite
            assert bool(torch.isfinite(policy.log_prob(feats, partial)).all())


@pytest.mark.parametrize("order", ORDERS)
def test_top_1_is_the_greedy_decoder_with_probability_one(order: str) -> None:
    planner = _planner(CodebookConfig(resolution=1.0), sharpness=1.0, num_steps=4)
    feats = _features(b=2)
    policy = MaskedDiffusionPolicy(planner, top_k=1, order=order)
    rollout = policy.rollout(feats, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        greedy = planner.generate(feats, temperature=0.0, order=order)
    assert torch.equal(rollout.chains["tokens"], greedy[:, None].expand(2, 3, 16))
    assert bool((rollout.log_prob == 0).all())


@pytest.mark.parametrize("order", ORDERS)
def test_samples_what_generate_samples_and_on_policy_ratio_is_one(order: str) -> None:
    """Full-size vocabulary, training mode, guidance on: same draws as ``generate``; re-scoring gives ratio 1."""
    planner = _planner(CodebookConfig(), sharpness=1.0, num_steps=4, cfg_scale=0.5).train()
    policy = MaskedDiffusionPolicy(planner, temperature=1.3, top_k=50, order=order)
    feats = _features(b=2)
    rollout = policy.rollout(feats, 3, torch.Generator().manual_seed(3))
    rollout.validate()
    assert rollout.plans.shape == (2, 3, 8, 3) and rollout.log_prob.shape == (2, 3, 4)
    assert bool(rollout.step_mask.all()) and not rollout.log_prob.requires_grad
    assert torch.equal(rollout.groups, torch.zeros(2, 3, dtype=torch.long))
    with torch.no_grad():
        memory, pad = planner.encode(feats)
        drawn = planner.generate(
            None,
            order=order,
            temperature=1.3,
            top_k=50,
            generator=torch.Generator().manual_seed(3),
            context=(memory.repeat_interleave(3, 0), pad.repeat_interleave(3, 0)),
        )
    assert torch.equal(rollout.chains["tokens"].reshape(6, 16), drawn)
    revealed_per_step = (rollout.chains["reveal_step"][..., None] == torch.arange(4)).sum(-2)
    assert bool((revealed_per_step == torch.tensor(masking_schedule(16, 4))).all())
    tokens = rollout.chains["tokens"]
    torch.testing.assert_close(rollout.plans[..., :2], planner.tokenizer.decode(tokens))
    log_prob = policy.log_prob(feats, rollout)
    assert log_prob.requires_grad
    torch.testing.assert_close(log_prob.detach(), rollout.log_prob, atol=1e-6, rtol=0)
    ratio = (log_prob - rollout.log_prob).sum(-1).exp()
    torch.testing.assert_close(ratio.detach(), torch.ones(2, 3), atol=1e-6, rtol=0)
    log_prob.sum().backward()
    for name in ("head.weight", "decoder.layers.0.self_attn.in_proj_weight", "null_condition", "token_embed.weight"):
        grad = dict(planner.named_parameters())[name].grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0, name


def test_seeded_rollouts_repeat() -> None:
    planner = _planner(CodebookConfig(resolution=1.0), sharpness=1.0, num_steps=4)
    policy = MaskedDiffusionPolicy(planner, order="confidence")
    feats = _features(b=2)
    a, b = (policy.rollout(feats, 4, torch.Generator().manual_seed(7)) for _ in range(2))
    c = policy.rollout(feats, 4, torch.Generator().manual_seed(8))
    for key in ("tokens", "reveal_step"):
        assert torch.equal(a.chains[key], b.chains[key])
    assert torch.equal(a.log_prob, b.log_prob) and torch.equal(a.plans, b.plans)
    assert not torch.equal(a.chains["tokens"], c.chains["tokens"])
    assert torch.backends.mha.get_fastpath_enabled()  # the fast path is switched back on after the calls


def test_sequence_estimators() -> None:
    planner = _planner(CodebookConfig(resolution=1.0), sharpness=1.0, num_steps=4)
    policy = MaskedDiffusionPolicy(planner, order="reverse_causal")
    assert isinstance(policy, PlanningPolicy)
    feats = _features(b=2)
    rollout = policy.rollout(feats, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        path = policy.sequence_log_prob(feats, rollout, "path")
        exact = policy.sequence_log_prob(feats, rollout, "exact")
        one_pass = policy.sequence_log_prob(feats, rollout, "one_pass")
        repeated = feats.apply(lambda v: v.repeat_interleave(3, 0))
        tokens = rollout.chains["tokens"].reshape(6, 16)
        torch.testing.assert_close(exact, planner.log_prob_exact(repeated, tokens).reshape(2, 3))
        torch.testing.assert_close(one_pass, planner.log_prob_one_pass(repeated, tokens).reshape(2, 3))
    torch.testing.assert_close(path, rollout.sequence_log_prob(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown estimator"):
        policy.sequence_log_prob(feats, rollout, "mean_field")  # type: ignore[arg-type]


def test_bad_settings_and_foreign_rollouts_are_errors() -> None:
    planner = _planner()
    with pytest.raises(ValueError, match="temperature > 0"):
        MaskedDiffusionPolicy(planner, temperature=0.0)
    with pytest.raises(ValueError, match="unknown decoding order"):
        MaskedDiffusionPolicy(planner, order="zigzag")
    policy = MaskedDiffusionPolicy(planner, num_steps=3)
    rollout = _rollout_of([((0, 0, 1, 2), (0, 3, 0, 3))], 4)
    with pytest.raises(ValueError, match="3"):
        policy.log_prob(_features(), rollout)
    rollout.chains = {}
    with pytest.raises(ValueError, match="reveal_step"):
        policy.log_prob(_features(), rollout)


def test_goal_candidates_sample_around_the_fixed_goals() -> None:
    planner = _planner(CodebookConfig(resolution=1.0), sharpness=1.0, num_candidates=3, num_steps=4)
    feats = _features(b=2)
    with torch.no_grad():
        today = planner.goal_candidates(feats)
        greedy = planner.goal_candidates(feats, temperature=0.0, generator=torch.Generator().manual_seed(0))
        sampled = [
            planner.goal_candidates(feats, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(s))
            for s in (0, 0, 1)
        ]
    assert torch.equal(today.candidates, greedy.candidates) and torch.equal(today.scores, greedy.scores)
    assert torch.equal(sampled[0].candidates, sampled[1].candidates)
    assert not torch.equal(sampled[0].candidates, sampled[2].candidates)
    assert not torch.equal(sampled[0].candidates, today.candidates)
    for out in sampled:  # the goals stay the deterministic NMS goals
        torch.testing.assert_close(out.candidates[..., -1, :2], today.candidates[..., -1, :2])
        assert torch.equal(out.scores, today.scores)
