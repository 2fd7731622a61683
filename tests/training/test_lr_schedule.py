"""Learning-rate schedule of the imitation module: warm-up (capped for short runs), then cosine to the floor."""

from __future__ import annotations

import math

import pytest
import torch

from training.imitation import lr_factor, warmup_cosine


def test_long_run_warms_up_for_the_configured_steps() -> None:
    factors = [lr_factor(s, warmup_steps=50, total_steps=1000, floor=0.1) for s in range(1000)]
    assert factors[0] == pytest.approx(1 / 50) and factors[49] == pytest.approx(1.0)
    assert factors[50] == pytest.approx(1.0)  # cosine starts at the top
    assert factors[525] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert lr_factor(1000, 50, 1000, 0.1) == pytest.approx(0.1)


def test_short_run_warms_up_for_a_tenth_of_it() -> None:
    # 63 optimiser steps: warm-up capped at 6 steps instead of 50, so most of the run trains at a useful rate
    assert lr_factor(0, 50, 63, 0.0) == pytest.approx(1 / 6)
    assert lr_factor(5, 50, 63, 0.0) == pytest.approx(1.0)
    assert lr_factor(6, 50, 63, 0.0) == pytest.approx(1.0)
    assert lr_factor(34, 50, 63, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 28 / 57)))
    assert lr_factor(0, 0, 63, 0.0) == pytest.approx(1.0)  # no warm-up: the decay starts at once
    assert lr_factor(3, 0, 63, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 63)))


def test_a_zero_learning_rate_stays_zero_and_a_negative_one_is_refused() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.0)
    sched = warmup_cosine(opt, {"lr": 0.0, "min_lr": 1e-6, "warmup_steps": 2}, 10)
    for _ in range(5):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == 0.0
    with pytest.raises(ValueError, match="must not be negative"):
        warmup_cosine(torch.optim.SGD([param], lr=1e-3), {"lr": -1e-3, "min_lr": 0.0, "warmup_steps": 0}, 10)
