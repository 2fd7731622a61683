"""``diffplan fit | validate | test | predict``: the Lightning CLI; the config chooses the module and data module.

Configs live in ``configs/train/<name>.yaml``. ``model`` and ``data`` name their classes the Lightning way::

    model:
      class_path: training.imitation.PlannerModule     # any LightningModule
      init_args: {...}
    data:
      class_path: training.data.PlannerDataModule      # any LightningDataModule
      init_args: {...}

A section without ``class_path`` holds the init arguments of the imitation defaults (:class:`PlannerModule`,
:class:`PlannerDataModule`), which is how the imitation configs are written. A ``class_path`` that cannot be
imported, or that is not a module / data module, stops the command with one line naming it. Every Lightning CLI
feature works as usual (``--print_config``, dotted overrides such as ``--trainer.max_epochs 3`` or
``--model.lr 1e-3``, ``--ckpt_path`` to resume). Runs are seeded (``seed_everything: 0`` by default), log to
TensorBoard (CSV when TensorBoard is not installed) and write checkpoints atomically.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from simulation.io import atomic_write

#: The classes a config section without ``class_path`` configures.
DEFAULT_CLASSES = {"model": "training.imitation.PlannerModule", "data": "training.data.PlannerDataModule"}
BASE_CLASSES: dict[str, type] = {"model": pl.LightningModule, "data": pl.LightningDataModule}


class ConfigClassError(ValueError):
    """A config's ``model`` / ``data`` ``class_path`` that cannot be imported or has the wrong base class."""


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


def resolve_class(section: str, class_path: str) -> type:
    """Import ``class_path`` (``package.module.Class``) and check it is the ``section``'s kind of class.

    Raises:
        ConfigClassError: the module or the class does not exist, or the class has the wrong base.
    """
    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        raise ConfigClassError(f"{section} class_path {class_path!r} is not a dotted path (package.module.Class)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigClassError(f"{section} class_path {class_path!r}: cannot import {module_name} ({err})") from None
    cls = getattr(module, name, None)
    base = BASE_CLASSES[section]
    if not isinstance(cls, type):
        raise ConfigClassError(f"{section} class_path {class_path!r}: {module_name} has no class {name}")
    if not issubclass(cls, base):
        raise ConfigClassError(f"{section} class_path {class_path!r} is not a {base.__name__}")
    return cls


def _options(args: Sequence[str]) -> list[tuple[str, str]]:
    """``(--option, value)`` pairs of ``args`` (``--option value`` or ``--option=value``; flags left out)."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            option, value = arg.split("=", 1)
            out.append((option, value))
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append((arg, args[i + 1]))
            i += 1
        i += 1
    return out


def _named_classes(args: Sequence[str]) -> list[tuple[str, str]]:
    """``(section, class_path)`` named by the ``--config`` files and the ``--model`` / ``--data`` options."""
    found: list[tuple[str, str]] = []
    for option, value in _options(args):
        if option == "--config" and Path(value).is_file():
            try:
                config = yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError:
                continue  # the Lightning CLI reports it
            for section in BASE_CLASSES:
                entry = config.get(section) if isinstance(config, dict) else None
                path = entry.get("class_path") if isinstance(entry, dict) else entry
                if isinstance(path, str):
                    found.append((section, path))
        for section in BASE_CLASSES:
            if option in (f"--{section}", f"--{section}.class_path") and not value.endswith((".yaml", ".yml")):
                found.append((section, value))
    return found


def check_config_classes(args: Sequence[str]) -> None:
    """Raise :class:`ConfigClassError` for the first ``model`` / ``data`` class named in ``args`` that does not
    resolve (a bare class name or an inline YAML value is left to the Lightning CLI)."""
    for section, class_path in _named_classes(args):
        if "." in class_path and not class_path.lstrip().startswith("{"):
            resolve_class(section, class_path.strip())


class DiffplanCLI(LightningCLI):
    """The Lightning CLI in subclass mode: ``model`` and ``data`` name their classes, the imitation ones by default;
    the default logger writes under ``--trainer.default_root_dir`` when one is given."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({section: {"class_path": path} for section, path in DEFAULT_CLASSES.items()})

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.get("trainer")
        root = trainer.get("default_root_dir") if trainer is not None else None
        logger = trainer.get("logger") if trainer is not None else None
        init_args = getattr(logger, "init_args", None)
        if root and init_args is not None and init_args.get("save_dir") == DEFAULT_LOG_DIR:
            init_args["save_dir"] = str(root)


def run_cli(args: list[str]) -> LightningCLI:
    """Run the Lightning CLI with ``args`` (subcommand first); returns the CLI object.

    Raises:
        ConfigClassError: the config names a ``model`` / ``data`` class that does not exist or is of the wrong kind.
    """
    check_config_classes(args)
    return DiffplanCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"logger": _default_logger(), "plugins": [AtomicCheckpointIO()]},
        parser_kwargs={"default_env": False},
    )


def _subcommand(name: str) -> Callable[[list[str]], int]:
    def entry(argv: list[str]) -> int:
        try:
            run_cli([name, *argv])
        except ConfigClassError as err:
            print(f"diffplan {name}: {err}", file=sys.stderr)
            return 2
        return 0

    return entry


fit_main = _subcommand("fit")
validate_main = _subcommand("validate")
test_main = _subcommand("test")
predict_main = _subcommand("predict")
