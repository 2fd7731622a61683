"""Logs that do not fit their map are an error naming the log and the map, before anything is scored."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from simulation.datasets.nuplan_db import read_log, write_log
from simulation.datasets.synthetic.cli import main as synth
from simulation.datasets.testing import make_log_data
from simulation.evaluation.sources import BenchConfigError, nuplan_log_source
from simulation.maps.api import MapAPI
from simulation.maps.errors import LogMapMismatchError
from simulation.maps.fit import MAX_OFF_MAP_M, check_log_fits_map
from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map

ARGS = ["--preset", "tiny", "--logs", "2", "--duration", "8", "--plots", "0"]


@pytest.fixture(scope="module")
def cities(tmp_path_factory):
    root = tmp_path_factory.mktemp("cities")
    for seed in (5, 6):
        assert synth(["--out", str(root / f"seed{seed}"), *ARGS, "--seed", str(seed)]) == 0
    return root / "seed5", root / "seed6"


def _split_of(city):
    return sorted(city.glob("splits/*/*.db"))[0].parent.name


def test_each_city_has_its_own_map_version_recorded_in_its_logs(cities):
    for city, version in zip(cities, ("1.0.5", "1.0.6"), strict=True):
        assert (city / "maps" / "synth-town-0" / version / "map.gpkg").is_file()
        api = MapAPI.load(city / "maps", "synth-town-0")
        assert api.data.version == version and api.data.meta["version"] == version
        for path in city.glob("splits/*/*.db"):
            log = read_log(path)
            assert (log.map_location, log.map_version) == ("synth-town-0", version)
            check_log_fits_map(log.log_name, log.map_version, log.ego_states[0, :2], api)


def test_a_citys_logs_against_another_citys_maps_is_an_error(cities):
    five, six = cities
    split = _split_of(six)
    source = nuplan_log_source(str(six), split, "navsim", maps_root=str(six / "maps"))
    assert source.refs()  # its own maps: fine
    wrong = nuplan_log_source(str(six), split, "navsim", maps_root=str(five / "maps"))
    with pytest.raises(BenchConfigError) as err:
        wrong.refs()
    message = str(err.value)
    assert "synth-6_synth-town-0_" in message and "synth-town-0" in message
    assert "version 1.0.6" in message and "version 1.0.5" in message


def test_the_data_cache_refuses_another_citys_maps(cities, tmp_path, caplog):
    from training.cache import CacheBuildError, build_cache

    five, six = cities
    with caplog.at_level(logging.WARNING), pytest.raises(CacheBuildError, match="logs failed"):
        build_cache(six, five / "maps", [_split_of(six)], tmp_path / "cache", metric_version="v1")
    assert "LogMapMismatchError" in caplog.text and "version 1.0.6" in caplog.text
    assert not list((tmp_path / "cache").rglob("*.npz"))


def test_any_log_must_start_on_its_map():
    api = MapAPI.from_data(build_fixture_map(version="9.12.1964"))  # a nuPlan-style version
    log = make_log_data(duration_s=6.0, num_scenes=1)
    start = log.ego_states[0, :2]
    check_log_fits_map(log.log_name, "", start, api)  # nuPlan logs record no version: only the pose is checked
    check_log_fits_map(log.log_name, "9.12.1964", start, api)
    check_log_fits_map(log.log_name, "", start + [0.0, MAX_OFF_MAP_M - 12.0], api)  # near a lane: fine
    with pytest.raises(LogMapMismatchError, match=rf"log {log.log_name}: .* map fixture-town version 9\.12\.1964"):
        check_log_fits_map(log.log_name, "", start + [5_000.0, 0.0], api)
    with pytest.raises(LogMapMismatchError, match="version 9.15.1915"):
        check_log_fits_map(log.log_name, "9.15.1915", start, api)
    with pytest.raises(LogMapMismatchError, match="first position"):
        check_log_fits_map(log.log_name, "", np.array([np.nan, 0.0]), api)


def test_map_version_round_trips_and_nuplan_logs_have_none(tmp_path):
    log = make_log_data(duration_s=6.0, num_scenes=1, origin=FIXTURE_ORIGIN)
    assert read_log(write_log(log, tmp_path / "a.db")).map_version == ""
    versioned = replace(log, map_version="1.0.7")
    back = read_log(write_log(versioned, tmp_path / "b.db"))
    assert back.map_version == "1.0.7" and back.map_location == log.map_location
