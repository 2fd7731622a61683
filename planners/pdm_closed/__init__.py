"""NAVSIM's PDM-Closed planner: paths, IDM policies, observation, proposal generator and the planner."""

from planners.pdm_closed.planner import PDMClosedPlanner, PDMReferenceTrajectory

__all__ = ["PDMClosedPlanner", "PDMReferenceTrajectory"]
