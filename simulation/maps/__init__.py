"""Maps: nuPlan GeoPackage reading and writing, the lane graph, spatial queries (``MapAPI``) and the
``MapProtocol`` that map users depend on."""

from simulation.maps.protocol import MapProtocol

__all__ = ["MapProtocol"]
