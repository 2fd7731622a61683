"""A benchmark survives bad planners and bad data: crashes, data failures, unreadable logs, nonsense overrides,
corrupt journals, a second run on the same folder, and a killed driver."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf
from test_benchmarks import HEADER, FakePlanner, FakeScorer, expected_score, scene_as_cache, toy_scenes

from simulation.datasets.nuplan_writer import write_log
from simulation.datasets.testing import make_log_data
from simulation.evaluation.cli import CONFIG_DIR
from simulation.evaluation.cli import main as bench_main
from simulation.evaluation.evaluator import SceneEvaluator
from simulation.evaluation.executors import WORKER_DIED, ProcessExecutor, SequentialExecutor
from simulation.evaluation.journal import Journal, JournalError
from simulation.evaluation.lock import LOCK_NAME, BenchLockError, pid_alive, run_lock
from simulation.evaluation.protocols import get_protocol
from simulation.evaluation.refs import InMemorySource
from simulation.evaluation.report import scores_table, summary_markdown
from simulation.evaluation.runner import JOURNAL_NAME, run_benchmark
from simulation.evaluation.sources import LogSource, NuplanExtractor
from simulation.maps.protocol import MapProtocol
from simulation.metric_cache import MetricCacheError
from simulation.protocols import Observation
from simulation.types import Trajectory


class ExitingPlanner(FakePlanner):
    """Constant velocity; on ``tokens`` it calls ``sys.exit``, ``os._exit`` or segfaults (``how``)."""

    def __init__(self, how: str = "sys_exit", tokens: tuple[str, ...] = (), sleep_s: float = 0.0) -> None:
        super().__init__()
        self.how, self.tokens, self.sleep_s = how, tokens, sleep_s

    def plan(self, observation: Observation) -> Trajectory:
        assert observation.log is not None
        time.sleep(self.sleep_s)
        if observation.log.token in self.tokens:
            if self.how == "sys_exit":
                sys.exit(3)
            if self.how == "os_exit":
                os._exit(7)
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().plan(observation)


def crash_evaluator(how: str = "sys_exit", tokens: tuple[str, ...] = (), sleep_s: float = 0.0) -> SceneEvaluator:
    """Module-level factory (picklable for process workers)."""
    unit = _unit(ExitingPlanner(how, tokens, sleep_s), scene_as_cache)
    return SceneEvaluator(InMemorySource(toy_scenes()), unit, get_protocol("navsim_v1"))


def _unit(planner: Any, cache: Any) -> Any:
    from simulation.evaluation.units import NavsimUnit

    return NavsimUnit(planner, FakeScorer(), cache)


def _refs() -> list[Any]:
    return InMemorySource(toy_scenes()).refs()


def _check_rows(rows: list[dict[str, Any]], bad: dict[str, str]) -> None:
    assert [r["token"] for r in rows] == [f"tok{i:02d}" for i in range(10)]
    for i, row in enumerate(rows):
        if row["token"] in bad:
            assert not row["valid"] and row["failure"] == "planner" and bad[row["token"]] in row["error"]
        else:
            assert row["valid"] and row["score"] == pytest.approx(expected_score(float(i)))


def test_sys_exit_costs_its_scene_sequentially(tmp_path: Path) -> None:
    factory = functools.partial(crash_evaluator, "sys_exit", ("tok03",))
    rows = run_benchmark(_refs(), factory, SequentialExecutor(), tmp_path, HEADER, chunk_size=3)
    _check_rows(rows, {"tok03": "SystemExit"})


@pytest.mark.parametrize("how", ["sys_exit", "os_exit", "segfault"])
def test_a_dying_worker_costs_its_scene_and_is_replaced(tmp_path: Path, how: str) -> None:
    factory = functools.partial(crash_evaluator, how, ("tok04", "tok07"))
    rows = run_benchmark(_refs(), factory, ProcessExecutor(num_workers=2), tmp_path, HEADER, chunk_size=3)
    text = "SystemExit" if how == "sys_exit" else WORKER_DIED
    _check_rows(rows, {"tok04": text, "tok07": text})
    assert len(Journal(tmp_path / JOURNAL_NAME, HEADER).open()) == 10


class FlakyCache:
    """A metric cache that fails (wrong version) for ``tokens``."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self.tokens = tokens

    def __call__(self, scene: Any, map_api: MapProtocol) -> Any:
        if scene.token in self.tokens:
            raise MetricCacheError(f"{scene.token}.npz: metric cache of version v1, this benchmark scores v2")
        return scene


def cache_evaluator(bad: tuple[str, ...] = ()) -> SceneEvaluator:
    return SceneEvaluator(
        InMemorySource(toy_scenes()), _unit(FakePlanner(), FlakyCache(bad)), get_protocol("navsim_v1")
    )


def test_data_failures_are_not_journaled_and_a_rerun_scores_them(tmp_path: Path) -> None:
    first = run_benchmark(_refs(), functools.partial(cache_evaluator, ("tok02",)), SequentialExecutor(), tmp_path,
                          HEADER, chunk_size=3)  # fmt: skip
    bad = next(r for r in first if r["token"] == "tok02")
    assert not bad["valid"] and bad["failure"] == "data" and "MetricCacheError" in bad["error"]
    assert "tok02" not in Journal(tmp_path / JOURNAL_NAME, HEADER).open()
    second = run_benchmark(_refs(), cache_evaluator, SequentialExecutor(), tmp_path, HEADER, chunk_size=3)
    _check_rows(second, {})


def test_empty_benchmark_average_is_not_valid() -> None:
    assert not bool(scores_table(get_protocol("navsim_v1"), []).iloc[-1]["valid"])


def _fake_config(tmp_path: Path, planner_yaml: str, cache: dict[str, Any] | None = None) -> Path:
    config_dir = tmp_path / "bench"
    shutil.copytree(CONFIG_DIR, config_dir)
    protocol = OmegaConf.load(config_dir / "protocol" / "navsim_v1.yaml")
    protocol.scorer = {"_target_": "test_benchmarks.FakeScorer"}
    protocol.metric_cache = cache or {"_target_": "test_benchmarks.scene_as_cache", "_partial_": True}
    OmegaConf.save(protocol, config_dir / "protocol" / "fake_v1.yaml")
    (config_dir / "planner" / "fake.yaml").write_text(planner_yaml)
    return config_dir


def toy_source(
    data_root: Any, split: str, kind: str, scene_filter: Any, count: int = 10, maps_root: Any = None
) -> InMemorySource:
    return InMemorySource(toy_scenes()[:count])


def _argv(config_dir: Path, out: Path, *extra: str) -> list[str]:
    source = f"source._target_={__name__}.toy_source"
    return ["--config-dir", str(config_dir), "protocol=fake_v1", "planner=fake", source, "maps=null",
            f"output_dir={out}", "progress=false", "report.num_worst=0", *extra]  # fmt: skip


def test_bench_exits_nonzero_on_data_failures_and_on_no_valid_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = {"_target_": f"{__name__}.FlakyCache", "tokens": ["tok01"]}
    config_dir = _fake_config(tmp_path, "name: fake\n_target_: test_benchmarks.FakePlanner\n", cache)
    assert bench_main(_argv(config_dir, tmp_path / "data")) == 1
    assert "1 tokens failed because of data or configuration" in capsys.readouterr().out
    assert bench_main(_argv(config_dir, tmp_path / "empty", "+source.count=0")) == 1
    assert "no valid token" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "message"),
    [("max_scenes=-3", "max_scenes=-3"), ("worker=process", "worker.num_workers=0"), ("chunk_size=0", "chunk_size")],
)
def test_nonsense_overrides_fail_fast_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    config_dir = _fake_config(tmp_path, "name: fake\n_target_: test_benchmarks.FakePlanner\n")
    extra = [override] + (["worker.num_workers=0"] if override == "worker=process" else [])
    assert bench_main(_argv(config_dir, tmp_path / "out", *extra)) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and message in out[0]
    assert not (tmp_path / "out" / JOURNAL_NAME).exists()


def test_corrupt_journal_line_names_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_dir = _fake_config(tmp_path, "name: fake\n_target_: test_benchmarks.FakePlanner\n")
    out = tmp_path / "out"
    assert bench_main(_argv(config_dir, out)) == 0
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    lines[3] = lines[3][:20] + "#garbage"
    (out / JOURNAL_NAME).write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert bench_main(_argv(config_dir, out)) == 2
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert str(out / JOURNAL_NAME) in line and "line 4" in line
    with pytest.raises(JournalError, match="line 4"):
        Journal(out / JOURNAL_NAME, json.loads(lines[0])).open()


def test_second_run_on_a_folder_refuses_and_a_stale_lock_does_not_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_dir = _fake_config(tmp_path, "name: fake\n_target_: test_benchmarks.FakePlanner\n")
    out = tmp_path / "out"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_NAME).write_text(f"{owner.pid}\n")
        assert bench_main(_argv(config_dir, out)) == 2
        assert f"pid {owner.pid}" in capsys.readouterr().out and not (out / JOURNAL_NAME).exists()
    finally:
        owner.kill()
        owner.wait()
    assert not pid_alive(owner.pid)
    assert bench_main(_argv(config_dir, out)) == 0  # the lock of a dead process is stale
    assert not (out / LOCK_NAME).exists()
    second = f"from simulation.evaluation.lock import run_lock\nwith run_lock({str(out)!r}): pass"
    with run_lock(out):
        result = subprocess.run([sys.executable, "-c", second], capture_output=True, text=True, env=_env())
    assert result.returncode != 0 and BenchLockError.__name__ in result.stderr


def test_an_unreadable_log_is_skipped_named_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = []
    for i in (0, 1):
        log = make_log_data(duration_s=20.0, num_scenes=2, log_name=f"2021.05.12.22.00.38_veh-35_0000{i}_00601")
        paths.append(tmp_path / f"{log.log_name}.db")
        write_log(log, paths[-1])
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 3])  # truncated
    source = LogSource([str(p) for p in paths], NuplanExtractor("navsim"))
    refs = source.refs()
    assert refs and {r.group for r in refs} == {str(paths[0])}
    assert [p for p, _ in source.skipped] == [str(paths[1])] and str(paths[1]) in caplog.text
    text = summary_markdown(get_protocol("navsim_v1"), [], {}, skipped_logs=source.skipped)
    assert "skipped logs (unreadable): 1" in text and str(paths[1]) in text


def _env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(Path(__file__).parent)])}


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_pool_workers_exit_after_kill_9_of_the_driver(tmp_path: Path) -> None:
    script = (
        "import functools\n"
        "from test_benchmarks import HEADER\n"
        "from test_bench_reliability_runs import crash_evaluator, _refs\n"
        "from simulation.evaluation.executors import ProcessExecutor\n"
        "from simulation.evaluation.runner import run_benchmark\n"
        "factory = functools.partial(crash_evaluator, 'none', (), 5.0)\n"
        f"run_benchmark(_refs(), factory, ProcessExecutor(num_workers=2), {str(tmp_path)!r}, HEADER, chunk_size=1)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", script], env=_env())
    try:
        deadline = time.monotonic() + 60
        while len(_children(driver.pid)) < 2 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
        children = _children(driver.pid)
        assert len(children) >= 2, "the pool did not start"
        time.sleep(1.0)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 30  # the watchdog polls; a busy machine is slow to schedule it
    while any(pid_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in children if pid_alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"orphaned pool workers: {left}"
