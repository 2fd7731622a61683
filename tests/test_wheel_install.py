"""The built wheel works on its own: configs ship inside it, and ``diffplan bench`` runs from an installed copy.

The wheel is built from a copy of the sources (so the checkout gets no ``build/`` or ``*.egg-info``), installed
(not editable) into a fresh virtual environment, and run from a folder outside the checkout. The new
environment sees the project's dependencies through a ``.pth`` line naming the project environment's
``site-packages``: a plain path line runs none of that folder's own ``.pth`` hooks, so an editable install of
the checkout there stays inactive and every ``import simulation`` resolves to the wheel's copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from simulation.datasets.testing import write_fixture_data

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("simulation", "rewards", "planners", "bev_warp", "training", "configs")

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(src)], tmp)
    (wheel,) = wheels.glob("diffplan-*.whl")
    return wheel


def _install(tmp: Path, wheel: Path) -> Path:
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).strip())
    (site / "_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python", str(python)]
    _run([*pip, "install", "--no-deps", "--no-index", str(wheel)], tmp)
    return env_dir


def test_installed_wheel_runs_a_benchmark(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    env_dir = _install(tmp_path, wheel)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    probe = "import configs, simulation; print(simulation.__file__, configs.BENCH_DIR)"
    where = _run([str(env_dir / "bin" / "python"), "-c", probe], cwd).split()
    assert all(Path(p).resolve().is_relative_to(env_dir.resolve()) for p in where), where
    assert (Path(where[1]) / "config.yaml").is_file()

    diffplan = str(env_dir / "bin" / "diffplan")
    assert "Hydra overrides" in _run([diffplan, "bench", "--help"], cwd)

    data_root, maps_root = write_fixture_data(tmp_path)
    out = tmp_path / "bench"
    overrides = [
        "protocol=navsim_v1",
        "planner=constant_velocity",
        f"data_root={data_root}",
        f"maps_root={maps_root}",
        "split=synth_test",
        f"output_dir={out}",
        "max_scenes=1",
        "progress=false",
        "report.num_worst=0",
    ]
    stdout = _run([diffplan, "bench", *overrides], cwd, timeout=300)
    assert "over 1/1 valid tokens" in stdout, stdout
    assert (out / "scores.csv").is_file() and (out / "config.yaml").is_file()
