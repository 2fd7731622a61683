"""The NAVSIM scorer of a benchmark run by backend name (``diffplan bench ... scorer=numpy|torch``).

Torch is imported only for the torch backend, so the numpy scorer's workers never load it.
"""

from __future__ import annotations

from typing import Any


def navsim_scorer(version: str = "v1", backend: str = "numpy", normalization: str = "pairwise") -> Any:
    """:class:`rewards.pdm.PDMScorer` (``backend="numpy"``) or :class:`rewards.torch.pdm.TorchPDMScorer`
    (``"torch"``, the same numbers) of ``version``."""
    if backend == "numpy":
        from rewards.pdm import PDMScorer

        return PDMScorer(version, normalization)  # type: ignore[arg-type]
    if backend == "torch":
        from rewards.torch.pdm import TorchPDMScorer

        return TorchPDMScorer(version, normalization)
    raise ValueError(f"scorer backend must be 'numpy' or 'torch', got {backend!r}")
