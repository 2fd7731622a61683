"""Synthetic drives: traffic sanity, the expert's safety and comfort, scenario tags, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy.signal import savgol_filter

from simulation.datasets.synthetic.generator import LogSpec, ego_states, make_town, record_to_log
from simulation.datasets.synthetic.tags import SCENARIO_TYPES, TAG_STRIDE
from simulation.datasets.synthetic.world import DriveConfig, _blockers, _ego_start, simulate_drive
from simulation.geometry import agent_box_corners, boxes_overlap, ego_box_corners, project_on_polyline
from simulation.types import PACIFICA, StateIndex, TrackedObjectType

SEED = 11


def _spec(index: int, density: float, warmup: float = 6.0) -> LogSpec:
    drive = DriveConfig(duration_s=20.0, warmup_s=warmup, vehicles_per_km=density, pedestrian_density=1.0)
    return LogSpec(f"test_{index}", index, 0, "synth_train", SEED, drive)


def _blocked_start(town, index: int) -> int:
    """The lane of a stopped van the ego of log ``index`` starts behind (the first draws of
    :func:`simulate_drive`), or -1."""
    rng = np.random.default_rng(np.random.SeedSequence([SEED, 3, index]))
    blocked = frozenset(_blockers(town, rng))
    lane, _ = _ego_start(town, rng, blocked)
    return lane if lane in blocked else -1


@pytest.fixture(scope="module")
def drives():
    """Three drives; the third starts the ego behind a stopped van (the first such log index), with a short
    warm-up so that the lane change around it happens in the log."""
    town = make_town(SEED, 0)
    passing = next(i for i in range(2, 200) if _blocked_start(town, i) >= 0)
    out = []
    for index, density, warmup in ((0, 40.0, 6.0), (1, 25.0, 6.0), (passing, 15.0, 1.0)):
        rng = np.random.default_rng(np.random.SeedSequence([SEED, 3, index]))
        spec = _spec(index, density, warmup)
        out.append((spec, simulate_drive(town, spec.drive, rng)))
    return town, out


def test_no_two_vehicles_overlap(drives):
    _, runs = drives
    for _, rec in runs:
        moving = np.isin(rec.types, [TrackedObjectType.VEHICLE, TrackedObjectType.BICYCLE])
        for f in range(0, len(rec.boxes), 2):
            idx = np.flatnonzero(rec.valid[f] & moving)
            c = agent_box_corners(rec.boxes[f, idx])
            hit = boxes_overlap(c[:, None], c[None, :])
            np.fill_diagonal(hit, False)
            assert not hit.any(), f"frame {f}: vehicles {idx[np.argwhere(hit)[0]]} overlap"


def test_expert_never_overlaps_an_agent_and_stays_drivable(drives):
    town, runs = drives
    drivable = shapely.union_all(
        list(town.road_segments.values())
        + [j.polygon for j in town.junctions.values()]
        + [p for p, _ in town.carparks.values()]
    ).buffer(0.3)
    shapely.prepare(drivable)
    for _, rec in runs:
        ego = ego_box_corners(rec.ego_pose)  # (F, 4, 2)
        for f in range(len(rec.boxes)):
            idx = np.flatnonzero(rec.valid[f])
            assert not boxes_overlap(ego[f][None], agent_box_corners(rec.boxes[f, idx])).any(), f"frame {f}"
        assert shapely.contains_xy(drivable, ego[..., 0].ravel(), ego[..., 1].ravel()).all()


def test_speeds_within_limits(drives):
    town, runs = drives
    top = max(p.speed_limit for p in town.lanes)
    for _, rec in runs:
        speed = np.linalg.norm(rec.boxes[..., 3:5], axis=-1)[rec.valid]
        assert speed.max() <= 1.05 * top + 0.1
        for fr in rec.ego_frames:
            assert fr.v <= town.paths[fr.segment].speed_limit + 0.5
        assert max(fr.v for fr in rec.ego_frames) > 3.0  # the expert does drive


def _comfort(states: np.ndarray) -> dict[str, float]:
    """nuPlan's comfort quantities on 10 Hz states (Savitzky-Golay windows of the devkit)."""
    s, dt, d = states[::2], 0.1, PACIFICA.rear_axle_to_center
    yaw = np.unwrap(s[:, StateIndex.HEADING])
    yaw_rate = savgol_filter(yaw, 5, 2, deriv=1, delta=dt)
    yaw_acc = savgol_filter(yaw, 5, 3, deriv=2, delta=dt)
    lon = savgol_filter(s[:, StateIndex.AX] + d * yaw_rate**2 * 0.0, 8, 2)
    lat = savgol_filter(s[:, StateIndex.AY] + d * yaw_acc, 8, 2)
    jerk = savgol_filter(lon, 15, 2, deriv=1, delta=dt)
    return {
        "lon_min": float(lon.min()),
        "lon_max": float(lon.max()),
        "lat": float(np.abs(lat).max()),
        "jerk": float(np.abs(jerk).max()),
        "yaw_rate": float(np.abs(yaw_rate).max()),
        "yaw_acc": float(np.abs(yaw_acc).max()),
    }


def test_expert_comfort_bounds(drives):
    _, runs = drives
    for _, rec in runs:
        states, v, a = ego_states(rec)
        c = _comfort(states)
        assert -4.05 < c["lon_min"] and c["lon_max"] < 2.40
        assert c["lat"] < 4.89 and c["jerk"] < 4.13
        assert c["yaw_rate"] < 0.95 and c["yaw_acc"] < 1.93
        # logged ego-frame velocity is consistent with the driven positions (rear axle, 20 Hz)
        step = np.linalg.norm(np.diff(rec.ego_pose[:, :2], axis=0), axis=1)
        assert np.allclose(step, v[:-1] * 0.05 + 0.5 * a[:-1] * 0.05**2, atol=0.05)


def test_tags_follow_their_definitions(drives):
    town, runs = drives
    for spec, rec in runs:
        log, stats = record_to_log(town, rec, spec)
        assert set(log.tag_type) <= set(SCENARIO_TYPES)
        assert (log.tag_frame % TAG_STRIDE == 0).all()
        speed = log.ego_states[:, StateIndex.VX]
        fast = {int(f) for f, t in zip(log.tag_frame, log.tag_type) if t == "high_magnitude_speed"}
        assert fast == {f for f in range(0, log.num_frames, TAG_STRIDE) if speed[f] > 9.0}
        assert stats["frames"] == log.num_frames == 400
        assert len(log.scene_tokens) == 3  # 8 s scenes: 400 frames = 160 + 160 + 80
        assert (log.frame_scene == np.arange(400) // 160).all()
        # every route starts at the block under the ego at the scene's first frame
        for k, route in enumerate(log.scene_roadblock_ids):
            assert route and route[0] == str(rec.frame_blocks[160 * k])
        assert (log.box_track >= 0).all() and log.track_tokens.shape == np.unique(log.track_tokens).shape


def test_same_seed_same_drive(drives):
    town, runs = drives
    spec, rec = runs[1]
    again = simulate_drive(town, spec.drive, np.random.default_rng(np.random.SeedSequence([SEED, 3, spec.index])))
    assert np.array_equal(again.boxes, rec.boxes) and np.array_equal(again.ego_pose, rec.ego_pose)
    assert np.array_equal(again.light, rec.light)


def test_expert_passes_a_stopped_vehicle_by_changing_lanes(drives):
    """The third log starts the ego behind a stopped van in the rightmost lane: it changes lanes and passes."""
    town, runs = drives
    spec, rec = runs[2]
    van = rec.boxes[0, rec.valid[0] & (rec.heights == 2.2) & (np.linalg.norm(rec.boxes[0, :, 3:5], axis=1) == 0)]
    assert len(van) >= 1
    lane = town.paths[_blocked_start(town, spec.index)]
    assert any(town.paths[f.segment].roadblock == lane.roadblock for f in rec.ego_frames[:5])
    assert any(f.changing_lane for f in rec.ego_frames)
    # the ego ends up past the van along its lane
    s_van, d_van = project_on_polyline(van[:, :2], lane.centre)
    s_van = s_van[np.abs(d_van) < 1.0]
    assert len(s_van) == 1
    s_ego, _ = project_on_polyline(rec.ego_pose[-1:, :2], lane.centre)
    assert s_ego[0] > s_van.min() + 10.0 or rec.ego_frames[-1].segment not in town.blocks[lane.roadblock].paths
