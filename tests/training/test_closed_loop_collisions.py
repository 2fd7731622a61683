"""benchmarks/closed_loop_collisions.py: at-fault collision records of a hand-built rollout, and their summary."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from closed_loop_collisions import at_fault_records, summarise  # noqa: E402

from rewards.nuplan_collisions import at_fault_collisions  # noqa: E402
from simulation.types import StateIndex, TrackedObjectType  # noqa: E402


def _records(ego, log_speed, boxes, types, valid, in_route):
    return at_fault_records(at_fault_collisions(ego, boxes, types, valid, in_route), ego, log_speed, boxes, types)


def _rollout(ego_speed: float, lead_speed: float, lead_x: float, steps: int = 40):
    """The ego drives along +x at ``ego_speed``; one vehicle ahead at ``lead_x`` drives at ``lead_speed``."""
    t = np.arange(steps) * 0.1
    ego = np.zeros((steps, 11))
    ego[:, StateIndex.X] = ego_speed * t
    ego[:, StateIndex.VX] = ego_speed
    boxes = np.zeros((steps, 1, 7))
    boxes[:, 0, 0] = lead_x + lead_speed * t
    boxes[:, 0, 3] = lead_speed
    boxes[:, 0, 5], boxes[:, 0, 6] = 4.5, 2.0
    types = np.array([TrackedObjectType.VEHICLE])
    return ego, boxes, types, np.ones((steps, 1), bool), np.ones(steps, bool)


def test_rear_ending_a_stopped_vehicle_is_one_stopped_track_record() -> None:
    ego, boxes, types, valid, in_route = _rollout(ego_speed=8.0, lead_speed=0.0, lead_x=12.0)
    records = _records(ego, np.full(len(ego), 1.5), boxes, types, valid, in_route)
    assert len(records) == 1
    r = records[0]
    # the Pacifica's front bumper (rear axle + 4.049 m) reaches the lead's rear (12 - 2.25 = 9.75 m) at x = 5.70 m:
    # t = 0.71 s at 8 m/s, so the first 0.1 s frame in contact is t = 0.8 s
    assert r["type"] == "STOPPED_TRACK" and r["agent_type"] == "VEHICLE"
    assert r["time_s"] == pytest.approx(0.8)
    assert r["ego_speed"] == pytest.approx(8.0) and r["log_speed"] == pytest.approx(1.5) and r["agent_speed"] == 0.0


def test_no_contact_no_record_and_the_summary_counts() -> None:
    ego, boxes, types, valid, in_route = _rollout(ego_speed=5.0, lead_speed=5.0, lead_x=20.0)
    assert _records(ego, np.zeros(len(ego)), boxes, types, valid, in_route) == []
    records = [
        {"type": "ACTIVE_FRONT", "ego_speed": 6.0, "log_speed": 1.0},
        {"type": "ACTIVE_FRONT", "ego_speed": 2.0, "log_speed": 1.5},  # faster, but within the 1 m/s margin
        {"type": "STOPPED_TRACK", "ego_speed": 3.0, "log_speed": 0.0},
    ]
    s = summarise(records)
    assert s["collisions"] == 3 and s["by_type"] == {"ACTIVE_FRONT": 2, "STOPPED_TRACK": 1}
    assert s["ego_faster_than_log"] == 2
    assert s["median_ego_speed"] == 3.0 and s["median_log_speed"] == 1.0
    assert summarise([])["collisions"] == 0


@pytest.mark.parametrize("reactive", [False, True])
def test_the_command_drives_a_pair_as_the_benchmark_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], reactive: bool
) -> None:
    from closed_loop_collisions import main
    from closed_loop_fixtures import write_data_root

    import simulation.closed_loop as closed_loop
    from planners.reranked import reranked_planner
    from rewards.nuplan_metrics import score_simulation
    from simulation.datasets.scenes import extract_scenarios
    from simulation.datasets.testing import make_log_data
    from simulation.maps.api import MapAPI
    from simulation.maps.testing import build_fixture_map

    root = write_data_root(tmp_path, "synth_test")
    built: list[bool] = []

    class Spy(closed_loop.ClosedLoopSimulator):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self.config.reactive)

    monkeypatch.setattr(closed_loop, "ClosedLoopSimulator", Spy)
    argv = ["--data-root", str(root / "data"), "--maps-root", str(root / "maps"), "--ckpt", str(root / "pair.ckpt"),
            "--planner", "reranked", *(["--reactive"] if reactive else [])]  # fmt: skip
    assert main(argv) == 0 and built == [reactive]  # log replay (CLS-NR) or IDM agents (CLS-R)
    found = int(capsys.readouterr().out.splitlines()[-1].split()[0])
    # its at-fault collisions are those of the pair's rollout as the benchmark scores it
    scenario, map_api = extract_scenarios(make_log_data())[0], MapAPI.from_data(build_fixture_map())
    history = Spy(reactive=reactive).run(scenario, reranked_planner(str(root / "pair.ckpt")), map_api)
    multiplier = score_simulation(scenario, history, map_api)["no_ego_at_fault_collisions"]
    assert (found == 0) == (multiplier == 1.0)
