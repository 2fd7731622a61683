"""The demo's report table: one row per planner from the benchmark folders, diversity where there are candidates."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from training.pipeline import SIZES, Pipeline


def _bench(out: Path, protocol: str, planner: str, scores: dict[str, float], diversity: list[float] | None) -> None:
    run = out / "bench" / protocol / planner
    run.mkdir(parents=True)
    pd.DataFrame([{"token": "a", "valid": True, **scores}, {"token": "average", "valid": True, **scores}]).to_csv(
        run / "scores.csv", index=False
    )
    details = pd.DataFrame({"token": ["a", "b", "c"], "valid": [True, True, False], "score": [1.0, 0.5, None]})
    if diversity is not None:
        details["diversity"] = diversity
    details.to_csv(run / "details.csv", index=False)


def test_table_rows_columns_and_diversity(tmp_path: Path) -> None:
    v1 = {"no_at_fault_collisions": 1.0, "drivable_area_compliance": 0.5, "score": 0.75}
    _bench(tmp_path, "navsim_v1", "truncated_il", v1, [0.2, 0.4, 0.9])  # the failed scene's 0.9 is left out
    _bench(tmp_path, "navsim_v1", "idm", v1, None)
    _bench(tmp_path, "navsim_v2", "idm", {"score": 0.6}, None)
    # the hard scenes (synth_navtest) add one column; their diversity is not the table's
    _bench(tmp_path, "navsim_v1_synth_navtest", "truncated_il", {"score": 0.25}, [0.0, 0.0, 0.0])
    table = Pipeline(tmp_path, SIZES["small"]).table().splitlines()
    assert table[0] == "| planner | NC | DAC | TTC | EP | C | PDMS | EPDMS | CLS-NR | CLS-R | hard PDMS | Div |"
    assert table[2] == "| idm | 100.0 | 50.0 | - | - | - | 75.0 | 60.0 | - | - | - | - |"  # rule-based rows first
    assert table[3] == "| truncated_il | 100.0 | 50.0 | - | - | - | 75.0 | - | - | - | 25.0 | 30.0 |"


def _recording_pipeline(tmp_path: Path) -> tuple[Pipeline, list[tuple[str, ...]]]:
    """The small demo whose commands are recorded, not run, and whose checkpoints are ``tmp_path/<run>/best.ckpt``."""
    pipe = Pipeline(tmp_path, SIZES["small"])
    commands: list[tuple[str, ...]] = []
    pipe.run_command = lambda *args: commands.append(args)  # type: ignore[method-assign]
    pipe.checkpoint = lambda name: tmp_path / name / "best.ckpt"  # type: ignore[method-assign]
    return pipe, commands


def test_discriminator_stages_start_from_their_runs_and_rows_follow_the_rl_ones(tmp_path: Path) -> None:
    pipe, commands = _recording_pipeline(tmp_path)
    pipe.train_discriminator("discriminator")
    pipe.train_discriminator("discriminator_tcgrpo")
    supervised, tcgrpo = (dict(zip(c[1::2], c[2::2], strict=False)) for c in commands)
    assert supervised["--config"].endswith("discriminator.yaml")
    assert supervised["--model.init_ckpt"] == str(tmp_path / "truncated_il" / "best.ckpt")
    assert supervised["--data.max_scenes"] == str(SIZES["small"].rl_scenes)
    assert supervised["--data.stride"] == str(SIZES["small"].rl_stride)
    assert tcgrpo["--config"].endswith("discriminator_tcgrpo.yaml")
    assert tcgrpo["--model.init_ckpt"] == str(tmp_path / "discriminator" / "best.ckpt")
    assert tcgrpo["--data.max_scenarios"] == str(SIZES["small"].tcgrpo_scenarios)
    v1 = {"score": 0.5}
    for planner in ("discriminator_tcgrpo", "masked_il_reflect", "discriminator_tcgrpo_gated", "truncated_ddv2",
                    "discriminator"):  # fmt: skip
        _bench(tmp_path, "navsim_v1", planner, v1, None)
    rows = [line.split(" | ")[0][2:] for line in pipe.table().splitlines()[2:]]
    assert rows == ["truncated_ddv2", "discriminator", "discriminator_tcgrpo", "discriminator_tcgrpo_gated",
                    "masked_il_reflect"]  # fmt: skip


def test_rl_stages_start_from_imitation_and_take_their_size_overrides_last(tmp_path: Path) -> None:
    pipe, commands = _recording_pipeline(tmp_path)
    pipe.train_rl("truncated_ddv2")
    pipe.train_rl("masked_gspo")
    truncated, masked = commands
    assert truncated[truncated.index("--model.init_ckpt") + 1] == str(tmp_path / "truncated_il" / "best.ckpt")
    # jsonargparse keeps the last value of an argument: the run's overrides come after the size's defaults
    overrides = ("--data.max_scenes", "null", "--trainer.max_epochs", "2", "--data.batch_size", "16")
    assert truncated[-6:] == overrides
    assert truncated.index("--data.max_scenes") < len(truncated) - 6
    assert masked[masked.index("--model.init_ckpt") + 1] == str(tmp_path / "masked_il" / "best.ckpt")
    assert masked[-2:] == ("--trainer.enable_progress_bar", "false")  # no overrides of its own
    assert masked[masked.index("--data.max_scenes") + 1] == str(SIZES["small"].rl_scenes)
    stride = str(SIZES["small"].rl_stride)
    assert truncated[truncated.index("--data.stride") + 1] == masked[masked.index("--data.stride") + 1] == stride


def test_rl_paired_runs_each_rl_run_and_its_start_on_more_scenes(tmp_path: Path) -> None:
    pipe, commands = _recording_pipeline(tmp_path)
    pipe.rl_paired()
    runs = [dict(arg.split("=", 1) for arg in c[1:]) for c in commands]
    assert [r["planner.name"] for r in runs] == ["truncated_il", "truncated_ddv2", "masked_il", "masked_gspo"]
    assert [r["planner"] for r in runs] == ["learned", "learned", "masked", "masked"]
    assert {r["protocol"] for r in runs} == {"navsim_v1"} and {r["split"] for r in runs} == {"synth_test"}
    small = SIZES["small"]
    assert small.paired_interval < small.navsim_interval  # more scenes than the table's
    assert {r["protocol.scene_filter.frame_interval"] for r in runs} == {str(small.paired_interval)}
    assert runs[1]["output_dir"] == str(tmp_path / "paired" / "navsim_v1" / "truncated_ddv2")
    assert runs[1]["planner.ckpt_path"] == str(tmp_path / "truncated_ddv2" / "best.ckpt")
    # the medium size scores the table on as many scenes: no extra runs, the table's own are paired
    medium, medium_commands = _recording_pipeline(tmp_path / "m")
    medium.size = SIZES["medium"]
    medium.rl_paired()
    assert medium_commands == [] and medium.paired_dir() == tmp_path / "m" / "bench" / "navsim_v1"


def test_paired_table_by_hand(tmp_path: Path) -> None:
    pipe = Pipeline(tmp_path, SIZES["small"])
    for name, scores in {"truncated_il": [0.5, 0.8, 0.0, 0.8], "truncated_ddv2": [0.7, 0.9, 0.0, 0.7]}.items():
        run = tmp_path / "paired" / "navsim_v1" / name
        run.mkdir(parents=True)
        rows = [{"token": t, "valid": True, "score": v} for t, v in zip("abcd", scores, strict=True)]
        rows.append({"token": "average", "valid": True, "score": sum(scores) / 4})
        pd.DataFrame(rows).to_csv(run / "scores.csv", index=False)
    lines = pipe.paired_table().splitlines()
    assert len(lines) == 3  # header, rule, the truncated pair (the masked runs are missing: no row)
    # 0.525 -> 0.575: differences +0.2, +0.1, 0, -0.1 (2 better, 1 worse); the interval inside [-0.1, +0.2]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:6] == ["truncated_ddv2", "truncated_il", "4", "52.5", "57.5", "+5.0"]
    low, high = (float(v) for v in cells[6].strip("[]").split(","))
    assert -10.0 <= low <= 5.0 <= high <= 20.0 and cells[7] == "2 / 1"


def test_report_says_the_table_has_fewer_scenes_only_when_it_does(tmp_path: Path) -> None:
    for size, fewer in (("small", True), ("medium", False)):
        pipe = Pipeline(tmp_path / size, SIZES[size])
        (tmp_path / size).mkdir()
        pipe.report()
        text = (tmp_path / size / "report.md").read_text()
        assert "## RL against imitation, scene by scene" in text
        assert ("The table above scores one seed on fewer scenes" in text) == fewer
