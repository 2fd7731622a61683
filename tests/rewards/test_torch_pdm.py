"""The batched torch PDM scorer against the numpy one: the hand-computed cases of ``test_pdm_metrics`` /
``test_pdm_score`` re-run on the torch backend, and agreement on scenes of the fixture town (PDM-Closed proposals,
constant velocity, the expert and its perturbations)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import pytest
import test_pdm_metrics
import test_pdm_score
import torch

from planners.pdm_closed.planner import PDMClosedPlanner
from rewards.pdm import score_states
from rewards.torch.metric_cache_batch import MetricCacheBatch, translated
from rewards.torch.pdm import score_plans
from rewards.torch.pdm import score_states as torch_score_states
from simulation.geometry import global_to_local
from simulation.kinematics import simulate_proposals
from simulation.maps.api import MapAPI
from simulation.maps.testing import FIXTURE_ORIGIN, build_fixture_map
from simulation.metric_cache import MetricCache, build_metric_cache
from simulation.protocols import Observation
from simulation.types import AGENT_DIM, Agents, EgoStates, Scene, StateIndex, TrafficLights, TrafficLightStatus
from simulation.types import TrackedObjectType as TT

OX, OY = FIXTURE_ORIGIN
BINARY = ("no_at_fault_collisions", "drivable_area_compliance", "driving_direction_compliance",
          "time_to_collision_within_bound", "comfort", "traffic_light_compliance", "lane_keeping",
         "history_comfort")  # fmt: skip
CONTINUOUS = ("progress_m", "ego_progress", "score", "pdm_score")


def scored_on_torch(
    cache: MetricCache,
    states: np.ndarray,
    version: str = "v1",
    normalization: str = "pairwise",
    previous_states: np.ndarray | None = None,
    apply_human_filter: bool = True,
) -> dict[str, np.ndarray]:
    """:func:`rewards.pdm.score_states`'s signature, computed by the torch scorer on a batch of one scene."""
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 3 or states.shape[1:] != (41, 11):
        raise ValueError(f"states must be (K, 41, 11), got {states.shape}")
    prev = None if previous_states is None else torch.as_tensor(np.asarray(previous_states, dtype=np.float64))[None]
    out = torch_score_states(MetricCacheBatch.collate([cache]), torch.as_tensor(states)[None], version,
                             normalization, prev, apply_human_filter)  # fmt: skip
    return {k: v[0].numpy() for k, v in out.items()}


def _hand_cases() -> list:  # type: ignore[type-arg]
    """Every hand-computed case that scores through ``score_states``, with its parametrisations."""
    cases = []
    for module in (test_pdm_metrics, test_pdm_score):
        for name, fn in vars(module).items():
            if not name.startswith("test_") or not callable(fn):
                continue
            source = inspect.getsource(fn)
            if "score_states(" not in source and "_score(" not in source:
                continue
            marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
            params = list(inspect.signature(fn).parameters)
            if not marks and not params:
                cases.append(pytest.param(module, fn, {}, id=f"{module.__name__}.{name}"))
            elif len(marks) == 1:
                names = [n.strip() for n in (marks[0].args[0].split(",") if isinstance(marks[0].args[0], str)
                                             else marks[0].args[0])]  # fmt: skip
                if set(params) == set(names):
                    for i, values in enumerate(marks[0].args[1]):
                        values = values if len(names) > 1 else (values,)
                        kwargs = dict(zip(names, values, strict=True))
                        cases.append(pytest.param(module, fn, kwargs, id=f"{module.__name__}.{name}[{i}]"))
    return cases


@pytest.mark.parametrize(("module", "case", "kwargs"), _hand_cases())
def test_hand_computed_cases_on_torch(module: object, case: Callable[..., None], kwargs: dict, monkeypatch) -> None:  # type: ignore[type-arg]
    monkeypatch.setattr(module, "score_states", scored_on_torch)
    case(**kwargs)


def test_hand_cases_are_collected() -> None:
    names = {p.id for p in _hand_cases()}
    assert len(names) >= 25
    assert "test_pdm_metrics.test_first_contact_decides_per_track" in names
    assert "test_pdm_metrics.test_ddc_window_thresholds[3]" in names


# --------------------------------------------------------------------------------------------- fixture town


def _scene(x0: float, speed: float, route: tuple[str, ...], seed: int, red: str | None = None) -> Scene:
    """Ego on lane 21 / 11 of the fixture town (y = -2) with a few tracks: parked, ahead, oncoming, a cone."""
    rng = np.random.default_rng(seed)
    frames, ci = 14, 3
    t = (np.arange(frames) - ci) * 0.5
    states = np.zeros((frames, 11))
    states[:, StateIndex.X] = OX + x0 + speed * t
    states[:, StateIndex.Y] = OY - 2.0 + 0.3 * np.sin(0.4 * t + seed)
    states[:, StateIndex.VX] = speed
    specs = [(30.0, -6.0, 0.0, TT.VEHICLE), (rng.uniform(8, 20), -2.0, rng.uniform(0, 6), TT.VEHICLE),
             (rng.uniform(15, 40), -6.0, rng.uniform(2, 6), TT.VEHICLE),
             (rng.uniform(10, 25), -2.5, 0.0, TT.TRAFFIC_CONE),
             (rng.uniform(5, 15), -4.0, 1.2, TT.PEDESTRIAN)]  # fmt: skip
    boxes = np.zeros((frames, len(specs), AGENT_DIM))
    for n, (dx, y, v, _) in enumerate(specs):
        boxes[:, n] = [0.0, OY + y, 0.0, v, 0.0, 4.5 if n < 3 else 0.6, 2.0 if n < 3 else 0.6]
        boxes[:, n, 0] = OX + x0 + dx + v * t
    agents = Agents(boxes, np.array([s[3] for s in specs]), np.array([f"track{n:011d}" for n in range(len(specs))]),
                    np.ones((frames, len(specs)), bool))  # fmt: skip
    lights = TrafficLights.empty(frames) if red is None else TrafficLights(
        np.array([red]), np.full((frames, 1), TrafficLightStatus.RED, np.int8))  # fmt: skip
    stamps = np.arange(frames, dtype=np.int64) * 500_000
    return Scene("log", f"tok{seed}", "fixture-town", np.array(["f"] * frames), stamps, EgoStates(states, stamps),
                 agents, lights, route, ci)  # fmt: skip


def _candidates(scene: Scene, cache: MetricCache, planner: PDMClosedPlanner, api: MapAPI, seed: int) -> np.ndarray:
    """``(K, 8, 3)`` local plans: PDM-Closed proposals, constant velocity, the expert and perturbations of it."""
    rng = np.random.default_rng(seed)
    proposals, _, _ = planner.proposals(Observation.from_window(scene, None, api))
    current = cache.current_state[:3]
    pdm = global_to_local(proposals[:, 5::5][:, :8], current)
    t = np.arange(1, 9)[:, None] * 0.5
    const = np.stack([np.concatenate([v * t, 0 * t, 0 * t], -1) for v in (0.0, 3.0, 8.0, 14.0)])
    expert = cache.human_trajectory
    noise = rng.normal(0.0, [1.0, 0.8, 0.08], (12, 8, 3)) * np.linspace(0.2, 1.0, 8)[:, None]
    scaled = expert[None] * rng.uniform(0.5, 1.5, (4, 1, 1))
    return np.concatenate([pdm, const, expert[None], expert[None] + noise, scaled])


@pytest.fixture(scope="module")
def town() -> dict[str, list]:  # type: ignore[type-arg]
    api = MapAPI.from_data(build_fixture_map())
    out: dict[str, list] = {"v1": [], "v2": []}  # type: ignore[type-arg]
    specs = [(20.0, 5.0, ("2", "103", "4"), None), (-40.0, 8.0, ("1", "101", "2"), "111"),
             (-25.0, 3.0, ("1", "101", "2"), None)]  # fmt: skip
    for version in ("v1", "v2"):
        planner = PDMClosedPlanner(version)
        for seed, (x0, speed, route, red) in enumerate(specs):
            scene = _scene(x0, speed, route, seed, red)
            cache = build_metric_cache(scene, api, planner, version)
            out[version].append((cache, _candidates(scene, cache, planner, api, seed)))
    return out


def _assert_agree(numpy_out: dict[str, np.ndarray], torch_out: dict[str, np.ndarray]) -> None:
    for key in BINARY:
        if key in numpy_out:
            np.testing.assert_array_equal(torch_out[key], numpy_out[key], err_msg=key)
    for key in CONTINUOUS:
        if key in numpy_out:
            np.testing.assert_allclose(torch_out[key], numpy_out[key], atol=1e-4, err_msg=key)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("normalization", ["pairwise", "batch"])
def test_agreement_on_fixture_town(town: dict, version: str, normalization: str) -> None:  # type: ignore[type-arg]
    caches = [c for c, _ in town[version]]
    plans = np.stack([p for _, p in town[version]])
    batch = MetricCacheBatch.collate(caches)
    out, states = score_plans(batch, torch.as_tensor(plans), version, normalization)
    raw = torch_score_states(batch, states, version, normalization, apply_human_filter=False)
    seen = {k: 0.0 for k in BINARY}
    for s, cache in enumerate(caches):
        np_states = simulate_proposals(cache.current_state, plans[s])
        np.testing.assert_allclose(states[s].numpy(), np_states, atol=1e-6)
        _assert_agree(score_states(cache, np_states, version, normalization), {k: v[s].numpy() for k, v in out.items()})
        expected = score_states(cache, np_states, version, normalization, apply_human_filter=False)
        _assert_agree(expected, {k: v[s].numpy() for k, v in raw.items()})
        for key in seen:
            if key in expected:
                seen[key] += float((expected[key] < 1).sum())
    # the scenes exercise the sub-metrics: each multiplier / binary metric fails for some candidate
    failing = [k for k in ("no_at_fault_collisions", "drivable_area_compliance", "time_to_collision_within_bound")
               if seen[k] == 0]  # fmt: skip
    assert not failing, failing


def test_torch_v2_extended_comfort_and_human_filter(town: dict) -> None:  # type: ignore[type-arg]
    cache, plans = town["v2"][1]  # the red-light scene: the human runs the red light
    states = simulate_proposals(cache.current_state, plans)
    previous = np.roll(states, 1, axis=0)
    for flag in (True, False):
        expected = score_states(cache, states, "v2", previous_states=previous, apply_human_filter=flag)
        got = scored_on_torch(cache, states, "v2", previous_states=previous, apply_human_filter=flag)
        _assert_agree(expected, got)
        np.testing.assert_array_equal(got["extended_comfort"], expected["extended_comfort"])
        np.testing.assert_allclose(got["score"], expected["score"], atol=1e-4)


def test_batch_padding_mixes_scenes_of_different_sizes(town: dict) -> None:  # type: ignore[type-arg]
    """A scene scored alone and scored in a padded batch with a larger one give the same numbers."""
    (small, plans), _, _ = town["v1"]
    import dataclasses

    bare = dataclasses.replace(small, agent_boxes=small.agent_boxes[:, :1], agent_valid=small.agent_valid[:, :1],
                               agent_types=small.agent_types[:1],
                               agent_track_ids=small.agent_track_ids[:1])  # fmt: skip
    states = torch.as_tensor(np.stack([simulate_proposals(c.current_state, plans) for c in (bare, small)]))
    together = torch_score_states(MetricCacheBatch.collate([bare, small]), states)
    alone = torch_score_states(MetricCacheBatch.collate([bare]), states[:1])
    for key, value in alone.items():
        np.testing.assert_array_equal(together[key][:1].numpy(), value.numpy(), err_msg=key)


def test_metric_cache_batch_to_and_checks(town: dict) -> None:  # type: ignore[type-arg]
    caches = [c for c, _ in town["v1"]]
    batch = MetricCacheBatch.collate(caches).to("cpu", torch.float32)
    assert batch.agent_boxes.dtype == torch.float32 and batch.agent_valid.dtype == torch.bool
    assert batch.grid_words.dtype == torch.int64 and batch.agent_boxes.shape[:3] == (3, 51, 5)
    with pytest.raises(ValueError, match="several versions"):
        MetricCacheBatch.collate([town["v1"][0][0], town["v2"][0][0]])
    with pytest.raises(ValueError, match="states must be"):
        torch_score_states(MetricCacheBatch.collate(caches), torch.zeros(3, 2, 40, 11, dtype=torch.float64))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_float32_recentred_far_from_the_origin(town: dict, version: str) -> None:  # type: ignore[type-arg]
    """Scenes moved a further (6e5, 4e6) m: a float32 batch is re-centred on each ego start (in float64, states too),
    so it agrees with float64 on every binary sub-metric and to 1e-4 on the rest."""
    caches = [translated(c, 6e5, 4e6) for c, _ in town[version]]
    plans = torch.as_tensor(np.stack([p for _, p in town[version]]))
    wide = MetricCacheBatch.collate(caches)
    narrow = wide.to("cpu", torch.float32)
    assert narrow.origin.dtype == torch.float64 and narrow.agent_boxes.dtype == torch.float32
    np.testing.assert_array_equal(narrow.origin.numpy(), np.stack([c.current_state[:2] for c in caches]))
    assert float(narrow.current_state[:, :2].abs().max()) == 0.0
    expected, states = score_plans(wide, plans, version)
    got = torch_score_states(narrow, states, version)  # global float64 states, re-centred before the cast
    _assert_agree({k: v.numpy() for k, v in expected.items()}, {k: v.double().numpy() for k, v in got.items()})
    _, states32 = score_plans(narrow, plans, version)  # tracked in float32 near the origin, returned global
    assert states32.dtype == torch.float64
    np.testing.assert_allclose(states32.numpy(), states.numpy(), atol=1e-3)
