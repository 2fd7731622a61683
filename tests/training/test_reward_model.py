"""The learned scene reward: the pair rule, the preference cache, the Bradley-Terry loss, the reward interface, and
the whole chain through the CLI on the fixture city (``diffplan data prefs`` -> ``diffplan fit`` of the reward model,
exact resume -> the learned reward -> the reranker pair in the benchmark)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from planners.checkpoint import CheckpointRecord, load_planner, write
from planners.reranked import RerankedPlanner
from planners.reward_model import RewardModel, reward_model_config
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from rewards.composite import MixedReward, RewardBatch
from rewards.learned import LEARNED_TERM, LearnedReward
from simulation.datasets.testing import write_fixture_data
from simulation.features import AGENT_FEATURES, EGO_STATUS_DIM, PLANNER_RASTER, PlannerInput
from training.cache import build_cache
from training.cli import main as diffplan
from training.lightning_cli import run_cli
from training.prefs import Pairs, PrefsCacheError, ScenePrefs, label_pairs, read_scene, read_split, write_scene
from training.reward_model import bradley_terry_loss, load_learned_reward
from training.rl_support import build_reward, rule_reward_of, submit

CONFIG = Path("configs/train/reward_model.yaml")
HARD = ("no_at_fault_collisions", "drivable_area_compliance")


# ------------------------------------------------------------------ the loss and the pair rule
def test_bradley_terry_loss_by_hand() -> None:
    win, lose = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = (math.log(1 + math.exp(-2)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert float(bradley_terry_loss(win, lose)) == pytest.approx(expected, rel=1e-6)
    mask = torch.tensor([True, False, False])
    assert float(bradley_terry_loss(win, lose, mask)) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert float(bradley_terry_loss(win, lose, torch.zeros(3, dtype=torch.bool))) == 0.0


def _pairs(p: Pairs) -> set[tuple[int, int]]:
    """``{(winner, loser)}``."""
    return {(int(a), int(b)) if label else (int(b), int(a)) for a, b, label in zip(p.a, p.b, p.label, strict=True)}


def test_pair_rule_dominance_margin_and_ties() -> None:
    # 0: clean, 0.80; 1: clean, 0.78 (tie with 0); 2: collides, 0.90 (dominated by 0, 1 and 3 despite its total);
    # 3: clean, 0.60; 4: off-road, 0.97
    total = np.array([0.80, 0.78, 0.90, 0.60, 0.97])
    hard = {HARD[0]: np.array([1.0, 1.0, 0.0, 1.0, 1.0]), HARD[1]: np.array([1.0, 1.0, 1.0, 1.0, 0.0])}
    pairs = label_pairs(total, hard, margin=0.05)
    expected = {(0, 2), (1, 2), (3, 2), (0, 3), (1, 3), (0, 4), (1, 4), (3, 4)}
    # 2 vs 4: neither dominates (one collides, the other leaves the road): the margin rule, 0.97 - 0.90 >= 0.05
    expected.add((4, 2))
    assert _pairs(pairs) == expected  # (0, 1) tie dropped
    by_pair = {
        (int(a), int(b)) if lab else (int(b), int(a)): (bool(d), float(m))
        for a, b, lab, d, m in zip(pairs.a, pairs.b, pairs.label, pairs.dominance, pairs.margin, strict=True)
    }
    assert by_pair[(0, 2)] == (True, pytest.approx(0.10))
    assert by_pair[(0, 3)] == (False, pytest.approx(0.20))
    assert by_pair[(4, 2)][0] is False


def test_pair_rule_shuffles_sides_and_caps() -> None:
    total = np.linspace(0.0, 1.0, 6)
    rng = np.random.default_rng(0)
    pairs = label_pairs(total, {}, margin=0.1, max_pairs=8, rng=rng)
    assert len(pairs) == 8 and 0 < int(pairs.label.sum()) < 8  # both orders occur
    for w, lo in _pairs(pairs):
        assert total[w] > total[lo]
    invalid = label_pairs(total, {}, margin=0.1, valid=np.array([True, True, False, True, True, True]))
    assert all(2 not in pair for pair in _pairs(invalid)) and len(invalid) == 10


# ------------------------------------------------------------------ the cache
def _scene(token: str = "tok0") -> ScenePrefs:
    cands = np.random.default_rng(0).normal(size=(4, 8, 3)).astype(np.float32)
    total = np.array([0.9, 0.1, 0.5, 0.5], dtype=np.float32)
    return ScenePrefs(token, "v2", cands, total, label_pairs(total, {}, 0.05, rng=np.random.default_rng(1)))


def test_cache_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    scene = _scene()
    path = write_scene(tmp_path / "synth_train" / "tok0.npz", scene)
    assert not list(path.parent.glob("*.tmp"))  # atomic: nothing left behind
    back = read_scene(path)
    assert back.token == "tok0" and back.protocol == "v2"
    np.testing.assert_array_equal(back.candidates, scene.candidates)
    for name in ("a", "b", "label", "margin", "dominance"):
        np.testing.assert_array_equal(getattr(back.pairs, name), getattr(scene.pairs, name))
    with np.load(path) as data:  # the stored pair trajectories are the indexed candidates
        np.testing.assert_array_equal(data["traj_a"], scene.candidates[scene.pairs.a])
    assert list(read_split(tmp_path, "synth_train")) == ["tok0"]
    bad = tmp_path / "synth_train" / "tok1.npz"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(PrefsCacheError, match="tok1.npz"):
        read_split(tmp_path, "synth_train")
    with pytest.raises(PrefsCacheError, match="synth_val"):
        read_split(tmp_path, "synth_val")


# ------------------------------------------------------------------ the reward interface
def _features(b: int) -> PlannerInput[torch.Tensor]:
    return PlannerInput(
        bev=torch.zeros(b, 12, 128, 128), ego_status=torch.zeros(b, EGO_STATUS_DIM),
        agents=torch.zeros(b, 3, AGENT_FEATURES), agents_mask=torch.ones(b, 3, dtype=torch.bool),
    )  # fmt: skip


class _FakeRule:
    """A rule-like reward with a ``close`` (what MixedReward combines)."""

    names = ("progress",)
    version = "v1"

    def score(self, metric_caches: list, plans: np.ndarray, features: object = None) -> RewardBatch:
        total = np.clip(np.nan_to_num(plans[..., -1, 0]) / 20.0, 0, 1)
        return RewardBatch(total, {"progress": total})


def test_learned_reward_interface() -> None:
    reward = LearnedReward(lambda f, p: p[..., -1, 0] - 10.0, version="v1", temperature=2.0)
    assert reward.names == (LEARNED_TERM,) and reward.version == "v1"
    plans = np.zeros((2, 3, 8, 3))
    plans[:, 1, -1, 0] = 10.0
    plans[1, 2] = np.nan
    batch = reward.score([None, None], plans, _features(2))
    assert batch.total.shape == (2, 3)
    assert batch.total[0, 1] == pytest.approx(0.5) and batch.total[0, 0] == pytest.approx(1 / (1 + math.e**5))
    assert batch.total[1, 2] == 0.0 and batch.terms[LEARNED_TERM][1, 2] == 0.0  # invalid plan
    with pytest.raises(ValueError, match="features"):
        reward.score([None, None], plans)
    # submit through the RL helper: the features are passed to the rewards that take them
    np.testing.assert_allclose(submit(reward, [None, None], plans, _features(2)).result().total, batch.total)
    mixed = MixedReward([(1.0, _FakeRule()), (1.0, reward)])
    out = mixed.score([None, None], plans, _features(2))
    assert set(out.terms) == {"progress", LEARNED_TERM}
    np.testing.assert_allclose(out.total, 0.5 * (out.terms["progress"] + batch.total))
    assert rule_reward_of(mixed).names == ("progress",)
    assert rule_reward_of(reward).names[0] == "no_at_fault_collisions"  # a RuleReward of its version


def test_reward_model_scores_each_candidate_on_its_own() -> None:
    torch.manual_seed(0)
    model = RewardModel(reward_model_config({"d_model": 32, "dropout": 0.0})).eval()
    plans = torch.randn(2, 5, 8, 3)
    alone = model.score_plans(_features(2), plans[:, :2])
    together = model.score_plans(_features(2), plans)
    torch.testing.assert_close(alone, together[:, :2])
    plans[0, 3] = float("nan")
    assert model.score_plans(_features(2), plans)[0, 3] == float("-inf")


# ------------------------------------------------------------------ the chain through the CLI
@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture log in the train and val splits, its feature cache, a small generator and its preference cache."""
    root = tmp_path_factory.mktemp("reward_city")
    for split in ("synth_train", "synth_val"):
        data_root, maps_root = write_fixture_data(root, split=split, duration_s=12.0, num_scenes=2)
    cache = root / "features"
    build_cache(data_root, maps_root, ["synth_train", "synth_val"], cache, frame_interval=1)
    torch.manual_seed(0)
    t = torch.arange(1, 9) * 0.5
    anchors = torch.stack([torch.outer(torch.tensor([2.0, 5.0, 8.0, 11.0]), t), torch.zeros(4, 8)], -1)
    generator = TruncatedDiffusionPlanner(TruncatedDiffusionConfig(d_model=32, num_anchors=4), anchors)
    generator.raster_config = PLANNER_RASTER.to_dict()  # type: ignore[assignment]
    ckpt = write(root / "generator.ckpt", CheckpointRecord.of(generator))
    prefs = root / "prefs"
    for split in ("synth_train", "synth_val"):
        args = [
            "data", "prefs", "--generator", str(ckpt), "--feature-cache", str(cache), "--metric-cache",
            str(root / "metric_v2"), "--data-root", str(data_root), "--maps-root", str(maps_root), "--split", split,
            "--out", str(prefs), "--num-samples", "4", "--copies", "3", "--batch-size", "2", "--max-pairs", "16",
        ]  # fmt: skip
        assert diffplan(args) == 0
    return {"data_root": data_root, "maps_root": maps_root, "cache": cache, "gen": ckpt, "prefs": prefs}


def test_prefs_cache_built_and_resumed(city: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    scenes = read_split(city["prefs"], "synth_train")
    assert len(scenes) >= 2
    for scene in scenes.values():
        assert scene.protocol == "v2" and scene.candidates.shape[1:] == (8, 3)
        k = scene.candidates.shape[0]
        assert k == 4 + 4 + 1 + 2 * 3  # anchors + samples + expert + perturbed pick and expert
        assert 0 < len(scene.pairs) <= 16 and (scene.pairs.margin >= 0).all()
    before = {p: p.stat().st_mtime_ns for p in (city["prefs"] / "synth_train").glob("*.npz")}
    args = ["data", "prefs", "--generator", str(city["gen"]), "--feature-cache", str(city["cache"]), "--metric-cache",
            str(city["prefs"].parent / "metric_v2"), "--data-root", str(city["data_root"]), "--out", str(city["prefs"]),
            "--maps-root", str(city["maps_root"])]  # fmt: skip
    capsys.readouterr()
    assert diffplan(args) == 0
    assert "0 scenes written" in capsys.readouterr().out  # everything was there: resumed, nothing redone
    assert before == {p: p.stat().st_mtime_ns for p in (city["prefs"] / "synth_train").glob("*.npz")}


def _small_config(tmp_path: Path) -> Path:
    text = yaml.safe_load(CONFIG.read_text())
    text["model"]["init_args"]["scorer"].update(d_model=32)
    text["model"]["init_args"].update(num_samples=4)
    keep = {"filename": "{epoch}", "monitor": "train/loss", "mode": "min", "save_top_k": -1,
            "enable_version_counter": False}  # fmt: skip
    callback = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": keep}
    text["trainer"]["callbacks"].append(callback)
    path = tmp_path / CONFIG.name
    path.write_text(yaml.safe_dump(text))
    return path


def _args(config: Path, city: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(config), "--model.init_ckpt", str(city["gen"]),
        "--data.prefs_dir", str(city["prefs"]), "--data.feature_cache_dir", str(city["cache"]),
        "--data.batch_size", "2", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip


def test_reward_model_fast_dev_run(city: dict[str, Path], tmp_path: Path) -> None:
    cli = run_cli(_args(_small_config(tmp_path), city, tmp_path, "--trainer.fast_dev_run", "1"))
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and 0.0 <= float(metrics["val/pair_acc"]) <= 1.0
    assert -1.0 <= float(metrics["val/spearman"]) <= 1.0 and float(metrics["val/bt_loss"]) > 0
    assert not any(p.requires_grad for p in cli.model.planner.generator.parameters())


def test_reward_model_resumes_exactly_and_serves(city: dict[str, Path], tmp_path: Path) -> None:
    config = _small_config(tmp_path)
    continuous = run_cli(_args(config, city, tmp_path / "a", "--trainer.max_epochs", "2"))
    first = next((tmp_path / "a").rglob("epoch=0.ckpt"))
    resumed = run_cli(_args(config, city, tmp_path / "c", "--trainer.max_epochs", "2", "--ckpt_path", str(first)))
    assert resumed.model.global_step == continuous.model.global_step == 2
    for (name, a), b in zip(continuous.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    last = Path(resumed.trainer.checkpoint_callback.dirpath) / "last.ckpt"  # type: ignore[union-attr]
    pair = load_planner(last)
    assert isinstance(pair, RerankedPlanner) and isinstance(pair.discriminator, RewardModel)
    # the learned reward of the checkpoint, and through the RL reward spec, alone and mixed
    reward = load_learned_reward(str(last), version="v1")
    plans = np.random.default_rng(0).normal(size=(2, 3, 8, 3))
    total = reward.score([None, None], plans, _features(2)).total
    assert total.shape == (2, 3) and ((total > 0) & (total < 1)).all()
    alone = build_reward({"version": "v1", "learned": {"checkpoint": str(last)}})
    assert isinstance(alone, LearnedReward)
    mixed = build_reward({"version": "v1", "learned": {"checkpoint": str(last)}, "weights": {"rule": 1, "learned": 1}})
    assert isinstance(mixed, MixedReward) and mixed.version == "v1"
    # the pair drives in the benchmark as a reranker
    common = [
        "protocol=navsim_v1", f"data_root={city['data_root']}", f"maps_root={city['maps_root']}", "split=synth_val",
        "max_scenes=2", f"metric_cache_dir={tmp_path / 'bench_metric'}", "progress=false", "report.num_worst=1",
    ]  # fmt: skip
    bench = ["bench", *common, "planner=reward_reranked", f"planner.ckpt_path={last}", f"output_dir={tmp_path / 'b'}"]
    assert diffplan(bench) == 0
    scores = pd.read_csv(tmp_path / "b" / "scores.csv")
    assert len(scores) == 3 and scores["valid"].iloc[:2].all()
