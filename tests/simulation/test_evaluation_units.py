"""Candidate metrics reach the NAVSIM unit as objects: the shipped configs compose them, the unit applies them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from test_benchmarks import FakePlanner, FakeScorer, build_evaluator, scene_as_cache, toy_scenes

from rewards.diversity import CandidateDiversity
from simulation.evaluation.build import build_candidate_metrics
from simulation.evaluation.cli import compose_config
from simulation.evaluation.evaluator import SceneEvaluator
from simulation.evaluation.protocols import get_protocol
from simulation.evaluation.refs import InMemorySource
from simulation.evaluation.report import write_report
from simulation.evaluation.units import NavsimUnit, candidate_metrics, observation_from_scene
from simulation.protocols import Observation
from simulation.types import Agents, EgoStates, Scene, TrafficLights, Trajectory

#: The shipped NAVSIM protocols' candidate metrics.
DIVERSITY = {"diversity": CandidateDiversity()}


class _Keeps:
    """A planner stand-in that kept ``last_candidates``."""

    name = "keeps"

    def __init__(self, candidates: np.ndarray | None) -> None:
        self.last_candidates = candidates

    def plan(self, observation: Observation) -> None:  # not called
        raise NotImplementedError


def _resolved(protocol: str) -> dict:
    return OmegaConf.to_container(compose_config([f"protocol={protocol}"]), resolve=True)  # type: ignore[return-value]


@pytest.mark.parametrize("protocol", ["navsim_v1", "navsim_v2"])
def test_navsim_protocols_compose_the_diversity_metric(protocol: str) -> None:
    assert build_candidate_metrics(_resolved(protocol)) == {"diversity": CandidateDiversity()}


@pytest.mark.parametrize("protocol", ["nuplan_cls_nr", "nuplan_cls_r"])
def test_closed_loop_protocols_have_no_candidate_metrics(protocol: str) -> None:
    assert build_candidate_metrics(_resolved(protocol)) == {}


def test_candidate_metrics_of_the_planners_last_candidates() -> None:
    candidates = np.zeros((2, 8, 3))
    candidates[0, :, 0] = candidates[1, :, 0] = np.arange(1, 9) * 2.0
    candidates[1, :, 1] = 2.0
    metrics = {"diversity": CandidateDiversity(), "count": lambda c: float(len(c)), "none": lambda c: None}
    out = candidate_metrics(_Keeps(candidates), metrics)  # type: ignore[arg-type]
    x = np.arange(1, 9) * 2.0
    expected = np.mean(np.minimum(1.0, 2.0 / (1e-6 + (x + np.hypot(x, 2.0)) / 2)))
    assert out == {"diversity": pytest.approx(expected), "count": 2.0}  # a metric without a value is left out
    assert candidate_metrics(_Keeps(None), metrics) == {}  # type: ignore[arg-type]
    assert candidate_metrics(_Keeps(candidates[:1]), metrics) == {"count": 1.0}  # type: ignore[arg-type]
    assert candidate_metrics(_Keeps(candidates), {}) == {}  # type: ignore[arg-type]


def test_observation_from_scene_is_the_current_frame_view() -> None:
    stamps = np.arange(6, dtype=np.int64) * 500_000
    scene = Scene("log", "tok", "town", np.array(["f"] * 6), stamps, EgoStates(np.zeros((6, 11)), stamps),
                  Agents.empty(6), TrafficLights.empty(6), ("1",), 2)  # fmt: skip
    obs, same = observation_from_scene(scene, "map"), Observation.from_window(scene, slice(0, 3), "map")
    assert obs.log_index == same.log_index == 2 and obs.log is scene and obs.map_api == "map"
    np.testing.assert_array_equal(obs.ego_history.timestamps_us, same.ego_history.timestamps_us)
    assert len(obs.ego_history) == 3 and obs.agents.boxes.shape[0] == 3


class TwoCandidatePlanner(FakePlanner):
    """Constant velocity plus a second candidate 2 m to the left at every pose (kept as ``last_candidates``)."""

    def plan(self, observation: Observation) -> Trajectory:
        plan = super().plan(observation)
        other = plan.poses.copy()
        other[:, 1] += 2.0
        self.last_candidates = np.stack([plan.poses, other])
        return plan


def test_candidate_diversity_reaches_the_row_details_and_summary(tmp_path: Path) -> None:
    scenes = toy_scenes()
    unit = NavsimUnit(TwoCandidatePlanner(), FakeScorer(), scene_as_cache, candidate_metrics=DIVERSITY)
    evaluator = SceneEvaluator(InMemorySource(scenes), unit, get_protocol("navsim_v1"))
    rows = evaluator(InMemorySource(scenes).refs())
    # speed 4 m/s: waypoints at 2, 4, ..., 16 m; candidates 2 m apart; DDv2's per-waypoint normalisation by the
    # mean distance of the two candidates' waypoints from the ego, clipped to 1, averaged over waypoints
    x = 4.0 * 0.5 * np.arange(1, 9)
    expected = np.mean(np.minimum(1.0, 2.0 / (1e-6 + (x + np.hypot(x, 2.0)) / 2)))
    assert rows[4]["diversity"] == pytest.approx(expected)
    assert rows[0]["diversity"] == pytest.approx(1.0)  # standing still: every waypoint at the origin vs 2 m away
    plain = SceneEvaluator(InMemorySource(scenes), build_evaluator().unit, get_protocol("navsim_v1"))
    assert "diversity" not in plain(InMemorySource(scenes).refs()[:1])[0]  # one output: no diversity
    written = write_report(get_protocol("navsim_v1"), rows, tmp_path, {"planner": "two"})
    assert "diversity" not in pd.read_csv(written["scores"]).columns  # NAVSIM's CSV stays as NAVSIM writes it
    details = pd.read_csv(written["details"])
    assert details["diversity"].iloc[4] == pytest.approx(expected)
    mean = np.mean([r["diversity"] for r in rows])
    assert f"Mode diversity of the planner's candidates (x100, mean over valid scenes): {100 * mean:.1f}" in (
        written["summary"].read_text()
    )
