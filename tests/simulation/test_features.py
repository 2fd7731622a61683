"""The planner-input contract: ego status, agent tokens (numpy and batched torch), targets, collation, cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from simulation.features import (
    AGENT_FEATURES,
    FEATURE_KEYS,
    MAX_AGENTS,
    PLANNER_RASTER,
    AgentFeature,
    PlannerInput,
    PlannerInputError,
    agent_tokens,
    agent_tokens_torch,
    batch,
    cache_arrays,
    dequantize_bev,
    ego_status,
    ego_status_torch,
    from_cache_arrays,
    quantize_bev,
    raster_from_meta,
    scene_targets,
)
from simulation.render import RasterConfig
from simulation.types import (
    STATE_DIM,
    Agents,
    DrivingCommand,
    EgoStates,
    Scene,
    StateIndex,
    TrackedObjectType,
    TrafficLights,
)


def test_ego_status_layout() -> None:
    state = np.zeros(STATE_DIM)
    state[[StateIndex.VX, StateIndex.VY, StateIndex.AX, StateIndex.AY]] = [5.0, 0.1, -1.0, 0.2]
    np.testing.assert_allclose(ego_status(state, DrivingCommand.RIGHT), [5, 0.1, -1, 0.2, 0, 0, 1, 0], atol=1e-6)


def test_agent_tokens_in_ego_frame_nearest_first() -> None:
    ego = np.array([10.0, 0.0, np.pi / 2])  # facing +y
    boxes = np.array(
        [
            [10.0, 20.0, np.pi / 2, 0.0, 3.0, 4.5, 2.0],  # 20 m ahead, moving forward at 3 m/s
            [8.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5],  # 2 m to the right... of a +y-facing ego: x decreases -> right
        ]
    )
    types = np.array([TrackedObjectType.VEHICLE, TrackedObjectType.PEDESTRIAN])
    tokens, mask = agent_tokens(boxes, types, ego)
    assert mask.sum() == 2 and tokens.shape == (MAX_AGENTS, len(AgentFeature))
    near, far = tokens[0], tokens[1]
    np.testing.assert_allclose(near[[AgentFeature.X, AgentFeature.Y]], [0.0, 2.0], atol=1e-9)
    assert near[AgentFeature.IS_VULNERABLE] == 1 and near[AgentFeature.IS_VEHICLE] == 0
    np.testing.assert_allclose(
        far[[AgentFeature.X, AgentFeature.Y, AgentFeature.VX, AgentFeature.VY]], [20, 0, 3, 0], atol=1e-6
    )
    np.testing.assert_allclose(far[[AgentFeature.COS_HEADING, AgentFeature.SIN_HEADING]], [1, 0], atol=1e-6)
    many = np.tile(boxes[:1], (50, 1))
    many[:, 1] += np.arange(50)
    _, mask = agent_tokens(many, np.zeros(50, int), ego)
    assert mask.sum() == MAX_AGENTS


def test_scene_targets_and_short_scene() -> None:
    t = 12
    states = np.zeros((t, STATE_DIM))
    states[:, StateIndex.Y] = np.arange(t) * 2.0
    states[:, StateIndex.HEADING] = np.pi / 2
    ts = np.arange(t, dtype=np.int64) * 500_000
    scene = Scene("log", "tok", "m", np.array([str(i) for i in range(t)]), ts, EgoStates(states, ts), Agents.empty(t),
                  TrafficLights.empty(t), (), current_index=3)  # fmt: skip
    targets = scene_targets(scene)
    np.testing.assert_allclose(targets[:, 0], np.arange(1, 9) * 2.0, atol=1e-9)
    np.testing.assert_allclose(targets[:, 1:], 0.0, atol=1e-9)
    short = Scene("log", "tok", "m", scene.frame_tokens, ts, scene.ego, scene.agents, scene.traffic_lights, (), 5)
    with pytest.raises(ValueError, match="need 8"):
        scene_targets(short)


def test_ego_status_torch_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    states = rng.normal(size=(7, STATE_DIM)) * 5.0
    commands = np.array([0, 1, 2, 3, -1, 7, 2])
    want = np.stack([ego_status(s, int(c)) for s, c in zip(states, commands)])
    got = ego_status_torch(torch.from_numpy(states), torch.from_numpy(commands))
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), want)
    assert want[4:6, 4:].tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]  # out-of-range commands count as unknown


@pytest.mark.parametrize("num_agents", [0, 5, 40])
def test_agent_tokens_torch_matches_numpy(num_agents: int) -> None:
    rng = np.random.default_rng(num_agents)
    b = 4
    boxes = np.concatenate(
        [rng.uniform(-60, 60, (b, num_agents, 2)), rng.uniform(-4, 4, (b, num_agents, 3)),
         rng.uniform(0.5, 6, (b, num_agents, 2))], -1,
    )  # fmt: skip
    boxes[:, 1::7, :2] = boxes[:, :1, :2] if num_agents else boxes[:, 1::7, :2]  # ties in distance
    types = rng.integers(0, 7, (b, num_agents))
    valid = rng.uniform(size=(b, num_agents)) > 0.3
    ego = np.concatenate([rng.uniform(-20, 20, (b, 2)), rng.uniform(-np.pi, np.pi, (b, 1))], -1)
    tokens, mask = agent_tokens_torch(
        torch.from_numpy(boxes), torch.from_numpy(types), torch.from_numpy(valid), torch.from_numpy(ego)
    )
    assert tokens.shape == (b, MAX_AGENTS, AGENT_FEATURES) and mask.shape == (b, MAX_AGENTS)
    for i in range(b):
        want_tokens, want_mask = agent_tokens(boxes[i][valid[i]], types[i][valid[i]], ego[i])
        np.testing.assert_array_equal(mask[i].numpy(), want_mask)
        np.testing.assert_allclose(tokens[i].numpy(), want_tokens, atol=1e-5, rtol=0)


def _inputs(b: int = 3, seed: int = 0) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return PlannerInput(
        bev=torch.rand(b, 4, 8, 8, generator=g),
        ego_status=torch.randn(b, 8, generator=g),
        agents=torch.randn(b, MAX_AGENTS, AGENT_FEATURES, generator=g),
        agents_mask=torch.rand(b, MAX_AGENTS, generator=g) > 0.5,
    )


def test_planner_input_dict_round_trip_and_positional_form() -> None:
    inputs = _inputs()
    d = inputs.as_dict()
    assert tuple(d) == FEATURE_KEYS and d["bev"] is inputs.bev and inputs.batch_size == 3
    again = PlannerInput.from_dict(d)
    assert all(a is b for a, b in zip(again.tensors(), inputs.tensors())) and again.route is None
    routed = dataclasses.replace(inputs, route=torch.zeros(3, 5, 2))
    assert tuple(routed.as_dict()) == (*FEATURE_KEYS, "route")
    assert PlannerInput.from_dict(routed.as_dict()).route is routed.route
    with pytest.raises(PlannerInputError, match="agents_mask"):
        PlannerInput.from_dict({k: v for k, v in d.items() if k != "agents_mask"})
    moved = inputs.to("cpu", non_blocking=True)
    torch.testing.assert_close(moved.bev, inputs.bev)
    halves = inputs.apply(lambda t: t[:1])
    assert halves.ego_status.shape == (1, 8) and halves.agents_mask.shape == (1, MAX_AGENTS)


def test_validate_names_the_bad_feature() -> None:
    _inputs().validate(bev_channels=4)
    with pytest.raises(PlannerInputError, match="bev must be"):
        _inputs().validate(bev_channels=3)
    with pytest.raises(PlannerInputError, match="ego_status must be"):
        dataclasses.replace(_inputs(), ego_status=torch.zeros(3, 7)).validate()
    with pytest.raises(PlannerInputError, match="agents must be"):
        dataclasses.replace(_inputs(), agents=torch.zeros(3, 4, 5)).validate()
    bad = _inputs()
    bad.agents[1, 2, 0] = float("inf")
    with pytest.raises(PlannerInputError, match="'agents' contains NaN"):
        bad.validate()


def test_batch_stacks_numpy_and_torch_samples() -> None:
    inputs = _inputs()
    samples = [inputs.apply(lambda t, i=i: t[i].numpy()) for i in range(3)]
    for stacked in (batch(samples), batch([s.apply(torch.from_numpy) for s in samples])):
        for got, want in zip(stacked.tensors(), inputs.tensors()):
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    routed = [dataclasses.replace(s, route=np.full((5, 2), i, np.float64)) for i, s in enumerate(samples)]
    assert batch(routed).route is not None and batch(routed).route.shape == (3, 5, 2)  # type: ignore[union-attr]
    with pytest.raises(PlannerInputError, match="route"):
        batch([routed[0], samples[1]])
    with pytest.raises(PlannerInputError, match="zero samples"):
        batch([])


def test_cache_quantisation_round_trip() -> None:
    bev = np.array([0.0, 1.0 / 255.0, 0.5, 0.9999, 1.0, 1.7, -0.2], np.float32)
    q = quantize_bev(bev)
    assert q.dtype == np.uint8 and q.tolist() == [0, 1, 128, 255, 255, 255, 0]
    np.testing.assert_array_equal(dequantize_bev(q), q.astype(np.float32) / 255.0)
    samples = [_inputs(1, seed).apply(lambda t: t[0].numpy()) for seed in range(2)]
    arrays = cache_arrays(samples)
    assert tuple(arrays) == FEATURE_KEYS and arrays["bev"].dtype == np.uint8 and arrays["bev"].shape == (2, 4, 8, 8)
    back = from_cache_arrays(arrays, 1)
    assert back.bev.dtype == torch.float32 and back.agents_mask.dtype == torch.bool
    assert float((back.bev - torch.from_numpy(samples[1].bev)).abs().max()) <= 0.5 / 255.0 + 1e-7
    np.testing.assert_array_equal(back.agents.numpy(), samples[1].agents)
    np.testing.assert_array_equal(back.agents_mask.numpy(), samples[1].agents_mask)


def test_raster_from_meta_falls_back_to_the_planner_raster() -> None:
    assert raster_from_meta(None) == PLANNER_RASTER and raster_from_meta({}) == PLANNER_RASTER
    small = RasterConfig(height_px=64, width_px=64, resolution_m=1.0, behind_m=16.0)
    assert raster_from_meta(small.to_dict()) == small
