"""Build a benchmark's pieces from its resolved config (a plain dict, picklable to workers).

``build_evaluator(cfg)`` runs inside each worker (process or Ray actor) and instantiates the planner, the
scorer, the candidate metrics, the simulator and the data source there, so nothing heavy crosses process
boundaries.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate

from simulation import visualize
from simulation.evaluation import pairing
from simulation.evaluation.evaluator import SceneEvaluator
from simulation.evaluation.protocols import BenchmarkProtocol, get_protocol
from simulation.evaluation.refs import SceneRef, SceneSource
from simulation.evaluation.report import SceneDrawer
from simulation.evaluation.units import ClosedLoopUnit, NavsimUnit, Unit
from simulation.maps.protocol import MapProtocol
from simulation.protocols import CandidateMetric, Planner
from simulation.types import EgoStates, LogWindow

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


def build_candidate_metrics(cfg: Mapping[str, Any]) -> dict[str, CandidateMetric]:
    """The protocol's ``candidate_metrics`` (column name -> ``_target_`` entry), instantiated; empty when none."""
    specs = cfg["protocol"].get("candidate_metrics") or {}
    return {str(name): instantiate(spec, _convert_="all") for name, spec in specs.items()}


@dataclass
class SimulateClosedLoop:
    """``(scenario, planner, map_api) -> rollout`` with a closed-loop simulator (reactive or not)."""

    simulator: Any

    def __call__(self, scenario: Any, planner: Planner, map_api: MapProtocol) -> Any:
        return self.simulator.run(scenario, planner, map_api=map_api)


def build_unit(cfg: Mapping[str, Any], protocol: BenchmarkProtocol) -> Unit:
    """The protocol's unit of work with the configured planner and scorer."""
    planner = instantiate_planner(cfg["planner"])
    pcfg = cfg["protocol"]
    maps = build_maps(cfg)
    if protocol.is_navsim:
        caches = instantiate(pcfg["metric_cache"], _convert_="all")
        scorer = instantiate(pcfg["scorer"], _convert_="all")
        metrics = build_candidate_metrics(cfg)
        return NavsimUnit(planner, scorer, caches, maps, keep_states=protocol.pairs_frames, candidate_metrics=metrics)
    simulator = instantiate(pcfg["simulator"], _convert_="all", reactive=bool(pcfg["reactive"]))
    scorer = instantiate(pcfg["scorer"], _convert_="all")
    return ClosedLoopUnit(planner, SimulateClosedLoop(simulator), scorer, maps)


def build_evaluator(cfg: Mapping[str, Any]) -> SceneEvaluator:
    """A worker's evaluator (picklable entry point: ``functools.partial(build_evaluator, cfg)``)."""
    protocol = get_protocol(str(cfg["protocol"]["name"]))
    return SceneEvaluator(build_source(cfg, protocol), build_unit(cfg, protocol), protocol)


def pair_frames(
    cfg: Mapping[str, Any], protocol: BenchmarkProtocol, rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Rows with the protocol's two-frame metrics (NAVSIM v2's extended comfort) merged in, scored by the
    configured scorer; other protocols' rows are returned unchanged."""
    if not protocol.pairs_frames:
        return list(rows)
    return pairing.with_two_frame_metrics(rows, instantiate(cfg["protocol"]["scorer"], _convert_="all"))


def with_driven_ego(window: LogWindow, ego_poses: np.ndarray) -> LogWindow:
    """``window`` with its ego poses from the current frame on replaced by ``ego_poses`` ``(T, 3)`` (driven path).

    Frames after the driven ones keep the last driven pose; the other ego columns are kept from the log.
    """
    states = window.ego.states.copy()
    driven = np.asarray(ego_poses, dtype=np.float64)[: window.num_frames - window.current_index]
    end = window.current_index + len(driven)
    states[window.current_index : end, :3] = driven
    states[end:, :3] = driven[-1]
    return dataclasses.replace(window, ego=EgoStates(states, window.ego.timestamps_us))


def scene_drawer(
    cfg: Mapping[str, Any], protocol: BenchmarkProtocol, source: SceneSource, refs: Sequence[SceneRef]
) -> SceneDrawer | None:
    """Draws a worst scene: NAVSIM with its plan as the chosen trajectory; closed loop with the driven path as
    the ego's future (:func:`with_driven_ego`)."""
    maps = build_maps(cfg)
    by_token = {ref.token: ref for ref in refs}

    def draw(row: Mapping[str, Any], path: Path) -> None:
        window = source.load(by_token[str(row["token"])])
        map_api = None if maps is None else maps(window.map_name)
        if row.get("plan") is not None:
            visualize.save_scene_png(window, map_api, path, chosen=np.asarray(row["plan"], dtype=np.float64))
        elif row.get("ego_poses") is not None:
            visualize.save_scene_png(with_driven_ego(window, np.asarray(row["ego_poses"])), map_api, path)
        else:
            visualize.save_scene_png(window, map_api, path)

    return draw


def closed_loop_gifs(
    cfg: Mapping[str, Any],
    protocol: BenchmarkProtocol,
    source: SceneSource,
    refs: Sequence[SceneRef],
    rows: Sequence[Mapping[str, Any]],
    out: Path,
) -> dict[str, Path]:
    """GIFs of the first ``report.num_gifs`` valid closed-loop scenarios: the driven ego among the logged agents."""
    count = int(cfg["report"].get("num_gifs") or 0)
    if protocol.is_navsim or count <= 0:
        return {}
    maps = build_maps(cfg)
    by_token = {ref.token: ref for ref in refs}
    written: dict[str, Path] = {}
    for row in [r for r in rows if r.get("valid") and r.get("ego_poses")][:count]:
        window = with_driven_ego(source.load(by_token[str(row["token"])]), np.asarray(row["ego_poses"]))
        path = out / "gifs" / f"{row['token']}.gif"
        try:
            map_api = None if maps is None else maps(window.map_name)
            visualize.log_gif(window, map_api, path, start=window.current_index, step=5)
        except Exception as err:  # noqa: BLE001 - a GIF failing must not lose the report
            logger.warning("no GIF for %s: %s: %s", row["token"], type(err).__name__, err)
            continue
        written[f"gifs/{row['token']}"] = path
    return written
