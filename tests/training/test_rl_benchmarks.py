"""The RL benchmark scripts' arithmetic: group statistics of rewards and the step-share report."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from anchor_choice import choice_stats  # noqa: E402
from bench_anchor_choice import module_args  # noqa: E402
from bench_rl import report  # noqa: E402
from rl_exploration import group_stats  # noqa: E402


def test_group_stats_on_hand_built_rewards() -> None:
    total = np.array([[0.0, 0.0, 1.0, 0.5], [0.2, 0.2, 0.2, 0.2]])
    groups = np.array([[0, 0, 1, 1], [0, 0, 0, 0]])
    std, flat = group_stats(total, groups)
    # groups: (0, 0) -> [0, 0] flat std 0; (0, 1) -> [1, 0.5] std 0.3536; (1, 0) -> all 0.2 flat std 0
    assert std == pytest.approx(np.sqrt(0.125) / 3) and flat == pytest.approx(2 / 3)
    std, flat = group_stats(total, np.zeros_like(groups))
    assert std == pytest.approx(np.std([0.0, 0.0, 1.0, 0.5], ddof=1) / 2) and flat == pytest.approx(0.5)
    assert group_stats(total[:, :1], groups[:, :1]) == (0.0, 0.0)  # no group of two


def test_report_shares() -> None:
    times = {"candidates": 100.0, "sample": 1.0, "backward": 1.0, "score_serial": 4.0, "score_pool": 2.0,
             "reference": 1.0, "overlapped": 2.5}  # fmt: skip
    text = report("g", times, 2)
    # serial step 1 + 1 + 4 + 1 = 7 (scoring 57 %); overlapped 1 + 1 + 2.5 = 4.5, scoring exposed 1.5 / 4.5
    assert "serial 7.00 s (scoring 57%)" in text and "overlapped 4.50 s (scoring exposed 33%)" in text
    assert "serial / overlapped 1.56x" in text and "serial 25, pool 50 (2.00x)" in text


def test_choice_stats_on_hand_built_scenes() -> None:
    scores = np.array([[0.2, 0.9, 0.5], [0.0, 0.4, 1.0]])
    logits = np.array([[0.0, 1.0, 0.5], [3.0, 0.0, 1.0]])  # picks 1 (0.9) and 0 (0.0)
    failed = np.array([[False, False, True], [True, False, False]])
    stats = choice_stats(scores, logits, np.array([1, 2]), failed)
    assert stats.scenes == 2
    assert stats.pick == pytest.approx((0.9 + 0.0) / 2) and stats.ref_pick == pytest.approx((0.9 + 1.0) / 2)
    assert stats.oracle == pytest.approx((0.9 + 1.0) / 2) and stats.mean == pytest.approx(3.0 / 6)
    assert stats.changed == pytest.approx(0.5) and stats.failed == pytest.approx(0.5)
    assert "| il | 2 | 45.0 | 95.0 | 95.0 | 50.0 | 50 % | 50 % |" == stats.markdown("il")
    with pytest.raises(ValueError, match="shapes differ"):
        choice_stats(scores, logits[:, :2], np.array([1, 2]), failed)


def test_anchor_choice_benchmark_compares_the_same_config_with_and_without_the_rollout() -> None:
    with_rollout, alone = module_args(True), module_args(False)
    assert (with_rollout.pop("rollout"), alone.pop("rollout")) == (True, False)
    assert with_rollout == alone  # otherwise the same module: truncated_choice.yaml with truncated_ddv2's sampler
    assert alone["trainable"] == ["cls_head"] and alone["policy"]["schedule"] == "ddv2"


def test_bench_rl_device_option() -> None:
    from bench_rl import best_of, resolve_device

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: no CUDA device on this machine"):
            resolve_device("cuda")
    with pytest.raises(SystemExit, match="--device meta: choose cpu or cuda"):
        resolve_device("meta")
    calls = iter([0.0, 1.0])
    seconds, out = best_of(lambda: next(calls), 2, torch.device("cpu"))
    assert out == 1.0 and 0.0 <= seconds < 1.0
