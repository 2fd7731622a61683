"""NAVSIM's PDM score (PDMS, v1.1) and extended PDM score (EPDMS, v2) from a :class:`MetricCache`.

:func:`score_states` computes every sub-metric for ``K`` simulated candidates ``(K, 41, 11)`` in one batch
together with the PDM-Closed reference (which only normalises ego progress, as in NAVSIM); the final
scores come from the separate pure functions :func:`aggregate_pdms` and :func:`aggregate_epdms`.
:class:`PDMScorer` adds the tracker: 8 poses per candidate in, the same dictionary out.

PDMS  = NC * DAC * (5 TTC + 5 EP + 2 C) / 12                      (DDC reported, weight 0)
EPDMS = NC * DAC * DDC * TLC * (5 EP + 5 TTC + 2 LK + 2 HC + 2 EC) / 16   (after the human filter)
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rewards import pdm_metrics as pm
from rewards.comfort import is_comfortable, two_frame_extended_comfort
from simulation.metric_cache import NUM_STEPS, MetricCache

Version = Literal["v1", "v2"]
Normalization = Literal["pairwise", "batch"]

PROGRESS_DISTANCE_THRESHOLD = 5.0  # m; below it every proposal gets EP = 1 (v1: unless a multiplier is 0)
#: Weighted metrics and weights.
PDMS_WEIGHTS = {"time_to_collision_within_bound": 5.0, "ego_progress": 5.0, "comfort": 2.0,
                "driving_direction_compliance": 0.0}  # fmt: skip
EPDMS_WEIGHTS = {"ego_progress": 5.0, "time_to_collision_within_bound": 5.0, "lane_keeping": 2.0,
                 "history_comfort": 2.0, "extended_comfort": 2.0}  # fmt: skip
PDMS_MULTIPLIERS = ("no_at_fault_collisions", "drivable_area_compliance")
EPDMS_MULTIPLIERS = (
    "no_at_fault_collisions",
    "drivable_area_compliance",
    "driving_direction_compliance",
    "traffic_light_compliance",
)
#: Columns the human filter may lift to 1 (every scorer column; EC is computed later between frames).
HUMAN_FILTER_COLUMNS = (*EPDMS_MULTIPLIERS, "ego_progress", "time_to_collision_within_bound", "lane_keeping",
                        "history_comfort")  # fmt: skip
TTC_STEPS = {"v1": NUM_STEPS, "v2": NUM_STEPS - int(pm.TTC_LOOKAHEAD_STEPS.max())}


def raw_metrics(cache: MetricCache, states: np.ndarray, version: Version) -> dict[str, np.ndarray]:
    """Every sub-metric except EP normalisation and aggregation, ``(K,)`` each, for states ``(K, 41, 11)``.

    Returns NC, DAC, DDC, TTC, raw progress (metres, key ``progress_m``) and comfort (v1) or TLC, LK and
    history comfort (v2, states prefixed by the cached human past).
    """
    if states.ndim != 3 or states.shape[1:] != (NUM_STEPS, 11):
        raise ValueError(f"states must be (K, {NUM_STEPS}, 11), got {states.shape}")
    needed = TTC_STEPS[version] + int(pm.TTC_LOOKAHEAD_STEPS.max())
    if cache.agent_boxes.shape[0] < needed:
        raise ValueError(
            f"metric cache {cache.token} ({cache.version}) observes {cache.agent_boxes.shape[0]} steps; "
            f"{version} scoring needs {needed}"
        )
    points = pm.ego_points(states)
    areas = pm.ego_area(cache, points)
    out = {
        "no_at_fault_collisions": pm.no_at_fault_collisions(cache, states, points, areas),
        "drivable_area_compliance": pm.drivable_area_compliance(areas),
        "driving_direction_compliance": pm.driving_direction_compliance(points, areas, version == "v2"),
        "time_to_collision_within_bound": pm.time_to_collision(cache, states, points, areas, TTC_STEPS[version]),
        "progress_m": pm.raw_progress(cache, points),
    }
    if version == "v1":
        out["comfort"] = is_comfortable(states, "v1")
    else:
        out["traffic_light_compliance"] = pm.traffic_light_compliance(cache, points)
        out["lane_keeping"] = pm.lane_keeping(cache, points, areas)
        history = np.broadcast_to(cache.history_states, (len(states),) + cache.history_states.shape)
        out["history_comfort"] = is_comfortable(np.concatenate([history, states], 1), "v2")
    return out


def multiplier_product(metrics: dict[str, np.ndarray], version: Version) -> np.ndarray:
    """``(K,)`` product of the multiplicative metrics of ``version``."""
    names = PDMS_MULTIPLIERS if version == "v1" else EPDMS_MULTIPLIERS
    return np.prod([metrics[n] for n in names], axis=0)


def ego_progress(progress_m: np.ndarray, multipliers: np.ndarray, reference_max: float, version: Version) -> np.ndarray:
    """EP ``(K,)`` normalised by the best multiplier-masked progress among the compared proposals.

    Args:
        progress_m: ``(K,)`` raw progress. multipliers: ``(K,)`` multiplier products.
        reference_max: largest masked progress among the *other* proposals it is compared with (PDM-Closed).
        version: v1 normalises the masked progress and, below 5 m, zeroes failed proposals; v2 normalises the
            raw progress, clipped to [0, 1], and gives 1 to everyone below 5 m.
    """
    masked = progress_m * multipliers
    norm = np.maximum(masked, reference_max)
    big = norm > PROGRESS_DISTANCE_THRESHOLD
    safe = np.where(big, norm, 1.0)
    if version == "v1":
        return np.where(big, masked / safe, np.where(multipliers == 0.0, 0.0, 1.0))
    return np.where(big, np.clip(progress_m / safe, 0.0, 1.0), 1.0)


def aggregate_pdms(metrics: dict[str, np.ndarray]) -> np.ndarray:
    """PDMS ``(K,)`` = NC * DAC * (5 TTC + 5 EP + 2 C + 0 DDC) / 12."""
    weighted = sum(w * metrics[n] for n, w in PDMS_WEIGHTS.items()) / sum(PDMS_WEIGHTS.values())
    return multiplier_product(metrics, "v1") * weighted


def aggregate_epdms(metrics: dict[str, np.ndarray], with_extended_comfort: bool = True) -> np.ndarray:
    """EPDMS ``(K,)`` = NC * DAC * DDC * TLC * (5 EP + 5 TTC + 2 LK + 2 HC + 2 EC) / 16.

    Without a previous frame (``with_extended_comfort=False``) EC gets weight 0 (denominator 14), as
    NAVSIM does for rows without a predecessor.
    """
    weights = dict(EPDMS_WEIGHTS)
    if not with_extended_comfort:
        weights["extended_comfort"] = 0.0
    weighted = sum(w * metrics[n] for n, w in weights.items() if w) / sum(weights.values())
    return multiplier_product(metrics, "v2") * weighted


def human_filter(metrics: dict[str, np.ndarray], human: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """EPDMS false-positive filter: every column on which the logged human scores exactly 0 is set to 1."""
    out = dict(metrics)
    for name in HUMAN_FILTER_COLUMNS:
        if float(human[name][0]) == 0.0:
            out[name] = np.ones_like(metrics[name])
    return out


def score_states(
    cache: MetricCache,
    states: np.ndarray,
    version: Version = "v1",
    normalization: Normalization = "pairwise",
    previous_states: np.ndarray | None = None,
    apply_human_filter: bool = True,
) -> dict[str, np.ndarray]:
    """Score ``K`` simulated candidates ``(K, 41, 11)`` of one scene.

    Args:
        cache: the scene's metric cache (its ``version`` should match ``version``).
        states: simulated ego states of the candidates.
        version: ``"v1"`` (PDMS) or ``"v2"`` (EPDMS).
        normalization: ``"pairwise"`` normalises each candidate's progress against the PDM-Closed reference
            only (exactly NAVSIM's two-proposal scoring, per candidate); ``"batch"`` against the reference and
            all candidates together (as PDM-Closed scores its own proposals).
        previous_states: v2 only, ``(K, 41, 11)`` or ``(41, 11)`` states of the plan made 0.5 s earlier, for
            extended comfort; without it EC is NaN (not measured) and has weight 0.
        apply_human_filter: v2 only, NAVSIM's human filter (original scenes).

    Returns:
        ``(K,)`` arrays: the sub-metrics, ``progress_m`` (raw) and ``score`` (PDMS or EPDMS); v2 also gives
        ``pdm_score``, the EPDMS without extended comfort (denominator 14).
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 3 or states.shape[1:] != (NUM_STEPS, 11):
        raise ValueError(f"states must be (K, {NUM_STEPS}, 11), got {states.shape}")
    both = np.concatenate([cache.reference_states[None], states], 0)
    metrics = raw_metrics(cache, both, version)
    mult = multiplier_product(metrics, version)
    masked = metrics["progress_m"] * mult
    ref_max = float(masked[0]) if normalization == "pairwise" else float(masked.max())
    metrics["ego_progress"] = ego_progress(metrics["progress_m"], mult, ref_max, version)
    out = {name: value[1:] for name, value in metrics.items()}
    if version == "v1":
        out["score"] = aggregate_pdms(out)
        return out
    if apply_human_filter:
        out = human_filter(out, human_metrics(cache))
    with_ec = previous_states is not None
    out["extended_comfort"] = (
        two_frame_extended_comfort(both[1:], np.asarray(previous_states)) if with_ec else np.full(len(states), np.nan)
    )
    out["pdm_score"] = aggregate_epdms(out, with_extended_comfort=False)
    out["score"] = aggregate_epdms(out, with_ec)
    return out


_HUMAN_MEMO: dict[int, dict[str, np.ndarray]] = {}


def human_metrics(cache: MetricCache) -> dict[str, np.ndarray]:
    """v2 sub-metrics ``(1,)`` of the logged human plan scored alone (no reference, no history).

    They depend on the cache only, so they are computed once per cache object (memo dropped with the cache).
    """
    key = id(cache)
    if key not in _HUMAN_MEMO:
        _HUMAN_MEMO[key] = _human_metrics(cache)
        weakref.finalize(cache, _HUMAN_MEMO.pop, key, None)
    return _HUMAN_MEMO[key]


def _human_metrics(cache: MetricCache) -> dict[str, np.ndarray]:
    metrics = raw_metrics(cache, cache.human_states[None], "v2")
    mult = multiplier_product(metrics, "v2")
    metrics["ego_progress"] = ego_progress(metrics["progress_m"], mult, 0.0, "v2")
    metrics["history_comfort"] = np.ones(1)
    return metrics


@dataclass(frozen=True)
class PDMScorer:
    """NAVSIM scorer: ``score(metric_cache, trajectories (K, 8, 3)) -> {name: (K,)}`` (implements ``Scorer``).

    Attributes:
        version: ``"v1"`` (PDMS) or ``"v2"`` (EPDMS).
        normalization: see :func:`score_states`.
    """

    version: Version = "v1"
    normalization: Normalization = "pairwise"

    def simulate(self, metric_cache: MetricCache, trajectories: np.ndarray) -> np.ndarray:
        """States ``(K, 41, 11)`` of NAVSIM's LQR tracker (its jerk regulariser, ``simulate_proposals``' default) +
        bicycle model following poses ``(K, 8, 3)`` (local frame)."""
        poses = np.asarray(trajectories, dtype=np.float64)
        if poses.ndim == 2:
            poses = poses[None]
        if poses.ndim != 3 or poses.shape[-1] != 3 or not np.isfinite(poses).all():
            raise ValueError(f"trajectories must be finite (K, N, 3) poses, got shape {poses.shape}")
        from simulation.kinematics import simulate_proposals

        return simulate_proposals(metric_cache.current_state, poses)  # NAVSIM's tracker by default

    def score(self, metric_cache: MetricCache, trajectories: np.ndarray) -> dict[str, np.ndarray]:
        """Sub-metrics and ``score`` ``(K,)`` of candidate poses ``(K, 8, 3)`` in the current rear-axle frame."""
        return self.score_simulated(metric_cache, self.simulate(metric_cache, trajectories))

    def score_simulated(self, metric_cache: MetricCache, states: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score` of already simulated states ``(K, 41, 11)`` (from :meth:`simulate`)."""
        return score_states(metric_cache, states, self.version, self.normalization)

    def two_frame_metrics(
        self, metrics: Mapping[str, float], states: np.ndarray, previous_states: np.ndarray
    ) -> dict[str, float]:
        """EPDMS of one scored plan once the plan of the frame 0.5 s earlier is known (NAVSIM one-stage).

        Args:
            metrics: the plan's v2 sub-metrics (human filter applied), by NAVSIM column or ``rewards.pdm`` name.
            states: ``(41, 11)`` simulated states of the plan. previous_states: those of the previous plan.

        Returns:
            ``two_frame_extended_comfort`` and ``score`` (EPDMS over the five weighted metrics, denominator 16);
            empty for v1, which has no extended comfort.
        """
        if self.version != "v2":
            return {}
        ec = float(two_frame_extended_comfort(np.asarray(states)[None], np.asarray(previous_states)[None])[0])
        names = (*EPDMS_MULTIPLIERS, *EPDMS_WEIGHTS)
        values = {n: np.array([float(metrics[n])]) for n in names if n != "extended_comfort"}
        values["extended_comfort"] = np.array([ec])
        return {"two_frame_extended_comfort": ec, "score": float(aggregate_epdms(values, True)[0])}
