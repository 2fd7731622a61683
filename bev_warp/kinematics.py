"""Re-export of the torch LQR tracker + kinematic bicycle, which lives in :mod:`rewards.torch.kinematics`."""

from rewards.torch.kinematics import DEFAULT_TRACKER, TrackerParameters, normalize_angle, track_and_propagate

__all__ = ["DEFAULT_TRACKER", "TrackerParameters", "normalize_angle", "track_and_propagate"]
