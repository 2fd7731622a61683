"""nuPlan's IDM planner in the closed loop: the 15 s fixture scenario of ``bench_closed_loop.py`` (CLS-NR).

Prints seconds per scenario (simulation and planner), milliseconds per planner call, and the ratio against a
baseline run in the same process that answers every leader query as nuPlan writes it: the path buffered for each
of the 16 samples and every object of the occupancy map tested against it.
"""

from __future__ import annotations

import time

import numpy as np
import shapely
from bench_closed_loop import _TimedPlanner, fixture_scenario
from shapely.geometry import Polygon

from planners.nuplan_idm import IDMPlanner, Leader, _footprint_corners, _Obstacles
from planners.nuplan_idm_path import IDMPath
from simulation.closed_loop import ClosedLoopSimulator
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map


class PlainQueryIDM(IDMPlanner):
    """Baseline: one buffer per sample, every object tested."""

    def leader(self, path: IDMPath, progress: float, center: np.ndarray, obstacles: _Obstacles) -> Leader:
        footprint = Polygon(_footprint_corners(center, self.vehicle))
        ahead = path.trimmed(progress, progress + self._target_speed * self.config.horizon_s)
        expanded = shapely.union(
            shapely.linestrings(ahead).buffer(self.vehicle.width / 2.0, cap_style="square"), footprint
        )
        hit = np.flatnonzero(shapely.intersects(expanded, obstacles.polygons))
        if len(hit) == 0:
            return Leader(path.end_progress - progress, 0.0, self.vehicle.length / 2.0)
        distances = shapely.distance(footprint, obstacles.polygons[hit])
        k = int(hit[int(np.argmin(distances))])
        speed = 0.0 if obstacles.red[k] else float(obstacles.speed[k] * np.cos(obstacles.heading[k] - center[2]))
        return Leader(float(distances.min()), speed)


def _run(
    sim: ClosedLoopSimulator, api: MapAPI, make: type[IDMPlanner], repeat: int = 3
) -> tuple[float, float, np.ndarray]:
    runs = []
    for _ in range(repeat):
        planner = _TimedPlanner(make())  # type: ignore[arg-type]
        start = time.perf_counter()
        history = sim.run(fixture_scenario(), planner, map_api=api)
        runs.append((time.perf_counter() - start, planner.seconds / max(planner.calls, 1), history.ego_states))
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]


def main() -> None:
    api = MapAPI.from_data(build_fixture_map())
    sim = ClosedLoopSimulator()
    seconds, per_call, ego = _run(sim, api, IDMPlanner)
    base_seconds, base_per_call, base_ego = _run(sim, api, PlainQueryIDM)
    same = bool(np.allclose(ego, base_ego, atol=1e-9))
    print(
        f"IDM CLS-NR: {seconds:.3f} s per 15 s scenario ({len(ego)} steps), planner {per_call * 1e3:.2f} ms per call; "
        f"plain leader queries {base_per_call * 1e3:.2f} ms per call: {base_per_call / per_call:.1f}x faster, "
        f"same rollout: {same}"
    )


if __name__ == "__main__":
    main()
