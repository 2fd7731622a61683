"""NAVSIM PDM sub-metrics as pure functions over batched simulated ego states (specs/navsim.md §1-§2).

Every function takes arrays for ``K`` proposals over ``T = 41`` steps of 0.1 s and returns ``(K,)`` values.
Geometry never goes through shapely at scoring time: ego and agent boxes are tested by separating axes in
numba kernels (with a distance prefilter), map membership by the metric cache's polygon grid.

The reference scorer walks the contacts of each proposal in time order and ignores a track for the rest of
the horizon once a contact with it was judged not at fault (NC) or not critical (TTC). Consequently only
the *first* contact with each track matters, which is what the kernels compute.
"""

from __future__ import annotations

from enum import IntEnum

import numba
import numpy as np

from simulation.geometry import boxes_overlap, ego_box_corners, rear_axle_to_center
from simulation.metric_cache import MetricCache
from simulation.polygon_grid import box_intersects_polygon, grid_hits
from simulation.types import DYNAMIC_TYPES, PACIFICA, AgentIndex, StateIndex

#: Collision classification (nuPlan ``CollisionType``) and speed thresholds.
STOPPED_SPEED_THRESHOLD = 5e-2  # m/s, ego / track considered stopped for NC
TTC_STOPPED_SPEED_THRESHOLD = 5e-3  # m/s, TTC skipped below this ego speed
AHEAD_ANGLE_DEG = 30.0
BEHIND_ANGLE_DEG = 150.0
STATIC_COLLISION_SCORE = 0.5  # at-fault contact with a static object (cone, barrier, sign, generic object)
#: TTC: constant-velocity look-ahead of 0, 0.3, 0.6 and 0.9 s.
TTC_LOOKAHEAD_STEPS = np.arange(0, 10, 3)
#: DDC: oncoming progress summed over 1 s (current + 10 previous steps); < 2 m -> 1, < 6 m -> 0.5, else 0.
DDC_HORIZON_STEPS = int(1.0 / 0.1)
DDC_COMPLIANCE_THRESHOLD = 2.0
DDC_VIOLATION_THRESHOLD = 6.0
#: LK: more than 0.5 m from the centre line for 20 consecutive steps (outside intersections) fails.
LK_DEVIATION_LIMIT = 0.5
LK_STEPS = int(np.ceil(2.0 / 0.1))

_EGO_RADIUS = float(np.hypot(PACIFICA.length / 2.0, PACIFICA.width / 2.0))
_MAX_HITS = 64


class EgoArea(IntEnum):
    """Columns of the per-step ego-area flags ``(K, T, 5)``."""

    MULTIPLE_LANES = 0
    NON_DRIVABLE_AREA = 1
    ONCOMING_TRAFFIC = 2
    CENTER_IN_INTERSECTION = 3
    REAR_AXLE_IN_INTERSECTION = 4


def ego_points(states: np.ndarray) -> np.ndarray:
    """``(K, T, 6, 2)`` ego footprint corners (front-left, rear-left, rear-right, front-right), centre, rear axle."""
    poses = states[..., : StateIndex.HEADING + 1]
    corners = ego_box_corners(poses)
    center = rear_axle_to_center(poses)[..., None, :2]
    return np.concatenate([corners, center, poses[..., None, :2]], -2)


@numba.njit(cache=True)
def _in_list(hits, count, m) -> bool:  # type: ignore[no-untyped-def]
    for g in range(count):
        if hits[g] == m:
            return True
    return False


@numba.njit(cache=True)
def _multiple_lanes(hits, counts, cat) -> bool:  # type: ignore[no-untyped-def]
    """More than one lane holds a corner, and no single lane holds all four corners."""
    n_lanes = 0
    for p in range(4):
        for h in range(counts[p]):
            m = hits[p, h]
            if not cat[m] & 2:
                continue
            seen = False
            for q in range(p):
                seen = seen or _in_list(hits[q], counts[q], m)
            if not seen:
                n_lanes += 1
    for h in range(counts[0]):
        m = hits[0, h]
        if cat[m] & 2 and _in_list(hits[1], counts[1], m) and _in_list(hits[2], counts[2], m):
            if _in_list(hits[3], counts[3], m):
                return False
    return n_lanes > 1


@numba.njit(cache=True)
def _any_category(hits, count, cat, bit) -> bool:  # type: ignore[no-untyped-def]
    for h in range(count):
        if cat[hits[h]] & bit:
            return True
    return False


@numba.njit(cache=True)
def _ego_area_kernel(points, cat, meta, offs, polys, full, coords, rings, poly_rings, out):  # type: ignore[no-untyped-def]
    hits = np.empty((6, _MAX_HITS), dtype=np.int64)
    counts = np.zeros(6, dtype=np.int64)
    for s in range(points.shape[0]):
        for p in range(6):
            counts[p] = grid_hits(
                points[s, p, 0], points[s, p, 1], meta, offs, polys, full, coords, rings, poly_rings, hits[p]
            )
        n_drivable_corners = 0
        for p in range(4):
            n_drivable_corners += _any_category(hits[p], counts[p], cat, 1)
        out[s, 0] = _multiple_lanes(hits, counts, cat)
        out[s, 1] = n_drivable_corners < 4
        out[s, 2] = not _any_category(hits[4], counts[4], cat, 4)
        out[s, 3] = _any_category(hits[4], counts[4], cat, 8)
        out[s, 4] = _any_category(hits[5], counts[5], cat, 8)


def ego_area(cache: MetricCache, points: np.ndarray) -> np.ndarray:
    """Ego-area flags ``(K, T, 5)`` (:class:`EgoArea`) from ego points ``(K, T, 6, 2)`` (:func:`ego_points`).

    MULTIPLE_LANES: more than one lane / lane connector holds a corner and none holds all four.
    NON_DRIVABLE_AREA: a corner lies outside every roadblock / intersection / drivable / carpark polygon.
    ONCOMING_TRAFFIC: the centre lies in no on-route lane or lane connector.
    """
    shape = points.shape[:-2]
    flat = np.ascontiguousarray(points.reshape(-1, 6, 2))
    out = np.zeros((flat.shape[0], 5), dtype=np.bool_)
    _ego_area_kernel(flat, cache.map_categories, *cache.map_grid.kernel_args(), out)  # type: ignore[call-arg]
    return out.reshape(shape + (5,))


@numba.njit(cache=True)
def _overlap(a, ax, ay, b) -> bool:  # type: ignore[no-untyped-def]
    """Separating-axis test between quadrilateral ``a`` shifted by ``(ax, ay)`` and ``b`` (touching counts)."""
    for shape in range(2):
        poly = a if shape == 0 else b
        for e in range(2):
            nx = -(poly[e + 1, 1] - poly[e, 1])
            ny = poly[e + 1, 0] - poly[e, 0]
            amin, amax, bmin, bmax = np.inf, -np.inf, np.inf, -np.inf
            for i in range(4):
                pa = nx * (a[i, 0] + ax) + ny * (a[i, 1] + ay)
                pb = nx * b[i, 0] + ny * b[i, 1]
                amin, amax = min(amin, pa), max(amax, pa)
                bmin, bmax = min(bmin, pb), max(bmax, pb)
            if amax < bmin or bmax < amin:
                return False
    return True


@numba.njit(cache=True)
def _first_contacts(ego, ego_c, velocity, steps, dt, active, t_count, agents, agent_c, agent_valid, radius,  # type: ignore[no-untyped-def]
                    ego_box, agent_box, out):  # fmt: skip
    """``out[k, n]`` = first event ``t * len(steps) + j`` where the ego box at step ``t`` moved by ``velocity *
    steps[j] * dt`` touches agent ``n`` at step ``t + steps[j]`` (``-1`` if none); events in time-major order.

    Pairs whose swept bounding boxes (``ego_box`` ``(K, 4)``, ``agent_box`` ``(N, 4)``) are farther apart than
    ``radius[n]`` are skipped; otherwise a centre-distance test precedes the separating-axis test."""
    n_steps = steps.shape[0]
    for k in range(ego.shape[0]):
        for n in range(agents.shape[1]):
            r = radius[n]
            if (ego_box[k, 0] > agent_box[n, 2] + r or agent_box[n, 0] > ego_box[k, 2] + r
                    or ego_box[k, 1] > agent_box[n, 3] + r or agent_box[n, 1] > ego_box[k, 3] + r):  # fmt: skip
                continue
            done = False
            for t in range(t_count):
                if done:
                    break
                if not active[k, t]:
                    continue
                for j in range(n_steps):
                    ta = t + steps[j]
                    if not agent_valid[ta, n]:
                        continue
                    dx = velocity[k, t, 0] * steps[j] * dt
                    dy = velocity[k, t, 1] * steps[j] * dt
                    ex, ey = ego_c[k, t, 0] + dx - agent_c[ta, n, 0], ego_c[k, t, 1] + dy - agent_c[ta, n, 1]
                    if ex * ex + ey * ey > r * r:
                        continue
                    if _overlap(ego[k, t], dx, dy, agents[ta, n]):
                        out[k, n] = t * n_steps + j
                        done = True
                        break


def first_contacts(
    cache: MetricCache,
    corners: np.ndarray,
    velocity: np.ndarray,
    active: np.ndarray,
    t_count: int,
    steps: np.ndarray,
    dt: float = 0.1,
) -> np.ndarray:
    """``(K, N)`` index of the first contact event per proposal and track (``-1``: none).

    See :func:`_first_contacts` for the event order.
    """
    boxes = cache.agent_boxes
    out = np.full((corners.shape[0], boxes.shape[1]), -1, dtype=np.int64)
    if out.size == 0:
        return out
    agent_c = np.ascontiguousarray(boxes[..., :2])
    half, agent_box = cache.agent_extent
    radius = _EGO_RADIUS + half + 1e-6
    ego_c = corners.mean(-2)
    far = ego_c[:, :t_count] + velocity[:, :t_count] * (steps.max() * dt)
    both = np.concatenate([ego_c[:, :t_count], far], 1)
    ego_box = np.concatenate([both.min(1), both.max(1)], -1)
    _first_contacts(
        np.ascontiguousarray(corners), np.ascontiguousarray(ego_c), np.ascontiguousarray(velocity),
        steps.astype(np.int64), dt, np.ascontiguousarray(active), t_count, cache.agent_corners, agent_c,
        cache.agent_valid, radius, ego_box, agent_box, out,
    )  # fmt: skip
    return out


def relative_angle(ego_poses: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Angle ``[0, pi]`` between the ego heading and the vector from the rear axle to ``points`` (NaN if equal)."""
    v = points - ego_poses[..., :2]
    norm = np.linalg.norm(v, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dot = (np.cos(ego_poses[..., 2]) * v[..., 0] + np.sin(ego_poses[..., 2]) * v[..., 1]) / norm
        return np.arccos(dot)


def _speeds(states: np.ndarray) -> np.ndarray:
    return np.hypot(states[..., StateIndex.VX], states[..., StateIndex.VY])


def _track_stopped(cache: MetricCache) -> np.ndarray:
    """``(N,)`` static object, or agent whose speed at its first appearance is at most 0.05 m/s."""
    first = np.argmax(cache.agent_valid, axis=0)
    box = cache.agent_boxes[first, np.arange(len(first))]
    speed = np.hypot(box[:, AgentIndex.VX], box[:, AgentIndex.VY])
    dynamic = np.isin(cache.agent_types, [int(t) for t in DYNAMIC_TYPES])
    return ~dynamic | (speed <= STOPPED_SPEED_THRESHOLD)


def no_at_fault_collisions(cache: MetricCache, states: np.ndarray, points: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """NC ``(K,)`` in {0, 0.5, 1}: the first contact with each track decides whether it counts.

    Not at fault: ego stopped (<= 0.05 m/s), or a moving track hitting from behind (> 150 deg), or a lateral
    contact while ego is within one lane on drivable ground. At fault: a stopped track, the ego front bumper,
    or a lateral contact while ego straddles lanes / leaves the drivable area. An at-fault contact scores 0
    for vehicles, pedestrians and bicycles and 0.5 for static objects.
    """
    k_count, t_count = states.shape[:2]
    corners = points[..., :4, :]
    first = first_contacts(cache, corners, np.zeros(corners.shape[:2] + (2,)),
                           np.ones((k_count, t_count), bool), t_count, np.zeros(1, np.int64))  # fmt: skip
    score = np.ones(k_count)
    k, n = np.nonzero(first >= 0)
    if len(k) == 0:
        return score
    t = first[k, n]
    ego_state = states[k, t]
    agent = cache.agent_boxes[t, n]
    ego_stopped = _speeds(ego_state) <= STOPPED_SPEED_THRESHOLD
    behind = relative_angle(ego_state[:, :3], agent[:, :2]) > np.deg2rad(BEHIND_ANGLE_DEG)
    bumper = corners[k, t][:, [0, 0, 3, 3]]  # degenerate box = front-left -> front-right segment
    front = boxes_overlap(bumper, cache.agent_corners[t, n])
    lateral_fault = areas[k, t, EgoArea.MULTIPLE_LANES] | areas[k, t, EgoArea.NON_DRIVABLE_AREA]
    stopped_track = _track_stopped(cache)[n]
    at_fault = ~ego_stopped & (stopped_track | (~behind & (front | lateral_fault)))
    dynamic = np.isin(cache.agent_types[n], [int(x) for x in DYNAMIC_TYPES])
    penalty = np.where(dynamic, 0.0, STATIC_COLLISION_SCORE)
    np.minimum.at(score, k[at_fault], penalty[at_fault])
    return score


def time_to_collision(
    cache: MetricCache, states: np.ndarray, points: np.ndarray, areas: np.ndarray, t_count: int
) -> np.ndarray:
    """TTC ``(K,)`` in {0, 1} over steps ``0 .. t_count - 1`` (41 in v1, 32 in v2).

    The ego box is projected along its heading at constant speed by 0, 0.3, 0.6, 0.9 s and tested against
    the tracks at the matching future step (skipped while ego is slower than 0.005 m/s). The first projected
    contact with a track fails TTC if the track is ahead (< 30 deg), or if ego straddles lanes, is off the
    drivable area or has its rear axle in an intersection and the track is not behind (> 150 deg).
    """
    speed = _speeds(states)
    heading = states[..., StateIndex.HEADING]
    velocity = np.stack([np.cos(heading) * speed, np.sin(heading) * speed], -1)
    steps = TTC_LOOKAHEAD_STEPS
    active = speed >= TTC_STOPPED_SPEED_THRESHOLD
    first = first_contacts(cache, points[..., :4, :], velocity, active, t_count, steps)
    score = np.ones(states.shape[0])
    k, n = np.nonzero(first >= 0)
    if len(k) == 0:
        return score
    t, j = np.divmod(first[k, n], len(steps))
    centroid = cache.agent_boxes[t + steps[j], n, :2]
    angle = relative_angle(states[k, t, :3], centroid)
    ahead = angle < np.deg2rad(AHEAD_ANGLE_DEG)
    not_behind = ~(angle > np.deg2rad(BEHIND_ANGLE_DEG))
    risky = (
        areas[k, t, EgoArea.MULTIPLE_LANES]
        | areas[k, t, EgoArea.NON_DRIVABLE_AREA]
        | areas[k, t, EgoArea.REAR_AXLE_IN_INTERSECTION]
    )
    score[k[ahead | (risky & not_behind)]] = 0.0
    return score


def drivable_area_compliance(areas: np.ndarray) -> np.ndarray:
    """DAC ``(K,)``: 0 if any corner leaves the drivable area at any step, else 1."""
    return np.where(areas[..., EgoArea.NON_DRIVABLE_AREA].any(-1), 0.0, 1.0)


def driving_direction_compliance(points: np.ndarray, areas: np.ndarray, skip_intersections: bool) -> np.ndarray:
    """DDC ``(K,)`` in {0, 0.5, 1} from the centre's distance travelled outside on-route lanes over 1 s windows.

    ``skip_intersections`` (v2) drops the steps whose centre lies in an intersection.
    """
    center = points[..., 4, :]
    progress = np.zeros(center.shape[:2])
    progress[:, 1:] = np.linalg.norm(np.diff(center, axis=1), axis=-1)
    oncoming = areas[..., EgoArea.ONCOMING_TRAFFIC]
    if skip_intersections:
        oncoming = oncoming & ~areas[..., EgoArea.CENTER_IN_INTERSECTION]
    progress[~oncoming] = 0.0
    csum = np.concatenate([np.zeros((len(progress), 1)), np.cumsum(progress, axis=1)], 1)
    t = np.arange(center.shape[1])
    window = csum[:, t + 1] - csum[:, np.maximum(0, t - DDC_HORIZON_STEPS)]
    worst = window.max(-1)
    return np.where(worst < DDC_COMPLIANCE_THRESHOLD, 1.0, np.where(worst < DDC_VIOLATION_THRESHOLD, 0.5, 0.0))


@numba.njit(cache=True)
def _red_light_kernel(corners, red_mask, bounds, coords, rings, poly_rings, out):  # type: ignore[no-untyped-def]
    for k in range(corners.shape[0]):
        for t in range(corners.shape[1]):
            if out[k] == 0.0:
                break
            xmin, xmax = corners[k, t, :, 0].min(), corners[k, t, :, 0].max()
            ymin, ymax = corners[k, t, :, 1].min(), corners[k, t, :, 1].max()
            for r in range(red_mask.shape[1]):
                if not red_mask[t, r]:
                    continue
                if xmax < bounds[r, 0] or xmin > bounds[r, 2] or ymax < bounds[r, 1] or ymin > bounds[r, 3]:
                    continue
                if box_intersects_polygon(corners[k, t], coords, rings, poly_rings[r], poly_rings[r + 1]):
                    out[k] = 0.0
                    break


def traffic_light_compliance(cache: MetricCache, points: np.ndarray) -> np.ndarray:
    """TLC ``(K,)``: 0 if the ego box touches an on-route lane connector while its light is red, else 1."""
    out = np.ones(points.shape[0])
    if cache.red_mask.shape[1] == 0:
        return out
    red = cache.red_polygons
    corners = np.ascontiguousarray(points[..., :4, :])
    _red_light_kernel(corners, cache.red_mask, red.bounds, red.coords, red.ring_offsets, red.poly_rings, out)
    return out


_CHUNK = 16  # centre-line segments per bounding box in the projection kernel


@numba.njit(cache=True)
def _segment_candidate(px, py, line, cum, k):  # type: ignore[no-untyped-def]
    ax, ay = line[k, 0], line[k, 1]
    bx, by = line[k + 1, 0] - ax, line[k + 1, 1] - ay
    len2 = max(bx * bx + by * by, 1e-12)
    t = min(max(((px - ax) * bx + (py - ay) * by) / len2, 0.0), 1.0)
    dx, dy = ax + t * bx - px, ay + t * by - py
    return dx * dx + dy * dy, cum[k] + t * np.sqrt(len2)


@numba.njit(cache=True)
def _project_kernel(points, line, cum, chunk_box, s_out, d_out):  # type: ignore[no-untyped-def]
    """Nearest point on the polyline (first segment on ties); chunks whose box is farther than the best
    distance found so far are skipped, chunks are visited in order so ties keep the first segment."""
    n_seg = line.shape[0] - 1
    for i in range(points.shape[0]):
        px, py = points[i, 0], points[i, 1]
        best, best_s = np.inf, 0.0
        for c in range(chunk_box.shape[0]):
            gx = max(chunk_box[c, 0] - px, 0.0, px - chunk_box[c, 2])
            gy = max(chunk_box[c, 1] - py, 0.0, py - chunk_box[c, 3])
            if gx * gx + gy * gy > best:
                continue
            for k in range(c * _CHUNK, min((c + 1) * _CHUNK, n_seg)):
                d2, s = _segment_candidate(px, py, line, cum, k)
                if d2 < best:
                    best, best_s = d2, s
        s_out[i] = best_s
        d_out[i] = np.sqrt(best)


def _chunk_boxes(line: np.ndarray) -> np.ndarray:
    """``(C, 4)`` bounds of consecutive groups of :data:`_CHUNK` segments of ``line`` ``(S + 1, 2)``."""
    n_seg = len(line) - 1
    starts = np.arange(0, n_seg, _CHUNK)
    lo = np.minimum.reduceat(np.minimum(line[:-1], line[1:]), starts, axis=0)
    hi = np.maximum.reduceat(np.maximum(line[:-1], line[1:]), starts, axis=0)
    return np.ascontiguousarray(np.concatenate([lo, hi], -1))


def project_on_centerline(cache: MetricCache, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc length and distance ``(...)`` of points ``(..., 2)`` on the cached centre line (nearest point, first
    segment on ties, as shapely's ``project`` / ``distance``)."""
    flat = np.ascontiguousarray(points.reshape(-1, 2), dtype=np.float64)
    s_out, d_out = np.empty(len(flat)), np.empty(len(flat))
    line = np.ascontiguousarray(cache.centerline[:, :2], dtype=np.float64)
    cum = np.ascontiguousarray(cache.centerline_s, dtype=np.float64)
    _project_kernel(flat, line, cum, _chunk_boxes(line), s_out, d_out)
    return s_out.reshape(points.shape[:-1]), d_out.reshape(points.shape[:-1])


def raw_progress(cache: MetricCache, points: np.ndarray) -> np.ndarray:
    """Progress ``(K,)`` in metres of the ego centre along the route centre line from t = 0 to the end (>= 0)."""
    s, _ = project_on_centerline(cache, points[:, [0, -1], 4, :])
    return np.clip(s[:, 1] - s[:, 0], 0.0, None)


@numba.njit(cache=True)
def _lane_keeping_kernel(exceed, skip, steps_required, out):  # type: ignore[no-untyped-def]
    for k in range(exceed.shape[0]):
        run = 0
        for t in range(exceed.shape[1]):
            if skip[k, t]:
                continue
            run = run + 1 if exceed[k, t] else 0
            if run >= steps_required:
                out[k] = 0.0
                break


def lane_keeping(cache: MetricCache, points: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """LK ``(K,)``: 0 if the centre stays > 0.5 m from the centre line for 20 consecutive steps (intersection
    steps neither count nor reset the run), else 1."""
    _, distance = project_on_centerline(cache, points[..., 4, :])
    exceed = distance > LK_DEVIATION_LIMIT
    out = np.ones(points.shape[0])
    _lane_keeping_kernel(exceed, areas[..., EgoArea.CENTER_IN_INTERSECTION], LK_STEPS, out)
    return out
