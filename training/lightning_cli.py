"""``diffplan fit | validate | test | predict``: the Lightning CLI over :class:`PlannerModule`.

Configs live in ``configs/train/<name>.yaml``; every Lightning CLI feature works as usual
(``--print_config``, dotted overrides such as ``--trainer.max_epochs 3``, ``--ckpt_path`` to resume).
Runs are seeded (``seed_everything: 0`` by default), log to TensorBoard (CSV when TensorBoard is not
installed) and write checkpoints atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.cli import LightningCLI

from simulation.io import atomic_write
from training.data import PlannerDataModule
from training.imitation import PlannerModule


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file in the same folder, then renamed: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        import torch

        with atomic_write(path) as f:
            torch.save(checkpoint, f)


DEFAULT_LOG_DIR = "outputs/train"


def _default_logger() -> dict[str, Any]:
    try:
        import tensorboard  # noqa: F401

        return {"class_path": "pytorch_lightning.loggers.TensorBoardLogger", "init_args": {"save_dir": DEFAULT_LOG_DIR}}
    except ImportError:
        return {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": DEFAULT_LOG_DIR}}


class DiffplanCLI(LightningCLI):
    """The Lightning CLI; the default logger writes under ``--trainer.default_root_dir`` when one is given."""

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.get("trainer")
        root = trainer.get("default_root_dir") if trainer is not None else None
        logger = trainer.get("logger") if trainer is not None else None
        init_args = getattr(logger, "init_args", None)
        if root and init_args is not None and init_args.get("save_dir") == DEFAULT_LOG_DIR:
            init_args["save_dir"] = str(root)


def run_cli(args: list[str]) -> LightningCLI:
    """Run the Lightning CLI with ``args`` (subcommand first); returns the CLI object."""
    return DiffplanCLI(
        PlannerModule,
        PlannerDataModule,
        args=args,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"logger": _default_logger(), "plugins": [AtomicCheckpointIO()]},
        parser_kwargs={"default_env": False},
    )


def _subcommand(name: str) -> Callable[[list[str]], int]:
    def entry(argv: list[str]) -> int:
        run_cli([name, *argv])
        return 0

    return entry


fit_main = _subcommand("fit")
validate_main = _subcommand("validate")
test_main = _subcommand("test")
predict_main = _subcommand("predict")
