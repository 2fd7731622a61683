"""Splits: definitions shipped in ``configs/data/splits``, log paths, and loading over bad logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import configs
from simulation.datasets.cli import main as scenes_cli
from simulation.datasets.nuplan_db import write_log
from simulation.datasets.scenes import SceneFilter
from simulation.datasets.splits import (
    SPLITS_DIR,
    LoadReport,
    SplitError,
    available_splits,
    load_scenes,
    split_definition,
    split_log_paths,
)
from simulation.datasets.testing import make_log_data


def test_split_definitions_ship_with_the_configs_package():
    assert SPLITS_DIR == configs.SPLITS_DIR == configs.CONFIG_ROOT / "data" / "splits"
    assert (configs.BENCH_DIR / "config.yaml").is_file() and (configs.TRAIN_DIR / "ego_mlp.yaml").is_file()
    assert {"mini", "synth_test", "synth_train", "synth_val", "synth_navtest"} <= set(available_splits())
    assert split_definition("synth_test")["log_dir"] == "splits/synth_test"


def _write_split(root: Path, split: str, names: list[str]) -> list[Path]:
    paths = []
    for name in names:
        paths.append(
            write_log(
                make_log_data(duration_s=10.0, num_scenes=2, log_name=name), root / "splits" / split / f"{name}.db"
            )
        )
    return paths


def test_splits_and_loading_skip_bad_logs(tmp_path, caplog):
    _write_split(tmp_path, "synth_test", ["log-b", "log-a"])
    bad = tmp_path / "splits" / "synth_test" / "log-c.db"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)
    assert [p.name for p in split_log_paths(tmp_path, "synth_test")] == ["log-a.db", "log-b.db", "log-c.db"]
    report = LoadReport()
    with caplog.at_level(logging.WARNING):
        scenes = load_scenes(
            tmp_path, "synth_test", SceneFilter(num_history_frames=2, num_future_frames=4), report=report
        )
    assert report.num_logs == 3 and report.num_skipped == 1 and "log-c.db" in report.skipped[0][0]
    assert "log-c.db" in caplog.text and "1 of 3 logs skipped" in caplog.text
    assert len(scenes) == 2 * 3  # 20 frames at 2 Hz -> 3 windows of 6 per log
    with pytest.raises(SplitError, match="unknown split 'nope'"):
        split_log_paths(tmp_path, "nope")
    with pytest.raises(SplitError, match="no folder"):
        split_log_paths(tmp_path, "synth_val")


def test_scenes_cli(tmp_path, capsys):
    _write_split(tmp_path, "synth_val", ["log-a"])
    assert scenes_cli(["--data-root", str(tmp_path), "--split", "synth_val", "--history", "2", "--future", "4"]) == 0
    out = capsys.readouterr().out
    assert "synth_val: 1 logs (0 skipped), 3 scenes" in out and "straight" in out
    assert scenes_cli(["--data-root", str(tmp_path), "--split", "nope"]) == 1
