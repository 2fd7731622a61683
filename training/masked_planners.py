"""Closed-loop masked diffusion planners from ``masked_il`` checkpoints (Hydra ``_target_`` of the bench configs
``planner=masked`` and ``planner=masked_reflect``)."""

from __future__ import annotations

from typing import Any

from planners.features import PLANNER_RASTER
from planners.masked_closed_loop import MaskedClosedLoopPlanner
from planners.tokenizer import TokenizerError
from simulation.render import RasterConfig
from training.imitation import load_planner


def masked_planner(
    ckpt_path: str,
    order: str = "reverse_causal",
    steps: int = 8,
    reflect: bool = False,
    seed: int = 0,
    temperature: float = 0.0,
    num_candidates: int = 3,
    name: str | None = None,
    **reflection: Any,
) -> MaskedClosedLoopPlanner:
    """A :class:`~planners.masked_closed_loop.MaskedClosedLoopPlanner` from a checkpoint of ``masked_il``.

    ``reflection``: ``max_reflections``, ``max_iterations``, ``radius``, ``patience``, ``check_drivable``,
    ``track`` of the planner. A checkpoint whose weights were trained on another codebook than its stored
    config names raises :class:`~planners.tokenizer.TokenizerError` (naming the file).
    """
    try:
        model = load_planner(ckpt_path, expect_class="MaskedDiffusionPlanner")
    except TokenizerError as err:  # weights trained on another codebook than the stored config's
        raise TokenizerError(f"{ckpt_path}: {err}") from None
    stored = getattr(model, "raster_config", None)
    raster = RasterConfig.from_dict(stored) if stored else PLANNER_RASTER
    return MaskedClosedLoopPlanner(
        model,  # type: ignore[arg-type]
        order=order,
        steps=steps,
        temperature=temperature,
        num_candidates=num_candidates,
        reflect=reflect,
        seed=seed,
        raster=raster,
        name=name,
        **reflection,
    )
