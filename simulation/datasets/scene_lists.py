"""Scene lists: the NAVSIM scenes selected from a split, by log name and scene token.

A scene list is to a log split what NAVSIM's ``navtest`` filter is to OpenScene's ``test``: the same logs,
only the listed scenes. It is a YAML file under the data root (``<data_root>/scene_lists/<name>.yaml``)
because its tokens belong to the data it was made from; a split definition names it with a
``scene_list`` entry (``configs/data/splits/synth_navtest.yaml``). ``diffplan data select`` writes one
(:mod:`simulation.evaluation.selection`); the keys are::

    version: 1
    name: synth_navtest
    source_split: synth_test          # the log split the scenes were cut from
    rule: {...}                       # how they were chosen (free-form, for the reader)
    counts: {...}                     # scenes considered / selected, per scenario type
    log_names: [...]                  # logs holding at least one selected scene, in split order
    tokens: [...]                     # scene tokens (the current frame's lidar_pc token), in split order

Only ``log_names`` and ``tokens`` decide which scenes a benchmark sees.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simulation.datasets.safe_paths import plain_name
from simulation.io import atomic_write_text

SCENE_LIST_VERSION = 1
#: Folder of the scene lists, relative to the data root.
SCENE_LIST_DIR = "scene_lists"


class SceneListError(ValueError):
    """A scene list file is missing, unreadable or malformed (the message names the file)."""


@dataclass(frozen=True)
class SceneList:
    """Selected scenes of ``source_split``: their logs and tokens, and how they were chosen."""

    name: str
    source_split: str
    log_names: tuple[str, ...]
    tokens: tuple[str, ...]
    rule: Mapping[str, Any] = field(default_factory=dict)
    counts: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.tokens)) != len(self.tokens):
            raise SceneListError(f"scene list {self.name!r}: tokens are not unique")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCENE_LIST_VERSION,
            "name": self.name,
            "source_split": self.source_split,
            "rule": dict(self.rule),
            "counts": dict(self.counts),
            "log_names": list(self.log_names),
            "tokens": list(self.tokens),
        }


def scene_list_path(data_root: str | os.PathLike[str], name: str) -> Path:
    """Where the scene list ``name`` of ``data_root`` lives.

    Raises:
        SceneListError: ``name`` is not a plain name (it would lead outside ``<data_root>/scene_lists``).
    """
    return Path(data_root) / SCENE_LIST_DIR / f"{plain_name(name, 'scene list name', SceneListError)}.yaml"


def write_scene_list(path: str | os.PathLike[str], scene_list: SceneList) -> Path:
    """Write ``scene_list`` to ``path`` (temporary name, then rename: a kill never leaves half a file)."""
    path = Path(path)
    atomic_write_text(path, yaml.safe_dump(scene_list.to_dict(), sort_keys=False, width=120))
    return path


def _strings(path: Path, data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SceneListError(f"{path}: '{key}' must be a list of strings")
    return tuple(value)


def read_scene_list(path: str | os.PathLike[str]) -> SceneList:
    """Read a scene list written by :func:`write_scene_list`.

    Raises:
        SceneListError: the file is missing, is not YAML, has another version, or lacks a key.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneListError(f"{path}: no such scene list") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SceneListError(f"{path}: not a readable scene list ({exc})") from None
    if not isinstance(data, dict):
        raise SceneListError(f"{path}: a scene list is a YAML mapping")
    if data.get("version") != SCENE_LIST_VERSION:
        raise SceneListError(f"{path}: scene list version {data.get('version')!r}, expected {SCENE_LIST_VERSION}")
    for key in ("name", "source_split"):
        if not isinstance(data.get(key), str):
            raise SceneListError(f"{path}: '{key}' must be a string")
    log_names, tokens = _strings(path, data, "log_names"), _strings(path, data, "tokens")
    rule, counts = data.get("rule") or {}, data.get("counts") or {}
    if not isinstance(rule, dict) or not isinstance(counts, dict):
        raise SceneListError(f"{path}: 'rule' and 'counts' must be mappings")
    try:
        return SceneList(data["name"], data["source_split"], log_names, tokens, rule, counts)
    except SceneListError as exc:
        raise SceneListError(f"{path}: {exc}") from None


def selected_in_order(candidates: Sequence[tuple[str, str]], keep: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(log_names, tokens)`` of the ``(log_name, token)`` candidates whose token is in ``keep``, in
    candidate order (logs once each, in order of their first selected scene)."""
    tokens = tuple(tok for _, tok in candidates if tok in keep)
    logs = tuple(dict.fromkeys(log for log, tok in candidates if tok in keep))
    return logs, tokens
