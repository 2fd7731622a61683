"""The Intelligent Driver Model's law, one for the closed-loop agents and the planners.

:func:`idm_law` is written with numpy ufuncs only, so the same source runs on arrays (the reactive agents,
:func:`simulation.agents.idm_acceleration`) and, compiled by numba, on floats inside the
planners' rollout kernels (:data:`idm_law_compiled`). The synthetic city's drivers keep
their own variant (:func:`simulation.datasets.synthetic.traffic.idm_accel`).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

#: A float or an array of floats (the IDM law takes either).
FloatOrArray = float | np.ndarray


def idm_law(
    speed: FloatOrArray,
    target: FloatOrArray,
    gap: FloatOrArray,
    lead_speed: FloatOrArray,
    a: float,
    b: float,
    s0: float,
    headway: float,
) -> Any:
    """The IDM law: ``a [1 - (v / v0)^4 - (s* / max(gap, s0))^2]`` clipped to ``[-b, a]``.

    The desired gap is ``s* = s0 + v T + v (v - v_lead) / (2 sqrt(a b))``; ``v0`` is floored at 1e-3 and an
    infinite ``gap`` (no leader) has no interaction term. Arguments: speed ``v``, target speed ``v0``, gap to the
    leader and its speed ``v_lead`` (m, m/s; floats or broadcastable arrays ``(K,)``), ``a = accel_max`` and
    ``b = decel_max`` (m/s^2), minimum gap ``s0`` (m), headway ``T`` (s). Returns the acceleration(s).

    The one law of the closed-loop agents (numpy, over arrays) and of the planners' compiled rollouts
    (:data:`idm_law_compiled`, over floats): written with ufuncs only, so both evaluate the same operations in
    the same order (numpy's and LLVM's ``pow`` may round the fourth power differently in the last bit).
    """
    s_star = s0 + speed * headway + speed * (speed - lead_speed) / (2.0 * np.sqrt(a * b))
    free = 1.0 - (speed / np.maximum(target, 1e-3)) ** 4.0
    ratio = s_star / np.maximum(gap, s0)
    interaction = np.where(np.isfinite(gap), ratio * ratio, 0.0)
    return np.minimum(np.maximum(a * (free - interaction), -b), a)


#: :func:`idm_law` compiled with numba, for calls from other numba kernels (float arguments).
idm_law_compiled = numba.njit(cache=True)(idm_law)
