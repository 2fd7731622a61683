"""nuPlan's open-loop metrics (OLS): planned versus expert poses at 3, 5 and 8 s.

Frames are sampled at 1 Hz; each plan is interpolated at the expert timestamps and compared in
centre poses. Per horizon the frame means of ADE, FDE, max displacement, AHE and FHE are taken;
scores are ``max(0, 1 - mean_over_horizons / bound)`` with bounds 8 m (ADE, FDE) and 0.8 rad (AHE,
FHE); the miss-rate multiplier is 1 when, for every horizon, at most 30 % of the frames have a max
displacement above 6 / 8 / 16 m. OLS = miss x (ADE + 2 AHE + FDE + 2 FHE) / 6.

Horizons longer than a plan are skipped (diffplan's plans are 4 s by default; nuPlan's are 8 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from simulation.geometry import normalize_angle, rear_axle_to_center

OLS_HORIZONS_S = (3.0, 5.0, 8.0)
MISS_THRESHOLDS_M = (6.0, 8.0, 16.0)
MAX_MISS_RATE = 0.3
DISPLACEMENT_BOUND_M = 8.0
HEADING_BOUND_RAD = 0.8
OLS_WEIGHTS = {
    "planner_expert_average_l2_error_within_bound": 1.0,
    "planner_expert_average_heading_error_within_bound": 2.0,
    "planner_expert_final_l2_error_within_bound": 1.0,
    "planner_expert_final_heading_error_within_bound": 2.0,
}


def _errors(plan_t: np.ndarray, plan: np.ndarray, exp_t: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """``(K, 2)`` displacement and |heading error| of ``plan`` at expert times ``exp_t`` (K,)."""
    x = np.interp(exp_t, plan_t, plan[:, 0])
    y = np.interp(exp_t, plan_t, plan[:, 1])
    h = np.interp(exp_t, plan_t, np.unwrap(plan[:, 2]))
    pc = rear_axle_to_center(np.stack([x, y, h], -1))
    ec = rear_axle_to_center(exp)
    return np.stack([np.hypot(*(pc[:, :2] - ec[:, :2]).T), np.abs(normalize_angle(pc[:, 2] - ec[:, 2]))], -1)


def open_loop_metrics(
    plan_times_s: Sequence[np.ndarray],
    plans: Sequence[np.ndarray],
    expert_times_s: np.ndarray,
    expert_poses: np.ndarray,
    horizons_s: Sequence[float] = OLS_HORIZONS_S,
) -> dict[str, float]:
    """OLS sub-metrics and ``score``.

    Args:
        plan_times_s: per sampled frame, absolute times ``(P_i,)`` of the plan poses (first = the frame).
        plans: per sampled frame, global rear-axle poses ``(P_i, 3)``.
        expert_times_s: ``(T,)`` times of the expert poses.
        expert_poses: ``(T, 3)`` global rear-axle expert poses.
    """
    per_h: dict[str, list[float]] = {"ade": [], "fde": [], "ahe": [], "fhe": []}
    miss_ok = True
    for h, miss_m in zip(horizons_s, MISS_THRESHOLDS_M):
        rows = []
        for pt, plan in zip(plan_times_s, plans):
            if pt[-1] - pt[0] < h - 1e-6:
                continue
            sel = (expert_times_s > pt[0] + 1e-6) & (expert_times_s <= pt[0] + h + 1e-6)
            if not sel.any():
                continue
            err = _errors(pt, plan, expert_times_s[sel], expert_poses[sel])
            rows.append((err[:, 0].mean(), err[-1, 0], err[:, 0].max(), err[:, 1].mean(), err[-1, 1]))
        if not rows:
            continue
        arr = np.asarray(rows)
        for k, col in zip(("ade", "fde"), (0, 1)):
            per_h[k].append(float(arr[:, col].mean()))
        per_h["ahe"].append(float(arr[:, 3].mean()))
        per_h["fhe"].append(float(arr[:, 4].mean()))
        miss_ok &= bool((arr[:, 2] > miss_m).mean() <= MAX_MISS_RATE)
    if not per_h["ade"]:
        raise ValueError(f"open_loop_metrics: no plan covers any of the horizons {tuple(horizons_s)}")

    def score(errors: list[float], bound: float) -> float:
        return float(max(0.0, 1.0 - float(np.mean(errors)) / bound))

    out = {
        "planner_expert_average_l2_error_within_bound": score(per_h["ade"], DISPLACEMENT_BOUND_M),
        "planner_expert_final_l2_error_within_bound": score(per_h["fde"], DISPLACEMENT_BOUND_M),
        "planner_expert_average_heading_error_within_bound": score(per_h["ahe"], HEADING_BOUND_RAD),
        "planner_expert_final_heading_error_within_bound": score(per_h["fhe"], HEADING_BOUND_RAD),
        "planner_miss_rate_within_bound": float(miss_ok),
    }
    weighted = sum(float(w * out[k]) for k, w in OLS_WEIGHTS.items()) / sum(OLS_WEIGHTS.values())
    out["score"] = out["planner_miss_rate_within_bound"] * weighted
    return out


def open_loop_score_history(
    history: Any, expert_states: np.ndarray, expert_timestamps_us: np.ndarray
) -> dict[str, float]:
    """OLS of a ``simulation.closed_loop.SimulationHistory`` (run with the log-playback controller, as nuPlan's
    open-loop protocol does): its plans at 1 Hz (every 10th sample) against the expert ``(T, 11)``."""
    t0 = int(history.timestamps_us[0])
    picks = [k for k in range(0, history.num_samples, 10) if history.plans[k] is not None]
    if not picks:
        raise ValueError(f"open_loop_score_history: scenario {history.token} has no plan at the 1 Hz samples")
    return open_loop_metrics(
        [(np.asarray(history.plan_times_us[k]) - t0) * 1e-6 for k in picks],
        [np.asarray(history.plans[k]) for k in picks],
        (np.asarray(expert_timestamps_us) - t0) * 1e-6,
        np.asarray(expert_states)[:, :3],
    )
