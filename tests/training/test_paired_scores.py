"""benchmarks/paired_scores.py: the paired difference and its bootstrap interval on hand-built scores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from paired_scores import main, paired, read_scores, run_labels  # noqa: E402


def test_hand_computed_difference_counts_and_interval() -> None:
    base = {"a": 0.0, "b": 1.0, "c": 0.5, "only_base": 0.3}
    new = {"a": 1.0, "b": 1.0, "c": 0.25, "only_new": 0.9}
    r = paired(base, new, resamples=2000)
    assert (r.scenes, r.dropped, r.better, r.worse) == (3, 2, 1, 1)
    assert r.base == pytest.approx(0.5) and r.new == pytest.approx(0.75) and r.diff == pytest.approx(0.25)
    # a bootstrap mean of the differences (1, 0, -0.25) lies between their min and max, and the interval holds it
    assert -0.25 <= r.low < r.diff < r.high <= 1.0


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    base = {str(i): i / 10 for i in range(10)}
    r = paired(base, {k: v + 0.2 for k, v in base.items()}, level=0.95)
    assert r.diff == pytest.approx(0.2) and r.low == pytest.approx(0.2) and r.high == pytest.approx(0.2)
    assert (r.better, r.worse) == (10, 0)


def test_invalid_rows_are_left_out_and_bad_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = tmp_path / "base.csv"
    base.write_text(
        "token,valid,score\nt1,True,0.5\nt2,False,0.0\nt3,True,1.0\nt4,True,nan\nt5,True,\naverage,True,0.75\n"
    )
    new = tmp_path / "episodes.csv"  # a closed-loop validation file: no valid column
    new.write_text("token,score,return\nt1,1.0,1.0\nt2,1.0,1.0\nt3,1.0,1.0\n")
    assert read_scores(base) == {"t1": 0.5, "t3": 1.0}
    main([str(base), str(new), "--resamples", "100"])
    out = capsys.readouterr().out
    assert "| 2 (1 not in both) | 1.0000 | 0.7500 | +0.2500 |" in out and "| 1 / 0 |" in out
    with pytest.raises(ValueError, match="base.csv.*'ego'"):
        read_scores(base, "ego")
    with pytest.raises(SystemExit, match="paired_scores: .*missing.csv"):
        main([str(base), str(tmp_path / "missing.csv")])
    with pytest.raises(ValueError, match="share no valid scene"):
        paired({"x": 1.0}, {"y": 1.0})


def test_run_labels_keep_what_the_paths_do_not_share() -> None:
    paths = ["/x/runs/b16_s0/nv1/scores.csv", "/x/runs/b16_s1/nv1/scores.csv", "/x/runs/il/nv1/scores.csv"]
    assert run_labels(paths) == ["b16_s0", "b16_s1", "il"]
    assert run_labels(["a/s0/ep.csv", "a/s0/deeper/ep.csv"]) == ["ep.csv", "deeper/ep.csv"]
    assert run_labels(["only/one.csv"]) == ["only/one.csv"]


def test_plot_writes_one_row_per_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = tmp_path / "base.csv"
    base.write_text("token,score\nt1,0.5\nt2,1.0\n")
    for name in ("r_s0", "r_s1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scores.csv").write_text("token,score\nt1,1.0\nt2,1.0\n")
    out = tmp_path / "paired.png"
    main([str(base), str(tmp_path / "r_s0/scores.csv"), str(tmp_path / "r_s1/scores.csv"), "--plot", str(out)])
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {out}" in text
    import matplotlib.image

    height = matplotlib.image.imread(out).shape[0]
    main([str(base), *(str(tmp_path / f"r_s{i % 2}/scores.csv") for i in range(6)), "--plot", str(out)])
    assert matplotlib.image.imread(out).shape[0] > height  # a taller figure for more runs
