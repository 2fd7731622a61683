"""RLModule's mode-choice term: the truncated planner's anchor scores trained towards the anchors that score best."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from closed_loop_fixtures import tiny_generator
from rl_toy import DistanceReward, FakeRewardBatch, StopAfterFirstEpoch, ToyGaussianPolicy, collate
from torch.utils.data import DataLoader

from planners.truncated_diffusion import TruncatedDiffusionPlanner
from simulation.features import PlannerInput
from training.rl import RLModule, _Scored
from training.rl_support import TensorRewards


def _features(channels: int, b: int = 2) -> PlannerInput[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return PlannerInput(
        bev=torch.rand(b, channels, 64, 64, generator=g),
        ego_status=torch.randn(b, 8, generator=g),
        agents=torch.randn(b, 6, 11, generator=g),
        agents_mask=torch.rand(b, 6, generator=g) > 0.5,
    )


def _argmax(planner: TruncatedDiffusionPlanner, features: PlannerInput[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return planner(features, torch.zeros(planner.initial_noise_shape(features.batch_size))).scores.argmax(1)


def test_the_executed_anchor_moves_to_the_anchor_whose_samples_score_best() -> None:
    planner = tiny_generator()
    k = planner.config.num_anchors
    module = RLModule(planner=planner, reward=DistanceReward(), freeze=["bev_encoder"], mode_weight=1.0)
    features = _features(planner.config.bev_channels)
    rollout = module.policy.rollout(features, 3 * k, torch.Generator().manual_seed(0)).detach()
    before = _argmax(planner, features)
    best = (before + k // 2) % k  # an anchor the planner does not execute yet
    total = (rollout.groups == best[:, None]).float()  # its samples score 1, every other sample 0
    scored = _Scored(TensorRewards(total, {}), None)
    opt = torch.optim.Adam([p for p in planner.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    mode, extra, candidate_rewards = module._mode_advantages({"features": features}, rollout, scored, torch.Generator())
    assert (
        mode is not None and extra == {} and candidate_rewards is None and not mode.noise.any()
    )  # mode_noise "anchors": no start noise
    for _ in range(40):
        loss, stats = module._mode_choice_loss(features, mode)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert torch.equal(_argmax(planner, features), best)
    assert losses[-1] < losses[0] and float(stats["mode_entropy"]) < math.log(k)


def test_mode_weight_needs_the_truncated_planner() -> None:
    with pytest.raises(ValueError, match="mode_weight needs the truncated diffusion planner"):
        RLModule(planner=ToyGaussianPolicy(), reward=DistanceReward(), mode_weight=0.5)


def test_candidate_rewards_move_the_executed_anchor_to_the_best_candidate() -> None:
    planner = tiny_generator()
    k = planner.config.num_anchors
    module = RLModule(
        planner=planner, reward=DistanceReward(), freeze=["bev_encoder"], mode_weight=1.0, mode_reward="candidates"
    )
    features = _features(planner.config.bev_channels)
    before = _argmax(planner, features)
    best = (before + k // 2) % k
    with torch.no_grad():
        candidates = planner(features, torch.zeros(planner.initial_noise_shape(2))).candidates
    # DistanceReward scores closeness to each scene's "metric cache": here the candidate of anchor `best`
    batch = {"features": features, "metric_cache": [candidates[i, best[i]].numpy() for i in range(2)]}
    rollout = module.policy.rollout(features, k, torch.Generator().manual_seed(0)).detach()
    scored = _Scored(TensorRewards(torch.zeros(2, k), {}), None)  # the rollout's rewards are not used
    opt = torch.optim.Adam([p for p in planner.parameters() if p.requires_grad], lr=1e-2)
    mode, stats, _ = module._mode_advantages(batch, rollout, scored, torch.Generator())
    assert mode is not None and mode.adv.shape == (2, k)
    assert torch.equal(mode.adv.argmax(1), best) and float(stats["mode_best_reward"]) == pytest.approx(1.0)
    assert float(stats["mode_pick_reward"]) < 1.0  # the planner does not pick it yet
    for _ in range(40):
        loss, _ = module._mode_choice_loss(features, mode)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(_argmax(planner, features), best)


def test_mode_reward_is_checked() -> None:
    with pytest.raises(ValueError, match="mode_reward must be"):
        RLModule(planner=tiny_generator(), reward=DistanceReward(), mode_weight=1.0, mode_reward="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode_noise must be"):
        RLModule(planner=tiny_generator(), reward=DistanceReward(), mode_weight=1.0, mode_noise="zeros")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode_advantage must be"):
        RLModule(planner=tiny_generator(), reward=DistanceReward(), mode_weight=1.0, mode_advantage="grpo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode_advantage 'ddv2' needs mode_reward 'candidates'"):
        RLModule(planner=tiny_generator(), reward=DistanceReward(), mode_weight=1.0, mode_advantage="ddv2")


@pytest.mark.parametrize(
    ("options", "needs"),
    [
        ({"mode_weight": 0.0}, "mode_weight > 0"),
        ({"mode_reward": "samples"}, "mode_reward 'candidates'"),
        ({"il_weight": 0.1}, "il_weight 0"),
        ({"il_weight_positive": 0.1}, "il_weight 0"),
    ],
)
def test_rollout_false_refuses_what_needs_a_rollout(options: dict[str, Any], needs: str) -> None:
    kwargs: dict[str, Any] = {"mode_weight": 1.0, "mode_reward": "candidates", **options}
    with pytest.raises(ValueError, match=f"rollout: false needs .*{needs}"):
        RLModule(planner=tiny_generator(), reward=DistanceReward(), rollout=False, **kwargs)


class _CandidateIndexReward:
    """Scores candidate ``k`` of every scene ``TOTAL[k]``; candidate 2 collides (NC 0)."""

    TOTAL = (1.0, 0.5, 0.0, 0.5)
    names = ("no_at_fault_collisions", "drivable_area_compliance")
    version = "v1"

    def score(self, metric_caches: Any, plans: Any) -> Any:
        b, k = plans.shape[:2]
        total = np.zeros((b, k))
        total[:, :4] = self.TOTAL
        nc = np.ones((b, k))
        nc[:, 2] = 0.0
        return FakeRewardBatch(total, {"no_at_fault_collisions": nc, "drivable_area_compliance": np.ones((b, k))})


def test_ddv2_mode_advantage_by_hand() -> None:
    """``mode_advantage: ddv2``: the candidates' rewards normalised over the scene, ``max(A, 0)``, -1 for the
    colliding one; against ``normalized``, which keeps the negative advantages of the slow candidates."""
    planner = tiny_generator()
    k = planner.config.num_anchors
    assert k == 4  # the hand-computed case below scores 4 candidates
    features = _features(planner.config.bev_channels)
    batch = {"features": features, "metric_cache": [None, None]}
    # rewards 1, 0.5, 0, 0.5: mean 0.5, unbiased std sqrt(0.5 / 3)
    z = 0.5 / math.sqrt(0.5 / 3)
    expected = {"normalized": [z, 0.0, -z, 0.0], "ddv2": [z, 0.0, -1.0, 0.0]}
    for name, want in expected.items():
        module = RLModule(
            planner=planner,
            reward=_CandidateIndexReward(),
            mode_weight=1.0,
            mode_reward="candidates",
            mode_advantage=name,  # type: ignore[arg-type]
            adv_eps=0.0,
        )
        mode, stats, rewards = module._mode_advantages(batch, None, None, torch.Generator())
        assert mode is not None and rewards is not None
        torch.testing.assert_close(mode.adv, torch.tensor([want, want], dtype=mode.adv.dtype), rtol=0, atol=1e-6)
        assert float(stats["mode_best_reward"]) == 1.0
        if name == "ddv2":
            assert float(stats["mode_failure"]) == pytest.approx(0.25)


def test_the_first_update_reuses_the_candidates_forward_pass() -> None:
    """The choice's loss on the advantages' own scores (one forward pass), then on a new pass: the same value while
    the weights have not moved."""
    planner = tiny_generator()
    module = RLModule(
        planner=planner,
        reward=_CandidateIndexReward(),
        mode_weight=1.0,
        mode_reward="candidates",
        trainable=["cls_head"],
    )
    features = _features(planner.config.bev_channels)
    mode, _, _ = module._mode_advantages(
        {"features": features, "metric_cache": [None, None]}, None, None, torch.Generator()
    )
    assert mode is not None and mode.scores is not None and mode.scores.requires_grad
    first, _ = module._mode_choice_loss(features, mode)
    assert mode.scores is None  # used once
    again, _ = module._mode_choice_loss(features, mode)
    torch.testing.assert_close(first, again)
    params = [p for p in planner.parameters() if p.requires_grad]
    grads = [torch.autograd.grad(loss, params, allow_unused=True) for loss in (first, again)]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads[0])
    for g1, g2 in zip(*grads, strict=True):
        assert (g1 is None) == (g2 is None)
        if g1 is not None:
            torch.testing.assert_close(g1, g2)


def test_mode_detach_confines_the_choice_gradient_to_the_score_heads() -> None:
    """``mode_detach``: the choice's loss has the same value and the same gradient on every ``cls_head`` as without
    it, and none on the rest of the policy (which the undetached loss does reach); the sample path is untouched."""
    features = _features(tiny_generator().config.bev_channels)
    batch = {"features": features, "metric_cache": [None, None]}
    grads, values = {}, {}
    for detach in (False, True):
        planner = tiny_generator()
        module = RLModule(
            planner=planner,
            reward=_CandidateIndexReward(),
            freeze=["bev_encoder"],
            mode_weight=1.0,
            mode_reward="candidates",
            mode_detach=detach,
        )
        mode, _, _ = module._mode_advantages(batch, None, None, torch.Generator())
        assert mode is not None
        losses = [module._mode_choice_loss(features, mode)[0] for _ in range(2)]  # the reused pass, then a new one
        named = [(n, p) for n, p in planner.named_parameters() if p.requires_grad]
        values[detach] = [float(loss.detach()) for loss in losses]
        grads[detach] = [
            dict(zip([n for n, _ in named], torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)))
            for loss in losses
        ]
        assert not any(h._forward_pre_hooks for h in module._score_heads)  # the hooks live for the pass only
    assert values[True] == pytest.approx(values[False], abs=1e-6)
    for with_hook, without in zip(grads[True], grads[False], strict=True):
        heads = [n for n in without if ".cls_head." in n or n.startswith("cls_head.")]
        others = [n for n in without if n not in heads]
        assert heads and others
        for n in heads:
            torch.testing.assert_close(with_hook[n], without[n])
        assert all(with_hook[n] is None or not with_hook[n].any() for n in others)
        assert any(without[n] is not None and bool(without[n].abs().sum() > 0) for n in others)


def test_mode_detach_needs_score_heads() -> None:
    with pytest.raises(ValueError, match="mode_detach needs anchor-score heads"):
        RLModule(planner=ToyGaussianPolicy(), reward=DistanceReward(), mode_detach=True)


def test_sampled_mode_noise_trains_on_the_candidates_of_the_drawn_noise() -> None:
    """``mode_noise: sampled``: each step draws the start noise from the rollout generator (a standard normal, as at
    inference); the advantages are those of that noise's candidates, and the loss re-runs the planner on it."""
    planner = tiny_generator()
    k = planner.config.num_anchors
    module = RLModule(
        planner=planner,
        reward=DistanceReward(),
        freeze=["bev_encoder"],
        mode_weight=1.0,
        mode_reward="candidates",
        mode_noise="sampled",
    )
    features = _features(planner.config.bev_channels)
    shape = planner.initial_noise_shape(2)
    drawn = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        candidates = planner(features, drawn).candidates
        anchors_only = planner(features, torch.zeros(shape)).candidates
    assert not torch.allclose(candidates, anchors_only)  # the noise changes the candidates
    target = candidates[:, 1]  # anchor 1's candidate of the drawn noise scores best in both scenes
    batch = {"features": features, "metric_cache": [target[i].numpy() for i in range(2)]}
    rollout = module.policy.rollout(features, k, torch.Generator().manual_seed(0)).detach()
    scored = _Scored(TensorRewards(torch.zeros(2, k), {}), None)
    mode, stats, _ = module._mode_advantages(batch, rollout, scored, torch.Generator().manual_seed(3))
    assert mode is not None and torch.equal(mode.noise, drawn)
    assert mode.adv.argmax(1).tolist() == [1, 1] and float(stats["mode_best_reward"]) == pytest.approx(1.0)
    # the next draw of the generator is another noise
    gen = torch.Generator().manual_seed(3)
    first, second = (module._mode_noise(features, gen) for _ in range(2))
    assert torch.equal(first, drawn) and not torch.allclose(first, second)
    loss, _ = module._mode_choice_loss(features, mode)
    with torch.no_grad():
        scores = planner(features, drawn).scores
    expected = -(torch.softmax(scores, 1) * mode.adv).sum(1).mean()  # the loss is on the drawn noise's scores
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_trainable_keeps_only_the_named_parameters_training() -> None:
    planner = tiny_generator()
    module = RLModule(planner=planner, reward=DistanceReward(), trainable=["cls_head"])
    training = {name for name, p in planner.named_parameters() if p.requires_grad}
    assert training and all("cls_head" in name for name in training)
    assert len(training) == sum("cls_head" in name for name, _ in planner.named_parameters())
    assert all(not p.requires_grad for p in module.reference.parameters())
    with pytest.raises(ValueError, match="trainable 'no_such' matches no parameter"):
        RLModule(planner=tiny_generator(), reward=DistanceReward(), trainable=["no_such"])


def _choice_loader(planner: TruncatedDiffusionPlanner) -> DataLoader:
    """4 scenes whose "metric cache" (DistanceReward's target) is the zero-noise candidate of anchor 1 + scene % 2."""
    features = _features(planner.config.bev_channels, b=4)
    with torch.no_grad():
        candidates = planner(features, torch.zeros(planner.initial_noise_shape(4))).candidates
    items = []
    for i in range(4):
        one = PlannerInput(features.bev[i], features.ego_status[i], features.agents[i], features.agents_mask[i])
        target = candidates[i, 1 + i % 2].numpy()
        items.append({"features": one, "trajectory": target, "token": str(i), "metric_cache": target})
    return DataLoader(items, batch_size=2, shuffle=False, collate_fn=collate)  # type: ignore[arg-type]


def test_anchor_choice_on_fresh_noise_trains_only_the_choice_and_resumes_exactly(tmp_path: Path) -> None:
    """``mode_noise: sampled`` draws each step's start noise from the rollout generator: a run killed after its first
    epoch and resumed from its checkpoint lands on the same weights as a run that never stopped, and only the
    anchor-score head moves away from the start."""

    def module(seed: int) -> RLModule:
        torch.manual_seed(seed)
        return RLModule(
            planner=tiny_generator(),
            reward=DistanceReward(),
            trainable=["cls_head"],
            num_samples=4,
            mode_weight=1.0,
            mode_reward="candidates",
            mode_noise="sampled",
            lr=1e-2,
            log_kl=False,
        )

    trainer_args: dict[str, Any] = dict(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, max_epochs=2,
    )  # fmt: skip
    continuous = module(0)
    start = {name: value.clone() for name, value in continuous.planner.state_dict().items()}
    data = _choice_loader(continuous.planner)  # type: ignore[arg-type]
    pl.Trainer(default_root_dir=tmp_path / "a", enable_checkpointing=False, **trainer_args).fit(continuous, data)
    moved = {name for name, value in continuous.planner.state_dict().items() if not torch.equal(value, start[name])}
    assert moved and all("cls_head" in name for name in moved)

    killed = module(0)
    trainer = pl.Trainer(
        default_root_dir=tmp_path / "b", enable_checkpointing=False, callbacks=[StopAfterFirstEpoch()], **trainer_args
    )
    trainer.fit(killed, data)
    trainer.save_checkpoint(tmp_path / "b" / "last.ckpt")
    resumed = module(1)  # other weights: everything comes from the checkpoint, the generator's state included
    pl.Trainer(default_root_dir=tmp_path / "c", enable_checkpointing=False, **trainer_args).fit(
        resumed, data, ckpt_path=tmp_path / "b" / "last.ckpt"
    )
    assert resumed.global_step == continuous.global_step == 4
    for (name, a), b in zip(continuous.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_rollout_false_trains_the_choice_as_the_full_step_does_without_its_rollout(tmp_path: Path) -> None:
    """With ``cls_head`` alone trainable the sample objective gives it no gradient: ``rollout: False`` lands on the
    full step's weights (zero start noise, so no random draw differs), with one reward call per step instead of
    two."""

    def fit(rollout: bool) -> tuple[RLModule, int]:
        torch.manual_seed(0)
        reward = DistanceReward()
        module = RLModule(
            planner=tiny_generator(),
            reward=reward,
            trainable=["cls_head"],
            num_samples=4,
            mode_weight=1.0,
            mode_reward="candidates",
            rollout=rollout,
            lr=1e-2,
            log_kl=False,
        )
        trainer = pl.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, max_epochs=2, default_root_dir=tmp_path / str(rollout),
            enable_checkpointing=False,
        )  # fmt: skip
        trainer.fit(module, _choice_loader(module.planner))  # type: ignore[arg-type]
        return module, reward.calls

    full, full_calls = fit(True)
    alone, alone_calls = fit(False)
    assert (full_calls, alone_calls) == (8, 4)  # 4 steps
    for (name, a), b in zip(full.planner.state_dict().items(), alone.planner.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    moved = [n for n, p in alone.planner.named_parameters() if p.requires_grad]
    assert moved and all("cls_head" in n for n in moved)
