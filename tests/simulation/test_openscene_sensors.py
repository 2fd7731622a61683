"""OpenScene pickles written without sensors still carry what NAVSIM's scene loader indexes (``cams``, ``lidar_path``),
and diffplan reads pickles with and without those placeholders alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulation.datasets.openscene import (
    openscene_frames,
    openscene_scenes,
    read_openscene_log,
    write_openscene_frames,
    write_openscene_log,
)
from simulation.datasets.openscene_writer import CAMERA_CHANNELS
from simulation.datasets.scenes import SceneFilter
from simulation.datasets.testing import make_log_data

#: The camera attributes NAVSIM's ``Cameras`` dataclass has (v1.1 and v2.x), one per channel.
NAVSIM_CAMERAS = ("cam_f0", "cam_l0", "cam_l1", "cam_l2", "cam_r0", "cam_r1", "cam_r2", "cam_b0")


def _navsim_cameras(camera_dict: dict[str, Any], sensor_names: list[str]) -> dict[str, dict[str, Any] | None]:
    """What ``Cameras.from_camera_dict`` indexes: every key lower-cased; for a requested camera its five fields
    (the image itself is not opened here); then all eight attributes by name (a missing one is a KeyError)."""
    data: dict[str, dict[str, Any] | None] = {}
    for name in camera_dict.keys():
        camera = name.lower()
        if camera in sensor_names:
            entry = camera_dict[name]
            data[camera] = {
                "image_path": Path("sensor_blobs") / entry["data_path"],
                "sensor2lidar_rotation": entry["sensor2lidar_rotation"],
                "sensor2lidar_translation": entry["sensor2lidar_translation"],
                "intrinsics": entry["cam_intrinsic"],
                "distortion": entry["distortion"],
            }
        else:
            data[camera] = None  # NAVSIM's empty Camera()
    return {camera: data[camera] for camera in NAVSIM_CAMERAS}


def _navsim_lidar_path(frame: dict[str, Any]) -> Path:
    """NAVSIM v1.1 wraps ``lidar_path`` in ``Path`` unconditionally (v2.x accepts ``None`` in agent inputs only)."""
    return Path(frame["lidar_path"])


@pytest.fixture(scope="module")
def log():
    return make_log_data(duration_s=10.0, num_scenes=2)


def test_navsim_camera_and_lidar_access_on_a_written_pickle(log, tmp_path):
    frames = read_openscene_log(write_openscene_log(log, tmp_path / f"{log.log_name}.pkl"))
    assert len(frames) == 20
    for frame in frames:
        assert sorted(frame["cams"]) == sorted(CAMERA_CHANNELS)
        assert all(v is None for v in _navsim_cameras(frame["cams"], []).values())  # no sensors requested
        cams = _navsim_cameras(frame["cams"], list(NAVSIM_CAMERAS))
        for channel in CAMERA_CHANNELS:
            cam = cams[channel.lower()]
            assert cam is not None
            assert cam["image_path"] == Path("sensor_blobs") / log.log_name / channel / f"{frame['token']}.jpg"
            assert np.asarray(cam["sensor2lidar_rotation"]).shape == (3, 3)
            assert np.asarray(cam["sensor2lidar_translation"]).shape == (3,)
            assert np.asarray(cam["intrinsics"]).shape == (3, 3)
            assert np.asarray(cam["distortion"]).shape == (5,)
        assert _navsim_lidar_path(frame) == Path(log.log_name) / "MergedPointCloud" / f"{frame['token']}.pcd"


def test_the_old_empty_cams_fail_navsims_access(log):
    frame = openscene_frames(log)[0]
    frame["cams"] = {}
    with pytest.raises(KeyError, match="cam_f0"):
        _navsim_cameras(frame["cams"], [])


def test_old_and_new_pickles_read_alike(log, tmp_path):
    new = write_openscene_log(log, tmp_path / "new" / f"{log.log_name}.pkl")
    old_frames = openscene_frames(log)
    for frame in old_frames:
        frame["cams"] = {}
    old = write_openscene_frames(old_frames, tmp_path / "old" / f"{log.log_name}.pkl")
    sf = SceneFilter(num_history_frames=4, num_future_frames=4, frame_interval=1)
    a, b = openscene_scenes(read_openscene_log(new), sf), openscene_scenes(read_openscene_log(old), sf)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.token == y.token and x.route_roadblock_ids == y.route_roadblock_ids
        np.testing.assert_array_equal(x.ego.states, y.ego.states)
        np.testing.assert_array_equal(x.agents.boxes, y.agents.boxes)
