"""Closed-loop speed: a 15 s scenario (151 frames, 10 Hz) on the fixture map, simulated and scored.

Prints, for CLS-NR (log replay) and CLS-R (IDM agents), the seconds per scenario of the simulation and
of nuPlan's metrics, and the ratio of the metrics against a baseline that asks the map point by point
(one shapely ``contains`` per point and object, as nuPlan's per-pose map queries do) in the same run.
The planner keeps its speed; in CLS-R it runs into the IDM agents that stop where the fixture's lanes end
(x = 100 m), so its CLS-R score is 0 by design of the scene.

The PDM-Closed lines run the same scenario with ``planners.rule_based.PDMClosedPlanner`` in the loop: seconds
per 15 s scenario (simulation and planner, metrics apart), simulation steps per second and milliseconds per
planner call (best of two runs, each with a fresh planner), then the same with the previous proposal stepping
(``benchmarks/pdm_closed_baseline.py``: path after path) in the same run, its ms per call, the ratio, and whether
the two drove the same trajectory.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import shapely
from pdm_closed_baseline import PathByPathGenerator

from planners.rule_based import PDMClosedPlanner
from rewards.nuplan_map_context import LaneGraphContext, build_lane_graph_context
from rewards.nuplan_metrics import ClosedLoopRollout, compute_closed_loop_metrics
from simulation.closed_loop import ClosedLoopSimulator
from simulation.maps.api import MapAPI
from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map
from simulation.protocols import Observation
from simulation.types import (
    AgentIndex,
    Agents,
    EgoStates,
    Scenario,
    StateIndex,
    TrackedObjectType,
    TrafficLights,
    Trajectory,
)

FRAMES, HISTORY = 151, 20


class ConstantVelocity:
    """Keeps the current speed straight ahead for 4 s."""

    name = "constant_velocity"

    def plan(self, observation: Observation) -> Trajectory:
        v = float(observation.current_state[StateIndex.VX])
        t = np.arange(1, 9) * 0.5
        return Trajectory(np.stack([v * t, np.zeros(8), np.zeros(8)], -1))


def fixture_scenario(num_vehicles: int = 20) -> Scenario:
    """Ego at 10 m/s along lanes 11 -> 111 -> 21 -> 121 -> 41; vehicles ahead of it at its speed, and at
    8 m/s in the other eastbound lane."""
    ox, oy = FIXTURE_ORIGIN
    t = np.arange(-HISTORY, FRAMES) * 0.1
    ego = np.zeros((len(t), 11))
    ego[:, StateIndex.X] = ox - 55.0 + 10.0 * t
    ego[:, StateIndex.Y] = oy - 2.0
    ego[:, StateIndex.VX] = 10.0
    rng = np.random.default_rng(0)
    boxes = np.zeros((len(t), num_vehicles, 7))
    own_lane = np.arange(num_vehicles) % 4 == 1  # in the ego lane, ahead of it, at its speed
    starts = np.where(own_lane, np.linspace(-45.0, 60.0, num_vehicles), np.linspace(-58.0, 40.0, num_vehicles))
    starts = starts + rng.uniform(-0.5, 0.5, num_vehicles)
    speeds = np.where(own_lane, 10.0, 8.0)
    boxes[..., AgentIndex.X] = ox + starts[None] + speeds[None] * t[:, None]
    boxes[..., AgentIndex.Y] = oy + np.where(own_lane, -2.0, -6.0)[None]
    boxes[..., AgentIndex.VX] = speeds[None]
    boxes[..., AgentIndex.LENGTH] = 4.5
    boxes[..., AgentIndex.WIDTH] = 1.9
    ts = (t * 1e6).astype(np.int64) + 10**12
    ids = np.array([f"{i:016x}" for i in range(num_vehicles)])
    types = np.full(num_vehicles, TrackedObjectType.VEHICLE, dtype=np.int64)
    valid = np.ones(boxes.shape[:2], dtype=bool)
    cur = slice(HISTORY, None)
    return Scenario(
        log_name="bench",
        token="00000000000000aa",
        map_name="fixture-town",
        frame_tokens=np.array([f"{i:016x}" for i in range(FRAMES)]),
        timestamps_us=ts[cur],
        ego=EgoStates(ego[cur], ts[cur]),
        agents=Agents(boxes[cur], types, ids, valid[cur]),
        traffic_lights=TrafficLights.empty(FRAMES),
        route_roadblock_ids=("1", "101", "2", "103", "4"),
        current_index=0,
        history_ego=EgoStates(ego[:HISTORY], ts[:HISTORY]),
        history_agents=Agents(boxes[:HISTORY], types, ids, valid[:HISTORY]),
    )


class PointByPointContext(LaneGraphContext):
    """Baseline: membership asked one point and one object at a time."""

    def contains(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        flat = pts.reshape(-1, 2)
        out = np.zeros((len(flat), self.num_objects), dtype=bool)
        for i, (x, y) in enumerate(flat):
            p = shapely.Point(x, y)
            for m, poly in enumerate(self.polygons):
                out[i, m] = poly.contains(p)
        return out.reshape(*pts.shape[:-1], self.num_objects)


def _best(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _rollout(history: Any, scenario: Scenario) -> tuple[ClosedLoopRollout, np.ndarray]:
    """The metrics' view of a simulated ``history``, and the points its map context must cover."""
    rollout = ClosedLoopRollout(
        history.ego_states,
        history.timestamps_us,
        history.agent_boxes,
        history.agent_types,
        history.agent_valid,
        scenario.ego.states,
    )
    return rollout, np.concatenate([rollout.ego_states[:, :2], rollout.expert_states[:, :2]])


def bench_mode(api: MapAPI, scenario: Scenario, reactive: bool) -> str:
    """One line of figures for CLS-R (``reactive``) or CLS-NR."""
    name = "CLS-R " if reactive else "CLS-NR"
    sim = ClosedLoopSimulator(reactive=reactive)  # nuPlan's two-stage controller (LQR + bicycle)
    history = sim.run(scenario, ConstantVelocity(), map_api=api)
    rollout, points = _rollout(history, scenario)
    ctx = build_lane_graph_context(api, points)
    naive = PointByPointContext(**{f: getattr(ctx, f) for f in ctx.__dataclass_fields__})
    t_sim = _best(lambda: sim.run(scenario, ConstantVelocity(), map_api=api))
    t_metrics = _best(lambda: compute_closed_loop_metrics(rollout, build_lane_graph_context(api, points)))
    t_naive = _best(lambda: compute_closed_loop_metrics(rollout, naive), repeat=1)
    score = compute_closed_loop_metrics(rollout, ctx)["score"]
    return (
        f"{name}: simulation {t_sim:.3f} s + metrics {t_metrics:.3f} s per 15 s scenario "
        f"({len(history.ego_states)} steps, {scenario.agents.num_agents} vehicles, score {score:.3f}); "
        f"metrics vs point-by-point map queries: {t_naive / t_metrics:.1f}x faster"
    )


class _TimedPlanner:
    """Wraps a planner and adds up the seconds spent in its ``plan``."""

    def __init__(self, planner: PDMClosedPlanner) -> None:
        self.planner, self.name, self.seconds, self.calls = planner, planner.name, 0.0, 0

    def plan(self, observation: Observation) -> Trajectory:
        start = time.perf_counter()
        try:
            return self.planner.plan(observation)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def _baseline_planner() -> PDMClosedPlanner:
    planner = PDMClosedPlanner()
    planner.generator = PathByPathGenerator(planner.policy, planner.generator.trajectory_steps, planner.generator.dt)
    return planner


def _timed_runs(sim: ClosedLoopSimulator, scenario: Scenario, api: MapAPI, make: Any, repeat: int) -> tuple:
    """Best seconds per scenario, best seconds per planner call and the last history over ``repeat`` runs."""
    sim.run(scenario, make(), map_api=api)  # warm-up (compiled kernels)
    runs, history = [], None
    for _ in range(repeat):
        planner = _TimedPlanner(make())
        start = time.perf_counter()
        history = sim.run(scenario, planner, map_api=api)
        runs.append((time.perf_counter() - start, planner.seconds / max(planner.calls, 1)))
    return min(r[0] for r in runs), min(r[1] for r in runs), history


def bench_pdm_closed(api: MapAPI, scenario: Scenario, reactive: bool, repeat: int = 2) -> str:
    """One line of figures for PDM-Closed in CLS-R (``reactive``) or CLS-NR, and its ratio against the previous
    proposal stepping."""
    name = "CLS-R " if reactive else "CLS-NR"
    sim = ClosedLoopSimulator(reactive=reactive)
    seconds, per_call, history = _timed_runs(sim, scenario, api, PDMClosedPlanner, repeat)
    _, base_call, base_history = _timed_runs(sim, scenario, api, _baseline_planner, repeat)
    same = np.array_equal(history.ego_states, base_history.ego_states)
    steps = len(history.ego_states)
    rollout, points = _rollout(history, scenario)
    score = compute_closed_loop_metrics(rollout, build_lane_graph_context(api, points))["score"]
    errors = sum(e is not None for e in history.planner_errors)
    return (
        f"{name} PDM-Closed: simulation {seconds:.3f} s per 15 s scenario ({steps} steps, "
        f"{steps / seconds:.0f} steps/s, planner {per_call * 1e3:.1f} ms per call, {errors} planner errors, "
        f"score {score:.3f}); path-after-path stepping {base_call * 1e3:.1f} ms per call: "
        f"{base_call / per_call:.2f}x, same trajectory: {same}"
    )


def main() -> None:
    api = MapAPI.from_data(build_fixture_map())
    scenario = fixture_scenario()
    for reactive in (False, True):
        print(bench_mode(api, scenario, reactive))
        print(bench_pdm_closed(api, scenario, reactive))


if __name__ == "__main__":
    main()
