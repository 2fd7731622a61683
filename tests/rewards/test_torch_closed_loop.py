"""Torch closed-loop checks (BEV-Warp's judge): the broad phase (compaction, bounding circles) changes no result."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bev_warp.testing import fixture_map_api
from rewards.comfort import is_comfortable
from rewards.nuplan_collisions import time_to_collision
from rewards.torch import closed_loop as cl
from rewards.torch import cls_collisions
from rewards.torch import geometry as world
from rewards.torch.cls_metrics import comfortable_states
from rewards.torch.cls_world import world_from_maps
from simulation.maps.testing import FIXTURE_ORIGIN
from simulation.types import PACIFICA, AgentIndex, StateIndex, TrackedObjectType

A, S = AgentIndex, StateIndex


def test_compact_gathers_the_true_entries_in_order() -> None:
    keep = torch.tensor([[False, True, False, True], [False, False, False, False], [True, True, True, False]])
    values = torch.arange(12.0).reshape(3, 4)
    pairs = torch.stack([values, -values], -1)  # (3, 4, 2): trailing axes follow the gather
    index, kept, (got, got_pairs) = world.compact(keep, values, pairs)
    assert index.shape == (3, 3)  # the widest row holds three True entries
    assert kept.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert got[0, :2].tolist() == [1.0, 3.0] and got[2].tolist() == [8.0, 9.0, 10.0]
    assert torch.equal(got_pairs[..., 1], -got)
    empty_index, empty_kept, (nothing,) = world.compact(torch.zeros(2, 5, dtype=torch.bool), values[:2, :5])
    assert empty_index.shape == (2, 0) and nothing.shape == (2, 0) and not bool(empty_kept.any())


@settings(max_examples=60, deadline=None)
@given(
    dx=st.floats(-12.0, 12.0),
    dy=st.floats(-12.0, 12.0),
    heading=st.floats(-math.pi, math.pi),
    length=st.floats(0.5, 12.0),
    width=st.floats(0.5, 3.0),
)
def test_boxes_outside_the_bounding_circles_never_overlap(
    dx: float, dy: float, heading: float, length: float, width: float
) -> None:
    ego_pose = torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64)
    box = torch.tensor([dx, dy, heading, 0.0, 0.0, length, width], dtype=torch.float64)
    ego = torch.zeros(11, dtype=torch.float64)
    ego[:3] = ego_pose
    hit = bool(world.overlap(world.ego_corners(ego_pose), world.agent_corners(box)))
    dist = float(world.centre_distance(ego, box[None])[0])
    reach = cls_collisions.EGO_RADIUS + float(world.bounding_radius(box[A.LENGTH], box[A.WIDTH]))
    assert reach == pytest.approx(math.hypot(PACIFICA.length, PACIFICA.width) / 2 + math.hypot(length, width) / 2)
    if dist > reach:
        assert not hit


def test_ttc_with_broad_phase_equals_numpy() -> None:
    """Random frames and tracks (some static, some behind, wide search at some frames) against nuPlan's TTC."""
    g = np.random.default_rng(3)
    frames, tracks = 40, 30
    ego = np.zeros((frames, 11))
    ego[:, :2] = g.uniform(0, 10, (frames, 2))
    ego[:, 2] = g.uniform(-1, 1, frames)
    ego[:, S.VX] = g.uniform(0, 20, frames)
    ego[::7, S.VX] = 0.0
    boxes = np.zeros((frames, tracks, 7))
    boxes[..., :2] = ego[:, None, :2] + g.uniform(-30, 30, (frames, tracks, 2))
    boxes[..., 2] = g.uniform(-3, 3, (frames, tracks))
    boxes[..., 3:5] = g.uniform(-15, 15, (frames, tracks, 2))
    boxes[..., 5], boxes[..., 6] = 4.5, 2.0
    valid = g.uniform(size=(frames, tracks)) > 0.1
    types = np.full(tracks, int(TrackedObjectType.VEHICLE))
    types[::4] = int(TrackedObjectType.CZONE_SIGN)
    wide = g.uniform(size=frames) > 0.5
    none = np.full(tracks, -1)
    truth = time_to_collision(ego, boxes, valid, none, np.zeros(frames, bool), wide, types).ttc <= 0.95
    collisions = cls_collisions.Collisions(
        torch.tensor(none)[None],
        torch.tensor(none)[None],
        torch.zeros(1, tracks, dtype=torch.bool),
        torch.zeros(1, frames, dtype=torch.bool),
        torch.ones(1, dtype=torch.float64),
    )
    got = cls_collisions.ttc_violations(
        torch.tensor(ego)[None],
        torch.tensor(boxes)[None],
        torch.tensor(valid)[None],
        torch.tensor(types)[None],
        collisions,
        torch.tensor(wide)[None],
    )[0].numpy()
    assert np.array_equal(got, truth)
    assert 0 < truth.sum() < frames  # both outcomes occur


def test_filtered_comfort_equals_numpy() -> None:
    g = np.random.default_rng(1)
    states = np.zeros((12, 30, 11))
    t = np.arange(30) * 0.1
    states[..., S.HEADING] = g.uniform(-0.5, 0.5, (12, 1)) * t
    states[..., S.AX] = g.uniform(-5, 3, (12, 1)) + g.normal(0, 0.3, (12, 30))
    states[..., S.AY] = g.uniform(-5, 5, (12, 1))
    states[..., S.YAW_RATE] = g.uniform(-1, 1, (12, 1))
    truth = is_comfortable(states, "v2", 0.1) > 0
    got = comfortable_states(torch.tensor(states), 0.1).numpy()
    assert np.array_equal(got, truth) and 0 < truth.sum() < 12


def test_deviation_from_the_extended_expert_path() -> None:
    expert = torch.zeros(1, 5, 3, dtype=torch.float64)
    expert[0, :, 0] = torch.arange(5.0) * 10.0  # x = 0 .. 40 m, heading 0
    ego = torch.zeros(1, 4, 11, dtype=torch.float64)
    ego[0, :, 0] = torch.tensor([20.0, 90.0, 20.0, 20.0])  # 90 m: past the end, on the straight extension
    ego[0, 2, 1] = 2.5  # 2.5 m aside
    ego[0, 3, 2] = 1.0  # turned 57 degrees away
    assert cl.deviation(ego, expert, 2.0, math.radians(40.0)).tolist() == [[False, False, True, True]]


def test_step_checks_collision_ttc_drivable() -> None:
    """Fixture map, lane 11 (y = -2): a parked car ahead, touching, stopped ego, off the road to the north."""
    ox, oy = FIXTURE_ORIGIN
    world = world_from_maps(
        [np.array([[ox - 50.0, oy - 2.0, 0.0] + [0.0] * 8, [ox - 20.0, oy - 2.0] + [0.0] * 9])], [fixture_map_api()]
    )

    def checks(car_ahead_m: float, ego_speed: float = 5.0, ego_y: float = -2.0) -> dict[str, bool]:
        ego = torch.zeros(1, 2, 11, dtype=torch.float64)
        ego[0, :, 0] = ox - 40.0 + torch.tensor([0.0, 0.5])
        ego[0, :, 1] = oy + ego_y
        ego[0, :, S.VX] = ego_speed
        boxes = torch.zeros(1, 2, 1, 7, dtype=torch.float64)
        boxes[..., A.X], boxes[..., A.Y] = ox - 40.0 + car_ahead_m, oy - 2.0
        boxes[..., A.LENGTH], boxes[..., A.WIDTH] = 4.0, 2.0
        types = torch.tensor([[int(TrackedObjectType.VEHICLE)]])
        out = cl.step_checks(
            world, ego, boxes, torch.ones(1, 2, 1, dtype=torch.bool), types, torch.zeros(1, 1, dtype=torch.bool)
        )
        return {k: bool(v[0].any()) for k, v in out.items()}

    clear = {"collision": False, "drivable_area": False, "ttc": False, "collided": False}
    assert checks(60.0) == clear
    assert checks(5.0) == {**clear, "collision": True, "ttc": True, "collided": True}  # stopped track: at fault
    assert checks(5.0, ego_speed=0.0) == {**clear, "collided": True}  # a stopped ego is not at fault
    assert checks(9.5) == {**clear, "ttc": True}  # reached within 0.95 s at 5 m/s
    assert checks(60.0, ego_y=-0.4) == {**clear, "drivable_area": True}  # left corners 0.75 m off the road
