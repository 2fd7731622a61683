"""Point-in-polygon queries of the torch CLS: the broad phase (polygons wholly right of a point skipped, groups
gathered without a sort) gives shapely's answers; episode metrics ignore the padded frames past every rollout."""

from __future__ import annotations

import numpy as np
import shapely
import torch
from shapely.geometry import Polygon

from rewards.torch import cls_polygons
from rewards.torch.cls_polygons import _compact_index, polygon_set, ring_edges
from rewards.torch.geometry import compact


def test_compact_index_keeps_the_true_entries_in_order() -> None:
    keep = torch.tensor(
        [[[False, True, False, True, True], [False] * 5], [[True] * 5, [False, False, False, False, True]]]
    )
    index, kept = _compact_index(keep)
    want_index, want_kept, _ = compact(keep)
    assert index.shape == want_index.shape == (2, 2, 5)
    torch.testing.assert_close(kept, want_kept)
    torch.testing.assert_close(torch.where(kept, index, -1), torch.where(want_kept, want_index, -1))
    assert index[0, 0, :3].tolist() == [1, 3, 4] and kept[0, 1].sum() == 0


def test_contains_matches_shapely_left_right_and_inside_of_many_polygons() -> None:
    rng = np.random.default_rng(0)
    polys = []
    for i in range(12):  # a row of star-shaped polygons along x, far from the origin as map coordinates are
        c = np.array([600000.0 + 15.0 * i, 4000000.0 + rng.normal(0, 2.0)])
        angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
        radii = rng.uniform(2.0, 7.0, 40)
        polys.append(Polygon(c + np.stack([radii * np.cos(angles), radii * np.sin(angles)], -1)))
    ps = polygon_set([[ring_edges(p) for p in polys]])
    pts = np.stack([rng.uniform(599990.0, 600180.0, 4000), rng.uniform(3999990.0, 4000010.0, 4000)], -1)
    xmin = np.array([p.bounds[0] for p in polys])
    near = np.stack([xmin - 2e-6, np.array([p.centroid.y for p in polys])], -1)  # just left of each polygon
    pts = np.concatenate([pts, near])
    got = cls_polygons.contains(ps, torch.as_tensor(pts)[None])[0].numpy()
    want = np.stack([shapely.contains_xy(p, pts[:, 0], pts[:, 1]) for p in polys], -1)
    assert want.any() and (~want).any()
    np.testing.assert_array_equal(got, want)


def test_episode_metrics_ignore_the_padded_frames() -> None:
    from bev_warp.env import BEVWarpEnv, EnvConfig, expert_trajectories, rollout_of
    from bev_warp.testing import fixture_map_api, fixture_scenario
    from rewards.torch.closed_loop import episode_metrics
    from rewards.torch.cls_metrics import cls_metrics

    env = BEVWarpEnv(EnvConfig(observation="none"))
    state = env.reset([fixture_scenario(1, 61), fixture_scenario(2, 41)], fixture_map_api())
    for _ in range(3):
        plans = expert_trajectories(state)
        plans[..., 1] += 0.3 * plans[..., 0] / 8.0  # drift left: the metrics are not all 1
        state, *_ = env.step(state, plans)
    rollout = rollout_of(state)
    assert int(rollout.length.max()) < rollout.ego.shape[1]
    got, want = episode_metrics(state.episodes.world, rollout), cls_metrics(state.episodes.world, rollout)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)
