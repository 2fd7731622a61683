"""Torch LQR tracker + kinematic bicycle: hand-computed steps and agreement with a plain numpy reading of the spec.

The numpy reference below follows specs/navsim.md §3.3-3.4 sample by sample (pinv least squares, explicit
loops).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewards.torch.kinematics import fit_profiles, lqr_command, propagate, track_and_propagate
from simulation.types import StateIndex as S

DT, L = 0.1, 3.089


def _wrap(a: np.ndarray | float) -> np.ndarray:
    return np.arctan2(np.sin(a), np.cos(a))


def _np_profiles(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.diff(poses, axis=0)
    m = len(d)
    a = np.zeros((2 * m, m))
    for k in range(m):
        u = np.array([np.cos(poses[k, 2]), np.sin(poses[k, 2])])
        a[2 * k : 2 * k + 2, 0] = u * DT
        a[2 * k : 2 * k + 2, 1 : k + 1] = u[:, None] * DT**2
    r = np.zeros((m - 2, m))
    for i in range(m - 2):
        r[i, i + 1], r[i, i + 2] = -1.0, 1.0
    x = np.linalg.pinv(a.T @ a + 1e-4 * r.T @ r) @ a.T @ d[:, :2].ravel()
    v = x[0] + np.concatenate([[0.0], np.cumsum(x[1:] * DT)])
    c = np.tril(np.ones((m, m)))
    c[:, 0] = v * DT
    c[1:, 1:] *= v[1:, None] * DT**2
    q = 1e-2 * np.eye(m)
    q[0, 0] = 1e-10
    y = np.linalg.pinv(c.T @ c + q) @ c.T @ _wrap(d[:, 2])
    return v, y[0] + np.concatenate([[0.0], np.cumsum(y[1:] * DT)])


def _np_track(state: np.ndarray, ref: np.ndarray) -> np.ndarray:
    v_prof, k_prof = _np_profiles(ref)
    m, out = len(v_prof), [state.copy()]
    for step in range(len(ref) - 1):
        s = out[-1]
        rx, ry, rh = ref[step]
        lat = -(s[0] - rx) * np.sin(rh) + (s[1] - ry) * np.cos(rh)
        x0 = np.array([lat, _wrap(s[2] - rh), s[S.STEERING_ANGLE]])
        j = min(step + 10, m - 1)
        v_ref, v0 = v_prof[j], s[S.VX]
        kap = np.concatenate([k_prof[step:j], np.full(10 - (j - step), k_prof[j])])
        if v_ref <= 0.2 and v0 <= 0.2:
            acc, rate = -0.5 * (v0 - v_ref), 0.0
        else:
            acc = -(1.0 * 10 * (v0 - v_ref)) / (10 * 1.0 * 1.0 + 1.0)
            a_m, b_v, g_v = np.eye(3), np.zeros(3), np.zeros(3)
            for k in range(10):
                vk = v0 + acc * DT * k
                st = np.array([[1, vk * DT, 0], [0, 1, vk * DT / L], [0, 0, 1]])
                a_m, b_v = st @ a_m, st @ b_v + np.array([0, 0, DT])
                g_v = st @ g_v + np.array([0, -vk * kap[k] * DT, 0])
            err = a_m @ x0 + g_v
            err[1:] = _wrap(err[1:])
            q = np.array([1.0, 10.0, 0.0])
            rate = -(b_v * q) @ err / ((b_v * q) @ b_v + 1.0)
        nxt = s.copy()
        a_new = DT / (DT + 0.2) * (acc - s[S.AX]) + s[S.AX]
        steer = DT / (DT + 0.05) * (DT * rate) + s[S.STEERING_ANGLE]
        nxt[0] += s[S.VX] * np.cos(s[2]) * DT
        nxt[1] += s[S.VX] * np.sin(s[2]) * DT
        nxt[2] = _wrap(s[2] + s[S.VX] * np.tan(s[S.STEERING_ANGLE]) / L * DT)
        nxt[S.VX] = s[S.VX] + a_new * DT
        nxt[S.VY] = nxt[S.AY] = 0.0
        nxt[S.STEERING_ANGLE] = np.clip(steer, -np.pi / 3, np.pi / 3)
        nxt[S.STEERING_RATE] = (steer - s[S.STEERING_ANGLE]) / DT
        nxt[S.YAW_RATE] = nxt[S.VX] * np.tan(nxt[S.STEERING_ANGLE]) / L
        nxt[S.YAW_ACCEL] = (nxt[S.YAW_RATE] - s[S.YAW_RATE]) / DT
        nxt[S.AX] = a_new
        out.append(nxt)
    return np.stack(out)


def _cases() -> tuple[np.ndarray, np.ndarray]:
    """Four references (straight, lane change, left turn, stopping) and perturbed initial states."""
    rng = np.random.default_rng(3)
    t = np.arange(41) * DT
    refs = np.zeros((4, 41, 3))
    refs[0, :, 0] = 8.0 * t
    refs[1, :, 0], refs[1, :, 1] = 10.0 * t, 3.5 / (1 + np.exp(-(t - 2.0) * 3))
    refs[1, :, 2] = np.arctan2(np.gradient(refs[1, :, 1]), np.gradient(refs[1, :, 0]))
    ang = 6.0 * t / 12.0
    refs[2, :, 0], refs[2, :, 1], refs[2, :, 2] = 12 * np.sin(ang), 12 * (1 - np.cos(ang)), ang
    refs[3, :, 0] = np.minimum(3.0 * t - 0.5 * t**2, 4.5)
    states = np.zeros((4, 11))
    states[:, :3] = refs[:, 0] + rng.normal(0, [0.3, 0.3, 0.05], (4, 3))
    states[:, S.VX] = [8.5, 9.0, 5.0, 3.2]
    states[:, S.STEERING_ANGLE] = rng.normal(0, 0.02, 4)
    return states, refs


def test_agrees_with_numpy_reference() -> None:
    states, refs = _cases()
    out = track_and_propagate(torch.tensor(states), torch.tensor(refs)).numpy()
    for b in range(len(states)):
        np.testing.assert_allclose(out[b], _np_track(states[b], refs[b]), atol=1e-5, rtol=0)


def test_profiles_of_a_circle() -> None:
    t = np.arange(41) * DT
    ang = 10.0 * t / 20.0  # 10 m/s on a 20 m circle
    poses = torch.tensor(np.stack([20 * np.sin(ang), 20 * (1 - np.cos(ang)), ang], -1))[None]
    v, k = fit_profiles(poses, DT)
    np.testing.assert_allclose(v[0, 2:-2].numpy(), 10.0, atol=1e-2)
    np.testing.assert_allclose(k[0, 2:-2].numpy(), 1 / 20.0, atol=1e-3)


def test_bicycle_step_by_hand() -> None:
    s = torch.zeros(1, 11, dtype=torch.float64)
    s[0, S.VX], s[0, S.HEADING] = 10.0, np.pi / 2
    out = propagate(s, torch.tensor([3.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64), DT)[0]
    assert float(out[S.X]) == pytest.approx(0.0, abs=1e-12) and float(out[S.Y]) == pytest.approx(1.0)
    assert float(out[S.AX]) == pytest.approx(0.1 / 0.3 * 3.0)  # accel lag, tau 0.2 s
    assert float(out[S.VX]) == pytest.approx(10.0 + 0.1 * 1.0)
    assert float(out[S.STEERING_ANGLE]) == pytest.approx(0.1 / 0.15 * 0.05)  # steering lag, tau 0.05 s
    assert float(out[S.YAW_RATE]) == pytest.approx(10.1 * np.tan(0.1 / 0.15 * 0.05) / L)


def test_stopping_controller() -> None:
    ref = torch.zeros(1, 41, 3, dtype=torch.float64)
    s = torch.zeros(1, 11, dtype=torch.float64)
    s[0, S.VX] = 0.1
    v, k = fit_profiles(ref, DT)
    accel, rate = lqr_command(s, ref, v, k, 0, DT)
    assert float(accel[0]) == pytest.approx(-0.05) and float(rate[0]) == 0.0


def test_agrees_with_simulation_kinematics() -> None:
    """The numpy tracker of the vector closed loop (whole batch in one call) and the torch twin agree to 1e-5."""
    from simulation.kinematics import track_and_propagate as numpy_track

    states, refs = _cases()
    out = track_and_propagate(torch.tensor(states), torch.tensor(refs)).numpy()
    for b in range(len(states)):
        np.testing.assert_allclose(out[b], np.asarray(numpy_track(states[b], refs[b : b + 1]))[0], atol=1e-5, rtol=0)


def test_tracking_loop_commands_equal_lqr_command() -> None:
    """The tracking loop's commands (horizon sums as polynomials, per-step inputs precomputed) equal
    :func:`lqr_command`'s (sums over the horizon) at every step."""
    from rewards.torch.kinematics import DEFAULT_TRACKER, _commands, _lateral_coefficients, normalize_angle

    states, refs = _cases()
    ref = torch.tensor(refs)
    v, k = fit_profiles(ref, DT)
    out = track_and_propagate(torch.tensor(states), ref)
    m, h = v.shape[1], DEFAULT_TRACKER.horizon
    for step in (0, 5, 25, m - 3, m - 1):
        st = out[:, step]
        window = torch.clamp(step + torch.arange(h), max=m - 1)
        p = ref[:, step]
        ex, ey = st[:, S.X] - p[:, 0], st[:, S.Y] - p[:, 1]
        lateral = torch.stack([-ex * torch.sin(p[:, 2]) + ey * torch.cos(p[:, 2]),
                               normalize_angle(st[:, S.HEADING] - p[:, 2]), st[:, S.STEERING_ANGLE]], -1)  # fmt: skip
        coef = _lateral_coefficients(k[:, window][:, None], DT)[:, 0]
        got = _commands(lateral, st[:, S.VX], v[:, min(step + h, m - 1)], coef, h, DT, DEFAULT_TRACKER)
        want = lqr_command(st, ref, v, k, step, DT)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-9, atol=1e-12)
