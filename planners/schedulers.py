"""Truncated DDIM scheduler with per-step log-probabilities (diffusers-style API).

The noise schedule is the 1000-step "scaled linear" one (betas from ``sqrt(1e-4)`` to ``sqrt(0.02)``,
squared). Training noises clean trajectories to small timesteps only (``t < 50``); inference starts
from anchors noised to a small timestep (``t = 8``) and runs a handful of DDIM steps. With ``eta > 0``
each step is a Gaussian policy whose log-probability is returned, as reinforcement learning over the
denoising chain needs (DDPO / DiffusionDriveV2).

Equation numbers refer to the DDIM paper (Song et al., 2021): the update is eq. (12),
``x_{t-1} = sqrt(a_{t-1}) x0_hat + sqrt(1 - a_{t-1} - sigma_t^2) eps_hat + sigma_t z``, with
``sigma_t`` from eq. (16) scaled by ``eta``.

The math lives in free functions (``ddim_step``, ``gaussian_log_prob``) that TorchScript compiles,
so an exported planner unrolls the same fixed-step loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

PredictionType = Literal["sample", "epsilon"]


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """``(num_train_timesteps,)`` float64 cumulative products of ``1 - beta`` for the scaled-linear schedule."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_sigma(alpha_t: torch.Tensor, alpha_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """Eq. (16) times ``eta``: ``eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)``."""
    return eta * torch.sqrt((1.0 - alpha_prev) / (1.0 - alpha_t)) * torch.sqrt(1.0 - alpha_t / alpha_prev)


def ddim_step(
    x0_hat: torch.Tensor,
    sample: torch.Tensor,
    alpha_t: torch.Tensor,
    alpha_prev: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update (eq. 12) from a predicted clean sample.

    Args:
        x0_hat: ``(..., D)`` predicted clean sample.
        sample: ``(..., D)`` current noisy sample ``x_t``.
        alpha_t, alpha_prev: scalars, cumulative alphas at ``t`` and at the previous timestep.
        sigma: scalar step standard deviation.
        noise: ``(..., D)`` standard normal noise (ignored when ``sigma == 0``).

    Returns:
        ``(prev_sample, mean)``, both ``(..., D)``.
    """
    eps_hat = (sample - torch.sqrt(alpha_t) * x0_hat) / torch.sqrt(1.0 - alpha_t)
    direction = torch.sqrt(torch.clamp(1.0 - alpha_prev - sigma**2, min=0.0)) * eps_hat
    mean = torch.sqrt(alpha_prev) * x0_hat + direction
    return mean + sigma * noise, mean


def ddim_mean_coefficients(alpha_t: float, alpha_prev: float, sigma: float) -> tuple[float, float]:
    """Eq. (12)'s mean ``sqrt(a_prev) x0_hat + d eps_hat`` as ``c_x0 * x0_hat + c_xt * x_t``, in float64.

    With ``eps_hat = (x_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t)`` (eq. 9 solved for the noise) and
    ``d = sqrt(1 - a_prev - sigma^2)``: ``c_x0 = sqrt(a_prev) - d sqrt(a_t) / sqrt(1 - a_t)``,
    ``c_xt = d / sqrt(1 - a_t)``. Near the clean end ``1 - a`` is ~1e-4, where float32 loses most digits of
    ``1 - a_prev - sigma^2``; folding the schedule into two float64 numbers keeps the policy's mean exact.
    """
    direction = math.sqrt(max(1.0 - alpha_prev - sigma**2, 0.0))
    noise_scale = math.sqrt(1.0 - alpha_t)
    return math.sqrt(alpha_prev) - direction * math.sqrt(alpha_t) / noise_scale, direction / noise_scale


def exploration_std(sigma: torch.Tensor, eta: float, floor: float) -> torch.Tensor:
    """Standard deviation of the noise a policy step draws: ``max(floor, sigma)`` for ``eta > 0``, else ``0``.

    ``sigma`` is eq. (16) already scaled by ``eta`` (:func:`ddim_sigma`). The floor keeps exploring where the
    schedule's own ``sigma`` vanishes (the last step, whose ``a_prev = 1``); ``eta = 0`` is plain DDIM, a Dirac.
    """
    if eta <= 0.0:
        return torch.zeros_like(sigma)
    return torch.clamp(sigma, min=floor)


def multiplicative_sample(
    mean: torch.Tensor, origin: torch.Tensor, std: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Scale-adaptive noise (DiffusionDriveV2): ``origin + (mean - origin) * (1 + std * noise)``.

    Args:
        mean: ``(..., P, 2)`` step mean (eq. 12 without its noise term).
        origin: ``(2,)`` the point the waypoints are scaled about (the ego position in the same frame).
        std: scalar standard deviation of the relative scale.
        noise: ``(..., 1, 2)`` standard normal, one (longitudinal, lateral) pair per trajectory, broadcast over
            its ``P`` waypoints: far waypoints move more than near ones.
    """
    return origin + (mean - origin) * (1.0 + std * noise)


def gaussian_log_prob(value: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, event_dims: int = 2) -> torch.Tensor:
    """Log-density of an isotropic Gaussian, summed over the last ``event_dims`` dimensions."""
    var = std**2
    log_p = -((value - mean) ** 2) / (2.0 * var) - torch.log(std) - 0.5 * math.log(2.0 * math.pi)
    return log_p.flatten(start_dim=log_p.dim() - event_dims).sum(-1)


@dataclass
class SchedulerOutput:
    """Result of :meth:`TruncatedDDIMScheduler.step`.

    Attributes:
        prev_sample: ``(..., D)`` the sample at the previous (less noisy) timestep.
        pred_original_sample: ``(..., D)`` the (clipped) predicted clean sample.
        mean: ``(..., D)`` mean of the step's Gaussian.
        std: scalar standard deviation of the step (0 for deterministic DDIM).
        log_prob: ``(...)`` log-probability of ``prev_sample`` (summed over the event dims), or ``None`` when
            the step is deterministic.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor | None


class TruncatedDDIMScheduler:
    """DDIM over a truncated chain: ``set_timesteps`` / ``add_noise`` / ``step`` as in diffusers.

    Args:
        num_train_timesteps: length of the full schedule (1000).
        beta_start, beta_end: scaled-linear schedule ends.
        prediction_type: what the network predicts: the clean sample (``"sample"``) or the noise.
        clip_sample: clip the predicted clean sample to ``[-clip_range, clip_range]``.
        event_dims: trailing dimensions that form one sample (``(8, 2)`` waypoints -> 2).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: PredictionType = "sample",
        clip_sample: bool = True,
        clip_range: float = 1.0,
        event_dims: int = 2,
    ) -> None:
        if prediction_type not in ("sample", "epsilon"):
            raise ValueError(f"unknown prediction_type {prediction_type!r}; use 'sample' or 'epsilon'")
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.clip_range = clip_range
        self.event_dims = event_dims
        self.alphas_cumprod = scaled_linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
        self.timesteps: list[int] = []

    def alpha(self, timestep: int) -> torch.Tensor:
        """Cumulative alpha at ``timestep``; ``1`` for ``timestep < 0`` (the clean end of the chain)."""
        if timestep < 0:
            return torch.ones((), dtype=torch.float64)
        return self.alphas_cumprod[timestep]

    def set_timesteps(self, num_inference_steps: int, start_timestep: int | None = None) -> list[int]:
        """Evenly spaced decreasing timesteps from ``start_timestep`` (default: the last one) to 0.

        ``set_timesteps(2, start_timestep=8)`` gives ``[8, 0]``: two steps 8 -> 0 -> clean.
        """
        start = self.num_train_timesteps - 1 if start_timestep is None else start_timestep
        if num_inference_steps < 1 or not 0 <= start < self.num_train_timesteps:
            raise ValueError(f"invalid truncated schedule: {num_inference_steps} steps from t={start}")
        if num_inference_steps == 1:
            steps = [start]
        else:
            steps = [round(start - i * start / (num_inference_steps - 1)) for i in range(num_inference_steps)]
        self.timesteps = steps
        return steps

    def previous_timestep(self, timestep: int) -> int:
        """The timestep after ``timestep`` in :attr:`timesteps` (``-1`` after the last)."""
        i = self.timesteps.index(timestep)
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process: ``sqrt(a_t) x0 + sqrt(1 - a_t) noise``; ``timesteps`` is ``(B,)`` or a scalar."""
        a = self.alphas_cumprod.to(original.device)[timesteps].to(original.dtype)
        while a.dim() < original.dim():
            a = a.unsqueeze(-1)
        return torch.sqrt(a) * original + torch.sqrt(1.0 - a) * noise

    def _x0(self, model_output: torch.Tensor, sample: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "sample":
            x0 = model_output
        else:
            x0 = (sample - torch.sqrt(1.0 - alpha_t) * model_output) / torch.sqrt(alpha_t)
        return x0.clamp(-self.clip_range, self.clip_range) if self.clip_sample else x0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        prev_sample: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        """One reverse step from ``timestep`` to the next timestep of :attr:`timesteps`.

        Args:
            model_output: network output (clean sample or noise, see ``prediction_type``), shape of ``sample``.
            timestep: current timestep (must be in :attr:`timesteps`).
            sample: ``(..., D)`` current noisy sample.
            eta: stochasticity; ``eta > 0`` makes the step a Gaussian policy with a log-probability.
            noise: explicit standard normal noise (for export parity and replay); drawn when ``None``.
            prev_sample: when given, it is not sampled but scored: the log-probability of this value is returned
                (re-evaluating old actions under new parameters, as policy-gradient updates need).
        """
        dtype = sample.dtype
        alpha_t = self.alpha(timestep).to(sample.device, dtype)
        alpha_prev = self.alpha(self.previous_timestep(timestep)).to(sample.device, dtype)
        sigma = ddim_sigma(alpha_t, alpha_prev, eta)
        x0 = self._x0(model_output, sample, alpha_t)
        if noise is None:
            noise = torch.randn(sample.shape, generator=generator, dtype=dtype, device=sample.device)
        drawn, mean = ddim_step(x0, sample, alpha_t, alpha_prev, sigma, noise)
        value = drawn if prev_sample is None else prev_sample
        log_prob = gaussian_log_prob(value, mean, sigma, self.event_dims) if eta > 0 else None
        return SchedulerOutput(value, x0, mean, sigma, log_prob)
