"""``diffplan data dagger``: closed-loop states of a learner, labelled by an expert, in the feature cache's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from closed_loop_fixtures import tiny_generator
from random_cache import write_random_cache

from planners.checkpoint import CheckpointRecord, write
from simulation.closed_loop import ClosedLoopSimulator
from simulation.datasets.nuplan_db import write_log
from simulation.datasets.scenes import extract_scenarios
from simulation.datasets.testing import make_log_data
from simulation.features import PLANNER_RASTER, observation_features
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map, write_fixture_maps
from simulation.protocols import Observation
from simulation.types import Trajectory
from training.cli import main as diffplan
from training.dagger import DaggerConfig, DaggerError, _target, collect, collect_scenario
from training.data import FeatureCacheDataset, FeatureCacheError, PlannerDataModule, write_meta

T = np.arange(1, 9) * 0.5


class Straight:
    """Drives straight ahead at ``speed`` (m/s); remembers the observations it was asked about."""

    def __init__(self, speed: float, fail: bool = False) -> None:
        self.speed, self.fail = speed, fail
        self.seen: list[Observation] = []
        self.name = f"straight_{speed}"

    def plan(self, observation: Observation) -> Trajectory:
        self.seen.append(observation)
        if self.fail:
            raise RuntimeError("no plan")
        return Trajectory(np.stack([self.speed * T, np.zeros(8), np.zeros(8)], -1))


@pytest.fixture(scope="module")
def scenario_and_map():
    log = make_log_data()
    return extract_scenarios(log)[0], MapAPI.from_data(build_fixture_map())


def test_labels_every_kth_iteration_of_the_learners_own_rollout(scenario_and_map) -> None:
    scenario, map_api = scenario_and_map
    learner, expert = Straight(2.0), Straight(7.0)
    got = collect_scenario(scenario, map_api, learner, expert, DaggerConfig(every=5), PLANNER_RASTER)
    driven = ClosedLoopSimulator().run(scenario, Straight(2.0), map_api)
    iterations = len(driven.ego_states)
    labelled = list(range(5, iterations, 5))  # iteration 0 is a logged state: not labelled
    assert got.tokens == [f"{scenario.token}:{i:03d}" for i in labelled] and got.expert_failures == 0
    # the labels do not steer: the rollout is the learner's alone (beta = 0)
    np.testing.assert_array_equal(got.history.ego_states, driven.ego_states)
    # each sample: the features of the observation at that iteration, and the expert's plan from it
    assert len(expert.seen) == len(labelled)
    for i, feats, target, observation in zip(labelled, got.features, got.targets, expert.seen, strict=True):
        np.testing.assert_array_equal(observation.current_state, driven.ego_states[i])
        want = observation_features(observation, PLANNER_RASTER)
        np.testing.assert_array_equal(feats.bev, want.bev)
        np.testing.assert_array_equal(feats.ego_status, want.ego_status)
        np.testing.assert_array_equal(target, np.stack([7.0 * T, np.zeros(8), np.zeros(8)], -1).astype(np.float32))
        assert target.dtype == np.float32


def test_beta_one_drives_the_expert_and_beta_is_reproducible(scenario_and_map) -> None:
    scenario, map_api = scenario_and_map
    sim = ClosedLoopSimulator()
    got = collect_scenario(scenario, map_api, Straight(2.0), Straight(7.0), DaggerConfig(every=50, beta=1.0),
                           PLANNER_RASTER)  # fmt: skip
    np.testing.assert_array_equal(got.history.ego_states, sim.run(scenario, Straight(7.0), map_api).ego_states)
    half = [
        collect_scenario(
            scenario, map_api, Straight(2.0), Straight(7.0), DaggerConfig(every=50, beta=0.5, seed=s), PLANNER_RASTER
        ).history.ego_states  # fmt: skip
        for s in (0, 0, 1)
    ]
    np.testing.assert_array_equal(half[0], half[1])  # the same seed and scenario: the same mixture
    assert not np.array_equal(half[0], half[2])
    learner_alone = sim.run(scenario, Straight(2.0), map_api).ego_states
    for mixed in half:  # between the two: faster than the learner alone, slower than the expert alone
        assert got.history.ego_states[-1, 0] > mixed[-1, 0] > learner_alone[-1, 0]


def test_an_expert_that_fails_leaves_the_state_unlabelled(scenario_and_map) -> None:
    scenario, map_api = scenario_and_map
    learner = Straight(2.0)
    got = collect_scenario(scenario, map_api, learner, Straight(7.0, fail=True), DaggerConfig(every=10, beta=0.5),
                           PLANNER_RASTER)  # fmt: skip
    assert got.tokens == [] and got.expert_failures > 0
    # a mixture step whose expert failed drives the learner's plan: the rollout is the learner's alone
    np.testing.assert_array_equal(
        got.history.ego_states, ClosedLoopSimulator().run(scenario, Straight(2.0), map_api).ego_states
    )


def test_config_and_target_errors() -> None:
    with pytest.raises(ValueError, match="every"):
        DaggerConfig(every=0)
    with pytest.raises(ValueError, match="beta"):
        DaggerConfig(beta=1.5)
    with pytest.raises(ValueError, match="16 poses at 0.25 s"):
        _target(np.zeros((16, 3)), 0.25)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dagger")
    log = make_log_data()
    write_log(log, root / "data" / "splits" / "synth_train" / f"{log.log_name}.db")
    write_fixture_maps(root / "maps")
    write(root / "generator.ckpt", CheckpointRecord.of(tiny_generator()))
    return root


def test_the_command_writes_a_cache_split_that_trains_with_the_logged_one(data_root: Path, tmp_path: Path) -> None:
    raster = PLANNER_RASTER.to_dict()
    cache = write_random_cache(tmp_path / "cache", {"synth_train": 12}, PLANNER_RASTER.height_px, raster=raster)
    argv = ["data", "dagger", "--ckpt", str(data_root / "generator.ckpt"), "--data-root", str(data_root / "data"),
            "--maps-root", str(data_root / "maps"), "--splits", "synth_train", "--cache", str(cache),
            "--suffix", "r1", "--every", "30"]  # fmt: skip
    torch.set_num_threads(1)
    assert diffplan(argv) == 0
    shards = list((cache / "synth_train_r1").glob("shard_*.npz"))
    assert len(shards) == 1
    with np.load(shards[0]) as data:
        n = len(data["tokens"])
        assert n > 0 and data["trajectory"].shape == (n, 8, 3) and data["bev"].dtype == np.uint8
        assert all(":" in str(t) for t in data["tokens"])
        first = data["tokens"][0]
    # aggregated with the logged split, in the order given
    both = FeatureCacheDataset(cache, ["synth_train", "synth_train_r1"])
    assert len(both) == 12 + n and both[12]["tokens"] == str(first)
    module = PlannerDataModule(str(cache), train_split=["synth_train", "synth_train_r1"], batch_size=4)
    assert len(module.dataset("train")) == 12 + n
    # a second run finds the shard and leaves it as it is
    stamp = shards[0].stat().st_mtime_ns
    assert diffplan(argv) == 0 and shards[0].stat().st_mtime_ns == stamp


def test_bad_input_is_a_clear_error(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, data, maps = data_root / "generator.ckpt", data_root / "data", data_root / "maps"
    config = DaggerConfig()
    with pytest.raises(DaggerError, match="no feature cache"):
        collect(ckpt, data, maps, ["synth_train"], tmp_path / "nothing", "r1", config)
    write_meta(tmp_path, {"bev_shape": list(PLANNER_RASTER.shape), "raster": PLANNER_RASTER.to_dict()})
    for suffix in ("../up", "", ".hidden"):
        with pytest.raises(DaggerError, match="suffix"):
            collect(ckpt, data, maps, ["synth_train"], tmp_path, suffix, config)
    with pytest.raises(DaggerError, match="missing.ckpt does not exist"):
        collect(data_root / "missing.ckpt", data, maps, ["synth_train"], tmp_path, "r1", config)
    with pytest.raises(DaggerError, match="synth_nowhere"):
        collect(ckpt, data, maps, ["synth_nowhere"], tmp_path, "r1", config)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(DaggerError, match="every one of the 1 logs failed"):
        collect(tmp_path / "bad.ckpt", data, maps, ["synth_train"], tmp_path, "r1", config)
    assert not (tmp_path / "synth_train_r1").exists()
    assert diffplan(["data", "dagger", "--ckpt", str(ckpt), "--data-root", str(data), "--maps-root", str(maps),
                     "--cache", str(tmp_path), "--beta", "2"]) == 1  # fmt: skip
    assert "beta must lie in [0, 1]" in capsys.readouterr().err


def test_a_list_of_splits_names_the_missing_one(feature_cache: Path) -> None:
    with pytest.raises(FeatureCacheError, match="'synth_train_r9' has no shards"):
        FeatureCacheDataset(feature_cache, ["synth_train", "synth_train_r9"])
    with pytest.raises(FeatureCacheError, match="no split given"):
        FeatureCacheDataset(feature_cache, [])
