"""What the RL module needs around the policy: the reward contract, rewards as tensors, scene subsets and the
exploration spread of a rollout.

The reward object follows ``rewards.composite`` (``RuleReward``, ``MixedReward``): it has ``names`` (sub-reward
names), ``version``, ``score(metric_caches, plans) -> RewardBatch`` and, optionally,
``submit(metric_caches, plans) -> Future[RewardBatch]`` that scores in a process pool while the caller goes on.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from planners.checkpoint import CHECKPOINT_KEY, planner_header
from planners.policy import as_policy
from simulation.features import PlannerInput

#: How the reward is built when the config does not say (``rewards.composite.RuleReward`` arguments).
DEFAULT_REWARD: dict[str, Any] = {"version": "v1", "num_workers": 0}
REWARD_MODULE = "rewards.composite"

logger = logging.getLogger(__name__)


class RewardBatchLike(Protocol):
    """``total (B, N)`` in [0, 1] and ``terms[name] (B, N)`` (numpy), as ``rewards.composite.RewardBatch``."""

    total: np.ndarray
    terms: dict[str, np.ndarray]


@runtime_checkable
class RewardLike(Protocol):
    """A reward over ``(B, N, 8, 3)`` plans of ``B`` scenes, scored on each scene's metric cache."""

    names: Sequence[str]
    version: str

    def score(self, metric_caches: Sequence[Any], plans: np.ndarray) -> RewardBatchLike: ...


def build_reward(spec: RewardLike | Mapping[str, Any] | None) -> RewardLike:
    """The reward object of a config entry.

    ``None`` or a dict of ``RuleReward`` arguments (``{version: v1, num_workers: 0}``) builds a
    ``rewards.composite.RuleReward``; a dict with ``class_path`` (and ``init_args``) builds that class; a reward
    object is returned as it is. A dict with ``learned`` (:func:`training.reward_model.load_learned_reward`
    arguments: ``checkpoint``, ``temperature``, ``device``) adds the learned reward of that checkpoint, mixed with
    the rule reward by ``weights`` (``{rule: w_r, learned: w_l}``, default ``{rule: 0, learned: 1}``: the learned
    reward alone; a ``rewards.composite.MixedReward`` when both weigh), the learned one under the rule reward's
    ``version``.
    """
    if spec is not None and not isinstance(spec, Mapping):
        return spec
    spec = dict(DEFAULT_REWARD if spec is None else spec)
    if "class_path" in spec:
        module_name, _, cls_name = str(spec["class_path"]).rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        return cls(**dict(spec.get("init_args") or {}))  # type: ignore[no-any-return]
    learned, weights = spec.pop("learned", None), {"rule": 0.0, "learned": 1.0, **dict(spec.pop("weights", None) or {})}
    composite = importlib.import_module(REWARD_MODULE)
    if learned is None:
        return composite.RuleReward(**spec)  # type: ignore[no-any-return]
    unknown = sorted(set(weights) - {"rule", "learned"})
    if unknown:
        raise ValueError(f"reward weights name {unknown}; only 'rule' and 'learned' are mixed")
    options = dict(learned)
    options.setdefault("version", spec.get("version", DEFAULT_REWARD["version"]))
    model = importlib.import_module("training.reward_model").load_learned_reward(**options)
    if float(weights["rule"]) == 0:
        return model  # type: ignore[no-any-return]
    rule = composite.RuleReward(**spec)
    return composite.MixedReward([(float(weights["rule"]), rule), (float(weights["learned"]), model)])  # type: ignore[no-any-return]


def rule_reward_of(reward: RewardLike) -> RewardLike:
    """The rule-based scorer behind ``reward`` (what validation scores with): the first component of a
    ``MixedReward`` that is not learned, a new ``RuleReward`` of its version for a learned reward alone, else
    ``reward`` itself."""
    composite = importlib.import_module(REWARD_MODULE)
    from rewards.learned import LearnedReward

    rules = [part for part in getattr(reward, "rewards", []) if not isinstance(part, LearnedReward)]
    if rules:
        return rules[0]  # type: ignore[no-any-return]
    if isinstance(reward, LearnedReward) or isinstance(reward, composite.MixedReward):
        return composite.RuleReward(version=reward.version)  # type: ignore[no-any-return]
    return reward


def takes_features(reward: Any) -> bool:
    """Whether ``reward.score`` has a ``features`` parameter (a learned reward reads the scenes' features)."""
    try:
        return "features" in inspect.signature(reward.score).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class TensorRewards:
    """Rewards of one rollout as tensors on the policy's device.

    Attributes:
        total: ``(B, N)`` float32.
        terms: ``(B, N)`` float32 per sub-reward name.
        total_gt: ``(B,)`` reward of each scene's ground-truth plan, or ``None`` when it was not scored.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    total_gt: torch.Tensor | None = None


class SeededCheckpointMixin:
    """What a LightningModule that draws random numbers and ships a planner shares: the seeded generator on the
    module's device, and the checkpoint hooks that store the planner's record (:mod:`planners.checkpoint` loads the
    checkpoint as a planner) and, under the class's ``STATE_KEY``, the generator's state and the step counter named
    by ``STEPS_ATTR`` (if any), so that ``--ckpt_path`` resumes the same draws. The module sets ``_generator = None``
    and ``_pending_rng_state = None`` in ``__init__``, has a ``planner`` and a ``seed`` hyper-parameter."""

    STATE_KEY: ClassVar[str]
    STEPS_ATTR: ClassVar[str | None] = None
    _generator: torch.Generator | None
    _pending_rng_state: torch.Tensor | None
    planner: Any
    hparams: Any
    device: torch.device
    global_rank: int

    def generator(self) -> torch.Generator:
        """The sampling generator on the module's device (seeded, or restored from the checkpoint)."""
        if self._generator is None or self._generator.device.type != self.device.type:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(self.hparams["seed"]) + self.global_rank)
            if self._pending_rng_state is not None:
                try:
                    gen.set_state(self._pending_rng_state)
                except RuntimeError:
                    logger.warning("sampling generator state from another device type; reseeded")
                self._pending_rng_state = None
            self._generator = gen
        return self._generator

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = planner_header(self.planner)
        state: dict[str, Any] = {"generator": self.generator().get_state()}
        if self.STEPS_ATTR is not None:
            state["steps"] = int(getattr(self, self.STEPS_ATTR))
        checkpoint[self.STATE_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(self.STATE_KEY)
        if state is None:
            return
        self._pending_rng_state = state["generator"]
        self._generator = None
        if self.STEPS_ATTR is not None:
            setattr(self, self.STEPS_ATTR, int(state["steps"]))


class SampledRewardMixin(SeededCheckpointMixin):
    """:class:`SeededCheckpointMixin` plus the reward: built on first use from ``self._reward_spec`` (the module sets
    ``_reward = None`` and ``_reward_spec`` in ``__init__``), its process pool closed at teardown."""

    _reward: RewardLike | None
    _reward_spec: Any

    @property
    def reward(self) -> RewardLike:
        """The reward object, built on first use (the module's ``reward`` argument)."""
        if self._reward is None:
            self._reward = build_reward(self._reward_spec)
        return self._reward

    def teardown(self, stage: str) -> None:
        close = getattr(self._reward, "close", None)
        if callable(close):
            close()


def to_tensors(rewards: RewardBatchLike, device: torch.device, with_gt: bool = False) -> TensorRewards:
    """``rewards`` as :class:`TensorRewards`; with ``with_gt`` the last sample of each scene is the ground truth's
    and is split off into ``total_gt``."""

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)

    total = tensor(rewards.total)
    terms = {k: tensor(v) for k, v in rewards.terms.items()}
    if not with_gt:
        return TensorRewards(total, terms)
    return TensorRewards(total[:, :-1], {k: v[:, :-1] for k, v in terms.items()}, total[:, -1])


def submit(
    reward: RewardLike, metric_caches: Sequence[Any], plans: np.ndarray, features: PlannerInput[Any] | None = None
) -> Future[RewardBatchLike]:
    """Start scoring ``plans (B, N, 8, 3)``: ``reward.submit`` when the reward has one, else scored now. ``features``
    (the scenes' planner input) is passed on to rewards whose ``score`` takes it."""
    kwargs = {"features": features} if features is not None and takes_features(reward) else {}
    submit_fn = getattr(reward, "submit", None)
    if callable(submit_fn):
        return submit_fn(metric_caches, plans, **kwargs)  # type: ignore[no-any-return]
    done: Future[RewardBatchLike] = Future()
    done.set_result(reward.score(metric_caches, plans, **kwargs))  # type: ignore[call-arg]
    return done


def select_scenes(
    features: PlannerInput[torch.Tensor], targets: Mapping[str, torch.Tensor], index: torch.Tensor
) -> tuple[PlannerInput[torch.Tensor], dict[str, torch.Tensor]]:
    """The scenes ``index`` (long ``(K,)``) of a batch: features and targets."""
    return features.apply(lambda t: t[index]), {k: v[index] for k, v in targets.items()}


def exploration_spread(plans: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Spread of the 4 s poses within each group of a rollout: the root-mean-square distance (m) of the last
    pose's (x, y) to its group's mean, averaged over the groups with at least two samples.

    Args:
        plans: ``(B, N, T, 3)`` sampled plans (the last pose is at 4 s).
        groups: ``(B, N)`` long group ids within a scene (``None``: the scene's samples are one group).

    Returns:
        A scalar tensor (0 when no group has two samples).
    """
    b, n = plans.shape[:2]
    xy = plans[:, :, -1, :2].reshape(-1, 2).to(torch.float64)
    if groups is None:
        groups = torch.zeros(b, n, dtype=torch.long, device=plans.device)
    scene = torch.arange(b, device=plans.device)[:, None]
    _, key = torch.unique((scene * (int(groups.max()) + 1) + groups).reshape(-1), return_inverse=True)
    k = int(key.max()) + 1
    count = torch.zeros(k, dtype=xy.dtype, device=xy.device).index_add_(0, key, torch.ones_like(xy[:, 0]))
    mean = torch.zeros(k, 2, dtype=xy.dtype, device=xy.device).index_add_(0, key, xy) / count[:, None]
    sq = ((xy - mean[key]) ** 2).sum(-1)
    rms = (torch.zeros_like(count).index_add_(0, key, sq) / count).sqrt()
    valid = count > 1
    return (rms * valid).sum() / valid.sum().clamp(min=1)


def make_policy(planner: torch.nn.Module, options: Mapping[str, Any] | None = None) -> Any:
    """The planner as a policy sampling as ``options`` say: :func:`planners.policy.as_policy`."""
    return as_policy(planner, options)
