"""Splits of logs, and scenes / scenarios loaded over a split.

* A split is ``configs/data/splits/<split>.yaml`` (:data:`configs.SPLITS_DIR`): a ``log_dir`` relative to the data
  root, optional ``log_names``, or a ``scene_list`` (a list of NAVSIM scene tokens written by ``diffplan data
  select``; see :mod:`simulation.datasets.scene_lists`).
* :func:`split_log_paths`: the ``.db`` files of a split.
* :func:`load_scenes` / :func:`load_scenarios`: extraction (:mod:`simulation.datasets.scenes`) over a split; a log
  that cannot be read is skipped with a warning that names it, and the number skipped is reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from configs import SPLITS_DIR
from simulation.datasets.log_data import LogData
from simulation.datasets.safe_paths import path_inside, plain_name
from simulation.datasets.scene_lists import SceneList, SceneListError, read_scene_list
from simulation.datasets.scenes import (
    DrivingCommandFn,
    ScenarioFilter,
    SceneFilter,
    extract_scenarios,
    extract_scenes,
)
from simulation.types import Scenario, Scene

logger = logging.getLogger(__name__)

__all__ = [
    "SPLITS_DIR",
    "LoadReport",
    "SplitError",
    "available_splits",
    "listed_tokens",
    "load_scenarios",
    "load_scenes",
    "reject_scene_list",
    "split_definition",
    "split_log_paths",
    "split_scene_list",
    "split_scene_tokens",
    "with_split_tokens",
]


class SplitError(ValueError):
    """A split is unknown, badly defined, or names logs that are not there."""


def available_splits() -> list[str]:
    """The names of the defined splits, sorted."""
    return sorted(p.stem for p in SPLITS_DIR.glob("*.yaml"))


def split_definition(split: str) -> dict[str, Any]:
    """The YAML definition of ``split``: ``log_dir`` (relative to the data root) and optional ``log_names``.

    Raises:
        SplitError: unknown split, a split name or an entry that would lead outside the configs / data root.
    """
    path = SPLITS_DIR / f"{plain_name(split, 'split', SplitError)}.yaml"
    if not path.is_file():
        raise SplitError(f"unknown split {split!r}; defined splits: {', '.join(available_splits())}")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SplitError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(spec, dict) or "log_dir" not in spec:
        raise SplitError(f"{path}: a split needs a 'log_dir' entry")
    _check_entries(split, spec)
    return spec


def _check_entries(split: str, spec: dict[str, Any]) -> None:
    """Raise :class:`SplitError` when ``log_dir``, ``scene_list`` or a log name would leave the data root."""
    path_inside("<data_root>", spec["log_dir"], f"split {split!r}: log_dir", SplitError)
    if spec.get("scene_list"):
        path_inside("<data_root>", spec["scene_list"], f"split {split!r}: scene_list", SplitError)
    names = spec.get("log_names")
    if names is not None and not isinstance(names, list):
        raise SplitError(f"split {split!r}: log_names must be a list of log names, got {names!r}")
    for name in names or []:
        plain_name(name, f"split {split!r}: log name", SplitError)


def split_scene_list(data_root: str | os.PathLike[str], split: str) -> SceneList | None:
    """The scene list a split definition names (``scene_list``, relative to ``data_root``), or ``None``
    for a split of whole logs.

    Raises:
        SplitError: the list is missing or unreadable (the message says how to make it).
    """
    spec = split_definition(split)
    if not spec.get("scene_list"):
        return None
    path = path_inside(data_root, spec["scene_list"], f"split {split!r}: scene_list", SplitError)
    if not path.is_file():
        raise SplitError(
            f"split {split!r} is a scene list and {path} does not exist; make it with "
            f"`diffplan data select --data-root {data_root} --split {spec.get('source_split', '<log split>')} "
            f"--name {path.stem}`"
        )
    try:
        scene_list = read_scene_list(path)
    except SceneListError as exc:
        raise SplitError(f"split {split!r}: {exc}") from None
    for name in scene_list.log_names:
        plain_name(name, f"split {split!r}: log name in {path}", SplitError)
    return scene_list


def split_scene_tokens(data_root: str | os.PathLike[str], split: str) -> frozenset[str] | None:
    """The scene tokens of a scene-list split, or ``None`` when the split takes every scene of its logs."""
    scene_list = split_scene_list(data_root, split)
    return None if scene_list is None else frozenset(scene_list.tokens)


def split_log_paths(data_root: str | os.PathLike[str], split: str) -> list[Path]:
    """The ``.db`` logs of ``split`` under ``data_root``, sorted by name (for a scene-list split, the logs
    that hold a listed scene).

    Raises:
        SplitError: unknown split, missing log folder, ``log_names`` that have no file, or a scene list
            that is missing or unreadable.
    """
    spec = split_definition(split)
    folder = path_inside(data_root, spec["log_dir"], f"split {split!r}: log_dir", SplitError)
    if not folder.is_dir():
        raise SplitError(f"split {split!r}: no folder {folder}")
    paths = sorted(folder.glob("*.db"))
    scene_list = split_scene_list(data_root, split)
    names: list[str] | None = spec.get("log_names") if scene_list is None else sorted(scene_list.log_names)
    if names is not None and (names or scene_list is not None):  # an empty scene list selects no log
        by_name = {p.stem: p for p in paths}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise SplitError(f"split {split!r}: {len(missing)} log(s) not found in {folder}, e.g. {missing[0]}")
        paths = [by_name[n] for n in names]
    return paths


@dataclass
class LoadReport:
    """What :func:`load_scenes` / :func:`load_scenarios` read: logs read, logs skipped and why."""

    num_logs: int = 0
    skipped: list[tuple[str, str]] | None = None

    @property
    def num_skipped(self) -> int:
        return len(self.skipped or [])


def _load(paths: Iterable[Path], extract: Callable[[LogData], list[Any]], report: LoadReport | None) -> list[Any]:
    from simulation.datasets.nuplan_db import LogError, read_log

    report = LoadReport() if report is None else report
    report.skipped = [] if report.skipped is None else report.skipped
    out: list[Any] = []
    for path in paths:
        report.num_logs += 1
        try:
            out.extend(extract(read_log(path)))
        except LogError as exc:
            logger.warning("skipping log %s: %s", path, exc)
            report.skipped.append((str(path), str(exc)))
    if report.skipped:
        logger.warning("%d of %d logs skipped (unreadable)", report.num_skipped, report.num_logs)
    return out


def listed_tokens(listed: frozenset[str], own: Sequence[str] | None) -> list[str]:
    """The tokens of a scene list that a filter's own ``tokens`` (``None``: all) also keeps, sorted."""
    return sorted(listed if own is None else listed & set(own))


def with_split_tokens(scene_filter: SceneFilter, data_root: str | os.PathLike[str], split: str) -> SceneFilter:
    """``scene_filter`` restricted to the tokens of a scene-list split (intersected with its own tokens)."""
    listed = split_scene_tokens(data_root, split)
    if listed is None:
        return scene_filter
    return replace(scene_filter, tokens=listed_tokens(listed, scene_filter.tokens))


def reject_scene_list(data_root: str | os.PathLike[str], split: str) -> None:
    """Raise :class:`SplitError` when ``split`` is a scene list: nuPlan scenarios are cut from whole logs."""
    spec = split_definition(split)
    if spec.get("scene_list"):
        raise SplitError(
            f"split {split!r} is a list of NAVSIM scenes; nuPlan scenarios are cut from log splits "
            f"(use split={spec.get('source_split', 'the source split')})"
        )


def load_scenes(
    data_root: str | os.PathLike[str],
    split: str,
    scene_filter: SceneFilter | None = None,
    driving_command_fn: DrivingCommandFn | None = None,
    report: LoadReport | None = None,
) -> list[Scene]:
    """NAVSIM scenes of every log of ``split`` (of a scene-list split: the listed scenes); unreadable logs
    are skipped with a warning (see ``report``)."""
    sf = with_split_tokens(SceneFilter() if scene_filter is None else scene_filter, data_root, split)
    scenes = _load(split_log_paths(data_root, split), lambda log: extract_scenes(log, sf, driving_command_fn), report)
    return scenes if sf.max_scenes is None else scenes[: sf.max_scenes]


def load_scenarios(
    data_root: str | os.PathLike[str],
    split: str,
    scenario_filter: ScenarioFilter | None = None,
    report: LoadReport | None = None,
) -> list[Scenario]:
    """nuPlan scenarios of every log of ``split``; unreadable logs are skipped with a warning.

    Raises:
        SplitError: ``split`` is a scene list (it names 2 Hz NAVSIM scenes, not scenarios).
    """
    reject_scene_list(data_root, split)
    return _load(split_log_paths(data_root, split), lambda log: extract_scenarios(log, scenario_filter), report)
