"""Collation of metric caches for the torch scorer: concatenating per-scene batches equals collating the scenes
together, ``RuleReward(backend="torch")`` collates each scene once, and the map lookups built at collation (sub-cell
classes, partial lookups, centre-line bounds) agree with the full computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_composite import agent_track, make_cache, plan
from test_torch_pdm import town  # noqa: F401 (fixture)

from rewards.composite import RuleReward
from rewards.torch.metric_cache_batch import MetricCacheBatch
from rewards.torch.pdm_geometry import centerline_distance_exceeds, project_on_centerline
from rewards.torch.pdm_map import ego_area, ego_area_rows, point_classes


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


def test_category_subsets_and_contact_rows_match_the_full_lookup(town: dict) -> None:  # type: ignore[type-arg]  # noqa: F811
    """The lookups that test exactly only near some polygons (the drivable bit of the corners, the on-route and
    intersection bits of the centre) and the per-row flags at contacts equal the full lookup on those bits / rows."""
    caches = [c for c, _ in town["v2"]]
    batch = MetricCacheBatch.collate(caches)
    rng = np.random.default_rng(1)
    points = []
    for cache in caches:
        xy = cache.map_grid.polygons.coords
        lo, hi = xy.min(0) - 3.0, xy.max(0) + 3.0
        points.append(np.concatenate([rng.uniform(lo, hi, (3000, 2)), xy, (xy[1:] + xy[:-1]) / 2]))
    n = min(len(p) for p in points) // 6 * 6
    pts = torch.as_tensor(np.stack([p[:n] for p in points]))
    full = point_classes(batch, pts)[0]
    for bits in (1, 4 | 8, 8):
        assert torch.equal(point_classes(batch, pts, bits)[0] & bits, full & bits)
    ego = pts.reshape(len(caches), 1, -1, 6, 2)  # rows of 6 points: corners, centre, rear axle
    areas = ego_area(batch, ego)
    partial = ego_area(batch, ego, contact_columns=False)
    assert torch.equal(partial[..., 1:4], areas[..., 1:4]) and not partial[..., [0, 4]].any()
    s_i, t_i = torch.nonzero(torch.ones(ego.shape[0], ego.shape[2], dtype=torch.bool), as_tuple=True)
    rows = ego_area_rows(batch, ego, s_i, torch.zeros_like(s_i), t_i)
    assert torch.equal(rows, areas[s_i, 0, t_i]) and bool(areas[..., 0].any())


def test_centerline_distance_bounds_decide_as_the_projection(town: dict) -> None:  # type: ignore[type-arg]  # noqa: F811
    """``centerline_distance_exceeds`` (chunk bounds, projection only in between) equals projecting every point,
    including points at the limit's distance from the line."""
    caches = [c for c, _ in town["v1"]]
    batch = MetricCacheBatch.collate(caches)
    rng = np.random.default_rng(2)
    points = []
    for cache in caches:
        line = cache.centerline[:, :2]
        seg = rng.integers(0, len(line) - 1, 3000)
        t = rng.uniform(0, 1, (3000, 1))
        base = line[seg] + t * (line[seg + 1] - line[seg])
        d = line[seg + 1] - line[seg]
        normal = np.stack([-d[:, 1], d[:, 0]], -1) / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
        offset = rng.choice([0.0, 0.3, 0.5, 0.5 + 1e-9, 0.7, 5.0], (3000, 1)) * rng.choice([-1.0, 1.0], (3000, 1))
        points.append(base + offset * normal)
    pts = torch.as_tensor(np.stack(points))
    _, distance = project_on_centerline(batch, pts)
    for limit in (0.5, 2.0):
        assert torch.equal(centerline_distance_exceeds(batch, pts, limit), distance > limit)
