"""Split names, split entries, scene-list names and log names never lead outside their folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from simulation.datasets import splits
from simulation.datasets.nuplan_db import write_log
from simulation.datasets.safe_paths import path_inside, plain_name
from simulation.datasets.scene_lists import SceneList, SceneListError, scene_list_path, write_scene_list
from simulation.datasets.splits import SplitError, split_definition, split_log_paths, split_scene_list
from simulation.datasets.testing import make_log_data
from simulation.evaluation.sources import BenchConfigError, nuplan_log_source


@pytest.fixture
def splits_dir(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    monkeypatch.setattr(splits, "SPLITS_DIR", folder)
    return folder


def _define(folder: Path, name: str, spec: dict) -> None:
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))


def test_plain_names_and_relative_paths():
    assert plain_name("synth_test", "split") == "synth_test"
    assert plain_name("synth-0_synth-town-0_00001", "log") == "synth-0_synth-town-0_00001"
    for bad in ("../../..", "..", "a/b", "/etc/passwd", ".hidden", "", "a\\b", None):
        with pytest.raises(ValueError, match="not a plain name"):
            plain_name(bad, "split")
    assert path_inside("/data", "splits/synth_test", "log_dir") == Path("/data/splits/synth_test")
    for bad in ("../other", "splits/../../x", "/etc", "C:\\x", "..\\x", ""):
        with pytest.raises(ValueError, match="log_dir"):
            path_inside("/data", bad, "log_dir")


@pytest.mark.parametrize("split", ["../outside", "../../..", "/etc/passwd", "a/b"])
def test_a_split_name_with_a_folder_is_rejected_and_named(split, splits_dir):
    _define(splits_dir.parent, "outside", {"log_dir": "splits/synth_test"})  # a definition beside the configs
    with pytest.raises(SplitError, match="not a plain name") as err:
        split_definition(split)
    assert repr(split) in str(err.value)


def test_split_entries_that_leave_the_data_root_are_rejected(splits_dir, tmp_path):
    root = tmp_path / "data"
    (root / "splits" / "ok").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    write_log(make_log_data(duration_s=6.0, num_scenes=1, log_name="outside"), tmp_path / "other" / "outside.db")
    _define(splits_dir, "up", {"log_dir": "../other"})
    _define(splits_dir, "abs", {"log_dir": str(tmp_path / "other")})
    _define(splits_dir, "names", {"log_dir": "splits/ok", "log_names": ["../../other/outside"]})
    _define(splits_dir, "listed", {"log_dir": "splits/ok", "scene_list": "../../etc/passwd"})
    for name, value in [
        ("up", "'../other'"),
        ("abs", repr(str(tmp_path / "other"))),
        ("names", "'../../other/outside'"),
        ("listed", "'../../etc/passwd'"),
    ]:
        with pytest.raises(SplitError, match="split") as err:
            split_log_paths(root, name)
        assert value in str(err.value), str(err.value)
    with pytest.raises(BenchConfigError, match=r"\.\./other"):
        nuplan_log_source(str(root), "up", "navsim")


def test_scene_list_log_names_and_names_stay_inside(splits_dir, tmp_path):
    root = tmp_path / "data"
    (root / "splits" / "ok").mkdir(parents=True)
    _define(splits_dir, "hard", {"log_dir": "splits/ok", "scene_list": "scene_lists/hard.yaml"})
    write_scene_list(root / "scene_lists" / "hard.yaml", SceneList("hard", "ok", ("../../other/x",), ("ab",)))
    with pytest.raises(SplitError, match=r"\.\./\.\./other/x"):
        split_scene_list(root, "hard")
    with pytest.raises(SceneListError, match=r"'\.\./evil'"):
        scene_list_path(root, "../evil")
    assert scene_list_path(root, "synth_navtest") == root / "scene_lists" / "synth_navtest.yaml"


def test_bench_refuses_a_planner_name_that_would_leave_the_output_folder(tmp_path):
    from simulation.evaluation.cli import compose_config, run

    cfg = compose_config([f"data_root={tmp_path}", "planner.name=../../escaped", f"maps_root={tmp_path}"])
    with pytest.raises(BenchConfigError, match=r"'\.\./\.\./escaped'"):
        run(cfg)
