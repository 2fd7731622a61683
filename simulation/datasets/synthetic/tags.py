"""nuPlan scenario tags of a synthetic drive, computed from what was logged and what the expert reacted to.

Thresholds follow nuPlan's competition definitions where they are published (specs/nuplan.md):
high_magnitude_speed v > 9 m/s, low_magnitude_speed 0.3 < v < 1.2 m/s, behind_long_vehicle: a lead
vehicle longer than 8 m at 3-10 m. The others are this generator's own, stated in :func:`frame_tags`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from simulation.datasets.synthetic.expert import BIKE_NEAR_M
from simulation.datasets.synthetic.network import Town, TurnType
from simulation.datasets.synthetic.world import DriveRecord
from simulation.types import PACIFICA, TrackedObjectType

#: Every type this generator can tag.
SCENARIO_TYPES = (
    "following_lane_with_lead",
    "stopping_with_lead",
    "stopping_at_traffic_light_with_lead",
    "stopping_at_traffic_light_without_lead",
    "stationary_at_traffic_light_with_lead",
    "stationary_at_traffic_light_without_lead",
    "starting_left_turn",
    "starting_right_turn",
    "starting_straight_traffic_light_intersection_traversal",
    "changing_lane",
    "waiting_for_pedestrian_to_cross",
    "stationary_in_traffic",
    "behind_long_vehicle",
    "behind_bike",
    "near_multiple_vehicles",
    "high_magnitude_speed",
    "low_magnitude_speed",
)
TAG_STRIDE = 10  # tag every 10th 20 Hz frame (2 Hz)
#: A pedestrian the stopped ego waits for: walking across its way within this distance ahead of its front
#: bumper (m) and this far to either side of its axis (m, the width of a crosswalk over a 3 + 3 lane road).
PED_AHEAD_M = 15.0
PED_SIDE_M = 10.0
TURN_WINDOW = 60  # frames (3 s) around entering a connector that count as "starting" a turn


def _turn_entries(town: Town, record: DriveRecord) -> np.ndarray:
    """``(F,)`` turn type of the connector the ego enters within +-TURN_WINDOW frames (-1 if none);
    straight entries count only through signalled junctions."""
    seg = np.array([f.segment for f in record.ego_frames])
    out = np.full(len(seg), -1, dtype=np.int64)
    change = np.flatnonzero(np.diff(seg) != 0) + 1
    for k in change:
        p = town.paths[int(seg[k])]
        if not p.is_connector or (p.turn_type == TurnType.STRAIGHT and p.phase < 0):
            continue
        out[max(k - TURN_WINDOW, 0) : k + TURN_WINDOW] = p.turn_type
    return out


def frame_tags(town: Town, record: DriveRecord, ego_v: np.ndarray, ego_a: np.ndarray) -> list[tuple[int, str, int]]:
    """``(frame, type, agent column or -1)`` tags on every :data:`TAG_STRIDE`-th frame.

    Own definitions: a lead is the nearest vehicle on the ego path or in its corridor; "with lead" means
    one within 30 m (and before the stop line for light tags); stopping = decelerating below -0.5 m/s^2
    above 0.5 m/s; stationary = below 0.1 m/s; a pedestrian being waited for (the ego below 0.5 m/s) is one in
    the corridor within 15 m or one walking across the ego's way (:func:`_crossing_pedestrian`);
    behind_bike = a cyclist lead closer than the expert's BIKE_NEAR_M (the distance at which it starts to follow
    one); near_multiple_vehicles = at least 6 vehicles within 20 m of the ego; a turn is "starting" from
    :data:`TURN_WINDOW` frames before the ego enters its connector to as many after.
    """
    turns = _turn_entries(town, record)
    tags: list[tuple[int, str, int]] = []
    for f in range(0, len(record.ego_frames), TAG_STRIDE):
        out = _lead_tags(record, f, float(ego_v[f]), float(ego_a[f])) + _manoeuvre_tags(record, f, int(turns[f]))
        tags += [(f, name, int(track)) for name, track in out]
    return tags


def _lead_tags(record: DriveRecord, f: int, v: float, a: float) -> list[tuple[str, int]]:
    """Tags about the lead vehicle, lights and surrounding traffic at frame ``f``."""
    fr = record.ego_frames[f]
    lead = fr.lead_owner if fr.lead_owner >= 0 and fr.lead_gap < 30.0 else -1
    lead_type = record.types[lead] if lead >= 0 else -1
    lead_vehicle = lead if lead_type == TrackedObjectType.VEHICLE else -1
    length = record.boxes[f, lead, 5] if lead >= 0 else 0.0
    light = fr.light_stop and fr.stop_gap < 50.0
    lead_before_light = lead_vehicle >= 0 and fr.lead_gap < fr.stop_gap
    stopping = a < -0.5 and v > 0.5
    out: list[tuple[str, int]] = []
    if lead_vehicle >= 0 and v > 2.0 and fr.lead_v > 2.0 and fr.turn_type < 0 and not fr.changing_lane:
        out.append(("following_lane_with_lead", lead_vehicle))
    if lead_vehicle >= 0 and stopping and fr.lead_v < v:
        out.append(("stopping_with_lead", lead_vehicle))
    suffix = "with_lead" if lead_before_light else "without_lead"
    if light and stopping:
        out.append(("stopping_at_traffic_light_" + suffix, lead))
    if light and v < 0.1 and fr.stop_gap < (40.0 if lead_before_light else 12.0):
        out.append(("stationary_at_traffic_light_" + suffix, lead))
    if v < 0.1 and lead_vehicle >= 0 and fr.lead_gap < 8.0 and not light:
        out.append(("stationary_in_traffic", lead_vehicle))
    if lead_vehicle >= 0 and length > 8.0 and 3.0 <= fr.lead_gap <= 10.0:
        out.append(("behind_long_vehicle", lead_vehicle))
    if lead >= 0 and lead_type == TrackedObjectType.BICYCLE and fr.lead_gap < BIKE_NEAR_M:
        out.append(("behind_bike", lead))
    near = record.valid[f] & (record.types == TrackedObjectType.VEHICLE)
    dist = np.linalg.norm(record.boxes[f, :, :2] - record.ego_pose[f, None, :2], axis=1)
    if int((near & (dist < 20.0)).sum()) >= 6:
        out.append(("near_multiple_vehicles", -1))
    return out


def _manoeuvre_tags(record: DriveRecord, f: int, turn: int) -> list[tuple[str, int]]:
    """Tags about the ego's own motion at frame ``f``: turns, lane changes, pedestrians, speed."""
    fr = record.ego_frames[f]
    v = fr.v
    out: list[tuple[str, int]] = []
    names = {
        TurnType.LEFT: "starting_left_turn",
        TurnType.RIGHT: "starting_right_turn",
        TurnType.STRAIGHT: "starting_straight_traffic_light_intersection_traversal",
    }
    if turn in names:
        out.append((names[TurnType(turn)], -1))
    if fr.changing_lane:
        out.append(("changing_lane", -1))
    ped = fr.corridor_owner
    if not (ped >= 0 and record.types[ped] == TrackedObjectType.PEDESTRIAN and fr.lead_gap < 15.0):
        ped = _crossing_pedestrian(record, f)
    if ped >= 0 and v < 0.5:
        out.append(("waiting_for_pedestrian_to_cross", ped))
    if v > 9.0:
        out.append(("high_magnitude_speed", -1))
    elif 0.3 < v < 1.2:
        out.append(("low_magnitude_speed", -1))
    return out


def _crossing_pedestrian(record: DriveRecord, f: int) -> int:
    """The nearest pedestrian walking across the ego's way (more than 0.3 m/s across its heading) less than
    :data:`PED_AHEAD_M` ahead of its front bumper and :data:`PED_SIDE_M` to either side of its axis, with no
    vehicle lead before it; -1 if none."""
    fr = record.ego_frames[f]
    x, y, h = record.ego_pose[f]
    c, s = np.cos(h), np.sin(h)
    d = record.boxes[f, :, :2] - np.array([x, y])
    ahead = d[:, 0] * c + d[:, 1] * s - PACIFICA.front_length
    side = -d[:, 0] * s + d[:, 1] * c
    across = np.abs(-record.boxes[f, :, 3] * s + record.boxes[f, :, 4] * c)
    lead = fr.lead_gap if fr.lead_owner >= 0 and record.types[fr.lead_owner] != TrackedObjectType.PEDESTRIAN else 1e9
    ok = record.valid[f] & (record.types == TrackedObjectType.PEDESTRIAN) & (across > 0.3)
    ok &= (ahead > 0.0) & (ahead < min(PED_AHEAD_M, lead)) & (np.abs(side) < PED_SIDE_M)
    return int(np.flatnonzero(ok)[np.argmin(ahead[ok])]) if ok.any() else -1


def difficulty(town: Town, record: DriveRecord) -> Counter:
    """Counts over 2 Hz frames: total, lead vehicle < 30 m, red light ahead (< 50 m), a turn within 4 s,
    a lane change within 4 s."""
    frames = record.ego_frames
    seg = np.array([f.segment for f in frames])
    turn = np.array([town.paths[int(s)].turn_type in (TurnType.LEFT, TurnType.RIGHT) for s in seg])
    lc = np.array([f.changing_lane for f in frames])
    out: Counter = Counter()
    for f in range(0, len(frames), TAG_STRIDE):
        fr = frames[f]
        out["scenes"] += 1
        lead = fr.lead_owner
        out["lead_lt_30m"] += int(lead >= 0 and fr.lead_gap < 30.0 and record.types[lead] == TrackedObjectType.VEHICLE)
        out["red_light_ahead"] += int(fr.light_stop and fr.stop_gap < 50.0)
        out["turn"] += int(turn[f : f + 80].any())
        out["lane_change"] += int(lc[f : f + 80].any())
    return out
