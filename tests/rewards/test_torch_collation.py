"""Collation of metric caches for the torch scorer: concatenating per-scene batches equals collating the scenes
together, and ``RuleReward(backend="torch")`` collates each scene once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_composite import agent_track, make_cache, plan
from test_torch_pdm import town  # noqa: F401 (fixture)

from rewards.composite import RuleReward
from rewards.torch.metric_cache_batch import MetricCacheBatch
from rewards.torch.pdm_map import point_classes


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


def test_sub_cell_classes_match_the_polygon_grid(town: dict) -> None:  # type: ignore[type-arg]  # noqa: F811
    """Points read from their sub-cell (or tested exactly near an edge) get the categories and the single lane of the
    polygons that the numba grid says contain them: random points, polygon vertices and edge midpoints."""
    caches = [c for c, _ in town["v2"]]
    batch = MetricCacheBatch.collate(caches)
    rng = np.random.default_rng(0)
    points = []
    for cache in caches:
        xy = cache.map_grid.polygons.coords
        lo, hi = xy.min(0) - 3.0, xy.max(0) + 3.0
        pts = np.concatenate([rng.uniform(lo, hi, (4000, 2)), xy, (xy[1:] + xy[:-1]) / 2])[:6000]
        points.append(np.pad(pts, ((0, 6000 - len(pts)), (0, 0)), mode="edge"))
    cat, lane, several = point_classes(batch, torch.as_tensor(np.stack(points)))
    for s, cache in enumerate(caches):
        hits = cache.map_grid.contains(points[s])
        cats = np.where(hits >= 0, cache.map_categories[np.maximum(hits, 0)], 0)
        expected = np.bitwise_or.reduce(cats, axis=-1)
        lanes = np.where((cats & 2) > 0, hits, -1)
        count = (lanes >= 0).sum(-1)
        np.testing.assert_array_equal(cat[s].numpy(), expected)
        np.testing.assert_array_equal(several[s].numpy(), count > 1)
        np.testing.assert_array_equal(lane[s].numpy(), np.where(count == 1, lanes.max(-1), -1))
