"""BEV plots: PNG and GIF files are written, sized as asked and not blank."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from PIL import Image
from shapely.geometry import Polygon, box

from simulation.maps.api import MapAPI
from simulation.maps.layers import SemanticMapLayer
from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map
from simulation.types import (
    AgentIndex,
    Agents,
    EgoStates,
    LogWindow,
    Scene,
    TrackedObjectType,
    TrafficLights,
    TrafficLightStatus,
)
from simulation.visualize import (
    VisualizationError,
    log_gif,
    main,
    plot_scene,
    save_scene_png,
    window_from_log,
)


@dataclass
class _Lane:
    id: str
    polygon: Polygon
    baseline: np.ndarray
    left_boundary: np.ndarray
    right_boundary: np.ndarray
    roadblock_id: str


class _StraightRoad:
    """The part of the MapAPI the plots use: one 200 m road along +x with a connector and a crosswalk."""

    map_name = "straight"

    def __init__(self) -> None:
        def lane(i: str, x0: float, x1: float, rb: str) -> _Lane:
            line = np.array([[x0, 0.0], [x1, 0.0]])
            return _Lane(i, box(x0, -1.75, x1, 1.75), line, line + [0, 1.75], line - [0, 1.75], rb)

        self.lanes = {"1": lane("1", -50.0, 60.0, "rb1"), "3": lane("3", 70.0, 200.0, "rb3")}
        self.lane_connectors = {"2": lane("2", 60.0, 70.0, "rbc2")}
        self.crosswalks = {"4": box(62.0, -5.0, 66.0, 5.0)}

    def proximal_ids(self, point: np.ndarray, radius: float, layers: list) -> dict:
        out = {SemanticMapLayer.LANE: list(self.lanes), SemanticMapLayer.LANE_CONNECTOR: list(self.lane_connectors)}
        out[SemanticMapLayer.CROSSWALK] = list(self.crosswalks)
        return {k: v for k, v in out.items() if k in layers}

    def polygons(self, layer: SemanticMapLayer) -> dict:
        return dict(self.crosswalks) if layer == SemanticMapLayer.CROSSWALK else {}

    def drivable_area(self, center: np.ndarray, radius: float) -> Polygon:
        return box(-50.0, -6.0, 200.0, 6.0)

    def route_lane_ids(self, route_ids: list[str]) -> set[str]:
        objs = list(self.lanes.values()) + list(self.lane_connectors.values())
        return {o.id for o in objs if o.roadblock_id in route_ids}


def _window(num_frames: int = 14, current: int = 3) -> Scene:
    """Ego at 10 m/s along +x (2 Hz), a vehicle ahead, a pedestrian on the crosswalk, a red light."""
    t = np.arange(num_frames)
    states = np.zeros((num_frames, 11))
    states[:, 0], states[:, 3] = 5.0 * t, 10.0
    boxes = np.zeros((num_frames, 2, 7))
    boxes[:, 0, AgentIndex.X] = 30.0 + 4.0 * t
    boxes[:, 1, AgentIndex.X], boxes[:, 1, AgentIndex.Y] = 64.0, -4.0 + 0.5 * t
    boxes[:, :, AgentIndex.LENGTH], boxes[:, :, AgentIndex.WIDTH] = [4.5, 0.6], [2.0, 0.6]
    types = np.array([TrackedObjectType.VEHICLE, TrackedObjectType.PEDESTRIAN])
    agents = Agents(boxes, types, np.array(["a" * 16, "b" * 16]), np.ones((num_frames, 2), bool))
    lights = TrafficLights(np.array(["2"]), np.full((num_frames, 1), TrafficLightStatus.RED, np.int8))
    stamps = t.astype(np.int64) * 500_000
    tokens = np.array([f"{k:016x}" for k in t])
    return Scene("log-a", tokens[current], "straight", tokens, stamps, EgoStates(states, stamps), agents, lights,
                 ("rb1", "rbc2", "rb3"), current)  # fmt: skip


def _png_stats(path: Path) -> tuple[tuple[int, int], float]:
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    return (img.shape[1], img.shape[0]), float(img.var())


def test_save_scene_png_writes_a_plot(tmp_path: Path) -> None:
    candidates = np.zeros((6, 8, 3))
    candidates[..., 0] = np.arange(1, 9) * 5.0
    candidates[..., 1] = np.linspace(-2, 2, 6)[:, None] * np.arange(1, 9) / 8
    path = save_scene_png(_window(), _StraightRoad(), tmp_path / "sub" / "scene.png", candidates=candidates,
                          chosen=candidates[2])  # fmt: skip
    size, var = _png_stats(path)
    assert size == (750, 600)
    assert var > 100.0
    assert [p.name for p in path.parent.iterdir()] == ["scene.png"]  # no temporary left behind


def test_plot_scene_differs_with_candidates_and_without_map() -> None:
    scene = _window()
    fig = plot_scene(scene, _StraightRoad())
    ax = fig.axes[0]
    assert ax.get_aspect() == 1.0
    assert "log-a" in ax.get_title() and scene.token in ax.get_title()
    assert ax.get_legend() is not None
    n_lines = len(ax.lines)

    def centrelines(axes: Any) -> int:  # segments of the dashed centreline collection
        dashed = [c for c in axes.collections if isinstance(c, LineCollection) and c.get_linestyle()[0][1]]
        return sum(len(c.get_segments()) for c in dashed)

    assert centrelines(ax) == 3  # one per lane, in one collection
    fig2 = plot_scene(scene, None, candidates=np.zeros((3, 8, 3)), chosen=np.zeros((8, 3)))
    assert len(fig2.axes[0].lines) == n_lines + 4  # + 3 candidates + 1 chosen
    assert centrelines(fig2.axes[0]) == 0  # no map, no centrelines
    with pytest.raises(VisualizationError, match="candidates"):
        plot_scene(scene, None, candidates=np.zeros((8, 3)))


def test_log_gif_has_multiple_frames(tmp_path: Path) -> None:
    path = log_gif(_window(), _StraightRoad(), tmp_path / "log.gif", num_frames=5, step=2, dpi=40)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        frames = []
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB"), dtype=np.float64))
    assert frames[0].var() > 100.0
    assert np.abs(frames[0] - frames[-1]).mean() > 0.5  # the scene moves


@dataclass
class _FakeLog:
    """The LogData columns :func:`window_from_log` reads."""

    log_name: str = "log-b"
    map_location: str = "straight"

    def __post_init__(self) -> None:
        f = 6
        self.num_frames = f
        self.frame_tokens = np.array([f"{k:016x}" for k in range(f)])
        self.timestamps_us = np.arange(f, dtype=np.int64) * 50_000
        self.ego_states = np.zeros((f, 11))
        self.ego_states[:, 0] = np.arange(f) * 0.5
        self.frame_scene = np.zeros(f, np.int64)
        self.scene_roadblock_ids = [["rb1"]]
        self.track_tokens = np.array(["t" * 16, "u" * 16])
        self.track_types = np.array([TrackedObjectType.VEHICLE, TrackedObjectType.BICYCLE])
        self.box_frame = np.array([0, 1, 1, 4])
        self.box_track = np.array([1, 1, 0, 0])
        self.box_states = np.arange(4 * 7, dtype=np.float64).reshape(4, 7)
        self.tl_frame = np.array([2, 3])
        self.tl_lane_connector = np.array([2, 2])
        self.tl_status = np.array([TrafficLightStatus.RED, TrafficLightStatus.GREEN])


def test_window_from_log_scatters_boxes_and_lights() -> None:
    w = window_from_log(_FakeLog(), start=1, stop=5, step=1)
    assert isinstance(w, LogWindow)
    w.validate()
    assert w.num_frames == 4 and w.token == "0000000000000001"
    assert w.route_roadblock_ids == ("rb1",)
    # frames 1..4 -> rows 0..3; tracks 0 and 1 both seen in that range
    assert w.agents.valid.tolist() == [[True, True], [False, False], [False, False], [True, False]]
    np.testing.assert_array_equal(w.agents.boxes[0, 0], np.arange(14, 21))
    np.testing.assert_array_equal(w.agents.boxes[3, 0], np.arange(21, 28))
    assert w.traffic_lights.red_ids(1) == ["2"] and w.traffic_lights.red_ids(2) == []
    with pytest.raises(VisualizationError, match="no frames"):
        window_from_log(_FakeLog(), start=10)


def test_main_reports_missing_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--data-root", str(tmp_path / "nope"), "--log", "x", "--out", str(tmp_path)])
    assert rc == 1
    assert "data root" in capsys.readouterr().err


def test_plot_on_fixture_map_draws_map_layers(tmp_path: Path) -> None:
    """On the fixture MapAPI: lane, connector, route, red-light and crosswalk patches are all drawn."""
    map_api = MapAPI.from_data(build_fixture_map())
    scene = _window()
    shift = np.array([*FIXTURE_ORIGIN, 0.0]) + [-40.0, -2.0, 0.0]  # ego on lane 11, driving east
    ego = EgoStates(scene.ego.states + np.r_[shift, np.zeros(8)], scene.ego.timestamps_us)
    boxes = scene.agents.boxes.copy()
    boxes[..., :2] += shift[:2]
    lights = TrafficLights(np.array(["113"]), scene.traffic_lights.status)
    scene = replace(scene, ego=ego, agents=replace(scene.agents, boxes=boxes), traffic_lights=lights,
                    route_roadblock_ids=("1", "101", "2"), map_name=map_api.map_name)  # fmt: skip
    fig = plot_scene(scene, map_api)
    patches = fig.axes[0].patches
    assert len(patches) == 6  # drivable, lanes, connectors, route, red light, crosswalk
    size, var = _png_stats(save_scene_png(scene, map_api, tmp_path / "fixture.png"))
    assert size == (750, 600) and var > 100.0
