"""Feature builders: ego status, agent tokens and targets by hand."""

from __future__ import annotations

import numpy as np
import pytest

from planners.base import MAX_AGENTS, AgentFeature
from planners.features import PLANNER_RASTER, agent_tokens, ego_status, scene_targets
from planners.truncated_diffusion import TruncatedDiffusionConfig
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


def test_default_planner_extent_matches_raster() -> None:
    assert TruncatedDiffusionConfig().bev_extent == PLANNER_RASTER.extent
    assert TruncatedDiffusionConfig().bev_channels == PLANNER_RASTER.num_channels
