"""BEV-Warp: a functional, batched closed-loop environment in BEV space.

``env.reset(scenes, maps) -> state`` precomputes every episode's tensors (:mod:`bev_warp.episodes`);
``env.step(state, trajectories) -> (state, reward, done, info)`` is pure tensor math on ``env.device``:

1. the plans (``(B, P, 3)`` poses in the current rear-axle frame, ``interval_s`` apart) become global references;
2. the ego follows them for one replanning interval with the torch LQR tracker + kinematic bicycle at 0.1 s
   (the reference is re-sampled from the plan at every 0.1 s, as the vector closed loop does);
3. every log frame passed is recorded in the ego history and checked against the logged (non-reactive) agents
   and the map with nuPlan's rules (:func:`rewards.torch.closed_loop.step_checks`): at-fault collision,
   drivable area (0.3 m tolerance), TTC, filtered comfort over the recent history, route progress, and the
   deviation from the expert path (> 2 m or > 40 degrees terminates, RAD's rule; the path is extended straight
   past its ends);
4. the planner's next observation is the logged raster (or encoder features) of the current planning frame
   warped into the simulated ego frame (:func:`bev_warp.warp.warp_bev`), without re-rendering or re-encoding.

Episodes that are done stay frozen; an episode whose planner failed (``planner_failed``) is terminated and
reported with reason ``planner_failed`` while the rest of the batch goes on. :func:`summary` scores each
episode's history with nuPlan's closed-loop metrics and CLS (:func:`rewards.torch.closed_loop.episode_metrics`),
as the vector closed loop is scored by :mod:`rewards.nuplan_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any, Literal, cast

import torch

from bev_warp.episodes import EpisodeBatch, build_episodes, repeat_episodes
from bev_warp.warp import RasterGeometry, relative_pose, warp_bev
from rewards.nuplan_metrics import CLS_MULTIPLIERS, CLS_WEIGHTS
from rewards.torch.closed_loop import ClsRollout, deviation, episode_metrics, step_checks, step_comfortable
from rewards.torch.geometry import project
from rewards.torch.kinematics import DEFAULT_TRACKER, TrackerParameters, normalize_angle, track_and_propagate
from simulation.features import PLANNER_RASTER
from simulation.maps.protocol import MapProtocol
from simulation.render import RasterConfig
from simulation.types import AgentIndex, LogWindow, StateIndex

A, S = AgentIndex, StateIndex
KINEMATIC_DT = 0.1
SUB_REWARDS = ("collision", "drivable_area", "progress", "ttc", "comfort", "deviation")
#: nuPlan's closed-loop metrics of an episode and its CLS (``score``).
METRICS = (*CLS_MULTIPLIERS, *CLS_WEIGHTS, "score")


class TrajectoryError(ValueError):
    """Plans handed to :meth:`BEVWarpEnv.step` have the wrong shape, device, or contain NaN / inf."""


class DoneReason(IntEnum):
    """Why an episode ended (``info['reason']``)."""

    RUNNING = 0
    COLLISION = 1
    OFF_ROAD = 2
    DEVIATION = 3
    END_OF_LOG = 4
    PLANNER_FAILED = 5


@dataclass(frozen=True)
class EnvConfig:
    """BEV-Warp settings.

    Attributes:
        replan_interval_s: simulated time per ``step`` (a multiple of the log interval and of 0.1 s).
        plan_interval_s: time between the poses of the plans.
        observation: ``raster`` (warped rasters), ``features`` (warped encoder features) or ``none``.
        raster: planner raster layout (the encoder's input layout in ``features`` mode).
        max_deviation_m / max_heading_deviation_rad: termination thresholds against the expert path.
        terminate_on: the checks that end an episode (``collision``, ``drivable_area``, ``deviation``); empty to
            run every episode to the end of its log, as nuPlan's closed loop does.
        fill_value / warp_mode: value of the revealed regions and interpolation of the warp.
        weights: reward weights per sub-reward (progress in metres; penalties as 0/1 events).
    """

    replan_interval_s: float = 0.5
    plan_interval_s: float = 0.5
    observation: str = "raster"
    raster: RasterConfig = PLANNER_RASTER
    max_deviation_m: float = 2.0
    max_heading_deviation_rad: float = math.radians(40.0)
    terminate_on: tuple[str, ...] = ("collision", "drivable_area", "deviation")
    fill_value: float = 0.0
    warp_mode: Literal["bilinear", "nearest"] = "bilinear"
    grid_res: float = 0.25
    tracker: TrackerParameters = DEFAULT_TRACKER
    weights: tuple[tuple[str, float], ...] = (
        ("collision", 1.0),
        ("drivable_area", 1.0),
        ("progress", 0.1),
        ("ttc", 0.5),
        ("comfort", 0.1),
        ("deviation", 1.0),
    )


@dataclass(frozen=True)
class EnvState:
    """Batched state after ``step_index`` planning steps; every tensor is on the episodes' device.

    Attributes:
        episodes: precomputed episode tensors.
        ego: ``(B, 11)`` float64 simulated ego state.
        frame: ``(B,)`` long, current log frame (0 = the first simulated one).
        done: ``(B,)`` bool; reason: ``(B,)`` long :class:`DoneReason`.
        route_s0 / route_s: ``(B,)`` route arc length at the start / now.
        totals: per sub-reward ``(B,)`` episode sums; flags: per check ``(B,)`` bool (ever violated).
        history: ``(B, T, 11)`` simulated ego state at every log frame passed (the logged state beyond).
        collided: ``(B, N)`` tracks that have collided with the ego (nuPlan counts each once).
        final: nuPlan's closed-loop metrics ``(B,)`` of each episode, computed when it ends (NaN before).
    """

    episodes: EpisodeBatch
    ego: torch.Tensor
    frame: torch.Tensor
    step_index: int
    done: torch.Tensor
    reason: torch.Tensor
    route_s0: torch.Tensor
    route_s: torch.Tensor
    totals: dict[str, torch.Tensor]
    flags: dict[str, torch.Tensor]
    history: torch.Tensor
    collided: torch.Tensor
    final: dict[str, torch.Tensor]


class BEVWarpEnv:
    """Holds the configuration (and an optional frozen encoder); the state travels in :class:`EnvState`."""

    def __init__(
        self,
        config: EnvConfig | None = None,
        device: str | torch.device = "cpu",
        encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.config = config or EnvConfig()
        self.device = torch.device(device)
        self.encoder = encoder
        if self.config.observation not in ("raster", "features", "none"):
            raise ValueError(f"EnvConfig.observation must be raster, features or none, got {self.config.observation}")
        if self.config.observation == "features" and encoder is None:
            raise ValueError("EnvConfig.observation='features' needs an encoder")
        ratio = self.config.replan_interval_s / KINEMATIC_DT
        if ratio < 1 - 1e-9 or abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f"replan interval {self.config.replan_interval_s} s is not a multiple of 0.1 s")
        self.substeps = int(round(ratio))
        in_ch = getattr(encoder, "in_channels", None)
        if in_ch is not None and in_ch != len(self.config.raster.channels):
            raise ValueError(
                f"encoder expects {in_ch} raster channels, the raster layout has {len(self.config.raster.channels)}"
            )

    # ------------------------------------------------------------------------------------------------

    def reset(self, scenes: Sequence[LogWindow], maps: Sequence[MapProtocol] | MapProtocol) -> EnvState:
        """Initial state of a batch of scenes (``maps``: one MapAPI per scene, or one for all)."""
        map_list: list[MapProtocol] = (
            list(maps) if isinstance(maps, (list, tuple)) else [cast(MapProtocol, maps)] * len(scenes)
        )
        cfg = self.config
        raster = None if cfg.observation == "none" else cfg.raster
        enc = self.encoder if cfg.observation == "features" else None
        ep = build_episodes(scenes, map_list, cfg.replan_interval_s, raster, self.device, enc, cfg.grid_res)
        ego = ep.ego[:, 0].clone()
        s0, _, _ = project(ego[:, :2], ep.route)
        b = ep.batch_size
        zeros = torch.zeros(b, dtype=torch.float64, device=self.device)
        false = torch.zeros(b, dtype=torch.bool, device=self.device)
        return EnvState(
            episodes=ep,
            ego=ego,
            frame=torch.zeros(b, dtype=torch.long, device=self.device),
            step_index=0,
            done=false.clone(),
            reason=torch.zeros(b, dtype=torch.long, device=self.device),
            route_s0=s0,
            route_s=s0.clone(),
            totals={k: zeros.clone() for k in SUB_REWARDS},
            flags={k: false.clone() for k in ("collision", "drivable_area", "ttc", "comfort", "deviation")},
            history=ep.ego.clone(),
            collided=torch.zeros(ep.types.shape, dtype=torch.bool, device=self.device),
            final={k: torch.full((b,), torch.nan, dtype=torch.float64, device=self.device) for k in METRICS},
        )

    def repeat_state(self, state: EnvState, repeats: int) -> EnvState:
        """:func:`repeat_state` (the environment's configuration plays no part)."""
        return repeat_state(state, repeats)

    def observe(self, state: EnvState) -> torch.Tensor:
        """``(B, C, H, W)`` logged observations of the current planning frame warped into the simulated frames."""
        obs = state.episodes.observations
        if obs is None:
            raise ValueError("this environment was built with observation='none'")
        b = state.episodes.batch_size
        k = min(state.step_index, obs.shape[1] - 1)
        rows = torch.arange(b, device=obs.device)
        source = state.episodes.observation_rows
        logged_obs = obs[:, k] if source is None else obs[source, k]  # (B, C, H, W)
        logged = state.episodes.ego[rows, state.frame, :3]
        stride = self.config.raster.height_px // obs.shape[-2]
        geom = RasterGeometry.from_raster_config(self.config.raster, stride)
        dev = relative_pose(logged, state.ego[:, :3])
        warped = warp_bev(logged_obs.float(), dev, geom, self.config.fill_value, self.config.warp_mode)
        if stride == 1 and "ego" in self.config.raster.channels:  # the ego footprint is drawn, not warped
            c = self.config.raster.channels.index("ego")
            warped[:, c] = (obs[:, 0, c] if source is None else obs[source, 0, c]).float()
        return warped

    def observe_agents(self, state: EnvState) -> tuple[torch.Tensor, torch.Tensor]:
        """Logged agents of the current frame in the simulated ego frames: boxes ``(B, N, 7)`` (pose and velocity
        rotated into the frame, sizes kept) and validity ``(B, N)``."""
        ep = state.episodes
        rows = torch.arange(ep.batch_size, device=state.ego.device)
        boxes, valid = ep.boxes[rows, state.frame], ep.valid[rows, state.frame]
        ego = state.ego[:, None]
        c, s = torch.cos(ego[..., 2]), torch.sin(ego[..., 2])
        dx, dy = boxes[..., A.X] - ego[..., 0], boxes[..., A.Y] - ego[..., 1]
        local = boxes.clone()
        local[..., A.X], local[..., A.Y] = c * dx + s * dy, -s * dx + c * dy
        local[..., A.HEADING] = normalize_angle(boxes[..., A.HEADING] - ego[..., 2])
        local[..., A.VX] = c * boxes[..., A.VX] + s * boxes[..., A.VY]
        local[..., A.VY] = -s * boxes[..., A.VX] + c * boxes[..., A.VY]
        return local, valid

    # ------------------------------------------------------------------------------------------------

    def _check(self, state: EnvState, trajectories: torch.Tensor, failed: torch.Tensor) -> torch.Tensor:
        """Shape, type and device checked now; ``(B,)`` bool of running episodes with non-finite plans returned,
        for :meth:`_finish` to raise on (its one host sync serves both)."""
        b = state.episodes.batch_size
        if not isinstance(trajectories, torch.Tensor):
            raise TrajectoryError(f"trajectories must be a torch tensor (B, P, 3), got {type(trajectories).__name__}")
        if trajectories.dim() != 3 or trajectories.shape[0] != b or trajectories.shape[2] != 3:
            raise TrajectoryError(f"trajectories must be ({b}, P, 3), got {tuple(trajectories.shape)}")
        if trajectories.device != state.ego.device:
            raise TrajectoryError(f"trajectories on {trajectories.device}, environment state on {state.ego.device}")
        return ~torch.isfinite(trajectories).all(-1).all(-1) & ~failed & ~state.done

    def step(
        self,
        state: EnvState,
        trajectories: torch.Tensor,
        planner_failed: torch.Tensor | None = None,
        start_poses: torch.Tensor | None = None,
    ) -> tuple[EnvState, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Advance every running episode by one replanning interval following ``trajectories`` ``(B, P, 3)``.

        ``start_poses`` ``(B, 3)``: the global pose each plan's reference starts from at t = 0, for plans that
        start off the ego (IDM: its projection on the path; log replay: the logged pose), as the vector closed
        loop reads a trajectory's ``start_pose``; NaN rows (and ``None``) start at the simulated pose.

        Returns:
            state, reward ``(B,)`` float64, done ``(B,)`` bool and info: ``rewards`` (per sub-reward ``(B,)``),
            ``reason`` ``(B,)`` (:class:`DoneReason`), ``episode`` (per-episode summary, see :meth:`summary`).
        """
        ep, dev = state.episodes, state.ego.device
        failed = torch.zeros_like(state.done) if planner_failed is None else planner_failed.to(dev).bool()
        bad = self._check(state, trajectories, failed)
        active = ~state.done & ~failed
        plan = torch.where(  # bad plans are zeroed too: the step is thrown away when _finish raises on them
            (active & ~bad)[:, None, None],
            trajectories.to(torch.float64),
            torch.zeros_like(trajectories, dtype=torch.float64),
        )
        times, poses = _plan_to_global(plan, state.ego, self.config.plan_interval_s, start_poses)
        end = plan.shape[1] * self.config.plan_interval_s
        subs_per_frame = max(1, int(round(ep.log_dt / KINEMATIC_DT)))
        ego, states = state.ego, []
        for j in range(self.substeps):
            query = j * KINEMATIC_DT + torch.arange(41, device=dev, dtype=torch.float64) * KINEMATIC_DT
            ref = _sample(times, poses, query, end)
            nxt = track_and_propagate(ego, ref, KINEMATIC_DT, steps=1, params=self.config.tracker)[:, 1]
            ego = torch.where(active[:, None], nxt, ego)
            states.append(ego)
        checks = self._frames(state, states[subs_per_frame - 1 :: subs_per_frame], active)
        return self._finish(state, ego, active, failed, checks, bad)

    def _frames(
        self, state: EnvState, frame_states: list[torch.Tensor], active: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The ``F`` log frames passed in this step: recorded in the history and checked with nuPlan's rules
        (:func:`rewards.torch.closed_loop.step_checks`, filtered comfort over the recent history), plus the
        deviation check; flags ``(B,)``, the updated history / collided tracks, and the last frame passed."""
        ep, cfg = state.episodes, self.config
        ego = torch.stack(frame_states, 1)  # (B, F, 11)
        offsets = torch.arange(1, ego.shape[1] + 1, device=active.device)
        frames = torch.minimum(state.frame[:, None] + offsets, (ep.num_frames - 1)[:, None])  # (B, F)
        rows = torch.arange(ep.batch_size, device=active.device)[:, None]
        boxes, valid = ep.boxes[rows, frames], ep.valid[rows, frames]  # (B, F, N, 7), (B, F, N)
        checks = step_checks(ep.world, ego, boxes, valid & active[:, None, None], ep.types, state.collided)
        history = state.history.clone()
        keep = active[:, None, None]
        history[rows, frames] = torch.where(keep, ego, history[rows, frames])
        last = frames[:, -1]
        out = {k: checks[k] & active for k in ("collision", "drivable_area", "ttc")}
        out["comfort"] = ~step_comfortable(history, torch.where(active, last, state.frame), ep.log_dt) & active
        dev = deviation(ego, ep.ego[:, :, :3], cfg.max_deviation_m, cfg.max_heading_deviation_rad).any(-1)
        out["deviation"] = dev & active
        out["frame"] = last
        out["history"] = history
        out["collided"] = torch.where(active[:, None], checks["collided"], state.collided)
        return out

    def _ends(
        self,
        state: EnvState,
        active: torch.Tensor,
        failed: torch.Tensor,
        checks: dict[str, torch.Tensor],
        frame: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The end reasons ``(B,)`` after this step and the episodes ``(B,)`` that end in it (first reason wins)."""
        reason = state.reason
        newly = torch.zeros_like(active)
        ends = self.config.terminate_on
        for code, cond in (
            (DoneReason.PLANNER_FAILED, failed & ~state.done),
            (DoneReason.COLLISION, checks["collision"] & ("collision" in ends)),
            (DoneReason.OFF_ROAD, checks["drivable_area"] & ("drivable_area" in ends)),
            (DoneReason.DEVIATION, checks["deviation"] & ("deviation" in ends)),
            (DoneReason.END_OF_LOG, active & (frame >= state.episodes.num_frames - 1)),
        ):
            set_now = cond & ~newly & ~state.done
            reason = torch.where(set_now, int(code), reason)  # not reason[set_now] = ...: a mask index syncs
            newly = newly | set_now
        return reason, newly

    def _finish(
        self,
        state: EnvState,
        ego: torch.Tensor,
        active: torch.Tensor,
        failed: torch.Tensor,
        checks: dict[str, torch.Tensor],
        bad: torch.Tensor,
    ) -> tuple[EnvState, torch.Tensor, torch.Tensor, dict[str, Any]]:
        ep = state.episodes
        frame = torch.where(active, checks["frame"], state.frame)
        s, _, _ = project(ego[:, :2], ep.route)
        s = torch.where(active, s, state.route_s)
        sub = {
            "collision": -checks["collision"].double(),
            "drivable_area": -checks["drivable_area"].double(),
            "progress": s - state.route_s,
            "ttc": -checks["ttc"].double(),
            "comfort": -checks["comfort"].double(),
            "deviation": -checks["deviation"].double(),
        }
        weights = dict(self.config.weights)
        reward = sum(weights.get(k, 0.0) * v for k, v in sub.items())
        reason, newly = self._ends(state, active, failed, checks, frame)
        final = state.final
        any_bad, any_newly = torch.stack([bad.any(), newly.any()]).tolist()  # the step's one host sync
        if any_bad:
            ids = [ep.tokens[i] for i in torch.nonzero(bad).flatten().tolist()[:5]]
            raise TrajectoryError(
                f"trajectories of running episodes {ids} contain NaN or inf (flag them planner_failed)"
            )
        if any_newly:  # score each episode's history once, when it ends
            rows = torch.nonzero(newly).flatten()
            done_now = replace(state, history=checks["history"], frame=frame)
            # no episode has passed more frames than the steps so far allow: gather only those
            passed = min(ep.ego.shape[1], (state.step_index + 1) * ep.frames_per_plan + 1)
            metrics = episode_metrics(ep.world.select(rows), rollout_of(done_now, passed).select(rows))
            final = {k: v.index_put((rows,), metrics[k]) for k, v in final.items()}
        new = replace(
            state,
            ego=ego,
            frame=frame,
            step_index=state.step_index + 1,
            done=state.done | newly,
            reason=reason,
            route_s=s,
            totals={k: state.totals[k] + sub[k] for k in SUB_REWARDS},
            flags={k: v | checks[k] for k, v in state.flags.items()},
            history=checks["history"],
            collided=checks["collided"],
            final=final,
        )
        info = {"rewards": sub, "reason": reason, "episode": summary(new, new.final)}
        return new, torch.as_tensor(reward, dtype=torch.float64, device=ego.device), new.done.clone(), info


def repeat_state(state: EnvState, repeats: int) -> EnvState:
    """``repeats`` branches of every episode of ``state``, for group rollouts (``B * repeats`` episodes).

    Episode ``i * repeats + g`` is branch ``g`` of episode ``i``: each scene's copies are contiguous, so the
    result equals ``env.reset([s for s in scenes for _ in range(repeats)], maps)`` when ``state`` is a reset, and
    stepping it gives what stepping that reset gives. Works on any state (branching mid-episode); the per-episode
    tensors are gathered, the logged observations are shared (:func:`bev_warp.episodes.repeat_episodes`).
    """
    rows = torch.arange(state.episodes.batch_size, device=state.ego.device).repeat_interleave(repeats)
    return EnvState(
        episodes=repeat_episodes(state.episodes, repeats),
        ego=state.ego[rows],
        frame=state.frame[rows],
        step_index=state.step_index,
        done=state.done[rows],
        reason=state.reason[rows],
        route_s0=state.route_s0[rows],
        route_s=state.route_s[rows],
        totals={k: v[rows] for k, v in state.totals.items()},
        flags={k: v[rows] for k, v in state.flags.items()},
        history=state.history[rows],
        collided=state.collided[rows],
        final={k: v[rows] for k, v in state.final.items()},
    )


def rollout_of(state: EnvState, frames: int | None = None) -> ClsRollout:
    """The recorded history of each episode as nuPlan's metrics read it: the frames simulated so far, without the
    log's last frame (the vector closed loop records one sample per iteration, the final state is not one).

    ``frames``: keep only the first ``frames`` padded frames (views), at least every episode's length."""
    ep = state.episodes
    t = slice(None) if frames is None else slice(0, frames)
    return ClsRollout(
        ego=state.history[:, t],
        timestamps_us=ep.timestamps_us[:, t],
        boxes=ep.boxes[:, t],
        valid=ep.valid[:, t],
        types=ep.types,
        length=torch.minimum(state.frame + 1, (ep.num_frames - 1).clamp_min(1)),
    )


def summary(state: EnvState, metrics: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per-episode ``(B,)`` results so far: nuPlan's closed-loop metrics of the history and their CLS ``score``
    (:func:`rewards.torch.closed_loop.episode_metrics`, names as :mod:`rewards.nuplan_metrics`), plus BEV-Warp's
    own flags (``collision``, ``off_road``, ``deviation``, ``ttc_ok``, ``comfortable``: any step violated),
    route progress in metres, the step count and the end reason.

    ``metrics``: the CLS metrics to report instead of scoring every history now (``step`` passes
    ``state.final``: each episode's metrics from when it ended, NaN while it runs)."""
    if metrics is None:
        metrics = episode_metrics(state.episodes.world, rollout_of(state))
    flags = state.flags
    progress = state.route_s - state.route_s0
    return {
        **metrics,
        "collision": metrics["no_ego_at_fault_collisions"] < 1.0,
        "off_road": flags["drivable_area"],
        "deviation": flags["deviation"],
        "progress_m": progress,
        "progress_ratio": metrics["ego_progress_along_expert_route"],
        "ttc_ok": ~flags["ttc"],
        "comfortable": ~flags["comfort"],
        "steps": torch.full_like(progress, float(state.step_index)),
        "reason": state.reason,
    }


def _plan_to_global(
    plan: torch.Tensor, ego: torch.Tensor, interval: float, start: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Times ``(P + 1,)`` and global poses ``(B, P + 1, 3)`` of local plans ``(B, P, 3)``, the current pose first
    (or ``start`` ``(B, 3)`` global where it is finite)."""
    c, s = torch.cos(ego[:, None, 2]), torch.sin(ego[:, None, 2])
    x = ego[:, None, 0] + c * plan[..., 0] - s * plan[..., 1]
    y = ego[:, None, 1] + s * plan[..., 0] + c * plan[..., 1]
    h = ego[:, None, 2] + plan[..., 2]
    first = ego[:, :3]
    if start is not None:
        start = start.to(device=ego.device, dtype=ego.dtype)
        first = torch.where(torch.isfinite(start).all(-1, keepdim=True), start, first)
    poses = torch.cat([first[:, None], torch.stack([x, y, h], -1)], 1)
    times = torch.arange(plan.shape[1] + 1, dtype=torch.float64, device=plan.device) * interval
    return times, poses


def _sample(times: torch.Tensor, poses: torch.Tensor, query: torch.Tensor, end: float) -> torch.Tensor:
    """Poses ``(B, Q, 3)`` at ``query`` ``(Q,)`` (linear; unwrapped heading; clamped to the ends, 0 and ``end`` =
    ``times[-1]``, given so as not to read it from the device)."""
    q = query.clamp(0.0, end)
    idx = torch.searchsorted(times, q, right=True).clamp(1, len(times) - 1)
    t0, t1 = times[idx - 1], times[idx]
    w = ((q - t0) / (t1 - t0))[None, :, None]
    heading = poses[..., 2]
    unwrapped = torch.cat([heading[:, :1], heading[:, :1] + torch.cumsum(normalize_angle(heading.diff(dim=1)), 1)], 1)
    p = torch.cat([poses[..., :2], unwrapped[..., None]], -1)
    out = p[:, idx - 1] * (1 - w) + p[:, idx] * w
    return torch.cat([out[..., :2], normalize_angle(out[..., 2:])], -1)


def expert_trajectories(state: EnvState, num_poses: int = 8, interval_s: float = 0.5) -> torch.Tensor:
    """``(B, num_poses, 3)`` logged future poses (clamped to each log's end) in the simulated ego frames."""
    ep = state.episodes
    step = max(1, int(round(interval_s / ep.log_dt)))
    idx = state.frame[:, None] + step * torch.arange(1, num_poses + 1, device=state.frame.device)
    last = (ep.num_frames - 1)[:, None]
    beyond = (idx - last).clamp_min(0).to(torch.float64) * ep.log_dt  # past the log's end: constant velocity
    idx = torch.minimum(idx, last)
    poses = torch.gather(ep.ego[..., :3], 1, idx[..., None].expand(-1, -1, 3)).clone()
    end = torch.gather(ep.ego, 1, last[..., None].expand(-1, -1, ep.ego.shape[-1]))[:, 0]
    poses[..., 0] += beyond * end[:, None, S.VX] * torch.cos(end[:, None, S.HEADING])
    poses[..., 1] += beyond * end[:, None, S.VX] * torch.sin(end[:, None, S.HEADING])
    d = poses[..., :2] - state.ego[:, None, :2]
    c, s = torch.cos(state.ego[:, None, 2]), torch.sin(state.ego[:, None, 2])
    x, y = c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]
    return torch.stack([x, y, normalize_angle(poses[..., 2] - state.ego[:, None, 2])], -1)
