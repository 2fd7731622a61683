"""benchmarks/closed_loop_oracle.py: the selector's choice on hand-built scores, the PDMS-best candidate in a
closed-loop state, and the command's journal (the discriminator's pick reproduces the benchmark, a journal resumes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from closed_loop_fixtures import write_data_root

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from closed_loop_oracle import OracleSelector, main, oracle_pick, read_journal  # noqa: E402

from planners.reranked import reranked_planner  # noqa: E402
from planners.rule_based import PDMClosedPlanner  # noqa: E402
from rewards.nuplan_metrics import score_simulation  # noqa: E402
from rewards.pdm import PDMScorer  # noqa: E402
from simulation.closed_loop import ClosedLoopSimulator  # noqa: E402
from simulation.datasets.scenes import extract_scenarios  # noqa: E402
from simulation.datasets.testing import make_log_data  # noqa: E402
from simulation.maps.api import MapAPI  # noqa: E402
from simulation.maps.testing import build_fixture_map  # noqa: E402
from simulation.metric_cache import build_metric_cache  # noqa: E402
from training.dagger import closed_loop_scene  # noqa: E402

SCORES = np.array([0.9, 0.5, 0.7, 0.95])
PICKABLE = np.array([True, True, True, False])  # the highest score is not pickable


def _metrics(pdms, nc, dac):
    return {"score": np.array(pdms, float), "no_at_fault_collisions": np.array(nc, float),
            "drivable_area_compliance": np.array(dac, float)}  # fmt: skip


def test_the_discriminator_pick_is_its_best_pickable_candidate() -> None:
    assert oracle_pick("discriminator", SCORES, PICKABLE, _metrics([0, 1, 1, 1], [1] * 4, [1] * 4)) == (0, False)
    # the discriminator's own pick when given (its forward's ``best``), kept where nothing is labelled
    assert oracle_pick("discriminator", SCORES, PICKABLE, None, own=2) == (2, False)
    assert oracle_pick("safe", SCORES, PICKABLE, None, own=2) == (2, True)


def test_pdms_drives_the_best_candidate_and_the_discriminator_breaks_ties() -> None:
    assert oracle_pick("pdms", SCORES, PICKABLE, _metrics([0.2, 0.8, 0.6, 1.0], [1] * 4, [1] * 4)) == (1, False)
    # candidates 1 and 2 tie at 0.8: the discriminator prefers 2 (0.7 > 0.5); 3 (1.0) is not pickable
    assert oracle_pick("pdms", SCORES, PICKABLE, _metrics([0.2, 0.8, 0.8, 1.0], [1] * 4, [1] * 4)) == (2, False)
    # no scene: the discriminator's pick, counted as a fallback
    assert oracle_pick("pdms", SCORES, PICKABLE, None) == (0, True)


def test_safe_keeps_the_discriminators_order_among_the_candidates_that_pass() -> None:
    # 0 collides, 2 leaves the drivable area: 1 is the only safe pickable one, whatever its PDMS
    assert oracle_pick("safe", SCORES, PICKABLE, _metrics([1, 0.1, 1, 1], [0, 1, 1, 1], [1, 1, 0, 1])) == (1, False)
    assert oracle_pick("safe", SCORES, PICKABLE, _metrics([1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1])) == (0, False)
    # nothing passes (the only safe one is not pickable): the discriminator's pick, a fallback
    assert oracle_pick("safe", SCORES, PICKABLE, _metrics([1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 0, 1])) == (0, True)


def test_bad_choices_are_errors() -> None:
    with pytest.raises(ValueError, match="pick must be one of"):
        oracle_pick("best", SCORES, PICKABLE, None)
    with pytest.raises(ValueError, match="version must be v1 or v2"):
        OracleSelector(None, "pdms", "v3")
    with pytest.raises(ValueError, match="no pickable candidate"):
        oracle_pick("pdms", SCORES, np.zeros(4, bool), None)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data_root(tmp_path_factory.mktemp("oracle"), "synth_test")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_pdms_pick_is_the_candidate_the_scorer_rates_best_in_the_closed_loop_state(data_root: Path, version) -> None:
    log = make_log_data()
    scenario, map_api = extract_scenarios(log)[0], MapAPI.from_data(build_fixture_map())
    sim = ClosedLoopSimulator()
    state = sim.reset(scenario, map_api)
    for _ in range(12):  # a few steps in: the ego's state is the simulated one
        state = sim.step(state, None)
    scene = closed_loop_scene(log, {str(t): i for i, t in enumerate(log.frame_tokens)}, state, "t")
    assert scene is not None
    # every candidate pickable (the tiny pair's random candidates mostly reverse)
    planner = reranked_planner(str(data_root / "pair.ckpt"), max_reverse=None)
    selector = OracleSelector(planner, "pdms", version)
    observation = sim.observe(state)
    chosen = selector.plan(observation, scene).poses
    own = planner.plan(observation).poses  # the discriminator's pick
    candidates = planner.last_candidates
    assert candidates is not None and len(candidates) == 8  # the tiny pair: 4 own + 4 samples
    cache = build_metric_cache(scene, map_api, PDMClosedPlanner(), version)
    pdms = PDMScorer(version).score(cache, candidates)["score"]
    k = int(np.flatnonzero(np.all(np.isclose(candidates, chosen), axis=(1, 2)))[0])
    assert pdms[k] == pytest.approx(pdms.max()) and pdms.max() > 0.5 > np.median(pdms)
    assert selector.counts.changed == int(not np.allclose(own, chosen))
    assert selector.counts.decisions == 1 and selector.counts.back == 0


def test_the_command_reproduces_the_benchmark_and_resumes(data_root: Path, tmp_path: Path) -> None:
    args = ["--ckpt", str(data_root / "pair.ckpt"), "--data-root", str(data_root / "data"),
            "--maps-root", str(data_root / "maps"), "--max-scenarios", "1"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "disc"), "--pick", "discriminator"]) == 0
    (record,) = read_journal(tmp_path / "disc" / "journal.jsonl").values()
    # the pair as ``diffplan bench planner=reranked`` drives it
    log = make_log_data()
    scenario, map_api = extract_scenarios(log)[0], MapAPI.from_data(build_fixture_map())
    history = ClosedLoopSimulator().run(scenario, reranked_planner(str(data_root / "pair.ckpt")), map_api)
    expected = score_simulation(scenario, history, map_api)
    assert record["token"] == scenario.token and record["score"] == pytest.approx(expected["score"])
    np.testing.assert_allclose(record["ego_poses"], history.ego_states[:, :3], atol=1e-3)
    assert record["decisions"] == len(history.ego_states) and record["changed"] == 0

    out = tmp_path / "pdms"
    assert main([*args, "--out", str(out), "--pick", "pdms"]) == 0
    lines = (out / "journal.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["planner"] == "oracle_pdms_v1" and len(lines) == 2
    (record,) = read_journal(out / "journal.jsonl").values()
    assert 0 <= record["changed"] <= record["decisions"] and 0.0 <= record["score"] <= 1.0
    assert (out / "scores.csv").read_text().splitlines()[0].startswith("token,valid,no_ego_at_fault_collisions")
    # a second run finds the scenario in the journal and simulates nothing
    assert main([*args, "--out", str(out), "--pick", "pdms"]) == 0
    assert len((out / "journal.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit):
        main([*args, "--out", str(out), "--shard", "2/2"])
    # another pick into the same folder is refused, not mixed in
    with pytest.raises(SystemExit, match="a journal of another run"):
        main([*args, "--out", str(out), "--pick", "safe"])


def test_a_scenario_that_fails_is_recorded_and_the_run_goes_on(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import closed_loop_oracle

    def broken(*args, **kwargs):
        raise RuntimeError("map layer missing")

    monkeypatch.setattr(closed_loop_oracle, "run_scenario", broken)
    out = tmp_path / "broken"
    assert main(["--ckpt", str(data_root / "pair.ckpt"), "--data-root", str(data_root / "data"),
                 "--maps-root", str(data_root / "maps"), "--out", str(out), "--max-scenarios", "2"]) == 0  # fmt: skip
    records = list(read_journal(out / "journal.jsonl").values())
    assert len(records) == 2 and all(not r["valid"] and "map layer missing" in r["error"] for r in records)
    rows = (out / "scores.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(row.split(",")[1] == "False" for row in rows)
