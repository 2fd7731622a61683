"""Batched torch twins of the scorers, over a leading batch of episodes or scenes, on any device.

- :mod:`rewards.torch.geometry`: oriented-box corners, the separating-axis overlap test, the broad-phase
  compaction, point-in-grid and polyline projection.
- :mod:`rewards.torch.kinematics`: the LQR tracker + kinematic bicycle (NAVSIM's and nuPlan's velocity fits) and
  NAVSIM's ``simulate_proposals``.
- :mod:`rewards.torch.metric_cache_batch`: ``MetricCacheBatch``, ``S`` metric caches padded and collated (re-centred
  on each ego start when cast below float64); :mod:`rewards.torch.map_grid` builds its map grid (sub-cell classes).
- :mod:`rewards.torch.pdm` (+ ``pdm_metrics``, ``pdm_geometry``, ``comfort``): PDMS / EPDMS of ``(S, K)``
  candidates, the twin of :mod:`rewards.pdm` (binary sub-metrics identical in float64).
- :mod:`rewards.torch.closed_loop`: the per-frame checks of a closed-loop rollout in the vector world (at-fault
  collision, drivable area, TTC, comfort, deviation from the expert path) and the episode score that BEV-Warp
  reports.
"""
