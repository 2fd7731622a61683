"""The synthetic city: procedural towns and drives written as real nuPlan data (GeoPackage maps, ``.db`` logs).

Modules, bottom up:

- :mod:`.geometry2d`: Bezier / Hermite curves, polyline offsets and resampling.
- :mod:`.network`: a town's road network (perturbed grid, curved multi-lane roads, 3- and 4-way junctions,
  lane connectors, crosswalks, stop polygons, walkways, parking strips, carparks).
- :mod:`.map_layers`: the town as nuPlan GeoPackage layers (:class:`~simulation.maps.layers.MapData`).
- :mod:`.signals`: fixed-time two-phase traffic lights per junction.
- :mod:`.paths`, :mod:`.traffic`: vectorised IDM traffic along padded lane paths (leaders, merges, corridor
  obstacles, lights, junction claims).
- :mod:`.pedestrians`: crossers at crosswalks, jaywalkers, walkers on walkways.
- :mod:`.expert`: the ego expert driver (route, lane changes, jerk-limited IDM, rear-axle pose).
- :mod:`.world`: one drive, every actor stepped together at 20 Hz.
- :mod:`.tags`: nuPlan scenario tags and difficulty counters.
- :mod:`.generator`: seeds, towns, log specs and the :class:`~simulation.datasets.log_data.LogData` of a drive.
- :mod:`.output`, :mod:`.cli`, :mod:`.plots`: the nuPlan folder layout, ``diffplan data synth``, BEV plots.
"""
