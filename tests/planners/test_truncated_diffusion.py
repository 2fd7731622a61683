"""Truncated diffusion planner: shapes, reproducibility, bad input, and a tiny overfit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from planners.anchors import kmeans_anchors
from planners.ego_mlp import EgoStatusMLP
from planners.truncated_diffusion import TruncatedDiffusionConfig, TruncatedDiffusionPlanner
from simulation.features import PLANNER_RASTER, PlannerInput, PlannerInputError


def _features(b: int = 2, seed: int = 0) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return PlannerInput(
        bev=torch.rand(b, 4, 64, 64, generator=g),
        ego_status=torch.randn(b, 8, generator=g),
        agents=torch.randn(b, 6, 11, generator=g),
        agents_mask=torch.rand(b, 6, generator=g) > 0.5,
    )


def _trajectories(m: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    speed = rng.uniform(0, 15, m)[:, None]
    curv = rng.uniform(-0.05, 0.05, m)[:, None]
    t = np.arange(1, 9) * 0.5
    s = speed * t
    heading = curv * s
    return np.stack([s * np.cos(heading / 2), s * np.sin(heading / 2), heading], -1)


def _planner(k: int = 6, truncated: bool = True, **overrides: int | bool) -> TruncatedDiffusionPlanner:
    torch.manual_seed(0)
    anchors = torch.from_numpy(kmeans_anchors(_trajectories(200), k=k)).float()
    cfg = TruncatedDiffusionConfig(
        bev_channels=4, d_model=32, num_anchors=k, backbone="resnet10t", truncated=truncated, **overrides
    )
    return TruncatedDiffusionPlanner(cfg, anchors)


def _fit(
    planner: TruncatedDiffusionPlanner, steps: int
) -> tuple[PlannerInput[torch.Tensor], torch.Tensor, list[float]]:
    """Trains ``planner`` on two fixed scenes; returns the features, the target trajectories and the losses."""
    feats = _features(b=2)
    target = torch.from_numpy(_trajectories(2, seed=5)).float()
    opt = torch.optim.Adam(planner.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        loss = planner.compute_loss(feats, {"trajectory": target}, generator=g)["loss"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    planner.eval()
    return feats, target, losses


def test_kmeans_anchors_reproducible_and_cover_data() -> None:
    data = _trajectories(300)
    a, b = kmeans_anchors(data, k=8, seed=3), kmeans_anchors(data, k=8, seed=3)
    assert a.shape == (8, 8, 2) and np.array_equal(a, b)
    # Every trajectory is closer to its nearest anchor than to the mean trajectory, on average.
    d_anchor = np.linalg.norm(data[:, None, :, :2] - a[None], axis=-1).mean(-1).min(1).mean()
    d_mean = np.linalg.norm(data[:, :, :2] - data[:, :, :2].mean(0), axis=-1).mean()
    assert d_anchor < 0.5 * d_mean
    with pytest.raises(ValueError):
        kmeans_anchors(data[:3], k=8)


def test_sampling_shapes_and_fixed_noise_reproducible() -> None:
    planner = _planner().eval()
    feats = _features()
    noise = torch.randn(planner.initial_noise_shape(2))
    with torch.no_grad():
        out1, out2 = planner(feats, noise), planner(feats, noise)
    assert out1.trajectory.shape == (2, 8, 3) and out1.candidates.shape == (2, 6, 8, 3) and out1.scores.shape == (2, 6)
    torch.testing.assert_close(out1.trajectory, out2.trajectory)
    best = out1.scores.argmax(1)
    torch.testing.assert_close(out1.trajectory, out1.candidates[torch.arange(2), best])
    assert planner.inference_timesteps == [8, 0]


def test_backbone_stage_sets_the_bev_map_stride() -> None:
    feats = _features()
    with torch.no_grad():
        for stage, side in ((-1, 2), (-2, 4)):  # 64 x 64 rasters: stride 32 and 16
            planner = _planner(backbone_stage=stage).eval()
            bev, _, _ = planner.encode(feats)
            assert bev.shape == (2, 32, side, side)
            assert planner(feats).trajectory.shape == (2, 8, 3)
    assert not hasattr(_planner(backbone_stage=-2).bev_encoder.backbone, "layer4")  # the last stage is not built


def test_nan_input_raises() -> None:
    planner = _planner().eval()
    feats = _features()
    feats.ego_status[0, 0] = float("nan")
    with pytest.raises(PlannerInputError, match="ego_status"):
        planner(feats)
    feats = _features()
    feats = dataclasses.replace(feats, bev=torch.rand(2, 3, 64, 64))
    with pytest.raises(PlannerInputError, match="bev"):
        planner(feats)


def test_overfit_two_scenes() -> None:
    """Loss falls and one denoising step from the noised anchors reproduces the training trajectories."""
    planner = _planner(train_max_timestep=10, num_inference_steps=1)
    feats, target, losses = _fit(planner, 150)
    assert np.mean(losses[-10:]) < 0.3 * losses[0]
    with torch.no_grad():
        out = planner(feats, torch.zeros(planner.initial_noise_shape(2)))
    positive = (planner.anchors[None] - target[:, None, :, :2]).norm(dim=-1).mean(-1).argmin(1)
    assert torch.equal(out.scores.argmax(1), positive)
    err = (out.trajectory[..., :2] - target[..., :2]).norm(dim=-1).mean()
    assert float(err) < 1.0


def test_vanilla_variant_uses_20_steps_from_noise() -> None:
    planner = _planner(truncated=False).eval()
    assert len(planner.inference_timesteps) == 20 and planner.inference_timesteps[0] == 999
    with torch.no_grad():
        out = planner(_features())
    assert out.candidates.shape == (2, 6, 8, 3)


def test_vanilla_with_absolute_output_overfits_from_pure_noise() -> None:
    """The vanilla baseline regresses clean waypoints: after training, 20 DDIM steps from noise land on the targets."""
    planner = _planner(truncated=False, absolute_output=True)
    feats, target, _ = _fit(planner, 200)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = planner(feats, torch.randn(planner.initial_noise_shape(2), generator=g))
    err = (out.trajectory[..., :2] - target[..., :2]).norm(dim=-1).mean()
    assert float(err) < 1.0
    # absolute waypoints: the candidates of one scene agree, whatever noise they started from (mode collapse)
    spread = (out.candidates[..., :2] - out.trajectory[:, None, :, :2]).norm(dim=-1).mean()
    assert float(spread) < 1.0


def test_ego_mlp_learns() -> None:
    torch.manual_seed(0)
    model = EgoStatusMLP()
    feats = _features(b=4)
    target = torch.from_numpy(_trajectories(4)).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(100):
        loss = model.compute_loss(feats, {"trajectory": target})["loss"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.2 * losses[0]


def _zero_offsets(planner: TruncatedDiffusionPlanner) -> None:
    with torch.no_grad():
        for layer in planner.layers:
            layer.reg_head[-1].weight.zero_()
            layer.reg_head[-1].bias.zero_()


def test_anchor_offset_starts_from_the_anchors_not_the_noise() -> None:
    """With zero regressed offsets, the anchor-offset head returns the anchors whatever the noise; the
    DiffusionDrive head returns the noisy points it was given."""
    feats = _features()
    noise = 3.0 * torch.randn(2, 6, 8, 2, generator=torch.Generator().manual_seed(1))
    anchored = _planner(anchor_offset=True).eval()
    _zero_offsets(anchored)
    with torch.no_grad():
        out = anchored(feats, noise)
    torch.testing.assert_close(out.candidates[..., :2], anchored.anchors.expand(2, -1, -1, -1))
    plain = _planner().eval()
    _zero_offsets(plain)
    with torch.no_grad():
        context = plain.encode(feats)
        noisy = plain.normalize(plain.anchors).expand(2, -1, -1, -1) + 0.05 * noise
        poses, _ = plain.decode(noisy, torch.tensor(8), context)[-1]
    torch.testing.assert_close(poses[..., :2], plain.denormalize(noisy.clamp(-1.0, 1.0)))


def test_anchor_offset_needs_the_truncated_offset_head() -> None:
    with pytest.raises(ValueError, match="anchor_offset"):
        _planner(anchor_offset=True, absolute_output=True)
    with pytest.raises(ValueError, match="anchor_offset"):
        _planner(truncated=False, anchor_offset=True)


def test_anchor_offset_overfits_and_stays_smooth() -> None:
    """Trained on two scenes, the 2-step sampler reproduces them from random noise without passing it through."""
    planner = _planner(anchor_offset=True)
    feats, target, _ = _fit(planner, 150)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        a = planner(feats, torch.randn(planner.initial_noise_shape(2), generator=g))
        b = planner(feats, torch.randn(planner.initial_noise_shape(2), generator=g))
    for out in (a, b):
        err = (out.trajectory[..., :2] - target[..., :2]).norm(dim=-1).mean()
        assert float(err) < 1.0
    # two noise draws give nearly the same plan: the noise (about 1.5 m per waypoint at t = 8) is not passed on
    assert float((a.trajectory[..., :2] - b.trajectory[..., :2]).norm(dim=-1).mean()) < 0.3


def test_default_planner_extent_matches_raster() -> None:
    assert TruncatedDiffusionConfig().bev_extent == PLANNER_RASTER.extent
    assert TruncatedDiffusionConfig().bev_channels == PLANNER_RASTER.num_channels
