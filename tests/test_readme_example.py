"""The README's "Add your own planner" example, run as written on the fixture log of the end-to-end benchmark test.

The command is read from the README (its overrides, with the fixture's data roots and a temporary output folder
added); the planner is ``docs/examples/my_planner.py`` through ``docs/examples/configs/planner/cruise.yaml``.

The fixture ego drives straight along one lane at ``v = 4 + 0.04 t`` m/s behind a lead vehicle 15 m ahead at the
same speed, and the human plan is the progress reference. The example planner keeps to the lane and never
collides, so NC = DAC = DDC = C = 1 and EP = 1 (it covers at least the human's distance). With the config's
1 m/s^2 towards 10 m/s it closes on the lead vehicle: TTC = 0 on every scene, PDMS = (5 EP + 0 + 2 C) / 12 = 7/12.
At the human's own 0.04 m/s^2 it drives the logged plan: PDMS = 1.
"""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulation.datasets.testing import write_fixture_data
from simulation.evaluation.cli import compose_config, run
from simulation.protocols import Observation, Planner
from simulation.types import Agents, EgoStates, StateIndex, TrafficLights

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples"
NUM_SCENES = 6
HUMAN_REFERENCE = "protocol.metric_cache.reference_planner._target_=planners.rule_based.LogReplayPlanner"
ONES = ("no_at_fault_collisions", "drivable_area_compliance", "ego_progress", "comfort",
        "driving_direction_compliance")  # fmt: skip


def readme_overrides() -> list[str]:
    """The Hydra overrides of the README's ``PYTHONPATH=docs/examples diffplan bench ...`` line."""
    lines = [ln for ln in (REPO / "README.md").read_text().splitlines() if ln.startswith("PYTHONPATH=docs/examples ")]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0])
    assert words[:3] == ["PYTHONPATH=docs/examples", "diffplan", "bench"], words
    return words[3:]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("readme_example")
    return write_fixture_data(root)


def _scores(roots: tuple[Path, Path], out: Path, *extra: str) -> pd.DataFrame:
    data_root, maps_root = roots
    overrides = [o.replace("file://docs/examples", f"file://{EXAMPLES}") for o in readme_overrides()]
    cfg = compose_config(
        [*overrides, f"data_root={data_root}", f"maps_root={maps_root}", f"output_dir={out}",
         f"max_scenes={NUM_SCENES}", "progress=false", "report.num_worst=0", HUMAN_REFERENCE, *extra]
    )  # fmt: skip
    assert cfg.planner.name == "cruise" and cfg.planner._target_ == "my_planner.CruisePlanner"
    rows = run(cfg)["rows"]
    assert len(rows) == NUM_SCENES and all(r["valid"] for r in rows), [r.get("error") for r in rows]
    return pd.read_csv(out / "scores.csv").iloc[:-1]


def test_readme_planner_example(roots: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))  # PYTHONPATH=docs/examples
    scores = _scores(roots, tmp_path / "readme")
    for name in ONES:
        np.testing.assert_allclose(scores[name], 1.0, err_msg=name)
    np.testing.assert_allclose(scores["time_to_collision_within_bound"], 0.0)
    np.testing.assert_allclose(scores["score"], 7 / 12)
    human_like = _scores(roots, tmp_path / "human_like", "planner.accel_mps2=0.04", "planner.cruise_speed_mps=20")
    for name in (*ONES, "time_to_collision_within_bound"):
        np.testing.assert_allclose(human_like[name], 1.0, err_msg=name)
    np.testing.assert_allclose(human_like["score"], 1.0, atol=1e-9)


def test_cruise_planner_reaches_and_holds_its_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    """From 4 m/s at 1 m/s^2 towards 6 m/s: speed 6 is reached at t = 2 s (x = 10 m), then held."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    planner = importlib.import_module("my_planner").CruisePlanner(cruise_speed_mps=6.0, accel_mps2=1.0)
    assert isinstance(planner, Planner)
    states = np.zeros((1, 11))
    states[0, StateIndex.VX] = 4.0
    obs = Observation(
        ego_history=EgoStates(states, np.zeros(1, dtype=np.int64)),
        agents=Agents.empty(1),
        traffic_lights=TrafficLights.empty(1),
        route_roadblock_ids=(),
        map_name="none",
    )
    poses = planner.plan(obs).poses
    t = np.arange(1, 9) * 0.5
    expected = np.where(t <= 2.0, 4.0 * t + 0.5 * t**2, 10.0 + 6.0 * (t - 2.0))
    np.testing.assert_allclose(poses[:, 0], expected)
    np.testing.assert_allclose(poses[:, 1:], 0.0)
