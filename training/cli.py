"""The ``diffplan`` command: a thin dispatcher to each capability's own entry point.

Each subcommand lives next to the code it drives and exposes ``main(argv: list[str]) -> int``;
it is imported only when called, so ``diffplan --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

#: (subcommand words) -> ("module" or "module:function", help line); the function defaults to ``main``.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("data", "synth"): ("simulation.datasets.synthetic.cli", "generate a synthetic city (nuPlan-format logs + maps)"),
    ("data", "scenes"): ("simulation.datasets.cli", "extract NAVSIM scenes / nuPlan scenarios and print a summary"),
    ("data", "select"): (
        "simulation.evaluation.selection",
        "select a split's hard scenes into a scene list (navtest-style)",
    ),
    ("data", "cache"): ("training.cache", "build the planner feature cache and NAVSIM metric caches of a split"),
    ("data", "dagger"): (
        "training.dagger",
        "label the states a learned planner drives into in closed loop with PDM-Closed's plans (DAgger)",
    ),
    ("data", "prefs"): ("training.prefs_build", "build preference pairs of a generator's candidates (reward model)"),
    ("viz",): ("simulation.visualize", "BEV plot (PNG) of a scene or GIF of a log"),
    ("bench",): ("simulation.evaluation.cli", "closed-loop / NAVSIM benchmarks (Hydra)"),
    ("fit",): ("training.lightning_cli:fit_main", "train a planner (Lightning CLI, --config configs/train/*.yaml)"),
    ("validate",): ("training.lightning_cli:validate_main", "validate a planner (Lightning CLI)"),
    ("test",): ("training.lightning_cli:test_main", "test a planner (Lightning CLI)"),
    ("predict",): ("training.lightning_cli:predict_main", "predict with a planner (Lightning CLI)"),
    ("export",): ("training.export_cli", "export a trained planner to TorchScript / ONNX"),
}


def _usage() -> str:
    lines = ["usage: diffplan <command> [args]", "", "commands:"]
    for words, (_, text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    for words, (module, _) in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0])):
        if tuple(args[: len(words)]) == words:
            module_name, _, func = module.partition(":")
            entry = getattr(importlib.import_module(module_name), func or "main")
            return int(entry(args[len(words) :]) or 0)
    print(_usage(), file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
    return 0 if not args or args[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    raise SystemExit(main())
