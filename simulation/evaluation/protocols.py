"""The benchmark protocols diffplan runs, and what each one evaluates.

A protocol fixes the unit of work and the reported columns; the planner, the scorer and the data are
chosen by the Hydra config (``configs/bench/protocol/<name>.yaml``).

- ``navsim_v1``: NAVSIM v1.1 one-shot evaluation. One 2 Hz scene per token (4 history + 10 future
  frames); the planner plans once from the current frame; the 8-pose plan is tracked and scored against
  the scene's metric cache. Score = PDMS = NC * DAC * (5 TTC + 5 EP + 2 C) / 12 (DDC reported, weight 0).
- ``navsim_v2``: NAVSIM v2 one-stage evaluation with the same unit of work, scored by EPDMS
  (NC * DAC * DDC * TLC * (5 EP + 5 TTC + 2 LK + 2 HC + 2 EC) / 16, human filter on original scenes).
  As NAVSIM's one-stage run, extended comfort (EC) compares each plan with the plan of the same log's
  frame 0.5 s earlier when that frame is evaluated too (:mod:`simulation.evaluation.pairing`); rows
  without such a predecessor report EC as NaN and give it weight 0 (denominator 14).
- ``nuplan_cls_nr``: nuPlan closed-loop score, non-reactive agents (log replay). One 15 s, 10 Hz
  scenario per token; the planner is called every simulation step; the run is scored with nuPlan's
  closed-loop metrics (multipliers NC, DAC, making progress, DDC; weights EP 5, TTC 5, speed 4, comfort 2).
- ``nuplan_cls_r``: the same with reactive IDM agents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Sub-metric columns of NAVSIM v1.1's ``PDMResults`` (the per-token CSV), in NAVSIM's order.
NAVSIM_V1_COLUMNS: tuple[str, ...] = (
    "no_at_fault_collisions",
    "drivable_area_compliance",
    "ego_progress",
    "time_to_collision_within_bound",
    "comfort",
    "driving_direction_compliance",
)

#: Sub-metric columns of NAVSIM v2's EPDMS.
NAVSIM_V2_COLUMNS: tuple[str, ...] = (
    "no_at_fault_collisions",
    "drivable_area_compliance",
    "driving_direction_compliance",
    "traffic_light_compliance",
    "ego_progress",
    "time_to_collision_within_bound",
    "lane_keeping",
    "history_comfort",
    "two_frame_extended_comfort",
)

#: nuPlan closed-loop metrics that enter the CLS score (CLS-NR and CLS-R share them).
CLS_COLUMNS: tuple[str, ...] = (
    "no_ego_at_fault_collisions",
    "drivable_area_compliance",
    "driving_direction_compliance",
    "ego_is_making_progress",
    "ego_progress_along_expert_route",
    "time_to_collision_within_bound",
    "speed_limit_compliance",
    "ego_is_comfortable",
)

ProtocolKind = Literal["navsim", "closed_loop"]


class UnknownProtocolError(KeyError):
    """A protocol name that diffplan does not define."""


@dataclass(frozen=True)
class BenchmarkProtocol:
    """What a protocol evaluates.

    Attributes:
        name: protocol name (``navsim_v1`` ...).
        kind: ``navsim`` (one-shot scoring of a scene) or ``closed_loop`` (simulated scenario).
        columns: sub-metric columns reported per token, in CSV order (``score`` follows them).
        optional_columns: columns the scorer may leave out (reported as NaN, e.g. EC without a
            predecessor frame).
        reactive: closed loop only: reactive IDM agents instead of log replay.
        pdm_version: NAVSIM only: the scorer version (``v1`` or ``v2``).
        score_name: what ``score`` is called in the summary (PDMS, EPDMS, CLS-NR, CLS-R).
        pairs_frames: NAVSIM only: rows keep their simulated states and consecutive frames of a log are
            scored together afterwards (EPDMS extended comfort).
    """

    name: str
    kind: ProtocolKind
    columns: tuple[str, ...]
    optional_columns: tuple[str, ...] = ()
    reactive: bool = False
    pdm_version: str = "v1"
    score_name: str = "score"
    pairs_frames: bool = False

    @property
    def csv_columns(self) -> tuple[str, ...]:
        """Columns of the per-token CSV: ``token, valid, <sub-metrics>, score``."""
        return ("token", "valid", *self.columns, "score")

    @property
    def is_navsim(self) -> bool:
        return self.kind == "navsim"


PROTOCOLS: dict[str, BenchmarkProtocol] = {
    "navsim_v1": BenchmarkProtocol("navsim_v1", "navsim", NAVSIM_V1_COLUMNS, pdm_version="v1", score_name="PDMS"),
    "navsim_v2": BenchmarkProtocol(
        "navsim_v2",
        "navsim",
        NAVSIM_V2_COLUMNS,
        optional_columns=("two_frame_extended_comfort",),
        pdm_version="v2",
        score_name="EPDMS",
        pairs_frames=True,
    ),
    "nuplan_cls_nr": BenchmarkProtocol("nuplan_cls_nr", "closed_loop", CLS_COLUMNS, score_name="CLS-NR"),
    "nuplan_cls_r": BenchmarkProtocol("nuplan_cls_r", "closed_loop", CLS_COLUMNS, reactive=True, score_name="CLS-R"),
}


def get_protocol(name: str) -> BenchmarkProtocol:
    """The protocol called ``name``; raises :class:`UnknownProtocolError` listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise UnknownProtocolError(f"unknown benchmark protocol {name!r}; known: {sorted(PROTOCOLS)}") from None
