"""``diffplan bench``: compose the Hydra config, run the benchmark, write the report.

    diffplan bench protocol=navsim_v1 planner=pdm_closed split=synth_test worker=process output_dir=out/pdm
    diffplan bench --cfg protocol=nuplan_cls_r planner=idm      # print the composed config and exit

Uses Hydra's compose API (no ``@hydra.main``), so it works from the console script and from tests. The
planner, the scorer, the simulator and the executor are built with ``hydra.utils.instantiate`` from
``_target_`` entries; ``simulation`` itself never imports ``planners`` or ``rewards``.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from configs import BENCH_DIR
from simulation.datasets.safe_paths import plain_name
from simulation.evaluation import build
from simulation.evaluation.evaluator import DATA_FAILURE
from simulation.evaluation.journal import JournalError
from simulation.evaluation.lock import run_lock
from simulation.evaluation.protocols import get_protocol
from simulation.evaluation.report import write_report
from simulation.evaluation.runner import run_benchmark
from simulation.evaluation.sources import BenchConfigError
from simulation.io import atomic_write_text

logger = logging.getLogger(__name__)

#: ``configs/bench``, shipped with the package.
CONFIG_DIR = BENCH_DIR


def compose_config(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """The composed ``config.yaml`` of ``config_dir`` (default :data:`CONFIG_DIR`) with Hydra ``overrides``."""
    directory = Path(config_dir or CONFIG_DIR).resolve()
    if not (directory / "config.yaml").exists():
        raise BenchConfigError(f"{directory}: no config.yaml (benchmark configs live in configs/bench)")
    with initialize_config_dir(config_dir=str(directory), version_base="1.3", job_name="bench"):
        return compose(config_name="config", overrides=list(overrides))


def _write_config(cfg: DictConfig, path: Path) -> None:
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def _positive(cfg: DictConfig, key: str, allow_none: bool) -> None:
    value = cfg.get(key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BenchConfigError(f"{key}={value} must be a positive integer" + (" (or null)" if allow_none else ""))


def check_config(cfg: DictConfig) -> None:
    """Reject nonsense values before any work: ``max_scenes`` and ``chunk_size`` must be positive integers."""
    _positive(cfg, "max_scenes", allow_none=True)
    _positive(cfg, "chunk_size", allow_none=False)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark described by a composed config; returns the average row and the output paths.

    The output folder is locked for the run (:func:`simulation.evaluation.lock.run_lock`).
    """
    check_config(cfg)
    out = Path(str(cfg.output_dir)).expanduser().resolve()
    with run_lock(out):
        return _run_locked(cfg, out)


def _run_locked(cfg: DictConfig, out: Path) -> dict[str, Any]:
    protocol = get_protocol(str(cfg.protocol.name))
    plain_name(str(cfg.planner.name), "planner.name", BenchConfigError)  # the default output_dir is built from it
    container: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    source = build.build_source(container, protocol)
    refs = source.refs()
    _write_config(cfg, out / "config.yaml")
    if cfg.max_scenes is not None:
        refs = refs[: int(cfg.max_scenes)]
    logger.info("%s: %d tokens, planner %s, worker %s", protocol.name, len(refs), cfg.planner.name, cfg.worker._target_)
    header = {"protocol": protocol.name, "planner": str(cfg.planner.name), "split": str(cfg.split)}
    rows = run_benchmark(
        refs,
        functools.partial(build.build_evaluator, container),
        instantiate(cfg.worker),
        out,
        header,
        chunk_size=int(cfg.chunk_size),
        progress=bool(cfg.progress),
    )
    rows = build.pair_frames(container, protocol, rows)
    run_info = {**header, "worker": cfg.worker._target_.rsplit(".", 1)[-1], "output_dir": str(out)}
    written = write_report(
        protocol,
        rows,
        out,
        run_info,
        draw_scene=build.scene_drawer(container, protocol, source, refs),
        num_worst=int(cfg.report.num_worst),
        skipped_logs=getattr(source, "skipped", ()),
    )
    written.update(build.closed_loop_gifs(container, protocol, source, refs, rows, out))
    return {"output_dir": out, "score": _mean_score(rows), "files": written, "rows": rows}


def _mean_score(rows: Sequence[dict[str, Any]]) -> float:
    scores = [float(r["score"]) for r in rows if r.get("valid")]
    return sum(scores) / len(scores) if scores else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``diffplan bench``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="diffplan bench", description=__doc__.split("\n", 1)[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. protocol=navsim_v2 planner=idm")
    parser.add_argument("--config-dir", default=None, help=f"config folder (default {CONFIG_DIR})")
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = compose_config(args.overrides, args.config_dir)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        result = run(cfg)
    except (BenchConfigError, InstantiationException, JournalError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, BenchConfigError) else err
        if not isinstance(cause, (BenchConfigError, JournalError)):
            raise
        print(f"diffplan bench: {cause}")
        return 2
    rows = result["rows"]
    valid = sum(bool(r.get("valid")) for r in rows)
    print(
        f"{cfg.protocol.name} {cfg.planner.name} {cfg.split}: score {result['score']:.4f} "
        f"over {valid}/{len(rows)} valid tokens -> {result['output_dir']}"
    )
    print(f"summary: {result['files']['summary']}")
    return _exit_code(rows)


def _exit_code(rows: Sequence[dict[str, Any]]) -> int:
    """1 (and why, on stdout) when a row failed because of data / configuration or when no row is valid; else 0."""
    data = [r for r in rows if r.get("failure") == DATA_FAILURE]
    if data:
        print(
            f"diffplan bench: {len(data)} tokens failed because of data or configuration, not the planner "
            f"(first {data[0]['token']}: {data[0].get('error')}); they are not results: fix and run again"
        )
        return 1
    if not any(r.get("valid") for r in rows):
        print(f"diffplan bench: no valid token ({len(rows)} evaluated): the benchmark has no result")
        return 1
    return 0
