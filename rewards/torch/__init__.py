"""Batched torch twins of the scorers, over a leading batch of episodes or scenes, on any device.

- :mod:`rewards.torch.geometry`: oriented-box corners, the separating-axis overlap test, the broad-phase
  compaction, point-in-grid and polyline projection.
- :mod:`rewards.torch.closed_loop`: the per-frame checks of a closed-loop rollout in the vector world (at-fault
  collision, drivable area, TTC, comfort, deviation from the expert path) and the episode score that BEV-Warp
  reports.
"""
