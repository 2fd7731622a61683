"""``diffplan data synth`` after a kill, a resume or a no-op run: no leftovers, a summary of the whole city."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from simulation.datasets.synthetic.cli import main

ARGS = ["--preset", "tiny", "--logs", "2", "--duration", "6", "--seed", "5", "--plots", "0"]


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "city"
    assert main(["--out", str(root), *ARGS]) == 0
    return root


def _summary(root):
    return json.loads((root / "synth_summary.json").read_text())


def test_a_resumed_or_no_op_run_summarises_the_whole_city(city):
    whole = _summary(city)
    assert whole["frames"] == 2 * 120 and whole["scenes"] > 0
    assert main(["--out", str(city), *ARGS]) == 0  # nothing to do
    assert _summary(city) == whole
    sorted(city.glob("splits/*/*.db"))[0].unlink()  # one log lost: the re-run writes it again
    assert main(["--out", str(city), *ARGS]) == 0
    assert _summary(city) == whole


def test_what_a_killed_run_left_behind_is_removed_and_does_not_block(city):
    log = sorted(city.glob("splits/*/*.db"))[0]
    gpkg = next(city.glob("maps/*/*/map.gpkg"))
    leftovers = [
        log.with_name(f".{log.name}.4242.scratch"),  # the log writer's scratch copy
        log.with_name(f"..{log.name}.4242.scratch.k3j2h1.tmp"),  # its temporary file
        log.with_name(f".{log.name}.a8b7c6.tmp"),  # the VACUUM INTO target
        gpkg.with_name(f"..{gpkg.name}.4242.scratch.x1y2z3.tmp"),
        city / ".synth_summary.json.tmp",
        city / ".synth_summary.json.q1w2e3.tmp",
        city / ".synth_manifest.json.r4t5y6.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half a file")
    assert main(["--out", str(city), *ARGS]) == 0
    assert [p for p in leftovers if p.exists()] == []
    assert not list(city.rglob("*.scratch.*.tmp")) and not list(city.rglob(".*.tmp"))
    assert _summary(city)["frames"] == 2 * 120


def test_a_real_kill_leaves_nothing_after_the_re_run(tmp_path):
    out = tmp_path / "killed"
    args = ["--out", str(out), "--preset", "tiny", "--logs", "3", "--duration", "20", "--seed", "2", "--plots", "0"]
    code = f"import sys; from simulation.datasets.synthetic.cli import main; sys.exit(main({args!r}))"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120.0
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if list(out.glob("splits/*/.*")):  # a log is being written: kill the run there
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed while writing a log"
    assert main(args) == 0
    assert not list(out.rglob("*.scratch.*.tmp")) and not list(out.rglob(".*.tmp")) and not list(out.rglob("*.scratch"))
    assert len(list(out.glob("splits/*/*.db"))) == 3
    assert json.loads((out / "synth_summary.json").read_text())["frames"] == 3 * 400
