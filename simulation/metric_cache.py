"""Per-scene metric cache for NAVSIM scoring (PDMS v1.1 / EPDMS v2): everything the scorer needs, as arrays.

:func:`build_metric_cache` reads the map and the log once (specs/navsim.md §3.6-3.8, §5.3); scoring then never
touches either. The reference planner (PDM-Closed) and the tracker are passed in, so this module imports no
planner. :func:`build_observation_metric_cache` builds the same record from one planning step's observation, for a
planner that scores its own proposals (PDM-Closed). The inputs (10 Hz agents, history, drivable map, red lights,
the reference trajectory) are read by :mod:`simulation.metric_cache_inputs`.

The progress reference is what NAVSIM caches: PDM-Closed's own 10 Hz trajectory (``reference_trajectory``, from
the planner's ``reference_trajectory(observation)`` when it has one), sampled at 0, 0.1, ... 4 s and tracked with
NAVSIM's tracker (``reference_states``, the same numbers NAVSIM's scorer simulates from the cached trajectory).

Files are ``.npz`` archives (no pickling) written atomically and checked for their format version
(:data:`CACHE_FORMAT_VERSION`, also in the cache folder's ``meta.json``, :func:`write_folder_meta`); a file of
another version raises :class:`MetricCacheVersionError` (the provider rebuilds it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from simulation.geometry import (
    agent_box_corners,
    global_to_local,
    polyline_lengths,
    rear_axle_to_center,
)
from simulation.io import atomic_write, atomic_write_text
from simulation.maps.layers import SemanticMapLayer
from simulation.maps.protocol import MapProtocol
from simulation.maps.route import route_discrete_path, starting_lane_id
from simulation.metric_cache_inputs import (
    DT,
    LOG_INTERVAL_S,
    MAP_RADIUS,
    NUM_STEPS,
    MapContext,
    MetricCacheError,
    ReferencePlanner,
    drivable_map_polygons,
    interpolate_agents,
    interpolate_history,
    red_light_masks,
    reference_poses,
    reference_trajectory,
)
from simulation.polygon_grid import PolygonGrid, PolygonSet
from simulation.protocols import Observation
from simulation.types import AgentIndex, Scene

__all__ = [
    "CACHE_FORMAT_VERSION",
    "stored_format_version",
    "FOLDER_META_NAME",
    "DRIVABLE_LAYERS",
    "DT",
    "LANE_LAYERS",
    "LOG_INTERVAL_S",
    "MAP_RADIUS",
    "NUM_STEPS",
    "OBSERVATION_STEPS",
    "MapContext",
    "MetricCache",
    "MetricCacheError",
    "MetricCacheVersionError",
    "ReferencePlanner",
    "Simulator",
    "build_metric_cache",
    "build_observation_metric_cache",
    "drivable_map_polygons",
    "interpolate_agents",
    "interpolate_history",
    "read_folder_meta",
    "red_light_masks",
    "reference_poses",
    "reference_trajectory",
    "write_folder_meta",
]

logger = logging.getLogger(__name__)

#: Format of the cache files. 4: the centre line's lanes (and PDM-Closed's) follow NAVSIM's lane search from the
#: starting lane (3: the project's chain search, which could switch to a sibling lane). 3: the centre line (and
#: PDM-Closed's reference) start on NAVSIM's starting lane and keep the lane joints (2: from the route lane nearest the
#: rear axle, joints merged). 2: the reference is PDM-Closed's 10 Hz trajectory (stored), tracked with NAVSIM's jerk
#: regulariser (1: its 0.5 s plan, nuPlan's regulariser).
CACHE_FORMAT_VERSION = 4
#: The cache folder's description (format version, scorer version), beside the ``<log>/<token>.npz`` files.
FOLDER_META_NAME = "meta.json"
#: Observation length (10 Hz samples incl. t = 0): v1 keeps 5 s so that TTC can look 0.9 s past 4 s; v2 keeps 4 s.
OBSERVATION_STEPS = {"v1": 51, "v2": 41}
#: Layers whose polygons make up the drivable area (lanes are tested separately).
DRIVABLE_LAYERS = (
    SemanticMapLayer.ROADBLOCK,
    SemanticMapLayer.INTERSECTION,
    SemanticMapLayer.DRIVABLE_AREA,
    SemanticMapLayer.CARPARK_AREA,
)
LANE_LAYERS = (SemanticMapLayer.LANE, SemanticMapLayer.LANE_CONNECTOR)

#: ``simulate(current_state (11,), poses_local (B, P, 3), interval_s) -> states (B, 41, 11)``.
Simulator = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


class MetricCacheVersionError(MetricCacheError):
    """A metric cache file of another format version (``found``): rebuild it."""

    def __init__(self, message: str, found: Any) -> None:
        super().__init__(message)
        self.found = found


@dataclass(frozen=True)
class MetricCache:
    """Everything NAVSIM's scorer needs for one scene (all coordinates global, ego poses at the rear axle).

    Attributes:
        token: scene token. log_name / map_name: where it comes from.
        version: ``"v1"`` (PDMS, 5 s observation) or ``"v2"`` (EPDMS, 4 s observation, red lights).
        current_state: ``(11,)`` ego state at t = 0 (:class:`StateIndex`).
        agent_boxes: ``(T, N, 7)`` agent boxes at 10 Hz (:class:`AgentIndex`), ``T`` = 51 (v1) or 41 (v2).
        agent_valid: ``(T, N)`` bool, the track exists at that step.
        agent_types: ``(N,)`` int64 ``TrackedObjectType``. agent_track_ids: ``(N,)`` str.
        map_grid: drivable-map polygons (roadblocks, their lanes, connector lanes, intersections, carparks
            within 100 m) with a grid index for point-in-polygon tests.
        map_ids: ``(M,)`` str map ids. map_layers: ``(M,)`` int64 :class:`SemanticMapLayer` of each polygon.
        route_lane_ids: ``(L,)`` str ids of the lanes / lane connectors on the route.
        centerline: ``(C, 2)`` route centre line (PDM-Closed's path). centerline_s: ``(C,)`` its arc length.
        red_connector_ids: ``(R,)`` str on-route lane connectors red at some step.
        red_mask: ``(41, R)`` bool, connector ``r`` is red at step ``t`` (empty for v1).
        red_polygons: the ``R`` connector polygons.
        reference_states: ``(41, 11)`` simulated states of the PDM-Closed reference (its trajectory sampled at
            0, 0.1, ... 4 s, tracked with NAVSIM's tracker).
        human_trajectory: ``(8, 3)`` logged future poses in the current rear-axle frame (0.5 s steps).
        human_states: ``(41, 11)`` simulated states of the human plan.
        history_states: ``(H, 11)`` logged past ego states at 0.1 s before t = 0 (EPDMS history comfort).
        reference_trajectory: ``(P, 3)`` the reference's poses in the current rear-axle frame at
            ``reference_interval_s``, 2 ``interval_s``, ... (PDM-Closed's 10 Hz trajectory, what NAVSIM caches);
            empty when the cache holds only the simulated states (a planner's own step cache).
        reference_interval_s: time between the poses of ``reference_trajectory`` (s).
    """

    token: str
    log_name: str
    map_name: str
    version: str
    current_state: np.ndarray
    agent_boxes: np.ndarray
    agent_valid: np.ndarray
    agent_types: np.ndarray
    agent_track_ids: np.ndarray
    map_grid: PolygonGrid
    map_ids: np.ndarray
    map_layers: np.ndarray
    route_lane_ids: np.ndarray
    centerline: np.ndarray
    centerline_s: np.ndarray
    red_connector_ids: np.ndarray
    red_mask: np.ndarray
    red_polygons: PolygonSet
    reference_states: np.ndarray
    human_trajectory: np.ndarray
    human_states: np.ndarray
    history_states: np.ndarray
    reference_trajectory: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    reference_interval_s: float = DT

    @cached_property
    def map_categories(self) -> np.ndarray:
        """``(M,)`` int64 bit mask per map polygon: 1 drivable, 2 lane, 4 on-route lane, 8 intersection."""
        layers = self.map_layers
        cat = np.isin(layers, [int(x) for x in DRIVABLE_LAYERS]).astype(np.int64)
        lane = np.isin(layers, [int(x) for x in LANE_LAYERS])
        cat |= 2 * lane
        cat |= 4 * (lane & np.isin(self.map_ids, self.route_lane_ids))
        cat |= 8 * (layers == SemanticMapLayer.INTERSECTION)
        return cat

    @cached_property
    def agent_corners(self) -> np.ndarray:
        """``(T, N, 4, 2)`` agent box corners (front-left, rear-left, rear-right, front-right)."""
        return np.ascontiguousarray(agent_box_corners(self.agent_boxes))

    @cached_property
    def agent_extent(self) -> tuple[np.ndarray, np.ndarray]:
        """``(N,)`` largest half diagonal and ``(N, 4)`` bounds (min x, min y, max x, max y) of each track's centres
        over its valid steps (empty bounds ``(inf, inf, -inf, -inf)`` for a track that never exists)."""
        valid = self.agent_valid[..., None]
        centers = self.agent_boxes[..., :2]
        half = np.hypot(self.agent_boxes[..., AgentIndex.LENGTH], self.agent_boxes[..., AgentIndex.WIDTH]) / 2.0
        radius = np.where(self.agent_valid, half, 0.0).max(0, initial=0.0)
        bounds = np.concatenate([np.where(valid, centers, np.inf).min(0, initial=np.inf),
                                 np.where(valid, centers, -np.inf).max(0, initial=-np.inf)], -1)  # fmt: skip
        return radius, bounds

    def polygons(self, layer: SemanticMapLayer) -> dict[str, Any]:
        """Shapely polygons of one map layer by id (rebuilt from the stored rings)."""
        geoms = self.map_grid.polygons.geometries()
        return {str(i): g for i, g, lay in zip(self.map_ids, geoms, self.map_layers, strict=True) if lay == layer}

    def validate(self) -> None:
        """Raise :class:`MetricCacheError` when shapes disagree."""
        t = OBSERVATION_STEPS.get(self.version)
        n = self.agent_types.shape[0]
        checks = [
            (t is not None, f"unknown version {self.version!r}"),
            (self.current_state.shape == (11,), "current_state must be (11,)"),
            (self.agent_boxes.shape == (t, n, 7), f"agent_boxes {self.agent_boxes.shape} != {(t, n, 7)}"),
            (self.agent_valid.shape == (t, n), "agent_valid shape"),
            (self.agent_track_ids.shape == (n,), "agent_track_ids shape"),
            (self.map_ids.shape == self.map_layers.shape == (self.map_grid.polygons.num_polygons,), "map ids"),
            (self.centerline.ndim == 2 and len(self.centerline) >= 2, "centerline needs >= 2 points"),
            (self.red_mask.shape[1:] == self.red_connector_ids.shape, "red_mask shape"),
            (self.reference_states.shape == (NUM_STEPS, 11), "reference_states must be (41, 11)"),
            (self.human_states.shape == (NUM_STEPS, 11), "human_states must be (41, 11)"),
            (self.reference_trajectory.ndim == 2 and self.reference_trajectory.shape[1] == 3, "reference_trajectory"),
            (self.reference_interval_s > 0.0, "reference_interval_s must be positive"),
        ]
        for ok, msg in checks:
            if not ok:
                raise MetricCacheError(f"metric cache {self.token}: {msg}")

    # ------------------------------------------------------------------------------------------- files

    def save(self, path: str | Path) -> Path:
        """Write the cache to ``path`` (``.npz``) atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = _to_arrays(self)
        with atomic_write(path) as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        return path

    @staticmethod
    def load(path: str | Path) -> MetricCache:
        """Read a cache written by :meth:`save`; raise :class:`MetricCacheError` on any problem."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise MetricCacheError(f"{path}: cannot read metric cache ({err})") from None
        try:
            meta = json.loads(str(arrays.pop("meta")))
        except KeyError:
            raise MetricCacheError(f"{path}: not a metric cache (no meta entry)") from None
        found = meta.get("format_version")
        if found != CACHE_FORMAT_VERSION:
            raise MetricCacheVersionError(f"{path}: format version {found} != {CACHE_FORMAT_VERSION}", found)
        try:
            cache = _from_arrays(meta, arrays)
        except KeyError as err:
            raise MetricCacheError(f"{path}: missing entry {err}") from None
        cache.validate()
        return cache


_STR_FIELDS = ("token", "log_name", "map_name", "version")
_META_FIELDS = (*_STR_FIELDS, "reference_interval_s")
_GRID_FIELDS = ("origin", "shape", "cell_offsets", "cell_polys", "cell_full")
_SET_FIELDS = ("coords", "ring_offsets", "poly_rings", "bounds")


def _to_arrays(cache: MetricCache) -> dict[str, np.ndarray]:
    meta: dict[str, Any] = {k: getattr(cache, k) for k in _META_FIELDS}
    meta |= {"format_version": CACHE_FORMAT_VERSION, "cell_size": cache.map_grid.cell_size}
    out: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
    for f in fields(cache):
        value = getattr(cache, f.name)
        if isinstance(value, np.ndarray):
            out[f.name] = value.astype(str) if value.dtype == object else value
    for k in _GRID_FIELDS:
        out[f"map_grid.{k}"] = getattr(cache.map_grid, k)
    for k in _SET_FIELDS:
        out[f"map_grid.polygons.{k}"] = getattr(cache.map_grid.polygons, k)
        out[f"red_polygons.{k}"] = getattr(cache.red_polygons, k)
    return out


def _from_arrays(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> MetricCache:
    grid_set = PolygonSet(**{k: arrays[f"map_grid.polygons.{k}"] for k in _SET_FIELDS})
    grid = PolygonGrid(
        polygons=grid_set, cell_size=float(meta["cell_size"]), **{k: arrays[f"map_grid.{k}"] for k in _GRID_FIELDS}
    )
    red = PolygonSet(**{k: arrays[f"red_polygons.{k}"] for k in _SET_FIELDS})
    kwargs: dict[str, Any] = {k: meta[k] for k in _META_FIELDS}
    for f in fields(MetricCache):
        if f.name not in kwargs and f.name not in ("map_grid", "red_polygons"):
            kwargs[f.name] = arrays[f.name]
    return MetricCache(map_grid=grid, red_polygons=red, **kwargs)


def stored_format_version(path: str | Path) -> int | None:
    """The format version a cache file was written with (``None`` when the file cannot be read as a cache); reads
    only its ``meta`` entry."""
    try:
        with np.load(path, allow_pickle=False) as data:
            found = json.loads(str(data["meta"])).get("format_version")
    except (OSError, ValueError, KeyError):
        return None
    return found if isinstance(found, int) else None


def write_folder_meta(cache_dir: str | Path, version: str) -> Path:
    """Write ``<cache_dir>/meta.json``: this code's :data:`CACHE_FORMAT_VERSION` and the scorer ``version``."""
    meta = {"kind": "metric_cache", "format_version": CACHE_FORMAT_VERSION, "version": version}
    return atomic_write_text(Path(cache_dir) / FOLDER_META_NAME, json.dumps(meta, indent=2, sort_keys=True))


def read_folder_meta(cache_dir: str | Path) -> dict[str, Any] | None:
    """The folder's ``meta.json`` (``None`` when absent: a folder written before it was versioned, or empty)."""
    path = Path(cache_dir) / FOLDER_META_NAME
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MetricCacheError(f"{path}: unreadable metric cache folder meta ({err})") from None
    return meta if isinstance(meta, dict) else None


# ----------------------------------------------------------------------------------------------- building


def _default_simulator() -> Simulator:
    try:
        from simulation.kinematics import simulate_proposals
    except ImportError as err:  # the tracker module is required to build caches
        raise MetricCacheError(f"building a metric cache needs simulation.kinematics ({err})") from None
    return simulate_proposals


def _simulated_plans(
    scene: Scene, map_api: MapProtocol, reference_planner: ReferencePlanner | None, simulate: Simulator
) -> dict[str, Any]:
    """The plan fields of a :class:`MetricCache`: the human plan ``(8, 3)`` (local, 0.5 s) and its simulated
    states ``(41, 11)``, the reference trajectory ``(P, 3)``, its interval and its simulated states ``(41, 11)``
    (the human plan is the reference without a reference planner)."""
    current = np.asarray(scene.current_ego, dtype=np.float64)
    ci = scene.current_index
    human = global_to_local(scene.ego.poses[ci + 1 : ci + 9], current[:3])
    human_states = np.asarray(simulate(current, human[None], LOG_INTERVAL_S)[0], dtype=np.float64)
    out = {"human_trajectory": human, "human_states": human_states}
    if reference_planner is None:
        return out | {"reference_trajectory": human, "reference_interval_s": LOG_INTERVAL_S,
                      "reference_states": human_states}  # fmt: skip
    ref = reference_trajectory(reference_planner, scene, map_api)
    # a trajectory's global ``start_pose``: PDM-Closed's starts at the ego projected on its path (the log's, now)
    start = getattr(ref, "start_pose", None)
    extra = {} if start is None else {"start_poses": global_to_local(np.asarray(start, np.float64)[None], current[:3])}
    poses = np.asarray(ref.poses, dtype=np.float64).reshape(-1, 3)
    ref_states = np.asarray(simulate(current, poses[None], ref.interval_s, **extra)[0], dtype=np.float64)
    return out | {"reference_trajectory": poses, "reference_interval_s": ref.interval_s,
                  "reference_states": ref_states}  # fmt: skip


def _check_scene(scene: Scene, version: str) -> None:
    if version not in OBSERVATION_STEPS:
        raise MetricCacheError(f"{scene.token}: unknown metric cache version {version!r}")
    if scene.num_future_frames < 8:
        raise MetricCacheError(f"{scene.token}: needs 8 future frames, has {scene.num_future_frames}")


def _map_fields(
    map_api: MapProtocol,
    map_context: MapContext,
    route_lanes: set[str],
    centerline: np.ndarray,
    red_ids: np.ndarray,
    red_mask: np.ndarray,
) -> dict[str, Any]:
    """The map, route and red-light fields of a :class:`MetricCache` (red polygons read from ``map_api``)."""
    return {
        "map_grid": map_context.grid,
        "map_ids": map_context.ids,
        "map_layers": map_context.layers,
        "route_lane_ids": np.array(sorted(route_lanes), dtype=str),
        "centerline": centerline,
        "centerline_s": polyline_lengths(centerline),
        "red_connector_ids": red_ids,
        "red_mask": red_mask,
        "red_polygons": PolygonSet.from_geometries([map_api.lane_connector_polygon(i) for i in red_ids]),
    }


def _scene_red_lights(scene: Scene, route_lanes: set[str], version: str) -> tuple[np.ndarray, np.ndarray]:
    """On-route red connectors and their ``(41, R)`` mask for v2; none for v1."""
    if version == "v2":
        return red_light_masks(scene, route_lanes)
    return np.zeros(0, dtype=str), np.zeros((NUM_STEPS, 0), dtype=bool)


def build_metric_cache(
    scene: Scene,
    map_api: MapProtocol,
    reference_planner: ReferencePlanner | None = None,
    version: str = "v1",
    simulate: Simulator | None = None,
) -> MetricCache:
    """Precompute the metric cache of ``scene``.

    Args:
        scene: a scene with its current frame and at least 8 future frames (10 for v1's 5 s observation).
        map_api: the scene's :class:`~simulation.maps.api.MapAPI`.
        reference_planner: PDM-Closed (or another reference): a ``Planner``, asked for its
            ``reference_trajectory(observation)`` (10 Hz) when it has one, else its ``plan``; or ``planner(scene,
            map_api)`` returning local poses; ``None`` uses the human plan as the reference for progress normalisation.
        version: ``"v1"`` (PDMS) or ``"v2"`` (EPDMS).
        simulate: tracker + bicycle model; defaults to :func:`simulation.kinematics.simulate_proposals`
            (NAVSIM's tracker).
    """
    _check_scene(scene, version)
    ci = scene.current_index
    simulate = simulate or _default_simulator()
    current = np.asarray(scene.current_ego, dtype=np.float64)
    pose = current[:3]
    map_context = MapContext.build(map_api, rear_axle_to_center(pose)[:2])
    route_ids = map_api.route_roadblock_ids(scene.route_roadblock_ids)
    route_lanes = map_api.route_lane_ids(route_ids)
    # PDM-Closed's centre line (NAVSIM stores its planner's): from NAVSIM's starting lane, lane joints kept twice
    centerline = route_discrete_path(map_api, route_ids, pose, starting_lane_id(map_api, route_ids, pose))[:, :2]
    a = scene.agents
    boxes, valid = interpolate_agents(a.boxes[ci:], a.valid[ci:], a.types, OBSERVATION_STEPS[version])
    red_ids, red_mask = _scene_red_lights(scene, route_lanes, version)
    cache = MetricCache(
        token=scene.token,
        log_name=scene.log_name,
        map_name=scene.map_name,
        version=version,
        current_state=current,
        agent_boxes=boxes,
        agent_valid=valid,
        agent_types=np.asarray(a.types, dtype=np.int64),
        agent_track_ids=np.asarray(a.track_ids).astype(str),
        **_map_fields(map_api, map_context, route_lanes, centerline, red_ids, red_mask),
        history_states=interpolate_history(scene.ego.states[: ci + 1], scene.timestamps_us[: ci + 1]),
        **_simulated_plans(scene, map_api, reference_planner, simulate),
    )
    cache.validate()
    return cache


def build_observation_metric_cache(
    observation: Observation,
    centerline: np.ndarray,
    route_lanes: set[str],
    agent_boxes: np.ndarray,
    red_connector_ids: Sequence[str],
    map_context: MapContext,
    version: str = "v1",
) -> MetricCache:
    """The metric cache of one planning step seen from an observation, with no logged future (a planner scoring
    its own proposals: PDM-Closed).

    Args:
        observation: the planner's observation (its current ego state, the agents valid at the current frame).
        centerline: ``(C, 2)`` the route centre line in use. route_lanes: ids of the on-route lanes.
        agent_boxes: ``(OBSERVATION_STEPS[version], M, 7)`` the planner's forecast of the ``M`` agents valid at
            the current frame (e.g. constant velocity).
        red_connector_ids: on-route lane connectors red now; held red over the whole horizon.
        map_context: the drivable map around the ego (at least :data:`MAP_RADIUS` around it).
        version: ``"v1"`` or ``"v2"``.

    The reference and human states are the current state held (placeholders: such a planner normalises progress
    over its own proposals); there is no history. Not validated (a planner's hot path).
    """
    if observation.map_api is None:
        raise MetricCacheError(f"{observation.map_name}: a metric cache needs the map (observation.map_api is None)")
    state = np.asarray(observation.current_state, dtype=np.float64)
    agents = observation.agents
    valid_now = agents.valid[-1] if agents.num_agents else np.zeros(0, bool)
    red_ids = np.array(red_connector_ids, dtype=str)
    placeholder = np.repeat(state[None], NUM_STEPS, axis=0)
    red_mask = np.ones((NUM_STEPS, len(red_ids)), dtype=bool)
    return MetricCache(
        token="pdm_closed",
        log_name="",
        map_name=observation.map_name,
        version=version,
        current_state=state,
        agent_boxes=agent_boxes,
        agent_valid=np.ones(agent_boxes.shape[:2], dtype=bool),
        agent_types=np.asarray(agents.types, dtype=np.int64)[valid_now],
        agent_track_ids=np.asarray(agents.track_ids).astype(str)[valid_now],
        **_map_fields(observation.map_api, map_context, route_lanes, centerline, red_ids, red_mask),
        reference_states=placeholder,
        human_trajectory=np.zeros((8, 3)),
        human_states=placeholder,
        history_states=np.zeros((0, 11)),
    )
