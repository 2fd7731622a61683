"""BEV plots of synthetic logs (PNG): town, agents and the ego at one frame, and the ego's driven path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulation.datasets.log_data import LogData
from simulation.datasets.synthetic.generator import LogSpec, make_town
from simulation.datasets.synthetic.map_layers import town_origin
from simulation.datasets.synthetic.network import Town
from simulation.geometry import agent_box_corners, ego_box_corners
from simulation.types import TrackedObjectType

_COLORS = {
    TrackedObjectType.VEHICLE: "tab:blue",
    TrackedObjectType.PEDESTRIAN: "tab:orange",
    TrackedObjectType.BICYCLE: "tab:purple",
    TrackedObjectType.TRAFFIC_CONE: "tab:red",
    TrackedObjectType.BARRIER: "tab:brown",
}


def plot_frame(town: Town, log: LogData, origin: np.ndarray, frame: int, path: Path, radius: float = 70.0) -> Path:
    """Write a PNG of ``frame`` of ``log`` centred on the ego."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ego = log.ego_states[frame, :3].copy()
    ego[:2] -= origin
    fig, ax = plt.subplots(figsize=(7, 7))
    for poly in town.road_segments.values():
        ax.fill(*poly.exterior.xy, color="0.88", lw=0)
    for j in town.junctions.values():
        ax.fill(*j.polygon.exterior.xy, color="0.82", lw=0)
    for poly, _ in town.crosswalks.values():
        ax.fill(*poly.exterior.xy, color="khaki", lw=0)
    for p in town.paths.values():
        ax.plot(*p.centre.T, color="0.6" if p.is_connector else "0.45", lw=0.4)
    sel = log.box_frame == frame
    corners = agent_box_corners(log.box_states[sel])
    corners[..., :2] -= origin
    for c, t in zip(corners, log.track_types[log.box_track[sel]]):
        ax.fill(*c.T, color=_COLORS.get(TrackedObjectType(int(t)), "tab:gray"), alpha=0.8)
    path_xy = log.ego_states[:, :2] - origin
    ax.plot(*path_xy.T, color="tab:green", lw=1.0, alpha=0.7)
    ax.fill(*ego_box_corners(ego).T, color="tab:green")
    ax.set_xlim(ego[0] - radius, ego[0] + radius)
    ax.set_ylim(ego[1] - radius, ego[1] + radius)
    ax.set_aspect("equal")
    ax.set_title(f"{log.log_name} frame {frame}", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_logs(root: Path, specs: list[LogSpec], seed: int) -> list[Path]:
    """One BEV plot (middle frame) per log, read back from ``root``; returns the PNG paths."""
    from simulation.datasets.nuplan_db import read_log
    from simulation.datasets.synthetic.output import log_path

    out = []
    for spec in specs:
        log = read_log(log_path(root, spec))
        town = make_town(seed, spec.town)
        out.append(
            plot_frame(town, log, town_origin(spec.town), log.num_frames // 2, root / "plots" / f"{spec.name}.png")
        )
    return out
