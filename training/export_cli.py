"""``diffplan export --ckpt CKPT --format {torchscript,onnx} --out FILE``."""

from __future__ import annotations

import argparse

from planners.checkpoint import load_planner
from planners.export import export_planner


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffplan export", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint written by `diffplan fit`")
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument("--out", required=True, help="output file (.pt for TorchScript, .onnx for ONNX)")
    parser.add_argument("--bev-size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    args = parser.parse_args(argv)
    planner = load_planner(args.ckpt)
    path = export_planner(planner, args.out, args.format, bev_size=tuple(args.bev_size))
    print(f"exported {type(planner).__name__} ({args.format}) -> {path}")
    return 0
