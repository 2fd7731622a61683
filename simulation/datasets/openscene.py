"""NAVSIM / OpenScene log pickles (specs/navsim.md §4.2): read them, cut them into :class:`Scene` s, and write
them from a :class:`LogData`.

One pickle per log holds the list of its 2 Hz frames, each a dict. The keys diffplan reads are those NAVSIM
reads: ``token``, ``timestamp`` (µs), ``log_name``, ``scene_token``, ``map_location``, ``roadblock_ids``,
``traffic_lights`` (``[(lane_connector_id, is_red)]``), ``ego2global_translation`` (x, y, z of the rear axle),
``ego2global_rotation`` (quaternion w, x, y, z), ``ego_dynamic_state`` (vx, vy, ax, ay in the ego frame),
``driving_command`` (one-hot: left, straight, right, unknown) and ``anns`` (absent for hidden test logs):

* ``gt_boxes`` ``(N, 7)``: x, y, z, length, width, height, yaw (:class:`BoxIndex`), **in the ego rear-axle
  frame**; to global: rotate by the ego heading and add the rear-axle position.
* ``gt_velocity_3d`` ``(N, 3)``: velocities rotated into the ego frame (OpenScene also applies the inverse
  lidar-to-ego rotation, the identity in the files written here); NAVSIM reads vx, vy as ego-frame.
* ``gt_names`` (category names, :data:`~simulation.types.CATEGORY_TO_TYPE`), ``instance_tokens`` (box
  tokens) and ``track_tokens``, all of length ``N``.

A frame's yaw rate is ``can_bus[15]`` when it has OpenScene's 18-entry ``can_bus`` (x, y, z, qw, qx, qy, qz,
ax, ay, az, vx, vy, vz, wx, wy, wz, 0, 0), else 0; a :class:`Scene`'s ego states carry yaw rate 0, as NAVSIM's
scenario API builds them (:func:`~simulation.datasets.scenes.scenario_ego_states`). The pickles carry no mission
goal: scenes get ``goal=None``.
Traffic lights are red or green only (``is_red``); connectors not reported at a frame are UNKNOWN.

Writing (:func:`write_openscene_log`, from :mod:`simulation.datasets.openscene_writer`) produces the same layout
from a :class:`~simulation.datasets.log_data.LogData` (every 10th 20 Hz frame).

Pickles are loaded with an unpickler that only builds numpy arrays and plain Python containers, so a file
naming any other class is refused rather than run.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulation.datasets.nuplan_schema import quaternion_to_yaw
from simulation.datasets.openscene_writer import (
    CAN_BUS_YAW_RATE,
    BoxIndex,
    openscene_frames,
    write_openscene_frames,
    write_openscene_log,
)
from simulation.datasets.scenes import SceneFilter, scenario_ego_states
from simulation.datasets.splits import LoadReport
from simulation.geometry import normalize_angle, rotate_vectors, transform_points_to_global
from simulation.types import (
    AGENT_DIM,
    CATEGORY_TO_TYPE,
    AgentIndex,
    Agents,
    DrivingCommand,
    EgoStates,
    Scene,
    StateIndex,
    TrafficLights,
    TrafficLightStatus,
)

logger = logging.getLogger(__name__)

#: Frame keys every frame must have.
FRAME_KEYS = (
    "token",
    "timestamp",
    "log_name",
    "scene_token",
    "map_location",
    "roadblock_ids",
    "traffic_lights",
    "ego2global_translation",
    "ego2global_rotation",
    "ego_dynamic_state",
    "driving_command",
)
#: ``anns`` keys needed when a frame has annotations.
ANN_KEYS = ("gt_boxes", "gt_names", "gt_velocity_3d", "track_tokens")


class OpenSceneError(ValueError):
    """An OpenScene log pickle cannot be used; the message starts with the file."""

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
_ALLOWED = frozenset(
    [(m, n) for m in _NUMPY_CORE for n in ("_reconstruct", "scalar", "_frombuffer")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict")]
    + [("builtins", n) for n in ("set", "frozenset", "complex", "bytearray", "slice")]
)


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a class or function outside the allowed set."""


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays, numpy scalars and builtin containers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType"))
        if not allowed:
            raise _RefusedGlobal(f"refers to {module}.{name}, which is not allowed in a log pickle")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # pickles written by numpy 1
            module = "numpy._core." + module.split(".", 2)[2]
        return super().find_class(module, name)


def _load_pickle(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OpenSceneError(path, f"cannot read the file ({exc.strerror or exc})") from None
    try:
        return _ArrayUnpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as exc:
        raise OpenSceneError(path, f"not a usable pickle: it {exc}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
    ) as exc:
        raise OpenSceneError(path, f"not a pickle or truncated ({type(exc).__name__}: {exc})") from None


def _array(value: Any, path: Path, what: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``value`` as a float64 array of ``shape`` (``None``: any length), else :class:`OpenSceneError`."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise OpenSceneError(path, f"{what} is not numeric") from None
    if arr.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, arr.shape, strict=True)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise OpenSceneError(path, f"{what} has shape {arr.shape}, expected {want}")
    return arr


def _check_anns(anns: Any, k: int, path: Path) -> None:
    if not isinstance(anns, dict):
        raise OpenSceneError(path, f"frame {k}: 'anns' is a {type(anns).__name__}, expected a dict")
    missing = [key for key in ANN_KEYS if key not in anns]
    if missing:
        raise OpenSceneError(path, f"frame {k}: 'anns' has no key {missing[0]!r}")
    boxes = _array(anns["gt_boxes"], path, f"frame {k}: anns['gt_boxes']", (None, len(BoxIndex)))
    n = len(boxes)
    _array(anns["gt_velocity_3d"], path, f"frame {k}: anns['gt_velocity_3d']", (n, 3))
    for key in ("gt_names", "track_tokens"):
        if len(anns[key]) != n:
            raise OpenSceneError(path, f"frame {k}: anns[{key!r}] has {len(anns[key])} entries for {n} boxes")
    if not np.isfinite(boxes[:, [BoxIndex.X, BoxIndex.Y, BoxIndex.HEADING, BoxIndex.LENGTH, BoxIndex.WIDTH]]).all():
        raise OpenSceneError(path, f"frame {k}: anns['gt_boxes'] contains NaN or inf")
    unknown = sorted({str(name) for name in anns["gt_names"]} - set(CATEGORY_TO_TYPE))
    if unknown:
        raise OpenSceneError(path, f"frame {k}: unknown gt_names {unknown}; known: {sorted(CATEGORY_TO_TYPE)}")


def _check_frame(frame: Any, k: int, path: Path) -> None:
    if not isinstance(frame, dict):
        raise OpenSceneError(path, f"frame {k} is a {type(frame).__name__}, expected a dict")
    missing = [key for key in FRAME_KEYS if key not in frame]
    if missing:
        raise OpenSceneError(path, f"frame {k} has no key {missing[0]!r}")
    translation = _array(frame["ego2global_translation"], path, f"frame {k}: ego2global_translation", (3,))
    rotation = _array(frame["ego2global_rotation"], path, f"frame {k}: ego2global_rotation", (4,))
    dynamic = _array(frame["ego_dynamic_state"], path, f"frame {k}: ego_dynamic_state", (4,))
    if not (np.isfinite(translation).all() and np.isfinite(rotation).all() and np.isfinite(dynamic).all()):
        raise OpenSceneError(path, f"frame {k}: NaN or inf in the ego pose or dynamic state")
    if np.linalg.norm(rotation) < 1e-6:
        raise OpenSceneError(path, f"frame {k}: ego2global_rotation is not a rotation (zero quaternion)")
    _array(frame["driving_command"], path, f"frame {k}: driving_command", (len(DrivingCommand),))
    if not isinstance(frame["timestamp"], int | np.integer):
        raise OpenSceneError(path, f"frame {k}: timestamp {frame['timestamp']!r} is not an integer (µs)")
    if not isinstance(frame["roadblock_ids"], list | tuple | np.ndarray):
        raise OpenSceneError(path, f"frame {k}: roadblock_ids is a {type(frame['roadblock_ids']).__name__}")
    lights = frame["traffic_lights"]
    if not isinstance(lights, list | tuple) or any(not isinstance(tl, list | tuple) or len(tl) != 2 for tl in lights):
        raise OpenSceneError(path, f"frame {k}: traffic_lights must be a list of (lane_connector_id, is_red) pairs")
    if frame.get("anns") is not None:
        _check_anns(frame["anns"], k, path)


def read_openscene_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The frames of one OpenScene log pickle, checked (see the module docstring for the layout).

    Raises:
        OpenSceneError: unreadable file, not a pickle (or one naming classes other than numpy's), not a list
            of frame dicts, a missing key, arrays of the wrong shape, NaN poses, unknown categories, frames of
            another log or out of time order.
    """
    path = Path(path)
    frames = _load_pickle(path)
    if not isinstance(frames, list):
        raise OpenSceneError(path, f"top level is a {type(frames).__name__}, expected a list of frame dicts")
    for k, frame in enumerate(frames):
        _check_frame(frame, k, path)
    if frames:
        names = {str(f["log_name"]) for f in frames}
        if len(names) > 1:
            raise OpenSceneError(path, f"frames of {len(names)} logs in one file: {sorted(names)[:3]}")
        t = np.array([int(f["timestamp"]) for f in frames], dtype=np.int64)
        bad = np.flatnonzero(np.diff(t) <= 0)
        if len(bad):
            raise OpenSceneError(path, f"frame {bad[0] + 1}: timestamp {t[bad[0] + 1]} not after {t[bad[0]]}")
    return frames


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Log:
    """A log's frames as arrays; boxes and lights are rows over all frames, ``*_start`` ``(F + 1,)`` offsets."""

    log_name: str
    map_name: str
    tokens: np.ndarray
    timestamps_us: np.ndarray
    ego: np.ndarray
    routes: list[tuple[str, ...]]
    commands: np.ndarray
    box_start: np.ndarray
    boxes: np.ndarray
    box_track: np.ndarray  # index into track_ids
    track_ids: np.ndarray
    track_types: np.ndarray
    tl_start: np.ndarray
    tl_id: np.ndarray  # index into tl_ids
    tl_red: np.ndarray
    tl_ids: np.ndarray


def _ego_state(frame: dict[str, Any]) -> np.ndarray:
    state = np.zeros(len(StateIndex))
    state[StateIndex.X : StateIndex.Y + 1] = np.asarray(frame["ego2global_translation"], dtype=np.float64)[:2]
    state[StateIndex.HEADING] = quaternion_to_yaw(np.asarray(frame["ego2global_rotation"], dtype=np.float64))
    state[StateIndex.VX : StateIndex.AY + 1] = np.asarray(frame["ego_dynamic_state"], dtype=np.float64)
    can_bus = np.asarray(frame.get("can_bus", ()), dtype=np.float64).reshape(-1)
    if len(can_bus) > CAN_BUS_YAW_RATE and np.isfinite(can_bus[CAN_BUS_YAW_RATE]):
        state[StateIndex.YAW_RATE] = can_bus[CAN_BUS_YAW_RATE]
    return state


def _global_boxes(anns: dict[str, Any] | None, ego: np.ndarray) -> tuple[np.ndarray, list[str], list[str]]:
    """``(N, 7)`` global boxes by :class:`AgentIndex`, track tokens and category names of one frame."""
    if anns is None or len(anns["gt_boxes"]) == 0:
        return np.zeros((0, AGENT_DIM)), [], []
    local = np.asarray(anns["gt_boxes"], dtype=np.float64).reshape(-1, len(BoxIndex))
    velocity = np.asarray(anns["gt_velocity_3d"], dtype=np.float64).reshape(-1, 3)
    pose = ego[: StateIndex.HEADING + 1]
    boxes = np.zeros((len(local), AGENT_DIM))
    boxes[:, [AgentIndex.X, AgentIndex.Y]] = transform_points_to_global(local[:, [BoxIndex.X, BoxIndex.Y]], pose)
    boxes[:, AgentIndex.HEADING] = normalize_angle(local[:, BoxIndex.HEADING] + pose[2])
    boxes[:, [AgentIndex.VX, AgentIndex.VY]] = rotate_vectors(velocity[:, :2], pose[2])
    boxes[:, AgentIndex.LENGTH] = local[:, BoxIndex.LENGTH]
    boxes[:, AgentIndex.WIDTH] = local[:, BoxIndex.WIDTH]
    return boxes, [str(t) for t in anns["track_tokens"]], [str(n) for n in anns["gt_names"]]


def _command(value: Any) -> int:
    one_hot = np.asarray(value, dtype=np.float64)
    return int(np.argmax(one_hot)) if one_hot.any() else int(DrivingCommand.UNKNOWN)


def _light_order(ids: set[str]) -> list[str]:
    return sorted(ids, key=int) if all(i.lstrip("-").isdigit() for i in ids) else sorted(ids)


def _log_arrays(frames: Sequence[dict[str, Any]]) -> _Log:
    ego = np.array([_ego_state(f) for f in frames]).reshape(len(frames), len(StateIndex))
    boxes, tracks, names, counts, lights = [], [], [], [], []
    for f, state in zip(frames, ego, strict=True):
        b, t, n = _global_boxes(f.get("anns"), state)
        boxes.append(b)
        tracks += t
        names += n
        counts.append(len(b))
        lights.append([(str(lc), bool(red)) for lc, red in f["traffic_lights"]])
    track_ids, first, box_track = np.unique(np.array(tracks, dtype=str), return_index=True, return_inverse=True)
    tl_ids = np.array(_light_order({lc for row in lights for lc, _ in row}), dtype=str)
    tl_index = {lc: i for i, lc in enumerate(tl_ids.tolist())}
    return _Log(
        log_name=str(frames[0]["log_name"]),
        map_name=str(frames[0]["map_location"]),
        tokens=np.array([str(f["token"]) for f in frames], dtype=str),
        timestamps_us=np.array([int(f["timestamp"]) for f in frames], dtype=np.int64),
        ego=ego,
        routes=[tuple(str(r) for r in f["roadblock_ids"]) for f in frames],
        commands=np.array([_command(f["driving_command"]) for f in frames], dtype=np.int64),
        box_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, AGENT_DIM)),
        box_track=box_track.reshape(-1).astype(np.int64),
        track_ids=track_ids,
        track_types=np.array([int(CATEGORY_TO_TYPE[names[i]]) for i in first], dtype=np.int64),
        tl_start=np.concatenate([[0], np.cumsum([len(row) for row in lights])]).astype(np.int64),
        tl_id=np.array([tl_index[lc] for row in lights for lc, _ in row], dtype=np.int64),
        tl_red=np.array([red for row in lights for _, red in row], dtype=bool),
        tl_ids=tl_ids,
    )


def _window_agents(log: _Log, start: int, n: int) -> Agents:
    rows = np.arange(log.box_start[start], log.box_start[start + n])
    if len(rows) == 0:
        return Agents.empty(n)
    frame = np.searchsorted(log.box_start, rows, side="right") - 1 - start
    tracks, col = np.unique(log.box_track[rows], return_inverse=True)
    boxes = np.zeros((n, len(tracks), AGENT_DIM))
    valid = np.zeros((n, len(tracks)), dtype=bool)
    boxes[frame, col] = log.boxes[rows]
    valid[frame, col] = True
    return Agents(boxes=boxes, types=log.track_types[tracks], track_ids=log.track_ids[tracks], valid=valid)


def _window_lights(log: _Log, start: int, n: int) -> TrafficLights:
    rows = np.arange(log.tl_start[start], log.tl_start[start + n])
    if len(rows) == 0:
        return TrafficLights.empty(n)
    frame = np.searchsorted(log.tl_start, rows, side="right") - 1 - start
    ids, col = np.unique(log.tl_id[rows], return_inverse=True)
    status = np.full((n, len(ids)), TrafficLightStatus.UNKNOWN, dtype=np.int8)
    status[frame, col] = np.where(log.tl_red[rows], TrafficLightStatus.RED, TrafficLightStatus.GREEN)
    return TrafficLights(lane_connector_ids=log.tl_ids[ids], status=status)


def _scene(log: _Log, start: int, sf: SceneFilter) -> Scene:
    n, current = sf.num_frames, start + sf.num_history_frames - 1
    window = slice(start, start + n)
    return Scene(
        log_name=log.log_name,
        token=str(log.tokens[current]),
        map_name=log.map_name,
        frame_tokens=log.tokens[window].copy(),
        timestamps_us=log.timestamps_us[window].copy(),
        ego=EgoStates(scenario_ego_states(log.ego[window]), log.timestamps_us[window].copy()),
        agents=_window_agents(log, start, n),
        traffic_lights=_window_lights(log, start, n),
        route_roadblock_ids=log.routes[current],
        current_index=sf.num_history_frames - 1,
        driving_command=int(log.commands[current]),
        goal=None,
    )


def openscene_scenes(frames: Sequence[dict[str, Any]], scene_filter: SceneFilter | None = None) -> list[Scene]:
    """NAVSIM scenes of one log's frames (from :func:`read_openscene_log`), cut like
    :func:`simulation.datasets.scenes.extract_scenes`: windows of ``num_frames`` frames with step
    ``scene_filter.step``, current frame ``num_history_frames - 1`` (its token is the scene token), windows
    without a route at the current frame dropped with ``has_route``; global rear-axle ego states and boxes."""
    sf = SceneFilter() if scene_filter is None else scene_filter
    if not frames or (sf.log_names is not None and str(frames[0]["log_name"]) not in set(sf.log_names)):
        return []
    tokens = None if sf.tokens is None else set(sf.tokens)
    log: _Log | None = None
    scenes: list[Scene] = []
    for start in range(0, len(frames) - sf.num_frames + 1, sf.step):
        current = frames[start + sf.num_history_frames - 1]
        if sf.has_route and len(current["roadblock_ids"]) == 0:
            continue
        if tokens is not None and str(current["token"]) not in tokens:
            continue
        log = _log_arrays(frames) if log is None else log
        scenes.append(_scene(log, start, sf))
        if sf.max_scenes is not None and len(scenes) >= sf.max_scenes:
            break
    return scenes


def openscene_log_paths(log_dir: str | os.PathLike[str], log_names: Sequence[str] | None = None) -> list[Path]:
    """The ``*.pkl`` logs of ``log_dir`` sorted by name, restricted to ``log_names`` (file stems) if given."""
    paths = sorted(Path(log_dir).glob("*.pkl"))
    return paths if log_names is None else [p for p in paths if p.stem in set(log_names)]


def load_openscene_scenes(
    log_dir: str | os.PathLike[str], scene_filter: SceneFilter | None = None, report: LoadReport | None = None
) -> list[Scene]:
    """NAVSIM scenes of every log pickle in ``log_dir`` (e.g. ``navsim_logs/test``); a pickle that cannot be
    read is skipped with a warning naming it, and counted in ``report``."""
    sf = SceneFilter() if scene_filter is None else scene_filter
    if not Path(log_dir).is_dir():
        raise FileNotFoundError(f"no OpenScene log folder {log_dir}")
    report = LoadReport() if report is None else report
    report.skipped = [] if report.skipped is None else report.skipped
    scenes: list[Scene] = []
    for path in openscene_log_paths(log_dir, sf.log_names):
        report.num_logs += 1
        try:
            scenes.extend(openscene_scenes(read_openscene_log(path), sf))
        except OpenSceneError as exc:
            logger.warning("skipping log %s: %s", path, exc.problem)
            report.skipped.append((str(path), exc.problem))
        if sf.max_scenes is not None and len(scenes) >= sf.max_scenes:
            break
    if report.skipped:
        logger.warning("%d of %d OpenScene logs skipped (unreadable)", report.num_skipped, report.num_logs)
    return scenes if sf.max_scenes is None else scenes[: sf.max_scenes]


__all__ = [
    "BoxIndex",
    "OpenSceneError",
    "load_openscene_scenes",
    "openscene_frames",
    "openscene_log_paths",
    "openscene_scenes",
    "read_openscene_log",
    "write_openscene_frames",
    "write_openscene_log",
]
