"""``diffplan data dagger``: closed-loop states of a learner, labelled by an expert, in the feature cache's format."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from closed_loop_fixtures import tiny_generator, write_data_root
from random_cache import write_random_cache

from planners.checkpoint import CheckpointRecord, write
from simulation.closed_loop import ClosedLoopSimulator
from simulation.datasets.scenes import extract_scenarios, scene_at
from simulation.datasets.testing import make_log_data
from simulation.features import PLANNER_RASTER, observation_features
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map
from simulation.protocols import Observation
from simulation.types import Trajectory
from training.cli import main as diffplan
from training.dagger import (
    DaggerConfig,
    DaggerError,
    _target,
    closed_loop_scene,
    collect,
    collect_scenario,
    learner_planner,
    metric_cache_labeller,
)
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


def _frame_of(log) -> dict[str, int]:
    return {str(t): i for i, t in enumerate(log.frame_tokens)}


def _states_at(scenario, map_api, learner, iterations, **sim_config):
    """The simulator's states at ``iterations`` of ``learner``'s rollout."""
    sim = ClosedLoopSimulator(**sim_config)
    state, out = sim.reset(scenario, map_api), {}
    while not state.done:
        if state.iteration in iterations:
            out[state.iteration] = state
        state = sim.step(state, learner.plan(sim.observe(state)))
    return out


def test_a_closed_loop_scene_is_the_logged_scene_with_the_simulated_ego(scenario_and_map) -> None:
    scenario, map_api = scenario_and_map
    log = make_log_data()
    states = _states_at(scenario, map_api, Straight(2.0), {5, 30})
    state = states[30]
    scene = closed_loop_scene(log, _frame_of(log), state, "tok:030")
    assert scene is not None and scene.token == "tok:030" and scene.current_index == 3
    assert scene.route_roadblock_ids == tuple(scenario.route_roadblock_ids)
    # the current state and the 2 Hz history are the simulated ones: 0, 5, 10, 15 steps of 0.1 s back
    for k in range(4):
        np.testing.assert_array_equal(scene.ego.states[3 - k], state.ego_states[-1 - 5 * k])
    np.testing.assert_array_equal(scene.current_ego, state.current_state)
    # the rest is the log's: the scene cut at the same frame, its agents and the logged ego future
    current = _frame_of(log)[str(scenario.frame_tokens[state.frame])]
    logged = scene_at(log, current + 10 * np.arange(-3, 11), 3)
    np.testing.assert_array_equal(scene.ego.states[4:], logged.ego.states[4:])
    np.testing.assert_array_equal(scene.agents.boxes, logged.agents.boxes)
    np.testing.assert_array_equal(scene.timestamps_us, logged.timestamps_us)
    # the learner drove slower than the log: the simulated ego is not where the log was
    assert np.linalg.norm(scene.current_ego[:2] - logged.current_ego[:2]) > 1.0
    # a state whose 5 s of logged future (100 frames at 20 Hz) leave the log has no scene
    token = str(scenario.frame_tokens[state.frame])
    for frame, has_scene in ((log.num_frames - 101, True), (log.num_frames - 100, False)):
        assert (closed_loop_scene(log, {token: frame}, state, "t") is not None) == has_scene


def test_on_log_replay_the_closed_loop_metric_cache_is_the_logged_scenes(scenario_and_map, tmp_path: Path) -> None:
    """An ego that follows the log (the log-playback controller) is at the logged state: its metric cache is
    the one ``diffplan data cache --metric`` builds for the logged scene at that frame, field for field."""
    from planners.rule_based import PDMClosedPlanner
    from simulation.metric_cache import MetricCache, build_metric_cache

    scenario, map_api = scenario_and_map
    log = make_log_data()
    state = _states_at(scenario, map_api, Straight(2.0), {20}, controller="log_playback")[20]
    label = metric_cache_labeller(log, map_api, tmp_path, "v1")
    assert label(state, f"{scenario.token}:020")
    got = MetricCache.load(tmp_path / log.log_name / f"{scenario.token}:020.npz")
    current = _frame_of(log)[str(scenario.frame_tokens[state.frame])]
    logged = scene_at(log, current + 10 * np.arange(-3, 11), 3)
    want = build_metric_cache(replace(logged, route_roadblock_ids=tuple(scenario.route_roadblock_ids)), map_api,
                              PDMClosedPlanner(), "v1")  # fmt: skip
    assert got.token == f"{scenario.token}:020" and want.token == logged.token
    for name in ("current_state", "agent_boxes", "agent_valid", "centerline", "reference_states", "human_trajectory",
                 "human_states", "history_states", "reference_trajectory"):  # fmt: skip
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("route_lane_ids", "map_ids", "agent_track_ids", "red_connector_ids"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    # a state whose scene leaves the log is dropped, nothing stored
    short = replace(log, frame_tokens=log.frame_tokens[: current + 60])
    assert not metric_cache_labeller(short, map_api, tmp_path, "v1")(state, "late")
    assert not (tmp_path / log.log_name / "late.npz").exists()


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


def test_a_tag_keeps_two_collections_tokens_apart(scenario_and_map) -> None:
    scenario, map_api = scenario_and_map
    config = DaggerConfig(every=50)
    plain = collect_scenario(scenario, map_api, Straight(2.0), Straight(7.0), config, PLANNER_RASTER)
    tagged = collect_scenario(scenario, map_api, Straight(2.0), Straight(7.0), config, PLANNER_RASTER, tag="r2")
    assert plain.tokens and tagged.tokens == [t.replace(":", ":r2:", 1) for t in plain.tokens]


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
    root = write_data_root(tmp_path_factory.mktemp("dagger"), "synth_train")
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


def test_collected_states_have_metric_caches_that_the_rl_data_serves(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from planners.reranked import RerankedPlanner
    from training.rl_data import RLDataModule

    assert isinstance(learner_planner(data_root / "pair.ckpt", 0).model, RerankedPlanner)
    assert not isinstance(learner_planner(data_root / "generator.ckpt", 0).model, RerankedPlanner)
    raster = PLANNER_RASTER.to_dict()
    cache = write_random_cache(tmp_path / "cache", {"synth_train": 4}, PLANNER_RASTER.height_px, raster=raster)
    metric = tmp_path / "metric"
    torch.set_num_threads(1)
    # (a pair drives as planner=reranked, above; the generator drives faster, for the test's time)
    gen = data_root / "generator.ckpt"
    assert diffplan(["data", "dagger", "--ckpt", str(gen), "--data-root", str(data_root / "data"),
                     "--maps-root", str(data_root / "maps"), "--splits", "synth_train", "--cache", str(cache),
                     "--suffix", "cl", "--every", "40", "--metric-cache", str(metric)]) == 0  # fmt: skip
    (shard,) = (cache / "synth_train_cl").glob("shard_*.npz")
    with np.load(shard) as data:
        tokens = [str(t) for t in data["tokens"]]
    log_name = shard.stem.removeprefix("shard_")
    assert tokens and sorted(p.stem for p in (metric / log_name).glob("*.npz")) == sorted(tokens)
    # the suffix is in every token: another collection's states of these scenarios get caches of their own
    assert all(t.split(":")[1] == "cl" for t in tokens)
    # the closed-loop split trains beside others (a list concatenates), each state with its own metric cache
    data = RLDataModule(str(cache), str(metric), str(data_root / "data"), str(data_root / "maps"),
                        train_split=["synth_train_cl", "synth_train_cl"], val_split="synth_train_cl")  # fmt: skip
    train = data.dataset("train")
    assert len(train) == 2 * len(tokens) and train.tokens == tokens + tokens
    sample = train[len(tokens) + 1]
    assert sample["tokens"] == tokens[1] and sample["metric_cache"].token == tokens[1]
    # a state whose metric cache is gone is left out with a warning, never built from the logs
    (metric / log_name / f"{tokens[0]}.npz").unlink()
    with caplog.at_level("WARNING"):
        val = RLDataModule(str(cache), str(metric), str(data_root / "data"), str(data_root / "maps"),
                           val_split="synth_train_cl").dataset("val")  # fmt: skip
    assert val.tokens == tokens[1:] and "1 of its" in caplog.text and "left out" in caplog.text
    assert not (metric / log_name / f"{tokens[0]}.npz").exists()


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
    with pytest.raises(DaggerError, match="not with --reactive"):
        collect(ckpt, data, maps, ["synth_train"], tmp_path, "r1", DaggerConfig(reactive=True), 1, tmp_path / "m")
    with pytest.raises(DaggerError, match="v1 or v2"):
        collect(ckpt, data, maps, ["synth_train"], tmp_path, "r1", config, 1, tmp_path / "m", "v3")
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
