"""Scene lists (navtest-style selections of a split): the file format, splits that name one, the selection
rule on hand-made scores, and ``diffplan data select`` end to end on the fixture log.

The fixture ego drives straight behind a lead at its own speed while accelerating gently, so every plan
keeps NC = DAC = TTC = C = 1 and the scores differ only through ego progress: constant velocity scores
about 0.976-0.981 and log replay about 0.983-0.988, both rising scene by scene. The end-to-end test puts
its thresholds between measured scores, so that both reasons to drop a scene occur.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulation.datasets.log_data import LogData
from simulation.datasets.nuplan_db import read_log
from simulation.datasets.nuplan_writer import write_log
from simulation.datasets.scene_lists import (
    SceneList,
    SceneListError,
    read_scene_list,
    scene_list_path,
    selected_in_order,
    write_scene_list,
)
from simulation.datasets.scenes import SceneFilter, extract_scenes
from simulation.datasets.splits import SplitError, load_scenarios, load_scenes, split_log_paths
from simulation.datasets.testing import make_log_data
from simulation.evaluation.cli import compose_config, run
from simulation.evaluation.selection import SelectionRule, build_scene_list, main, select
from simulation.evaluation.sources import BenchConfigError, nuplan_log_source
from simulation.maps.testing import write_fixture_maps

NAVSIM_V1 = dict(num_history_frames=4, num_future_frames=10, frame_interval=1, has_route=True)


# --------------------------------------------------------------------------------------------------
# file format


def _list(tokens: tuple[str, ...] = ("a1", "a2", "b1"), logs: tuple[str, ...] = ("log_a", "log_b")) -> SceneList:
    return SceneList("hard", "synth_test", logs, tokens, {"min_expert_score": 0.8}, {"scenes": 9, "selected": 3})


def test_scene_list_round_trip(tmp_path: Path) -> None:
    path = write_scene_list(tmp_path / "lists" / "hard.yaml", _list())
    assert path == tmp_path / "lists" / "hard.yaml"
    assert not list(path.parent.glob(".*.tmp"))
    assert read_scene_list(path) == _list()
    assert scene_list_path(tmp_path, "hard") == tmp_path / "scene_lists" / "hard.yaml"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("version: 1\nname: x\nsource_split: s\nlog_names: []\n", "'tokens' must be a list"),
        ("version: 2\nname: x\nsource_split: s\nlog_names: []\ntokens: []\n", "version 2"),
        ("version: 1\nsource_split: s\nlog_names: []\ntokens: []\n", "'name' must be a string"),
        ("version: 1\nname: x\nsource_split: s\nlog_names: [a]\ntokens: [t, t]\n", "not unique"),
        ("version: 1\nname: x\nsource_split: s\nlog_names: [a]\ntokens: [1, 2]\n", "'tokens' must be a list"),
        ("- just\n- a list\n", "YAML mapping"),
        ("version: [1\n", "not a readable scene list"),
    ],
)
def test_a_bad_scene_list_is_named_with_its_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SceneListError, match=problem) as err:
        read_scene_list(path)
    assert str(path) in str(err.value)


def test_a_missing_scene_list_is_named(tmp_path: Path) -> None:
    with pytest.raises(SceneListError, match="no such scene list"):
        read_scene_list(tmp_path / "absent.yaml")


def test_selected_in_order_keeps_split_order_and_each_log_once() -> None:
    candidates = [("b", "b1"), ("b", "b2"), ("a", "a1"), ("c", "c1"), ("a", "a2")]
    assert selected_in_order(candidates, {"a2", "b2", "a1"}) == (("b", "a"), ("b2", "a1", "a2"))
    assert selected_in_order(candidates, set()) == ((), ())


# --------------------------------------------------------------------------------------------------
# the rule


def _rows(scores: list[float | None], kind: str = "following_lane_with_lead") -> list[dict[str, object]]:
    return [{"token": f"t{i}", "valid": s is not None, "score": s, "scenario_type": kind} for i, s in enumerate(scores)]


def test_select_drops_extrapolable_scenes_and_bad_labels_at_the_thresholds() -> None:
    #          t0   t1    t2    t3   t4    t5    t6
    cv = _rows([0.9, 0.5, 0.79, 0.2, None, 0.8, 0.0])
    human = _rows([1.0, 0.95, 0.5, 0.8, 1.0, 1.0, 0.7999])
    kept, counts = select(cv, human, SelectionRule())
    # t0, t5: the constant-velocity plan scores >= 0.8; t2, t6: the expert < 0.8; t4 failed; t3 at the bound
    assert kept == {"t1", "t3"}
    assert counts == {
        "scenes": 7, "failed": 1, "extrapolable": 2, "expert_below": 2, "added": 0, "selected": 2,
        "per_type": {"following_lane_with_lead": 2},
    }  # fmt: skip


def test_plus_every_adds_every_nth_dropped_scene_in_split_order() -> None:
    #          t0   t1    t2    t3   t4    t5    t6   t7
    cv = _rows([0.9, 0.5, 0.79, 0.2, None, 0.8, 0.0, 0.95])
    human = _rows([1.0, 0.95, 0.5, 0.8, 1.0, 1.0, 0.7999, 1.0])
    cv[5]["scenario_type"] = "stopping_with_lead"
    # dropped, in order: t0, t2, t5, t6, t7 (t4 failed: never added); every 2nd of them from the first: t0, t5, t7
    kept, counts = select(cv, human, SelectionRule(plus_every=2))
    assert kept == {"t1", "t3", "t0", "t5", "t7"}
    assert (counts["added"], counts["selected"], counts["failed"]) == (3, 5, 1)
    assert counts["per_type"] == {"following_lane_with_lead": 4, "stopping_with_lead": 1}
    assert select(cv, human, SelectionRule(plus_every=1))[0] == {f"t{i}" for i in range(8)} - {"t4"}
    with pytest.raises(ValueError, match="plus_every"):
        SelectionRule(plus_every=-1)


def test_select_counts_a_scene_missing_from_the_expert_run_as_failed() -> None:
    kept, counts = select(_rows([0.1, 0.2]), _rows([1.0]), SelectionRule())
    assert kept == {"t0"} and counts["failed"] == 1


def test_select_with_other_thresholds() -> None:
    cv, human = _rows([0.9, 0.5, 0.3]), _rows([0.6, 0.6, 0.95])
    kept, _ = select(cv, human, SelectionRule(max_extrapolation_score=1.0, min_expert_score=0.5))
    assert kept == {"t0", "t1", "t2"}
    kept, _ = select(cv, human, SelectionRule(max_extrapolation_score=0.4, min_expert_score=0.9))
    assert kept == {"t2"}


@pytest.mark.parametrize("field", ["max_extrapolation_score", "min_expert_score"])
def test_rule_thresholds_must_be_scores(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SelectionRule(**{field: 1.5})


# --------------------------------------------------------------------------------------------------
# splits that name a scene list (configs/data/splits/synth_navtest.yaml)


def _retokened(log: LogData, index: int) -> LogData:
    """``log`` with tokens of its own (every fixture log is made with the same ones)."""

    def re(tokens: np.ndarray) -> np.ndarray:
        return np.asarray([f"{index:02x}{str(t)[2:]}" for t in tokens], dtype=np.asarray(tokens).dtype)

    fields = ("frame_tokens", "ego_pose_tokens", "track_tokens", "box_tokens", "scene_tokens")
    return replace(log, log_token=f"{index:02x}{log.log_token[2:]}", **{f: re(getattr(log, f)) for f in fields})


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scene_lists")
    write_fixture_maps(root / "maps")
    for i, name in enumerate(("2021.05.12.22.00.38_veh-35_00001_00601", "2021.05.12.22.00.38_veh-35_00002_00602")):
        log = _retokened(make_log_data(duration_s=12.0 + 2 * i, num_scenes=4, log_name=name), i)
        write_log(log, root / "logs" / "splits" / "synth_test" / f"{name}.db")
    return root / "logs", root / "maps"


def _scene_tokens(data_root: Path) -> dict[str, list[str]]:
    out = {}
    for path in split_log_paths(data_root, "synth_test"):
        out[path.stem] = [s.token for s in extract_scenes(read_log(path), SceneFilter(**NAVSIM_V1))]
    return out


def test_a_scene_list_split_holds_only_the_listed_scenes(roots: tuple[Path, Path], tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    (data_root / "splits").mkdir(parents=True)
    (data_root / "splits" / "synth_test").symlink_to(roots[0] / "splits" / "synth_test")
    tokens = _scene_tokens(data_root)
    second = sorted(tokens)[1]
    listed = tuple(tokens[second][2:5])
    write_scene_list(
        scene_list_path(data_root, "synth_navtest"), SceneList("synth_navtest", "synth_test", (second,), listed)
    )

    assert [p.stem for p in split_log_paths(data_root, "synth_navtest")] == [second]
    assert [s.token for s in load_scenes(data_root, "synth_navtest", SceneFilter(**NAVSIM_V1))] == list(listed)
    # the protocol's own tokens narrow the list further
    narrowed = load_scenes(data_root, "synth_navtest", SceneFilter(**NAVSIM_V1, tokens=[listed[1], "elsewhere"]))
    assert [s.token for s in narrowed] == [listed[1]]
    source = nuplan_log_source(str(data_root), "synth_navtest", "navsim", NAVSIM_V1)
    assert [r.token for r in source.refs()] == list(listed)

    # nuPlan scenarios are cut from log splits, not from a list of 2 Hz scenes
    with pytest.raises(SplitError, match="use split=synth_test"):
        load_scenarios(data_root, "synth_navtest")
    with pytest.raises(BenchConfigError, match="list of NAVSIM scenes"):
        nuplan_log_source(str(data_root), "synth_navtest", "closed_loop")

    # an empty list selects nothing (not every log)
    write_scene_list(scene_list_path(data_root, "synth_navtest"), SceneList("synth_navtest", "synth_test", (), ()))
    assert split_log_paths(data_root, "synth_navtest") == []
    with pytest.raises(BenchConfigError, match="selects no scene"):
        nuplan_log_source(str(data_root), "synth_navtest", "navsim", NAVSIM_V1)


def test_a_missing_scene_list_says_how_to_make_it(roots: tuple[Path, Path]) -> None:
    with pytest.raises(SplitError, match="diffplan data select --data-root .* --split synth_test --name synth_navtest"):
        split_log_paths(roots[0], "synth_navtest")
    with pytest.raises(BenchConfigError, match="does not exist"):
        nuplan_log_source(str(roots[0]), "synth_navtest", "navsim", NAVSIM_V1)


def test_a_listed_log_that_is_gone_is_named(roots: tuple[Path, Path], tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    (data_root / "splits").mkdir(parents=True)
    (data_root / "splits" / "synth_test").symlink_to(roots[0] / "splits" / "synth_test")
    write_scene_list(
        scene_list_path(data_root, "synth_navtest"), SceneList("synth_navtest", "synth_test", ("gone",), ("t",))
    )
    with pytest.raises(SplitError, match="not found .* e.g. gone"):
        split_log_paths(data_root, "synth_navtest")


# --------------------------------------------------------------------------------------------------
# diffplan data select, end to end


def _scores(work: Path, planner: str) -> pd.Series:
    frame = pd.read_csv(work / planner / "scores.csv", dtype={"token": str})
    return frame[frame["token"] != "average"].set_index("token")["score"]


def test_select_end_to_end(roots: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_root, maps_root = tmp_path / "data", roots[1]
    (data_root / "splits").mkdir(parents=True)
    (data_root / "splits" / "synth_test").symlink_to(roots[0] / "splits" / "synth_test")
    tokens = _scene_tokens(data_root)
    order = [t for log in sorted(tokens) for t in tokens[log]]

    # default rule: constant velocity solves every fixture scene (>= 0.97), so nothing is hard
    argv = ["--data-root", str(data_root), "--maps-root", str(maps_root), "--no-progress"]
    assert main(argv) == 0
    assert f"0 of {len(order)} scenes" in capsys.readouterr().out
    empty = read_scene_list(scene_list_path(data_root, "synth_navtest"))
    assert empty.tokens == () and empty.counts["extrapolable"] == len(order)

    # thresholds between measured scores: the slowest scenes for constant velocity, minus the expert's lowest
    work = data_root / "scene_lists" / ".work" / "synth_navtest"
    cv, human = _scores(work, "constant_velocity"), _scores(work, "log_replay")
    assert list(cv.index) == order and list(human.index) == order
    assert cv.between(0.9, 1.0).all() and human.between(0.9, 1.0).all()
    cv_cut = float(cv.sort_values().iloc[[len(cv) // 2 - 1, len(cv) // 2]].mean())
    human_cut = float(human.sort_values().iloc[[1, 2]].mean())
    expected = [t for t in order if cv[t] < cv_cut and human[t] >= human_cut]
    assert 0 < len(expected) < len(order) // 2

    journal = (work / "constant_velocity" / "journal.jsonl").read_text()
    rule = SelectionRule(max_extrapolation_score=cv_cut, min_expert_score=human_cut)
    scene_list, path = build_scene_list(data_root, "synth_test", "synth_navtest", maps_root, rule)
    assert (work / "constant_velocity" / "journal.jsonl").read_text() == journal  # resumed, nothing re-run
    assert list(scene_list.tokens) == expected
    assert read_scene_list(path) == scene_list
    assert scene_list.counts["selected"] == len(expected) and scene_list.rule["min_expert_score"] == human_cut
    assert scene_list.log_names == tuple(log for log in sorted(tokens) if set(tokens[log]) & set(expected))

    cfg = compose_config(
        [f"data_root={data_root}", f"maps_root={maps_root}", "split=synth_navtest", "planner=constant_velocity",
         f"output_dir={tmp_path / 'bench'}", "progress=false", "report.num_worst=0",
         f"metric_cache_dir={work / 'metric_cache'}"]
    )  # fmt: skip
    rows = run(cfg)["rows"]
    assert [r["token"] for r in rows] == expected
    assert [r["score"] for r in rows] == pytest.approx([cv[t] for t in expected])


def test_select_rejects_a_scene_list_split_and_bad_arguments(
    roots: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(BenchConfigError, match="already a scene list"):
        build_scene_list(roots[0], "synth_navtest", "x", roots[1])
    assert main(["--data-root", str(roots[0]), "--split", "nope"]) == 2
    assert "unknown split 'nope'" in capsys.readouterr().err
    assert main(["--data-root", str(roots[0]), "--min-expert-score", "2"]) == 2
    assert "min_expert_score" in capsys.readouterr().err
    assert main(["--data-root", str(roots[0]), "--workers", "0"]) == 2
