"""training.rl.RLModule with a toy Gaussian policy and a fake reward: learning, fast_dev_run, exact resume,
frozen parameters, the reference KL, and the planner record the benchmarks load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from rl_toy import DistanceReward, StopAfterFirstEpoch, ToyGaussianPolicy, loader, scenes

from planners.checkpoint import CHECKPOINT_KEY, CheckpointRecord, load_planner, read, write
from planners.ego_mlp import EgoStatusMLP
from training.rl import RL_STATE_KEY, RLModule
from training.rl_support import exploration_spread


def _trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    return pl.Trainer(**{**defaults, **kwargs})


def _module(seed: int = 0, **kwargs: Any) -> RLModule:
    torch.manual_seed(seed)
    return RLModule(planner=ToyGaussianPolicy(), reward=DistanceReward(), **kwargs)


def _mean_reward(module: RLModule) -> float:
    data = next(iter(loader(16, 16, seed=1)))
    return float(module.score_deterministic(data).total.mean())


@pytest.mark.parametrize(
    "options",
    [
        dict(advantage="grpo", objective="grpo", kl_coef=0.01, num_inner_updates=2),
        dict(advantage="ddv2", objective="reinforce", gamma=0.8, ddv2_beat_gt=False),
        dict(advantage="gdpo", objective="gspo", eps_low=0.05, eps_high=0.05),
    ],
)
def test_a_few_hundred_steps_raise_the_reward(tmp_path: Path, options: dict[str, Any]) -> None:
    module = _module(num_samples=16, lr=3e-2, grad_clip=0.0, **options)
    before = _mean_reward(module)
    _trainer(tmp_path, max_steps=80).fit(module, loader(64, 8))
    after = _mean_reward(module)
    assert before < 0.2 and after > 0.7, (before, after)


def test_fast_dev_run_scores_the_deterministic_plan_on_validation(tmp_path: Path) -> None:
    module = _module(il_weight=1.0, il_weight_positive=0.1, advantage="ddv2", ddv2_beat_gt=True)
    trainer = _trainer(tmp_path, fast_dev_run=True, limit_val_batches=None)
    trainer.fit(module, loader(8, 4), loader(4, 4))
    metrics = trainer.callback_metrics
    for key in ("train/reward", "train/kl", "train/adv_mean", "train/spread", "train/il_loss", "val/pdms"):
        assert torch.isfinite(metrics[key]), key
    assert "train/fail/no_at_fault_collisions" in metrics and "val/ego_progress" in metrics
    assert module.reward.calls == 2  # type: ignore[attr-defined]  # one rollout (with the ground truth), one val batch


class _Record(pl.Callback):
    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys, self.rows, self.encoder_training = keys, [], []  # type: ignore[var-annotated]

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        self.rows.append({k: float(trainer.callback_metrics[k]) for k in self.keys if k in trainer.callback_metrics})
        self.encoder_training.append(module.planner.encoder.training)


def test_kl_to_the_reference_is_zero_at_the_first_step_and_grows(tmp_path: Path) -> None:
    record = _Record(("train/kl",))
    module = _module(lr=3e-2)
    _trainer(tmp_path, max_steps=5, callbacks=[record]).fit(module, loader(40, 8))
    kl = [row["train/kl"] for row in record.rows]
    assert kl[0] == pytest.approx(0.0, abs=1e-9) and kl[-1] > 1e-4, kl


def test_frozen_parameters_do_not_move_and_stay_in_eval_mode(tmp_path: Path) -> None:
    record = _Record(())
    module = _module(freeze=["encoder"], lr=3e-2, train_mode=True)
    encoder = {k: v.clone() for k, v in module.planner.encoder.state_dict().items()}
    head = module.planner.head.weight.detach().clone()
    _trainer(tmp_path, max_steps=3, callbacks=[record]).fit(module, loader(24, 8))
    for name, value in module.planner.encoder.state_dict().items():
        torch.testing.assert_close(value, encoder[name], rtol=0, atol=0)
    assert not torch.equal(module.planner.head.weight, head)
    assert record.encoder_training == [False, False, False] and module.planner.head.training
    assert not _module().planner.head.training  # without train_mode the whole policy runs in eval mode
    assert all(not p.requires_grad for p in module.reference.parameters())
    with pytest.raises(ValueError, match="matches no parameter"):
        _module(freeze=["bev_encoder"])


def test_resume_from_a_checkpoint_equals_a_continuous_run(tmp_path: Path) -> None:
    options = dict(advantage="ddv2", objective="grpo", kl_coef=0.05, il_weight=1.0, il_weight_positive=0.1,
                   num_inner_updates=2, lr=1e-2, warmup_steps=2)  # fmt: skip
    continuous = _module(**options)
    _trainer(tmp_path / "a", max_epochs=2).fit(continuous, loader(16, 8))

    first = _module(**options)
    trainer = _trainer(tmp_path / "b", max_epochs=2, callbacks=[StopAfterFirstEpoch()])  # the same run, killed
    trainer.fit(first, loader(16, 8))
    assert first.global_step == 4
    ckpt = tmp_path / "b" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert RL_STATE_KEY in saved and any(k.startswith("reference.") for k in saved["state_dict"])

    resumed = _module(seed=1, **options)  # other initial weights: everything must come from the checkpoint
    _trainer(tmp_path / "c", max_epochs=2).fit(resumed, loader(16, 8), ckpt_path=ckpt)
    for (name, a), b in zip(continuous.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert resumed.global_step == continuous.global_step == 8  # 4 batches x 2 inner updates


def test_the_checkpoint_is_a_planner_record_and_init_ckpt_warm_starts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    imitation = EgoStatusMLP()
    path = write(tmp_path / "il.ckpt", CheckpointRecord.of(imitation))
    module = RLModule(init_ckpt=str(path), reward=DistanceReward())
    assert not module.reference.training
    for name, value in imitation.state_dict().items():
        torch.testing.assert_close(module.planner.state_dict()[name], value)
        torch.testing.assert_close(module.reference.state_dict()[name], value)

    with torch.no_grad():
        for p in module.planner.parameters():
            p.add_(1.0)
    lightning = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(lightning)
    assert lightning[CHECKPOINT_KEY]["planner_class"] == "planners.ego_mlp.EgoStatusMLP"
    torch.save(lightning, tmp_path / "rl.ckpt")
    for loaded in (load_planner(tmp_path / "rl.ckpt"), load_planner(module.save_planner(tmp_path / "planner.ckpt"))):
        for name, value in module.planner.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[name], value)
    assert not any(k.startswith("reference") for k in read(tmp_path / "planner.ckpt").state_dict)
    with pytest.raises(ValueError, match="exactly one"):
        RLModule(reward=DistanceReward())
    with pytest.raises(ValueError, match="choose from"):
        _module(advantage="ppo")


def test_exploration_spread_is_the_rms_distance_to_the_group_mean_at_4s() -> None:
    plans = torch.zeros(1, 4, 8, 3)
    plans[0, :, -1, 0] = torch.tensor([0.0, 2.0, 5.0, 5.0])  # group 0: 0 and 2 (rms 1); group 1: equal (0)
    plans[0, :, 3, 0] = 100.0  # only the 4 s pose counts
    groups = torch.tensor([[0, 0, 1, 1]])
    assert float(exploration_spread(plans, groups)) == pytest.approx(0.5)
    # one group of four: mean 3, squared distances 9, 1, 4, 4 -> rms sqrt(4.5)
    assert float(exploration_spread(plans)) == pytest.approx(4.5**0.5)
    assert float(exploration_spread(plans[:, :1])) == 0.0


def test_scenes_fixture_is_deterministic() -> None:
    a, b = scenes(2), scenes(2)
    assert (a[1]["features"].ego_status == b[1]["features"].ego_status).all()


class _Data(pl.LightningDataModule):
    def train_dataloader(self) -> Any:
        return loader(16, 8)

    def val_dataloader(self) -> Any:
        return loader(8, 4)


def test_periodic_validation_scores_the_val_loader_every_n_steps(tmp_path: Path) -> None:
    module = _module(val_every_n_steps=2, val_max_batches=1)
    trainer = _trainer(tmp_path, max_steps=4)
    trainer.fit(module, datamodule=_Data())
    assert module.reward.calls == 4 + 2  # type: ignore[attr-defined]  # 4 rollouts, 2 validations of one batch
    assert 0.0 < float(trainer.callback_metrics["val/pdms"]) < 1.0
    means = module.validation_scores(loader(8, 4), max_batches=1)
    assert means["pdms"] == pytest.approx(float(trainer.callback_metrics["val/pdms"]))
    assert set(means) == {"pdms", "no_at_fault_collisions", "drivable_area_compliance", "ego_progress"}


class _Recorder(pl.loggers.Logger):
    """Keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))


class _LongData(_Data):
    def train_dataloader(self) -> Any:
        return loader(48, 8)


def test_periodic_validation_is_written_once_per_validation(tmp_path: Path) -> None:
    module = _module(val_every_n_steps=2, val_max_batches=1)
    recorder = _Recorder()
    trainer = _trainer(tmp_path, max_steps=6, logger=recorder, log_every_n_steps=1)
    trainer.fit(module, datamodule=_LongData())  # one epoch of 6 steps
    val_steps = [step for step, metrics in recorder.calls if "val/pdms" in metrics]
    reward_steps = [step for step, metrics in recorder.calls if "train/reward" in metrics]
    assert reward_steps == [0, 1, 2, 3, 4, 5]
    assert val_steps == [1, 3, 5]  # after the 2nd, 4th and 6th rollouts, on the axis of their train/reward


def test_early_stopping_checks_the_periodic_validations(tmp_path: Path) -> None:
    module = _module(val_every_n_steps=2, val_max_batches=1)
    stop = pl.callbacks.EarlyStopping(
        monitor="val/pdms", mode="max", stopping_threshold=0.0, check_on_train_epoch_end=False
    )
    trainer = _trainer(tmp_path, max_steps=6, callbacks=[stop])
    trainer.fit(module, datamodule=_LongData())  # one epoch of 6 steps: without the check it would run all 6
    assert module._rl_steps == 2 and stop.stopped_epoch == 0 and trainer.should_stop


@dataclass(frozen=True)
class _FrozenCache:
    """A stand-in for ``MetricCache``: a frozen record (Lightning's generic batch transfer cannot rebuild one)."""

    target: torch.Tensor

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.target, dtype=dtype)


def test_periodic_validation_keeps_frozen_metric_caches_as_they_are() -> None:
    module = _module(val_every_n_steps=2, val_max_batches=1)
    plain = next(iter(loader(8, 4)))
    frozen = {**plain, "metric_cache": [_FrozenCache(torch.as_tensor(c)) for c in plain["metric_cache"]]}
    assert module.validation_scores([frozen]) == pytest.approx(module.validation_scores([plain]))
