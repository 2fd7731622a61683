"""Safety reflection for the masked diffusion planner (ReflectDrive-style, gradient-free).

1. A safety check marks every waypoint of a trajectory safe or not: the ego footprint at the waypoint
   must not overlap a constant-velocity agent at that time and must lie inside the drivable area.
   A caller may judge whole trajectories by another per-waypoint check (``safety``: e.g. the motion the
   scorer's controller drives from the plan, see :mod:`planners.masked_closed_loop`); then every decision
   of the loop below uses that check, and the waypoint check stays the local one of the anchor search.
2. At the earliest unsafe waypoint, every token pair within a Manhattan radius of its (x, y) tokens
   is scored by a local score (safe first, then continuity with its neighbours and closeness to the
   original); the best safe pair becomes an *anchor*.
3. The anchors are fixed, the tokens of the waypoints around the newest anchor are re-masked and the
   model inpaints them (the regeneration is kept unless it is less safe than the anchored sequence).
   Repeat until safe or ``max_iterations`` (default 10); otherwise fall back to the safest
   trajectory seen. A record of every round is returned, for plots and logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import shapely
import torch

from planners.masked_diffusion import MaskedDiffusionPlanner, headings_from_xy
from simulation.features import PlannerInput
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


SafetyFn = Callable[[np.ndarray], np.ndarray]
"""Per-waypoint safety of whole trajectories: poses ``(K, 8, 3)`` -> ``(K, 8)`` bool (``True`` = safe)."""


@dataclass
class ReflectionStep:
    """One anchor-and-inpaint round of :func:`reflect`.

    Attributes:
        waypoint: index of the earliest unsafe waypoint, where the anchor was placed.
        before, anchor: ``(x, y)`` of that waypoint before and after the anchor search (metres, ego frame).
        anchor_safe: the anchor passed the local safety check.
        remasked: waypoints re-masked and inpainted around the anchor (empty when the anchor was not safe).
        kept: the inpainted sequence was kept (else the anchored sequence without regeneration).
        unsafe_before, unsafe_after: unsafe waypoints of the whole trajectory before and after the round.
        trajectory: ``(8, 2)`` waypoints after the round.
    """

    waypoint: int
    before: tuple[float, float]
    anchor: tuple[float, float]
    anchor_safe: bool
    remasked: list[int]
    kept: bool
    unsafe_before: int
    unsafe_after: int
    trajectory: np.ndarray


@dataclass
class ReflectionRecord:
    """What reflection did to one trajectory (for plots and logs).

    Attributes:
        iterations: anchor-and-inpaint rounds run.
        anchors: ``(waypoint, (x, y) before, (x, y) after)`` per round (a summary of ``steps``).
        steps: every round in detail (:class:`ReflectionStep`).
        initial: ``(8, 2)`` waypoints reflection started from; ``final``: the ones it returned.
        initially_safe, finally_safe: the safety check on ``initial`` / ``final``.
        fell_back: no round made the trajectory safe; the safest trajectory seen was returned.
        changed_waypoints: indices of the waypoints whose tokens differ between ``initial`` and ``final``.
    """

    iterations: int = 0
    anchors: list[tuple[int, tuple[float, float], tuple[float, float]]] = field(default_factory=list)
    steps: list[ReflectionStep] = field(default_factory=list)
    initial: np.ndarray | None = None
    final: np.ndarray | None = None
    initially_safe: bool = True
    finally_safe: bool = True
    fell_back: bool = False
    changed_waypoints: list[int] = field(default_factory=list)


def _neighbourhood(radius: int) -> np.ndarray:
    """``(M, 2)`` integer offsets with ``|dx| + |dy| <= radius`` (the origin included)."""
    r = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(r, r, indexing="ij")
    keep = (np.abs(dx) + np.abs(dy)) <= radius
    return np.stack([dx[keep], dy[keep]], -1)


def _poses(model: MaskedDiffusionPlanner, tokens: np.ndarray) -> np.ndarray:
    """Poses ``(..., 8, 3)`` of token sequences ``(..., 16)`` (headings from the displacements)."""
    return headings_from_xy(model.tokenizer.decode(torch.from_numpy(tokens))).numpy().astype(np.float64)


def local_anchor(
    tokens: np.ndarray,
    k: int,
    checker: SafetyChecker,
    model: MaskedDiffusionPlanner,
    radius: int,
    safety: SafetyFn | None = None,
    chunk: int = 16,
) -> tuple[np.ndarray, bool]:
    """The safety anchor of waypoint ``k``: the best ``(x, y)`` token pair within Manhattan ``radius`` of its own.

    Every pair of the neighbourhood replaces waypoint ``k`` in turn and gets a local score:

    * safety: the waypoint passes ``checker`` at its time (constant-velocity agents, drivable area); with
      ``safety`` (the whole-trajectory check reflection runs, e.g. on the tracked motion) the trajectory must
      also pass that check up to waypoint ``k``;
    * continuity: distance (m) to the midpoint of its neighbours (the origin before the first waypoint, the
      mirrored previous waypoint after the last one), and, as a tie-break, half the distance to where it was.

    Safe pairs beat unsafe ones (passing both checks beats passing the waypoint check only); then the better
    continuity wins. Returns the ``(x id, y id)`` pair and whether it passes the waypoint check.
    """
    tok = model.tokenizer
    xy = tok.decode(torch.from_numpy(tokens)).numpy().astype(np.float64)
    offsets = _neighbourhood(radius)
    ix = np.clip(tokens[2 * k] + offsets[:, 0], 0, tok.num_x - 1)
    iy = np.clip(tokens[2 * k + 1] + offsets[:, 1], tok.num_x, tok.mask_id - 1)
    pairs = np.unique(np.stack([ix, iy], -1), axis=0)  # clipping at the codebook edge repeats pairs
    trials = np.repeat(tokens[None], len(pairs), 0)
    trials[:, 2 * k : 2 * k + 2] = pairs
    poses = _poses(model, trials)  # (M, 8, 3): the heading of waypoint k follows the candidate
    safe = checker.waypoint_safety(poses[:, k : k + 1], steps=np.array([k]))[:, 0]
    cand = poses[:, k, :2]
    prev = xy[k - 1] if k > 0 else np.zeros(2)
    nxt = xy[k + 1] if k + 1 < len(xy) else 2 * xy[k] - prev
    continuity = np.linalg.norm(cand - (prev + nxt) / 2.0, axis=-1)
    closeness = np.linalg.norm(cand - xy[k], axis=-1)
    score = -continuity - 0.5 * closeness
    prefix_safe = np.zeros(len(pairs), dtype=bool)
    if safety is not None:
        # Locally safe pairs, best score first, checked in chunks until one passes: the same choice as checking
        # them all (the first chunk with a pass holds the best-scored passing pair), at a fraction of the cost
        # when ``safety`` is expensive (a tracked rollout per pair).
        ranked = np.flatnonzero(safe)[np.argsort(-score[safe], kind="stable")]
        for start in range(0, len(ranked), chunk):
            part = ranked[start : start + chunk]
            prefix_safe[part] = safety(poses[part])[:, : k + 1].all(-1)
            if prefix_safe[part].any():
                break
    best = int(np.lexsort((-score, ~prefix_safe, ~safe))[0])  # safe first, then both checks, then score
    return pairs[best].copy(), bool(safe[best])


def _inpaint_around(
    model: MaskedDiffusionPlanner,
    current: np.ndarray,
    k: int,
    anchored: np.ndarray,
    remask_span: int,
    check: SafetyFn,
    context: tuple[torch.Tensor, torch.Tensor],
    num_steps: int | None,
    order: str | None,
) -> tuple[np.ndarray, list[int], bool]:
    """Re-mask the waypoints within ``remask_span`` of anchor ``k`` (but no anchored one) and inpaint them.

    ``current``: ``(16,)`` token ids; ``anchored``: ``(8,)`` bool, waypoints whose tokens stay fixed. Returns the
    sequence to continue from (the inpainted one unless ``check`` finds it less safe than ``current``), the
    re-masked waypoint indices (empty: nothing to inpaint, ``current`` returned as is) and whether the
    inpainted sequence was kept.
    """
    free = np.zeros(model.tokenizer.config.num_poses, dtype=bool)
    free[max(0, k - remask_span) : k + remask_span + 1] = True
    free &= ~anchored
    remasked = [int(i) for i in np.flatnonzero(free)]
    if not remasked:
        return current, remasked, False
    fixed = current.copy()
    fixed[np.repeat(free, 2)] = -1
    steps = min(model.config.num_steps if num_steps is None else num_steps, 2 * len(remasked))
    with torch.no_grad():
        inpainted = model.generate(
            None, fixed=torch.from_numpy(fixed)[None], num_steps=steps, order=order, temperature=0.0, context=context
        )[0].cpu().numpy()  # fmt: skip
    both = check(_poses(model, np.stack([current, inpainted])))
    kept = int((~both[1]).sum()) <= int((~both[0]).sum())
    return (inpainted if kept else current), remasked, kept


def _check_arguments(max_iterations: int, radius: int, remask_span: int, patience: int | None) -> None:
    """Raise ``ValueError`` on the settings :func:`reflect` cannot run with."""
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 or None (got {patience})")
    if max_iterations < 0 or radius < 0 or remask_span < 0:
        raise ValueError(
            f"max_iterations, radius and remask_span must be >= 0 (got {max_iterations}, {radius}, {remask_span})"
        )


def _reflection_round(
    model: MaskedDiffusionPlanner,
    current: np.ndarray,
    flags: np.ndarray,
    checker: SafetyChecker,
    anchored: np.ndarray,
    check: SafetyFn,
    safety: SafetyFn | None,
    radius: int,
    remask_span: int,
    context: tuple[torch.Tensor, torch.Tensor],
    num_steps: int | None,
    order: str | None,
) -> tuple[np.ndarray, np.ndarray, ReflectionStep]:
    """One anchor-and-inpaint round of :func:`reflect` on ``current`` ``(16,)`` tokens, whose ``(8,)`` safety
    ``flags`` (by ``check``) hold at least one unsafe waypoint.

    Anchors the earliest unsafe waypoint (marked in ``anchored``, ``(8,)`` bool, updated in place) and, when the
    anchor is safe, inpaints around it. Returns the new tokens, their safety flags ``(8,)`` and the round's record.
    """
    unsafe_before = int((~flags).sum())
    k = int(np.argmax(~flags))
    before = tuple(float(v) for v in _poses(model, current)[k, :2])
    anchor, anchor_safe = local_anchor(current, k, checker, model, radius, safety)
    current[2 * k : 2 * k + 2] = anchor
    anchored[k] = True
    after = tuple(float(v) for v in _poses(model, current)[k, :2])
    remasked: list[int] = []
    kept = False
    if anchor_safe:
        current, remasked, kept = _inpaint_around(
            model, current, k, anchored, remask_span, check, context, num_steps, order
        )
    flags = check(_poses(model, current)[None])[0]
    step = ReflectionStep(
        k, before, after, anchor_safe, remasked, kept, unsafe_before, int((~flags).sum()),  # type: ignore[arg-type]
        _poses(model, current)[:, :2],
    )  # fmt: skip
    return current, flags, step


def _conclude(
    model: MaskedDiffusionPlanner,
    record: ReflectionRecord,
    current: np.ndarray,
    flags: np.ndarray,
    best: np.ndarray,
    original: np.ndarray,
    check: SafetyFn,
) -> np.ndarray:
    """The tokens ``(16,)`` :func:`reflect` returns: ``current`` if its safety ``flags`` ``(8,)`` all pass, else the
    safest seen, ``best``; fills the closing fields of ``record`` (``original``: the ``(16,)`` tokens it started
    from)."""
    if not flags.all():
        record.fell_back = True
        current = best
        flags = check(_poses(model, current)[None])[0]
    record.finally_safe = bool(flags.all())
    record.final = _poses(model, current)[:, :2]
    changed = (current != original).reshape(-1, 2).any(-1)
    record.changed_waypoints = [int(i) for i in np.flatnonzero(changed)]
    return current


def reflect(
    model: MaskedDiffusionPlanner,
    features: PlannerInput[torch.Tensor],
    tokens: torch.Tensor,
    checker: SafetyChecker,
    max_iterations: int = 10,
    radius: int = 10,
    remask_span: int = 1,
    context: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_steps: int | None = None,
    order: str | None = None,
    safety: SafetyFn | None = None,
    patience: int | None = None,
) -> tuple[torch.Tensor, ReflectionRecord]:
    """Repair one token sequence ``(16,)`` of a single scene (``features`` with batch size 1).

    Each round: the safety check (``safety``, default ``checker.waypoint_safety``) finds the earliest unsafe
    waypoint; :func:`local_anchor` moves it to the best safe token pair within ``radius`` (Manhattan, tokens);
    the anchor is fixed (with every earlier anchor), the ``remask_span`` waypoints on each side of it are
    re-masked and the model inpaints them; the inpainted sequence is kept unless the same check finds it less
    safe than the anchored one. Stops when the check passes or after ``max_iterations`` rounds; a trajectory
    that is still unsafe is replaced by the safest one seen (fewest unsafe waypoints, the earliest among ties).

    ``safety`` lets the caller judge whole trajectories differently from the waypoint check (e.g. by the
    motion a controller drives from them, see :class:`planners.masked_closed_loop.MaskedClosedLoopPlanner`);
    every acceptance decision uses it. ``patience``: stop early after that many rounds in a row that do not
    lower the fewest unsafe waypoints seen (``None``: run up to ``max_iterations``). ``context``: the scene
    memory of ``model.encode(features)`` when the caller already has it (batch 1); ``num_steps`` / ``order``:
    unmasking steps (at most the number of re-masked tokens) and decoding order of the inpainting (default:
    the model's).
    """
    _check_arguments(max_iterations, radius, remask_span, patience)
    check: SafetyFn = safety if safety is not None else checker.waypoint_safety
    current = tokens.detach().clone().cpu().numpy()
    record = ReflectionRecord(initial=_poses(model, current)[:, :2])
    anchored = np.zeros(model.tokenizer.config.num_poses, dtype=bool)
    if context is None:
        with torch.no_grad():
            context = model.encode(features)
    flags = check(_poses(model, current)[None])[0]
    record.initially_safe = bool(flags.all())
    best, best_unsafe = current.copy(), int((~flags).sum())
    stale = 0
    for _ in range(max_iterations):
        if flags.all() or (patience is not None and stale >= patience):
            break
        current, flags, step = _reflection_round(
            model, current, flags, checker, anchored, check, safety, radius, remask_span, context, num_steps, order
        )
        if step.unsafe_after < best_unsafe:
            best, best_unsafe, stale = current.copy(), step.unsafe_after, 0
        else:
            stale += 1
        record.anchors.append((step.waypoint, step.before, step.anchor))
        record.steps.append(step)
        record.iterations += 1
    current = _conclude(model, record, current, flags, best, tokens.cpu().numpy(), check)
    return torch.from_numpy(current), record
