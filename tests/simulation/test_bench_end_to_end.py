"""NAVSIM v1 benchmark end to end on the fixture log: real .db reader, map, metric cache, tracker and scorer.

The fixture ego drives straight along lane 11 at ``v = 4 + 0.04 t`` m/s with a lead vehicle 15 m ahead at
the same speed, so every plan here keeps to one lane on drivable ground, far from any box: NC = DAC = DDC =
TTC = C = 1 for both planners. With the human plan as the progress reference (``reference_planner`` set to
log replay), log replay scores exactly PDMS = 1, and constant velocity loses only the human's
acceleration: over 4 s it covers ``4 v0`` against ``4 v0 + 0.32`` m.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulation.datasets.testing import write_fixture_data
from simulation.evaluation.cli import compose_config, run

NUM_SCENES = 6
ONES = ("no_at_fault_collisions", "drivable_area_compliance", "time_to_collision_within_bound", "comfort",
        "driving_direction_compliance")  # fmt: skip


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fixture_bench")
    return write_fixture_data(root)


def _run(roots: tuple[Path, Path], out: Path, planner: str, *extra: str, protocol: str = "navsim_v1") -> pd.DataFrame:
    data_root, maps_root = roots
    cfg = compose_config(
        [
            f"protocol={protocol}",
            f"planner={planner}",
            f"data_root={data_root}",
            f"maps_root={maps_root}",
            "split=synth_test",
            f"output_dir={out}",
            f"max_scenes={NUM_SCENES}",
            "progress=false",
            "report.num_worst=0",
            *extra,
        ]
    )
    result = run(cfg)
    assert len(result["rows"]) == NUM_SCENES
    errors = [r["error"] for r in result["rows"] if not r["valid"]]
    assert not errors, errors
    csv = pd.read_csv(out / "scores.csv")
    assert csv["token"].iloc[-1] == "average"
    return csv.iloc[:-1]


HUMAN_REFERENCE = "protocol.metric_cache.reference_planner._target_=planners.rule_based.LogReplayPlanner"


def test_log_replay_is_perfect_against_itself_and_constant_velocity_loses_progress(
    roots: tuple[Path, Path], tmp_path: Path
) -> None:
    human = _run(roots, tmp_path / "human", "log_replay", HUMAN_REFERENCE)
    for name in (*ONES, "ego_progress", "score"):
        np.testing.assert_allclose(human[name], 1.0, err_msg=name)
    cv = _run(roots, tmp_path / "cv", "constant_velocity", HUMAN_REFERENCE)
    for name in ONES:
        np.testing.assert_allclose(cv[name], 1.0, err_msg=name)
    # constant velocity plans straight ahead (y = heading = 0, x = v0 t); over 4 s it covers 4 v0 against the
    # human's 4 v0 + 0.32 m (0.04 m/s^2), both simulated by the same tracker
    rows = pd.read_json(tmp_path / "cv" / "journal.jsonl", lines=True).dropna(subset=["plan"])
    assert len(rows) == NUM_SCENES
    for plan, progress in zip(rows["plan"], rows["ego_progress"], strict=True):
        poses = np.asarray(plan)
        np.testing.assert_allclose(poses[:, 1:], 0.0, atol=1e-4)
        v0 = poses[0, 0] / 0.5
        np.testing.assert_allclose(poses[:, 0], v0 * 0.5 * np.arange(1, 9), atol=5e-4)
        assert progress == pytest.approx(4 * v0 / (4 * v0 + 0.32), abs=3e-3)
        assert progress < 1.0
    np.testing.assert_allclose(cv["score"], (5 + 5 * cv["ego_progress"] + 2) / 12)


def test_log_replay_against_pdm_closed_reference(roots: tuple[Path, Path], tmp_path: Path) -> None:
    """With the default PDM-Closed reference the human still passes every check; EP is at most 1 and the score
    is the PDMS formula of its columns."""
    human = _run(roots, tmp_path / "pdm", "log_replay", f"metric_cache_dir={tmp_path / 'cache'}")
    for name in ONES:
        np.testing.assert_allclose(human[name], 1.0, err_msg=name)
    assert ((human["ego_progress"] > 0.5) & (human["ego_progress"] <= 1.0)).all()
    np.testing.assert_allclose(human["score"], (5 + 5 * human["ego_progress"] + 2) / 12)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == NUM_SCENES
    # the same folder read by a v2 run: every row fails naming the version, none is scored on the v1 cache
    data_root, maps_root = roots
    cfg = compose_config(
        ["protocol=navsim_v2", "planner=log_replay", f"data_root={data_root}", f"maps_root={maps_root}",
         f"output_dir={tmp_path / 'v2'}", f"metric_cache_dir={tmp_path / 'cache'}", f"max_scenes={NUM_SCENES}",
         "progress=false", "report.num_worst=0"]
    )  # fmt: skip
    rows = run(cfg)["rows"]
    assert not any(r["valid"] for r in rows)
    assert all("version v1, this benchmark scores v2" in r["error"] for r in rows)


def test_navsim_v2_pairs_consecutive_frames_for_extended_comfort(roots: tuple[Path, Path], tmp_path: Path) -> None:
    """The six scenes are consecutive 2 Hz frames of one log: the first has no predecessor (EC NaN, EPDMS over
    14), the next five are paired with the frame before; the human's consecutive plans agree (EC = 1)."""
    human = _run(roots, tmp_path / "v2", "log_replay", HUMAN_REFERENCE, protocol="navsim_v2")
    ec = human["two_frame_extended_comfort"].to_numpy()
    assert np.isnan(ec[0]) and (ec[1:] == 1.0).all(), ec
    np.testing.assert_allclose(human["score"], 1.0)
    average = pd.read_csv(tmp_path / "v2" / "scores.csv").iloc[-1]
    assert average["two_frame_extended_comfort"] == 1.0  # NaN rows skipped


@pytest.mark.parametrize("protocol", ["navsim_v1", "navsim_v2"])
def test_torch_scorer_gives_the_same_table(roots: tuple[Path, Path], tmp_path: Path, protocol: str) -> None:
    """``scorer=torch`` scores with the batched torch twin: the same scores.csv as the default numpy scorer."""
    cache = f"metric_cache_dir={tmp_path / 'cache'}"
    default = _run(roots, tmp_path / "numpy", "constant_velocity", cache, protocol=protocol)
    torch_run = _run(roots, tmp_path / "torch", "constant_velocity", cache, "scorer=torch", protocol=protocol)
    assert list(torch_run.columns) == list(default.columns)
    numeric = default.select_dtypes("number").columns
    pd.testing.assert_frame_equal(torch_run.drop(columns=numeric), default.drop(columns=numeric))
    np.testing.assert_allclose(torch_run[numeric].to_numpy(float), default[numeric].to_numpy(float), atol=1e-9)
