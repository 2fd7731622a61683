"""The masked diffusion planner in closed loop, with or without safety reflection.

Per observation:

1. features of the observation (:func:`simulation.features.observation_features`), scene encoded once;
2. ``K`` endpoint goals (distance NMS over the endpoint logits of the fully masked sequence), one trajectory
   inpainted per goal in ``steps`` unmasking steps in the chosen ``order`` (argmax, or seeded temperature
   sampling: the same observation gives the same plan);
3. without reflection, the most likely goal's trajectory. With reflection, a :class:`SafetyChecker` is built
   from the observation (current agents at constant velocity, drivable area from the map); the most likely
   *safe* candidate is returned when there is one, otherwise the candidates are repaired by
   :func:`planners.reflection.reflect`, most likely first, until one is safe; if none becomes safe, the safest
   trajectory seen (fewest unsafe waypoints) is returned. With ``track``, candidates are judged by the motion
   the scorer's controller drives from them (LQR tracker + bicycle model, 10 Hz) instead of their waypoints,
   and so is every decision inside reflection (earliest unsafe waypoint, anchor pairs, keeping an inpainting):
   :meth:`MaskedClosedLoopPlanner.waypoint_safety` folds the tracked 10 Hz steps onto the 8 waypoints.

:attr:`MaskedClosedLoopPlanner.last_candidates` and :attr:`MaskedClosedLoopPlanner.last_record` keep the
last plan's candidates and what reflection did, for plots and logs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import shapely
import torch

from planners.masked_diffusion import ORDERS, MaskedDiffusionPlanner, headings_from_xy
from planners.reflection import ReflectionRecord, SafetyChecker, reflect
from simulation.features import PLANNER_RASTER, PlannerInput, batch, observation_features
from simulation.geometry import global_to_local, rotate_vectors, transform_points_to_global
from simulation.kinematics import simulate_proposals
from simulation.metric_cache import DRIVABLE_LAYERS, MAP_RADIUS, drivable_map_polygons
from simulation.protocols import Observation
from simulation.render import RasterConfig
from simulation.types import AgentIndex, Trajectory


@dataclass
class MaskedPlanRecord:
    """What one plan call did.

    Attributes:
        candidates: ``(K, 8, 3)`` decoded goal candidates (ego frame), most likely goal first.
        goal_scores: ``(K,)`` endpoint log-probabilities of the candidates' goals.
        unsafe: ``(K,)`` unsafe waypoints per candidate (``None`` without reflection); with ``track``, unsafe
            10 Hz steps of the tracked motion.
        chosen: index of the returned candidate, or ``-1`` when the plan is a repaired candidate.
        reflections: one record per candidate sent to :func:`~planners.reflection.reflect`.
        fell_back: no candidate was safe, none could be repaired: the safest trajectory seen was returned.
        final_unsafe: unsafe waypoints of the returned plan (``None`` without reflection).
    """

    candidates: np.ndarray
    goal_scores: np.ndarray
    unsafe: np.ndarray | None = None
    chosen: int = 0
    reflections: list[ReflectionRecord] = field(default_factory=list)
    fell_back: bool = False
    final_unsafe: int | None = None


def safety_checker(
    observation: Observation, behind_m: float = 0.0, map_radius: float = MAP_RADIUS, drivable: bool = True
) -> SafetyChecker:
    """The safety check of an observation, in its current rear-axle frame.

    Agents: the valid boxes of the current frame, moved at their current velocity; agents whose centre lies
    more than ``behind_m`` behind the rear axle are left out (a car closing in from behind is not the
    ego's to avoid). Drivable area: the ego corners must lie in one of the polygons the PDM scorer calls
    drivable (roadblocks, intersections, drivable areas, carparks within ``map_radius``, see
    :func:`simulation.metric_cache.drivable_map_polygons`), tested by one tree query per check; skipped when
    the observation has no map or ``drivable`` is false.
    """
    pose = np.asarray(observation.current_state[:3], dtype=np.float64)
    agents = observation.agents
    boxes = np.asarray(agents.boxes[-1][agents.valid[-1]], dtype=np.float64).reshape(-1, 7).copy()
    if len(boxes):
        boxes[:, :3] = global_to_local(boxes[:, :3], pose)
        boxes[:, [AgentIndex.VX, AgentIndex.VY]] = rotate_vectors(boxes[:, [AgentIndex.VX, AgentIndex.VY]], -pose[2])
        boxes = boxes[boxes[:, AgentIndex.X] >= -behind_m]
    if observation.map_api is None or not drivable:
        return SafetyChecker(boxes)
    _, layers, polygons = drivable_map_polygons(observation.map_api, pose[:2], map_radius)
    keep = {int(layer) for layer in DRIVABLE_LAYERS}
    tree = shapely.STRtree([g for g, layer in zip(polygons, layers) if layer in keep])

    def inside(points: np.ndarray) -> np.ndarray:
        out = np.zeros(len(points), dtype=bool)
        if len(tree.geometries) and len(points):
            hits = tree.query(shapely.points(transform_points_to_global(points, pose)), predicate="intersects")
            out[hits[0]] = True
        return out

    return SafetyChecker(boxes, None, inside=inside)


def decode_candidates(
    model: MaskedDiffusionPlanner,
    inputs: PlannerInput[torch.Tensor],
    num_candidates: int,
    order: str,
    steps: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Goal-conditioned candidates of one scene (batch 1).

    Returns ``tokens (K, 16)``, ``poses (K, 8, 3)``, ``goal_scores (K,)`` (most likely goal first) and the scene
    memory ``(memory (1, M, d), pad (1, M))`` for reuse (e.g. by reflection).
    """
    tok = model.tokenizer
    memory, pad = model.encode(inputs)
    goals, goal_scores = model.endpoint_goals((memory, pad), num_candidates)  # (1, K, 2) token ids, (1, K)
    k = goals.shape[1]
    fixed = torch.full((k, tok.seq_len), -1, dtype=torch.long, device=memory.device)
    fixed[:, -2:] = goals[0]
    tokens = model.generate(
        None,
        fixed=fixed,
        num_steps=steps,
        order=order,
        temperature=temperature,
        generator=generator,
        context=(memory.expand(k, -1, -1), pad.expand(k, -1)),
    )
    poses = headings_from_xy(tok.decode(tokens))
    return tokens, poses, goal_scores[0], (memory, pad)


class MaskedClosedLoopPlanner:
    """A :class:`MaskedDiffusionPlanner` as a ``simulation.protocols.Planner``.

    Args:
        model: the masked diffusion planner (eval mode).
        order: decoding order (``confidence``, ``causal``, ``reverse_causal``).
        steps: unmasking steps per candidate.
        temperature: sampling temperature (0 = argmax).
        num_candidates: ``K`` goal candidates.
        reflect: run the safety check and reflection on the candidates.
        seed: seed of the sampling (the same observation gives the same plan).
        raster: the raster the model was trained on.
        name: the planner's name in result tables.
        max_reflections: candidates sent to reflection at most (most likely first) when none is safe.
        max_iterations, radius, patience: reflection budget, anchor search radius (tokens) and the rounds
            without progress after which a repair is given up, see :func:`planners.reflection.reflect`.
        check_drivable: the safety check includes the drivable area (else agents only).
        track: judge candidates (and the repaired plan) by the motion a controller would drive (LQR tracker +
            bicycle model at 10 Hz, as the scorer simulates it) rather than by the planned waypoints; catches
            plans whose waypoints are safe but cannot be followed (a stop from speed overshoots).
    """

    def __init__(
        self,
        model: MaskedDiffusionPlanner,
        order: str = "reverse_causal",
        steps: int = 8,
        temperature: float = 0.0,
        num_candidates: int = 3,
        reflect: bool = False,
        seed: int = 0,
        raster: RasterConfig = PLANNER_RASTER,
        name: str | None = None,
        max_reflections: int = 1,
        max_iterations: int = 10,
        radius: int = 10,
        patience: int | None = 3,
        check_drivable: bool = True,
        track: bool = False,
    ) -> None:
        if order not in ORDERS:
            raise ValueError(f"unknown decoding order {order!r}; choose one of {ORDERS}")
        if steps < 1 or num_candidates < 1:
            raise ValueError(f"steps and num_candidates must be >= 1 (got {steps}, {num_candidates})")
        self.model = model.eval()
        self.order, self.steps, self.temperature = order, int(steps), float(temperature)
        self.num_candidates, self.reflect, self.seed = int(num_candidates), bool(reflect), int(seed)
        self.raster = raster
        self.name = name or f"masked_{order}" + ("_reflect" if reflect else "")
        self.max_reflections, self.max_iterations, self.radius = max_reflections, max_iterations, radius
        self.check_drivable, self.track, self.patience = check_drivable, track, patience
        self.last_candidates: np.ndarray | None = None
        self.last_record: MaskedPlanRecord | None = None

    def plan(self, observation: Observation) -> Trajectory:
        inputs = batch([observation_features(observation, self.raster)])
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            tokens, poses, scores, context = decode_candidates(
                self.model, inputs, self.num_candidates, self.order, self.steps, self.temperature, generator
            )
            candidates = poses.double().numpy()
            record = MaskedPlanRecord(candidates, scores.double().numpy())
            plan = candidates[0]
            if self.reflect:
                plan = self._reflect(observation, inputs, tokens, context, record)
        if not np.isfinite(plan).all():
            raise ValueError(f"{self.name}: planner returned a non-finite trajectory")
        self.last_candidates, self.last_record = candidates, record
        return Trajectory(plan)

    def waypoint_safety(self, observation: Observation, checker: SafetyChecker, poses: np.ndarray) -> np.ndarray:
        """``(K, 8)`` safe flags of plans ``(K, 8, 3)``: the waypoint check, or with ``track`` the tracked motion.

        With ``track``, waypoint ``k`` is safe when the ego driven from the plan by the scorer's controller
        (LQR tracker + bicycle model, 10 Hz) passes the check at every 10 Hz step of ``(0.5 k, 0.5 (k + 1)]`` s.
        This is the check :func:`~planners.reflection.reflect` runs on whole trajectories.
        """
        if not self.track:
            return checker.waypoint_safety(poses)
        state = np.asarray(observation.current_state, dtype=np.float64)
        states = simulate_proposals(state, poses)  # (K, 41, 11) global
        local = global_to_local(states[:, 1:, :3], state[:3])
        steps = dataclasses.replace(checker, interval_s=0.1).waypoint_safety(local)  # (K, 40)
        return np.asarray(steps.reshape(len(poses), poses.shape[1], -1).all(-1))

    def _unsafe(self, observation: Observation, checker: SafetyChecker, poses: np.ndarray) -> np.ndarray:
        """``(K,)`` unsafe waypoints of plans ``(K, 8, 3)`` (``track``: unsafe 10 Hz steps of the tracked motion)."""
        if not self.track:
            return checker.unsafe_counts(poses)
        state = np.asarray(observation.current_state, dtype=np.float64)
        states = simulate_proposals(state, poses)  # (K, 41, 11) global
        local = global_to_local(states[:, 1:, :3], state[:3])
        return dataclasses.replace(checker, interval_s=0.1).unsafe_counts(local)

    def _reflect(
        self,
        observation: Observation,
        inputs: PlannerInput[torch.Tensor],
        tokens: torch.Tensor,
        context: tuple[torch.Tensor, torch.Tensor],
        record: MaskedPlanRecord,
    ) -> np.ndarray:
        """The most likely safe candidate, else the first repaired one, else the safest seen (record updated)."""
        checker = safety_checker(observation, drivable=self.check_drivable)
        record.unsafe = self._unsafe(observation, checker, record.candidates)
        safe = np.flatnonzero(record.unsafe == 0)
        if len(safe):
            record.chosen, record.final_unsafe = int(safe[0]), 0
            return record.candidates[safe[0]]
        seen = [(int(record.unsafe[i]), i, record.candidates[i]) for i in range(len(record.candidates))]
        for i in range(min(self.max_reflections, len(tokens))):
            fixed, rec = reflect(
                self.model,
                inputs,
                tokens[i],
                checker,
                max_iterations=self.max_iterations,
                radius=self.radius,
                context=context,
                num_steps=self.steps,
                order=self.order,
                safety=lambda poses: self.waypoint_safety(observation, checker, poses),
                patience=self.patience,
            )
            record.reflections.append(rec)
            repaired = headings_from_xy(self.model.tokenizer.decode(fixed)).double().numpy()
            unsafe = int(self._unsafe(observation, checker, repaired[None])[0])
            if unsafe == 0:
                record.chosen, record.final_unsafe = -1, 0
                return repaired
            seen.append((unsafe, -1, repaired))
        unsafe, chosen, plan = min(seen, key=lambda s: s[0])  # stable: most likely first among ties
        record.chosen, record.final_unsafe, record.fell_back = chosen, unsafe, True
        return plan
