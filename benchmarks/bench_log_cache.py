"""Benchmarks of one split in one process, with and without the decoded-log cache (``cached_read_log``).

``make demo`` runs some 40 ``diffplan bench`` commands in one process, most of them on ``synth_test``. Each run lists
the split's scenes (every log read) and then loads each scene's log again; without the cache, every run decodes the
split's logs at least twice. This script runs the same sequence of benchmarks (log replay under NAVSIM v1, nuPlan
CLS-NR and CLS-R) ``--repeats`` times in this process, first with the cache off (``DIFFPLAN_LOG_CACHE_MB=0``, the
baseline), then on, and prints the wall time of both and their ratio. The scores of both passes must agree.

    python benchmarks/bench_log_cache.py --data-root D --maps-root D/maps [--split synth_test] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy

import simulation.datasets.nuplan_db as nuplan_db  # noqa: E402
from training.cli import main as diffplan  # noqa: E402

PROTOCOLS = ("navsim_v1", "nuplan_cls_nr", "nuplan_cls_r")


def run_pass(args: argparse.Namespace, out: Path, metric_cache: Path) -> tuple[float, list[float]]:
    """Seconds for ``repeats`` x the protocols, and the mean score of each run."""
    scores: list[float] = []
    t0 = time.perf_counter()
    for r in range(args.repeats):
        for protocol in PROTOCOLS:
            folder = out / f"{protocol}_{r}"
            extra = [f"max_scenes={args.cls_scenarios}"] if protocol.startswith("nuplan") else [
                "protocol.scene_filter.frame_interval=8", f"metric_cache_dir={metric_cache}",
            ]  # fmt: skip
            code = diffplan([
                "bench", f"protocol={protocol}", "planner=log_replay", f"split={args.split}",
                f"data_root={args.data_root}", f"maps_root={args.maps_root}", f"output_dir={folder}",
                "progress=false", "worker=sequential", "worker.isolate=false", "report.num_gifs=0", *extra,
            ])  # fmt: skip
            if code:
                raise SystemExit(f"diffplan bench {protocol} exited with {code}")
            scores.append(float(pd.read_csv(folder / "scores.csv")["score"].mean()))
    return time.perf_counter() - t0, scores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--maps-root", required=True)
    p.add_argument("--split", default="synth_test")
    p.add_argument("--repeats", type=int, default=2, help="times the sequence of benchmarks runs in each pass")
    p.add_argument("--cls-scenarios", type=int, default=6)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "metric_cache"
        os.environ["DIFFPLAN_LOG_CACHE_MB"] = "0"
        # a first run builds the NAVSIM metric cache and compiles the numba kernels: neither pass pays for them
        run_pass(argparse.Namespace(**{**vars(args), "repeats": 1}), Path(tmp) / "warm", cache)
        off, off_scores = run_pass(args, Path(tmp) / "off", cache)
        os.environ["DIFFPLAN_LOG_CACHE_MB"] = "1024"
        nuplan_db._LOG_CACHE.clear()
        on, on_scores = run_pass(args, Path(tmp) / "on", cache)
    if off_scores != on_scores:
        raise SystemExit(f"the scores differ with the cache: {off_scores} against {on_scores}")
    runs = args.repeats * len(PROTOCOLS)
    print(f"{runs} benchmark runs of {args.split} (log replay; {', '.join(PROTOCOLS)}) in one process:")
    print(f"  without the log cache: {off:.1f} s ({off / runs:.1f} s a run)")
    print(f"  with the log cache:    {on:.1f} s ({on / runs:.1f} s a run)")
    print(f"  x{off / on:.2f}; the same scores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
