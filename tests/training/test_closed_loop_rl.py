"""TC-GRPO pieces on hand-built cases (group advantages, the commitment of a selection for k steps, the held plan,
branching, the loss) and one closed-loop RL step of the module on a tiny batch of the fixture city."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "bev_warp"))
from closed_loop_fixtures import tiny_pair  # noqa: E402
from scenes import eastbound, fixture_map  # noqa: E402

from bev_warp.env import BEVWarpEnv, EnvConfig  # noqa: E402
from simulation.datasets.testing import write_fixture_data  # noqa: E402
from simulation.features import PlannerInput  # noqa: E402
from training.callbacks import BEVWarpEvalCallback, CallbackConfigError  # noqa: E402
from training.closed_loop_rl import ClosedLoopRLModule  # noqa: E402
from training.closed_loop_rl_core import (  # noqa: E402
    branch,
    closed_loop_rollout,
    commitment_schedule,
    ddv2_group_advantages,
    episode_failures,
    episode_returns,
    group_advantages,
    held_plan,
    tcgrpo_loss,
)
from training.closed_loop_rl_data import ScenarioDataModule  # noqa: E402

NONE = EnvConfig(observation="none")


def _straight(speed: float) -> torch.Tensor:
    t = torch.arange(1, 9, dtype=torch.float64) * 0.5
    return torch.stack([speed * t, torch.zeros(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)], -1)


def test_group_advantages_normalise_within_each_group_of_g() -> None:
    returns = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    adv = group_advantages(returns, 4)
    std = math.sqrt(0.5 / 3)  # unbiased: deviations 0.5, -0.5, 0, 0
    expected = torch.tensor([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0, 0, 0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(adv, expected)
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(returns, 3)


def test_ddv2_group_advantages_by_hand() -> None:
    """Two groups of 4: returns normalised in the group, clipped at 0, and -1 for the failed episodes (an at-fault
    collision multiplier or drivable-area compliance below 1)."""
    returns = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.9, 0.9, 0.2, 0.9], dtype=torch.float64)
    metrics = {
        "no_ego_at_fault_collisions": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0]),
        "drivable_area_compliance": torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
        "score": returns.float(),
    }
    failure = episode_failures(metrics)
    assert failure.tolist() == [False, True, False, True, False, False, True, False]
    adv = ddv2_group_advantages(returns, failure, 4, eps=0.0)
    z1 = 0.5 / math.sqrt(0.5 / 3)  # group 1: mean 0.5, deviations 0.5, -0.5, 0, 0
    z2 = 0.175 / math.sqrt((3 * 0.175**2 + 0.525**2) / 3)  # group 2: mean 0.725
    expected = torch.tensor([z1, -1.0, 0.0, -1.0, z2, z2, -1.0, z2], dtype=torch.float64)
    torch.testing.assert_close(adv, expected)
    with pytest.raises(ValueError, match="not episode metrics"):
        episode_failures({"score": returns}, ("no_ego_at_fault_collisions",))


def test_episode_returns_mix_the_metrics() -> None:
    metrics = {"score": torch.tensor([0.5, 1.0]), "collision": torch.tensor([True, False])}
    torch.testing.assert_close(episode_returns(metrics), torch.tensor([0.5, 1.0], dtype=torch.float64))
    mixed = episode_returns(metrics, {"score": 1.0, "collision": -0.5})
    torch.testing.assert_close(mixed, torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown metrics"):
        episode_returns(metrics, {"nope": 1.0})


def test_commitment_schedule() -> None:
    assert commitment_schedule(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert commitment_schedule(3, 1).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        commitment_schedule(3, 0)


def test_held_plan_continues_the_selected_trajectory_in_the_current_frame() -> None:
    plan = _straight(4.0)[None]  # 2 m per 0.5 s
    origin = torch.tensor([[10.0, 5.0, math.pi / 2]], dtype=torch.float64)  # heading north
    torch.testing.assert_close(held_plan(plan, origin, origin, 0.0), plan)
    # 0.5 s later the ego is 2 m north and 0.3 m east (to its right) of the origin, turned by 0.1 rad to the left
    ego = torch.tensor([[10.3, 7.0, math.pi / 2 + 0.1]], dtype=torch.float64)
    out = held_plan(plan, origin, ego, 0.5)[0]
    # the plan's poses at 1.0 .. 4.5 s (the last one past its end, at its last segment's speed), north of the origin
    north = 2.0 * torch.arange(2, 10, dtype=torch.float64)
    gx, gy = torch.full_like(north, 10.0), 5.0 + north
    c, s = math.cos(ego[0, 2]), math.sin(ego[0, 2])
    dx, dy = gx - 10.3, gy - 7.0
    torch.testing.assert_close(out[:, 0], c * dx + s * dy)
    torch.testing.assert_close(out[:, 1], -s * dx + c * dy)
    torch.testing.assert_close(out[:, 2], torch.full_like(north, -0.1))
    # half an interval: halfway between the plan's poses
    half = held_plan(plan, origin, origin, 0.25)[0]
    torch.testing.assert_close(half[:, 0], 1.0 + 2.0 * torch.arange(1, 9, dtype=torch.float64))


def test_tcgrpo_loss_applies_the_episode_advantage_to_each_of_its_decisions() -> None:
    old = torch.full((4, 2), math.log(0.5), dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64)
    valid = torch.tensor([[True, True], [True, False], [True, True], [False, False]])
    lp = old.clone().requires_grad_(True)
    loss, stats = tcgrpo_loss(lp, old, adv, valid, group_size=2, ref_log_prob=old, kl_coef=0.1)
    loss.backward()
    # on-policy: ratio 1, per episode the mean over its valid decisions, then the mean over the 3 episodes with any
    assert float(loss.detach()) == pytest.approx(-(1.0 - 1.0 + 2.0) / 3)
    assert lp.grad is not None
    expected = torch.tensor([[-0.5, -0.5], [1.0, 0.0], [-1.0, -1.0], [0.0, 0.0]], dtype=torch.float64) / 3
    torch.testing.assert_close(lp.grad, expected)
    assert float(stats["kl"]) == 0.0 and float(stats["clip_frac"]) == 0.0
    # a ratio beyond 1 + eps on a positive advantage is clipped: no gradient there
    lp2 = (old + torch.tensor([[math.log(1.5), 0.0], [0, 0], [0, 0], [0, 0]])).requires_grad_(True)
    loss2, stats2 = tcgrpo_loss(lp2, old, adv, valid, group_size=2)
    loss2.backward()
    assert lp2.grad is not None and float(lp2.grad[0, 0]) == 0.0 and float(lp2.grad[0, 1]) == pytest.approx(-0.5 / 3)
    assert float(stats2["clip_frac"]) == pytest.approx(1 / 5)


def test_branch_repeats_each_episode_in_place_of_resetting_it() -> None:
    scenes = [eastbound(token="a"), eastbound(speed=6.0, token="b", obstacle_x=10.0)]
    env = BEVWarpEnv(NONE)
    branched = branch(env, scenes, [fixture_map()] * 2, 3)
    reset = env.reset([s for s in scenes for _ in range(3)], fixture_map())
    assert branched.episodes.tokens == ("a", "a", "a", "b", "b", "b")
    plans = torch.stack([_straight(v) for v in (2.0, 6.0, 10.0, 2.0, 6.0, 10.0)])
    for _ in range(4):
        branched, r1, _, _ = env.step(branched, plans)
        reset, r2, _, _ = env.step(reset, plans)
        torch.testing.assert_close(r1, r2)
    torch.testing.assert_close(branched.ego, reset.ego)
    assert branched.done.tolist() == reset.done.tolist()


def test_a_selection_is_held_for_k_steps() -> None:
    """Decisions at steps 0 and 3 only (k = 3); in between, the plan driven is the held candidate continued."""
    env = BEVWarpEnv(NONE)
    state = env.reset([eastbound(frames=81), eastbound(frames=81, token="b")], fixture_map())
    speeds = torch.tensor([2.0, 8.0, 14.0])
    candidates = torch.stack([_straight(float(v)) for v in speeds])[None].repeat(2, 1, 1, 1)  # (2, 3, 8, 3)
    picks = iter([torch.tensor([2, 0]), torch.tensor([0, 1])])
    calls: list[int] = []
    driven: list[tuple[torch.Tensor, torch.Tensor]] = []
    step = env.step

    def recording_step(s, plans, failed=None):  # type: ignore[no-untyped-def]
        driven.append((s.ego[:, :3].clone(), plans.clone()))
        return step(s, plans, failed)

    env.step = recording_step  # type: ignore[method-assign]
    inputs = PlannerInput(torch.zeros(2, 1, 1, 1), torch.zeros(2, 8), torch.zeros(2, 1, 9), torch.zeros(2, 1).bool())

    def select(features, cands, mask):  # type: ignore[no-untyped-def]
        calls.append(len(driven))
        action = next(picks)
        return action, torch.log(torch.full((2,), 1 / 3)), torch.zeros(2, dtype=torch.long)

    rollout = closed_loop_rollout(
        env, state, lambda s: inputs, lambda f: (candidates, torch.ones(2, 3, dtype=torch.bool)), select, 6, 3
    )
    assert calls == [0, 3] and [d.step for d in rollout.decisions] == [0, 3] and rollout.steps == 6
    assert [d.action.tolist() for d in rollout.decisions] == [[2, 0], [0, 1]]
    for j in (0, 1, 2):  # the first selection (14 m/s, 2 m/s), held and continued
        ego, plans = driven[j]
        origin = driven[0][0]
        torch.testing.assert_close(plans, held_plan(candidates[[0, 1], [2, 0]], origin, ego, 0.5 * j))
    torch.testing.assert_close(driven[3][1], candidates[[0, 1], [0, 1]])  # a new decision: the candidate as it is
    assert rollout.frames[:, -1].tolist() == [30, 30] and rollout.conflict.shape == (2, 6)
    # the episode that held 14 m/s went further than the one that held 2 m/s
    assert float(rollout.metrics["progress_m"][0]) > float(rollout.metrics["progress_m"][1]) + 5.0
    assert rollout.decisions[1].frame.tolist() == [15, 15] and rollout.decisions[1].expert.shape == (2, 8, 3)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("closed_loop_city")
    for split in ("synth_train", "synth_val"):
        data_root, maps_root = write_fixture_data(root, split=split, duration_s=20.0, num_scenes=6)
    return {"data_root": str(data_root), "maps_root": str(maps_root)}


@pytest.mark.parametrize(("ogo", "speed_scales"), [(False, None), (True, None), (False, [0.5, 0.0])])
def test_one_closed_loop_step_trains_the_discriminator_only(
    city: dict[str, str], ogo: bool, speed_scales: list[float] | None
) -> None:
    """Loss finite, gradients on the discriminator (and with OGO on the generator), the reference unchanged."""
    data = ScenarioDataModule(**city, batch_size=1, duration_s=3.0, spacing_s=2.0, max_scenarios=1)
    pair = tiny_pair()
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    module = ClosedLoopRLModule(
        planner=pair, group_size=4, commit_steps=2, horizon=3, temperature=0.02,
        returns={"score": 1.0, "progress_m": 0.1}, speed_scales=speed_scales,
        ogo={"enabled": ogo, "every_n_steps": 1, "min_advantage": -1e9, "min_future_s": 0.5},
    )  # fmt: skip
    assert module.planner.config.speed_scales == (speed_scales or []) and pair.config.speed_scales == []
    reference = {k: v.clone() for k, v in module.reference.state_dict().items()}
    trainer = pl.Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, data)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and float(metrics["train/adv_std"]) > 0
    assert float(metrics["train/ratio_mean"]) == pytest.approx(1.0)
    grads = [p.grad for p in module.discriminator.parameters()]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    for name, value in module.reference.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0)
    generator = dict(module.planner.generator.named_parameters())
    if not ogo:
        assert all(p.grad is None and not p.requires_grad for p in generator.values())
        for name, value in module.planner.generator.state_dict().items():
            torch.testing.assert_close(value, before[f"generator.{name}"], rtol=0, atol=0)
    else:
        assert float(metrics["train/ogo_targets"]) > 0 and torch.isfinite(metrics["train/ogo_loss"])
        assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in generator.values())


def test_scenarios_every_stride_th_then_the_limit(city: dict[str, str]) -> None:
    def tokens(**kwargs: int) -> list[str]:
        data = ScenarioDataModule(**city, duration_s=3.0, spacing_s=1.0, **kwargs)  # type: ignore[arg-type]
        return [s.token for s in data.dataset("train").scenarios]

    every = tokens()
    assert len(every) >= 4 and tokens(stride=2) == every[::2] and tokens(stride=2, max_scenarios=2) == every[:4:2]
    batch = next(iter(ScenarioDataModule(**city, duration_s=3.0, spacing_s=1.0, batch_size=2).train_dataloader()))
    assert len(batch["scenes"]) == len(batch["maps"]) == 2 and batch["tokens"] == [s.token for s in batch["scenes"]]


def test_the_module_uses_the_configured_advantage() -> None:
    metrics = {
        "no_ego_at_fault_collisions": torch.tensor([1.0, 0.0, 1.0, 1.0]),
        "drivable_area_compliance": torch.ones(4),
        "progress_m": torch.tensor([10.0, 30.0, 5.0, 1.0]),
    }
    returns = torch.tensor([1.0, 0.0, 0.25, 0.25], dtype=torch.float64)
    grpo = ClosedLoopRLModule(planner=tiny_pair(), group_size=4)
    torch.testing.assert_close(grpo.advantages(metrics, returns), group_advantages(returns, 4))
    ddv2 = ClosedLoopRLModule(planner=tiny_pair(), group_size=4, advantage="ddv2")
    adv = ddv2.advantages(metrics, returns)
    assert adv[1] == -1.0 and adv[0] > 0 and adv[2] == adv[3] == 0.0  # the slow safe ones are left alone
    by_progress = ClosedLoopRLModule(planner=tiny_pair(), group_size=4, advantage="ddv2", failure_metrics=[])
    assert bool((by_progress.advantages(metrics, returns) >= 0).all())  # no failure metric: nothing gets -1
    with pytest.raises(ValueError, match="advantage must be"):
        ClosedLoopRLModule(planner=tiny_pair(), group_size=4, advantage="gdpo")  # type: ignore[arg-type]


def test_validation_writes_one_row_per_episode_matching_the_logged_means(city: dict[str, str], tmp_path: Path) -> None:
    """``val_episodes``: each scenario's metrics, whose means are the logged ``val/*`` values (paired comparisons)."""
    data = ScenarioDataModule(**city, batch_size=2, duration_s=3.0, spacing_s=2.0, max_val_scenarios=3)
    csv = tmp_path / "eval" / "episodes.csv"
    module = ClosedLoopRLModule(planner=tiny_pair(), group_size=2, horizon=3, val_episodes=str(csv))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.validate(module, data, verbose=False)
    lines = csv.read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    tokens = [s.token for s in data.dataset("val").scenarios]
    assert header[0] == "token" and "score" in header and "return" in header
    assert [r[0] for r in rows] == tokens and len(tokens) == 3  # two batches, every scenario once, in order
    for name in ("score", "progress_m", "no_ego_at_fault_collisions"):
        values = [float(r[header.index(name)]) for r in rows]
        assert sum(values) / len(values) == pytest.approx(float(trainer.callback_metrics[f"val/{name}"]), abs=1e-5)
    trainer.validate(module, data, verbose=False)  # a second run rewrites the file, it does not append
    assert len(csv.read_text().splitlines()) == 4


def test_the_bev_warp_eval_callback_is_the_tcgrpo_validation(city: dict[str, str]) -> None:
    """The callback (a supervised discriminator's closed-loop validation) gives a TC-GRPO run's ``val/*`` for the same
    pair and scenarios, leaves the global random state and every module's mode as they were, and names bad input."""
    env = {"replan_interval_s": 0.5, "terminate_on": []}
    data = ScenarioDataModule(**city, batch_size=2, duration_s=3.0, spacing_s=2.0, max_val_scenarios=3)
    module = ClosedLoopRLModule(planner=tiny_pair(), group_size=2, horizon=3, env=env)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.validate(module, data, verbose=False)
    callback = BEVWarpEvalCallback(
        duration_s=3.0, spacing_s=2.0, max_scenarios=3, batch_size=2, horizon=3, env=env, prefix="cl"
    )
    callback.setup(SimpleNamespace(datamodule=SimpleNamespace(**city)), module, "validate")  # type: ignore[arg-type]
    assert [s.token for s in callback.dataset.scenarios] == [s.token for s in data.dataset("val").scenarios]
    pair = module.planner
    pair.train()
    pair.generator.eval()
    modes = {m: m.training for m in pair.modules()}
    rng = torch.get_rng_state()
    metrics = callback.evaluate(pair)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {m: m.training for m in pair.modules()} == modes and pair.training and not pair.generator.training
    assert len(callback.last_metrics["score"]) == 3
    for name in ("score", "progress_m", "no_ego_at_fault_collisions", "ego_is_comfortable"):
        assert metrics[f"cl/{name}"] == pytest.approx(float(trainer.callback_metrics[f"val/{name}"]), abs=1e-5)
    assert callback.evaluate(pair) == metrics  # seeded: the same pair scores the same
    with pytest.raises(CallbackConfigError, match="RerankedPlanner"):
        callback.evaluate(pair.generator)
    with pytest.raises(CallbackConfigError, match="data_root"):
        BEVWarpEvalCallback().setup(SimpleNamespace(datamodule=None), module, "fit")  # type: ignore[arg-type]
