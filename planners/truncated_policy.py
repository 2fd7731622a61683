"""The truncated diffusion planner as an RL policy: stochastic denoising chains with per-step log-probabilities.

The planner's own sampler is deterministic (``eta = 0``) and its output is a decoder regression. Here every
denoising step is a Gaussian policy ``pi(x_prev | x_t, scene, anchor)`` (the DDPO view, methods.md §7.1): the
decoder predicts the clean sample ``x0_hat`` at ``x_t``, DDIM eq. (12) gives the step mean, noise is drawn around
it, and the **executed plan is the final sample** of the chain.

Samples: ``num_samples`` must be a multiple of the number of anchors ``K``; ``G = num_samples // K`` chains start
from every anchor (DiffusionDriveV2's ``G`` samples per anchor). Samples are anchor-major: sample ``n`` starts
from anchor ``n // G`` and ``Rollout.groups[:, n] = n // G``. The vanilla planner (no anchors) has one group.

Two schedules (:class:`RolloutConfig`):

- ``"planner"`` (ours): the planner's own steps (``[8, 0]`` for the shipped config), each step landing on the next
  timestep's alpha (the last on alpha = 1), additive DDIM noise ``mean + sigma_t z`` with ``sigma_t`` eq. (16)
  times ``eta``. The last step has ``sigma = 0`` and is deterministic.
- ``"ddv2"`` (DiffusionDriveV2, methods.md §1b.1): 10 steps at the decoder time labels ``[18, 16, ..., 0]``, each
  landing on ``alpha(t - 1)`` (a 1000-step inference grid), anchors noised to the planner's inference start
  timestep as DiffusionDriveV2 does (``t = 8``), ``eta = 1``, multiplicative noise ``mean * (1 + n)`` with
  ``n = (n_long, n_lat)`` drawn once per trajectory and step, std ``max(0.04, eta * sigma_t)``. The scaling is about
  the ego position (the origin of DiffusionDriveV2's ``x / 50, y / 20`` frame); in our normalised frame the ego is
  not at zero, so the sample is ``origin + (mean - origin) * (1 + n)``.

Log-probability of a step (both schedules): the Gaussian density of the stored ``x_prev`` around the recomputed mean
with std ``max(log_prob_std_floor, eta * sigma_t)``, summed over the ``(8, 2)`` normalised coordinates. For the
multiplicative noise it is DiffusionDriveV2's surrogate, not the exact density. A step whose exploration std is 0
(``eta = 0``, or ``sigma_t = 0`` with no noise floor) is deterministic: ``step_mask`` False, log-prob 0.

The executed plan: ``x, y`` = the final sample, de-normalised (not clamped); the heading = the decoder's regressed
heading of the last step's prediction for that chain (the planner's output builds its headings the same way).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from planners.policy import Rollout
from planners.schedulers import (
    ddim_mean_coefficients,
    ddim_sigma,
    exploration_std,
    gaussian_log_prob,
    multiplicative_sample,
)
from simulation.features import PlannerInput

if TYPE_CHECKING:
    from planners.truncated_diffusion import TruncatedDiffusionPlanner

Context = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RolloutConfig:
    """How :meth:`TruncatedDiffusionPlanner.rollout` samples (the default is ours; :meth:`ddv2` the reference).

    Attributes:
        schedule: ``"planner"``: the planner's own inference steps; ``"ddv2"``: DiffusionDriveV2's labels
            ``round(i * ddv2_span / ddv2_steps)`` for ``i`` descending, each step landing on ``t - 1``.
        eta: DDIM stochasticity (eq. 16); 0 makes every step deterministic.
        noise: ``"additive"`` ``mean + std z`` (``z`` per coordinate) or ``"multiplicative"`` (see module doc).
        noise_floor: lower bound on the exploration std where ``eta > 0``.
        log_prob_std_floor: lower bound on the std of the log-probability's Gaussian (about the ``8 -> 0`` step's
            ``sigma`` = 0.0095 by default, so our density is near the true one; DiffusionDriveV2 uses 0.1).
        ddv2_steps, ddv2_span: the ``"ddv2"`` schedule's step count and label span.
    """

    schedule: Literal["planner", "ddv2"] = "planner"
    eta: float = 1.0
    noise: Literal["additive", "multiplicative"] = "additive"
    noise_floor: float = 0.0
    log_prob_std_floor: float = 0.01
    ddv2_steps: int = 10
    ddv2_span: int = 20

    def __post_init__(self) -> None:
        if self.schedule not in ("planner", "ddv2"):
            raise ValueError(f"unknown rollout schedule {self.schedule!r}; use 'planner' or 'ddv2'")
        if self.noise not in ("additive", "multiplicative"):
            raise ValueError(f"unknown rollout noise {self.noise!r}; use 'additive' or 'multiplicative'")
        if self.eta < 0 or self.noise_floor < 0 or self.log_prob_std_floor < 0 or self.ddv2_steps < 1:
            raise ValueError(f"invalid rollout config {self}")

    @classmethod
    def ddv2(cls) -> RolloutConfig:
        """DiffusionDriveV2's RL rollout (methods.md §1b.1)."""
        return cls(schedule="ddv2", eta=1.0, noise="multiplicative", noise_floor=0.04, log_prob_std_floor=0.1)

    def to_dict(self) -> dict:
        return asdict(self)


class PolicyStep(NamedTuple):
    """One denoising step of a rollout schedule (alphas are cumulative; ``prev_timestep = -1`` is alpha 1)."""

    timestep: int
    prev_timestep: int
    alpha_t: float
    alpha_prev: float
    sigma: float  # eq. (16) times eta: enters the mean's direction term
    mean_coef: tuple[float, float]  # the mean is mean_coef[0] * x0_hat + mean_coef[1] * x_t
    noise_std: float  # exploration std; 0 = a deterministic step
    log_prob_std: float


def policy_steps(planner: TruncatedDiffusionPlanner, config: RolloutConfig) -> list[PolicyStep]:
    """The rollout schedule of ``planner`` under ``config``."""
    if config.schedule == "planner":
        timesteps = list(planner.inference_timesteps)
        prev = timesteps[1:] + [-1]
    else:
        if not planner.config.truncated:
            raise ValueError("the 'ddv2' rollout schedule needs the truncated (anchored) planner")
        # Python's round is half-to-even like numpy's, so the labels are DiffusionDriveV2's
        timesteps = [round(i * config.ddv2_span / config.ddv2_steps) for i in range(config.ddv2_steps)][::-1]
        prev = [t - 1 for t in timesteps]
    steps = []
    for t, t_prev in zip(timesteps, prev):
        alphas = planner.scheduler.alpha(t), planner.scheduler.alpha(t_prev)  # float64
        sigma = ddim_sigma(*alphas, config.eta)
        noise_std = float(exploration_std(sigma, config.eta, config.noise_floor))
        lp_std = float(torch.clamp(sigma, min=config.log_prob_std_floor))
        a_t, a_prev = float(alphas[0]), float(alphas[1])
        coef = ddim_mean_coefficients(a_t, a_prev, float(sigma))
        steps.append(PolicyStep(t, t_prev, a_t, a_prev, float(sigma), coef, noise_std, lp_std))
    return steps


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where).to(device)


def _encode(planner: TruncatedDiffusionPlanner, inputs: PlannerInput[torch.Tensor]) -> Context:
    """The scene encoded once; without a graph when the encoder is frozen (no parameter requires grad)."""
    encoders = (planner.bev_encoder, planner.agent_encoder, planner.ego_encoder)
    if any(p.requires_grad for m in encoders for p in m.parameters()):
        return planner.encode(inputs)
    with torch.no_grad():
        return planner.encode(inputs)


def freeze_encoder(planner: TruncatedDiffusionPlanner) -> None:
    """Freeze the scene encoders (BEV, agents, ego): no gradients, eval mode (BatchNorm statistics fixed).

    A later ``planner.train()`` puts them back in train mode; call this again after it.
    """
    for module in (planner.bev_encoder, planner.agent_encoder, planner.ego_encoder):
        module.eval()
        module.requires_grad_(False)


def _step_mean(
    planner: TruncatedDiffusionPlanner,
    x_t: torch.Tensor,
    chains: dict[str, torch.Tensor],
    s: int,
    context: Context,
    anchors: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(B,N,8,2)`` of step ``s`` at ``x_t`` and the decoder's poses ``(B,N,8,3)`` metres.

    The step's constants are read from ``chains`` (``timesteps`` ``(B,N,S)``, ``mean_coef`` ``(B,N,S,2)``), so
    sampling and re-scoring run the same arithmetic.
    """
    poses, _ = planner.decode(x_t, chains["timesteps"][:, 0, s], context, anchors)[-1]
    x0_hat = planner.normalize(poses[..., :2]).clamp(-1.0, 1.0)
    coef = chains["mean_coef"][:, :, s, None, None]  # (B, N, 1, 1, 2)
    # eq. (12) without its noise term: sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat
    return coef[..., 0] * x0_hat + coef[..., 1] * x_t, poses


def _step_log_prob(value: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,N)`` Gaussian log-density of ``value`` ``(B,N,8,2)`` summed over ``(8, 2)``; 0 where ``mask`` is False.

    The std of a masked step is replaced by 1 before the density, so neither the value nor its gradient is NaN.
    """
    safe = torch.where(mask, std, torch.ones_like(std))
    log_p = gaussian_log_prob(value, mean, safe[..., None, None], event_dims=2)
    return torch.where(mask, log_p, torch.zeros_like(log_p))


def _step_chains(steps: list[PolicyStep], b: int, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The schedule's per-step constants broadcast to ``(B, N, S)`` (``mean_coef`` ``(B, N, S, 2)``)."""

    def grid(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device).expand(b, n, -1).contiguous()

    return {
        "timesteps": grid([float(st.timestep) for st in steps], torch.long),
        "mean_coef": torch.stack([grid([st.mean_coef[i] for st in steps]) for i in (0, 1)], -1),
        "noise_std": grid([st.noise_std for st in steps]),
        "log_prob_std": grid([st.log_prob_std for st in steps]),
    }


def _start(
    planner: TruncatedDiffusionPlanner, b: int, n: int, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Initial samples ``(B,N,8,2)``, groups ``(B,N)`` and each sample's anchor ``(B,N,8,2)`` metres (or None)."""
    noise = _randn((b, n, *planner.anchors.shape[1:]), generator, device)
    if not planner.config.truncated:
        return noise, torch.zeros(b, n, dtype=torch.long, device=device), None
    k = planner.config.num_anchors
    if n % k:
        raise ValueError(f"num_samples must be a multiple of the {k} anchors (samples per anchor), got {n}")
    groups = (torch.arange(n, device=device) // (n // k)).expand(b, n).contiguous()
    anchors = planner.anchors[groups]
    a0 = planner.alpha_pairs[0][0]  # the planner's inference start timestep (DiffusionDriveV2's t = 8 too)
    return a0**0.5 * planner.normalize(anchors) + (1.0 - a0) ** 0.5 * noise, groups, anchors


def sample_rollout(
    planner: TruncatedDiffusionPlanner,
    inputs: PlannerInput[torch.Tensor],
    num_samples: int,
    config: RolloutConfig,
    generator: torch.Generator | None = None,
) -> Rollout:
    """``num_samples`` stochastic chains per scene (no gradients); see the module doc for the schedules.

    Returns a :class:`Rollout` whose chains hold ``x_t`` and ``x_prev`` ``(B,N,S,8,2)`` (normalised), the
    decoder's ``timesteps`` ``(B,N,S)``, ``mean_coef`` ``(B,N,S,2)`` (the step mean is
    ``mean_coef[0] * x0_hat + mean_coef[1] * x_t``), ``noise_std`` and ``log_prob_std`` ``(B,N,S)``.
    """
    inputs.validate(planner.config.bev_channels)
    with torch.no_grad():
        b, device = inputs.ego_status.shape[0], inputs.ego_status.device
        steps = policy_steps(planner, config)
        x, groups, anchors = _start(planner, b, num_samples, generator, device)
        chains = _step_chains(steps, b, num_samples, device)
        mask = chains["noise_std"] > 0
        context = planner.encode(inputs)
        origin = planner.normalize(x.new_zeros(2))
        xs_t, xs_prev, log_probs = [], [], []
        poses = x.new_zeros(())
        for s, step in enumerate(steps):
            mean, poses = _step_mean(planner, x, chains, s, context, anchors)
            std = chains["noise_std"][:, :, s, None, None]
            if step.noise_std <= 0.0:
                x_prev = mean
            elif config.noise == "multiplicative":
                x_prev = multiplicative_sample(mean, origin, std, _randn((b, num_samples, 1, 2), generator, device))
            else:
                x_prev = mean + std * _randn(tuple(mean.shape), generator, device)
            log_probs.append(_step_log_prob(x_prev, mean, chains["log_prob_std"][:, :, s], mask[:, :, s]))
            xs_t.append(x)
            xs_prev.append(x_prev)
            x = x_prev
        chains["x_t"] = torch.stack(xs_t, 2)
        chains["x_prev"] = torch.stack(xs_prev, 2)
        plans = torch.cat([planner.denormalize(x), poses[..., 2:]], dim=-1)
        return Rollout(plans, torch.stack(log_probs, -1), mask, groups, chains)


def score_rollout(
    planner: TruncatedDiffusionPlanner, inputs: PlannerInput[torch.Tensor], rollout: Rollout
) -> torch.Tensor:
    """``(B,N,S)`` log-probs of ``rollout``'s steps under the current weights, with gradients.

    The scene is encoded once; each step decodes all ``N`` stored ``x_t`` of a scene in one call, recomputes the
    mean and scores the stored ``x_prev`` with the stored std. At the sampling weights it is ``rollout.log_prob``.
    """
    inputs.validate(planner.config.bev_channels)
    chains = rollout.chains
    context = _encode(planner, inputs)
    anchors = planner.anchors[rollout.groups] if planner.config.truncated else None
    log_probs = []
    for s in range(rollout.log_prob.shape[-1]):
        mean, _ = _step_mean(planner, chains["x_t"][:, :, s], chains, s, context, anchors)
        mask = rollout.step_mask[:, :, s]
        log_probs.append(_step_log_prob(chains["x_prev"][:, :, s], mean, chains["log_prob_std"][:, :, s], mask))
    return torch.stack(log_probs, -1)


def exploration_spread(plans: torch.Tensor | np.ndarray, groups: torch.Tensor | np.ndarray) -> float:
    """Mean spread of the 4 s poses within groups, in metres.

    For every (scene, group) with at least two samples: the mean over its samples of the Euclidean distance of
    the sample's 4 s position (pose index 7, ``x, y``) to the group's mean 4 s position; the result is the mean
    of that over all such (scene, group) pairs (0.0 when there is none).

    Args:
        plans: ``(B, N, 8, 3)`` plans.
        groups: ``(B, N)`` integer group ids (e.g. :attr:`Rollout.groups`).
    """
    xy = torch.as_tensor(plans)[..., 7, :2].double()
    ids = torch.as_tensor(groups).long()
    onehot = F.one_hot(ids, int(ids.max()) + 1).double()  # (B, N, M)
    counts = onehot.sum(1)  # (B, M)
    means = torch.einsum("bnm,bnc->bmc", onehot, xy) / counts.clamp(min=1.0)[..., None]
    dist = (xy - torch.einsum("bnm,bmc->bnc", onehot, means)).norm(dim=-1)  # (B, N)
    per_group = torch.einsum("bnm,bn->bm", onehot, dist) / counts.clamp(min=1.0)
    valid = counts >= 2
    return float(per_group[valid].mean()) if bool(valid.any()) else 0.0
