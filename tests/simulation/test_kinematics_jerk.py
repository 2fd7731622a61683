"""The jerk regulariser of the velocity fit: NAVSIM's (scoring) and nuPlan's (closed loop), numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewards.torch.kinematics import TrackerParameters, fit_profiles
from rewards.torch.kinematics import track_and_propagate as torch_track
from simulation.ego_control import plan_to_global, two_stage_tracking
from simulation.kinematics import (
    NAVSIM_LQR,
    NUPLAN_LQR,
    LQRParameters,
    fit_reference_profiles,
    interpolate_trajectory,
    jerk_difference_matrix,
    simulate_proposals,
    track_and_propagate,
)
from simulation.types import StateIndex, Trajectory

DT = 0.1
#: A jerky plan on a straight road along x: the speed of each 0.5 s interval jumps (m/s).
SPEEDS = np.array([8.0, 12.0, 6.0, 12.0, 4.0, 10.0, 5.0, 9.0])


def _plan() -> tuple[np.ndarray, np.ndarray]:
    poses = np.zeros((8, 3))
    poses[:, 0] = np.cumsum(SPEEDS * 0.5)
    state = np.zeros(11)
    state[StateIndex.VX] = SPEEDS[0]
    return poses, state


def _independent_speed(x: np.ndarray, kind: str, penalty: float = 1e-4) -> np.ndarray:
    """Speeds ``(N,)`` of the regularised least squares written out row by row and solved as one stacked system.

    Unknowns ``(v0, a_0 .. a_{N-2})``; displacement ``k`` = ``dt v0 + dt^2 (a_0 + ... + a_{k-1})``. Jerk rows:
    nuPlan ``a_{k+1} - a_k``; NAVSIM ``-a_k`` except the last row, ``a_{N-2} - a_{N-3}``.
    """
    d = np.diff(x)
    n = len(d)
    rows = [[DT] + [DT * DT if j < k else 0.0 for j in range(n - 1)] for k in range(n)]
    reg = []
    for k in range(n - 2):
        row = [0.0] * n
        row[1 + k] = -1.0
        if kind == "nuplan" or k == n - 3:
            row[2 + k] = 1.0
        reg.append(row)
    system = np.vstack([np.array(rows), np.sqrt(penalty) * np.array(reg)])
    theta = np.linalg.lstsq(system, np.concatenate([d, np.zeros(n - 2)]), rcond=None)[0]
    return theta[0] + DT * np.concatenate([[0.0], np.cumsum(theta[1:])])


def _reference() -> tuple[np.ndarray, np.ndarray]:
    poses, state = _plan()
    return interpolate_trajectory(poses, state), state  # (1, 41, 3): the 0.5 s plan at 10 Hz


def test_difference_matrices_by_hand() -> None:
    np.testing.assert_array_equal(jerk_difference_matrix(3, "nuplan"), [[-1, 1, 0, 0], [0, -1, 1, 0], [0, 0, -1, 1]])
    np.testing.assert_array_equal(jerk_difference_matrix(3, "navsim"), [[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1]])
    with pytest.raises(ValueError, match="jerk_difference"):
        LQRParameters(jerk_difference="other")  # type: ignore[arg-type]


def test_fits_equal_independent_least_squares_and_differ() -> None:
    reference, _ = _reference()
    fits = {}
    for kind, params in (("navsim", NAVSIM_LQR), ("nuplan", NUPLAN_LQR)):
        velocity, _ = fit_reference_profiles(reference, params)
        np.testing.assert_allclose(velocity[0], _independent_speed(reference[0, :, 0], kind), atol=1e-8)
        fits[kind] = velocity[0]
    assert np.abs(fits["navsim"] - fits["nuplan"]).max() > 0.3  # m/s: the two protocols see different speeds


def test_navsim_protocol_simulates_with_navsims_fit() -> None:
    """The scorer's path (simulate_proposals) uses NAVSIM's regulariser: first step by hand from its fit."""
    poses, state = _plan()
    reference, _ = _reference()
    v_ref = _independent_speed(reference[0, :, 0], "navsim")[10]  # reference speed 10 steps (1 s) ahead
    accel_cmd = 10.0 * (v_ref - state[StateIndex.VX]) / (10.0 * 1.0 + 1.0)  # one-step LQR, B = 1 s, q 10, r 1
    states = simulate_proposals(state, poses[None])
    assert states[0, 1, StateIndex.VX] == pytest.approx(state[StateIndex.VX] + DT * (0.1 / 0.3) * accel_cmd, abs=1e-10)
    np.testing.assert_array_equal(states, track_and_propagate(state, reference, lqr=NAVSIM_LQR))
    assert np.abs(states - track_and_propagate(state, reference, lqr=NUPLAN_LQR))[..., :2].max() > 0.05  # metres


def test_nuplan_closed_loop_tracks_with_nuplans_fit() -> None:
    poses, state = _plan()
    reference, _ = _reference()
    times, glob = plan_to_global(Trajectory(poses, 0.5), state)
    nxt = two_stage_tracking(state, times, glob, DT)
    speeds = {k: _independent_speed(reference[0, :, 0], k)[10] for k in ("nuplan", "navsim")}
    expected = {k: state[StateIndex.VX] + DT * (0.1 / 0.3) * 10.0 * (v - state[StateIndex.VX]) / 11.0
                for k, v in speeds.items()}  # fmt: skip
    assert nxt[StateIndex.VX] == pytest.approx(expected["nuplan"], abs=1e-10)
    assert abs(nxt[StateIndex.VX] - expected["navsim"]) > 1e-4


@pytest.mark.parametrize("kind", ["navsim", "nuplan"])
def test_torch_twin_equals_numpy(kind: str) -> None:
    reference, state = _reference()
    ref2 = np.concatenate([reference, reference + np.array([1.0, -2.0, 0.0])])
    ref2[1, :, 1] += 0.3 * np.sin(np.arange(41) * 0.2)  # a weaving second reference
    params = LQRParameters(jerk_difference=kind)  # type: ignore[arg-type]
    torch_params = TrackerParameters(jerk_difference=kind)  # type: ignore[arg-type]
    v_np, k_np = fit_reference_profiles(ref2, params)
    v_t, k_t = fit_profiles(torch.tensor(ref2), DT, torch_params)
    np.testing.assert_allclose(v_t.numpy(), v_np, atol=1e-9)
    np.testing.assert_allclose(k_t.numpy(), k_np, atol=1e-9)
    out = torch_track(torch.tensor(state), torch.tensor(ref2), DT, params=torch_params).numpy()
    np.testing.assert_allclose(out, track_and_propagate(state, ref2, lqr=params), atol=1e-6, rtol=0)


def test_torch_twin_defaults_to_nuplan() -> None:
    assert TrackerParameters().jerk_difference == "nuplan" and NUPLAN_LQR == LQRParameters()
