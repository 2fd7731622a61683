"""The config chooses the module and data module (``class_path``); the imitation classes are the default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.cli import main as diffplan
from training.data import PlannerDataModule
from training.imitation import PlannerModule
from training.lightning_cli import ConfigClassError, check_config_classes, run_cli

EGO_MLP = Path("configs/train/ego_mlp.yaml")


def _common(cache: Path, out: Path) -> list[str]:
    return [
        "--data.cache_dir", str(cache),
        "--data.batch_size", "8",
        "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false",
        "--trainer.fast_dev_run", "true",
    ]  # fmt: skip


def _explicit(tmp_path: Path) -> Path:
    """ego_mlp.yaml with ``model`` / ``data`` written as ``class_path`` + ``init_args``."""
    config = yaml.safe_load(EGO_MLP.read_text())
    config["model"] = {"class_path": "training.imitation.PlannerModule", "init_args": config["model"]}
    config["data"] = {"class_path": "training.data.PlannerDataModule", "init_args": config["data"]}
    path = tmp_path / "explicit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_config_naming_its_classes_trains_and_takes_short_overrides(feature_cache: Path, tmp_path: Path) -> None:
    cli = run_cli(
        ["fit", "--config", str(_explicit(tmp_path)), *_common(feature_cache, tmp_path), "--model.lr", "0.01"]
    )
    assert type(cli.model) is PlannerModule and type(cli.datamodule) is PlannerDataModule
    assert cli.model.hparams["lr"] == 0.01 and cli.trainer.state.finished


def test_a_shipped_config_without_class_path_gets_the_imitation_classes(feature_cache: Path, tmp_path: Path) -> None:
    assert "class_path" not in yaml.safe_load(EGO_MLP.read_text())["model"]
    cli = run_cli(["fit", "--config", str(EGO_MLP), *_common(feature_cache, tmp_path)])
    assert type(cli.model) is PlannerModule and type(cli.datamodule) is PlannerDataModule


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model.class_path", "training.nope.Module"], "model class_path 'training.nope.Module': cannot import"),
        (["--model=training.imitation.NoModule"], "training.imitation has no class NoModule"),
        (["--data.class_path", "training.imitation.PlannerModule"], "is not a LightningDataModule"),
    ],
)
def test_an_unknown_class_fails_with_one_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert diffplan(["fit", "--config", str(EGO_MLP), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("diffplan fit: ") and message in err


def test_an_unknown_class_in_the_config_file(tmp_path: Path) -> None:
    config = yaml.safe_load(EGO_MLP.read_text())
    config["data"] = {"class_path": "training.rl_data.NoDataModule", "init_args": {}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigClassError, match="data class_path 'training.rl_data.NoDataModule'"):
        check_config_classes(["--print_config", "--config", str(path)])
    check_config_classes(["--config", str(EGO_MLP), "--model", "PlannerModule"])  # short names: the CLI's business
