"""Synthetic city output pieces that need no log writer: maps on disk, output-folder checks, log plans."""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import pyogrio
import pytest

from simulation.datasets.synthetic.cli import SynthParameterError, _parser, validate
from simulation.datasets.synthetic.generator import SPLITS, plan_logs
from simulation.datasets.synthetic.output import (
    MANIFEST,
    OutputFolderError,
    check_output_folder,
    write_maps_index,
    write_town_map,
)
from simulation.maps.api import MapAPI
from simulation.maps.gpkg import find_map_file, read_map


def test_map_files_byte_identical_and_readable(tmp_path):
    paths = []
    for name in ("a", "b"):
        root = tmp_path / name
        paths.append(write_town_map(root, 5, 1))
        write_maps_index(root, [1], 5)
    assert hashlib.sha256(paths[0].read_bytes()).digest() == hashlib.sha256(paths[1].read_bytes()).digest()
    assert paths[0] == tmp_path / "a" / "maps" / "synth-town-1" / "1.0.5" / "map.gpkg"
    assert find_map_file(tmp_path / "a" / "maps", "synth-town-1") == paths[0]
    data = read_map(paths[0])
    assert data.crs == "EPSG:32611"
    api = MapAPI.from_data(data)
    x, y = next(iter(api.lanes.values())).baseline[0]
    assert 600_000 < x < 700_000 and 3_990_000 < y < 4_020_000  # a plausible UTM 11N position
    assert not list(paths[0].parent.glob(".*"))  # no temporary files left


def test_gdal_reads_the_map(tmp_path):
    path = write_town_map(tmp_path, 5, 0)
    names = {str(n) for n in pyogrio.list_layers(path)[:, 0]}
    assert {"lanes_polygons", "lane_connectors", "lane_group_connectors", "baseline_paths"} <= names
    meta, _, geom, _ = pyogrio.raw.read(path, layer="lane_connectors")
    assert "exit_lane_fid" in list(meta["fields"]) and len(geom) > 0


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["--out", "x", *argv])


def test_invalid_parameters_are_rejected():
    for argv, msg in (
        (("--logs", "0"), "--logs"),
        (("--towns", "0"), "--towns"),
        (("--duration", "1"), "--duration"),
        (("--workers", "zero"), "--workers"),
        (("--workers", "0"), "--workers"),
        (("--towns", "1", "--disjoint-test-towns"), "disjoint"),
        (("--seed", "-3"), "--seed"),
        (("--logs", "90000"), "--logs"),  # top-up logs are numbered from 90000
        (("--min-test-scenes", "-1"), "--min-test-scenes"),
    ):
        with pytest.raises(SynthParameterError, match=msg):
            validate(_args(*argv))


def test_output_folder_checks(tmp_path):
    manifest = {"seed": 1, "towns": 2}
    check_output_folder(tmp_path / "absent", manifest)
    check_output_folder(tmp_path, manifest)  # empty
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(OutputFolderError, match="holds no"):
        check_output_folder(tmp_path, manifest)
    other = tmp_path / "other"
    other.mkdir()
    (other / MANIFEST).write_text(json.dumps({"seed": 2, "towns": 2}))
    with pytest.raises(OutputFolderError, match="seed"):
        check_output_folder(other, manifest)
    (other / MANIFEST).write_text(json.dumps(manifest))
    check_output_folder(other, manifest)


def test_log_plan_splits_towns_and_seeds():
    specs = plan_logs(20, 3, 4, 30.0)
    assert [s.split for s in specs[:14]] == [SPLITS[i] for i in (0, 2, 0, 1, 2, 0, 2) * 2]
    assert {s.town for s in specs} == {0, 1, 2}
    assert len({s.name for s in specs}) == 20
    # a log's spec does not depend on how many logs are planned (re-runs may add logs)
    assert plan_logs(5, 3, 4, 30.0) == specs[:5]
    disjoint = plan_logs(20, 3, 4, 30.0, disjoint_test=True)
    assert {s.town for s in disjoint if s.split == SPLITS[2]} == {2}
    assert 2 not in {s.town for s in disjoint if s.split != SPLITS[2]}
    densities = np.array([s.drive.vehicles_per_km for s in plan_logs(60, 2, 0, 30.0)])
    assert densities.min() <= 4.0 and densities.max() >= 38.0  # from nearly empty roads to congestion


def test_towns_are_placed_apart(tmp_path):
    a = MapAPI.from_data(read_map(write_town_map(tmp_path, 5, 0)))
    b = MapAPI.from_data(read_map(write_town_map(tmp_path, 5, 1)))
    xa = np.mean([lane.baseline[0, 0] for lane in a.lanes.values()])
    xb = np.mean([lane.baseline[0, 0] for lane in b.lanes.values()])
    assert a.map_name == "synth-town-0" and b.map_name == "synth-town-1"
    assert 4_000 < xb - xa < 6_000
