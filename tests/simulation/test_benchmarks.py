"""Benchmark runner, journal, executors, report and Hydra configs, with fake planners / scorers / scenes."""

from __future__ import annotations

import functools
import itertools
import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from simulation.datasets.scenes import scenario_types_at
from simulation.evaluation.build import with_driven_ego
from simulation.evaluation.cli import CONFIG_DIR, compose_config
from simulation.evaluation.cli import main as bench_main
from simulation.evaluation.evaluator import SceneEvaluator
from simulation.evaluation.executors import ProcessExecutor, RayExecutor, SequentialExecutor, make_chunks
from simulation.evaluation.journal import Journal, JournalError
from simulation.evaluation.pairing import predecessors, with_two_frame_metrics
from simulation.evaluation.protocols import PROTOCOLS, get_protocol
from simulation.evaluation.refs import InMemorySource, SceneRef
from simulation.evaluation.report import scores_table, write_report
from simulation.evaluation.runner import JOURNAL_NAME, run_benchmark
from simulation.evaluation.sources import LogSource
from simulation.evaluation.units import ClosedLoopUnit, NavsimUnit
from simulation.maps.protocol import MapProtocol
from simulation.protocols import Observation
from simulation.types import STATE_DIM, Agents, EgoStates, LogWindow, Scene, StateIndex, TrafficLights, Trajectory
from training.cli import COMMANDS

HEADER = {"protocol": "navsim_v1", "planner": "fake", "split": "unit"}


def make_scene(token: str, log_name: str, speed: float) -> Scene:
    """14 frames at 2 Hz, ego driving along +x at ``speed``; current frame index 3."""
    t = 14
    states = np.zeros((t, STATE_DIM))
    states[:, StateIndex.X] = speed * 0.5 * np.arange(t)
    states[:, StateIndex.VX] = speed
    stamps = np.arange(t, dtype=np.int64) * 500_000
    return Scene(
        log_name=log_name,
        token=token,
        map_name="toy",
        frame_tokens=np.array([f"{token}{i:02d}" for i in range(t)]),
        timestamps_us=stamps,
        ego=EgoStates(states, stamps),
        agents=Agents.empty(t),
        traffic_lights=TrafficLights.empty(t),
        route_roadblock_ids=("1",),
        current_index=3,
    )


def toy_scenes() -> list[Scene]:
    """10 scenes over 3 logs; speeds 0..9 m/s."""
    return [make_scene(f"tok{i:02d}", f"log{i % 3}", float(i)) for i in range(10)]


class FakePlanner:
    """Constant velocity from the current state; raises on ``fail`` tokens, NaN on ``nan`` tokens."""

    name = "fake_cv"

    def __init__(self, fail: tuple[str, ...] = (), nan: tuple[str, ...] = ()) -> None:
        self.fail, self.nan = fail, nan

    def plan(self, observation: Observation) -> Trajectory:
        assert observation.log is not None
        token = observation.log.token
        if token in self.fail:
            raise RuntimeError(f"planner exploded on {token}")
        poses = np.zeros((8, 3))
        poses[:, 0] = observation.current_state[StateIndex.VX] * 0.5 * np.arange(1, 9)
        if token in self.nan:
            poses[3, 1] = np.nan
        return Trajectory(poses)


class FakeScorer:
    """EP = final x / 40 clipped, the other v1 sub-metrics 1 (comfort 0 above 8 m/s); PDMS formula."""

    def score(self, metric_cache: Any, trajectories: np.ndarray) -> dict[str, np.ndarray]:
        assert isinstance(metric_cache, Scene)
        k = trajectories.shape[0]
        ep = np.clip(trajectories[:, -1, 0] / 40.0, 0.0, 1.0)
        comfort = (trajectories[:, -1, 0] <= 32.0).astype(float)
        ones = np.ones(k)
        score = ones * ones * (5 * ones + 5 * ep + 2 * comfort) / 12
        return {
            "no_at_fault_collisions": ones,
            "drivable_area_compliance": ones,
            "ego_progress": ep,
            "time_to_collision_within_bound": ones,
            "comfort": comfort,
            "driving_direction_compliance": ones,
            "score": score,
        }


def scene_as_cache(scene: Scene, map_api: MapProtocol) -> Scene:
    return scene


def build_evaluator(fail: tuple[str, ...] = (), nan: tuple[str, ...] = ()) -> SceneEvaluator:
    """Module-level factory (picklable by reference for process and Ray workers)."""
    unit = NavsimUnit(FakePlanner(fail, nan), FakeScorer(), scene_as_cache)
    return SceneEvaluator(InMemorySource(toy_scenes()), unit, get_protocol("navsim_v1"))


def expected_score(speed: float) -> float:
    final_x = speed * 4.0
    return (5 + 5 * min(final_x / 40.0, 1.0) + 2 * float(final_x <= 32.0)) / 12


def _run(out: Path, executor: Any = None, **kw: Any) -> list[dict[str, Any]]:
    refs = InMemorySource(toy_scenes()).refs()
    factory = functools.partial(build_evaluator, **kw)
    return run_benchmark(refs, factory, executor or SequentialExecutor(), out, HEADER, chunk_size=3)


# ------------------------------------------------------------------------------------------------
# runner, units, journal
# ------------------------------------------------------------------------------------------------


def test_sequential_rows_match_hand_computed_scores(tmp_path: Path) -> None:
    rows = _run(tmp_path)
    assert [r["token"] for r in rows] == [f"tok{i:02d}" for i in range(10)]
    for i, row in enumerate(rows):
        assert row["valid"] and row["error"] is None
        assert row["score"] == pytest.approx(expected_score(float(i)))
        assert row["plan"][-1][0] == pytest.approx(4.0 * i)
    # speed 9 -> final x 36 > 32: comfort fails, EP clipped to 0.9
    assert rows[9]["comfort"] == 0.0 and rows[9]["ego_progress"] == pytest.approx(0.9)


def test_failing_and_nan_planner_rows_are_invalid_and_run_goes_on(tmp_path: Path) -> None:
    rows = _run(tmp_path, fail=("tok04",), nan=("tok07",))
    by_token = {r["token"]: r for r in rows}
    assert not by_token["tok04"]["valid"] and "planner exploded on tok04" in by_token["tok04"]["error"]
    assert by_token["tok04"]["error"].startswith("RuntimeError")
    assert not by_token["tok07"]["valid"] and "NaN" in by_token["tok07"]["error"]
    assert math.isnan(by_token["tok07"]["score"])
    assert sum(r["valid"] for r in rows) == 8
    table = scores_table(get_protocol("navsim_v1"), rows)
    average = table.iloc[-1]
    assert not average["valid"]
    good = [expected_score(float(i)) for i in range(10) if i not in (4, 7)]
    assert average["score"] == pytest.approx(np.mean(good))


def test_resume_after_kill_keeps_every_token_once(tmp_path: Path) -> None:
    full = _run(tmp_path / "full")
    # simulate kill -9: a journal with 4 complete rows, one repeated, and a half-written last line
    journal = tmp_path / "killed" / JOURNAL_NAME
    journal.parent.mkdir()
    header = json.dumps({"journal": 1, **HEADER})
    lines = [header] + [json.dumps(full[i]) for i in (0, 1, 2, 1, 5)]
    journal.write_text("\n".join(lines) + "\n" + json.dumps(full[6])[:25])
    calls: list[str] = []

    class CountingExecutor(SequentialExecutor):
        def map_chunks(self, factory, chunks):  # type: ignore[no-untyped-def]
            calls.extend(ref.token for chunk in chunks for ref in chunk)
            yield from super().map_chunks(factory, chunks)

    rows = _run(tmp_path / "killed", executor=CountingExecutor())
    assert sorted(calls) == sorted(f"tok{i:02d}" for i in (3, 4, 6, 7, 8, 9))
    assert [r["token"] for r in rows] == [r["token"] for r in full]
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in full])
    # the journal is clean JSON lines again, and each token appears once after dedup
    stored = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert sorted({r["token"] for r in stored}) == sorted(r["token"] for r in full)
    write_report(get_protocol("navsim_v1"), rows, tmp_path / "killed", HEADER)
    csv = pd.read_csv(tmp_path / "killed" / "scores.csv")
    assert list(csv["token"]).count("tok01") == 1 and len(csv) == 11
    # a third run finds everything done and evaluates nothing
    calls.clear()
    assert len(_run(tmp_path / "killed", executor=CountingExecutor())) == 10 and calls == []


def test_journal_refuses_another_runs_folder(tmp_path: Path) -> None:
    Journal(tmp_path / "j.jsonl", HEADER).open()
    with pytest.raises(JournalError, match="another run"):
        Journal(tmp_path / "j.jsonl", {**HEADER, "planner": "other"}).open()
    (tmp_path / "bad.jsonl").write_text("not json\n")
    with pytest.raises(JournalError, match="unreadable header"):
        Journal(tmp_path / "bad.jsonl", HEADER).open()


def test_chunks_never_mix_groups() -> None:
    refs = InMemorySource(toy_scenes()).refs()
    chunks = make_chunks(refs, 2)
    assert all(len({r.group for r in c}) == 1 and len(c) <= 2 for c in chunks)
    assert sorted(r.token for c in chunks for r in c) == sorted(r.token for r in refs)
    assert len(chunks) == 6  # groups of 4, 3, 3 -> 2 + 2 + 2
    with pytest.raises(ValueError):
        make_chunks(refs, 0)


def test_missing_metric_marks_row_invalid() -> None:
    class Partial(FakeScorer):
        def score(self, metric_cache: Any, trajectories: np.ndarray) -> dict[str, np.ndarray]:
            out = super().score(metric_cache, trajectories)
            del out["comfort"]
            return out

    evaluator = SceneEvaluator(
        InMemorySource(toy_scenes()[:1]),
        NavsimUnit(FakePlanner(), Partial(), scene_as_cache),
        get_protocol("navsim_v1"),
    )
    (row,) = evaluator([SceneRef("tok00", "log0", "log0")])
    assert not row["valid"] and "comfort" in row["error"]


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def test_csv_columns_average_row_and_summary(tmp_path: Path) -> None:
    rows = _run(tmp_path, fail=("tok02",))
    for i, row in enumerate(rows):
        row["scenario_type"] = "fast" if i >= 5 else "slow"
    drawn: list[str] = []

    def draw(row: dict[str, Any], path: Path) -> None:
        drawn.append(row["token"])
        path.write_bytes(b"png")

    written = write_report(get_protocol("navsim_v1"), rows, tmp_path, {"planner": "fake"}, draw_scene=draw, num_worst=3)
    csv = pd.read_csv(written["scores"])
    assert list(csv.columns) == [
        "token",
        "valid",
        "no_at_fault_collisions",
        "drivable_area_compliance",
        "ego_progress",
        "time_to_collision_within_bound",
        "comfort",
        "driving_direction_compliance",
        "score",
    ]
    assert csv["token"].iloc[-1] == "average" and len(csv) == 11
    eps = [min(4.0 * i / 40.0, 1.0) for i in range(10) if i != 2]
    assert csv["ego_progress"].iloc[-1] == pytest.approx(np.mean(eps))
    assert csv["comfort"].iloc[-1] == pytest.approx(8 / 9)  # speed 9 fails comfort; tok02 skipped
    assert bool(csv["valid"].iloc[-1]) is False
    # worst three valid scores: speeds 0, 1, 3 (2 failed)
    assert drawn == ["tok00", "tok01", "tok03"]
    summary = written["summary"].read_text()
    assert "| PDMS |" in summary and "| fast | 5 | 5 |" in summary and "| slow | 5 | 4 |" in summary
    slow = np.mean([expected_score(float(i)) for i in (0, 1, 3, 4)])
    assert f"| slow | 5 | 4 | {100 * slow:.1f} |" in summary
    assert "planner exploded on tok02" in summary and "worst/tok00.png" in summary
    assert written["hist"].read_bytes()[:4] == b"\x89PNG"
    details = pd.read_csv(written["details"])
    assert details.loc[details["token"] == "tok02", "error"].iloc[0].startswith("RuntimeError")


def test_v2_and_cls_protocols_have_their_columns() -> None:
    v2 = get_protocol("navsim_v2")
    assert v2.csv_columns[-2:] == ("two_frame_extended_comfort", "score") and "lane_keeping" in v2.columns
    assert PROTOCOLS["nuplan_cls_r"].reactive and not PROTOCOLS["nuplan_cls_nr"].reactive
    assert "ego_progress_along_expert_route" in PROTOCOLS["nuplan_cls_nr"].columns
    with pytest.raises(KeyError, match="known"):
        get_protocol("navsim_v3")


# ------------------------------------------------------------------------------------------------
# executors
# ------------------------------------------------------------------------------------------------


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_process_executor_matches_sequential(tmp_path: Path) -> None:
    seq = _run(tmp_path / "seq", fail=("tok05",))
    proc = _run(tmp_path / "proc", executor=ProcessExecutor(num_workers=2, start_method="spawn"), fail=("tok05",))
    assert json.dumps(_comparable(proc), sort_keys=True) == json.dumps(_comparable(seq), sort_keys=True)


def test_ray_executor_matches_sequential(tmp_path: Path) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test module is not importable by workers
    seq = _run(tmp_path / "seq", nan=("tok08",))
    ray_rows = _run(tmp_path / "ray", executor=RayExecutor(num_cpus=2), nan=("tok08",))
    assert json.dumps(_comparable(ray_rows), sort_keys=True) == json.dumps(_comparable(seq), sort_keys=True)


# ------------------------------------------------------------------------------------------------
# Hydra configs and CLI
# ------------------------------------------------------------------------------------------------


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_shipped_config_combination_composes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NUPLAN_DATA_ROOT", str(tmp_path / "logs"))
    monkeypatch.setenv("NUPLAN_MAPS_ROOT", str(tmp_path / "maps"))
    monkeypatch.delenv("OPENSCENE_DATA_ROOT", raising=False)
    protocols, planners, workers = _choices("protocol"), _choices("planner"), _choices("worker")
    rule_based = ["constant_velocity", "idm", "log_replay", "pdm_closed"]
    assert protocols == sorted(PROTOCOLS) and planners == sorted(
        [
            *rule_based,
            "exported",
            "learned",
            "masked",
            "masked_reflect",
            "reranked",
            "reranked_gated",
            "reward_reranked",
        ]
    )
    assert workers == ["process", "ray", "sequential"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for protocol, planner, worker in itertools.product(protocols, rule_based, workers):
            cfg = compose("config", overrides=[f"protocol={protocol}", f"planner={planner}", f"worker={worker}"])
            resolved = OmegaConf.to_container(cfg, resolve=True)
            assert isinstance(resolved, dict)
            assert resolved["output_dir"] == f"outputs/bench/{protocol}/{planner}/synth_test"
            assert resolved["data_root"] == str(tmp_path / "logs") and resolved["openscene_root"] is None
            spec = get_protocol(resolved["protocol"]["name"])
            assert resolved["planner"]["_target_"].startswith("planners.rule_based.")
            assert resolved["protocol"]["scorer"]["_target_"].startswith("rewards.")
            assert ("metric_cache" in resolved["protocol"]) == spec.is_navsim
            assert ("simulator" in resolved["protocol"]) == (not spec.is_navsim)
            if not spec.is_navsim:
                assert resolved["protocol"]["reactive"] == spec.reactive
            assert resolved["source"]["_target_"] == "simulation.evaluation.sources.nuplan_log_source"
            executor = instantiate(cfg.worker)
            assert hasattr(executor, "map_chunks")
        # the gated pair: planner=reranked's keys, its own factory and the gate's scorer
        reranked, gated = (
            compose("config", overrides=[f"planner={p}", "planner.ckpt_path=pair.ckpt"]).planner
            for p in ("reranked", "reranked_gated")
        )
        assert gated._target_ == "planners.safety_gate.gated_planner" and gated.name == "reranked_gated"
        own = ("name", "_target_", "gate_version")
        assert {k: v for k, v in gated.items() if k not in own} == {k: v for k, v in reranked.items() if k not in own}
        assert gated.gate_version == "v1"


def test_cli_overrides_and_missing_data_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NUPLAN_DATA_ROOT", raising=False)
    cfg = compose_config(["protocol=nuplan_cls_r", "planner=idm", "split=synth_val", "chunk_size=2", "worker=ray"])
    assert cfg.protocol.name == "nuplan_cls_r" and cfg.planner.name == "idm" and cfg.split == "synth_val"
    assert cfg.worker._target_.endswith("RayExecutor") and cfg.chunk_size == 2 and cfg.data_root is None
    assert bench_main(["--cfg", "planner=log_replay"]) == 0
    assert "planners.rule_based.LogReplayPlanner" in capsys.readouterr().out
    assert bench_main(["maps_root=/tmp"]) == 2
    assert "NUPLAN_DATA_ROOT" in capsys.readouterr().out
    assert COMMANDS[("bench",)][0] == "simulation.evaluation.cli"


def toy_source(
    data_root: Any, split: str, kind: str, scene_filter: dict[str, Any], count: int = 10, maps_root: Any = None
) -> InMemorySource:
    """A ``source`` target for configs: the toy scenes (``kind`` / ``scene_filter`` are the protocol's)."""
    assert kind == "navsim" and scene_filter["num_future_frames"] == 10 and split == "synth_test"
    return InMemorySource(toy_scenes()[:count])


def test_cli_end_to_end_with_fake_targets(tmp_path: Path) -> None:
    config_dir = tmp_path / "bench"
    shutil.copytree(CONFIG_DIR, config_dir)
    navsim_v1 = OmegaConf.load(config_dir / "protocol" / "navsim_v1.yaml")
    navsim_v1.scorer = {"_target_": f"{__name__}.FakeScorer"}
    navsim_v1.metric_cache = {"_target_": f"{__name__}.scene_as_cache", "_partial_": True}
    OmegaConf.save(navsim_v1, config_dir / "protocol" / "fake_v1.yaml")
    (config_dir / "planner" / "fake.yaml").write_text(f"name: fake\n_target_: {__name__}.FakePlanner\nfail: [tok04]\n")
    out = tmp_path / "run"
    argv = [
        "--config-dir",
        str(config_dir),
        "protocol=fake_v1",
        "planner=fake",
        "worker=process",
        "worker.num_workers=2",
        f"source._target_={__name__}.toy_source",
        "maps=null",
        f"output_dir={out}",
        "progress=false",
    ]
    assert bench_main(argv) == 0
    csv = pd.read_csv(out / "scores.csv")
    assert len(csv) == 11 and csv["token"].iloc[-1] == "average"
    good = [expected_score(float(i)) for i in range(10) if i != 4]
    assert csv["score"].iloc[-1] == pytest.approx(np.mean(good))
    assert OmegaConf.load(out / "config.yaml").planner.name == "fake"
    assert (out / "score_hist.png").exists() and "planner exploded" in (out / "summary.md").read_text()
    worst = sorted(p.name for p in (out / "worst").glob("*.png"))
    assert worst == ["tok00.png", "tok01.png", "tok02.png", "tok03.png", "tok05.png"]
    assert "![tok00](worst/tok00.png)" in (out / "summary.md").read_text()
    journal_lines = (out / JOURNAL_NAME).read_text().splitlines()
    assert bench_main(argv) == 0  # resumes: nothing left to evaluate, same report
    assert (out / JOURNAL_NAME).read_text().splitlines() == journal_lines
    pd.testing.assert_frame_equal(pd.read_csv(out / "scores.csv"), csv)


# ------------------------------------------------------------------------------------------------
# closed-loop unit and log sources
# ------------------------------------------------------------------------------------------------


class FakeRollout:
    def __init__(self, ego_states: np.ndarray) -> None:
        self.ego_states = ego_states


def fake_simulate(scenario: Scene, planner: Any, map_api: MapProtocol) -> FakeRollout:
    """Drives the planner's first pose every step for 5 steps (a toy closed loop)."""
    states = [scenario.current_ego.copy()]
    for _ in range(5):
        obs = Observation(scenario.ego, scenario.agents, scenario.traffic_lights, (), scenario.map_name, log=scenario)
        step = planner.plan(obs).poses[0]
        nxt = states[-1].copy()
        nxt[StateIndex.X] += step[0] / 5.0
        states.append(nxt)
    return FakeRollout(np.stack(states))


def fake_cls_score(scenario: Scene, rollout: FakeRollout, map_api: MapProtocol) -> dict[str, float]:
    progress = float(rollout.ego_states[-1, StateIndex.X] - rollout.ego_states[0, StateIndex.X])
    metrics = {c: 1.0 for c in get_protocol("nuplan_cls_nr").columns}
    metrics["ego_progress_along_expert_route"] = min(progress / 10.0, 1.0)
    metrics["score"] = (5 * metrics["ego_progress_along_expert_route"] + 11) / 16
    return metrics


def test_closed_loop_unit_rows() -> None:
    unit = ClosedLoopUnit(FakePlanner(fail=("tok01",)), fake_simulate, fake_cls_score)
    evaluator = SceneEvaluator(InMemorySource(toy_scenes()[:3]), unit, get_protocol("nuplan_cls_r"))
    rows = evaluator(InMemorySource(toy_scenes()[:3]).refs())
    assert [r["valid"] for r in rows] == [True, False, True]
    # speed 2: first pose 1 m ahead, 5 steps of 0.2 m -> 1 m progress -> ratio 0.1
    assert rows[2]["ego_progress_along_expert_route"] == pytest.approx(0.1)
    assert rows[2]["score"] == pytest.approx((0.5 + 11) / 16)
    assert len(rows[2]["ego_poses"]) == 6 and rows[2]["ego_poses"][-1][0] == pytest.approx(3.0 + 1.0)
    table = scores_table(get_protocol("nuplan_cls_r"), rows)
    assert list(table.columns[2:4]) == ["no_ego_at_fault_collisions", "drivable_area_compliance"]


def test_log_source_loads_each_group_once_and_types_frames() -> None:
    reads: list[str] = []
    scenes = toy_scenes()

    def extract(path: str) -> list[tuple[LogWindow, str]]:
        reads.append(path)
        return [(s, "type_" + s.log_name) for s in scenes if s.log_name == Path(path).stem]

    source = LogSource([f"/logs/log{i}.db" for i in range(3)], extract)
    refs = source.refs()
    assert len(refs) == 10 and refs[0] == SceneRef("tok00", "/logs/log0.db", "log0", "type_log0")
    reads.clear()
    for ref in sorted(refs, key=lambda r: r.group):
        assert source.load(ref).token == ref.token
    assert reads == [f"/logs/log{i}.db" for i in range(3)]
    with pytest.raises(KeyError, match="tok99"):
        source.load(SceneRef("tok99", "/logs/log2.db"))
    log = SimpleNamespace(
        frame_tokens=np.array(["a", "b", "c"]),
        tag_frame=np.array([1, 1, 2]),
        tag_type=np.array(["stopping_at_red_light", "following_lane", "starting_left_turn"]),
    )
    types = scenario_types_at(log, ["a", "b", "c", "zz"])  # type: ignore[arg-type]
    assert types == ["unknown", "stopping_at_red_light", "starting_left_turn", "unknown"]  # MAX(type)


class PairScorer:
    """Two-frame metrics for :func:`with_two_frame_metrics`: EC = 1 if both plans start at the same x."""

    def two_frame_metrics(self, metrics: Any, states: np.ndarray, previous: np.ndarray) -> dict[str, float]:
        ec = float(states[0, 0] == previous[0, 0])
        return {"two_frame_extended_comfort": ec, "score": float(metrics["score"]) * (0.5 + 0.5 * ec)}


def test_two_frame_pairs_follow_log_and_time() -> None:
    def row(log: str, t_s: float, x: float, valid: bool = True) -> dict[str, Any]:
        states = np.zeros((41, STATE_DIM))
        states[:, 0] = x
        stamp = int(t_s * 1e6)
        return {"token": f"{log}{t_s}", "log_name": log, "valid": valid, "score": 0.8,
                "two_frame_extended_comfort": math.nan, "timestamp_us": stamp, "states": states.tolist()}  # fmt: skip

    rows = [
        row("a", 1.0, 0.0),  # 0: predecessor of 1
        row("a", 1.5, 0.0),  # 1: paired with 0, same start -> EC 1
        row("a", 2.0, 3.0),  # 2: paired with 1, other start -> EC 0
        row("a", 3.0, 3.0),  # 3: 1 s after 2 -> unpaired
        row("b", 3.5, 3.0),  # 4: other log -> unpaired
        row("a", 3.5, 3.0, valid=False),  # 5: invalid -> neither paired nor predecessor
        row("a", 4.0, 3.0),  # 6: 1 s after 3 (5 is invalid) -> unpaired
    ]
    assert predecessors(rows) == {1: 0, 2: 1}
    out = with_two_frame_metrics(rows[::-1], PairScorer())[::-1]  # order of rows does not matter
    assert [r["two_frame_extended_comfort"] for r in out[:3]] == [pytest.approx(math.nan, nan_ok=True), 1.0, 0.0]
    assert [r["score"] for r in out] == [0.8, 0.8, 0.4, 0.8, 0.8, 0.8, 0.8]
    assert all(math.isnan(r["two_frame_extended_comfort"]) for r in out[3:])
    assert rows[2]["score"] == 0.8  # inputs untouched
    assert with_two_frame_metrics(rows, object()) == rows  # a scorer without two-frame metrics


def test_with_driven_ego_replaces_future_poses() -> None:
    scene = make_scene("tokxx", "log0", 2.0)
    driven = np.array([[3.0, 0.0, 0.0], [3.5, 0.5, 0.1], [4.0, 1.0, 0.2]])
    out = with_driven_ego(scene, driven)
    np.testing.assert_allclose(out.ego.states[:3], scene.ego.states[:3])
    np.testing.assert_allclose(out.ego.states[3:6, :3], driven)
    np.testing.assert_allclose(out.ego.states[6:, :3], np.repeat(driven[-1:], 8, axis=0))
    assert out.ego.states[10, StateIndex.VX] == 2.0 and scene.ego.states[5, StateIndex.Y] == 0.0


def test_shipped_targets_resolve_to_real_code() -> None:
    """Every ``_target_`` in configs/bench names an importable class or function (planners, scorers, simulator)."""
    targets: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            targets.update([node["_target_"]] if "_target_" in node else [])
            for value in node.values():
                collect(value)

    for path in CONFIG_DIR.rglob("*.yaml"):
        collect(OmegaConf.to_container(OmegaConf.load(path)))
    assert "planners.rule_based.PDMClosedPlanner" in targets and "rewards.nuplan_metrics.score_simulation" in targets
    for target in sorted(targets):
        assert callable(get_object(target)), target
    simulator = instantiate({"_target_": "simulation.closed_loop.ClosedLoopSimulator"}, reactive=True)
    assert simulator.config.reactive
