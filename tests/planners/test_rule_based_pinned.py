"""PDM-Closed's plans and proposal scores pinned on the fixture map (local origin, as in test_rule_based.py).

The numbers are those of the planner once it followed NAVSIM's PDMClosedPlanner (centre line first, 10 Hz IDM with
exponent 10, leaders every 0.2 s, its own observation); any change of behaviour shows here as a different chosen
proposal or plan.
Cases: traffic in both eastbound lanes, a red light ahead, and three calls of one planner (the caches reused).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from fixture_observations import ego_state, fixture_observation

from planners.rule_based import PDMClosedPlanner, _route_context, _RouteCache
from simulation.maps.api import MapAPI
from simulation.maps.testing import build_fixture_map
from simulation.protocols import Observation


@dataclass(frozen=True)
class _Pinned:
    best: int
    x: list[float]
    y: list[float]
    heading: list[float]
    scores: list[float]


def _obs(api: MapAPI, x: float, speed: float, y: float = -2.0, heading: float = 0.0, boxes: np.ndarray | None = None,
         red: bool = False) -> Observation:  # fmt: skip
    return fixture_observation(api, ego_state(x, y, heading, speed), boxes, red)


def _traffic() -> np.ndarray:
    """Six vehicles: three in the ego lane (y = -2, one stopped at x = -12), three in the other lane (y = -6)."""
    boxes = np.zeros((6, 7))
    boxes[:, 0] = [-52.0, -30.0, -12.0, -46.0, -25.0, 3.0]
    boxes[:, 1] = [-2.0, -2.0, -2.0, -6.0, -6.0, -6.0]
    boxes[:, 3] = [6.0, 7.0, 0.0, 8.0, 9.0, 5.0]
    boxes[:, 5], boxes[:, 6] = 4.5, 1.9
    boxes[1, 2], boxes[1, 4] = 0.05, 0.3
    return boxes


MAP = MapAPI.from_data(build_fixture_map(origin=(0.0, 0.0)))


def _cases() -> dict[str, list[Observation]]:
    api = MAP
    slow = np.array([[-5.0, -2.0, 0.0, 2.0, 0.0, 4.5, 2.0]])  # 2 m/s ahead in the ego lane
    return {
        "traffic": [_obs(api, -40.0, 7.0, boxes=_traffic())],
        "red": [_obs(api, -30.0, 8.0, red=True)],
        "sequence": [_obs(api, x, 9.0, y=-2.1, heading=0.01, boxes=slow) for x in (-45.0, -40.0, -20.0)],
    }


PINNED = {
    "traffic": [
        _Pinned(
            best=0,
            x=[
                3.200000000000003,
                5.650000000000006,
                7.350000000000001,
                8.684998993035759,
                10.016892119289984,
                11.323600319723134,
                12.602883181299802,
                13.86137055236727,
            ],
            y=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            heading=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            scores=[
                0.9157061510725427,
                0.5767925324026326,
                0.5831562232748215,
                0.5833242998847581,
                0.5833333333333334,
                0.9152835987092125,
                0.5763741416593156,
                0.582885049201815,
                0.5830570350164769,
                0.5830662808778189,
                0.9152777420959134,
                0.0,
                0.0,
                0.0,
                0.0,
            ],
        ),
    ],
    "red": [
        _Pinned(
            best=2,
            x=[
                3.700000000000003,
                6.668326420837772,
                9.0074862936643,
                10.802948321215077,
                12.1322488763454,
                13.078418662284484,
                13.726765015755845,
                14.15739527241913,
            ],
            y=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            heading=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            scores=[
                0.9917028054897484,
                0.9993712767932569,
                1.0,
                0.9998330552726533,
                0.9998051447546951,
                0.9911854180247378,
                0.9988221908018264,
                0.999449295728529,
                0.9992826953118571,
                0.9992548401274677,
                0.9911854180247378,
                0.9988221908018264,
                0.999449295728529,
                0.9992826953118571,
                0.9992548401274677,
            ],
        ),
    ],
    "sequence": [
        _Pinned(
            best=4,
            x=[
                4.40375421168154,
                8.828147861351413,
                13.220855495510166,
                17.488328149226707,
                21.540968527515375,
                25.30107520939973,
                28.713950571718918,
                31.750373088878536,
            ],
            y=[
                0.05596599011473683,
                0.011720578761160588,
                -0.03220796187487682,
                -0.07488411095982869,
                -0.11541186567687889,
                -0.1530141859147532,
                -0.18714407720857268,
                -0.2175093145614952,
            ],
            heading=[
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
            ],
            scores=[
                0.8395336590568947,
                0.912014431339458,
                0.9772404412230639,
                0.9975015843459487,
                1.0,
                0.8392486261143226,
                0.9116451149600739,
                0.9768320935351649,
                0.9970869210573078,
                0.999584805827419,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ],
        ),
        _Pinned(
            best=4,
            x=[
                4.37882127572386,
                8.67295647579229,
                12.820489663102284,
                16.732945907250794,
                20.33892425441703,
                23.589883256657533,
                26.4672977243286,
                28.977356138919596,
            ],
            y=[
                0.056215327785624734,
                0.013272544349282961,
                -0.028204170090182112,
                -0.06733003673591675,
                -0.10339102224844315,
                -0.13590169596719684,
                -0.16467679982043043,
                -0.1897782206859474,
            ],
            heading=[
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
            ],
            scores=[
                0.8613249507458448,
                0.9360880051487234,
                0.988812493606441,
                0.9989807296689871,
                1.0,
                0.8610157040699278,
                0.9356900402077747,
                0.9883803991760575,
                0.9985465283628354,
                0.9995657739057382,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ],
        ),
        _Pinned(
            best=0,
            x=[
                4.200789985083413,
                7.650617486520905,
                10.350482487645897,
                12.300384988458397,
                13.500324988958397,
                13.951849831258091,
                14.02662488635977,
                14.224939062185085,
            ],
            y=[
                0.0579957000381666,
                0.02349627503529164,
                -0.0035032749669583058,
                -0.023002949968583333,
                -0.03500274996958336,
                -0.03951814890688163,
                -0.040265924383913826,
                -0.04224913224953655,
            ],
            heading=[
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
                -0.009999999999999787,
            ],
            scores=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ),
    ],
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_pdm_closed_plan_is_pinned(case: str) -> None:
    planner = PDMClosedPlanner()
    for k, (observation, want) in enumerate(zip(_cases()[case], PINNED[case], strict=True)):
        poses = planner.plan(observation).poses
        scores = planner.last_scores["score"]
        assert int(np.argmax(scores)) == want.best, f"{case} call {k}"
        np.testing.assert_allclose(scores, want.scores, rtol=0.0, atol=1e-9, err_msg=f"{case} call {k}")
        np.testing.assert_allclose(poses[:, 0], want.x, rtol=0.0, atol=1e-9, err_msg=f"{case} call {k}")
        np.testing.assert_allclose(poses[:, 1], want.y, rtol=0.0, atol=1e-9, err_msg=f"{case} call {k}")
        np.testing.assert_allclose(poses[:, 2], want.heading, rtol=0.0, atol=1e-9, err_msg=f"{case} call {k}")


def test_route_cache_gives_the_uncached_centre_line() -> None:
    """Along lanes 11 -> 111 -> 21 (and on the other eastbound lane, whose route sibling order differs)."""
    cache = _RouteCache()
    observations = [_obs(MAP, x, 8.0, y=y) for x, y in ((-40.0, -2.0), (-35.0, -2.0), (-5.0, -2.0), (20.0, -2.0),
                                                       (-40.0, -6.0), (-39.0, -2.0))]  # fmt: skip
    for observation in observations:
        cached, plain = _route_context(observation, cache), _route_context(observation)
        np.testing.assert_array_equal(cached.path, plain.path)
        assert cached.route_lanes == plain.route_lanes and cached.speed_limit == plain.speed_limit
    assert 1 < len(cache.paths) < len(observations)  # reused on the same lane, rebuilt on another
