"""Hand-built metric caches for the PDM scorer tests (a straight two-lane road along +x).

Layout (metres): roadblock ``rb`` covers x in [-50, 150], y in [-4, 4]; lane ``ego_lane`` (on route, y in
[-4, 0], centre line y = -2, driving +x) and lane ``other_lane`` (not on route, y in [0, 4]). An optional
intersection ``inter`` covers x in [100, 150], y in [-4, 4]. Ego states are at the rear axle.
"""

from __future__ import annotations

import numpy as np
from shapely.geometry import box

from simulation.geometry import polyline_lengths
from simulation.maps.layers import SemanticMapLayer
from simulation.metric_cache import NUM_STEPS, OBSERVATION_STEPS, MetricCache
from simulation.polygon_grid import PolygonGrid, PolygonSet
from simulation.types import StateIndex

LANE_Y = -2.0


def straight_states(speed: float, y: float = LANE_Y, x0: float = 0.0, heading: float = 0.0, accel: float = 0.0):
    """``(41, 11)`` states moving along ``heading`` with constant acceleration (speed clipped at 0)."""
    t = np.arange(NUM_STEPS) * 0.1
    v = np.maximum(speed + accel * t, 0.0)
    dist = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * 0.1)])
    s = np.zeros((NUM_STEPS, 11))
    s[:, StateIndex.X] = x0 + np.cos(heading) * dist
    s[:, StateIndex.Y] = y + np.sin(heading) * dist
    s[:, StateIndex.HEADING] = heading
    s[:, StateIndex.VX] = v
    s[:, StateIndex.AX] = np.where(v > 0, accel, 0.0)
    return s


def agent_track(t_steps: int, x, y, heading=0.0, vx=0.0, vy=0.0, length=4.0, width=2.0) -> np.ndarray:
    """``(T, 7)`` box track; scalar or ``(T,)`` inputs."""
    out = np.zeros((t_steps, 7))
    for col, val in enumerate((x, y, heading, vx, vy, length, width)):
        out[:, col] = val
    return out


def make_cache(
    version: str = "v1",
    agents: list[tuple[np.ndarray, int]] | None = None,
    with_intersection: bool = False,
    extra_polygons: list[tuple[str, int, object]] | None = None,
    reference: np.ndarray | None = None,
    human: np.ndarray | None = None,
    history: np.ndarray | None = None,
    red: tuple[list[str], np.ndarray, list[object]] | None = None,
    route_lanes: tuple[str, ...] = ("ego_lane",),
) -> MetricCache:
    """A cache on the straight road; ``agents`` = ``[(track (T, 7) with NaN rows = absent, type)]``."""
    polys: list[tuple[str, int, object]] = [
        ("rb", SemanticMapLayer.ROADBLOCK, box(-50, -4, 150, 4)),
        ("ego_lane", SemanticMapLayer.LANE, box(-50, -4, 150, 0)),
        ("other_lane", SemanticMapLayer.LANE, box(-50, 0, 150, 4)),
    ]
    if with_intersection:
        polys.append(("inter", SemanticMapLayer.INTERSECTION, box(100, -4, 150, 4)))
    polys += extra_polygons or []
    t_obs = OBSERVATION_STEPS[version]
    agents = agents or []
    boxes = np.zeros((t_obs, len(agents), 7))
    valid = np.zeros((t_obs, len(agents)), dtype=bool)
    for n, (track, _) in enumerate(agents):
        ok = np.isfinite(track[:t_obs]).all(-1)
        boxes[ok, n] = track[:t_obs][ok]
        valid[:, n] = ok
    centerline = np.array([[-50.0, LANE_Y], [150.0, LANE_Y]])
    ref = straight_states(10.0) if reference is None else reference
    red_ids, red_mask, red_polys = red if red is not None else ([], np.zeros((NUM_STEPS, 0), bool), [])
    return MetricCache(
        token="t0",
        log_name="log",
        map_name="straight",
        version=version,
        current_state=ref[0].copy(),
        agent_boxes=boxes,
        agent_valid=valid,
        agent_types=np.array([a[1] for a in agents], dtype=np.int64),
        agent_track_ids=np.array([f"track{n}" for n in range(len(agents))], dtype=str),
        map_grid=PolygonGrid.build([p[2] for p in polys]),
        map_ids=np.array([p[0] for p in polys], dtype=str),
        map_layers=np.array([int(p[1]) for p in polys], dtype=np.int64),
        route_lane_ids=np.array(route_lanes, dtype=str),
        centerline=centerline,
        centerline_s=polyline_lengths(centerline),
        red_connector_ids=np.array(red_ids, dtype=str),
        red_mask=np.asarray(red_mask, dtype=bool),
        red_polygons=PolygonSet.from_geometries(red_polys),
        reference_states=ref,
        human_trajectory=np.zeros((8, 3)),
        human_states=ref.copy() if human is None else human,
        history_states=np.repeat(ref[:1], 14, 0) if history is None else history,
    )
