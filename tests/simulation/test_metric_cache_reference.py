"""The metric cache's progress reference (PDM-Closed's 10 Hz trajectory, as NAVSIM caches it) and its versioning."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_metric_cache import _scene

from simulation.evaluation.sources import MetricCacheProvider, build_planner, metric_cache_path, resolve_planner
from simulation.geometry import local_to_global
from simulation.kinematics import NAVSIM_LQR, track_and_propagate
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map
from simulation.metric_cache import (
    CACHE_FORMAT_VERSION,
    FOLDER_META_NAME,
    MetricCache,
    MetricCacheError,
    build_metric_cache,
    read_folder_meta,
    write_folder_meta,
)
from simulation.types import StateIndex, Trajectory

ROOT = Path(__file__).resolve().parents[2]
ROUTE = ("2", "103", "4")


def _fine_poses() -> np.ndarray:
    """``(50, 3)`` 10 Hz local poses over 5 s: braking from 5 m/s with a jerk, drifting 0.4 m left."""
    t = np.arange(1, 51) * 0.1
    poses = np.zeros((50, 3))
    poses[:, 0] = 5.0 * t - 0.6 * t**2 + 0.08 * t**3
    poses[:, 1] = 0.4 * (1 - np.cos(np.pi * np.minimum(t, 4.0) / 4.0)) / 2
    poses[:, 2] = np.gradient(poses[:, 1], poses[:, 0])
    return poses


class _Stub:
    """A reference planner with PDM-Closed's (future) interface: its 10 Hz trajectory and a 0.5 s plan."""

    name = "stub"

    def __init__(self, version: str = "v1") -> None:
        self.version = version
        self.calls: list[str] = []

    def reference_trajectory(self, observation: object) -> Trajectory:
        self.calls.append("reference_trajectory")
        return Trajectory(_fine_poses(), 0.1)

    def plan(self, observation: object) -> Trajectory:
        self.calls.append("plan")
        return Trajectory(_fine_poses()[4:40:5], 0.5)


class _PlanOnly:
    name = "plan_only"

    def plan(self, observation: object) -> Trajectory:
        return Trajectory(_fine_poses()[4:40:5], 0.5)


@pytest.fixture(scope="module")
def fixture_api() -> MapAPI:
    return MapAPI.from_data(build_fixture_map())


def test_reference_is_the_10hz_trajectory_tracked_as_navsim_does(fixture_api: MapAPI) -> None:
    scene = _scene(20.0, 5.0, ROUTE)
    stub = _Stub()
    cache = build_metric_cache(scene, fixture_api, stub, "v1")
    assert stub.calls == ["reference_trajectory"]
    np.testing.assert_array_equal(cache.reference_trajectory, _fine_poses())
    assert cache.reference_interval_s == 0.1
    # NAVSIM: the current state then the trajectory, sampled at 0, 0.1, ... 4 s (here its own first 41 states),
    # tracked with NAVSIM's tracker
    current = np.asarray(scene.current_ego, dtype=np.float64)
    knots = np.concatenate([current[None, :3], local_to_global(_fine_poses()[:40], current[:3])])
    expected = track_and_propagate(current, knots[None], lqr=NAVSIM_LQR)[0]
    np.testing.assert_allclose(cache.reference_states, expected, atol=1e-12, rtol=0)
    # the old path (the 0.5 s plan at 10 Hz) gives another reference
    old = build_metric_cache(scene, fixture_api, _PlanOnly(), "v1")
    assert old.reference_interval_s == 0.5 and old.reference_trajectory.shape == (8, 3)
    assert np.abs(old.reference_states[:, StateIndex.X] - cache.reference_states[:, StateIndex.X]).max() > 0.01


def test_round_trip_keeps_the_reference_trajectory(tmp_path: Path, fixture_api: MapAPI) -> None:
    cache = build_metric_cache(_scene(20.0, 5.0, ROUTE), fixture_api, _Stub(), "v2")
    back = MetricCache.load(cache.save(tmp_path / "c.npz"))
    np.testing.assert_array_equal(back.reference_trajectory, cache.reference_trajectory)
    assert back.reference_interval_s == 0.1
    np.testing.assert_array_equal(back.reference_states, cache.reference_states)


def _make_old(path: Path) -> None:
    """Rewrite a cache file as format 1 wrote it: no reference trajectory, another reference."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("reference_trajectory")}
    meta = json.loads(str(arrays["meta"]))
    meta["format_version"] = 1
    del meta["reference_interval_s"]
    arrays["meta"] = np.array(json.dumps(meta))
    arrays["reference_states"] = np.zeros_like(arrays["reference_states"])
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_old_cache_is_rebuilt_not_reused(tmp_path: Path, fixture_api: MapAPI) -> None:
    scene = _scene(20.0, 5.0, ROUTE)
    provider = MetricCacheProvider(_Stub(), "v1", str(tmp_path))
    fresh = provider(scene, fixture_api)
    path = metric_cache_path(tmp_path, scene.log_name, scene.token)
    assert path.exists() and read_folder_meta(tmp_path) == {
        "kind": "metric_cache", "format_version": CACHE_FORMAT_VERSION, "version": "v1"
    }  # fmt: skip
    _make_old(path)
    (tmp_path / FOLDER_META_NAME).write_text(json.dumps({"format_version": 1, "version": "v1"}))
    again = MetricCacheProvider(_Stub(), "v1", str(tmp_path))
    cache = again(scene, fixture_api)
    assert again.rebuilt == 1
    np.testing.assert_array_equal(cache.reference_states, fresh.reference_states)
    stored = MetricCache.load(path)  # rewritten in the current format
    np.testing.assert_array_equal(stored.reference_trajectory, _fine_poses())
    assert read_folder_meta(tmp_path)["format_version"] == CACHE_FORMAT_VERSION
    third = MetricCacheProvider(_PlanOnly(), "v1", str(tmp_path))  # a current file is reused, not rebuilt
    np.testing.assert_array_equal(third(scene, fixture_api).reference_trajectory, _fine_poses())
    assert third.rebuilt == 0


def test_folder_of_the_other_scorer_version_is_refused(tmp_path: Path, fixture_api: MapAPI) -> None:
    write_folder_meta(tmp_path, "v2")
    with pytest.raises(MetricCacheError, match="version v2"):
        MetricCacheProvider(_Stub(), "v1", str(tmp_path))(_scene(20.0, 5.0, ROUTE), fixture_api)


class _NoVersion:
    def __init__(self, num_poses: int = 8) -> None:
        self.num_poses = num_poses


def test_version_is_passed_only_where_the_planner_takes_it() -> None:
    assert build_planner(_Stub, version="v2").version == "v2"
    assert build_planner(_NoVersion, num_poses=3, version="v2").num_poses == 3
    resolved = resolve_planner(functools.partial(_Stub, version="v2"))
    assert isinstance(resolved, _Stub) and resolved.version == "v2"
    assert isinstance(resolve_planner(functools.partial(_NoVersion, version="v1")), _NoVersion)
    stub = _Stub()
    assert resolve_planner(stub) is stub
    assert MetricCacheProvider(functools.partial(_Stub, version="v2"), "v2").reference_planner.version == "v2"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_protocol_reference_planner_is_pdm_closed_of_its_version(version: str) -> None:
    cfg = OmegaConf.load(ROOT / "configs" / "bench" / "protocol" / f"navsim_{version}.yaml")
    ref = cfg.metric_cache.reference_planner
    assert ref._target_ == "planners.rule_based.PDMClosedPlanner" and ref.version == version
    provider = instantiate(cfg.metric_cache, cache_dir=None, _convert_="all")
    assert type(provider.reference_planner).__name__ == "PDMClosedPlanner"
    assert getattr(provider.reference_planner, "version", version) == version
