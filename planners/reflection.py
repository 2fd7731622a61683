"""Safety reflection for the masked diffusion planner (ReflectDrive-style, gradient-free).

1. A safety check marks every waypoint of a trajectory safe or not: the ego footprint at the waypoint
   must not overlap a constant-velocity agent at that time and must lie inside the drivable area.
2. At the earliest unsafe waypoint, every token pair within a Manhattan radius of its (x, y) tokens
   is scored by a local score (safe first, then continuity with its neighbours and closeness to the
   original); the best safe pair becomes an *anchor*.
3. The anchors are fixed, the tokens of the waypoints around the newest anchor are re-masked and the
   model inpaints them (the regeneration is kept unless it is less safe than the anchored sequence).
   Repeat until safe or ``max_iterations``; otherwise fall back to the safest
   trajectory seen. A record of every change is returned, for plots and logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import shapely
import torch

from planners.masked_diffusion import MaskedDiffusionPlanner, headings_from_xy
from simulation.geometry import agent_box_corners, boxes_overlap, ego_box_corners
from simulation.types import AgentIndex


@dataclass
class SafetyChecker:
    """Per-waypoint safety in the current ego frame.

    Attributes:
        agent_boxes: ``(N, 7)`` agent boxes at t = 0 in the ego frame (ego-frame velocities), held at constant velocity.
        drivable: drivable area in the ego frame (shapely geometry), or ``None`` to skip the check.
        interval_s: time between waypoints.
        inside: point test ``(M, 2)`` ego-frame points -> ``(M,)`` bool (e.g. a map query), applied to the ego
            corners like ``drivable``; ``None`` to skip. Avoids building a polygon union per plan.
    """

    agent_boxes: np.ndarray
    drivable: shapely.Geometry | None = None
    interval_s: float = 0.5
    inside: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.drivable is not None:
            shapely.prepare(self.drivable)

    def waypoint_safety(self, poses: np.ndarray, steps: np.ndarray | None = None) -> np.ndarray:
        """``(K, P)`` bool safe flags for trajectories ``(K, P, 3)``.

        ``steps``: ``(P,)`` waypoint indices of the columns (time ``(step + 1) * interval_s``); default ``0..P-1``.
        """
        k, p = poses.shape[:2]
        ego = ego_box_corners(poses)  # (K, P, 4, 2)
        safe = np.ones((k, p), dtype=bool)
        if len(self.agent_boxes):
            t = ((np.arange(p) if steps is None else np.asarray(steps)) + 1) * self.interval_s
            boxes = np.repeat(self.agent_boxes[None], p, 0)  # (P, N, 7)
            boxes[..., AgentIndex.X] += boxes[..., AgentIndex.VX] * t[:, None]
            boxes[..., AgentIndex.Y] += boxes[..., AgentIndex.VY] * t[:, None]
            safe &= ~_any_overlap(ego, agent_box_corners(boxes))
        if self.drivable is not None:
            inside = shapely.contains_xy(self.drivable, ego[..., 0], ego[..., 1])  # (K, P, 4)
            safe &= inside.all(-1)
        if self.inside is not None:
            safe &= np.asarray(self.inside(ego.reshape(-1, 2)), dtype=bool).reshape(k, p, 4).all(-1)
        return safe

    def unsafe_counts(self, poses: np.ndarray) -> np.ndarray:
        """``(K,)`` number of unsafe waypoints of trajectories ``(K, P, 3)``."""
        return (~self.waypoint_safety(poses)).sum(-1)


def _any_overlap(ego: np.ndarray, agents: np.ndarray) -> np.ndarray:
    """``(K, P)``: ego boxes ``(K, P, 4, 2)`` overlapping any agent box ``(P, N, 4, 2)`` of the same waypoint.

    Bounding circles first; the separating-axis test runs only on the pairs whose circles meet.
    """
    ego_c, agent_c = ego.mean(-2), agents.mean(-2)  # (K, P, 2), (P, N, 2)
    ego_r = np.linalg.norm(ego - ego_c[..., None, :], axis=-1).max(-1)  # (K, P)
    agent_r = np.linalg.norm(agents - agent_c[..., None, :], axis=-1).max(-1)  # (P, N)
    dist = np.linalg.norm(ego_c[:, :, None] - agent_c[None], axis=-1)  # (K, P, N)
    ki, pi, ni = np.nonzero(dist <= ego_r[..., None] + agent_r[None])
    hit = np.zeros(ego.shape[:2], dtype=bool)
    if len(ki):
        overlap = boxes_overlap(ego[ki, pi], agents[pi, ni])
        hit[ki[overlap], pi[overlap]] = True
    return hit


@dataclass
class ReflectionRecord:
    """What reflection did to one trajectory."""

    iterations: int = 0
    anchors: list[tuple[int, tuple[float, float], tuple[float, float]]] = field(default_factory=list)
    initially_safe: bool = True
    finally_safe: bool = True
    fell_back: bool = False


def _neighbourhood(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(r, r, indexing="ij")
    keep = (np.abs(dx) + np.abs(dy)) <= radius
    return np.stack([dx[keep], dy[keep]], -1)


def _local_anchor(
    tokens: np.ndarray, k: int, checker: SafetyChecker, model: MaskedDiffusionPlanner, radius: int
) -> tuple[np.ndarray, bool]:
    """Best (x, y) token pair for waypoint ``k``: safe first, then continuity and closeness to the original."""
    tok = model.tokenizer
    xy = tok.decode(torch.from_numpy(tokens)).numpy()
    offsets = _neighbourhood(radius)
    ix = np.clip(tokens[2 * k] + offsets[:, 0], 0, tok.num_x - 1)
    iy = np.clip(tokens[2 * k + 1] + offsets[:, 1], tok.num_x, tok.mask_id - 1)
    res = tok.config.resolution
    cand_xy = np.stack([tok.config.x_min + ix * res, tok.config.y_min + (iy - tok.num_x) * res], -1)
    trials = np.repeat(xy[None], len(cand_xy), 0)
    trials[:, k] = cand_xy
    poses = headings_from_xy(torch.from_numpy(trials)).numpy()
    safe = checker.waypoint_safety(poses[:, k : k + 1], steps=np.array([k]))[:, 0]
    prev = xy[k - 1] if k > 0 else np.zeros(2)
    nxt = xy[k + 1] if k + 1 < len(xy) else 2 * xy[k] - prev
    continuity = np.linalg.norm(cand_xy - (prev + nxt) / 2.0, axis=-1)
    closeness = np.linalg.norm(cand_xy - xy[k], axis=-1)
    score = safe * 1000.0 - continuity - 0.5 * closeness
    best = int(np.argmax(score))
    return np.array([ix[best], iy[best]]), bool(safe[best])


def _unsafe_count(tokens: np.ndarray, checker: SafetyChecker, model: MaskedDiffusionPlanner) -> int:
    poses = headings_from_xy(model.tokenizer.decode(torch.from_numpy(tokens))).numpy()
    return int((~checker.waypoint_safety(poses[None])[0]).sum())


def reflect(
    model: MaskedDiffusionPlanner,
    features: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    checker: SafetyChecker,
    max_iterations: int = 10,
    radius: int = 10,
    remask_span: int = 1,
    context: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_steps: int | None = None,
    order: str | None = None,
) -> tuple[torch.Tensor, ReflectionRecord]:
    """Repair one token sequence ``(16,)`` of a single scene (``features`` with batch size 1).

    ``context``: the scene memory of ``model.encode(features)`` when the caller already has it (batch 1);
    ``num_steps`` / ``order``: unmasking steps (at most the number of re-masked tokens) and decoding order of
    the inpainting (default: the model's).
    """
    tok = model.tokenizer
    record = ReflectionRecord()
    current = tokens.clone().cpu().numpy()
    anchored = np.zeros(tok.config.num_poses, dtype=bool)
    if context is None:
        with torch.no_grad():
            context = model.encode(features)
    best, best_unsafe = current.copy(), None
    for iteration in range(max_iterations + 1):
        poses = headings_from_xy(tok.decode(torch.from_numpy(current))).numpy()
        safe = checker.waypoint_safety(poses[None])[0]
        unsafe = int((~safe).sum())
        if best_unsafe is None or unsafe < best_unsafe:
            best, best_unsafe = current.copy(), unsafe
        if iteration == 0:
            record.initially_safe = unsafe == 0
        if unsafe == 0 or iteration == max_iterations:
            break
        k = int(np.argmax(~safe))
        anchor, anchor_safe = _local_anchor(current, k, checker, model, radius)
        old = tuple(float(v) for v in tok.decode(torch.from_numpy(current)).numpy()[k])
        current[2 * k : 2 * k + 2] = anchor
        anchored[k] = True
        new = tuple(float(v) for v in tok.decode(torch.from_numpy(current)).numpy()[k])
        record.anchors.append((k, old, new))  # type: ignore[arg-type]
        record.iterations = iteration + 1
        if not anchor_safe:
            continue
        lo, hi = max(0, k - remask_span), min(tok.config.num_poses, k + remask_span + 1)
        free = np.zeros(tok.config.num_poses, dtype=bool)
        free[lo:hi] = True
        free &= ~anchored
        fixed = current.copy()
        fixed[np.repeat(free, 2)] = -1
        steps = min(model.config.num_steps if num_steps is None else num_steps, max(2 * int(free.sum()), 1))
        with torch.no_grad():
            inpainted = model.generate(
                {}, fixed=torch.from_numpy(fixed)[None], num_steps=steps, order=order, temperature=0.0, context=context
            )[0]
        # Keep the regeneration unless it is less safe than the anchored sequence itself.
        if _unsafe_count(inpainted.cpu().numpy(), checker, model) <= _unsafe_count(current, checker, model):
            current = inpainted.cpu().numpy()
    final_poses = headings_from_xy(tok.decode(torch.from_numpy(current))).numpy()
    if not checker.waypoint_safety(final_poses[None])[0].all():
        record.fell_back = True
        current = best
    record.finally_safe = bool(
        checker.waypoint_safety(headings_from_xy(tok.decode(torch.from_numpy(current))).numpy()[None])[0].all()
    )
    return torch.from_numpy(current), record
