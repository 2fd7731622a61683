"""PDM-Closed as NAVSIM's metric caching runs it (``PDMClosedPlanner``, tag v1.1; ``version="v2"``: the v2 release).

One call = one ``compute_planner_trajectory`` of a freshly initialised NAVSIM planner: 15 proposals (the centre line
first, then its offsets -1 m and +1 m, each with the IDM policies of 0.2 ... 1.0 x the lane speed limit), unrolled
4 s at 10 Hz (:mod:`planners.pdm_closed.generator`), simulated with :func:`simulation.kinematics.simulate_proposals`,
scored on the planner's own observation (:mod:`planners.pdm_closed.observation`); the best is unrolled to 5 s and
returned. NAVSIM defines an emergency brake for PDM planners but its PDM-Closed never applies it; neither does this.
The centre line starts on NAVSIM's starting lane and carries the map's headings (:mod:`planners.pdm_closed.centerline`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from planners.pdm_closed.centerline import PDMRouteCache, PDMRouteContext, pdm_route_context
from planners.pdm_closed.generator import PathRollout, ProposalGenerator
from planners.pdm_closed.idm_policy import BatchIDMPolicy
from planners.pdm_closed.observation import PDMObservation, build_pdm_observation, scoring_observation
from planners.pdm_closed.path import ProposalPath
from planners.route import _current_agents, _red_connector_ids, _require_map
from rewards.pdm import score_states
from simulation.agents import IDMParameters
from simulation.geometry import global_to_local, normalize_angle, rear_axle_to_center
from simulation.kinematics import simulate_proposals
from simulation.maps.protocol import MapProtocol
from simulation.metric_cache import MAP_RADIUS, MapContext, MetricCache, build_observation_metric_cache
from simulation.protocols import Observation
from simulation.types import Trajectory

logger = logging.getLogger(__name__)

#: NAVSIM's metric-caching configuration of PDM-Closed.
LATERAL_OFFSETS = (-1.0, 1.0)
SPEED_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
PROPOSAL_STEPS = 40  # proposal_sampling: 40 x 0.1 s
TRAJECTORY_STEPS = 50  # trajectory_sampling: 50 x 0.1 s
STEP_S = 0.1
PDM_MAP_RADIUS = 100.0
#: The drivable-map context is reused while the ego stays this close (m) to where it was built.
MAP_CONTEXT_REUSE_M = 20.0


@dataclass(frozen=True)
class PDMReferenceTrajectory(Trajectory):
    """PDM-Closed's native trajectory: ``poses (50, 3)`` at t = 0.1 ... 5.0 s (``interval_s = 0.1``) in the current
    rear-axle frame, and ``start_pose (3,)``, its global state at t = 0: the ego projected on the centre line (not
    the ego pose itself), as NAVSIM's ``InterpolatedTrajectory`` holds it (global, as every trajectory's
    ``start_pose``; see ``simulation.ego_control``)."""

    start_pose: np.ndarray | None = None


def _map_context(map_api: MapProtocol, center: np.ndarray, previous: MapContext | None) -> MapContext:
    """Drivable-map polygons and their grid around ``center`` ``(2,)``, reusing ``previous`` when still valid."""
    if (
        previous is not None
        and previous.map_api is map_api
        and float(np.hypot(*(center - previous.center))) <= (MAP_CONTEXT_REUSE_M)
    ):
        return previous
    return MapContext.build(map_api, center, MAP_RADIUS + MAP_CONTEXT_REUSE_M)


def sample_native(native: np.ndarray, times: np.ndarray, dt: float = STEP_S) -> np.ndarray:
    """Poses ``(len(times), 3)`` of a native trajectory ``(T + 1, 3)`` (t = 0, dt, ...) at ``times``: x, y linear,
    heading linear after unwrapping (nuPlan's ``InterpolatedTrajectory``), clamped to its span."""
    t = np.arange(len(native)) * dt
    heading = np.unwrap(native[:, 2])
    out = np.stack([np.interp(times, t, native[:, 0]), np.interp(times, t, native[:, 1]), np.interp(times, t, heading)],
                   -1)  # fmt: skip
    out[:, 2] = normalize_angle(out[:, 2])
    return out


class PDMClosedPlanner:
    """NAVSIM's PDM-Closed (specs/navsim.md §3.8).

    Args:
        version: ``"v1"`` (NAVSIM v1.1: proposals scored by PDMS) or ``"v2"`` (the v2 release: scored by the EPDMS
            ``pdm_score`` column, no extended comfort, no human filter).
        scorer: optional object with ``score_states(metric_cache, states (K, 41, 11)) -> {"score": (K,), ...}``
            replacing the internal scoring.
        num_poses / interval_s: the sampling of :meth:`plan`.
        lateral_offsets: offsets (m, left positive) of the extra paths; the centre line always comes first.
        speed_fractions: IDM target speeds as fractions of the lane speed limit (15 m/s when unknown).
        params: IDM gains (``target_velocity`` = the fallback speed).
    """

    name = "pdm_closed"

    def __init__(
        self,
        version: str = "v1",
        num_poses: int = 8,
        interval_s: float = 0.5,
        scorer: Any = None,
        lateral_offsets: tuple[float, ...] = LATERAL_OFFSETS,
        speed_fractions: tuple[float, ...] = SPEED_FRACTIONS,
        params: IDMParameters | None = None,
        map_radius: float = PDM_MAP_RADIUS,
    ) -> None:
        if version not in ("v1", "v2"):
            raise ValueError(f"PDMClosedPlanner: version must be 'v1' or 'v2', got {version!r}")
        self.version, self.scorer = version, scorer
        self.num_poses, self.interval_s = num_poses, interval_s
        self.lateral_offsets, self.map_radius = tuple(lateral_offsets), map_radius
        p = params or IDMParameters(target_velocity=15.0, min_gap_to_lead_agent=1.0, headway_time=1.5,
                                    accel_max=1.5, decel_max=3.0)  # fmt: skip
        self.policy = BatchIDMPolicy(tuple(speed_fractions), p.target_velocity, p.min_gap_to_lead_agent,
                                     p.headway_time, p.accel_max, p.decel_max)  # fmt: skip
        self.generator = ProposalGenerator(self.policy, TRAJECTORY_STEPS, STEP_S)
        self.last_scores: dict[str, np.ndarray] = {}
        self._map_context: MapContext | None = None
        self._route_cache = PDMRouteCache()

    def plan(self, observation: Observation) -> Trajectory:
        """The plan a NAVSIM PDM-Closed agent submits: the native trajectory sampled at ``interval_s, ...,
        num_poses x interval_s`` (held at its last pose past 5 s), in the current rear-axle frame."""
        native = self._native(observation)
        times = np.arange(1, self.num_poses + 1) * self.interval_s
        poses = sample_native(native, times)
        return Trajectory(global_to_local(poses, observation.current_state[:3]), self.interval_s)

    def reference_trajectory(self, observation: Observation) -> PDMReferenceTrajectory:
        """What NAVSIM's metric caching stores as the PDM-Closed trajectory: the 51 native states at t = 0, 0.1, ...,
        5.0 s; ``poses`` ``(50, 3)`` are those at t = 0.1 ... 5.0 s (``interval_s = 0.1``) and ``start_pose`` the
        one at t = 0 (the ego projected on the centre line, global)."""
        native = self._native(observation)
        local = global_to_local(native, observation.current_state[:3])
        return PDMReferenceTrajectory(local[1:], STEP_S, start_pose=native[0].copy())

    def proposals(self, observation: Observation) -> tuple[np.ndarray, list[PathRollout], PDMObservation]:
        """Global proposal poses ``(K, 41, 3)`` (path-major: centre line, then the offsets; policies inside), the
        rollouts per path and the observation they were unrolled against."""
        glob, rolls, pdm_obs, _ = self._proposals(observation)
        return glob, rolls, pdm_obs

    def _proposals(
        self, observation: Observation
    ) -> tuple[np.ndarray, list[PathRollout], PDMObservation, PDMRouteContext]:
        """:meth:`proposals` and the route context they were built on."""
        state = np.asarray(observation.current_state, dtype=np.float64)
        ctx = pdm_route_context(observation, self._route_cache)
        pdm_obs = self._observation(observation, ctx.route_lanes)
        targets = self.policy.target_velocities(ctx.speed_limit)
        centre = ProposalPath(ctx.states)
        paths = [centre] + [centre.parallel(o) for o in self.lateral_offsets]
        rolls = [self.generator.start(path, state, targets, TRAJECTORY_STEPS) for path in paths]
        rows = [np.arange(len(targets))] * len(rolls)
        self.generator.unroll_paths(rolls, pdm_obs, rows, 1, PROPOSAL_STEPS)
        poses = np.concatenate([r.poses[:, : PROPOSAL_STEPS + 1] for r in rolls])
        return poses, rolls, pdm_obs, ctx

    def observation_metric_cache(self, observation: Observation) -> MetricCache:
        """The metric cache PDM-Closed scores its proposals on, for any plan from ``observation``'s state: the agents
        valid now forecast at constant velocity (:func:`~planners.pdm_closed.observation.scoring_observation`), the
        on-route lane connectors red now held red, the drivable map around the ego; frames as a scene's cache, so
        ``rewards.pdm.PDMScorer.score(cache, trajectories (K, 8, 3))`` scores plans in the ego's frame. Its progress
        is normalised over the plans scored together (no reference plan)."""
        ctx = pdm_route_context(observation, self._route_cache)
        return self._metric_cache(observation, ctx, self._observation(observation, ctx.route_lanes))

    def _metric_cache(self, observation: Observation, ctx: PDMRouteContext, pdm_obs: PDMObservation) -> MetricCache:
        center = rear_axle_to_center(np.asarray(observation.current_state[:3], dtype=np.float64))[:2]
        self._map_context = _map_context(_require_map(observation), center, self._map_context)
        scored_obs, boxes = scoring_observation(observation, pdm_obs, TRAJECTORY_STEPS + 1)
        return build_observation_metric_cache(scored_obs, ctx.states[:, :2], ctx.route_lanes, boxes,
                                              list(pdm_obs.red_ids), self._map_context, self.version)  # fmt: skip

    def _observation(self, observation: Observation, route_lanes: set[str]) -> PDMObservation:
        map_api = _require_map(observation)
        red = [i for i in _red_connector_ids(observation, route_lanes) if i in map_api.lane_connectors]
        polygons = [map_api.lane_connector_polygon(i) for i in red]
        return build_pdm_observation(observation, red, polygons, TRAJECTORY_STEPS + 1, self.map_radius, STEP_S)

    def _native(self, observation: Observation) -> np.ndarray:
        """Global native trajectory ``(51, 3)`` at t = 0, 0.1, ..., 5.0 s."""
        state = np.asarray(observation.current_state, dtype=np.float64)
        glob, rolls, pdm_obs, ctx = self._proposals(observation)
        local = global_to_local(glob, state[:3])
        states = simulate_proposals(state, local[:, 1:], STEP_S, start_poses=local[:, 0])  # from their t = 0 states
        scores = self._score(observation, ctx, pdm_obs, states)
        best = int(np.argmax(scores))
        logger.debug("pdm_closed: proposal %d of %d, score %.3f", best, len(scores), scores[best])
        per_path = self.policy.num_policies
        roll, row = rolls[best // per_path], np.array([best % per_path])
        self.generator.unroll(roll, pdm_obs, row, PROPOSAL_STEPS + 1, TRAJECTORY_STEPS)
        return roll.poses[row[0]].copy()

    def _score(
        self, observation: Observation, ctx: PDMRouteContext, pdm_obs: PDMObservation, states: np.ndarray
    ) -> np.ndarray:
        """``(K,)`` proposal scores (progress along the centre line's vertices, as NAVSIM's ``PDMPath``); also sets
        :attr:`last_scores`."""
        cache = self._metric_cache(observation, ctx, pdm_obs)
        if self.scorer is not None and hasattr(self.scorer, "score_states"):
            out = dict(self.scorer.score_states(cache, states))
        elif self.version == "v1":
            out = score_states(cache, states, "v1", "batch")
        else:
            out = score_states(cache, states, "v2", "batch", apply_human_filter=False)
            out["score"] = out["pdm_score"]
        scores = np.asarray(out["score"], dtype=np.float64)
        self.last_scores = {k: np.asarray(v) for k, v in out.items()} | {"score": scores}
        return scores


__all__ = ["PDMClosedPlanner", "PDMReferenceTrajectory", "_current_agents", "sample_native"]
