"""Collation of metric caches for the torch scorer: concatenating per-scene batches equals collating the scenes
together, and ``RuleReward(backend="torch")`` collates each scene once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_composite import agent_track, make_cache, plan

from rewards.composite import RuleReward
from rewards.torch.metric_cache_batch import MetricCacheBatch


def _caches(version: str) -> list:  # type: ignore[type-arg]
    steps = 51 if version == "v1" else 41
    return [make_cache(version, agents=[(agent_track(steps, 25.0, -2.0), 0), (agent_track(steps, 40.0, 2.0), 0)]),
            make_cache(version)]  # fmt: skip


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_concat_of_single_scenes_equals_collate(version: str) -> None:
    caches = _caches(version)
    together = MetricCacheBatch.collate(caches)
    joined = MetricCacheBatch.concat([MetricCacheBatch.collate([c]) for c in caches])
    assert joined.tokens == together.tokens
    for name, value in vars(together).items():
        if isinstance(value, torch.Tensor):
            assert getattr(joined, name).shape == value.shape, name
            assert torch.equal(getattr(joined, name), value), name
    with pytest.raises(ValueError, match="at least one"):
        MetricCacheBatch.concat([])


def test_rule_reward_torch_collates_each_scene_once(monkeypatch: pytest.MonkeyPatch) -> None:
    caches = _caches("v1")
    plans = np.stack([np.stack([plan(10.0), plan(6.0), plan(3.0, lateral=2.0)])] * 2)
    calls = []
    collate = MetricCacheBatch.collate
    monkeypatch.setattr(
        MetricCacheBatch, "collate", staticmethod(lambda cs, *a: calls.append(len(cs)) or collate(cs, *a))
    )
    reward = RuleReward("v1", backend="torch", scene_cache_size=2)
    first = reward.score(caches, plans)
    second = reward.score(caches, plans)
    assert calls == [1, 1]  # once per scene, not again on the second call
    np.testing.assert_array_equal(first.total, second.total)
    np.testing.assert_allclose(first.total, RuleReward("v1").score(caches, plans).total, atol=1e-9)
    reward.score(caches[:1], plans[:1])
    assert calls == [1, 1]
    other = make_cache("v1")  # same token, another object: collated again, and the oldest entry leaves the cache
    reward.score([other], plans[:1])
    assert calls == [1, 1, 1] and len(reward._scene_cache) == 2
