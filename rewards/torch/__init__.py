"""Batched torch twins of the scorers, over a leading batch of episodes or scenes, on any device.

- :mod:`rewards.torch.geometry`: oriented-box corners, the separating-axis overlap test, the broad-phase
  compaction, point-in-grid and polyline projection.
- :mod:`rewards.torch.kinematics`: the LQR tracker + kinematic bicycle (NAVSIM's and nuPlan's velocity fits) and
  NAVSIM's ``simulate_proposals``.
- :mod:`rewards.torch.metric_cache_batch`: ``MetricCacheBatch``, ``S`` metric caches padded and collated (re-centred
  on each ego start when cast below float64); :mod:`rewards.torch.map_grid` builds its map grid (sub-cell classes).
- :mod:`rewards.torch.pdm` (+ ``pdm_metrics``, ``pdm_geometry``, ``pdm_contacts``, ``pdm_map``, ``comfort``):
  PDMS / EPDMS of ``(S, K)`` candidates, the twin of :mod:`rewards.pdm` (float64 results identical).
- :mod:`rewards.torch.cls_world` / :mod:`rewards.torch.cls_polygons`: the map of a batch of closed-loop episodes
  as padded tensors (lane graph, polygons as bounded edge groups, the expert's roadblock route).
- :mod:`rewards.torch.cls_route`, :mod:`rewards.torch.cls_collisions`, :mod:`rewards.torch.cls_metrics`: nuPlan's
  closed-loop metrics and CLS (the twin of :mod:`rewards.nuplan_metrics`).
- :mod:`rewards.torch.closed_loop`: BEV-Warp's judge: nuPlan's rules per step (rewards, termination) and the
  episode metrics.
"""
