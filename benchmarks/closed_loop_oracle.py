"""A generator + discriminator pair in the nuPlan closed loop with a perfect one-shot selector in place of its
discriminator: how much of the pair's gap to PDM-Closed is its choice, and how much its candidates.

    python benchmarks/closed_loop_oracle.py --ckpt PAIR.ckpt --data-root D --maps-root M --out DIR \
        [--pick pdms|safe|discriminator] [--version v1|v2] [--split synth_test] [--max-scenarios N] [--shard I/N]

The scenarios are simulated as ``diffplan bench protocol=nuplan_cls_nr planner=reranked`` does (log-replay agents,
LQR + bicycle, replanning every 0.1 s, the pair's candidates and seed as ``planner=reranked`` has them). At every
replanning step each pickable candidate is scored by the NAVSIM scorer (v1's PDMS, or with ``--version v2`` EPDMS
without extended comfort) on the scene the closed loop is in:
the log's scene at that frame with the simulated ego's state and history put in
(:func:`training.dagger.closed_loop_scene`), so its agents move as log replay moves them, and PDM-Closed's reference
is planned from the simulated state, as the labels of ``diffplan data dagger --metric-cache`` are. Then

- ``pdms``: the pair drives the candidate of the highest score (the discriminator's score breaks ties);
- ``safe``: the discriminator's pick among the candidates that neither collide at fault nor leave the drivable area
  in NAVSIM's 4 s (NC = DAC = 1);
- ``discriminator``: the discriminator's own pick (the pair as benchmarked; nothing is scored).

Where the scene's 5 s leave the log, or (``safe``) no candidate passes, the discriminator picks. Each scenario is
scored by nuPlan's CLS-NR metrics; DIR gets a ``journal.jsonl`` and a ``scores.csv`` in ``diffplan bench``'s format
(``closed_loop_table.py`` and ``paired_scores.py`` read them), with each scenario's ``decisions``, how many the
selector ``changed`` from the discriminator's pick, and how many fell ``back`` to it. A journal's scenarios are not
simulated again (an interrupted run resumes); ``--shard I/N`` runs every N-th scenario from the I-th, so that N
processes share one DIR.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy

from simulation.evaluation.protocols import CLS_COLUMNS  # noqa: E402
from simulation.types import Trajectory  # noqa: E402

PICKS = ("pdms", "safe", "discriminator")
#: PDMS values this close to the best count as tied (the discriminator breaks the tie).
TIE = 1e-9


def oracle_pick(
    mode: str,
    scores: np.ndarray,
    pickable: np.ndarray,
    metrics: Mapping[str, np.ndarray] | None,
    own: int | None = None,
) -> tuple[int, bool]:
    """The candidate to drive and whether the discriminator's pick was kept for want of a labelled choice.

    Args:
        mode: one of :data:`PICKS`.
        scores: ``(K,)`` the discriminator's scores; pickable: ``(K,)`` bool, the candidates the pair may drive.
        metrics: the NAVSIM sub-metrics and ``score`` ``(K,)`` of every candidate (unpickable ones ignored), or
            ``None`` when the state has no scene to score.
        own: the discriminator's pick (its forward's ``best``); ``None``: its best-scored pickable candidate.
    """
    if not pickable.any():
        raise ValueError("no pickable candidate")
    if own is None:
        own = int(np.argmax(np.where(pickable, scores, -np.inf)))
    if mode == "discriminator":
        return own, False
    if mode not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}, got {mode!r}")
    if metrics is None:
        return own, True
    if mode == "pdms":
        pdms = np.where(pickable, np.asarray(metrics["score"], dtype=np.float64), -np.inf)
        tied = pdms >= pdms.max() - TIE
    else:
        nc = np.asarray(metrics["no_at_fault_collisions"]) >= 1.0
        dac = np.asarray(metrics["drivable_area_compliance"]) >= 1.0
        tied = pickable & nc & dac
        if not tied.any():
            return own, True
    return int(np.argmax(np.where(tied, scores, -np.inf))), False


@dataclass
class Counts:
    decisions: int = 0
    changed: int = 0
    back: int = 0


class OracleSelector:
    """The pair's candidates (as ``planner=reranked``: same noise, same policy seed) and :func:`oracle_pick`.

    Args:
        planner: ``planners.reranked.reranked_planner(ckpt)`` (a ``LearnedPlanner`` around a ``RerankedPlanner``).
        mode: one of :data:`PICKS`.
        version: the NAVSIM scorer that labels the candidates (``v1`` PDMS, ``v2`` EPDMS).
    """

    def __init__(self, planner: Any, mode: str, version: str = "v1") -> None:
        from planners.rule_based import PDMClosedPlanner
        from rewards.pdm import PDMScorer
        from simulation.evaluation.sources import MetricCacheProvider

        self.planner, self.mode = planner, mode
        if version not in ("v1", "v2"):
            raise ValueError(f"version must be v1 or v2, got {version!r}")
        self.scorer = PDMScorer(version)  # type: ignore[arg-type]
        self.provider = MetricCacheProvider(PDMClosedPlanner(), version, None)  # built in memory, never stored
        self.counts = Counts()

    def plan(self, observation: Any, scene: Any) -> Trajectory:
        """The selected candidate for ``observation``; ``scene``: its closed-loop NAVSIM scene or ``None``."""
        from planners.safety_gate import pair_decision, score_pickable

        decision = pair_decision(self.planner, observation)
        cands, keep, scores, own = decision.candidates, decision.pickable, decision.scores, decision.own
        metrics = None
        if self.mode != "discriminator" and scene is not None:
            metrics = score_pickable(self.scorer, self.provider(scene, observation.map_api), decision)
        pick, back = oracle_pick(self.mode, scores, keep, metrics, own)
        self.counts.decisions += 1
        self.counts.changed += int(pick != own)
        self.counts.back += int(back)
        if not np.isfinite(cands[pick]).all():
            raise ValueError("the selected candidate is not finite")
        return Trajectory(cands[pick])


def run_scenario(scenario: Any, log: Any, map_api: Any, selector: OracleSelector) -> dict[str, Any]:
    """Simulate one scenario with ``selector`` in the CLS-NR loop; its journal record."""
    from rewards.nuplan_metrics import score_simulation
    from simulation.closed_loop import ClosedLoopSimulator
    from training.dagger import closed_loop_scene

    start = time.perf_counter()
    frame_of = {str(t): i for i, t in enumerate(log.frame_tokens)}
    sim = ClosedLoopSimulator()
    selector.counts = Counts()
    state = sim.reset(scenario, map_api)
    while not state.done:
        trajectory, error = None, None
        if state.iteration % sim.config.replan_interval == 0:
            observation = sim.observe(state)
            try:
                scene = None
                if selector.mode != "discriminator":
                    scene = closed_loop_scene(log, frame_of, state, f"{scenario.token}:oracle:{state.iteration:03d}")
                trajectory = selector.plan(observation, scene)
                trajectory.validate()
            except Exception as err:  # noqa: BLE001 - as the benchmark: the last plan is kept, the error recorded
                trajectory, error = None, f"{type(err).__name__}: {err}"
        state = sim.step(state, trajectory, error)
    history = sim.history(state)
    metrics = score_simulation(scenario, history, map_api)
    errors = [e for e in history.planner_errors if e]
    return {
        "token": str(scenario.token),
        "log_name": scenario.log_name,
        "scenario_type": str(scenario.scenario_type),
        "valid": True,
        "error": errors[0] if errors else None,
        **{k: float(v) for k, v in metrics.items()},
        "ego_poses": np.round(history.ego_states[:, :3], 3).tolist(),
        "decisions": selector.counts.decisions,
        "changed": selector.counts.changed,
        "back": selector.counts.back,
        "seconds": round(time.perf_counter() - start, 3),
    }


def read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """The scenario records of a journal (the last record of a token wins; a torn last line is ignored)."""
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption: its scenario runs again
        if isinstance(record, dict) and "token" in record:
            records[str(record["token"])] = record
    return records


def check_header(path: Path, header: Mapping[str, Any]) -> None:
    """Refuse to resume a journal written for another pick, scorer version, split or checkpoint."""
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    try:
        found = json.loads(first)
    except json.JSONDecodeError:
        found = None
    if found != dict(header):
        raise SystemExit(f"{path}: a journal of another run ({first[:200]}); use another --out folder")


def append_line(path: Path, record: Mapping[str, Any]) -> None:
    """One JSON line appended in a single write, so that processes sharing the journal never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


#: The benchmark's CLS columns, its score, and the selector's counts.
SCORE_COLUMNS = (*CLS_COLUMNS, "score", "decisions", "changed", "back")


def scores_csv(records: list[Mapping[str, Any]]) -> str:
    """``scores.csv`` of ``diffplan bench`` (token, valid, the metrics, score) with the selector's counts."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["token", "valid", *SCORE_COLUMNS])
    for r in records:
        writer.writerow([r["token"], r["valid"], *(r.get(c, "") for c in SCORE_COLUMNS)])
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a generator + discriminator pair's checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--maps-root", required=True)
    parser.add_argument("--out", required=True, help="output folder (journal.jsonl, scores.csv)")
    parser.add_argument("--pick", choices=PICKS, default="pdms")
    parser.add_argument("--version", choices=("v1", "v2"), default="v1", help="the NAVSIM scorer of the labels")
    parser.add_argument("--split", default="synth_test")
    parser.add_argument("--max-scenarios", type=int, default=None)
    parser.add_argument("--shard", default="0/1", help="I/N: every N-th scenario from the I-th")
    args = parser.parse_args(argv)
    try:
        index, count = (int(v) for v in args.shard.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        parser.error(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")

    from planners.reranked import reranked_planner
    from simulation.datasets.nuplan_db import cached_read_log
    from simulation.evaluation.sources import MapProvider, nuplan_log_source
    from simulation.io import atomic_write_text

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "journal.jsonl"
    header = {"journal": 1, "protocol": "nuplan_cls_nr", "planner": f"oracle_{args.pick}_{args.version}",
              "split": args.split, "ckpt": str(args.ckpt)}  # fmt: skip
    if not journal.exists():
        append_line(journal, header)
    else:
        check_header(journal, header)
    selector = OracleSelector(reranked_planner(args.ckpt), args.pick, args.version)
    source = nuplan_log_source(args.data_root, args.split, "closed_loop", maps_root=args.maps_root)
    maps = MapProvider(args.maps_root)
    all_refs = source.refs()[: args.max_scenarios]
    done = read_journal(journal)
    for ref in all_refs[index::count]:
        if ref.token in done:
            continue
        try:
            scenario: Any = source.load(ref)
            record = run_scenario(scenario, cached_read_log(ref.group), maps(scenario.map_name), selector)
        except Exception as err:  # noqa: BLE001 - one bad scenario never stops the run: recorded as failed
            record = {"token": ref.token, "log_name": ref.log_name, "scenario_type": ref.scenario_type,
                      "valid": False, "error": f"{type(err).__name__}: {err}"}  # fmt: skip
            print(f"{ref.token}: failed: {record['error']}", flush=True)
        append_line(journal, record)
        if record["valid"]:
            print(
                f"{record['token']} {record['scenario_type'][:36]:36s} CLS {record['score']:.3f} at-fault "
                f"{record['no_ego_at_fault_collisions']:.2f} changed {record['changed']}/{record['decisions']} "
                f"back {record['back']} ({record['seconds']:.0f} s)",
                flush=True,
            )
    order = {ref.token: i for i, ref in enumerate(all_refs)}
    records = sorted(read_journal(journal).values(), key=lambda r: order.get(r["token"], len(order)))
    atomic_write_text(out / "scores.csv", scores_csv(records))
    valid = [r for r in records if r["valid"]]
    at_fault = sum(float(r["no_ego_at_fault_collisions"]) < 1.0 for r in valid)
    changed = sum(int(r["changed"]) for r in valid) / max(sum(int(r["decisions"]) for r in valid), 1)
    cls = 100 * np.mean([float(r["score"]) for r in valid]) if valid else float("nan")
    print(f"{len(valid)} scenarios in {out} ({len(records) - len(valid)} failed): CLS {cls:.1f}, {at_fault} with an "
          f"at-fault collision; the selector changed {100 * changed:.1f} % of the discriminator's picks")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
