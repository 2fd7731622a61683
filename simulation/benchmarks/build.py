"""Build a benchmark's pieces from its resolved config (a plain dict, picklable to workers).

``build_evaluator(cfg)`` runs inside each worker (process or Ray actor) and instantiates the planner, the
scorer, the simulator and the data source there, so nothing heavy crosses process boundaries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from simulation.benchmarks.protocols import BenchmarkProtocol, get_protocol
from simulation.benchmarks.report import SceneDrawer
from simulation.benchmarks.units import ClosedLoopUnit, NavsimUnit, SceneEvaluator, SceneSource, Unit
from simulation.protocols import Planner

logger = logging.getLogger(__name__)


def instantiate_planner(cfg: Mapping[str, Any]) -> Planner:
    """The planner of a ``planner/*.yaml`` entry (``name`` labels outputs; the rest is instantiated)."""
    spec = {k: v for k, v in cfg.items() if k != "name"}
    return instantiate(spec, _convert_="all")


def build_source(cfg: Mapping[str, Any], protocol: BenchmarkProtocol) -> SceneSource:
    """The configured source of scenes (NAVSIM protocols) or scenarios (CLS protocols)."""
    scene_filter = dict(cfg["protocol"].get("scene_filter") or {})
    return instantiate(cfg["source"], kind=protocol.kind, scene_filter=scene_filter, _convert_="all")


def build_maps(cfg: Mapping[str, Any]) -> Callable[[str], Any] | None:
    """``map_name -> MapAPI`` (``None`` when the config has no ``maps``: map-free planners and fakes)."""
    return None if cfg.get("maps") is None else instantiate(cfg["maps"], _convert_="all")


@dataclass
class SimulateClosedLoop:
    """``(scenario, planner, map_api) -> rollout`` with a closed-loop simulator (reactive or not)."""

    simulator: Any

    def __call__(self, scenario: Any, planner: Planner, map_api: Any) -> Any:
        return self.simulator.run(scenario, planner, map_api=map_api)


def build_unit(cfg: Mapping[str, Any], protocol: BenchmarkProtocol) -> Unit:
    """The protocol's unit of work with the configured planner and scorer."""
    planner = instantiate_planner(cfg["planner"])
    pcfg = cfg["protocol"]
    maps = build_maps(cfg)
    if protocol.is_navsim:
        caches = instantiate(pcfg["metric_cache"], _convert_="all")
        return NavsimUnit(planner, instantiate(pcfg["scorer"], _convert_="all"), caches, maps)
    simulator = instantiate(pcfg["simulator"], _convert_="all", reactive=bool(pcfg["reactive"]))
    scorer = instantiate(pcfg["scorer"], _convert_="all")
    return ClosedLoopUnit(planner, SimulateClosedLoop(simulator), scorer, maps)


def build_evaluator(cfg: Mapping[str, Any]) -> SceneEvaluator:
    """A worker's evaluator (picklable entry point: ``functools.partial(build_evaluator, cfg)``)."""
    protocol = get_protocol(str(cfg["protocol"]["name"]))
    return SceneEvaluator(build_source(cfg, protocol), build_unit(cfg, protocol), protocol)


def scene_drawer(cfg: Mapping[str, Any], protocol: BenchmarkProtocol, source: SceneSource) -> SceneDrawer | None:
    """Draws a worst scene with its plan (NAVSIM) or driven path (closed loop) on the BEV map."""
    try:
        from simulation import visualize  # type: ignore[attr-defined]
    except ImportError:
        logger.info("simulation.visualize is not available: no BEV images of the worst scenes")
        return None
    maps = build_maps(cfg)
    if maps is None:
        return None
    by_token = {ref.token: ref for ref in source.refs()}

    def draw(row: Mapping[str, Any], path: Path) -> None:
        window = source.load(by_token[str(row["token"])])
        visualize.plot_scene(window, maps(window.map_name), path, plan=row.get("plan"), ego_path=row.get("ego_poses"))

    return draw


def closed_loop_gifs(
    cfg: Mapping[str, Any],
    protocol: BenchmarkProtocol,
    source: SceneSource,
    rows: Sequence[Mapping[str, Any]],
    out: Path,
) -> dict[str, Path]:
    """GIFs of the first ``report.num_gifs`` valid closed-loop scenarios (when ``simulation.visualize`` exists)."""
    count = int(cfg["report"].get("num_gifs") or 0)
    if protocol.is_navsim or count <= 0:
        return {}
    try:
        from simulation import visualize  # type: ignore[attr-defined]
    except ImportError:
        return {}
    maps = build_maps(cfg)
    if maps is None:
        return {}
    by_token = {ref.token: ref for ref in source.refs()}
    written: dict[str, Path] = {}
    (out / "gifs").mkdir(exist_ok=True)
    for row in [r for r in rows if r.get("valid") and r.get("ego_poses")][:count]:
        window = source.load(by_token[str(row["token"])])
        path = out / "gifs" / f"{row['token']}.gif"
        try:
            visualize.log_gif(window, maps(window.map_name), path, ego_path=row["ego_poses"])
        except Exception as err:  # noqa: BLE001 - a GIF failing must not lose the report
            logger.warning("no GIF for %s: %s: %s", row["token"], type(err).__name__, err)
            continue
        written[f"gifs/{row['token']}"] = path
    return written
