"""``diffplan data dagger``: the states a learned planner drives into in closed loop, labelled by PDM-Closed.

    diffplan data dagger --ckpt RUN/best.ckpt --data-root DIR --maps-root DIR --splits synth_train synth_val \\
        --cache outputs/demo/cache --suffix dagger1 [--every 5] [--beta 0.0] [--reactive] [--workers 2] \\
        [--metric-cache outputs/demo/metric_cache/rl_v1 --version v1]

Imitation sees logged states only; in closed loop the planner soon meets states of its own making (closer to
a lead, faster than the log, off the logged line) and its errors compound. DAgger (Ross et al., 2011) asks an
expert what it would do in exactly those states and trains on the aggregate. Here the learner (the checkpoint's
planner, as ``planner=learned`` drives it) drives every nuPlan scenario of each split in the vector closed loop
(``protocol=nuplan_cls_nr``'s simulator; ``--reactive``: IDM agents, as CLS-R); at every ``every``-th iteration
from the ``every``-th on (iteration 0 is a logged state, already in the cache with its logged future) the
observation's planner features are written with PDM-Closed's plan from that same observation as the target
(NAVSIM v1's PDM-Closed, 8 poses at 0.5 s in the current rear-axle frame). The features are those of
:func:`simulation.features.observation_features`, which equal the cached NAVSIM features on logged states
(``tests/simulation/test_feature_parity.py``), in the cache's own raster (its ``meta.json``).

With ``beta`` > 0 the expert's plan is the one executed at a replanning step with that probability (DAgger's
mixture policy), from a generator seeded by the scenario's token, so a collection repeats exactly.

The learner is whatever the checkpoint holds: a learned planner (``planner=learned``) or a generator +
discriminator pair (``planner=reranked``, with its defaults).

With ``--metric-cache DIR`` each labelled state also gets its NAVSIM metric cache, stored in ``DIR`` under the
sample's token: the log's scene at that frame (:func:`closed_loop_scene`: the logged agents, map, lights and route,
the logged future as the human plan) with the ego's current state and history replaced by the simulated ones, and
PDM-Closed's reference from there, as ``diffplan data cache --metric`` builds them for logged scenes. Any
candidate plan of such a state is then scored as a logged one is (``training.rl_data.RLDataModule`` with
``train_split: [synth_train, synth_train_<suffix>]`` and that ``metric_cache_dir``): a discriminator learns from
the states the pair drives into, labelled by the scorer against the agents' logged future, which is exactly what
the non-reactive closed loop replays. States whose 5 s of logged future leave the log are not kept; log-replay
agents only (not with ``--reactive``, whose agents leave the log).

Output: one shard per log in the feature cache's format, ``<cache>/<split>_<suffix>/shard_<log>.npz`` (tokens
``<scenario token>:<suffix>:<iteration>``: two collections' states of one scenario never share a token, nor a metric
cache, which is found by token); train on the aggregate with ``--data.train_split '[synth_train,
synth_train_dagger1]'``. Shards already present are skipped, so an interrupted collection continues; a log that
fails is named and skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simulation.closed_loop import ClosedLoopSimulator, SimState, SimulationHistory, call_planner
from simulation.datasets.log_data import LogData
from simulation.datasets.scenes import FRAME_RATE_HZ, SCENE_STEP, SceneFilter, scene_at
from simulation.features import PlannerInput, observation_features, raster_from_meta
from simulation.maps.protocol import MapProtocol
from simulation.protocols import Planner
from simulation.render import RasterConfig
from simulation.types import NUM_TRAJECTORY_POSES, TRAJECTORY_INTERVAL_S, EgoStates, Scenario, Scene
from training.cache import CacheBuildError, split_logs
from training.data import read_meta, stack_samples, write_npz_atomic

if TYPE_CHECKING:
    from planners.adapter import LearnedPlanner

logger = logging.getLogger(__name__)


class DaggerError(RuntimeError):
    """``diffplan data dagger`` cannot run (no cache, bad arguments) or collected nothing (every log failed)."""


@dataclass(frozen=True)
class DaggerConfig:
    """How a collection runs.

    Attributes:
        every: label every this many closed-loop iterations (0.1 s each), from the ``every``-th on.
        beta: probability that a replanning step executes the expert's plan instead of the learner's.
        reactive: IDM agents (CLS-R) instead of log replay (CLS-NR).
        seed: seed of the mixture's draws (with the scenario token) and of the learner's sampling noise.
    """

    every: int = 5
    beta: float = 0.0
    reactive: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {self.beta}")


@dataclass
class Labelled:
    """The samples of one scenario: features, expert targets ``(8, 3)``, tokens, the states the expert could not
    label, and the rollout that was driven."""

    features: list[PlannerInput[np.ndarray]]
    targets: list[np.ndarray]
    tokens: list[str]
    expert_failures: int
    history: SimulationHistory
    dropped: int = 0


#: Called with each labelled state and its sample token; ``False`` leaves the sample out.
OnLabel = Callable[[SimState, str], bool]


def collect_scenario(
    scenario: Scenario,
    map_api: MapProtocol,
    learner: Planner,
    expert: Planner,
    config: DaggerConfig,
    raster: RasterConfig,
    simulator: ClosedLoopSimulator | None = None,
    on_label: OnLabel | None = None,
    tag: str = "",
) -> Labelled:
    """Drive ``scenario`` with ``learner`` (or, at a replanning step drawn with probability ``beta``, with the
    expert) and label every ``config.every``-th iteration's observation with the expert's plan.

    A planner that raises is handled as in the benchmarks (the last plan is kept); an expert that raises leaves its
    state unlabelled (counted in ``expert_failures``) and, at a mixture step, the learner's plan is executed.
    ``on_label(state, token)`` is called for each labelled state (e.g. to store its metric cache); a state for which
    it returns ``False`` is left out (counted in ``dropped``). Tokens are ``<scenario token>:<iteration>``, or
    ``<scenario token>:<tag>:<iteration>`` with a ``tag``, which keeps the states of two collections apart.
    """
    prefix = f"{scenario.token}:{tag}:" if tag else f"{scenario.token}:"
    sim = simulator or ClosedLoopSimulator(reactive=config.reactive)
    rng = np.random.default_rng([config.seed, zlib.crc32(str(scenario.token).encode())])
    features: list[PlannerInput[np.ndarray]] = []
    targets: list[np.ndarray] = []
    tokens: list[str] = []
    failures = dropped = 0
    state = sim.reset(scenario, map_api)
    while not state.done:
        trajectory, error = None, None
        if state.iteration % sim.config.replan_interval == 0:
            observation = sim.observe(state)
            use_expert = config.beta > 0 and rng.random() < config.beta
            labelled = state.iteration > 0 and state.iteration % config.every == 0
            expert_plan = None
            if labelled or use_expert:
                expert_plan, expert_error = call_planner(expert, observation)
                if expert_plan is None:
                    failures += 1
                    logger.warning("dagger: expert failed on %s at iteration %d: %s", scenario.token,
                                   state.iteration, expert_error)  # fmt: skip
                elif labelled:
                    token = f"{prefix}{state.iteration:03d}"
                    if on_label is None or on_label(state, token):
                        features.append(observation_features(observation, raster))
                        targets.append(_target(expert_plan.poses, expert_plan.interval_s))
                        tokens.append(token)
                    else:
                        dropped += 1
            if use_expert and expert_plan is not None:
                trajectory = expert_plan
            else:
                trajectory, error = call_planner(learner, observation)
        state = sim.step(state, trajectory, error)
    return Labelled(features, targets, tokens, failures, sim.history(state), dropped)


def closed_loop_scene(
    log: LogData, frame_of: Mapping[str, int], state: SimState, token: str, scene_filter: SceneFilter | None = None
) -> Scene | None:
    """The NAVSIM scene of ``log`` at ``state``'s frame, as the closed loop left it: the log's agents, lights and
    logged ego future, the scenario's route, and the ego's current state and 2 Hz history replaced by the simulated
    ones (the log's before the simulation started); ``token`` names it. ``None`` when the scene's window (NAVSIM's
    ``SceneFilter``: 4 history and 10 future frames at 0.5 s) leaves the log.

    Args:
        frame_of: the log's frame index of each frame token (``{token: index}``).
    """
    sf = scene_filter or SceneFilter()
    scenario = state.scenario
    current = frame_of[str(scenario.frame_tokens[state.frame])]
    frames = current + SCENE_STEP * np.arange(-(sf.num_history_frames - 1), sf.num_future_frames + 1)
    if frames[0] < 0 or frames[-1] >= log.num_frames:
        return None
    scene = scene_at(log, frames, sf.num_history_frames - 1)
    stride = max(int(round(SCENE_STEP / FRAME_RATE_HZ / scenario.dt)), 1)  # simulated samples per 0.5 s
    ego = scene.ego.states.copy()
    simulated = state.ego_states
    for back in range(sf.num_history_frames):
        if back * stride < len(simulated):
            ego[sf.num_history_frames - 1 - back] = simulated[len(simulated) - 1 - back * stride]
    return replace(
        scene,
        token=token,
        ego=EgoStates(ego, scene.ego.timestamps_us),
        route_roadblock_ids=tuple(scenario.route_roadblock_ids),
    )


def _target(poses: np.ndarray, interval_s: float) -> np.ndarray:
    """The expert's plan as a training target: ``(8, 3)`` float32 at 0.5 s (NAVSIM's sampling)."""
    if poses.shape != (NUM_TRAJECTORY_POSES, 3) or not np.isclose(interval_s, TRAJECTORY_INTERVAL_S):
        raise ValueError(
            f"expert plan of {poses.shape[0]} poses at {interval_s} s; the cache holds "
            f"{NUM_TRAJECTORY_POSES} at {TRAJECTORY_INTERVAL_S} s"
        )
    return poses.astype(np.float32)


@dataclass(frozen=True)
class LogTask:
    log_path: Path
    maps_root: Path
    shard: Path
    ckpt: Path
    raster: dict[str, Any]
    config: DaggerConfig
    metric_cache_dir: Path | None = None
    version: str = "v1"
    suffix: str = ""


def learner_planner(ckpt: Path, seed: int) -> LearnedPlanner:
    """The closed-loop planner of a checkpoint: a generator + discriminator pair as ``planner=reranked`` drives it
    (its defaults), any other learned planner as ``planner=learned``."""
    from planners.checkpoint import learned_planner, load_planner
    from planners.reranked import RerankedPlanner, reranked_planner

    if isinstance(load_planner(str(ckpt)), RerankedPlanner):
        return reranked_planner(str(ckpt), seed=seed)
    return learned_planner(str(ckpt), seed=seed)


def metric_cache_labeller(log: LogData, map_api: MapProtocol, cache_dir: Path, version: str) -> OnLabel:
    """``on_label`` for :func:`collect_scenario` that stores each labelled state's metric cache in ``cache_dir``
    (:func:`closed_loop_scene`, PDM-Closed's reference as for logged scenes); a state whose scene leaves the log
    or whose cache cannot be built (named in a warning) is dropped."""
    from planners.rule_based import PDMClosedPlanner
    from simulation.evaluation.sources import MetricCacheProvider

    provider = MetricCacheProvider(PDMClosedPlanner(), version, str(cache_dir))
    frame_of = {str(t): i for i, t in enumerate(log.frame_tokens)}

    def label(state: SimState, token: str) -> bool:
        scene = closed_loop_scene(log, frame_of, state, token)
        if scene is None:
            return False
        try:
            provider(scene, map_api)
        except Exception as err:  # noqa: BLE001 - the state is dropped, the reason named
            logger.warning("dagger: no metric cache for %s: %s: %s", token, type(err).__name__, err)
            return False
        return True

    return label


def collect_log(task: LogTask) -> tuple[str, int, int, str | None]:
    """One log's shard; returns ``(log name, samples (-1: shard present), expert failures, error or None)``."""
    if task.shard.exists():
        return task.log_path.stem, -1, 0, None
    from planners.pdm_closed import PDMClosedPlanner
    from simulation.datasets.nuplan_db import read_log
    from simulation.datasets.scenes import extract_scenarios
    from simulation.maps.api import MapAPI
    from simulation.maps.fit import check_log_fits_map

    try:
        log = read_log(task.log_path)
        map_api = MapAPI.load(task.maps_root, log.map_location)
        check_log_fits_map(log.log_name, log.map_version, log.ego_states[0, :2], map_api)
        learner = learner_planner(task.ckpt, task.config.seed)
        raster = raster_from_meta(task.raster)
        sim = ClosedLoopSimulator(reactive=task.config.reactive)
        on_label = None
        if task.metric_cache_dir is not None:
            on_label = metric_cache_labeller(log, map_api, task.metric_cache_dir, task.version)
        features: list[PlannerInput[np.ndarray]] = []
        targets: list[np.ndarray] = []
        tokens: list[str] = []
        failures = dropped = 0
        for scenario in extract_scenarios(log):
            # a fresh expert per scenario: PDM-Closed keeps its route and map context between calls
            got = collect_scenario(
                scenario, map_api, learner, PDMClosedPlanner("v1"), task.config, raster, sim, on_label, task.suffix
            )
            features += got.features
            targets += got.targets
            tokens += got.tokens
            failures += got.expert_failures
            dropped += got.dropped
        if dropped:
            logger.warning("dagger: %s: %d states left out (no metric cache: see above, or 5 s past the log's end)",
                           log.log_name, dropped)  # fmt: skip
        if tokens:
            write_npz_atomic(task.shard, stack_samples(features, targets, tokens))
        return log.log_name, len(tokens), failures, None
    except Exception as err:  # one bad log never stops the collection
        return task.log_path.stem, 0, 0, f"{type(err).__name__}: {err}"


def collect(
    ckpt: Path,
    data_root: Path,
    maps_root: Path,
    splits: list[str],
    cache: Path,
    suffix: str,
    config: DaggerConfig,
    workers: int = 1,
    metric_cache_dir: Path | None = None,
    version: str = "v1",
) -> dict[str, int]:
    """Collect the labelled closed-loop states of ``splits`` into ``<cache>/<split>_<suffix>/``; returns the
    samples per output split (shards written earlier are not counted again). With ``metric_cache_dir``, each kept
    state's metric cache of ``version`` is stored there (:func:`metric_cache_labeller`).

    Raises:
        DaggerError: no feature cache at ``cache``, a missing checkpoint or folder, an unknown split, a suffix that
            is not a plain name, metric caches asked with reactive agents or of an unknown version, or every log
            failed.
    """
    try:
        meta = read_meta(cache)
    except ValueError as err:
        raise DaggerError(str(err)) from None
    if not suffix or Path(suffix).name != suffix or suffix.startswith("."):
        raise DaggerError(f"--suffix {suffix!r} must be a plain folder-name part (no '/', not hidden)")
    if not Path(ckpt).is_file():
        raise DaggerError(f"checkpoint {ckpt} does not exist")
    if metric_cache_dir is not None and config.reactive:
        raise DaggerError("--metric-cache labels against the agents' logged future: not with --reactive")
    if version not in ("v1", "v2"):
        raise DaggerError(f"--version must be v1 or v2, got {version!r}")
    try:
        logs = split_logs(data_root, maps_root, splits)
    except CacheBuildError as exc:  # a missing data / maps root, an unknown split
        raise DaggerError(str(exc)) from None
    tasks = [
        LogTask(
            path,
            maps_root,
            cache / f"{split}_{suffix}" / f"shard_{path.stem}.npz",
            ckpt,
            meta["raster"],
            config,
            None if metric_cache_dir is None else Path(metric_cache_dir),
            version,
            suffix,
        )
        for split, path in logs
    ]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(collect_log, tasks))
    else:
        results = [collect_log(t) for t in tasks]
    counts = {f"{split}_{suffix}": 0 for split in splits}
    failed = []
    for task, (name, n, failures, error) in zip(tasks, results, strict=True):
        if error:
            failed.append(name)
            logger.warning("dagger: skipped log %s: %s", name, error)
            continue
        if failures:
            logger.warning("dagger: %s: the expert failed on %d states (left unlabelled)", name, failures)
        counts[task.shard.parent.name] += max(n, 0)
    if tasks and len(failed) == len(tasks):
        raise DaggerError(f"every one of the {len(tasks)} logs failed (first: {failed[0]}); see the warnings above")
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffplan data dagger", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="the learner: a planner's training checkpoint")
    parser.add_argument("--data-root", type=Path, default=os.environ.get("NUPLAN_DATA_ROOT"))
    parser.add_argument("--maps-root", type=Path, default=os.environ.get("NUPLAN_MAPS_ROOT"))
    parser.add_argument("--splits", nargs="+", default=["synth_train"])
    parser.add_argument("--cache", type=Path, required=True, help="the feature cache the learner was trained on")
    parser.add_argument("--suffix", default="dagger", help="output splits are <split>_<suffix>")
    parser.add_argument("--every", type=int, default=5, help="label every this many iterations (0.1 s)")
    parser.add_argument("--beta", type=float, default=0.0, help="probability of executing the expert's plan")
    parser.add_argument("--reactive", action="store_true", help="IDM agents (CLS-R) instead of log replay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--metric-cache",
        type=Path,
        default=None,
        help="also store each state's NAVSIM metric cache here (discriminator training)",
    )
    parser.add_argument("--version", default="v1", help="the metric caches' NAVSIM version (v1 or v2)")
    args = parser.parse_args(argv)
    if args.data_root is None or args.maps_root is None:
        parser.error("give --data-root/--maps-root or set NUPLAN_DATA_ROOT/NUPLAN_MAPS_ROOT")
    try:
        config = DaggerConfig(args.every, args.beta, args.reactive, args.seed)
        counts = collect(
            args.ckpt,
            args.data_root,
            args.maps_root,
            args.splits,
            args.cache,
            args.suffix,
            config,
            args.workers,
            args.metric_cache,
            args.version,
        )
    except (DaggerError, ValueError) as err:
        print(f"diffplan data dagger: {err}", file=sys.stderr)
        return 1
    for split, n in counts.items():
        print(f"{split}: {n} labelled states")
    return 0
