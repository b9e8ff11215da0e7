"""Policies that play the real game. Each is built inside a rollout worker from a picklable spec,
``reset(seed)`` before every episode (so an episode depends only on its seed) and maps an
observation to an action: a brownian random walk, a smooth walk that drives (``driving``), a
scripted CarRacing driver with deliberate excursions off the road (``scripted``: it reads the
env's state, so it has a ``bind(env)`` that the rollout loop calls), and a controller acting on
[z, h] through a world model (V encodes each frame, M's LSTM carries h forward with the chosen
action)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces

from agents.controller import BatchedController, ControllerConfig, init_params
from worldlab.sequence_m import state_h
from worldlab.world_model import WorldModel


class Policy(Protocol):
    """``reset(seed)`` before each episode, then ``act(obs)`` per step. A policy that needs the env
    itself (its privileged state) also has ``bind(env)``, which ``agents.rollout.run_episode`` calls
    before ``reset``; the others have none."""

    def reset(self, seed: int) -> None: ...

    def act(self, obs: np.ndarray) -> Any: ...


@dataclass
class PolicySpec:
    """Which policy a worker builds: ``name`` plus its keyword arguments (all picklable)."""

    name: str = "brownian"
    kwargs: dict[str, Any] = field(default_factory=dict)


POLICIES = ("brownian", "holding", "driving", "scripted", "random_controller", "controller")
"""every policy ``make_policy`` builds; all but ``controller`` (which needs an evolved controller)
can collect a first round (``collect.policy``, ``scripts/collect.py --policy``)."""


class BrownianPolicy:
    """Random actions that drift: a_{t+1} = clip(a_t + sqrt(dt) * sigma * N(0, 1)) per dimension.

    Smoother than i.i.d. uniform actions, so the car actually drives and turns (a common
    alternative to the paper's random controller). Box spaces only; for a Discrete space the
    continuous walk on [-1, 1] picks an action by equal-width bins.

    Args:
        action_space: the env's action space.
        dt: time step of the walk (1/50 by default: about one second to cross the range).
        sigma: scale of the walk, in units of each dimension's range.
    """

    def __init__(self, action_space: spaces.Space, dt: float = 1.0 / 50.0, sigma: float = 4.0) -> None:
        self.space = action_space
        if isinstance(action_space, spaces.Box):
            self.low = np.asarray(action_space.low, dtype=np.float64)
            self.high = np.asarray(action_space.high, dtype=np.float64)
        elif isinstance(action_space, spaces.Discrete):
            self.low, self.high = np.array([-1.0]), np.array([1.0])
        else:
            raise ValueError(f"brownian policy needs a Box or Discrete action space, got {action_space}")
        self.scale = sigma * np.sqrt(dt) * (self.high - self.low) / 2.0
        self.rng = np.random.default_rng(0)
        self.a = (self.low + self.high) / 2.0

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.a = self.rng.uniform(self.low, self.high)

    def act(self, obs: np.ndarray) -> Any:
        self.a = np.clip(self.a + self.scale * self.rng.standard_normal(self.a.shape), self.low, self.high)
        return self._action()

    def _action(self) -> Any:
        """The walk's position as an action of the space (a Discrete space's by equal-width bins)."""
        if isinstance(self.space, spaces.Discrete):
            return int(np.clip((self.a[0] + 1.0) / 2.0 * self.space.n, 0, self.space.n - 1))
        return self.a.astype(self.space.dtype)


class HoldingPolicy(BrownianPolicy):
    """The brownian walk with long holds: each step, with probability ``hold_prob``, an action drawn
    uniformly from the space is held for ``hold_min`` .. ``hold_max`` steps, then the walk goes on
    from it.

    The brownian alone never holds an action long (on Doom its left / stay / right changes every
    few steps), so M never sees where a held action leads; the simplest controllers C finds are
    just that (a constant strafe: session 30's seed 0 pressed right on every step, scored ~1,900 in
    the dream and 177 in the game). With holds the data shows M strafing into a wall, or standing
    still, until the fireballs end the episode. ``hold_prob`` 0.005 and holds of 30-300 steps put
    about 40% of the steps in a hold.
    """

    def __init__(self, action_space: spaces.Space, dt: float = 1.0 / 50.0, sigma: float = 4.0,
                 hold_prob: float = 0.005, hold_min: int = 30, hold_max: int = 300) -> None:
        super().__init__(action_space, dt, sigma)
        if not 0.0 <= hold_prob <= 1.0 or not 1 <= hold_min <= hold_max:
            raise ValueError(f"holding policy: need 0 <= hold_prob <= 1 and 1 <= hold_min <= hold_max, got "
                             f"{hold_prob}, {hold_min}, {hold_max}")
        self.hold_prob, self.hold_min, self.hold_max = float(hold_prob), int(hold_min), int(hold_max)
        self.hold_left = 0

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.hold_left = 0

    def act(self, obs: np.ndarray) -> Any:
        if self.hold_left == 0 and self.rng.random() < self.hold_prob:
            self.hold_left = int(self.rng.integers(self.hold_min, self.hold_max + 1))
            self.a = self.rng.uniform(self.low, self.high)
        if self.hold_left > 0:
            self.hold_left -= 1
            return self._action()
        return super().act(obs)


def _ou_step(x: np.ndarray, mean: np.ndarray, std: np.ndarray, decay: float, rng: np.random.Generator
             ) -> np.ndarray:
    """One exact step of an Ornstein-Uhlenbeck process with stationary ``mean`` and ``std`` whose
    correlation decays by ``decay`` (= exp(-dt / tau)) per step."""
    return mean + (x - mean) * decay + std * np.sqrt(1.0 - decay**2) * rng.standard_normal(np.shape(x))


def _is_car_layout(low: np.ndarray, high: np.ndarray) -> bool:
    """CarRacing's action layout: (steer in [-1, 1], gas in [0, 1], brake in [0, 1])."""
    return low.shape == (3,) and np.allclose(low, [-1, 0, 0]) and np.allclose(high, [1, 1, 1])


class DrivingPolicy:
    """A random walk that drives: smooth steering, gas mostly on, brief rare braking.

    On CarRacing's layout ``(steer, gas, brake)``:

    - steering is an Ornstein-Uhlenbeck walk around 0 (stationary std ``steer_std`` of the
      half-range, correlation time ``steer_tau`` seconds): it holds a turn for a while, then
      another, without the brownian's jitter;
    - gas is an OU walk around ``gas`` (std ``gas_std``, ``gas_tau`` seconds), clipped to [0, 1];
    - brake is 0 except in brief bursts: each step starts one with probability ``brake_prob``,
      lasting 2 .. ``brake_steps`` steps at a strength drawn in [0.3, 1] (gas released meanwhile);
    - the steering is nudged toward the road it sees: ``road_seek`` times where the grey road
      pixels lie ahead of the car in the frame (-1 far left .. 1 far right; nothing without road
      in sight). It reads only the observation, as a controller does; ``road_seek=0`` is the
      blind walk, which leaves the road within seconds and stays on the grass.

    The brownian (:class:`BrownianPolicy`) random-walks the brake as much as the gas, so its car
    creeps; this one reaches speed, follows the road for a while, turns sharply, leaves it and
    comes back, as a controller will.

    Any other Box space (Doom's one output in [-1, 1]) gets the smooth walk only: every dimension an
    OU walk around the middle of its range (std ``steer_std`` of the half-range, ``steer_tau``).
    Discrete spaces are refused (use ``brownian``).

    Args:
        action_space: the env's action space (a Box).
        dt: seconds per step (CarRacing runs at 50 frames per second).
        steer_std, steer_tau: the steering walk's spread (fraction of the half-range) and
            correlation time (s).
        gas, gas_std, gas_tau: the gas walk's mean, spread and correlation time (s).
        brake_prob: chance per step that a brake burst starts.
        brake_steps: the longest burst (steps).
        road_seek: steering toward the road seen in the frame (CarRacing only; 0: blind).
    """

    def __init__(self, action_space: spaces.Space, dt: float = 1.0 / 50.0, steer_std: float = 0.3,
                 steer_tau: float = 0.5, gas: float = 0.5, gas_std: float = 0.25, gas_tau: float = 1.0,
                 brake_prob: float = 0.01, brake_steps: int = 10, road_seek: float = 2.0) -> None:
        if not isinstance(action_space, spaces.Box):
            raise ValueError(f"the driving policy needs a Box action space, got {action_space}; use brownian")
        self.space = action_space
        self.low = np.asarray(action_space.low, dtype=np.float64)
        self.high = np.asarray(action_space.high, dtype=np.float64)
        self.car = _is_car_layout(self.low, self.high)
        self.mid, self.half = (self.low + self.high) / 2.0, (self.high - self.low) / 2.0
        self.steer_std, self.steer_decay = float(steer_std), float(np.exp(-dt / steer_tau))
        self.gas, self.gas_std, self.gas_decay = float(gas), float(gas_std), float(np.exp(-dt / gas_tau))
        self.brake_prob, self.brake_steps = float(brake_prob), max(2, int(brake_steps))
        self.road_seek = float(road_seek)
        self.rng = np.random.default_rng(0)
        self.walk = np.zeros(1 if self.car else self.low.shape[0])  # steering (car) or every dimension
        self.g, self.brake_left, self.brake = self.gas, 0, 0.0

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.walk = self.steer_std * self.rng.standard_normal(self.walk.shape)
        self.g, self.brake_left, self.brake = self.gas, 0, 0.0

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.walk = _ou_step(self.walk, 0.0, self.steer_std, self.steer_decay, self.rng)
        if not self.car:
            return np.clip(self.mid + self.half * self.walk, self.low, self.high).astype(self.space.dtype)
        self.g = _ou_step(self.g, self.gas, self.gas_std, self.gas_decay, self.rng)
        seek = self.road_seek * _road_offset(obs) if self.road_seek else 0.0
        if self.brake_left == 0 and self.rng.random() < self.brake_prob:
            self.brake_left = int(self.rng.integers(2, self.brake_steps + 1))
            self.brake = float(self.rng.uniform(0.3, 1.0))
        braking = self.brake_left > 0
        self.brake_left -= braking
        a = np.array([self.walk[0] + seek, 0.0 if braking else self.g, self.brake if braking else 0.0])
        return np.clip(a, self.low, self.high).astype(self.space.dtype)


def _road_offset(obs: np.ndarray) -> float:
    """Where the road lies ahead of the car in a CarRacing frame (the lab's 64x64 crop: the car near
    the bottom middle, facing up): the mean column of the grey road pixels in the rows ahead, in
    [-1, 1] (> 0: right of the car); 0 when no road is in sight or the frame is not a car's."""
    if np.ndim(obs) != 3 or obs.shape[-1] != 3:
        return 0.0
    h, w = obs.shape[:2]
    band = obs[int(0.3 * h):int(0.7 * h)].astype(np.int16)
    r, g, b = band[..., 0], band[..., 1], band[..., 2]
    road = (np.abs(r - g) < 15) & (np.abs(g - b) < 15) & (r > 60) & (g < 160)
    cols = np.nonzero(road)[1]
    if cols.size < 0.02 * road.size:
        return 0.0
    return float(np.clip((cols.mean() - (w - 1) / 2.0) / (w / 2.0), -1.0, 1.0))


EXCURSIONS = ("grass", "spin", "brake")
"""the scripted driver's excursions: ``grass`` (a hard turn off the road, moderate gas), ``spin``
(full lock and full gas: the rear-wheel-drive car spins), ``brake`` (full brake: the wheels lock)."""


class ScriptedDriver:
    """A CarRacing driver that follows the track, with deliberate noisy excursions: data that shows
    the world model good driving *and* the mistakes a controller will make.

    **It reads privileged information, and only to collect data**: the car's position, heading and
    speed and the track's waypoints, from the env itself (``bind(env)``, called by
    ``agents.rollout.run_episode``), never from the frames. A controller never gets any of this;
    the driver only decides which frames and actions the data set holds.

    Driving: pure pursuit of the track point ``lookahead + 0.3 s * speed`` ahead of the nearest
    waypoint, steering ``steer_gain`` times the heading error, damped by the yaw rate, plus a
    smooth steering noise (OU, std ``noise``). Speed: a target of ``max_speed`` on straights down
    to ``corner_speed`` where the track turns most within the next stretch (lower off the road and
    while facing away from it), reached with gas (eased while steering hard: the car is rear-wheel
    driven) and braking when too fast. Spinning (yaw rate over 3 rad/s), it lets go of the pedals
    and steers into the spin.

    Excursions: on the road above speed 15, each step starts one with probability
    ``excursion_prob``, of a kind drawn from ``excursions`` (see :data:`EXCURSIONS`), to a random
    side, lasting ``excursion_steps / 4 .. excursion_steps`` steps; the driver then steers back to
    the track (the nearest waypoint from a little behind where it left to further on, so it never
    turns back along the road) and a new excursion waits until it is back on the road. With the
    defaults, 20 episodes reached 73% of the track (216 tiles) and spent 23% of their steps off the
    road (docs/RESULTS.md, "Data policies").

    Args:
        action_space: CarRacing's continuous ``Box([-1, 0, 0], [1, 1, 1])``.
        max_speed, corner_speed: target speeds (the speedometer's unit) on straights and in the
            sharpest corners.
        lookahead: base pursuit distance (world units; the road is 13 wide).
        steer_gain: steering per radian of heading error.
        noise: std of the smooth steering noise (action units).
        excursion_prob: chance per on-road step of starting an excursion.
        excursion_steps: the longest excursion (steps).
        excursions: the kinds to draw from, comma-separated.
    """

    def __init__(self, action_space: spaces.Space, max_speed: float = 75.0, corner_speed: float = 35.0,
                 lookahead: float = 10.0, steer_gain: float = 2.0, noise: float = 0.1,
                 excursion_prob: float = 0.005, excursion_steps: int = 40,
                 excursions: str = ",".join(EXCURSIONS)) -> None:
        low, high = np.asarray(getattr(action_space, "low", [])), np.asarray(getattr(action_space, "high", []))
        if not isinstance(action_space, spaces.Box) or not _is_car_layout(low, high):
            raise ValueError(f"the scripted driver drives CarRacing's continuous actions, not {action_space}")
        kinds = tuple(k.strip() for k in excursions.split(",") if k.strip())
        bad = [k for k in kinds if k not in EXCURSIONS]
        if bad:
            raise ValueError(f"unknown excursions {bad}; choose from {', '.join(EXCURSIONS)}")
        self.space, self.kinds = action_space, kinds
        self.max_speed, self.corner_speed = float(max_speed), float(corner_speed)
        self.lookahead, self.steer_gain, self.noise = float(lookahead), float(steer_gain), float(noise)
        self.excursion_prob, self.excursion_steps = float(excursion_prob), max(4, int(excursion_steps))
        self.env: Any = None
        self.rng = np.random.default_rng(0)
        self._track: Any = None
        self.reset(0)

    def bind(self, env: Any) -> None:
        """Drive ``env`` (a CarRacing, however wrapped); any other env is refused."""
        from gymnasium.envs.box2d.car_racing import CarRacing

        if not isinstance(env.unwrapped, CarRacing):
            raise ValueError(f"the scripted driver drives CarRacing only (it reads the car and the track), "
                             f"not {env.unwrapped.spec.id if env.unwrapped.spec else env.unwrapped}")
        self.env = env.unwrapped

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.steer_noise, self.i, self.kind, self.left, self.side, self.on_road_seen = 0.0, 0, "", 0, 1.0, True
        self.excursions_done = 0

    def _waypoints(self) -> None:
        track = self.env.track
        if track is not self._track:  # a new episode's track
            self._track = track
            t = np.asarray(track, dtype=np.float64)  # (N, 4): alpha, beta (direction), x, y
            self.xy, self.beta = t[:, 2:4], t[:, 1]
            turn = np.abs(np.angle(np.exp(1j * (np.roll(self.beta, -1) - self.beta))))  # per waypoint
            k = 12  # waypoints (3.5 world units each) over which a corner is looked for
            self.turn_ahead = np.array([turn[(np.arange(i, i + k)) % len(turn)].sum() for i in range(len(turn))])
            self.i = int(np.argmin(np.sum((self.xy - self.env.car.hull.position) ** 2, axis=1)))

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.env is None:
            raise RuntimeError("the scripted driver reads the env: call bind(env) first")
        self._waypoints()
        hull = self.env.car.hull
        pos, ang = np.asarray(hull.position, dtype=np.float64), float(hull.angle)
        speed = float(np.hypot(*hull.linearVelocity))
        on_road = any(w.tiles for w in self.env.car.wheels)
        n = len(self.xy)
        # the nearest waypoint a little behind to well ahead of the last one: back from an
        # excursion the car rejoins the track where it left it or further on, never far back
        window = (self.i + np.arange(-10, 80)) % n
        self.i = int(window[np.argmin(np.sum((self.xy[window] - pos) ** 2, axis=1))])
        ahead = int(np.ceil((self.lookahead + 0.3 * speed) / 3.5))
        target = self.xy[(self.i + ahead) % n]
        to = target - pos
        forward = np.array([-np.sin(ang), np.cos(ang)])
        err = float(np.arctan2(forward[0] * to[1] - forward[1] * to[0], forward @ to))  # > 0: target to the left
        self.steer_noise = float(_ou_step(self.steer_noise, 0.0, self.noise, 0.94, self.rng))
        yaw = float(hull.angularVelocity)  # > 0: turning left; damped against slides on the grass
        steer = float(np.clip(-self.steer_gain * err + 0.3 * yaw + self.steer_noise, -1.0, 1.0))
        turn = self.turn_ahead[(self.i + ahead // 2) % n]
        v_target = self.corner_speed + (self.max_speed - self.corner_speed) * max(0.0, 1.0 - turn / 1.2)
        if abs(err) > 1.0:  # facing away from the track: turn round slowly
            v_target = min(v_target, 0.6 * self.corner_speed)
        elif not on_road:  # on the grass: back at a moderate speed, slower while still turning
            v_target = min(v_target, self.corner_speed * (1.0 if abs(err) > 0.5 else 1.3))
        gas = float(np.clip(0.1 * (v_target - speed), 0.0, 1.0) * (1.0 - 0.6 * abs(steer)))
        brake = float(np.clip(0.05 * (speed - v_target - 5.0), 0.0, 0.8))
        if abs(yaw) > 3.0:  # spinning: off the gas and the brake, steer into the spin
            steer, gas, brake = float(np.clip(0.3 * yaw, -1.0, 1.0)), 0.0, 0.0
        # excursions
        if self.left == 0 and on_road and self.on_road_seen and self.kinds and speed > 15.0 and \
                self.rng.random() < self.excursion_prob:
            self.kind = self.kinds[int(self.rng.integers(len(self.kinds)))]
            self.left = int(self.rng.integers(self.excursion_steps // 4, self.excursion_steps + 1))
            self.side = float(self.rng.choice([-1.0, 1.0]))
            self.on_road_seen = False
            self.excursions_done += 1
        if self.left > 0:
            self.left -= 1
            if self.kind == "grass":
                steer, gas, brake = self.side, 0.5, 0.0
            elif self.kind == "spin":
                steer, gas, brake = self.side, 1.0, 0.0
            else:
                gas, brake = 0.0, 1.0
        elif on_road:
            self.on_road_seen = True
        return np.array([steer, gas, brake], dtype=self.space.dtype)


class ControllerPolicy:
    """Policy ``a = C([z, h])`` on real frames.

    Args:
        world_model: V and M (their weights; the start bank is not used here).
        cfg: the controller's shape.
        params: flat parameters (num_params,), or None to draw fresh random ones at every
            ``reset`` (the paper's randomly initialised controller for data collection).
        noise_std: std of Gaussian exploration noise added to each action (clipped to bounds);
            iterative training collects with the evolved controller plus this noise.
        burst_prob: probability per step of starting a burst of uniformly random actions (0: none);
            shows M where C's states lead when it is pushed off its own path.
        burst_steps: length of a burst.
        trace: keep every step's done logit of every M (member 0, the one whose ``h`` C reads, and an
            ensemble's others, each stepped on the same latents and actions): :attr:`done_logits`,
            what the dream's done head says along the real path (:mod:`agents.calibrate`).
    """

    def __init__(self, world_model: WorldModel, cfg: ControllerConfig, params: np.ndarray | None,
                 noise_std: float = 0.0, burst_prob: float = 0.0, burst_steps: int = 20, trace: bool = False) -> None:
        if not 0.0 <= burst_prob <= 1.0 or burst_steps < 1:
            raise ValueError(f"burst_prob must be in [0, 1] and burst_steps >= 1, got {burst_prob}, {burst_steps}")
        self.wm = world_model.eval()
        self.cfg, self.noise_std = cfg, float(noise_std)
        self.burst_prob, self.burst_steps, self.burst_left = float(burst_prob), int(burst_steps), 0
        self.bursting = False
        """whether the last action was a burst's."""
        self.random = params is None
        self.ctrl = None if params is None else BatchedController(cfg, params)
        self.low, self.high = np.asarray(cfg.action_low), np.asarray(cfg.action_high)
        self.rng = np.random.default_rng(0)
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.trace = bool(trace)
        self.others: list[Any] = []
        """with ``trace``: the LSTM states of an ensemble's members 1..K-1."""
        self.logits: list[torch.Tensor] = []

    @property
    def done_logits(self) -> np.ndarray:
        """With ``trace``: (K, T) float32, every M's done logit at each step of the episode since
        :meth:`reset` (the logit of the step's transition ending the episode); K = 1 for one M."""
        if not self.logits:
            return np.zeros((len(self.others) + 1, 0), dtype=np.float32)
        return torch.stack(self.logits, dim=1).numpy().astype(np.float32)

    @classmethod
    def from_spec(cls, spec: PolicySpec, action_space: spaces.Space, task: str) -> ControllerPolicy:
        """``random_controller``: untrained V and M of the task's paper sizes, random C per episode
        (kwargs: ``z_size``, ``hidden``, ``seed``). ``controller``: kwargs ``world_model`` (a
        WorldModel) and ``params``, ``controller_config`` (a dict), ``noise_std``."""
        kw = dict(spec.kwargs)
        if spec.name == "random_controller":
            from envs import TASKS, action_space_dict

            t = TASKS.get(task)
            wm = WorldModel.untrained(task=task, action_space=action_space_dict(action_space),
                                      z_size=int(kw.get("z_size", t.z_size if t else 32)),
                                      hidden=int(kw.get("hidden", t.rnn_hidden if t else 256)),
                                      seed=int(kw.get("seed", 0)))
            cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, task)
            return cls(wm, cfg, None)
        wm = kw["world_model"]
        cfg = ControllerConfig(**kw["controller_config"])
        return cls(wm, cfg, np.asarray(kw["params"]), noise_std=float(kw.get("noise_std", 0.0)),
                   burst_prob=float(kw.get("burst_prob", 0.0)), burst_steps=int(kw.get("burst_steps", 20)))

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.burst_left = 0
        # the bursts draw from their own stream: with burst_prob 0 the noise is what it always was
        self.burst_rng = np.random.default_rng([seed, 0xB0057])
        if self.random:
            self.ctrl = BatchedController(self.cfg, init_params(self.cfg, self.rng))
        self.state = self.wm.mdrnn.initial_state(1, self.wm.device)
        self.others = [m.initial_state(1, self.wm.device) for m in self.wm.ensemble[1:]] if self.trace else []
        self.logits = []

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        assert self.ctrl is not None and self.state is not None, "call reset(seed) first"
        z, _ = self.wm.encode(torch.from_numpy(np.ascontiguousarray(obs))[None])  # (1, Z): the posterior mean
        x = torch.cat([z, state_h(self.state)], dim=1)  # (1, Z + H)
        a = self.ctrl.act(x)[0].numpy().astype(np.float64)
        if self.noise_std > 0:
            a = np.clip(a + self.noise_std * self.rng.standard_normal(a.shape), self.low, self.high)
        self.bursting = False
        if self.burst_prob > 0:
            if self.burst_left == 0 and self.burst_rng.random() < self.burst_prob:
                self.burst_left = self.burst_steps
            if self.burst_left > 0:
                self.bursting = True
                self.burst_left -= 1
                a = self.burst_rng.uniform(self.low, self.high).astype(np.float64)
        a_t = torch.as_tensor(a, dtype=torch.float32)[None]
        pred, self.state = self.wm.mdrnn.step(z, a_t, self.state)
        if self.trace:
            logit = [pred.done_logit.reshape(())]
            for k, m in enumerate(self.wm.ensemble[1:]):
                p_k, self.others[k] = m.step(z, a_t, self.others[k])
                logit.append(p_k.done_logit.reshape(()))
            self.logits.append(torch.stack(logit).float())
        return a.astype(np.float32)


def policy_kwargs(world_model: WorldModel, cfg: ControllerConfig, params: np.ndarray, noise_std: float = 0.0,
                  burst_prob: float = 0.0, burst_steps: int = 20) -> dict[str, Any]:
    """The kwargs of a ``PolicySpec("controller", ...)``: a controller plus exploration noise and
    random bursts."""
    return {"world_model": world_model.cpu(), "controller_config": asdict(cfg),
            "params": np.asarray(params, dtype=np.float64), "noise_std": noise_std, "burst_prob": burst_prob,
            "burst_steps": burst_steps}


CAR_RACING_TASKS = ("car_racing", "CarRacing-v3", "worldlab/CarRacing-v3")
"""the tasks the scripted driver can drive."""


def check_policy(name: str, task: str) -> None:
    """Refuse, in one line, a policy name ``make_policy`` does not know or a scripted driver for a task
    that is not CarRacing (the collection checks before any work)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    if name == "scripted" and task not in CAR_RACING_TASKS:
        raise ValueError(f"the scripted driver drives CarRacing only (it reads the car and the track), not {task}")


def make_policy(spec: PolicySpec, action_space: spaces.Space, task: str) -> Policy:
    """Build a policy from its spec inside a worker."""
    if spec.name == "brownian":
        return BrownianPolicy(action_space, **spec.kwargs)
    if spec.name == "holding":
        return HoldingPolicy(action_space, **spec.kwargs)
    if spec.name == "driving":
        return DrivingPolicy(action_space, **spec.kwargs)
    if spec.name == "scripted":
        check_policy(spec.name, task)
        return ScriptedDriver(action_space, **spec.kwargs)
    if spec.name in ("random_controller", "controller"):
        return ControllerPolicy.from_spec(spec, action_space, task)
    raise ValueError(f"unknown policy {spec.name!r}; choose one of {', '.join(POLICIES)}")
