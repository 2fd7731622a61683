"""The one IDM law: hand-checked values, arrays and floats, and the compiled twin."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulation.agents import IDMParameters, idm_acceleration
from simulation.idm import idm_law, idm_law_compiled

# a, b, s0, T of nuPlan's agents
A, B, S0, T = 1.0, 2.0, 1.0, 1.5


def test_law_by_hand() -> None:
    # v = 5, v0 = 10, gap 20, lead 5: s* = 1 + 7.5 = 8.5 -> 1 - (1/2)^4 - (8.5/20)^2
    assert idm_law(5.0, 10.0, 20.0, 5.0, A, B, S0, T) == pytest.approx(1 - 0.0625 - 0.180625, abs=1e-15)
    # no leader: free road only; at the target speed the acceleration is 0
    assert idm_law(10.0, 10.0, math.inf, 0.0, A, B, S0, T) == 0.0
    # standing start on a free road: full acceleration
    assert idm_law(0.0, 10.0, math.inf, 0.0, A, B, S0, T) == A
    # closing fast on a stopped leader: clipped at -b
    assert idm_law(10.0, 10.0, 5.0, 0.0, A, B, S0, T) == -B
    # a gap below s0 counts as s0; a target of 0 counts as 1e-3
    assert idm_law(0.0, 10.0, 0.2, 0.0, A, B, S0, T) == idm_law(0.0, 10.0, S0, 0.0, A, B, S0, T) == 0.0
    assert idm_law(1e-3, 0.0, math.inf, 0.0, A, B, S0, T) == 0.0


def test_arrays_agree_with_floats_and_the_compiled_law() -> None:
    rng = np.random.default_rng(0)
    n = 500
    v, v0 = rng.uniform(0.0, 25.0, n), rng.uniform(0.0, 20.0, n)
    gap = np.where(rng.random(n) < 0.3, np.inf, rng.uniform(-3.0, 90.0, n))
    lead = rng.uniform(0.0, 15.0, n)
    params = IDMParameters()
    arrays = idm_acceleration(v, v0, gap, lead, params)
    assert arrays.shape == (n,) and np.all((arrays >= -params.decel_max) & (arrays <= params.accel_max))
    floats = np.array([idm_law(*x, A, B, S0, T) for x in zip(v, v0, gap, lead, strict=True)])
    compiled = np.array([idm_law_compiled(*x, A, B, S0, T) for x in zip(v, v0, gap, lead, strict=True)])
    np.testing.assert_allclose(floats, arrays, rtol=0.0, atol=1e-12)
    np.testing.assert_allclose(compiled, arrays, rtol=0.0, atol=1e-12)


def test_arrays_broadcast() -> None:
    out = idm_acceleration(np.array([0.0, 5.0]), np.array(10.0), np.array(np.inf), np.array(0.0), IDMParameters())
    np.testing.assert_array_equal(out, [1.0, 1.0 - 0.0625])
