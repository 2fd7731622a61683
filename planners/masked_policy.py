"""The masked diffusion planner as an RL policy: sampled decoding paths and their exact log-probabilities.

**Sampling procedure** (the planner's own unmasking loop at ``temperature > 0``). A sequence of ``L`` tokens is
decoded in ``S`` steps from the fully masked one; at step ``s`` with masked positions ``M`` and quota ``n_s``
(:func:`planners.masked_diffusion.masking_schedule` of the tokens left):

1. ``l = `` the planner's logits of the partial sequence ``x_s`` (classifier-free guided when ``cfg_scale > 0``;
   ids illegal at a position, i.e. outside its axis codebook or the mask, at ``-inf``);
2. at every masked position ``j`` a token ``a_j ~ q_j = softmax(sampling_logits(l_j, temperature, top_k))`` is
   drawn, independently of the other positions;
3. each masked position gets a key ``(score_j, -j)``: ``score_j = p_j(a_j) = softmax(l_j)[a_j]`` (the untempered
   confidence of the draw) for the ``confidence`` order, ``-j`` for ``causal``, ``j`` for ``reverse_causal``;
   the ``n_s`` positions with the largest keys (lexicographic: ties of the score go to the lower position) are
   revealed with their draws; the other draws are discarded.

**Policy probability of a step.** The action of step ``s`` is ``(R, a_R)``: the revealed positions and their
tokens. The positions are a deterministic function of the state and of *all* draws, so the probability of the
action is the probability of the draws marginalised over the discarded ones (exact, not an estimate)::

    pi(R, a_R | x_s) = prod_{i in R} q_i(a_i) * prod_{j in M \\ R} sum_v q_j(v) [key_j(v) < key*]

with ``key* = min_{i in R} key_i(a_i)``: a discarded draw must rank below every revealed one. For the causal
orders the keys do not depend on the tokens, so the second factor is exactly 1 and a step's probability is the
product of the revealed tokens' sampling probabilities. The path log-prob is the sum over the steps (MDPO's
per-step log-probs on the actual inference trajectory, methods.md §7.6); it differs from
:meth:`MaskedDiffusionPlanner.log_prob_exact` (the left-to-right likelihood of the final sequence at temperature
1) and :meth:`MaskedDiffusionPlanner.log_prob_one_pass` (d1's mean-field estimate), which
:meth:`MaskedDiffusionPolicy.sequence_log_prob` offers as sequence-level alternatives for a GSPO ratio.

**The deployed decode as a group member** (``greedy_members > 0``, ours). The benchmarked planner decodes by
argmax, and the sampled paths at ``temperature`` only surround that decode, so an update that improves the samples
can move the argmax decode anywhere (a small change of the weights flips a revealed token and every token after
it). With ``greedy_members = g``, the first ``g`` rollouts of every scene take the argmax at every position (the
order and the quotas as for the samples): the path the planner would drive, scored with the others, with its exact
log-probability under the sampling procedure (the argmax draws are one outcome of it). Its advantage says whether
the deployed plan is better or worse than its sampled neighbours, and the objective raises or lowers exactly that
path. It is off-policy (not a draw of ``pi_old``), so the estimate is biased towards the deployed decode by
design. For the ``reverse_causal`` order the greedy member is :meth:`MaskedDiffusionPlanner.goal_candidates`'
chosen plan but for the first pose's ``x``, which the planner decodes after that pose's ``y`` rather than with it.

**Inpainted hints** (IGPO). A rollout may start from a partial sequence instead of the fully masked one
(``rollout(..., fixed=...)``, e.g. the expert's first waypoints from :func:`fragment_tokens`). The fixed tokens are
part of the state, never an action: their ``reveal_step`` is ``-1``, every step sees them, and the path log-prob
covers only the tokens the policy revealed, ``log pi(path | hint)``. :meth:`MaskedDiffusionPolicy.log_prob`
needs nothing more (a position counts at step ``s`` only when ``reveal_step == s``); the sequence-level
``exact`` / ``one_pass`` estimators score every token and do not know the hint.

Every forward pass of :meth:`~MaskedDiffusionPolicy.rollout` and :meth:`~MaskedDiffusionPolicy.log_prob` runs with
PyTorch's attention fast path off and with the same ``(B * N, L)`` batches, so that re-scoring a rollout at
unchanged weights gives the same bits (the fast path of inference-mode attention rounds differently).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from planners.masked_diffusion import ORDERS, MaskedDiffusionPlanner, headings_from_xy
from planners.policy import Rollout
from planners.tokenizer import TrajectoryTokenizer
from simulation.features import PlannerInput

SequenceEstimator = Literal["path", "exact", "one_pass"]


@contextmanager
def attention_fast_path_off() -> Iterator[None]:
    """Run the enclosed forward passes on the regular attention kernels (restores the previous setting)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def reveal_positions(score: torch.Tensor, masked: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """``(R, L)`` bool: the ``quota`` ``(R,)`` masked positions with the largest ``score`` ``(R, L)``.

    Ties of the score go to the lower position (a stable descending sort), so the choice is a deterministic
    function of the scores.
    """
    ranked = score.masked_fill(~masked, float("-inf")).sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(ranked)
    rank.scatter_(1, ranked, torch.arange(score.shape[1], device=score.device).expand_as(ranked))
    return masked & (rank < quota[:, None])


def discarded_draws_log_prob(
    logits: torch.Tensor, log_q: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, revealed: torch.Tensor
) -> torch.Tensor:
    """``(R,)`` ``sum_{j in M \\ R} log sum_v q_j(v) [key_j(v) < key*]`` of the ``confidence`` order.

    Args:
        logits: ``(R, L, V)`` the step's logits (their untempered softmax is the confidence; no gradient).
        log_q: ``(R, L, V)`` log of the sampling distribution (gradients flow through it).
        tokens: ``(R, L)`` ids; read at the revealed positions only.
        masked: ``(R, L)`` positions masked before the step; ``revealed`` ``(R, L)`` those revealed by it.

    A position whose every token would outrank the revealed ones (impossible under these weights) gives
    ``-inf`` without making the gradient NaN.
    """
    p = torch.softmax(logits.detach(), dim=-1)
    conf = p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    c_star = conf.masked_fill(~revealed, float("inf")).min(-1, keepdim=True).values  # (R, 1)
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    i_star = torch.where(revealed & (conf == c_star), pos, -1).max(-1, keepdim=True).values  # (R, 1)
    below = (p < c_star[..., None]) | ((p == c_star[..., None]) & (pos[None, :, None] > i_star[..., None]))
    others = masked & ~revealed
    valid = below & torch.isfinite(log_q) & others[..., None]
    any_valid = valid.any(-1)
    terms = torch.where(any_valid[..., None], log_q.masked_fill(~valid, float("-inf")), 0.0)
    log_mass = torch.where(any_valid, terms.logsumexp(-1), float("-inf"))
    return torch.where(others, log_mass, 0.0).sum(-1)


def fragment_tokens(
    tokenizer: TrajectoryTokenizer, trajectory: torch.Tensor, waypoints: int, end: Literal["first", "last"] = "first"
) -> torch.Tensor:
    """``(B, L)`` the tokens of ``waypoints`` poses of ``trajectory`` ``(B, 8, 2+)`` (metres), the mask elsewhere.

    ``end="first"`` keeps the first ``waypoints`` poses (near, the start of the plan), ``"last"`` the last ones
    (far, the goal); each pose is its ``x`` and ``y`` tokens. The hint of an inpainted rollout
    (:meth:`MaskedDiffusionPolicy.rollout` ``fixed``).
    """
    if end not in ("first", "last"):
        raise ValueError(f"fragment end must be 'first' or 'last', got {end!r}")
    num_poses = tokenizer.config.num_poses
    if not 0 <= waypoints <= num_poses:
        raise ValueError(f"a fragment of {waypoints} waypoints of a {num_poses}-pose plan")
    tokens = tokenizer.encode(trajectory)
    pose = torch.arange(tokenizer.seq_len, device=tokens.device) // 2
    keep = pose < waypoints if end == "first" else pose >= num_poses - waypoints
    return torch.where(keep, tokens, tokenizer.mask_id)


class MaskedDiffusionPolicy(nn.Module):
    """A :class:`MaskedDiffusionPlanner` as a :class:`planners.policy.PlanningPolicy` (see the module docstring).

    Args:
        planner: the masked diffusion planner (its parameters are the policy's).
        temperature: sampling temperature, ``> 0`` (a greedy decoder is no stochastic policy).
        top_k: sample among the ``top_k`` most likely ids of each position (0: all legal ids).
        order, num_steps, cfg_scale: decoding order, unmasking steps ``S`` and guidance scale; ``None`` takes
            the planner's configuration.
        greedy_members: the first that many rollouts of each scene decode by argmax (the deployed decode as a
            group member; see the module docstring). 0: every rollout is sampled.

    Rollout chains: ``tokens`` ``(B, N, L)`` the final ids and ``reveal_step`` ``(B, N, L)`` the step at which
    each position was revealed; the partial sequence before step ``s`` is ``tokens`` where ``reveal_step < s``
    and the mask elsewhere.
    """

    def __init__(
        self,
        planner: MaskedDiffusionPlanner,
        temperature: float = 1.0,
        top_k: int = 0,
        order: str | None = None,
        num_steps: int | None = None,
        cfg_scale: float | None = None,
        greedy_members: int = 0,
    ) -> None:
        super().__init__()
        c = planner.config
        self.planner = planner
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.order = c.order if order is None else order
        self.num_steps = c.num_steps if num_steps is None else int(num_steps)
        self.cfg_scale = c.cfg_scale if cfg_scale is None else float(cfg_scale)
        self.greedy_members = int(greedy_members)
        if self.temperature <= 0.0:
            raise ValueError(f"a sampling policy needs temperature > 0 (got {temperature})")
        if self.order not in ORDERS:
            raise ValueError(f"unknown decoding order {self.order!r}; choose one of {ORDERS}")
        if self.num_steps < 1 or self.top_k < 0:
            raise ValueError(f"num_steps must be >= 1 and top_k >= 0 (got {num_steps}, {top_k})")
        if self.greedy_members < 0:
            raise ValueError(f"greedy_members must be >= 0 (got {greedy_members})")

    # ------------------------------------------------------------------ the policy API
    def rollout(
        self,
        inputs: PlannerInput[torch.Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
        fixed: torch.Tensor | None = None,
        greedy: int | None = None,
    ) -> Rollout:
        """Sample ``num_samples`` decoding paths per scene; ``log_prob`` ``(B, N, S)`` of each step, detached.

        ``plans`` ``(B, N, 8, 3)`` are the decoded final tokens with the planner's headings; ``groups`` zeros.

        ``fixed``: ``(B, L)`` or ``(B, N, L)`` ids given before the first step (an inpainted hint, e.g.
        :func:`fragment_tokens`), the mask id where the policy decodes. Decoding starts from that partial sequence
        (the quotas split the tokens left over the ``S`` steps; a step with nothing left is not counted). A fixed
        position has ``reveal_step = -1``: it is in every step's input but is never an action, so it carries no
        log-prob; the rollout's log-prob is that of the path over the revealed tokens given the hint.

        ``greedy``: how many of each scene's rollouts (the first ones) decode by argmax; ``None`` takes
        ``greedy_members``. The sampled rollouts draw the same tokens whatever it is.
        """
        planner, tok = self.planner, self.planner.tokenizer
        b, n, steps = inputs.bev.shape[0], num_samples, self.num_steps
        g = self.greedy_members if greedy is None else int(greedy)
        if not 0 <= g <= n:
            raise ValueError(f"{g} greedy members in groups of {n} rollouts")
        with torch.no_grad(), attention_fast_path_off():
            memory, pad = self._context(inputs, n)
            tokens = torch.full((b * n, tok.seq_len), tok.mask_id, dtype=torch.long, device=memory.device)
            reveal_step = torch.full_like(tokens, steps)
            is_greedy = (torch.arange(b * n, device=memory.device) % n < g)[:, None]  # (B * N, 1)
            if fixed is not None:
                tokens = self._fixed_tokens(fixed, b, n).to(tokens.device)
                reveal_step = torch.where(tokens == tok.mask_id, steps, -1)
            log_probs, counted = [], []
            for step in range(steps):
                masked = tokens == tok.mask_id
                quota = torch.ceil(masked.sum(1).float() / (steps - step)).long()
                logits = planner._guided_logits(tokens, memory, pad, self.cfg_scale)
                token, conf = planner._pick(logits, self.temperature, self.top_k, generator)
                if g > 0:
                    top_conf, top_token = torch.softmax(logits, dim=-1).max(-1)
                    token = torch.where(is_greedy, top_token, token)
                    conf = torch.where(is_greedy, top_conf, conf)
                revealed = reveal_positions(planner._order_scores(self.order, conf), masked, quota)
                tokens = torch.where(revealed, token, tokens)
                reveal_step = torch.where(revealed, step, reveal_step)
                log_probs.append(self._step_log_prob(logits, tokens, masked, revealed))
                counted.append(quota > 0)
        step_mask = torch.stack(counted, -1)
        log_prob = torch.where(step_mask, torch.stack(log_probs, -1), 0.0)
        plans = headings_from_xy(tok.decode(tokens))
        return Rollout(
            plans=plans.reshape(b, n, *plans.shape[1:]),
            log_prob=log_prob.reshape(b, n, steps),
            step_mask=step_mask.reshape(b, n, steps),
            groups=torch.zeros(b, n, dtype=torch.long, device=tokens.device),
            chains={"tokens": tokens.reshape(b, n, -1), "reveal_step": reveal_step.reshape(b, n, -1)},
        )

    def log_prob(self, inputs: PlannerInput[torch.Tensor], rollout: Rollout) -> torch.Tensor:
        """``(B, N, S)`` per-step log-probs of ``rollout``'s decoding paths under the current weights, with
        gradients (one forward pass per step on its partial sequence; zeros where ``step_mask`` is ``False``)."""
        tokens, reveal_step = self._chains(rollout)
        b, n = rollout.plans.shape[:2]
        mask_id = self.planner.tokenizer.mask_id
        with attention_fast_path_off():
            memory, pad = self._context(inputs, n)
            out = []
            for step in range(self.num_steps):
                partial = torch.where(reveal_step < step, tokens, mask_id)
                logits = self.planner._guided_logits(partial, memory, pad, self.cfg_scale)
                out.append(self._step_log_prob(logits, tokens, reveal_step >= step, reveal_step == step))
        log_prob = torch.stack(out, -1).reshape(b, n, self.num_steps)
        return torch.where(rollout.step_mask, log_prob, 0.0)

    def sequence_log_prob(
        self, inputs: PlannerInput[torch.Tensor], rollout: Rollout, estimator: SequenceEstimator = "path"
    ) -> torch.Tensor:
        """``(B, N)`` sequence-level log-probability of the sampled plans, with gradients, for a GSPO ratio.

        ``path``: the exact log-prob of the decoding path taken (the sum of :meth:`log_prob`'s counted steps;
        the sampling procedure's own probability). ``exact``: the exact left-to-right likelihood of the final
        tokens at temperature 1 without top-k / guidance (:meth:`MaskedDiffusionPlanner.log_prob_exact`, ``L``
        conditionals). ``one_pass``: d1's biased mean-field estimate from the fully masked sequence
        (:meth:`MaskedDiffusionPlanner.log_prob_one_pass`). Keep one estimator for ``pi_old`` and ``pi_theta``.
        """
        if estimator == "path":
            return (self.log_prob(inputs, rollout) * rollout.step_mask).sum(-1)
        tokens, _ = self._chains(rollout)
        b, n = rollout.plans.shape[:2]
        repeated = inputs.apply(lambda v: v.repeat_interleave(n, 0))
        if estimator == "exact":
            return self.planner.log_prob_exact(repeated, tokens).reshape(b, n)
        if estimator == "one_pass":
            return self.planner.log_prob_one_pass(repeated, tokens).reshape(b, n)
        raise ValueError(f"unknown estimator {estimator!r}; choose path, exact or one_pass")

    # ------------------------------------------------------------------ helpers
    def _fixed_tokens(self, fixed: torch.Tensor, b: int, n: int) -> torch.Tensor:
        """``fixed`` ``(B, L)`` / ``(B, N, L)`` as ``(B * N, L)``; raises on ids illegal at their position."""
        tok = self.planner.tokenizer
        if fixed.dim() == 2:
            fixed = fixed[:, None].expand(-1, n, -1)
        if tuple(fixed.shape) != (b, n, tok.seq_len):
            raise ValueError(
                f"fixed tokens must be ({b}, {tok.seq_len}) or ({b}, {n}, {tok.seq_len}), got {tuple(fixed.shape)}"
            )
        flat = fixed.reshape(b * n, tok.seq_len).long()
        given = flat != tok.mask_id
        legal = self.planner.legal.to(flat.device)  # (L, V)
        ok = legal[torch.arange(tok.seq_len, device=flat.device).expand_as(flat), flat.clamp(0, tok.mask_id)]
        if bool((given & ~ok).any()):
            raise ValueError("fixed tokens outside their position's axis codebook")
        return flat

    def _context(self, inputs: PlannerInput[torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene memory ``(B * N, M, d)`` and padding ``(B * N, M)``, each scene repeated ``n`` times."""
        inputs.validate(self.planner.config.bev_channels)
        memory, pad = self.planner.encode(inputs)
        return memory.repeat_interleave(n, 0), pad.repeat_interleave(n, 0)

    def _chains(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` and ``reveal_step`` flattened to ``(B * N, L)``; raises when the rollout is not ours."""
        if "tokens" not in rollout.chains or "reveal_step" not in rollout.chains:
            raise ValueError("a masked-diffusion rollout needs chains 'tokens' and 'reveal_step'")
        if rollout.log_prob.shape[-1] != self.num_steps:
            raise ValueError(f"rollout has {rollout.log_prob.shape[-1]} steps, the policy decodes in {self.num_steps}")
        length = self.planner.tokenizer.seq_len
        return rollout.chains["tokens"].reshape(-1, length), rollout.chains["reveal_step"].reshape(-1, length)

    def _step_log_prob(
        self, logits: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, revealed: torch.Tensor
    ) -> torch.Tensor:
        """``(R,)`` log pi(R, a_R | x_s) of one step from its logits ``(R, L, V)`` (see the module docstring).

        ``tokens`` ``(R, L)`` holds the revealed ids at ``revealed``; ``masked`` are the positions masked before
        the step.
        """
        log_q = torch.log_softmax(self.planner.sampling_logits(logits, self.temperature, self.top_k), dim=-1)
        taken = log_q.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        log_prob = torch.where(revealed, taken, 0.0).sum(-1)
        if self.order != "confidence":  # positions fixed by the state: the discarded draws sum to 1
            return log_prob
        return log_prob + discarded_draws_log_prob(logits, log_q, tokens, masked, revealed)
