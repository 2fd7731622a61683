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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark described by a composed config; returns the average row and the output paths."""
    protocol = get_protocol(str(cfg.protocol.name))
    plain_name(str(cfg.planner.name), "planner.name", BenchConfigError)  # the default output_dir is built from it
    container: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    source = build.build_source(container, protocol)
    refs = source.refs()
    out = Path(str(cfg.output_dir)).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
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
    except (BenchConfigError, InstantiationException) as err:
        cause = err.__cause__ if isinstance(err.__cause__, BenchConfigError) else err
        if not isinstance(cause, BenchConfigError):
            raise
        print(f"diffplan bench: {cause}")
        return 2
    valid = sum(bool(r.get("valid")) for r in result["rows"])
    print(
        f"{cfg.protocol.name} {cfg.planner.name} {cfg.split}: score {result['score']:.4f} "
        f"over {valid}/{len(result['rows'])} valid tokens -> {result['output_dir']}"
    )
    print(f"summary: {result['files']['summary']}")
    return 0
