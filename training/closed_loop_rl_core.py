"""The pieces of closed-loop RL of a discriminator with TC-GRPO (RAD-2, methods §2.2), as functions on tensors.

One rollout batch (``E = B x G`` episodes: ``B`` start states, each branched into a group of ``G``)::

    state = branch(env, scenes, maps, G)                     # one reset, each episode repeated G times
    for step in range(horizon):
        if step % k == 0:                                    # a decision: propose, select, hold
            candidates = generator's K proposals             # frozen, no grad
            action ~ softmax(discriminator scores / T)       # categorical policy over the candidates
        plan = held_plan(selected, origin, ego, elapsed)     # the committed candidate, time-shifted
        state = env.step(state, plan)
    R = episode_returns(summary(state), weights)             # nuPlan's CLS (or a mix of its metrics)
    A = group_advantages(R, G)                               # normalised in each group, one per episode
    loss = tcgrpo_loss(log pi(action), old, ref, A, ...)      # clipped ratio + k3 KL, every decision gets A

Temporal consistency: the selected candidate is **committed** for ``k`` replanning steps. At the ``j``-th step after a
decision the executed plan is the same trajectory (fixed in the world at the decision) continued from ``j``
replanning intervals on, re-expressed in the current ego frame (:func:`held_plan`): the ego keeps executing the plan
it chose, as a planner that only replans every ``k`` steps does. Only the decisions are actions of the policy (one
log-probability per decision), so credit is assigned over ``horizon / k`` choices instead of ``horizon``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bev_warp.env import BEVWarpEnv, EnvState, expert_trajectories, repeat_state, summary
from rewards.torch.kinematics import normalize_angle
from simulation.features import PlannerInput
from simulation.types import LogWindow
from training.rl_objectives import Stats, clipped_loss, ddv2_advantages, failure_mask, group_normalize

#: Episode return when the config gives no weights: nuPlan's CLS of the episode.
DEFAULT_RETURN = {"score": 1.0}


# --------------------------------------------------------------------------------------------------
# branching: G rollouts from one start state
# --------------------------------------------------------------------------------------------------


def branch(env: BEVWarpEnv, scenes: Sequence[LogWindow], maps: Sequence[Any], group_size: int) -> EnvState:
    """Reset ``B`` scenes once and repeat each episode ``group_size`` times: ``B x G`` episodes, scene-major (the
    rollouts of scene ``i`` are ``i G .. i G + G - 1``)."""
    return repeat_state(env.reset(list(scenes), list(maps)), group_size)


# --------------------------------------------------------------------------------------------------
# commitment
# --------------------------------------------------------------------------------------------------


def commitment_schedule(horizon: int, commit_steps: int) -> torch.Tensor:
    """``(horizon,)`` long: replanning steps elapsed since the last decision at each step (0: a decision)."""
    if commit_steps < 1:
        raise ValueError(f"commit_steps must be at least 1, got {commit_steps}")
    return torch.arange(horizon) % commit_steps


def held_plan(
    plan: torch.Tensor, origin: torch.Tensor, ego: torch.Tensor, elapsed_s: float, interval_s: float = 0.5
) -> torch.Tensor:
    """A plan selected at ``origin``, continued ``elapsed_s`` later, in the current ego frame.

    Args:
        plan: ``(E, P, 3)`` local poses ``interval_s`` apart in the frame of ``origin``.
        origin: ``(E, 3)`` global poses (x, y, heading) where the plan was selected.
        ego: ``(E, 3)`` current global poses.
        elapsed_s: time since the selection.

    Returns:
        ``(E, P, 3)`` the plan's poses at ``elapsed_s + interval_s * (1 .. P)`` after the selection (linear in
        time along the plan, the origin its pose at 0; past its last pose, straight on at its last segment's speed),
        in the frame of ``ego``. At ``elapsed_s = 0`` from ``origin`` it is ``plan`` itself.
    """
    plan, origin, ego = plan.to(torch.float64), origin.to(torch.float64), ego.to(torch.float64)
    e, p, _ = plan.shape
    c, s = torch.cos(origin[:, None, 2]), torch.sin(origin[:, None, 2])
    gx = origin[:, None, 0] + c * plan[..., 0] - s * plan[..., 1]
    gy = origin[:, None, 1] + s * plan[..., 0] + c * plan[..., 1]
    heading = origin[:, None, 2] + plan[..., 2]
    poses = torch.cat([origin[:, None], torch.stack([gx, gy, heading], -1)], 1)  # (E, P + 1, 3)
    unwrapped = poses[..., 2:].clone()
    unwrapped[:, 1:, 0] = poses[:, :1, 2] + torch.cumsum(normalize_angle(poses[..., 2].diff(dim=1)), 1)
    poses = torch.cat([poses[..., :2], unwrapped], -1)
    t = elapsed_s / interval_s + torch.arange(1, p + 1, dtype=torch.float64, device=plan.device)  # in intervals
    lo = t.floor().long().clamp(max=p - 1)
    w = (t - lo)[None, :, None]
    out = poses[:, lo] * (1 - w) + poses[:, lo + 1] * w  # beyond the end: the last segment extended
    beyond = t > p
    out[:, beyond, 2] = poses[:, -1:, 2]  # heading held past the end
    d = out[..., :2] - ego[:, None, :2]
    ce, se = torch.cos(ego[:, None, 2]), torch.sin(ego[:, None, 2])
    x, y = ce * d[..., 0] + se * d[..., 1], -se * d[..., 0] + ce * d[..., 1]
    return torch.stack([x, y, normalize_angle(out[..., 2] - ego[:, None, 2])], -1)


# --------------------------------------------------------------------------------------------------
# returns, advantages, loss
# --------------------------------------------------------------------------------------------------


def episode_returns(metrics: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """``(E,)`` float64 ``sum_k w_k metric_k`` of each episode (boolean metrics count 0 / 1; default: the CLS)."""
    weights = DEFAULT_RETURN if weights is None else weights
    missing = [k for k in weights if k not in metrics]
    if missing:
        raise ValueError(f"return weights name unknown metrics {missing}; known: {sorted(metrics)}")
    first = next(iter(metrics.values()))
    out = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
    for name, w in weights.items():
        out = out + float(w) * metrics[name].to(torch.float64)
    return out


def group_advantages(returns: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """``(E,)`` returns of scene-major groups of ``group_size`` -> ``(R - mean_G R) / (std_G R + eps)`` per episode
    (unbiased std; zero for a group whose returns are all equal)."""
    if returns.numel() % group_size:
        raise ValueError(f"{returns.numel()} episodes are not groups of {group_size}")
    return group_normalize(returns.reshape(-1, group_size), None, eps).reshape(-1)


#: Episode metrics whose value below 1 makes an episode a failure (``advantage: ddv2``).
FAILURE_METRICS = ("no_ego_at_fault_collisions", "drivable_area_compliance")


def episode_failures(metrics: Mapping[str, torch.Tensor], names: Sequence[str] = FAILURE_METRICS) -> torch.Tensor:
    """``(E,)`` bool: episodes where one of the ``names`` metrics is below 1 (an at-fault collision, leaving the
    drivable area): :func:`training.rl_objectives.failure_mask`, except that a name the episodes do not have is an
    error (a misspelt config entry would otherwise never fail an episode)."""
    missing = [k for k in names if k not in metrics]
    if missing:
        raise ValueError(f"failure metrics {missing} are not episode metrics; known: {sorted(metrics)}")
    return failure_mask(metrics, names)


def ddv2_group_advantages(
    returns: torch.Tensor, failure: torch.Tensor, group_size: int, eps: float = 1e-4
) -> torch.Tensor:
    """DiffusionDriveV2's rule on episodes (:func:`training.rl_objectives.ddv2_advantages`, the group of ``G``
    rollouts of one start state as the group): ``max(A, 0)`` of :func:`group_advantages`, and -1 for a failed episode
    (``failure``, :func:`episode_failures`). A safe episode below its group's mean gets 0 rather than a negative
    advantage."""
    if returns.numel() % group_size:
        raise ValueError(f"{returns.numel()} episodes are not groups of {group_size}")
    r, f = returns.reshape(-1, group_size), failure.reshape(-1, group_size)
    return ddv2_advantages(r, f, torch.zeros_like(r, dtype=torch.long), eps).reshape(-1)


def tcgrpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    group_size: int,
    clip_eps: float = 0.2,
    ref_log_prob: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, Stats]:
    """TC-GRPO: the clipped-ratio objective over an episode's decisions, each with the episode's advantage, plus
    ``kl_coef`` times the k3 KL to the reference (:func:`training.rl_objectives.clipped_loss`: averaged over an
    episode's valid decisions, then over the episodes that have any).

    Args:
        log_prob: ``(E, D)`` log-probabilities of the selected candidates under the current weights (with grads).
        old_log_prob: ``(E, D)`` the same when they were selected.
        advantages: ``(E,)``, one per episode.
        valid: ``(E, D)`` bool, the decisions taken while the episode ran.
        ref_log_prob: ``(E, D)`` under the reference discriminator, or ``None``.
    """
    e, d = log_prob.shape

    def grouped(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(e // group_size, group_size, *x.shape[1:])

    ref = None if ref_log_prob is None else grouped(ref_log_prob)
    return clipped_loss(
        grouped(log_prob), grouped(old_log_prob), grouped(advantages), grouped(valid), clip_eps, ref, kl_coef
    )


# --------------------------------------------------------------------------------------------------
# the rollout
# --------------------------------------------------------------------------------------------------


@dataclass
class Decision:
    """One selection of every episode (``E``).

    Attributes:
        features: the planner inputs at the decision (batch ``E``).
        candidates: ``(E, K, 8, 3)`` the generator's proposals; ``mask`` ``(E, K)`` the pickable ones.
        action: ``(E,)`` long, the selected candidate; ``log_prob`` ``(E,)`` its log-probability then;
            ``best`` ``(E,)`` long, the highest-scored candidate.
        active: ``(E,)`` bool, the episode was running.
        step: the replanning step; ``frame`` ``(E,)`` long, the log frame then.
        expert: ``(E, 8, 3)`` the logged future in the ego frame then (what progress is measured against).
    """

    features: PlannerInput[torch.Tensor]
    candidates: torch.Tensor
    mask: torch.Tensor
    action: torch.Tensor
    log_prob: torch.Tensor
    best: torch.Tensor
    active: torch.Tensor
    step: int
    frame: torch.Tensor
    expert: torch.Tensor


@dataclass
class ClosedLoopRollout:
    """Rollouts of ``E`` episodes: the decisions, the final state, the episodes' metrics (:func:`bev_warp.env.summary`)
    and per replanning step ``(E, H)`` whether a collision or a TTC violation happened (``conflict``); ``frames``
    ``(E, H + 1)`` the log frame before the first step and after each."""

    decisions: list[Decision]
    state: EnvState
    metrics: dict[str, torch.Tensor]
    conflict: torch.Tensor
    frames: torch.Tensor
    steps: int

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E, D)`` old log-probs and validity of the decisions."""
        old = torch.stack([d.log_prob for d in self.decisions], 1)
        valid = torch.stack([d.active for d in self.decisions], 1)
        return old, valid


Propose = Callable[[PlannerInput[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
Select = Callable[
    [PlannerInput[torch.Tensor], torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]


def closed_loop_rollout(
    env: BEVWarpEnv,
    state: EnvState,
    features: Callable[[EnvState], PlannerInput[torch.Tensor]],
    propose: Propose,
    select: Select,
    horizon: int,
    commit_steps: int,
) -> ClosedLoopRollout:
    """Run ``horizon`` replanning steps (fewer when every episode ends): a decision every ``commit_steps`` steps
    (``propose(features) -> (candidates (E,K,8,3), mask (E,K))``, ``select(features, candidates, mask) -> (action
    (E,), log_prob (E,), best (E,))``), the selection held in between (:func:`held_plan`)."""
    cfg = env.config
    decisions: list[Decision] = []
    conflicts: list[torch.Tensor] = []
    frames = [state.frame.clone()]
    rows = torch.arange(state.episodes.batch_size, device=state.ego.device)
    held = origin = torch.empty(0)
    for elapsed in commitment_schedule(horizon, commit_steps).tolist():
        if bool(state.done.all()):
            break
        if elapsed == 0:
            inputs = features(state)
            candidates, mask = propose(inputs)
            action, log_prob, best = select(inputs, candidates, mask)
            decisions.append(
                Decision(inputs, candidates, mask, action, log_prob, best, ~state.done, state.step_index,
                         state.frame.clone(), expert_trajectories(state))
            )  # fmt: skip
            held, origin = candidates[rows, action], state.ego[:, :3].clone()
        plan = held_plan(held, origin, state.ego[:, :3], elapsed * cfg.replan_interval_s, cfg.plan_interval_s)
        state, _, _, info = env.step(state, plan)
        conflicts.append((info["rewards"]["collision"] < 0) | (info["rewards"]["ttc"] < 0))
        frames.append(state.frame.clone())
    metrics = summary(state)
    conflict = torch.stack(conflicts, 1) if conflicts else torch.zeros(len(rows), 0, dtype=torch.bool)
    return ClosedLoopRollout(decisions, state, metrics, conflict, torch.stack(frames, 1), len(conflicts))


def cat_inputs(inputs: Sequence[PlannerInput[torch.Tensor]]) -> PlannerInput[torch.Tensor]:
    """Planner inputs concatenated along the batch."""
    dicts = [x.as_dict() for x in inputs]
    return PlannerInput.from_dict({k: torch.cat([d[k] for d in dicts]) for k in dicts[0]})
