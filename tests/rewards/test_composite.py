"""RL reward vectors: the benchmark's scorer per candidate, invalid plans, pool parity, mixes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pdm_factory import agent_track, make_cache

from rewards.composite import (
    TERMS,
    LearnedReward,
    MixedReward,
    RewardBatch,
    RuleReward,
    failure,
)
from rewards.pdm import PDMScorer
from simulation.metric_cache import MetricCache

T = np.arange(1, 9) * 0.5


def plan(speed: float, lateral: float = 0.0) -> np.ndarray:
    """``(8, 3)`` local poses at ``speed`` m/s, drifting ``lateral`` metres by 4 s."""
    return np.stack([speed * T, lateral * (T / 4.0) ** 2, np.zeros(8)], -1)


def test_v1_terms_and_total_are_the_benchmark_scores() -> None:
    cache = make_cache()  # straight road, PDM-Closed reference at 10 m/s
    plans = np.stack([plan(10.0), plan(6.0), plan(10.0, lateral=12.0)])[None]
    batch = RuleReward("v1").score([cache], plans)
    assert batch.shape == (1, 3) and tuple(batch.terms) == TERMS["v1"]
    expected = PDMScorer("v1").score(cache, plans[0])
    np.testing.assert_array_equal(batch.total[0], expected["score"])
    for name in TERMS["v1"]:
        np.testing.assert_array_equal(batch.terms[name][0], expected[name])
    assert batch.total[0, 0] > 0.9 and 0 < batch.total[0, 1] < batch.total[0, 0]
    # 12 m to the left leaves the 8 m road: DAC 0, PDMS 0, a failure
    assert batch.terms["drivable_area_compliance"][0, 2] == 0.0 and batch.total[0, 2] == 0.0
    np.testing.assert_array_equal(failure(batch), [[False, False, True]])
    assert ((batch.total >= 0) & (batch.total <= 1)).all()


def test_at_fault_collision_is_a_failure() -> None:
    steps = 51
    x = 20.0 + np.zeros(steps)  # a parked car 20 m ahead in the ego lane
    cache = make_cache(agents=[(agent_track(steps, x, -2.0), 0)])
    batch = RuleReward("v1").score([cache], plan(10.0)[None, None])
    assert batch.terms["no_at_fault_collisions"][0, 0] < 1.0 and batch.total[0, 0] == 0.0
    assert failure(batch)[0, 0]


def test_reward_of_a_plan_does_not_depend_on_its_group() -> None:
    """EP is normalised per candidate against the PDM-Closed reference (NAVSIM's pairwise scoring): a slow plan
    scores the same alone and beside a plan that progresses further than the reference."""
    cache = make_cache()
    reward = RuleReward("v1")
    alone = reward.score([cache], plan(5.0)[None, None])
    group = reward.score([cache], np.stack([plan(5.0), plan(16.0), plan(12.0)])[None])
    assert group.terms["ego_progress"][0, 1] == 1.0  # the fast plan sets a higher bar in a group normalisation
    np.testing.assert_array_equal(group.total[0, :1], alone.total[0])
    for name in reward.names:
        np.testing.assert_array_equal(group.terms[name][0, :1], alone.terms[name][0])
    assert alone.terms["ego_progress"][0, 0] < 0.9


def test_invalid_plans_get_zero_reward_and_terms() -> None:
    cache = make_cache()
    plans = np.stack([plan(10.0), plan(10.0)])[None].copy()
    plans[0, 1, 3, 0] = np.nan
    batch = RuleReward("v1").score([cache], plans)
    assert batch.total[0, 0] > 0.9 and batch.total[0, 1] == 0.0
    assert all(v[0, 1] == 0.0 for v in batch.terms.values())
    assert failure(batch)[0, 1]
    every = RuleReward("v1").score([cache], np.full((1, 2, 8, 3), np.nan))
    assert not every.total.any() and failure(every).all()


def test_v2_total_is_the_epdms_without_extended_comfort() -> None:
    cache = make_cache("v2")
    plans = np.stack([plan(10.0), plan(7.0)])[None]
    batch = RuleReward("v2").score([cache], plans)
    expected = PDMScorer("v2").score(cache, plans[0])
    assert tuple(batch.terms) == TERMS["v2"] and "extended_comfort" not in batch.terms
    np.testing.assert_array_equal(batch.total[0], expected["pdm_score"])
    np.testing.assert_array_equal(batch.terms["lane_keeping"][0], expected["lane_keeping"])


def test_version_and_shape_mismatches_are_refused() -> None:
    with pytest.raises(ValueError, match="is v1; this reward scores v2"):
        RuleReward("v2").score([make_cache("v1")], plan(10.0)[None, None])
    with pytest.raises(ValueError, match=r"plans must be \(B, N, 8, 3\)"):
        RuleReward("v1").score([make_cache()], plan(10.0)[None])
    with pytest.raises(ValueError, match="2 scenes of plans for 1 metric caches"):
        RuleReward("v1").score([make_cache()], np.zeros((2, 1, 8, 3)))


def _scenes(b: int) -> tuple[list[MetricCache], np.ndarray]:
    rng = np.random.default_rng(0)
    caches = [make_cache(agents=[(agent_track(51, 15.0 + 10 * i, -2.0, vx=3.0), 0)]) for i in range(b)]
    speeds = rng.uniform(2, 15, (b, 4))
    lateral = rng.uniform(-8, 8, (b, 4))
    plans = np.stack([np.stack([plan(s, y) for s, y in zip(sv, yv)]) for sv, yv in zip(speeds, lateral)])
    plans[1, 2, 0, 1] = np.inf
    return caches, plans


def test_process_pool_matches_in_process_scoring() -> None:
    caches, plans = _scenes(5)
    serial = RuleReward("v1", num_workers=0).score(caches, plans)
    with RuleReward("v1", num_workers=2) as pooled:
        future = pooled.submit(caches, plans)
        again = pooled.score(caches, plans)  # the pool is reused
        result = future.result(timeout=120)
    for batch in (result, again):
        np.testing.assert_array_equal(batch.total, serial.total)
        assert batch.terms.keys() == serial.terms.keys()
        for name in serial.terms:
            np.testing.assert_array_equal(batch.terms[name], serial.terms[name])
    assert serial.total[1, 2] == 0.0 and len(np.unique(serial.total)) > 3


class ConstantReward:
    """A stand-in learned reward: ``total = value`` for every plan."""

    def __init__(self, value: float, version: str = "v1") -> None:
        self.value, self._version = value, version

    @property
    def names(self) -> tuple[str, ...]:
        return ("learned",)

    @property
    def version(self) -> str:
        return self._version

    def score(self, metric_caches: Sequence[MetricCache], plans: np.ndarray, features: Any = None) -> RewardBatch:
        shape = np.asarray(plans).shape[:2]
        return RewardBatch(np.full(shape, self.value), {"learned": np.full(shape, self.value)})


def test_mixed_reward_is_a_weighted_mean_with_every_term() -> None:
    cache = make_cache()
    plans = np.stack([plan(10.0), plan(10.0, lateral=12.0), np.full((8, 3), np.nan)])[None]
    rule = RuleReward("v1")
    learned = ConstantReward(0.5)
    assert isinstance(learned, LearnedReward)
    mixed = MixedReward([(3.0, rule), (1.0, learned)])
    assert mixed.names == (*TERMS["v1"], "learned") and mixed.version == "v1"
    batch = mixed.score([cache], plans)
    base = rule.score([cache], plans)
    np.testing.assert_allclose(batch.total[0, :2], 0.75 * base.total[0, :2] + 0.25 * 0.5)
    assert batch.total[0, 2] == 0.0 and batch.terms["learned"][0, 2] == 0.0  # invalid plan: 0 whatever
    assert batch.terms["learned"][0, 0] == 0.5
    np.testing.assert_array_equal(mixed.submit([cache], plans).result().total, batch.total)


def test_mixed_reward_refuses_inconsistent_components() -> None:
    with pytest.raises(ValueError, match="share term names"):
        MixedReward([(1.0, RuleReward("v1")), (1.0, RuleReward("v1"))])
    with pytest.raises(ValueError, match="different versions"):
        MixedReward([(1.0, RuleReward("v1")), (1.0, ConstantReward(0.5, "v2"))])
    with pytest.raises(ValueError, match="weights"):
        MixedReward([(0.0, RuleReward("v1"))])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_torch_backend_gives_the_same_reward_batch(version: str) -> None:
    """The torch backend scores the whole (B, N) batch at once: same totals and terms (binary ones identical)."""
    steps = 51 if version == "v1" else 41
    caches = [make_cache(version), make_cache(version, agents=[(agent_track(steps, 25.0, -2.0), 0)])]
    plans = np.stack([np.stack([plan(10.0), plan(6.0), plan(10.0, lateral=12.0), plan(3.0, lateral=2.0)])] * 2)
    plans[1, 3, 4, 0] = np.nan  # an invalid plan
    numpy_batch = RuleReward(version).score(caches, plans)
    reward = RuleReward(version, backend="torch")
    torch_batch = reward.score(caches, plans)
    assert "backend='torch'" in repr(reward)
    assert tuple(torch_batch.terms) == tuple(numpy_batch.terms)
    np.testing.assert_allclose(torch_batch.total, numpy_batch.total, atol=1e-9)
    for name, value in numpy_batch.terms.items():
        np.testing.assert_allclose(torch_batch.terms[name], value, atol=1e-9, err_msg=name)
    assert torch_batch.total[1, 3] == 0.0
    if version == "v1":  # (v2: the logged human hits the parked car too, so the human filter lifts NC)
        assert torch_batch.terms["no_at_fault_collisions"][1, 0] == 0.0
    with pytest.raises(ValueError, match="backend"):
        RuleReward(version, backend="jax")  # type: ignore[arg-type]
