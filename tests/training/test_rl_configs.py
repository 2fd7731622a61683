"""Every shipped RL config (configs/train with model training.rl.RLModule) parses into the module's signature and
builds the module around the planner of its imitation stage; the data part names RLDataModule's arguments."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import yaml
from rl_toy import DistanceReward

from training.rl import RLModule

TRAIN = Path("configs/train")
RL_CONFIGS = sorted(p for p in TRAIN.glob("*.yaml") if "training.rl.RLModule" in p.read_text())
#: The arguments of training.rl_data.RLDataModule (the RL data contract).
RL_DATA_ARGS = {
    "feature_cache_dir", "metric_cache_dir", "data_root", "maps_root", "train_split", "val_split", "batch_size",
    "num_workers", "version", "max_scenes",
}  # fmt: skip
#: The imitation config whose planner each RL config fine-tunes.
IL_OF = {"truncated": "truncated_il.yaml", "masked": "masked_il.yaml"}


def test_the_nine_rl_configs_are_found() -> None:
    names = {p.stem for p in RL_CONFIGS}
    truncated = {
        "truncated_grpo",
        "truncated_ddv2",
        "truncated_choice",
        "truncated_gdpo",
        "truncated_grpo_learned",
        "truncated_grpo_mixed",
    }
    assert names == truncated | {"masked_gspo", "masked_grpo", "masked_gspo_igpo"}


def _imitation_planner(config: Path) -> Any:
    """The planner of the imitation stage, small (d_model 32)."""
    il = yaml.safe_load((TRAIN / IL_OF[config.stem.split("_")[0]]).read_text())["model"]["planner"]
    module_name, _, cls_name = il["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    defaults = cls().config.to_dict()
    return cls.from_config_dict({**defaults, **il["init_args"]["config"], "d_model": 32})


@pytest.mark.parametrize("config", RL_CONFIGS, ids=lambda p: p.stem)
def test_rl_config_parses_into_the_module(config: Path) -> None:
    cfg = yaml.safe_load(config.read_text())
    assert cfg["model"]["class_path"] == "training.rl.RLModule"
    args = cfg["model"]["init_args"]
    params = inspect.signature(RLModule.__init__).parameters
    assert set(args) <= set(params), set(args) - set(params)
    rule = {k: v for k, v in args["reward"].items() if k not in ("learned", "weights")}
    assert args["init_ckpt"] is None and rule == {"version": "v1", "num_workers": 0}
    if "learned" in args["reward"]:  # the reward model's checkpoint is required
        assert args["reward"]["learned"]["checkpoint"] is None and set(args["reward"]["weights"]) == {"rule", "learned"}
    module = RLModule(**{**args, "init_ckpt": None, "reward": DistanceReward()}, planner=_imitation_planner(config))
    assert module.frozen_prefixes and all(not p.requires_grad for p in module.planner.bev_encoder.parameters())
    assert module.hparams["advantage"] in ("grpo", "ddv2", "gdpo")
    assert module.hparams["objective"] in ("reinforce", "grpo", "gspo")

    assert cfg["data"]["class_path"] == "training.rl_data.RLDataModule"
    assert set(cfg["data"]["init_args"]) == RL_DATA_ARGS
    trainer_params = inspect.signature(pl.Trainer.__init__).parameters
    assert set(cfg["trainer"]) <= set(trainer_params)
    assert "gradient_clip_val" not in cfg["trainer"]  # manual optimisation: the module clips (grad_clip)
