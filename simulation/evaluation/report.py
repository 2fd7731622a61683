"""Benchmark reports: per-token CSV with NAVSIM's columns, details CSV, markdown summary, score histogram.

Files written into the run folder (each to a temporary name, then renamed):

- ``scores.csv``: ``token, valid, <sub-metrics>, score`` per token, then a row ``average`` holding the
  column means over tokens (NaN, i.e. failed tokens, skipped) and ``valid`` = all tokens valid. For
  navsim_v1 this is exactly NAVSIM v1.1's CSV; for the CLS protocols the columns are nuPlan's metrics.
- ``details.csv``: every token with ``log_name, scenario_type, valid, error, seconds`` and its metrics (and
  ``diversity``, the mode diversity of the candidates, for planners that return several).
- ``summary.md``: score table, per-scenario-type table, failures, worst scenes (with images if drawn).
- ``score_hist.png``: histogram of the per-token score.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simulation.evaluation.protocols import BenchmarkProtocol
from simulation.io import atomic_path

logger = logging.getLogger(__name__)

AVERAGE_TOKEN = "average"
DETAIL_COLUMNS = ("token", "log_name", "scenario_type", "valid", "error", "seconds")

#: ``(row, png_path) -> None``: draws one scene of the report (worst scenes).
SceneDrawer = Callable[[Mapping[str, Any], Path], None]


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def scores_table(protocol: BenchmarkProtocol, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-token table with the protocol's CSV columns plus the ``average`` row.

    The average of a metric is its mean over tokens with NaN skipped (NAVSIM's ``mean(skipna=True)``),
    so failed tokens do not count; ``valid`` of the average row is True only if every token is valid and
    there is at least one token.
    """
    cols = list(protocol.csv_columns)
    frame = pd.DataFrame([{c: row.get(c, math.nan) for c in cols} for row in rows], columns=cols)
    frame["valid"] = frame["valid"].astype(bool)
    metric_cols = cols[2:]
    frame[metric_cols] = frame[metric_cols].astype(float)
    average: dict[str, Any] = {"token": AVERAGE_TOKEN, "valid": bool(len(frame)) and bool(frame["valid"].all())}
    for col in metric_cols:
        values = frame[col].to_numpy(dtype=float)
        average[col] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    return pd.concat([frame, pd.DataFrame([average], columns=cols)], ignore_index=True)


def details_table(protocol: BenchmarkProtocol, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Every token with its provenance, error text, timing and metrics."""
    cols = [*DETAIL_COLUMNS, *protocol.columns, "score"]
    if any("diversity" in row for row in rows):
        cols.append("diversity")
    return pd.DataFrame([{c: row.get(c) for c in cols} for row in rows], columns=cols)


def mean_diversity(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean mode diversity over the valid rows that have one (planners with candidates), else ``None``."""
    values = [float(r["diversity"]) for r in rows if r.get("valid") and r.get("diversity") is not None]
    return float(np.mean(values)) if values else None


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` without its index, atomically."""
    _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _fmt(value: Any) -> str:
    return "nan" if value is None or not math.isfinite(float(value)) else f"{100.0 * float(value):.1f}"


def _markdown_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def type_table(protocol: BenchmarkProtocol, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-scenario-type means (NaN skipped) and counts, sorted by type; ×1 (not percent)."""
    cols = [*protocol.columns, "score"]
    frame = pd.DataFrame([{c: row.get(c) for c in ("scenario_type", "valid", *cols)} for row in rows])
    frame[cols] = frame[cols].astype(float)
    grouped = frame.groupby("scenario_type", sort=True)
    table = grouped[cols].mean()
    table.insert(0, "valid", grouped["valid"].sum().astype(int))
    table.insert(0, "n", grouped.size())
    return table


def summary_markdown(
    protocol: BenchmarkProtocol,
    rows: Sequence[Mapping[str, Any]],
    run_info: Mapping[str, Any],
    images: Mapping[str, str] | None = None,
    num_worst: int = 5,
    skipped_logs: Sequence[tuple[str, str]] = (),
) -> str:
    """The run's ``summary.md`` text: scores are in percent (×100), as the leaderboards print them.

    ``skipped_logs``: ``(path, error)`` of the split's logs that could not be read (counted and listed).
    """
    scores = scores_table(protocol, rows)
    average = scores.iloc[-1]
    valid = int(scores["valid"].iloc[:-1].sum())
    lines = [f"# Benchmark {protocol.name}", ""]
    lines += [f"- {key}: `{value}`" for key, value in run_info.items()]
    lines += [f"- tokens: {len(rows)} ({valid} valid, {len(rows) - valid} failed)"]
    lines += [f"- skipped logs (unreadable): {len(skipped_logs)}", "", "## Scores (x100)", ""]
    lines += _markdown_table(
        ["metric", "value"],
        [[c, _fmt(average[c])] for c in protocol.columns] + [[protocol.score_name, _fmt(average["score"])]],
    )
    diversity = mean_diversity(rows)
    if diversity is not None:
        lines += ["", f"Mode diversity of the planner's candidates (x100, mean over valid scenes): {_fmt(diversity)}"]
    if rows:
        types = type_table(protocol, rows)
        lines += ["", "## Per scenario type (x100)", ""]
        header = ["scenario_type", "n", "valid", protocol.score_name, *protocol.columns]
        body = [
            [str(t), str(int(r["n"])), str(int(r["valid"])), _fmt(r["score"]), *[_fmt(r[c]) for c in protocol.columns]]
            for t, r in types.iterrows()
        ]
        lines += _markdown_table(header, body)
    failed = [r for r in rows if not r.get("valid")]
    if failed:
        lines += ["", f"## Failures ({len(failed)})", ""]
        lines += _markdown_table(
            ["token", "error"], [[str(r["token"]), str(r.get("error", "")).replace("|", "/")] for r in failed[:50]]
        )
    if skipped_logs:
        lines += ["", f"## Skipped logs ({len(skipped_logs)})", ""]
        lines += _markdown_table(["log", "error"], [[path, error.replace("|", "/")] for path, error in skipped_logs])
    worst = worst_rows(rows, num_worst)
    if worst:
        lines += ["", "## Worst scenes", ""]
        lines += _markdown_table(
            ["token", "scenario_type", protocol.score_name],
            [[str(r["token"]), str(r.get("scenario_type")), _fmt(r["score"])] for r in worst],
        )
        for row in worst:
            if images and row["token"] in images:
                lines += ["", f"![{row['token']}]({images[row['token']]})"]
    return "\n".join(lines) + "\n"


def worst_rows(rows: Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    """The ``count`` valid rows with the lowest score (ties by token)."""
    valid = [r for r in rows if r.get("valid") and r.get("score") is not None and math.isfinite(float(r["score"]))]
    return sorted(valid, key=lambda r: (float(r["score"]), str(r["token"])))[:count]


def plot_score_histogram(protocol: BenchmarkProtocol, rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Histogram of the valid per-token scores over [0, 1] in 20 bins."""
    scores = np.array([float(r["score"]) for r in rows if r.get("valid")], dtype=float)
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(scores[np.isfinite(scores)], bins=np.linspace(0.0, 1.0, 21).tolist(), color="#3a7ca5", edgecolor="white")
    ax.set_xlabel(f"{protocol.score_name} per token")
    ax.set_ylabel("tokens")
    mean = float(np.nanmean(scores)) if scores.size else math.nan
    ax.set_title(f"{protocol.name}: {len(scores)} valid tokens, mean {mean:.3f}")
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_report(
    protocol: BenchmarkProtocol,
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    run_info: Mapping[str, Any],
    draw_scene: SceneDrawer | None = None,
    num_worst: int = 5,
    skipped_logs: Sequence[tuple[str, str]] = (),
) -> dict[str, Path]:
    """Write every report file into ``output_dir``; returns name -> path of what was written.

    ``skipped_logs``: ``(path, error)`` of unreadable logs left out of the run, listed in ``summary.md``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"scores": out / "scores.csv", "details": out / "details.csv", "hist": out / "score_hist.png"}
    write_csv(scores_table(protocol, rows), written["scores"])
    write_csv(details_table(protocol, rows), written["details"])
    plot_score_histogram(protocol, rows, written["hist"])
    images: dict[str, str] = {}
    if draw_scene is not None:
        (out / "worst").mkdir(exist_ok=True)
        for row in worst_rows(rows, num_worst):
            path = out / "worst" / f"{row['token']}.png"
            try:
                draw_scene(row, path)
            except Exception as err:  # noqa: BLE001 - a plot failing must not lose the report
                logger.warning("could not draw %s: %s: %s", row["token"], type(err).__name__, err)
                continue
            images[str(row["token"])] = str(path.relative_to(out))
            written[f"worst/{row['token']}"] = path
    text = summary_markdown(protocol, rows, run_info, images, num_worst, skipped_logs)
    written["summary"] = out / "summary.md"
    _atomic_write(written["summary"], lambda tmp: _write_text(tmp, text))
    return written
