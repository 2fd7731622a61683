"""Planner checkpoints: the record a diffplan checkpoint holds, safe loading, and the closed-loop planner factories.

A checkpoint is a ``torch.save`` file (Lightning writes one per ``diffplan fit`` run; :func:`write` writes a bare
one) holding at least::

    {"diffplan": {"planner_class": "planners.<module>.<Class>",   # the nn.Module to rebuild
                  "planner_config": {...} | None,                 # its config (``config.to_dict()``)
                  "raster": {...} | None},                        # RasterConfig.to_dict() of its training cache
     "state_dict": {"planner.<name>": Tensor, ...}}               # its weights (LightningModule prefix)

Lightning's own entries (optimiser states, loops, callbacks) may sit beside them and are ignored. Files are read
with ``torch.load(weights_only=True)``: tensors and plain containers only, so a file can never run code on load.
The class is looked up only inside the ``planners`` package.

The factories (:func:`learned_planner`, :func:`masked_planner`, :func:`exported_planner`) are the Hydra
``_target_``\\ s of ``configs/bench/planner/*.yaml``; none of this module needs Lightning.
"""

from __future__ import annotations

import importlib
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from planners.adapter import LearnedPlanner
from planners.export import ExportedPlanner
from planners.masked_closed_loop import MaskedClosedLoopPlanner
from planners.masked_diffusion import MaskedDiffusionPlanner
from planners.tokenizer import TokenizerError
from simulation.features import raster_from_meta

#: Key of the diffplan record in a checkpoint.
CHECKPOINT_KEY = "diffplan"
#: Prefix of the planner's weights in the checkpoint's ``state_dict`` (the LightningModule attribute name).
STATE_PREFIX = "planner."
_PLANNER_PACKAGE = "planners."


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, does not hold a diffplan planner, or holds another planner / layout."""


@dataclass(frozen=True)
class CheckpointRecord:
    """What a diffplan checkpoint holds.

    Attributes:
        planner_class: dotted path of the planner class, inside the ``planners`` package.
        planner_config: the class's config as a plain dict (``config.to_dict()``), or ``None`` for defaults.
        raster: the raster layout the planner was trained on (``RasterConfig.to_dict()``), or ``None``.
        state_dict: the planner's weights and buffers (names without the ``planner.`` prefix).
    """

    planner_class: str
    planner_config: dict[str, Any] | None
    raster: dict[str, Any] | None
    state_dict: dict[str, torch.Tensor]

    @classmethod
    def of(cls, planner: nn.Module) -> CheckpointRecord:
        """The record of a live planner (its weights are the planner's own tensors, not copies)."""
        header = planner_header(planner)
        return cls(header["planner_class"], header["planner_config"], header["raster"], planner.state_dict())

    def header(self) -> dict[str, Any]:
        """The ``diffplan`` entry of the checkpoint file."""
        return {"planner_class": self.planner_class, "planner_config": self.planner_config, "raster": self.raster}


def planner_header(planner: nn.Module) -> dict[str, Any]:
    """The ``diffplan`` entry describing ``planner`` (what training adds to its Lightning checkpoints)."""
    config = getattr(planner, "config", None)
    raster = getattr(planner, "raster_config", None)
    return {
        "planner_class": f"{type(planner).__module__}.{type(planner).__qualname__}",
        "planner_config": config.to_dict() if config is not None and hasattr(config, "to_dict") else None,
        "raster": None if raster is None else dict(raster),
    }


def write(path: str | Path, record: CheckpointRecord) -> Path:
    """Write ``record`` as a checkpoint file (via a temporary file and a rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"{STATE_PREFIX}{k}": v for k, v in record.state_dict.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        torch.save({CHECKPOINT_KEY: record.header(), "state_dict": state}, f)
    os.replace(tmp, path)
    return path


def read(path: str | Path) -> CheckpointRecord:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and :func:`validate` it.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` (naming the file) for a file that
    is not a plain checkpoint (one that would run code on load included) or holds no valid diffplan record.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: refused to load, the file holds more than tensors and plain data ({first})"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None
    return validate(raw, path)


def validate(raw: Any, path: str | Path = "<checkpoint>") -> CheckpointRecord:
    """The :class:`CheckpointRecord` of a loaded checkpoint dict; :class:`CheckpointError` naming ``path`` and the
    problem when an entry is missing or of the wrong type."""
    info = raw.get(CHECKPOINT_KEY) if isinstance(raw, Mapping) else None
    if not isinstance(info, Mapping) or not info.get("planner_class"):
        raise CheckpointError(f"{path}: not a diffplan planner checkpoint (no '{CHECKPOINT_KEY}' record)")
    cls_path = info["planner_class"]
    if not isinstance(cls_path, str) or not cls_path.startswith(_PLANNER_PACKAGE):
        raise CheckpointError(f"{path}: planner_class {cls_path!r} is not a class of the planners package")
    for key in ("planner_config", "raster"):
        if info.get(key) is not None and not isinstance(info[key], Mapping):
            raise CheckpointError(f"{path}: {key} must be a dict or None, got {type(info[key]).__name__}")
    state = raw.get("state_dict")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: no state_dict")
    weights = {k[len(STATE_PREFIX) :]: v for k, v in state.items() if str(k).startswith(STATE_PREFIX)}
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    config, raster = info.get("planner_config"), info.get("raster")
    return CheckpointRecord(
        cls_path, None if config is None else dict(config), None if raster is None else dict(raster), weights
    )


def _planner_class(record: CheckpointRecord, path: str | Path) -> type[nn.Module]:
    module_name, _, cls_name = record.planner_class.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{path}: planner class {record.planner_class} not found ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"{path}: {record.planner_class} is not a planner (nn.Module) class")
    return cls


def build(record: CheckpointRecord, path: str | Path = "<checkpoint>") -> nn.Module:
    """The planner of ``record``: class and config rebuilt, weights loaded, ``raster_config`` set, eval mode.

    Raises :class:`CheckpointError` when the weights do not fit the class and config, and
    :class:`~planners.tokenizer.TokenizerError` (naming ``path``) when a masked planner's weights were trained on
    another codebook than its stored config names.
    """
    cls = _planner_class(record, path)
    config = record.planner_config
    planner = cls.from_config_dict(config) if config is not None else cls()  # type: ignore[attr-defined]
    try:
        planner.load_state_dict(record.state_dict)
    except TokenizerError as err:
        raise TokenizerError(f"{path}: {err}") from None
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: weights do not match {record.planner_class} with the stored config: {err}"
        ) from None
    planner.raster_config = record.raster
    return planner.eval()


def load_planner(path: str | Path, expect_class: str | None = None) -> nn.Module:
    """Rebuild the planner stored in a checkpoint (class, config, weights, raster), in eval mode.

    Args:
        path: checkpoint file (written by ``diffplan fit`` or :func:`write`).
        expect_class: when given, the stored class name must end with it (else :class:`CheckpointError`).
    """
    record = read(path)
    if expect_class is not None and not record.planner_class.endswith(expect_class):
        raise CheckpointError(f"{path}: holds a {record.planner_class}, expected a {expect_class}")
    return build(record, path)


# --------------------------------------------------------------------------------------------------
# closed-loop planner factories (Hydra ``_target_`` of configs/bench/planner)
# --------------------------------------------------------------------------------------------------


def learned_planner(ckpt_path: str, name: str = "learned", seed: int = 0) -> LearnedPlanner:
    """A closed-loop :class:`~planners.adapter.LearnedPlanner` from a training checkpoint (``planner=learned``)."""
    planner = load_planner(ckpt_path)
    return LearnedPlanner(
        planner, name=name, raster=raster_from_meta(getattr(planner, "raster_config", None)), seed=seed
    )


def masked_planner(
    ckpt_path: str,
    order: str = "reverse_causal",
    steps: int = 8,
    reflect: bool = False,
    seed: int = 0,
    temperature: float = 0.0,
    num_candidates: int = 3,
    name: str | None = None,
    **reflection: Any,
) -> MaskedClosedLoopPlanner:
    """A :class:`~planners.masked_closed_loop.MaskedClosedLoopPlanner` from a ``masked_il`` checkpoint
    (``planner=masked``; with ``reflect``, ``planner=masked_reflect``).

    ``reflection``: ``max_reflections``, ``max_iterations``, ``radius``, ``patience``, ``check_drivable``,
    ``track`` of the planner. A checkpoint whose weights were trained on another codebook than its stored
    config names raises :class:`~planners.tokenizer.TokenizerError` (naming the file).
    """
    model = load_planner(ckpt_path, expect_class="MaskedDiffusionPlanner")
    if not isinstance(model, MaskedDiffusionPlanner):
        raise CheckpointError(f"{ckpt_path}: holds a {type(model).__name__}, expected a MaskedDiffusionPlanner")
    return MaskedClosedLoopPlanner(
        model,
        order=order,
        steps=steps,
        temperature=temperature,
        num_candidates=num_candidates,
        reflect=reflect,
        seed=seed,
        raster=raster_from_meta(getattr(model, "raster_config", None)),
        name=name,
        **reflection,
    )


def exported_planner(path: str, name: str = "exported", seed: int = 0) -> LearnedPlanner:
    """A closed-loop planner from an exported TorchScript / ONNX file and its sidecar (``planner=exported``)."""
    model = ExportedPlanner(path)
    return LearnedPlanner(model, name=name, raster=raster_from_meta(model.meta.get("raster")), seed=seed)
