"""``diffplan data cache``: bad arguments are a clean error that writes nothing; all logs failing is a failure."""

from __future__ import annotations

import pytest

from simulation.datasets.nuplan_db import write_log
from simulation.datasets.testing import make_log_data
from training.cache import CacheBuildError, build_cache, main


def _city(tmp_path):
    data, maps = tmp_path / "data", tmp_path / "maps"
    maps.mkdir()
    for name in ("log-a", "log-b"):
        log = make_log_data(duration_s=6.0, num_scenes=1, log_name=name)
        write_log(log, data / "splits" / "synth_test" / f"{name}.db")
    return data, maps


@pytest.mark.parametrize("case", ["no data root", "unknown split", "missing split folder"])
def test_missing_split_or_data_root_is_a_clean_error_and_writes_nothing(tmp_path, capsys, case):
    data, maps = _city(tmp_path)
    out = tmp_path / "cache"
    args = ["--data-root", str(data), "--maps-root", str(maps), "--out", str(out), "--splits", "synth_test"]
    if case == "no data root":
        args[1] = str(tmp_path / "nowhere")
    elif case == "unknown split":
        args[-1] = "no_such_split"
    else:
        args[-1] = "synth_val"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("diffplan data cache: ") and "Traceback" not in err
    assert {"no data root": "nowhere", "unknown split": "no_such_split", "missing split folder": "synth_val"}[
        case
    ] in err
    assert not (out / "meta.json").exists()


def test_a_run_where_every_log_failed_exits_non_zero(tmp_path, capsys):
    data, maps = _city(tmp_path)  # the maps root holds none of the logs' maps: every log fails
    out = tmp_path / "cache"
    with pytest.raises(CacheBuildError, match="every one of the 2 logs failed"):
        build_cache(data, maps, ["synth_test"], out)
    args = ["--data-root", str(data), "--maps-root", str(maps), "--out", str(out), "--splits", "synth_test"]
    assert main(args) == 1
    assert "every one of the 2 logs failed" in capsys.readouterr().err
