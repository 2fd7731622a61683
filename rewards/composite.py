"""Reward vectors for RL: the benchmark's NAVSIM scorer on each scene's metric cache, and mixes of rewards.

A reward scores ``N`` candidate plans of each of ``B`` scenes, ``(B, N, 8, 3)`` local poses (x, y, heading) at
0.5 s in the current rear-axle frame, and returns a :class:`RewardBatch`: the aggregate ``total`` ``(B, N)`` in
[0, 1] and the sub-metrics behind it by the scorer's names.

:class:`RuleReward` is :class:`rewards.pdm.PDMScorer` (the scorer of ``diffplan bench``) with the benchmark's
``"pairwise"`` ego-progress normalisation: each candidate's progress is normalised against the scene's PDM-Closed
reference only, exactly as NAVSIM scores one plan, so the reward of a plan does not depend on the other plans of
its group. ``total`` is the PDMS (v1) or the EPDMS (v2, NAVSIM's human filter applied). A single plan has no
predecessor, so v2 has no extended comfort: its ``total`` is the EPDMS over the other weighted metrics
(denominator 14, the scorer's ``pdm_score``), as NAVSIM does for a row without a previous frame.

A plan with any non-finite value is invalid: its ``total`` and every term are 0 (and :func:`failure` is true).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from rewards.pdm import PDMScorer
from simulation.features import PlannerInput
from simulation.metric_cache import MetricCache

logger = logging.getLogger(__name__)

Version = Literal["v1", "v2"]
Backend = Literal["numpy", "torch"]

#: Terms of each version, by the scorer's sub-metric names (aggregation weights in :mod:`rewards.pdm`).
TERMS: dict[str, tuple[str, ...]] = {
    "v1": (
        "no_at_fault_collisions",
        "drivable_area_compliance",
        "driving_direction_compliance",
        "time_to_collision_within_bound",
        "ego_progress",
        "comfort",
    ),
    "v2": (
        "no_at_fault_collisions",
        "drivable_area_compliance",
        "driving_direction_compliance",
        "traffic_light_compliance",
        "time_to_collision_within_bound",
        "ego_progress",
        "lane_keeping",
        "history_comfort",
    ),
}
#: The scorer's key of each version's ``total`` (v2: the EPDMS without extended comfort).
TOTAL_KEY = {"v1": "score", "v2": "pdm_score"}
PLAN_SHAPE = (8, 3)


@dataclass(frozen=True)
class RewardBatch:
    """Rewards of ``N`` candidates of ``B`` scenes.

    Attributes:
        total: ``(B, N)`` float64 reward in [0, 1] (PDMS / EPDMS for :class:`RuleReward`).
        terms: ``{name: (B, N)}`` the sub-metrics behind ``total`` (0 for invalid plans).
    """

    total: np.ndarray
    terms: dict[str, np.ndarray]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.total.shape[0]), int(self.total.shape[1]))

    def validate(self) -> None:
        """Raise ``ValueError`` when ``total`` is not 2-D or a term's shape differs from it."""
        if self.total.ndim != 2:
            raise ValueError(f"reward total must be (B, N), got {self.total.shape}")
        for name, value in self.terms.items():
            if value.shape != self.total.shape:
                raise ValueError(f"reward term {name!r} has shape {value.shape}, total {self.total.shape}")


def failure(batch: RewardBatch) -> np.ndarray:
    """``(B, N)`` bool: an at-fault collision (NC < 1) or leaving the drivable area (DAC < 1); invalid plans
    (all terms 0) count as failures."""
    return (batch.terms["no_at_fault_collisions"] < 1.0) | (batch.terms["drivable_area_compliance"] < 1.0)


def valid_plans(plans: np.ndarray) -> np.ndarray:
    """``(B, N)`` bool, the plan ``(8, 3)`` is entirely finite."""
    return np.isfinite(plans).all(axis=(-2, -1))


def check_plans(metric_caches: Sequence[MetricCache], plans: Any) -> np.ndarray:
    """``plans`` as a float64 ``(B, N, 8, 3)`` array (numpy or CPU tensor in) with ``B == len(metric_caches)``."""
    array = np.asarray(plans, dtype=np.float64)
    if array.ndim != 4 or array.shape[2:] != PLAN_SHAPE:
        raise ValueError(f"plans must be (B, N, 8, 3), got {array.shape}")
    if array.shape[0] != len(metric_caches):
        raise ValueError(f"{array.shape[0]} scenes of plans for {len(metric_caches)} metric caches")
    return array


@runtime_checkable
class Reward(Protocol):
    """Anything that scores candidate plans of scenes: ``names`` (its terms), ``version`` and :meth:`score`."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def version(self) -> str: ...

    def score(
        self,
        metric_caches: Sequence[MetricCache],
        plans: np.ndarray,
        features: PlannerInput[Any] | None = None,
    ) -> RewardBatch:
        """Rewards of ``plans`` ``(B, N, 8, 3)``, one metric cache (and features row) per scene."""
        ...


@runtime_checkable
class LearnedReward(Reward, Protocol):
    """The slot of the learned scene reward model: it reads the scene's planner features (``features``, a batch
    of ``B`` scenes) and/or its metric cache and returns a :class:`RewardBatch` with ``total`` in [0, 1] and its
    own ``names``; invalid (non-finite) plans must get 0."""


# --------------------------------------------------------------------------------------------- rule reward


def score_scene(cache: MetricCache, plans: np.ndarray, version: Version) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``total`` ``(N,)`` and terms ``{name: (N,)}`` of one scene's plans ``(N, 8, 3)`` (invalid plans: 0)."""
    if cache.version != version:
        raise ValueError(f"metric cache {cache.token} is {cache.version}; this reward scores {version}")
    n = len(plans)
    valid = np.isfinite(plans).all(axis=(-2, -1))
    total = np.zeros(n)
    terms = {name: np.zeros(n) for name in TERMS[version]}
    if valid.any():
        scores = PDMScorer(version, "pairwise").score(cache, plans[valid])
        total[valid] = scores[TOTAL_KEY[version]]
        for name in terms:
            terms[name][valid] = scores[name]
    return total, terms


def score_scenes(
    metric_caches: Sequence[MetricCache], plans: np.ndarray, version: Version
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """:func:`score_scene` of every scene (the task a pool worker runs on a chunk of scenes)."""
    return [score_scene(cache, p, version) for cache, p in zip(metric_caches, plans, strict=True)]


def score_scenes_torch(metric_caches: Sequence[MetricCache], plans: np.ndarray, version: Version,
                       device: str = "cpu", batch: Any = None) -> RewardBatch:  # fmt: skip
    """:func:`score_scenes` of all ``B`` scenes' plans ``(B, N, 8, 3)`` at once with the torch scorer on ``device``
    (float64); invalid plans are scored as standing still and then set to 0. ``batch``: the scenes already
    collated (a :class:`rewards.torch.metric_cache_batch.MetricCacheBatch` on ``device``), else collated here."""
    import torch

    from rewards.torch.metric_cache_batch import MetricCacheBatch
    from rewards.torch.pdm import score_plans

    names = TERMS[version]
    if len(metric_caches) == 0 or plans.shape[1] == 0:
        return RewardBatch(np.zeros(plans.shape[:2]), {n: np.zeros(plans.shape[:2]) for n in names})
    for cache in metric_caches:
        if cache.version != version:
            raise ValueError(f"metric cache {cache.token} is {cache.version}; this reward scores {version}")
    valid = np.isfinite(plans).all(axis=(-2, -1))
    safe = torch.as_tensor(np.where(valid[..., None, None], plans, 0.0), dtype=torch.float64, device=device)
    if batch is None:
        batch = MetricCacheBatch.collate(metric_caches).to(device, torch.float64)
    out, _ = score_plans(batch, safe, version, "pairwise")
    pick = lambda key: np.where(valid, out[key].cpu().numpy(), 0.0)  # noqa: E731
    return RewardBatch(pick(TOTAL_KEY[version]), {name: pick(name) for name in names})


def _stack(parts: Sequence[tuple[np.ndarray, dict[str, np.ndarray]]], names: Sequence[str]) -> RewardBatch:
    total = np.stack([p[0] for p in parts])
    return RewardBatch(total, {name: np.stack([p[1][name] for p in parts]) for name in names})


def _bare(cache: MetricCache) -> MetricCache:
    """The cache without its computed properties (a third of its pickle once scored here): what a worker gets."""
    return dataclasses.replace(cache)


def _done(value: RewardBatch) -> Future[RewardBatch]:
    future: Future[RewardBatch] = Future()
    future.set_result(value)
    return future


def _gather(futures: Sequence[Future[Any]], combine: Callable[[list[Any]], RewardBatch]) -> Future[RewardBatch]:
    """A future resolved with ``combine(results)`` once every one of ``futures`` is done (or the first error)."""
    out: Future[RewardBatch] = Future()
    remaining = [len(futures)]

    def on_done(_: Future[Any]) -> None:
        remaining[0] -= 1
        if remaining[0] or out.done():
            return
        try:
            out.set_result(combine([f.result() for f in futures]))
        except BaseException as err:  # noqa: BLE001 - handed to the caller through the future
            out.set_exception(err)

    if not futures:
        out.set_result(combine([]))
    for f in futures:
        f.add_done_callback(on_done)
    return out


class RuleReward:
    """NAVSIM sub-metrics and PDMS (v1) / EPDMS (v2) of candidate plans on each scene's metric cache.

    Args:
        version: ``"v1"`` (PDMS) or ``"v2"`` (EPDMS); the metric caches must be of the same version.
        backend: ``"numpy"`` (:class:`rewards.pdm.PDMScorer`, scene by scene) or ``"torch"`` (the batched scorer of
            :mod:`rewards.torch.pdm`: the whole ``(B, N)`` batch in one call on ``device``, in float64; the same
            numbers, binary terms identical). ``num_workers`` applies to the numpy backend only.
        device: where the torch backend scores (``"cpu"``, ``"cuda"``, ...).
        scene_cache_size: the torch backend collates each scene once and keeps the collated tensors of this many
            most recent scenes (by token and object identity), so that a call pays only for its candidates.
        num_workers: ``0`` scores in the calling process; ``> 0`` scores chunks of scenes in a process pool
            (started on first use, reused until :meth:`close`), with identical results.
        chunks_per_worker: pool tasks per worker and call (smaller tasks balance uneven scenes).
        mp_context: multiprocessing start method of the pool; ``None`` forks where the platform can (as PyTorch's
            data loader workers do: the workers run numpy / numba only, never CUDA), else spawns.
    """

    def __init__(
        self,
        version: Version = "v1",
        num_workers: int = 0,
        chunks_per_worker: int = 2,
        mp_context: str | None = None,
        backend: Backend = "numpy",
        device: str = "cpu",
        scene_cache_size: int = 256,
    ) -> None:
        if version not in TERMS:
            raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        self.backend: Backend = backend
        self.device = device
        if num_workers < 0 or chunks_per_worker < 1:
            raise ValueError(f"need num_workers >= 0, chunks_per_worker >= 1; got {num_workers}, {chunks_per_worker}")
        self._version: Version = version
        self.num_workers = num_workers
        self.chunks_per_worker = chunks_per_worker
        self.mp_context = mp_context
        self._pool: ProcessPoolExecutor | None = None
        self.scene_cache_size = scene_cache_size
        self._scene_cache: OrderedDict[tuple[str, int], tuple[MetricCache, Any]] = OrderedDict()
        self._last_batch: tuple[tuple[tuple[str, int], ...], Any] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return TERMS[self._version]

    @property
    def version(self) -> str:
        return self._version

    def score(
        self, metric_caches: Sequence[MetricCache], plans: np.ndarray, features: PlannerInput[Any] | None = None
    ) -> RewardBatch:
        """Rewards of ``plans`` ``(B, N, 8, 3)`` on ``metric_caches`` (``B``); ``features`` is not used."""
        return self.submit(metric_caches, plans).result()

    def submit(
        self, metric_caches: Sequence[MetricCache], plans: np.ndarray, features: PlannerInput[Any] | None = None
    ) -> Future[RewardBatch]:
        """:meth:`score` as a future: with workers, the scenes are scored in the pool while the caller goes on
        (without, the future is already done)."""
        array = check_plans(metric_caches, plans)
        if self.backend == "torch":
            batch = self._collated(metric_caches) if len(metric_caches) and array.shape[1] else None
            return _done(score_scenes_torch(metric_caches, array, self._version, self.device, batch))
        if self.num_workers == 0 or len(metric_caches) == 0:
            return _done(_stack(score_scenes(metric_caches, array, self._version), self.names))
        pool = self._executor()
        bounds = np.linspace(0, len(metric_caches), min(len(metric_caches), self._num_chunks()) + 1).astype(int)
        futures = [
            pool.submit(score_scenes, [_bare(c) for c in metric_caches[a:b]], array[a:b], self._version)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return _gather(futures, lambda chunks: _stack([s for chunk in chunks for s in chunk], self.names))

    def _collated(self, metric_caches: Sequence[MetricCache]) -> Any:
        """The torch backend's batch of ``metric_caches``: each scene collated once (kept by token and object, the
        ``scene_cache_size`` most recent), then concatenated (the last concatenation is kept for the same scenes)."""
        from rewards.torch.metric_cache_batch import MetricCacheBatch

        keys = tuple((cache.token, id(cache)) for cache in metric_caches)
        parts = []
        for key, cache in zip(keys, metric_caches, strict=True):
            entry = self._scene_cache.pop(key, None)
            if entry is None or entry[0] is not cache:
                entry = (cache, MetricCacheBatch.collate([cache]).to(self.device))
            self._scene_cache[key] = entry  # most recent last
            parts.append(entry[1])
        while len(self._scene_cache) > self.scene_cache_size:
            self._scene_cache.popitem(last=False)
        if self._last_batch is not None and self._last_batch[0] == keys:  # the same scenes again: no re-padding
            return self._last_batch[1]
        batch = parts[0] if len(parts) == 1 else MetricCacheBatch.concat(parts)
        self._last_batch = (keys, batch)
        return batch

    def _num_chunks(self) -> int:
        return self.num_workers * self.chunks_per_worker

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            method = self.mp_context
            if method is None:
                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            self._pool = ProcessPoolExecutor(self.num_workers, mp_context=context)
        return self._pool

    def close(self) -> None:
        """Shut the worker pool down (a later call starts a new one)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> RuleReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None, "_scene_cache": OrderedDict(), "_last_batch": None}  # (own pool, cache)

    def __repr__(self) -> str:
        return f"RuleReward(version={self._version!r}, num_workers={self.num_workers}, backend={self.backend!r})"


# -------------------------------------------------------------------------------------------------- mixes


class MixedReward:
    """A weighted mean of rewards: ``total = sum_i w_i total_i / sum_i w_i`` and the union of their terms.

    Args:
        components: ``[(weight, reward), ...]`` with weights >= 0 (not all 0), one protocol version, and
            distinct term names.

    Invalid (non-finite) plans get 0 whatever the components say.
    """

    def __init__(self, components: Sequence[tuple[float, Reward]]) -> None:
        if not components:
            raise ValueError("MixedReward needs at least one (weight, reward)")
        weights = np.array([float(w) for w, _ in components])
        if (weights < 0).any() or not weights.sum() > 0:
            raise ValueError(f"MixedReward weights must be >= 0 and not all 0, got {weights.tolist()}")
        versions = {r.version for _, r in components}
        if len(versions) != 1:
            raise ValueError(f"MixedReward components score different versions: {sorted(versions)}")
        names = [n for _, r in components for n in r.names]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"MixedReward components share term names: {repeated}")
        self.weights = weights / weights.sum()
        self.rewards = [r for _, r in components]
        self._names = tuple(names)
        self._version = versions.pop()

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def version(self) -> str:
        return self._version

    def score(
        self, metric_caches: Sequence[MetricCache], plans: np.ndarray, features: PlannerInput[Any] | None = None
    ) -> RewardBatch:
        """The mixed rewards of ``plans`` ``(B, N, 8, 3)``."""
        return self.submit(metric_caches, plans, features).result()

    def submit(
        self, metric_caches: Sequence[MetricCache], plans: np.ndarray, features: PlannerInput[Any] | None = None
    ) -> Future[RewardBatch]:
        """:meth:`score` as a future (components with a ``submit`` run concurrently, the others right away)."""
        valid = valid_plans(check_plans(metric_caches, plans))
        futures = []
        for reward in self.rewards:
            submit = getattr(reward, "submit", None)
            futures.append(
                submit(metric_caches, plans, features)
                if callable(submit)
                else _done(reward.score(metric_caches, plans, features))
            )
        return _gather(futures, lambda batches: self._combine(batches, valid))

    def close(self) -> None:
        """Close the components that hold a worker pool."""
        for reward in self.rewards:
            close = getattr(reward, "close", None)
            if callable(close):
                close()

    def _combine(self, batches: Sequence[RewardBatch], valid: np.ndarray) -> RewardBatch:
        total = np.zeros(valid.shape)
        terms: dict[str, np.ndarray] = {}
        for weight, batch in zip(self.weights, batches, strict=True):
            batch.validate()
            total = total + weight * np.asarray(batch.total, dtype=np.float64)
            terms.update({k: np.where(valid, v, 0.0) for k, v in batch.terms.items()})
        return RewardBatch(np.where(valid, total, 0.0), terms)
