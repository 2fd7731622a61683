"""Batched torch twins of the NAVSIM PDM sub-metrics of :mod:`rewards.pdm_metrics`, over ``S`` scenes x ``K``
candidates.

Every function takes a :class:`MetricCacheBatch`, simulated states ``(S, K, T, 11)`` (T = 41 steps of 0.1 s) and
the ego points / area flags derived from them, and returns ``(S, K)`` values in the states' dtype. The semantics
(first contact per track decides, the at-fault rules, the TTC look-aheads, the DDC windows, the LK run) are those
of the numpy functions, documented there; only the loops became masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rewards import pdm_metrics as pm
from rewards.pdm_metrics import EgoArea
from rewards.torch.metric_cache_batch import MetricCacheBatch
from rewards.torch.pdm_contacts import NO_CONTACT, ContactQuery, first_events
from rewards.torch.pdm_geometry import (
    centerline_distance_exceeds,
    project_on_centerline,
    red_light_contacts,
    relative_angle,
    sat_overlap,
)
from simulation.types import StateIndex

_BEHIND = math.radians(pm.BEHIND_ANGLE_DEG)
_AHEAD = math.radians(pm.AHEAD_ANGLE_DEG)
TTC_STEPS = tuple(int(s) for s in pm.TTC_LOOKAHEAD_STEPS)


def _speeds(states: torch.Tensor) -> torch.Tensor:
    return torch.hypot(states[..., StateIndex.VX], states[..., StateIndex.VY])


def contact_firsts(
    batch: MetricCacheBatch, states: torch.Tensor, points: torch.Tensor, t_ttc: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """First contact events ``(S, K, N)`` of NC (step ``t``, every step) and of TTC (``t * 4 + j`` for look-ahead
    :data:`TTC_STEPS` ``[j]``, steps ``t < t_ttc`` where the ego moves), found together (:data:`NO_CONTACT`: none)."""
    speed = _speeds(states)
    heading = states[..., StateIndex.HEADING]
    velocity = torch.stack([torch.cos(heading) * speed, torch.sin(heading) * speed], -1)
    every = torch.ones(states.shape[:3], dtype=torch.bool, device=states.device)
    queries = [
        ContactQuery(every, states.shape[2], (0,)),
        ContactQuery(speed >= pm.TTC_STOPPED_SPEED_THRESHOLD, t_ttc, TTC_STEPS),
    ]
    nc, ttc = first_events(batch, points[..., :4, :], velocity, queries)
    return nc, ttc


#: Ego-area flags ``(R, 5)`` of rows ``(s_i, k_i, t_i)`` (e.g. :func:`rewards.torch.pdm_map.ego_area_rows`).
AreaRows = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _area_at(areas: torch.Tensor | AreaRows, s_i: torch.Tensor, k_i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(R, 5)`` ego-area flags of rows ``(s_i, k_i, t)``, from ``(S, K, T, 5)`` flags or a row lookup."""
    return areas[s_i, k_i, t] if isinstance(areas, torch.Tensor) else areas(s_i, k_i, t)


def _min_per_candidate(shape: torch.Size, s_i: torch.Tensor, k_i: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``(S, K)``: the least of ``values`` ``(R,)`` of each candidate ``(s_i, k_i)``, 1 where it has none."""
    out = torch.ones(shape, dtype=values.dtype, device=values.device)
    out.view(-1).scatter_reduce_(0, s_i * shape[1] + k_i, values, reduce="amin")
    return out


def no_at_fault_collisions(
    batch: MetricCacheBatch,
    states: torch.Tensor,
    points: torch.Tensor,
    areas: torch.Tensor | AreaRows,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """NC ``(S, K)`` in {0, 0.5, 1} (:func:`rewards.pdm_metrics.no_at_fault_collisions`); ``areas``: the ego-area
    flags ``(S, K, T, 5)`` or a lookup of rows; ``first``: the NC events of :func:`contact_firsts` when found."""
    corners = points[..., :4, :]
    if first is None:
        every = torch.ones(states.shape[:3], dtype=torch.bool, device=states.device)
        first = first_events(batch, corners, torch.zeros_like(corners[..., 0, :]),
                             [ContactQuery(every, states.shape[2], (0,))])[0]  # fmt: skip
    s_i, k_i, n_i = torch.nonzero(first != NO_CONTACT, as_tuple=True)
    t = first[s_i, k_i, n_i]
    ego_state = states[s_i, k_i, t]  # (R, 11)
    agent = batch.agent_boxes[s_i, t, n_i]  # (R, 7)
    ego_stopped = _speeds(ego_state) <= pm.STOPPED_SPEED_THRESHOLD
    behind = relative_angle(ego_state[:, :3], agent[:, :2]) > _BEHIND
    bumper = corners[s_i, k_i, t][:, [0, 0, 3, 3], :]
    front = sat_overlap(bumper, batch.agent_corners[s_i, t, n_i])
    ego_area = _area_at(areas, s_i, k_i, t)
    lateral_fault = ego_area[:, EgoArea.MULTIPLE_LANES] | ego_area[:, EgoArea.NON_DRIVABLE_AREA]
    at_fault = ~ego_stopped & (batch.agent_stopped[s_i, n_i] | (~behind & (front | lateral_fault)))
    penalty = torch.where(batch.agent_dynamic[s_i, n_i], 0.0, pm.STATIC_COLLISION_SCORE).to(states.dtype)
    return _min_per_candidate(states.shape[:2], s_i, k_i, torch.where(at_fault, penalty, torch.ones_like(penalty)))


def time_to_collision(
    batch: MetricCacheBatch,
    states: torch.Tensor,
    points: torch.Tensor,
    areas: torch.Tensor | AreaRows,
    t_count: int,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """TTC ``(S, K)`` in {0, 1} over steps ``0 .. t_count - 1`` (:func:`rewards.pdm_metrics.time_to_collision`);
    ``areas`` as for :func:`no_at_fault_collisions`; ``first``: the TTC events of :func:`contact_firsts`."""
    if first is None:
        first = contact_firsts(batch, states, points, t_count)[1]
    s_i, k_i, n_i = torch.nonzero(first != NO_CONTACT, as_tuple=True)
    event = first[s_i, k_i, n_i]
    t, j = event // len(TTC_STEPS), event % len(TTC_STEPS)
    lookahead = torch.tensor(TTC_STEPS, device=states.device)[j]
    centroid = batch.agent_boxes[s_i, t + lookahead, n_i, :2]
    angle = relative_angle(states[s_i, k_i, t, :3], centroid)
    ahead = angle < _AHEAD
    not_behind = ~(angle > _BEHIND)
    ego_area = _area_at(areas, s_i, k_i, t)
    risky = (
        ego_area[:, EgoArea.MULTIPLE_LANES]
        | ego_area[:, EgoArea.NON_DRIVABLE_AREA]
        | ego_area[:, EgoArea.REAR_AXLE_IN_INTERSECTION]
    )
    fail = ahead | (risky & not_behind)
    zero, one = torch.zeros_like(t, dtype=states.dtype), torch.ones_like(t, dtype=states.dtype)
    return _min_per_candidate(states.shape[:2], s_i, k_i, torch.where(fail, zero, one))


def drivable_area_compliance(areas: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """DAC ``(S, K)``: 0 if any corner leaves the drivable area at any step, else 1."""
    return torch.where(areas[..., EgoArea.NON_DRIVABLE_AREA].any(-1), 0.0, 1.0).to(dtype)


def driving_direction_compliance(points: torch.Tensor, areas: torch.Tensor, skip_intersections: bool) -> torch.Tensor:
    """DDC ``(S, K)`` in {0, 0.5, 1} (:func:`rewards.pdm_metrics.driving_direction_compliance`)."""
    center = points[..., 4, :]
    d = torch.diff(center, dim=-2)
    step = torch.nn.functional.pad(torch.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]), (1, 0))
    oncoming = areas[..., EgoArea.ONCOMING_TRAFFIC]
    if skip_intersections:
        oncoming = oncoming & ~areas[..., EgoArea.CENTER_IN_INTERSECTION]
    step = torch.where(oncoming, step, torch.zeros_like(step))
    csum = torch.nn.functional.pad(torch.cumsum(step, -1), (1, 0))
    t = torch.arange(center.shape[-2], device=center.device)
    window = csum[..., t + 1] - csum[..., torch.clamp_min(t - pm.DDC_HORIZON_STEPS, 0)]
    worst = window.amax(-1)
    return torch.where(
        worst < pm.DDC_COMPLIANCE_THRESHOLD, 1.0, torch.where(worst < pm.DDC_VIOLATION_THRESHOLD, 0.5, 0.0)
    ).to(points.dtype)


def traffic_light_compliance(batch: MetricCacheBatch, points: torch.Tensor) -> torch.Tensor:
    """TLC ``(S, K)``: 0 if the ego box touches an on-route lane connector while its light is red, else 1."""
    return torch.where(red_light_contacts(batch, points[..., :4, :]), 0.0, 1.0).to(points.dtype)


def raw_progress(batch: MetricCacheBatch, points: torch.Tensor) -> torch.Tensor:
    """Progress ``(S, K)`` in metres of the ego centre along the centre line from t = 0 to the end (>= 0)."""
    s, _ = project_on_centerline(batch, points[:, :, [0, -1], 4, :])
    return torch.clamp_min(s[..., 1] - s[..., 0], 0.0)


def lane_keeping(batch: MetricCacheBatch, points: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """LK ``(S, K)``: 0 if the centre stays > 0.5 m from the centre line for 20 consecutive steps (intersection
    steps neither count nor reset the run), else 1."""
    exceed = centerline_distance_exceeds(batch, points[..., 4, :], pm.LK_DEVIATION_LIMIT)
    skip = areas[..., EgoArea.CENTER_IN_INTERSECTION]
    run = torch.zeros(points.shape[:2], dtype=torch.int64, device=points.device)
    failed = torch.zeros(points.shape[:2], dtype=torch.bool, device=points.device)
    for t in range(points.shape[2]):
        run = torch.where(skip[..., t], run, torch.where(exceed[..., t], run + 1, torch.zeros_like(run)))
        failed |= run >= pm.LK_STEPS
    return torch.where(failed, 0.0, 1.0).to(points.dtype)
