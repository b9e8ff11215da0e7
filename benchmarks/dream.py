"""Benchmark: the batched dream against the real game and against the machine's matmul roofline.

    python benchmarks/dream.py [--envs 1024] [--steps 300] [--threads 2] [--run RUN] [--json OUT]
                               [--members K --dropout P --member-mode episode|step --penalty L
                                --done-mode member|max]

Measured in one run, on this machine:

1. ``DreamVectorEnv`` steps/s: ``--envs`` dreams (CarRacing sizes: z 32, LSTM 256, 5 Gaussians)
   stepped through ``step_torch`` with the paper's linear controller in the loop, exactly as
   ``DreamFitness`` evaluates a CMA-ES population: ``--envs / --rollouts`` candidates of 867
   parameters (``agents.controller.BatchedController``), each applied to its ``--rollouts`` envs'
   rows in one batched matmul, ``a = squash(W [z, h] + b)``; temperature 1 (sampling on),
   autoreset on.
2. Gymnasium ``CarRacing-v3`` steps/s on one core (random actions, resets included).
3. Matrix-multiply FLOP/s of torch on the same threads: ``addmm`` of the dream's own GEMM
   shapes (N x 292 @ 292 x 1024 for the LSTM gates with the bias column, N x 256 @ 256 x 496 for
   the head padded to a multiple of 16 outputs), and a 1024^3 GEMM; the roofline is the best of
   these rates, each counted with the FLOPs of its own shape.

FLOPs of one dream step (counted, not measured): 2 x multiply-adds of its matrix products,
unpadded: LSTM gates 2*(32+256+3)*1024 = 595,968; MDN head 2*256*(3*5*32+2) = 246,784;
controller 2*(32+256)*3 = 1,728; total 844,480 per env-step. Element-wise work (gates,
sampling, squashing) is not counted. Roofline fraction = dream FLOP/s / roofline FLOP/s.

Dream and matmul timings are interleaved in rounds (the machine may be shared), and the median
round of each is reported.

4. With ``--members K`` (> 1) or ``--dropout P`` (> 0): an ensemble of K Ms of the same sizes
   (``envs.dream_step.EnsembleDreamStep``, eager) beside today's single-M step, in the same rounds
   of the same process: the dream with the controller in the loop as in 1., and the bare step
   (``set_actions`` + ``step``, nothing else), each against the same measurement of today's eager
   single-M step; the ratio of each round's times and their median are reported (the target of
   issue 13: at most 1.5 for K <= 5 in episode mode).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def timed_rounds(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each fn (returning a rate) once per round, interleaved; rates per name."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            out[k].append(f())
    return out


def matmul_rate(m: int, k: int, n: int, reps: int) -> Callable[[], float]:
    a, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    c = torch.empty(m, n)
    for _ in range(3):
        torch.addmm(b, a, w.t(), out=c)

    def run() -> float:
        t = time.perf_counter()
        for _ in range(reps):
            torch.addmm(b, a, w.t(), out=c)
        return 2.0 * m * k * n * reps / (time.perf_counter() - t)

    return run


def car_racing_rate(steps: int, seed: int = 0) -> float:
    """Steps/s of gymnasium's CarRacing-v3 in this process (single-threaded Python + Box2D)."""
    import gymnasium as gym

    env = gym.make("CarRacing-v3")
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    env.step(np.zeros(3, np.float32))
    n, t = 0, time.perf_counter()
    while n < steps:
        a = rng.uniform([-1, 0, 0], [1, 1, 1]).astype(np.float32)
        _, _, term, trunc, _ = env.step(a)
        n += 1
        if term or trunc:
            env.reset()
    rate = n / (time.perf_counter() - t)
    env.close()
    return rate


def main(argv: list[str] | None = None) -> dict:
    from envs.dream_step import DONE_MODES, MEMBER_MODES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", type=int, default=1024)
    p.add_argument("--rollouts", type=int, default=16, help="envs per controller (CMA-ES: 64 candidates x 16)")
    p.add_argument("--steps", type=int, default=200, help="dream steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--car-steps", type=int, default=1000, help="CarRacing-v3 steps to time")
    p.add_argument("--run", default=None, help="use the world model of this run folder (default: untrained, same sizes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also time the dream step fused by torch.compile")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--members", type=int, default=1, help="also time an ensemble of this many Ms (> 1)")
    p.add_argument("--dropout", type=float, default=0.0, help="per-dream dropout of the ensemble dream")
    p.add_argument("--member-mode", default="episode", choices=MEMBER_MODES)
    p.add_argument("--penalty", type=float, default=0.0, help="disagreement penalty of the ensemble dream")
    p.add_argument("--done-mode", choices=DONE_MODES, default="member",
                   help="whose done probability ends an ensemble's dream (max: every member follows every dream)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also profile STEPS steps of the fastest dream with torch.profiler and print where the time goes")
    a = p.parse_args(argv)

    from agents.controller import BatchedController, ControllerConfig
    from envs.dream import DreamVectorEnv
    from envs.dream_step import MDRNNDreamStep
    from worldlab.world_model import WorldModel

    # 2. the real game, one core (it is single-threaded); measured first, on a quiet process
    torch.set_num_threads(1)
    car = car_racing_rate(a.car_steps) if a.car_steps > 0 else float("nan")

    torch.set_num_threads(a.threads)
    if a.run:
        wm = WorldModel.load(a.run)
    else:
        wm = WorldModel.untrained()
        with torch.no_grad():  # an untrained done head fires on ~5% of steps; a trained CarRacing M
            wm.mdrnn.head.bias[-1] = -9.0  # almost never does: episodes run to the time limit, as in the game
    N, Z, H, A = a.envs, wm.z_size, wm.hidden_size, wm.action_dim
    K = wm.mdrnn.config.gaussians
    if N % a.rollouts:
        raise SystemExit(f"--envs ({N}) must be a multiple of --rollouts ({a.rollouts})")
    P, R = N // a.rollouts, a.rollouts
    cfg = ControllerConfig.for_task(wm.action_space, Z + H, wm.task)
    params = np.random.default_rng(0).standard_normal((P, cfg.num_params)) * 0.1  # one controller per candidate
    ctrl = BatchedController(cfg, params).to(a.device).repeat_interleave(R)

    ensemble = a.members > 1 or a.dropout > 0
    ens_kw = {"member_mode": a.member_mode, "dropout": a.dropout, "disagreement_penalty": a.penalty,
              "done_mode": a.done_mode}
    if ensemble:  # K Ms of the same sizes, each with its own weights, as one world model
        from envs.dream_step import make_dream_step

        extra = list(wm.members)[:a.members - 1]  # a run's own ensemble first, then untrained Ms of its sizes
        for k in range(len(extra) + 1, a.members):
            m = WorldModel.untrained(seed=k, action_space=wm.action_space, z_size=Z, hidden=H, gaussians=K).mdrnn
            with torch.no_grad():
                m.head.bias[-1] = -9.0
            extra.append(m)
        wm = WorldModel(wm.vae, wm.mdrnn, task=wm.task, action_space=wm.action_space,
                        max_episode_steps=wm.max_episode_steps, start_mu=wm.start_mu, start_logvar=wm.start_logvar,
                        members=extra)

    def make_dream(compiled: bool, ens: bool = False) -> Callable[[int], None]:
        """``advance(steps)``: that many steps of this dream, as DreamFitness steps a CMA-ES generation."""
        kw = {"members": a.members, **ens_kw} if ens else {"members": 1}
        venv = DreamVectorEnv(N, world_model=wm, temperature=1.0, device=a.device, compile=compiled, **kw)
        obs = venv.reset_torch(seed=0)

        def advance(steps: int) -> None:
            nonlocal obs
            for _ in range(steps):
                obs, _, _, _ = venv.step_torch(ctrl.act(obs))

        advance(a.steps)  # warm up (and compile)
        return advance

    def rate(advance: Callable[[int], None]) -> Callable[[], float]:
        def dream() -> float:
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            advance(a.steps)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            return N * a.steps / (time.perf_counter() - t)

        return dream

    def make_bare(ens: bool) -> Callable[[int], None]:
        """``advance(steps)``: the dream step alone (actions in, one step), without env or controller."""
        kw = {"members": wm.ensemble[1:], **ens_kw} if ens else {}
        step = make_dream_step(wm.mdrnn, N, a.device, **kw)
        step.reset_rows(slice(None), wm.start_mu[torch.arange(N) % wm.start_mu.shape[0]],
                        rngs=[np.random.default_rng(i) for i in range(N)])
        act = torch.rand(N, A, generator=torch.Generator().manual_seed(0), device=a.device)
        gen = torch.Generator(device=a.device).manual_seed(0)

        def advance(steps: int) -> None:
            for _ in range(steps):
                step.set_actions(act)
                step.step(1.0, False, gen)

        advance(a.steps)
        return advance

    advancers = {"dream": make_dream(False)}
    if a.compile:
        advancers["dream_compiled"] = make_dream(True)
    if ensemble:
        advancers["dream_ensemble"] = make_dream(False, ens=True)
        advancers["step_single"] = make_bare(False)
        advancers["step_ensemble"] = make_bare(True)
    dreams = {k: rate(f) for k, f in advancers.items()}
    probe = MDRNNDreamStep(wm.mdrnn, 8)  # the GEMM shapes the dream step runs
    mm = {"gates": matmul_rate(N, probe.w.shape[1], probe.w.shape[0], 50),
          "head": matmul_rate(N, H, probe.head_w.shape[0], 100),
          "square1024": matmul_rate(1024, 1024, 1024, 10)}
    rates = timed_rounds({**dreams, **{f"mm_{k}": f for k, f in mm.items()}}, a.rounds)
    med = {k: statistics.median(v) for k, v in rates.items()}
    flops = MDRNNDreamStep.flops_per_step(Z, H, A, K) + 2 * (Z + H) * A
    roof_name = max(mm, key=lambda k: med[f"mm_{k}"])
    roof = med[f"mm_{roof_name}"]
    best = max(("dream", "dream_compiled") if a.compile else ("dream",), key=lambda k: med[k])
    ens: dict = {}
    if ensemble:  # time ratios of each round (rates are steps/s: ratio = single rate / ensemble rate)
        for what, single, many in (("dream", "dream", "dream_ensemble"), ("step", "step_single", "step_ensemble")):
            ratios = [s1 / s2 for s1, s2 in zip(rates[single], rates[many], strict=True)]
            ens[f"{what}_time_ratio_rounds"] = ratios
            ens[f"{what}_time_ratio"] = statistics.median(ratios)
        ens.update({"members": a.members, "dropout": a.dropout, "member_mode": a.member_mode, "penalty": a.penalty,
                    "done_mode": a.done_mode})
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{a.threads} threads",
        "device": a.device,
        "envs": N,
        **{f"{k}_steps_per_s": med[k] for k in dreams},
        **{f"{k}_steps_per_s_rounds": rates[k] for k in dreams},
        "best": best,
        "car_racing_v3_steps_per_s_one_core": car,
        "car_racing_steps_per_s": car,  # the key scripts/bench.py reads
        "speedup_vs_car_racing": med[best] / car,
        "flops_per_env_step": flops,
        "dream_gflops": med[best] * flops / 1e9,
        "matmul_gflops": {k: med[f"mm_{k}"] / 1e9 for k in mm},
        "roofline": roof_name,
        "roofline_fraction": med[best] * flops / roof,
        "load_average_1min": os.getloadavg()[0],
        **({"ensemble": ens} if ens else {}),
    }
    for k in dreams:
        print(f"{k} ({N} envs, linear controller in the loop): {med[k]:,.0f} steps/s "
              f"(rounds: {', '.join(f'{r:,.0f}' for r in rates[k])})")
    print(f"CarRacing-v3, one core: {car:,.1f} steps/s -> {best} is {res['speedup_vs_car_racing']:,.0f}x")
    if ens:
        print(f"ensemble of {a.members} Ms ({a.member_mode}, dropout {a.dropout}, penalty {a.penalty}, "
              f"done {a.done_mode}) vs one M, "
              f"time per step, median of {a.rounds} rounds: dream {ens['dream_time_ratio']:.2f}x "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ens['dream_time_ratio_rounds'])}), bare step "
              f"{ens['step_time_ratio']:.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ens['step_time_ratio_rounds'])})")
    print("matmul: " + ", ".join(f"{k} {v:,.1f} GFLOP/s" for k, v in res["matmul_gflops"].items()))
    print(f"{best}: {flops:,} FLOP/env-step x {med[best]:,.0f} = {res['dream_gflops']:.1f} GFLOP/s "
          f"= {res['roofline_fraction']:.2f} of the {roof_name} matmul roofline "
          f"(load average {res['load_average_1min']:.2f})")
    if a.profile:
        print(f"\n{best}, {a.profile} steps of {N} envs under torch.profiler (self CPU time per op; "
              f"divide by {a.profile} for per step):")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            advancers[best](a.profile)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    if a.json:
        from worldlab.io import atomic_write_json

        atomic_write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
