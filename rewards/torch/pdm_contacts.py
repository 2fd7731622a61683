"""First contacts of ego boxes with tracks, for NC and TTC of the batched torch PDM scorer.

The numba kernel of :func:`rewards.pdm_metrics.first_contacts` walks each (candidate, track) pair in time order and
stops at its first contact. Here the steps are taken in chunks of :data:`T_CHUNK`: a chunk only tests the pairs that
had no contact in the earlier chunks, and NC's test at the current step (no look-ahead) is shared with TTC's first
look-ahead (both test the unmoved box). The separating-axis test has the numba kernel's arithmetic, with each
track box's own axes and spans computed once per call instead of once per pair, so float64 results are identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rewards.torch.metric_cache_batch import MetricCacheBatch
from simulation.types import PACIFICA

#: Ego half diagonal, the broad-phase radius of the contact tests (as the numba kernel).
EGO_RADIUS = math.hypot(PACIFICA.length / 2.0, PACIFICA.width / 2.0)
#: Value of "no contact" in the first-contact tensors.
NO_CONTACT = torch.iinfo(torch.int64).max
#: Steps per chunk: pairs in contact within a chunk are not tested in the later ones.
T_CHUNK = 14


@dataclass(frozen=True)
class ContactQuery:
    """One first-contact search: the ego box of step ``t < t_count`` where ``active`` ``(S, K, T)``, moved by
    ``velocity * steps[j] * dt``, against the tracks at step ``t + steps[j]``; events ``t * len(steps) + j``."""

    active: torch.Tensor
    t_count: int
    steps: tuple[int, ...]


def agent_table(batch: MetricCacheBatch) -> torch.Tensor:
    """``(S * T * N, 16)`` per track box: its corners ``x0, y0, .., x3, y3``, then for its edges 0 and 1 the axis
    ``(nx, ny)`` and the span ``(lo, hi)`` of its corners on it (the numba kernel's arithmetic)."""
    c = batch.agent_corners
    bx, by = c[..., 0], c[..., 1]
    cols = [c.flatten(-2)]
    for e in range(2):
        nx, ny = -(by[..., e + 1 : e + 2] - by[..., e : e + 1]), bx[..., e + 1 : e + 2] - bx[..., e : e + 1]
        p = nx * bx + ny * by
        cols += [nx, ny, p.amin(-1, keepdim=True), p.amax(-1, keepdim=True)]
    return torch.cat(cols, -1).reshape(-1, 16)


def _min4(v: list[torch.Tensor]) -> torch.Tensor:
    return torch.minimum(torch.minimum(v[0], v[1]), torch.minimum(v[2], v[3]))


def _max4(v: list[torch.Tensor]) -> torch.Tensor:
    return torch.maximum(torch.maximum(v[0], v[1]), torch.maximum(v[2], v[3]))


def touches(ego: torch.Tensor, shift: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Separating-axis test ``(P,)`` of ego quads ``(P, 4, 2)`` moved by ``shift`` ``(P, 2)`` against track rows of
    :func:`agent_table` ``(P, 16)`` (touching counts); the axes come from the unmoved ego box and from the track."""
    ax, ay = ego[..., 0].unbind(-1), ego[..., 1].unbind(-1)
    sx, sy = shift[:, 0], shift[:, 1]
    mx, my = [x + sx for x in ax], [y + sy for y in ay]
    bx, by = table[:, 0:8:2].unbind(-1), table[:, 1:8:2].unbind(-1)
    separated = torch.zeros(len(ego), dtype=torch.bool, device=ego.device)
    for e in range(2):
        nx, ny = -(ay[e + 1] - ay[e]), ax[e + 1] - ax[e]
        pa = [nx * x + ny * y for x, y in zip(mx, my, strict=True)]
        pb = [nx * x + ny * y for x, y in zip(bx, by, strict=True)]
        separated |= (_max4(pa) < _min4(pb)) | (_max4(pb) < _min4(pa))
        nx, ny, lo, hi = table[:, 8 + 4 * e : 12 + 4 * e].unbind(-1)
        pa = [nx * x + ny * y for x, y in zip(mx, my, strict=True)]
        separated |= (_max4(pa) < lo) | (hi < _min4(pa))
    return ~separated


def first_events(
    batch: MetricCacheBatch,
    corners: torch.Tensor,
    velocity: torch.Tensor,
    queries: Sequence[ContactQuery],
    dt: float = 0.1,
) -> list[torch.Tensor]:
    """``(S, K, N)`` first event of each query (:class:`ContactQuery`; :data:`NO_CONTACT`: none) for ego boxes
    ``(S, K, T, 4, 2)`` and velocities ``(S, K, T, 2)``.

    Broad phase in two levels, per look-ahead: (scene, step, track) triples whose track centre lies within reach of
    the bounding box of all candidates' moved centres, then (triple, candidate) pairs within reach (the numba
    kernel's centre-distance test) that some query still needs; the box test runs on those."""
    s_count, k_count = corners.shape[:2]
    n_count = batch.agent_boxes.shape[2]
    firsts = [torch.full((s_count, k_count, n_count), NO_CONTACT, dtype=torch.int64, device=corners.device)
              for _ in queries]  # fmt: skip
    if n_count == 0 or not queries:
        return firsts
    t_max = max(q.t_count for q in queries)
    ego = corners[:, :, :t_max].contiguous()
    ego_c = (((ego[..., 0, :] + ego[..., 1, :]) + ego[..., 2, :]) + ego[..., 3, :]) / 4.0  # numpy's mean
    ego = ego.reshape(-1, 4, 2)
    table = agent_table(batch)
    t_all = batch.agent_corners.shape[1]
    radius = EGO_RADIUS + batch.agent_radius + 1e-6  # (S, N)
    r2_rows = (radius * radius).reshape(-1, 1)
    t_idx = torch.arange(t_max, device=corners.device)
    acts = [q.active[:, :, :t_max] & (t_idx < q.t_count) for q in queries]
    acts_t = [a.transpose(1, 2).reshape(-1, k_count) for a in acts]  # (S * Tm, K)
    passes = [_broad_phase(batch, ego_c, velocity, queries, step, dt) for step in
              sorted({s for q in queries for s in q.steps})]  # fmt: skip
    for t0 in range(0, t_max, T_CHUNK):
        open_t = [(f == NO_CONTACT).transpose(1, 2).reshape(-1, k_count) for f in firsts]  # (S * N, K)
        for step, users, shift, moved_t, agent_c, reach in passes:
            s_i, t_i, n_i = torch.nonzero(reach[:, t0 : t0 + T_CHUNK], as_tuple=True)
            if len(s_i) == 0:
                continue
            t_i = t_i + t0
            st_row, sn_row = s_i * t_max + t_i, s_i * n_count + n_i
            m = moved_t.index_select(0, st_row)  # (M, K, 2)
            c = agent_c.index_select(0, st_row * n_count + n_i)  # (M, 2)
            ex, ey = m[..., 0] - c[:, :1], m[..., 1] - c[:, 1:]
            needed = acts_t[users[0]].index_select(0, st_row) & open_t[users[0]].index_select(0, sn_row)
            for i in users[1:]:
                needed |= acts_t[i].index_select(0, st_row) & open_t[i].index_select(0, sn_row)
            m_i, k_i = torch.nonzero((ex * ex + ey * ey <= r2_rows.index_select(0, sn_row)) & needed, as_tuple=True)
            s_i, t_i, n_i = s_i[m_i], t_i[m_i], n_i[m_i]
            row = (s_i * k_count + k_i) * t_max + t_i
            touch = touches(ego.index_select(0, row), shift.index_select(0, row),
                            table.index_select(0, (s_i * t_all + t_i + step) * n_count + n_i))  # fmt: skip
            flat = (s_i * k_count + k_i) * n_count + n_i
            for i in users:
                q = queries[i]
                hit = touch & acts[i].reshape(-1).index_select(0, row)
                event = torch.where(hit, t_i * len(q.steps) + q.steps.index(step), torch.full_like(t_i, NO_CONTACT))
                firsts[i].view(-1).scatter_reduce_(0, flat, event, reduce="amin")
    return firsts


def _broad_phase(
    batch: MetricCacheBatch,
    ego_c: torch.Tensor,
    velocity: torch.Tensor,
    queries: Sequence[ContactQuery],
    step: int,
    dt: float,
) -> tuple[int, list[int], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The look-ahead ``step`` of :func:`first_events`: its step, the queries using it, the shifts
    ``(S * K * Tm, 2)``, the moved centres ``(S * Tm, K, 2)``, the track centres ``(S * Tm * N, 2)`` at ``t + step``
    and the (scene, step, track) triples within reach ``(S, Tm, N)``."""
    s_count, k_count, t_max = ego_c.shape[:3]
    users = [i for i, q in enumerate(queries) if step in q.steps]
    shift = velocity[:, :, :t_max] * step * dt if step else torch.zeros_like(ego_c)  # (S, K, Tm, 2)
    moved = ego_c + shift
    lo, hi = moved.amin(1), moved.amax(1)  # (S, Tm, 2) over all candidates, active or not (a wider box)
    t_use = max(queries[i].t_count for i in users)  # steps t < t_use are tested (t + step is observed)
    agent_c = batch.agent_boxes[:, step : step + t_use, :, :2]
    valid = batch.agent_valid[:, step : step + t_use]
    if t_use < t_max:
        agent_c = torch.nn.functional.pad(agent_c, (0, 0, 0, 0, 0, t_max - t_use))
        valid = torch.nn.functional.pad(valid, (0, 0, 0, t_max - t_use))
    # agent_c (S, Tm, N, 2), valid (S, Tm, N)
    gx = torch.clamp_min(torch.maximum(lo[:, :, None, 0] - agent_c[..., 0], agent_c[..., 0] - hi[:, :, None, 0]), 0.0)
    gy = torch.clamp_min(torch.maximum(lo[:, :, None, 1] - agent_c[..., 1], agent_c[..., 1] - hi[:, :, None, 1]), 0.0)
    radius = EGO_RADIUS + batch.agent_radius + 1e-6
    reach = (gx * gx + gy * gy <= (radius * radius)[:, None, :]) & valid
    moved_t = moved.transpose(1, 2).reshape(s_count * t_max, k_count, 2)
    return step, users, shift.reshape(-1, 2), moved_t, agent_c.reshape(-1, 2), reach
