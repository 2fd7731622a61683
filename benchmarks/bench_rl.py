"""One RL step, broken into its parts, for each generator on the CPU: sampling, scoring, the reference's
log-probs, and the policy's log-probs + loss + backward.

Batch: ``--scenes`` (32) training scenes of the demo's RL data set with their metric caches; ``--samples`` (16)
rollouts per scene for the masked planner, the nearest multiple of the anchors for the truncated one (20 anchors:
20). Policies sample as the shipped configs do (``truncated_grpo`` / ``masked_gspo``); the encoders are frozen.

``--device cuda`` runs the policies (sampling, log-probs, backward) on the GPU, each part timed between CUDA
synchronisations; the scorer stays the numpy one on the CPU, as in training.

Scoring is timed three ways in the same run: the serial numpy scorer in the calling process (``RuleReward``,
``num_workers=0``: the baseline), the process pool (``--workers``, blocking), and the pool overlapped with the
reference's log-probs (``RuleReward.submit``, then the reference, then the result: what ``training.rl`` does).
Printed per generator: each part's seconds, candidates scored per second, the share of the step that scoring takes
(serial, and what the overlapped pool leaves exposed), and the step-time ratio serial / overlapped.

    python benchmarks/bench_rl.py [--root outputs/demo] [--scenes 32] [--samples 16] [--workers 2] [--repeats 2]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not an installed copy
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rl_exploration import CKPT, load_batch  # noqa: E402

from planners.checkpoint import load_planner  # noqa: E402
from planners.policy import Rollout  # noqa: E402
from rewards.composite import RuleReward  # noqa: E402
from training.rl_objectives import grpo_advantages, reinforce_loss  # noqa: E402
from training.rl_support import make_policy  # noqa: E402

#: sampling options of the shipped configs (configs/train/truncated_grpo.yaml, masked_gspo.yaml)
POLICY: dict[str, dict[str, Any]] = {
    "truncated_il": {"schedule": "planner", "eta": 1.0, "noise": "additive", "noise_floor": 0.01},
    "masked_il": {"temperature": 0.5, "top_k": 5},
}
FROZEN = ("bev_encoder", "agent_encoder", "ego_encoder")
CPU = torch.device("cpu")


def best_of(fn: Callable[[], Any], repeats: int, device: torch.device | None = None) -> tuple[float, Any]:
    """Smallest wall time of ``repeats`` calls of ``fn`` and the last call's result (on a CUDA ``device``, each
    call between two synchronisations, so the time covers the kernels it queued)."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    best, out = np.inf, None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return float(best), out


def resolve_device(name: str) -> torch.device:
    """``--device``: ``cpu`` or ``cuda[:N]``; a CUDA device that this machine does not have is an error."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench_rl: --device {name}: no CUDA device on this machine")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"bench_rl: --device {name}: choose cpu or cuda")
    return device


def load_policy(root: Path, name: str, device: torch.device = CPU) -> tuple[Any, Any]:
    """The generator of ``name`` as a policy (encoders frozen) and a frozen copy as the reference, on ``device``."""
    planner = load_planner(root / CKPT.format(name=name)).to(device)
    for prefix in FROZEN:
        getattr(planner, prefix).requires_grad_(False)
    reference = copy.deepcopy(planner).requires_grad_(False)
    return make_policy(planner, POLICY[name]), make_policy(reference, POLICY[name])


def step_parts(
    name: str,
    root: Path,
    batch: dict[str, Any],
    samples: int,
    rewards: tuple[RuleReward, RuleReward],
    repeats: int,
    device: torch.device = CPU,
) -> dict[str, float]:
    """Seconds of each part of one RL step of generator ``name`` (best of ``repeats`` after a warm-up)."""
    serial, pool = rewards
    policy, reference = load_policy(root, name, device)
    features, caches = batch["features"].apply(lambda v: v.to(device)), batch["metric_cache"]
    gen = torch.Generator(device=device).manual_seed(0)
    sample = lambda: policy.rollout(features, samples, gen).detach()  # noqa: E731
    rollout: Rollout = sample()
    plans = rollout.plans.double().cpu().numpy()
    serial.score(caches, plans), pool.score(caches, plans)  # warm-up: numba kernels, the pool's start

    def reference_lp() -> torch.Tensor:
        with torch.no_grad():
            return reference.log_prob(features, rollout)

    def overlapped() -> Any:
        pending = pool.submit(caches, plans)
        reference_lp()
        return pending.result()

    def backward() -> None:
        adv = grpo_advantages(torch.as_tensor(scored.total, dtype=torch.float32, device=device))
        loss, _ = reinforce_loss(policy.log_prob(features, rollout), adv, rollout.step_mask, 1.0)
        loss.backward()

    out: dict[str, float] = {"candidates": float(plans.shape[0] * plans.shape[1])}
    out["sample"], _ = best_of(sample, repeats, device)
    out["score_serial"], scored = best_of(lambda: serial.score(caches, plans), repeats, device)
    out["score_pool"], _ = best_of(lambda: pool.score(caches, plans), repeats, device)
    out["reference"], _ = best_of(reference_lp, repeats, device)
    out["overlapped"], _ = best_of(overlapped, repeats, device)
    out["backward"], _ = best_of(backward, repeats, device)
    return out


def report(name: str, t: dict[str, float], workers: int) -> str:
    """The lines printed for one generator."""
    rest = t["sample"] + t["backward"]
    serial_step = rest + t["score_serial"] + t["reference"]
    pool_step = rest + t["score_pool"] + t["reference"]
    overlap_step = rest + t["overlapped"]
    exposed = max(t["overlapped"] - t["reference"], 0.0)
    n = t["candidates"]
    return "\n".join(
        [
            f"{name}: {int(n)} candidates per step",
            f"  sample {t['sample']:.2f} s | score serial {t['score_serial']:.2f} s, pool({workers}) "
            f"{t['score_pool']:.2f} s | reference log-prob {t['reference']:.2f} s | log-prob + backward "
            f"{t['backward']:.2f} s | pool overlapped with the reference {t['overlapped']:.2f} s",
            f"  scored per second: serial {n / t['score_serial']:.0f}, pool {n / t['score_pool']:.0f} "
            f"({t['score_serial'] / t['score_pool']:.2f}x)",
            f"  step: serial {serial_step:.2f} s (scoring {t['score_serial'] / serial_step:.0%}), pool "
            f"{pool_step:.2f} s (scoring {t['score_pool'] / pool_step:.0%}), overlapped {overlap_step:.2f} s "
            f"(scoring exposed {exposed / overlap_step:.0%}); serial / overlapped {serial_step / overlap_step:.2f}x",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("outputs/demo"), help="a `make demo` output folder")
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the calling process")
    parser.add_argument("--generator", choices=("truncated", "masked", "both"), default="both")
    parser.add_argument("--device", default="cpu", help="where the policies run: cpu or cuda[:N] (scoring: CPU)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    if not (args.root / CKPT.format(name="masked_il")).exists():
        print(f"bench_rl: skipped, no demo run under {args.root} (make demo, or --root)")
        return 0
    batch = load_batch(args.root, args.scenes)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{len(batch['metric_cache'])} scenes; policies on {where}; torch threads {args.threads}; pool of "
          f"{args.workers} workers")  # fmt: skip
    with RuleReward("v1", num_workers=0) as serial, RuleReward("v1", num_workers=args.workers) as pool:
        for name in ("truncated_il", "masked_il"):
            if args.generator not in ("both", name.split("_")[0]):
                continue
            policy, _ = load_policy(args.root, name)
            samples = args.samples
            anchors = getattr(getattr(policy, "config", None), "num_anchors", None)
            if anchors and getattr(policy.config, "truncated", False):
                samples = max(1, round(samples / anchors)) * anchors
            times = step_parts(name, args.root, batch, samples, (serial, pool), args.repeats, device)
            print(report(name, times, args.workers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
