"""A generator + discriminator pair as one learned planner: the generator proposes, the discriminator picks.

Per scene the candidates are, in this order,

1. the generator's own candidates (``forward``: the truncated planner's denoised anchors, the masked planner's
   goal candidates), when ``own_candidates``;
2. ``num_samples`` samples of the generator's policy :meth:`~planners.policy.PlanningPolicy.rollout` (seeded by
   ``seed`` at every call, so the same scene gives the same plan), when ``num_samples > 0``;
3. for each factor of ``speed_scales``, every candidate above driven at that fraction of its own speed along its own
   path (:func:`slowed`; 0 stands still), when given: the slower choices a rule-based planner's proposals offer
   (PDM-Closed's speed-limit fractions), so that the discriminator can brake on a generator's path.

The discriminator scores them all and the pair drives the best pickable one (:class:`~planners.base.PlanOutput`
with every candidate and its score). A candidate is pickable when it is finite and, with ``max_reverse`` set, never
moves backwards along its own heading by more than ``max_reverse`` metres between two poses
(:func:`forward_mask`): a generator's candidate set holds a few such plans (the denoised anchors that imitation never
regressed), one-shot scores do not penalise them, and in closed loop, replanned at 10 Hz, they drive the car
backwards. A scene whose candidates all reverse keeps them all.

The pair's checkpoint embeds the generator (its class, config and weights) next to the discriminator, so
:func:`planners.checkpoint.load_planner` rebuilds the whole planner from one file.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from planners.adapter import LearnedPlanner
from planners.base import PlanOutput
from planners.checkpoint import CheckpointError, load_planner
from planners.discriminator import Discriminator
from planners.policy import PlanningPolicy, as_policy
from simulation.features import PlannerInput, raster_from_meta

_PLANNER_PACKAGE = "planners."


@dataclass
class RerankedConfig:
    """What the pair's checkpoint stores to rebuild it.

    Attributes:
        generator_class: dotted path of the generator class (inside the ``planners`` package).
        generator_config: its config (``config.to_dict()``), ``None`` for defaults.
        discriminator: :class:`~planners.discriminator.DiscriminatorConfig` fields.
        num_samples: policy samples per scene (0: only the generator's own candidates).
        own_candidates: score the generator's own candidates (``forward``) too.
        policy: how the generator samples (:func:`planners.policy.as_policy` options).
        seed: seed of the policy samples, drawn afresh at every call.
        generator_ckpt: the checkpoint the generator came from (a record; the weights are embedded).
        scorer_class: dotted path of the scorer's class (a :class:`~planners.discriminator.Discriminator`, or a
            subclass such as :class:`~planners.reward_model.RewardModel`), built from ``discriminator``.
        max_reverse: metres a pickable candidate may move backwards between two poses (``None``: no limit).
        speed_scales: the speed fractions of the slowed copies of every candidate (empty: none).
    """

    generator_class: str
    generator_config: dict[str, Any] | None = None
    discriminator: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 0
    own_candidates: bool = True
    policy: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    generator_ckpt: str | None = None
    scorer_class: str = "planners.discriminator.Discriminator"
    max_reverse: float | None = 0.1
    speed_scales: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def generator_fields(generator: nn.Module) -> dict[str, Any]:
    """``generator_class`` and ``generator_config`` of a :class:`RerankedConfig` describing ``generator``."""
    cls = type(generator)
    config = getattr(generator, "config", None)
    return {
        "generator_class": f"{cls.__module__}.{cls.__qualname__}",
        "generator_config": config.to_dict() if config is not None and hasattr(config, "to_dict") else None,
    }


def forward_mask(candidates: torch.Tensor, max_reverse: float) -> torch.Tensor:
    """``(B, K)`` bool, ``True`` where a candidate ``(B, K, N, 3)`` (ego frame, starting from the origin with heading
    0) never moves backwards by more than ``max_reverse`` metres between two consecutive poses, measured along the
    heading of the earlier pose. Non-finite candidates are ``False``."""
    origin = torch.zeros_like(candidates[..., :1, :])
    previous = torch.cat([origin, candidates[..., :-1, :]], dim=-2)
    step = candidates[..., :2] - previous[..., :2]
    along = step[..., 0] * torch.cos(previous[..., 2]) + step[..., 1] * torch.sin(previous[..., 2])
    return (along >= -max_reverse).all(-1) & torch.isfinite(candidates).all(-1).all(-1)


def check_speed_scales(scales: Sequence[float]) -> None:
    """Raise ``ValueError`` unless every factor of ``scales`` lies in [0, 1]."""
    if any(not 0.0 <= c <= 1.0 for c in scales):
        raise ValueError(f"speed scales must lie in [0, 1], got {list(scales)}")


def slowed(candidates: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Each candidate ``(B, K, N, 3)`` (ego frame, from the origin) at a fraction of its own speed along its own path:
    pose ``i`` of the copy at scale ``c`` is the candidate's pose at arc length ``c * s_i``, ``s_i`` the arc length
    of its pose ``i`` from the origin (linear between poses, heading included; where the path stands still, the
    first pose at that spot; 0 stands at the origin).
    Returns ``(B, K * len(scales), N, 3)``, the copies of one scale after another."""
    check_speed_scales(scales)
    b, k, n, _ = candidates.shape
    path = torch.cat([torch.zeros_like(candidates[..., :1, :]), candidates], dim=-2)  # (B, K, N + 1, 3)
    step = path[..., 1:, :2] - path[..., :-1, :2]
    station = torch.cat([torch.zeros_like(path[..., :1, 0]), step.norm(dim=-1).cumsum(-1)], dim=-1)
    turn = torch.diff(path[..., 2], dim=-1)
    heading = torch.cat([path[..., :1, 2], torch.atan2(torch.sin(turn), torch.cos(turn)).cumsum(-1)], dim=-1)
    values = torch.stack([path[..., 0], path[..., 1], heading], dim=-1)  # (B, K, N + 1, 3), heading unwrapped
    copies = []
    for scale in scales:
        s = scale * station[..., 1:]
        j = (torch.searchsorted(station.contiguous(), s.contiguous()) - 1).clamp(0, n - 1)
        s0, s1 = station.gather(-1, j), station.gather(-1, j + 1)
        w = ((s - s0) / (s1 - s0).clamp_min(1e-9)).clamp(0.0, 1.0)[..., None]
        v0 = values.gather(-2, j[..., None].expand(-1, -1, -1, 3))
        v1 = values.gather(-2, (j + 1)[..., None].expand(-1, -1, -1, 3))
        pose = v0 + w * (v1 - v0)
        copies.append(torch.cat([pose[..., :2], torch.atan2(torch.sin(pose[..., 2:]), torch.cos(pose[..., 2:]))], -1))
    return torch.cat(copies, dim=1) if copies else candidates[:, :0]


def _build_generator(cls_path: str, config: Mapping[str, Any] | None) -> nn.Module:
    if not cls_path.startswith(_PLANNER_PACKAGE):
        raise CheckpointError(f"generator class {cls_path!r} is not a class of the planners package")
    module_name, _, name = cls_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    return cls.from_config_dict(dict(config)) if config is not None else cls()  # type: ignore[no-any-return]


class RerankedPlanner(nn.Module):
    """Generator + discriminator, one planner (see the module docstring).

    Args:
        generator: a learned planner (``forward(inputs, noise) -> PlanOutput``; for ``num_samples > 0`` also the
            policy API).
        discriminator: scores the candidates.
        config: the pair's settings; built from ``generator`` / ``discriminator`` when ``None``.
    """

    def __init__(
        self, generator: nn.Module, discriminator: Discriminator, config: RerankedConfig | None = None
    ) -> None:
        super().__init__()
        scorer = f"{type(discriminator).__module__}.{type(discriminator).__qualname__}"
        config = config or RerankedConfig(
            **generator_fields(generator), discriminator=discriminator.config.to_dict(), scorer_class=scorer
        )
        check_speed_scales(config.speed_scales)  # a bad factor fails here, not mid-benchmark
        self.config = config
        self.generator = generator
        self.discriminator = discriminator
        self.raster_config: dict[str, Any] | None = getattr(generator, "raster_config", None)
        # the policy wrapper shares the generator's parameters: kept out of the module tree
        object.__setattr__(self, "_policy", as_policy(generator, config.policy) if config.num_samples else None)

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> RerankedPlanner:
        """Rebuild from a stored config (generator and discriminator weights come with the state dict)."""
        rc = RerankedConfig(**dict(config))
        generator = _build_generator(rc.generator_class, rc.generator_config)
        scorer = _build_generator(rc.scorer_class, rc.discriminator)
        if not isinstance(scorer, Discriminator):
            raise CheckpointError(f"scorer class {rc.scorer_class!r} is not a Discriminator")
        return cls(generator, scorer, rc)

    @property
    def policy(self) -> PlanningPolicy | None:
        return self.__dict__["_policy"]  # type: ignore[no-any-return]

    def initial_noise_shape(self, batch: int) -> tuple[int, ...]:
        """The generator's noise shape (the closed-loop adapter draws it)."""
        return tuple(self.generator.initial_noise_shape(batch))  # type: ignore[operator]

    def propose(
        self,
        inputs: PlannerInput[torch.Tensor],
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates ``(B, K, 8, 3)`` (see the module docstring) and the index ``(B,)`` of the generator's own
        pick among them (``-1`` when its candidates are left out), without gradients."""
        parts: list[torch.Tensor] = []
        b, device = inputs.batch_size, inputs.ego_status.device
        own = torch.full((b,), -1, dtype=torch.long, device=device)
        with torch.no_grad():
            if self.config.own_candidates:
                out: PlanOutput = self.generator(inputs, noise)
                cands = out.trajectory[:, None] if out.candidates is None else out.candidates
                own = (cands - out.trajectory[:, None]).abs().flatten(2).sum(-1).argmin(-1)
                parts.append(cands)
            if self.config.num_samples > 0:
                assert self.policy is not None
                if generator is None:
                    generator = torch.Generator(device=device).manual_seed(self.config.seed)
                parts.append(self.policy.rollout(inputs, self.config.num_samples, generator).plans)
        if not parts:
            raise ValueError("the pair has no candidates: set own_candidates or num_samples > 0")
        candidates = torch.cat(parts, dim=1)
        if self.config.speed_scales:
            candidates = torch.cat([candidates, slowed(candidates, self.config.speed_scales)], dim=1)
        return candidates, own

    def pickable(self, candidates: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` bool: the candidates the pair may drive (see the module docstring)."""
        finite = torch.isfinite(candidates).all(-1).all(-1)
        if self.config.max_reverse is None:
            return finite
        forward = forward_mask(candidates, float(self.config.max_reverse))
        return torch.where(forward.any(-1, keepdim=True), forward, finite)

    def forward(self, inputs: PlannerInput[torch.Tensor], noise: torch.Tensor | None = None) -> PlanOutput:
        """The discriminator's pick among the pickable candidates: ``PlanOutput(trajectory (B,8,3), candidates
        (B,K,8,3), scores (B,K))``."""
        candidates, _ = self.propose(inputs, noise)
        out = self.discriminator(inputs, candidates, self.pickable(candidates))
        trajectory = candidates[torch.arange(candidates.shape[0], device=candidates.device), out.best]
        return PlanOutput(trajectory=trajectory, candidates=candidates, scores=out.scores)


def reranked_planner(
    ckpt_path: str,
    generator_ckpt: str | None = None,
    num_samples: int | None = None,
    own_candidates: bool | None = None,
    seed: int = 0,
    name: str = "reranked",
    max_reverse: float | None = 0.1,
    speed_scales: Sequence[float] | None = None,
) -> LearnedPlanner:
    """A closed-loop planner (``planner=reranked``) from a discriminator checkpoint (``diffplan fit --config
    configs/train/discriminator.yaml``), which embeds its generator.

    Args:
        generator_ckpt: drive another generator (a learned planner checkpoint) with this discriminator.
        num_samples, own_candidates: override the stored candidate settings (``None``: as trained).
        seed: seed of the generator's noise and policy samples.
        max_reverse: metres a pickable candidate may move backwards between two poses (``None``: no limit).
        speed_scales: add every candidate's slowed copies at these speed fractions (:func:`slowed`; ``None``: as
            trained, ``[]``: none).
    """
    pair = load_planner(ckpt_path, expect_class="RerankedPlanner")
    if not isinstance(pair, RerankedPlanner):
        raise CheckpointError(f"{ckpt_path}: holds a {type(pair).__name__}, expected a RerankedPlanner")
    config = pair.config
    generator = pair.generator
    if generator_ckpt is not None:
        generator = load_planner(generator_ckpt)
        config = replace(config, **generator_fields(generator), generator_ckpt=generator_ckpt)
    if num_samples is not None:
        config.num_samples = num_samples
    if own_candidates is not None:
        config.own_candidates = own_candidates
    config.seed = seed
    config.max_reverse = max_reverse
    if speed_scales is not None:
        config.speed_scales = [float(c) for c in speed_scales]
    rebuilt = RerankedPlanner(generator, pair.discriminator, config).eval()
    rebuilt.raster_config = pair.raster_config if generator_ckpt is None else getattr(generator, "raster_config", None)
    return LearnedPlanner(rebuilt, name=name, raster=raster_from_meta(rebuilt.raster_config), seed=seed)
