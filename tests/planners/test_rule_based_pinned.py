"""PDM-Closed's plans and proposal scores pinned on the fixture map (local origin, as in test_rule_based.py).

The numbers were computed with the planner before its speed-ups (compiled IDM rollouts, route and centre-line
cache, agent polygons built once); any change of behaviour shows here as a different chosen proposal or plan.
The proposal scores were re-pinned when the proposals' tracker took NAVSIM's jerk regulariser (plans unchanged).
Cases: traffic in both eastbound lanes, a red light ahead, and three calls of one planner (the caches reused).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from fixture_observations import ego_state, fixture_observation

from planners.idm import PDM_IDM_PARAMETERS, idm_rollout
from planners.rule_based import PDMClosedPlanner, _route_context, _RouteCache
from simulation.agents import idm_acceleration
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
            best=5,
            x=[
                3.200000000000003,
                5.649999999999999,
                7.367093888818189,
                8.749665344422016,
                10.083629307778317,
                11.41120466050494,
                12.740271805582879,
                14.07172978871401,
            ],
            y=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            heading=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            scores=[
                0.9010972935685838,
                0.5827577778963472,
                0.0,
                0.0,
                0.0,
                0.9014638755760768,
                0.5833333333333334,
                0.0,
                0.0,
                0.0,
                0.9010972935685838,
                0.0,
                0.0,
                0.0,
                0.0,
            ],
        ),
    ],
    "red": [
        _Pinned(
            best=8,
            x=[
                3.700000000000003,
                6.664316386509682,
                8.99287224824348,
                10.782461306827983,
                12.11237644783889,
                13.062533669633886,
                13.71540609694651,
                14.149761249532567,
            ],
            y=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            heading=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            scores=[
                0.9887382933744485,
                0.997774500189086,
                0.9993464184963363,
                0.9995524350158278,
                0.9995283509723968,
                0.9891507968323033,
                0.9982174959757083,
                0.9997936126471823,
                1.0,
                0.9999758099093438,
                0.9887382933744485,
                0.997774500189086,
                0.9993464184963363,
                0.9995524350158278,
                0.9995283509723968,
            ],
        ),
    ],
    "sequence": [
        _Pinned(
            best=9,
            x=[
                4.501268250498154,
                8.963118143561763,
                13.319848918890496,
                17.505967324457774,
                21.46053837624639,
                25.131250812966343,
                28.478795257787112,
                31.480694825797677,
            ],
            y=[
                0.05499081722059084,
                0.010370830947163331,
                -0.03319792910780786,
                -0.07506050859209967,
                -0.11460753735306617,
                -0.15131588534002277,
                -0.18479244568101444,
                -0.21481244203433636,
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
                0.843424192358956,
                0.9153646358066507,
                0.9714183769340797,
                0.9926452536570561,
                0.999581821870771,
                0.843698580915381,
                0.9157437541336062,
                0.9718300808909369,
                0.9930624941650992,
                1.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ],
        ),
        _Pinned(
            best=9,
            x=[
                4.458174111523786,
                8.770096231331774,
                12.874663050215485,
                16.716122883174616,
                20.249228766406,
                23.443398785773304,
                26.285874177398256,
                28.782825774201587,
            ],
            y=[
                0.055421772975622126,
                0.012301114412674369,
                -0.028745922019832143,
                -0.06716180088725598,
                -0.10249403746864086,
                -0.13443680242824435,
                -0.16286250387419227,
                -0.18783285219271856,
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
                0.8645125259624131,
                0.9361835993238247,
                0.9819872872882148,
                0.9955826392953274,
                0.9995617300241628,
                0.8648087879113154,
                0.9365877783879076,
                0.9824215222181074,
                0.9960205121224849,
                1.0,
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
                4.190790151749247,
                7.640617653186738,
                10.340482654311737,
                12.29038515512423,
                13.49032515562423,
                13.941812320545338,
                14.004339965536563,
                14.180160283375015,
            ],
            y=[
                -0.9419543003784987,
                -0.9764537253813736,
                -1.0034532753836236,
                -1.0229529503852486,
                -1.0349527503862486,
                -1.0394677725372015,
                -1.0400930698304958,
                -1.0418513316179971,
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
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ],
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


def _array_rollout(speed: np.ndarray, target: np.ndarray, gap: np.ndarray, lead: np.ndarray, steps: int) -> np.ndarray:
    """The rollout with simulation.agents.idm_acceleration on arrays (forward Euler, speed floored at 0)."""
    params = PDM_IDM_PARAMETERS
    v, progress, out = speed.copy(), np.zeros(len(speed)), np.zeros((len(speed), steps + 1))
    for k in range(steps):
        accel = idm_acceleration(v, target, gap + lead * k * 0.1 - progress, lead, params)
        progress = progress + v * 0.1
        v = np.maximum(v + accel * 0.1, 0.0)
        out[:, k + 1] = progress
    return out


def test_compiled_idm_rollout_matches_the_array_law() -> None:
    rng = np.random.default_rng(3)
    n = 64
    speed = rng.uniform(0.0, 20.0, n)
    target = np.concatenate([rng.uniform(0.0, 15.0, n - 2), [0.0, 1e-4]])  # also below the 1e-3 floor
    gap = np.where(rng.random(n) < 0.2, np.inf, rng.uniform(-2.0, 80.0, n))  # no leader, or behind / in front
    lead = rng.uniform(0.0, 12.0, n)
    got = idm_rollout(speed, target, gap, lead, 4.0, 0.1, PDM_IDM_PARAMETERS)
    np.testing.assert_allclose(got, _array_rollout(speed, target, gap, lead, 40), rtol=0.0, atol=1e-12)
    assert got.shape == (n, 41) and np.all(np.diff(got, axis=1) >= 0.0)


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
