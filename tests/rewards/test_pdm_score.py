"""EP normalisation, comfort bounds, extended comfort, human filter and PDMS / EPDMS aggregation."""

from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np
import pytest
from pdm_factory import make_cache, straight_states
from scipy.signal import savgol_filter

from rewards.comfort import comfort_checks, comfort_signals, two_frame_extended_comfort
from rewards.pdm import PDMScorer, aggregate_epdms, aggregate_pdms, ego_progress, human_filter, score_states
from simulation.polygon_grid import PolygonGrid
from simulation.protocols import Scorer
from simulation.types import StateIndex

T = np.arange(41) * 0.1


def _states(**columns: np.ndarray) -> np.ndarray:
    s = np.zeros((1, 41, 11))
    for col, values in columns.items():
        s[0, :, StateIndex[col]] = values
    return s


# --------------------------------------------------------------------------------------------- EP


def test_ep_normalised_by_reference():
    cache = make_cache()  # reference: 10 m/s -> 40 m
    out = score_states(cache, np.stack([straight_states(5.0), straight_states(15.0)]))
    np.testing.assert_allclose(out["progress_m"], [20.0, 60.0])
    np.testing.assert_allclose(out["ego_progress"], [0.5, 1.0])  # pairwise: 20 / 40 and 60 / 60
    batch = score_states(cache, np.stack([straight_states(5.0), straight_states(15.0)]), normalization="batch")
    np.testing.assert_allclose(batch["ego_progress"], [1 / 3, 1.0])


def test_ep_below_threshold_branch():
    cache = make_cache(reference=straight_states(1.0))  # 4 m < 5 m
    slow = straight_states(1.0)
    off_road = straight_states(1.0, y=-3.5)
    v1 = score_states(cache, np.stack([slow, off_road]))
    np.testing.assert_array_equal(v1["ego_progress"], [1.0, 0.0])  # v1 zeroes failed multipliers
    v2 = score_states(make_cache("v2", reference=straight_states(1.0)), np.stack([slow, off_road]), "v2",
                      apply_human_filter=False)  # fmt: skip
    np.testing.assert_array_equal(v2["ego_progress"], [1.0, 1.0])


def test_ep_v1_masks_own_progress_v2_does_not():
    v1 = score_states(make_cache(), straight_states(10.0, y=-3.5)[None])
    v2 = score_states(make_cache("v2"), straight_states(10.0, y=-3.5)[None], "v2", apply_human_filter=False)
    assert v1["ego_progress"][0] == 0.0
    assert v2["ego_progress"][0] == 1.0  # 40 m / 40 m of the reference, clipped to [0, 1]
    assert v2["score"][0] == 0.0  # DAC multiplier


def test_ego_progress_function_branches():
    ep = ego_progress(np.array([3.0, 8.0, 12.0]), np.array([1.0, 0.5, 1.0]), 10.0, "v1")
    np.testing.assert_allclose(ep, [0.3, 0.4, 1.0])
    ep = ego_progress(np.array([3.0, 8.0, 12.0]), np.array([1.0, 0.5, 1.0]), 10.0, "v2")
    np.testing.assert_allclose(ep, [0.3, 0.8, 1.0])
    np.testing.assert_allclose(ego_progress(np.array([4.0]), np.array([0.5]), 4.9, "v1"), [1.0])


# --------------------------------------------------------------------------------------------- comfort


@pytest.mark.parametrize(
    ("columns", "failing"),
    [
        ({"AX": np.full(41, 2.5)}, "lon_accel"),
        ({"AX": np.full(41, -4.1)}, "lon_accel"),
        ({"AY": np.full(41, 5.0)}, "lat_accel"),
        ({"HEADING": 1.0 * T}, "yaw_rate"),
        ({"HEADING": 0.2 * np.sin(4.0 * T)}, "yaw_accel"),
    ],
)
def test_each_comfort_bound(columns, failing):
    names = ["lon_accel", "lat_accel", "jerk", "lon_jerk", "yaw_accel", "yaw_rate"]
    checks = comfort_checks(_states(**columns), "v1")[0]
    assert [n for n, ok in zip(names, checks, strict=True) if not ok] == [failing]


def test_lon_jerk_bound_v2():
    names = ["lon_accel", "lat_accel", "jerk", "lon_jerk", "yaw_accel", "yaw_rate"]
    checks = comfort_checks(_states(AX=2.0 * np.sin(2.5 * T)), "v2")[0]
    assert [n for n, ok in zip(names, checks, strict=True) if not ok] == ["lon_jerk"]


def test_filter_chain_matches_scipy():
    # v1 lon accel: order-2 fit over the whole (odd, 41) window reproduces a quadratic exactly
    ax = 0.3 * T**2
    s = comfort_signals(_states(AX=ax), "v1")
    np.testing.assert_allclose(s["lon_accel"][0], ax, atol=1e-8)
    # jerk: accel smoothed with window 8 and rounded, then differentiated (window 41 in v1, 15 in v2)
    smooth = np.round(savgol_filter(ax, 8, 2), 8)
    np.testing.assert_allclose(s["lon_jerk"][0], np.round(savgol_filter(smooth, 41, 2, deriv=1, delta=0.1), 8),
                               atol=1e-8)  # fmt: skip
    s2 = comfort_signals(_states(AX=ax), "v2")
    np.testing.assert_allclose(s2["jerk"][0], np.round(savgol_filter(smooth, 15, 2, deriv=1, delta=0.1), 8),
                               atol=1e-8)  # fmt: skip
    heading = 0.1 * np.sin(2 * T)
    s = comfort_signals(_states(HEADING=heading), "v1")
    np.testing.assert_allclose(s["yaw_accel"][0], np.round(savgol_filter(heading, 5, 3, deriv=2, delta=0.1), 8),
                               atol=1e-8)  # fmt: skip


def test_v2_accelerations_at_vehicle_centre():
    # a_x 1.0 with yaw rate 1 rad/s: centre a_x = 1 + 1.461 * 1^2 = 2.461 > 2.40
    s = _states(AX=np.ones(41), YAW_RATE=np.ones(41))
    assert comfort_checks(s, "v1")[0, 0]
    assert not comfort_checks(s, "v2")[0, 0]


def test_history_comfort_uses_past_states():
    history = np.repeat(straight_states(10.0)[:1], 14, 0)
    history[:, StateIndex.AX] = 3.0  # uncomfortable past braking / accelerating
    cache = make_cache("v2", history=history)
    out = score_states(cache, straight_states(10.0)[None], "v2")
    assert out["history_comfort"][0] == 0.0
    assert score_states(make_cache("v2"), straight_states(10.0)[None], "v2")["history_comfort"][0] == 1.0


def test_two_frame_extended_comfort():
    now = straight_states(10.0)[None]
    assert two_frame_extended_comfort(now, now)[0] == 1.0
    wobbly = now.copy()
    wobbly[0, :, StateIndex.HEADING] = 0.05 * np.sin(4.0 * T)  # yaw-rate RMS difference ~0.14 > 0.1
    assert two_frame_extended_comfort(wobbly, now)[0] == 0.0
    assert two_frame_extended_comfort(wobbly, now[0])[0] == 0.0  # previous plan broadcast over candidates


def test_scorer_two_frame_metrics_rescore_with_extended_comfort():
    """A row with every sub-metric at 1 and EP 0.5: EC 1 gives (2.5 + 5 + 2 + 2 + 2) / 16, EC 0 two less."""
    row = {name: 1.0 for name in ("no_at_fault_collisions", "drivable_area_compliance",
           "driving_direction_compliance", "traffic_light_compliance", "time_to_collision_within_bound",
           "lane_keeping", "history_comfort", "two_frame_extended_comfort", "score")}  # fmt: skip
    row["ego_progress"] = 0.5
    now = straight_states(10.0)
    wobbly = now.copy()
    wobbly[:, StateIndex.HEADING] = 0.05 * np.sin(4.0 * T)
    scorer = PDMScorer("v2")
    assert scorer.two_frame_metrics(row, now, now) == {"two_frame_extended_comfort": 1.0, "score": 13.5 / 16}
    assert scorer.two_frame_metrics(row, wobbly, now) == {"two_frame_extended_comfort": 0.0, "score": 11.5 / 16}
    assert scorer.two_frame_metrics({**row, "traffic_light_compliance": 0.0}, now, now)["score"] == 0.0
    assert PDMScorer("v1").two_frame_metrics(row, now, now) == {}
    cache = make_cache("v2")
    poses = np.stack([np.arange(1, 9) * 5.0, np.zeros(8), np.zeros(8)], -1)[None]
    states = scorer.simulate(cache, poses)
    direct, simulated = scorer.score(cache, poses), scorer.score_simulated(cache, states)
    assert sorted(direct) == sorted(simulated)
    for name, value in direct.items():
        np.testing.assert_array_equal(simulated[name], value, err_msg=name)


# --------------------------------------------------------------------------------------------- aggregation


def test_aggregate_pdms_formula():
    m = {
        "no_at_fault_collisions": np.array([1.0, 0.5, 0.0]),
        "drivable_area_compliance": np.array([1.0, 1.0, 1.0]),
        "time_to_collision_within_bound": np.array([0.0, 1.0, 1.0]),
        "ego_progress": np.array([0.5, 1.0, 1.0]),
        "comfort": np.array([1.0, 0.0, 1.0]),
        "driving_direction_compliance": np.array([0.0, 0.0, 0.0]),
    }
    np.testing.assert_allclose(aggregate_pdms(m), [(2.5 + 2) / 12, 0.5 * 10 / 12, 0.0])


def test_aggregate_epdms_formula():
    m = {name: np.array([1.0]) for name in ("no_at_fault_collisions", "drivable_area_compliance",
                                             "traffic_light_compliance", "time_to_collision_within_bound",
                                             "history_comfort")}  # fmt: skip
    m |= {"driving_direction_compliance": np.array([0.5]), "ego_progress": np.array([0.4]),
          "lane_keeping": np.array([0.0]), "extended_comfort": np.array([0.0])}  # fmt: skip
    np.testing.assert_allclose(aggregate_epdms(m), [0.5 * (2 + 5 + 0 + 2 + 0) / 16])
    np.testing.assert_allclose(aggregate_epdms(m, with_extended_comfort=False), [0.5 * 9 / 14])


def test_human_filter_exact_zero_only():
    agent = {"no_at_fault_collisions": np.array([0.0, 0.5]), "drivable_area_compliance": np.array([0.0, 1.0])}
    agent |= {n: np.array([0.0, 0.0]) for n in ("driving_direction_compliance", "traffic_light_compliance",
                                                 "ego_progress", "time_to_collision_within_bound",
                                                 "lane_keeping", "history_comfort")}  # fmt: skip
    human = {n: np.array([1.0]) for n in agent}
    human["drivable_area_compliance"] = np.array([0.0])
    human["no_at_fault_collisions"] = np.array([0.5])
    out = human_filter(agent, human)
    np.testing.assert_array_equal(out["drivable_area_compliance"], [1.0, 1.0])
    np.testing.assert_array_equal(out["no_at_fault_collisions"], [0.0, 0.5])  # human 0.5 does not trigger


def test_human_filter_in_score_states():
    human_off_road = straight_states(10.0, y=-3.5)
    cache = make_cache("v2", human=human_off_road)
    out = score_states(cache, straight_states(10.0, y=-3.5)[None], "v2")
    assert out["drivable_area_compliance"][0] == 1.0
    assert out["score"][0] > 0.0
    raw = score_states(cache, straight_states(10.0, y=-3.5)[None], "v2", apply_human_filter=False)
    assert raw["drivable_area_compliance"][0] == 0.0


def test_epdms_with_previous_plan():
    cache = make_cache("v2")
    now = straight_states(10.0)[None]
    out = score_states(cache, now, "v2", previous_states=now)
    assert out["extended_comfort"][0] == 1.0 and out["score"][0] == pytest.approx(1.0)
    lk_fail = now.copy()
    lk_fail[0, :, StateIndex.Y] = -1.2
    out = score_states(cache, lk_fail, "v2")
    assert out["lane_keeping"][0] == 0.0
    assert out["score"][0] == pytest.approx(12 / 14)  # no previous frame: EC weight 0
    assert np.isnan(out["extended_comfort"][0])  # and not measured


def test_version_and_input_checks():
    with pytest.raises(ValueError, match="needs 50"):
        score_states(make_cache("v2"), straight_states(10.0)[None], "v1")
    with pytest.raises(ValueError, match="states must be"):
        score_states(make_cache(), straight_states(10.0)[None, :40])
    scorer = PDMScorer("v2")
    assert isinstance(scorer, Scorer)
    with pytest.raises(ValueError, match="finite"):
        scorer.score(make_cache("v2"), np.full((2, 8, 3), np.nan))


def test_empty_map_and_no_agents():
    cache = make_cache()
    empty = dataclasses.replace(
        cache,
        map_grid=PolygonGrid.build([]),
        map_ids=np.zeros(0, str),
        map_layers=np.zeros(0, np.int64),
    )
    out = score_states(empty, straight_states(10.0)[None])
    assert out["drivable_area_compliance"][0] == 0.0 and out["no_at_fault_collisions"][0] == 1.0
    assert out["driving_direction_compliance"][0] == 0.0  # no on-route lane anywhere


def test_pdm_scorer_wires_tracker_and_scoring(monkeypatch):
    """PDMScorer hands the poses and the cached current state to the tracker and scores what it returns."""
    seen = {}

    def fake_simulate(current_state, poses):
        seen["current"], seen["poses"] = current_state, poses
        return np.stack([straight_states(10.0), straight_states(10.0, y=-3.5)])

    fake = types.ModuleType("simulation.kinematics")
    fake.simulate_proposals = fake_simulate
    monkeypatch.setitem(sys.modules, "simulation.kinematics", fake)
    cache = make_cache()
    out = PDMScorer("v1").score(cache, np.zeros((2, 8, 3)))
    assert seen["poses"].shape == (2, 8, 3) and np.array_equal(seen["current"], cache.current_state)
    np.testing.assert_array_equal(out["drivable_area_compliance"], [1.0, 0.0])
    np.testing.assert_allclose(out["score"], [1.0, 0.0])
