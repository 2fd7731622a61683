"""Truncated DDIM scheduler: schedule values, one step and its log-probability by hand."""

from __future__ import annotations

import math

import pytest
import torch

from planners.schedulers import (
    TruncatedDDIMScheduler,
    ddim_mean_coefficients,
    ddim_sigma,
    ddim_step,
    exploration_std,
    gaussian_log_prob,
    multiplicative_sample,
    scaled_linear_alphas_cumprod,
)


def test_scaled_linear_alphas_match_hand_computation() -> None:
    s = TruncatedDDIMScheduler()
    betas = [(math.sqrt(1e-4) + i * (math.sqrt(0.02) - math.sqrt(1e-4)) / 999) ** 2 for i in range(11)]
    expected = math.prod(1 - b for b in betas[:9])  # alpha_bar at t = 8
    assert float(s.alphas_cumprod[8]) == pytest.approx(expected, rel=1e-12)
    # Noise scales: sqrt(1 - a) = 0.0316 at t=8, 0.0354 at t=10, 0.0943 at t=49 (0.0957 is t=50).
    assert math.sqrt(1 - float(s.alphas_cumprod[8])) == pytest.approx(0.0316, abs=5e-4)
    assert math.sqrt(1 - float(s.alphas_cumprod[10])) == pytest.approx(0.0354, abs=5e-4)
    assert math.sqrt(1 - float(s.alphas_cumprod[49])) == pytest.approx(0.0943, abs=5e-4)


def test_truncated_timesteps() -> None:
    s = TruncatedDDIMScheduler()
    assert s.set_timesteps(2, start_timestep=8) == [8, 0]
    assert s.previous_timestep(8) == 0 and s.previous_timestep(0) == -1
    assert s.set_timesteps(20)[0] == 999 and s.timesteps[-1] == 0 and len(s.timesteps) == 20
    with pytest.raises(ValueError):
        s.set_timesteps(0)


def test_add_noise_formula() -> None:
    s = TruncatedDDIMScheduler()
    x0, noise = torch.tensor([[0.5, -0.2]]), torch.tensor([[1.0, 2.0]])
    a = float(s.alphas_cumprod[30])
    out = s.add_noise(x0, noise, torch.tensor([30]))
    torch.testing.assert_close(
        out, torch.tensor([[math.sqrt(a) * 0.5 + math.sqrt(1 - a), -0.2 * math.sqrt(a) + 2 * math.sqrt(1 - a)]])
    )


def test_deterministic_step_by_hand() -> None:
    s = TruncatedDDIMScheduler(event_dims=1)
    s.set_timesteps(2, start_timestep=8)
    x_t, x0 = torch.tensor([[0.3, 0.1]], dtype=torch.float64), torch.tensor([[0.25, 0.05]], dtype=torch.float64)
    a_t, a_p = float(s.alphas_cumprod[8]), float(s.alphas_cumprod[0])
    eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    expected = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps
    out = s.step(x0, 8, x_t)
    torch.testing.assert_close(out.prev_sample, expected)
    assert out.log_prob is None
    # The last step lands exactly on the predicted clean sample (alpha_prev = 1).
    torch.testing.assert_close(s.step(x0, 0, x_t).prev_sample, x0)


def test_stochastic_step_log_prob_of_known_gaussian() -> None:
    s = TruncatedDDIMScheduler(event_dims=1)
    s.set_timesteps(2, start_timestep=8)
    x_t = torch.tensor([[0.3, 0.1]], dtype=torch.float64)
    x0 = torch.tensor([[0.25, 0.05]], dtype=torch.float64)
    noise = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    out = s.step(x0, 8, x_t, eta=1.0, noise=noise)
    a_t, a_p = s.alphas_cumprod[8], s.alphas_cumprod[0]
    sigma = float(ddim_sigma(a_t, a_p, 1.0))
    assert sigma == pytest.approx(math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)))
    torch.testing.assert_close(out.prev_sample, out.mean + sigma * noise)
    # log N(mean + sigma z; mean, sigma^2) summed over 2 dims = -|z|^2/2 - 2 log sigma - log 2 pi
    expected = -(0.25 + 1.0) / 2 - 2 * math.log(sigma) - math.log(2 * math.pi)
    assert float(out.log_prob) == pytest.approx(expected, rel=1e-9)
    # Scoring a given action: the log-prob is maximal at the mean.
    at_mean = s.step(x0, 8, x_t, eta=1.0, prev_sample=out.mean)
    assert float(at_mean.log_prob) > float(out.log_prob)


def test_gaussian_log_prob_matches_torch_distribution() -> None:
    value, mean = torch.randn(3, 8, 2), torch.randn(3, 8, 2)
    std = torch.tensor(0.3)
    ref = torch.distributions.Normal(mean, std).log_prob(value).sum((-1, -2))
    torch.testing.assert_close(gaussian_log_prob(value, mean, std, 2), ref)


def test_epsilon_prediction_recovers_x0() -> None:
    s = TruncatedDDIMScheduler(prediction_type="epsilon", clip_sample=False, event_dims=1)
    s.set_timesteps(1, start_timestep=20)
    x0, eps = torch.tensor([[0.4, -0.3]]), torch.tensor([[0.7, 0.2]])
    x_t = s.add_noise(x0, eps, torch.tensor([20]))
    out = s.step(eps, 20, x_t)
    torch.testing.assert_close(out.pred_original_sample, x0, atol=1e-6, rtol=0)


def test_mean_coefficients_reproduce_eq12_in_float64() -> None:
    alphas = scaled_linear_alphas_cumprod()
    a_t, a_prev = alphas[8], alphas[0]
    sigma = ddim_sigma(a_t, a_prev, 1.0)
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(2, 3, 8, 2, generator=g, dtype=torch.float64)
    _, mean = ddim_step(x0, xt, a_t, a_prev, sigma, torch.zeros(()))
    c_x0, c_xt = ddim_mean_coefficients(float(a_t), float(a_prev), float(sigma))
    torch.testing.assert_close(c_x0 * x0 + c_xt * xt, mean, atol=1e-12, rtol=0.0)
    # the last step lands on alpha = 1: the mean is the prediction itself
    assert ddim_mean_coefficients(float(alphas[0]), 1.0, 0.0) == (1.0, 0.0)


def test_exploration_std_floor_and_eta_zero() -> None:
    sigma = torch.tensor(0.01, dtype=torch.float64)
    assert float(exploration_std(sigma, 1.0, 0.04)) == 0.04
    assert float(exploration_std(sigma, 1.0, 0.0)) == 0.01
    assert (
        float(exploration_std(torch.zeros((), dtype=torch.float64), 1.0, 0.04)) == 0.04
    )  # sigma = 0 still explores with a floor
    assert float(exploration_std(sigma, 0.0, 0.04)) == 0.0  # plain DDIM is a Dirac


def test_multiplicative_sample_scales_about_the_origin() -> None:
    mean = torch.tensor([[[3.0, 1.0], [5.0, 2.0]]])  # (1, 2 points, 2)
    origin = torch.tensor([1.0, 0.0])
    noise = torch.tensor([[[1.0, -2.0]]])  # one (long, lat) pair for the trajectory
    out = multiplicative_sample(mean, origin, torch.tensor(0.1), noise)
    # x: 1 + (mean_x - 1) * 1.1, y: (mean_y) * 0.8
    torch.testing.assert_close(out, torch.tensor([[[3.2, 0.8], [5.4, 1.6]]]))
