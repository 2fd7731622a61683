"""Batched torch twin of :mod:`rewards.pdm`: PDMS (v1.1) and EPDMS (v2) of ``S`` scenes x ``K`` candidates at once.

:func:`score_states` scores simulated states ``(S, K, 41, 11)`` against a :class:`MetricCacheBatch` together with
each scene's PDM-Closed reference (and, for v2, the logged human plan that drives the human filter), and returns
``(S, K)`` tensors with the keys of :func:`rewards.pdm.score_states`; :func:`score_plans` adds the tracker (8 poses
at 0.5 s in the current rear-axle frame). The aggregation (:func:`aggregate_pdms`, :func:`aggregate_epdms`) is
separate and uses the weights of :mod:`rewards.pdm`. :class:`TorchPDMScorer` is the drop-in ``Scorer`` for one scene
(``diffplan bench ... scorer=torch``).

The device and dtype are those of the inputs (float64 on the CPU by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rewards import pdm as npdm
from rewards.torch import pdm_metrics as tm
from rewards.torch.comfort import is_comfortable, two_frame_extended_comfort
from rewards.torch.kinematics import simulate_proposals
from rewards.torch.metric_cache_batch import MetricCacheBatch
from rewards.torch.pdm_geometry import ego_points
from rewards.torch.pdm_map import ego_area, ego_area_rows
from simulation.metric_cache import NUM_STEPS, MetricCache

Metrics = dict[str, torch.Tensor]


def raw_metrics(batch: MetricCacheBatch, states: torch.Tensor, version: str) -> Metrics:
    """Every sub-metric but EP normalisation and aggregation, ``(S, K)`` each, for states ``(S, K, 41, 11)`` in the
    batch's frame and dtype (:meth:`MetricCacheBatch.to_local`; :func:`rewards.pdm.raw_metrics`)."""
    if states.dim() != 4 or states.shape[2:] != (NUM_STEPS, 11):
        raise ValueError(f"states must be (S, K, {NUM_STEPS}, 11), got {tuple(states.shape)}")
    if states.shape[0] != batch.num_scenes:
        raise ValueError(f"{states.shape[0]} scenes of states for a batch of {batch.num_scenes} metric caches")
    t_ttc = npdm.TTC_STEPS[version]  # type: ignore[index]
    if batch.agent_boxes.shape[1] < t_ttc + max(tm.TTC_STEPS):
        raise ValueError(f"metric caches ({batch.version}) observe {batch.agent_boxes.shape[1]} steps; "
                         f"{version} scoring needs {t_ttc + max(tm.TTC_STEPS)}")  # fmt: skip
    points = ego_points(states)
    areas = ego_area(batch, points, contact_columns=False)  # the other columns at the contacts only

    def area_rows(s_i: torch.Tensor, k_i: torch.Tensor, t_i: torch.Tensor) -> torch.Tensor:
        return ego_area_rows(batch, points, s_i, k_i, t_i)

    nc_first, ttc_first = tm.contact_firsts(batch, states, points, t_ttc)
    out = {
        "no_at_fault_collisions": tm.no_at_fault_collisions(batch, states, points, area_rows, nc_first),
        "drivable_area_compliance": tm.drivable_area_compliance(areas, states.dtype),
        "driving_direction_compliance": tm.driving_direction_compliance(points, areas, version == "v2"),
        "time_to_collision_within_bound": tm.time_to_collision(batch, states, points, area_rows, t_ttc, ttc_first),
        "progress_m": tm.raw_progress(batch, points),
    }
    if version == "v1":
        out["comfort"] = is_comfortable(states, "v1")
    else:
        out["traffic_light_compliance"] = tm.traffic_light_compliance(batch, points)
        out["lane_keeping"] = tm.lane_keeping(batch, points, areas)
        history = batch.history_states[:, None].expand(-1, states.shape[1], -1, -1).to(states)
        out["history_comfort"] = is_comfortable(torch.cat([history, states], 2), "v2")
    return out


def multiplier_product(metrics: Mapping[str, torch.Tensor], version: str) -> torch.Tensor:
    """``(S, K)`` product of the multiplicative metrics of ``version``."""
    names = npdm.PDMS_MULTIPLIERS if version == "v1" else npdm.EPDMS_MULTIPLIERS
    out = metrics[names[0]]
    for name in names[1:]:
        out = out * metrics[name]
    return out


def ego_progress(
    progress_m: torch.Tensor, multipliers: torch.Tensor, reference_max: torch.Tensor, version: str
) -> torch.Tensor:
    """EP ``(S, K)`` normalised by ``reference_max`` ``(S, 1)`` (:func:`rewards.pdm.ego_progress`)."""
    masked = progress_m * multipliers
    norm = torch.maximum(masked, reference_max)
    big = norm > npdm.PROGRESS_DISTANCE_THRESHOLD
    safe = torch.where(big, norm, torch.ones_like(norm))
    one, zero = torch.ones_like(norm), torch.zeros_like(norm)
    if version == "v1":
        return torch.where(big, masked / safe, torch.where(multipliers == 0.0, zero, one))
    return torch.where(big, torch.clamp(progress_m / safe, 0.0, 1.0), one)


def _weighted(metrics: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    total = sum(w * metrics[n] for n, w in weights.items() if w)
    return total / sum(weights.values())  # type: ignore[return-value]


def aggregate_pdms(metrics: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """PDMS ``(S, K)`` = NC * DAC * (5 TTC + 5 EP + 2 C + 0 DDC) / 12 (weights of :data:`rewards.pdm.PDMS_WEIGHTS`)."""
    return multiplier_product(metrics, "v1") * _weighted(metrics, npdm.PDMS_WEIGHTS)


def aggregate_epdms(metrics: Mapping[str, torch.Tensor], with_extended_comfort: bool = True) -> torch.Tensor:
    """EPDMS ``(S, K)`` = NC * DAC * DDC * TLC * (5 EP + 5 TTC + 2 LK + 2 HC + 2 EC) / 16 (denominator 14 and EC
    unused without a previous frame)."""
    weights = dict(npdm.EPDMS_WEIGHTS)
    if not with_extended_comfort:
        weights["extended_comfort"] = 0.0
    return multiplier_product(metrics, "v2") * _weighted(metrics, weights)


def human_filter(metrics: Mapping[str, torch.Tensor], human: Mapping[str, torch.Tensor]) -> Metrics:
    """EPDMS false-positive filter: each column on which a scene's logged human ``(S,)`` scores exactly 0 is set to 1
    for all the scene's candidates."""
    out = dict(metrics)
    for name in npdm.HUMAN_FILTER_COLUMNS:
        out[name] = torch.where((human[name] == 0.0)[:, None], torch.ones_like(metrics[name]), metrics[name])
    return out


def score_states(
    batch: MetricCacheBatch,
    states: torch.Tensor,
    version: str = "v1",
    normalization: str = "pairwise",
    previous_states: torch.Tensor | None = None,
    apply_human_filter: bool = True,
) -> Metrics:
    """Score ``K`` simulated candidates ``(S, K, 41, 11)`` of each of ``S`` scenes (:func:`rewards.pdm.score_states`).

    Args:
        batch: the scenes' metric caches (on the states' device); the computation runs in the batch's float dtype.
        states: simulated ego states in global coordinates (any float dtype: the batch's origin is subtracted in
            the states' dtype, then they are cast to the batch's). version: ``"v1"`` (PDMS) or ``"v2"`` (EPDMS).
        normalization: ``"pairwise"`` (EP against the reference only) or ``"batch"`` (against the reference and all
            ``K`` candidates of the scene).
        previous_states: v2 only, ``(S, K, 41, 11)`` (or broadcastable) states of the plans made 0.5 s earlier, for
            extended comfort; without them EC is NaN and has weight 0.
        apply_human_filter: v2 only, NAVSIM's human filter.

    Returns:
        ``(S, K)`` tensors: the sub-metrics, ``progress_m`` and ``score``; v2 also ``pdm_score`` (EPDMS without EC).
    """
    if states.dim() != 4 or states.shape[2:] != (NUM_STEPS, 11):
        raise ValueError(f"states must be (S, K, {NUM_STEPS}, 11), got {tuple(states.shape)}")
    if states.shape[0] != batch.num_scenes:
        raise ValueError(f"{states.shape[0]} scenes of states for a batch of {batch.num_scenes} metric caches")
    local = batch.to_local(states)
    prev = previous_states
    if prev is not None:
        prev = batch.to_local(prev) if prev.dim() == 4 and prev.shape[0] == batch.num_scenes else prev.to(local)
    return _score_local(batch, local, version, normalization, prev, apply_human_filter)


def _score_local(
    batch: MetricCacheBatch,
    states: torch.Tensor,
    version: str,
    normalization: str,
    previous_states: torch.Tensor | None,
    apply_human_filter: bool,
) -> Metrics:
    """:func:`score_states` of states in the batch's frame and dtype."""
    k_count = states.shape[1]
    rows = [batch.reference_states[:, None].to(states), states]
    if version == "v2":
        rows.append(batch.human_states[:, None].to(states))
    metrics = raw_metrics(batch, torch.cat(rows, 1), version)
    mult = multiplier_product(metrics, version)
    masked = metrics["progress_m"] * mult
    ref_max = masked[:, :1] if normalization == "pairwise" else masked[:, : k_count + 1].amax(1, keepdim=True)
    metrics["ego_progress"] = ego_progress(metrics["progress_m"], mult, ref_max, version)
    out = {name: value[:, 1 : k_count + 1] for name, value in metrics.items()}
    if version == "v1":
        out["score"] = aggregate_pdms(out)
        return out
    if apply_human_filter:
        human = {name: value[:, -1] for name, value in metrics.items()}
        human["ego_progress"] = ego_progress(
            human["progress_m"][:, None], mult[:, -1:], torch.zeros_like(mult[:, -1:]), "v2"
        )[:, 0]
        human["history_comfort"] = torch.ones_like(human["progress_m"])
        out = human_filter(out, human)
    with_ec = previous_states is not None
    if previous_states is not None:
        out["extended_comfort"] = two_frame_extended_comfort(states, previous_states)
    else:
        out["extended_comfort"] = torch.full_like(out["progress_m"], float("nan"))
    out["pdm_score"] = aggregate_epdms(out, with_extended_comfort=False)
    out["score"] = aggregate_epdms(out, with_ec)
    return out


def score_plans(
    batch: MetricCacheBatch, plans: torch.Tensor, version: str = "v1", normalization: str = "pairwise"
) -> tuple[Metrics, torch.Tensor]:
    """Track local plans ``(S, K, P, 3)`` (0.5 s apart) with NAVSIM's tracker from each scene's current state and
    score them, in the batch's frame and dtype; returns the ``(S, K)`` metrics and the global states
    ``(S, K, 41, 11)`` (float64 for a re-centred batch, the batch's dtype otherwise)."""
    s_count, k_count = plans.shape[:2]
    dtype = batch.current_state.dtype
    current = batch.current_state[:, None].expand(s_count, k_count, -1).reshape(-1, 11)
    states = simulate_proposals(current, plans.to(dtype).reshape(s_count * k_count, *plans.shape[2:]))
    states = states.reshape(s_count, k_count, NUM_STEPS, 11)
    out = _score_local(batch, states, version, normalization, None, True)
    recentred = bool((batch.origin != 0).any())
    return out, batch.to_global(states, torch.float64) if recentred else states


@dataclass(frozen=True)
class TorchPDMScorer:
    """:class:`rewards.pdm.PDMScorer` computed by the torch scorer (implements ``Scorer``; same keys, numpy out).

    Attributes:
        version: ``"v1"`` or ``"v2"``. normalization: see :func:`score_states`.
        device: where to score (``"cpu"`` by default). dtype: float dtype of the computation (float64 by default).
    """

    version: str = "v1"
    normalization: str = "pairwise"
    device: str = "cpu"
    dtype: torch.dtype = torch.float64

    def _batch(self, caches: Sequence[MetricCache]) -> MetricCacheBatch:
        return MetricCacheBatch.collate(caches).to(self.device, self.dtype)

    def simulate(self, metric_cache: MetricCache, trajectories: np.ndarray) -> np.ndarray:
        """States ``(K, 41, 11)`` of poses ``(K, 8, 3)`` (NAVSIM's tracker, torch)."""
        poses = torch.as_tensor(np.asarray(trajectories, dtype=np.float64), dtype=self.dtype, device=self.device)
        if poses.dim() == 2:
            poses = poses[None]
        if poses.dim() != 3 or poses.shape[-1] != 3 or not bool(torch.isfinite(poses).all()):
            raise ValueError(f"trajectories must be finite (K, N, 3) poses, got shape {tuple(poses.shape)}")
        start = np.asarray(metric_cache.current_state, dtype=np.float64)
        origin = start[:2] if self.dtype != torch.float64 else np.zeros(2)  # track near the origin below float64
        current = torch.as_tensor(np.concatenate([start[:2] - origin, start[2:]]), dtype=self.dtype, device=self.device)
        states = simulate_proposals(current, poses).cpu().double().numpy()
        states[..., :2] += origin
        return states

    def score(self, metric_cache: MetricCache, trajectories: np.ndarray) -> dict[str, np.ndarray]:
        """Sub-metrics and ``score`` ``(K,)`` of candidate poses ``(K, 8, 3)`` in the current rear-axle frame."""
        return self.score_simulated(metric_cache, self.simulate(metric_cache, trajectories))

    def score_simulated(self, metric_cache: MetricCache, states: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score` of simulated states ``(K, 41, 11)``."""
        st = torch.as_tensor(np.asarray(states, dtype=np.float64), device=self.device)
        out = score_states(self._batch([metric_cache]), st[None], self.version, self.normalization)
        return {k: v[0].cpu().double().numpy() for k, v in out.items()}

    def two_frame_metrics(
        self, metrics: Mapping[str, float], states: np.ndarray, previous_states: np.ndarray
    ) -> dict[str, float]:
        """EPDMS once the previous frame's plan is known (:meth:`rewards.pdm.PDMScorer.two_frame_metrics`)."""
        if self.version != "v2":
            return {}
        now = torch.as_tensor(np.asarray(states, dtype=np.float64), dtype=self.dtype, device=self.device)
        prev = torch.as_tensor(np.asarray(previous_states, dtype=np.float64), dtype=self.dtype, device=self.device)
        ec = float(two_frame_extended_comfort(now, prev))
        names = (*npdm.EPDMS_MULTIPLIERS, *npdm.EPDMS_WEIGHTS)
        values = {n: torch.tensor([float(metrics[n])], dtype=torch.float64) for n in names if n != "extended_comfort"}
        values["extended_comfort"] = torch.tensor([ec], dtype=torch.float64)
        return {"two_frame_extended_comfort": ec, "score": float(aggregate_epdms(values, True)[0])}
