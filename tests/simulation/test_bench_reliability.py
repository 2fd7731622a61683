"""Honest rows: a plan is 8 poses at 0.5 s and finite, or its row is invalid (NAVSIM and closed-loop protocols)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_benchmarks import FakePlanner, FakeScorer, fake_cls_score, scene_as_cache, toy_scenes

from simulation.evaluation.evaluator import SceneEvaluator
from simulation.evaluation.protocols import get_protocol
from simulation.evaluation.refs import InMemorySource
from simulation.evaluation.units import ClosedLoopUnit, InvalidPlanError, NavsimUnit, check_plan
from simulation.maps.protocol import MapProtocol
from simulation.protocols import Observation
from simulation.types import Trajectory


class ShapedPlanner(FakePlanner):
    """Constant velocity, but returns ``poses[:count]`` at ``interval_s`` (and NaN from ``nan_after`` calls on)."""

    def __init__(self, count: int = 8, interval_s: float = 0.5, nan_after: int | None = None) -> None:
        super().__init__()
        self.count, self.interval_s, self.nan_after, self.calls = count, interval_s, nan_after, 0

    def plan(self, observation: Observation) -> Trajectory:
        self.calls += 1
        poses = super().plan(observation).poses[: self.count].copy()
        if self.nan_after is not None and self.calls > self.nan_after:
            poses[:] = np.nan
        return Trajectory(poses, self.interval_s)


def _navsim_rows(planner: Any) -> list[dict[str, Any]]:
    source = InMemorySource(toy_scenes()[:3])
    unit = NavsimUnit(planner, FakeScorer(), scene_as_cache)
    return SceneEvaluator(source, unit, get_protocol("navsim_v1"))(source.refs())


@pytest.mark.parametrize(
    ("planner", "message"),
    [
        (ShapedPlanner(count=1), "shape (1, 3)"),
        (ShapedPlanner(count=0), "shape (0, 3)"),
        (ShapedPlanner(interval_s=0.1), "0.1 s"),
        (ShapedPlanner(nan_after=0), "NaN"),
    ],
)
def test_navsim_rows_of_malformed_plans_are_invalid(planner: Any, message: str) -> None:
    rows = _navsim_rows(planner)
    assert len(rows) == 3 and not any(r["valid"] for r in rows)
    for row in rows:
        assert row["error"].startswith(("InvalidPlanError", "NonFinitePlanError")) and message in row["error"]
        assert row["failure"] == "planner" and np.isnan(row["score"])
    assert all(r["valid"] for r in _navsim_rows(ShapedPlanner()))


def test_check_plan_accepts_only_eight_finite_poses() -> None:
    poses = np.arange(24, dtype=np.float64).reshape(8, 3)
    np.testing.assert_array_equal(check_plan(Trajectory(poses[None])), poses)
    np.testing.assert_array_equal(check_plan(poses), poses)
    for bad in (poses[:7], poses.reshape(4, 6), np.zeros((2, 8, 3)), "eight poses"):
        with pytest.raises(InvalidPlanError):
            check_plan(bad)  # type: ignore[arg-type]


class _Rollout:
    def __init__(self, ego_states: np.ndarray, planner_errors: tuple[str | None, ...]) -> None:
        self.ego_states, self.planner_errors = ego_states, planner_errors


def _loop(scenario: Any, planner: Any, map_api: MapProtocol) -> _Rollout:
    """A toy closed loop that records planner failures as the simulator does."""
    from simulation.closed_loop import call_planner

    obs = Observation(scenario.ego, scenario.agents, scenario.traffic_lights, (), scenario.map_name, log=scenario)
    errors = tuple(call_planner(planner, obs)[1] for _ in range(3))
    return _Rollout(np.stack([scenario.current_ego] * 4), errors)


@pytest.mark.parametrize(
    ("planner", "message"),
    [(ShapedPlanner(count=1), "shape (1, 3)"), (ShapedPlanner(nan_after=1), "NaN")],
)
def test_closed_loop_rows_of_malformed_plans_are_invalid(planner: Any, message: str) -> None:
    source = InMemorySource(toy_scenes()[1:2])
    unit = ClosedLoopUnit(planner, _loop, fake_cls_score)
    (row,) = SceneEvaluator(source, unit, get_protocol("nuplan_cls_nr"))(source.refs())
    assert not row["valid"] and row["failure"] == "planner"
    assert row["error"].startswith("InvalidPlanError") and message in row["error"]
    good = ClosedLoopUnit(ShapedPlanner(), _loop, fake_cls_score)
    (row,) = SceneEvaluator(source, good, get_protocol("nuplan_cls_nr"))(source.refs())
    assert row["valid"] and row["error"] is None
