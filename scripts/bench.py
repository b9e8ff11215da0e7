"""Run every benchmark in one go and write docs/BENCHMARKS.md from what they measured.

    python scripts/bench.py                 # all, default sizes (~10-15 min on 2 cores)
    python scripts/bench.py --only car_racing collect
    python scripts/bench.py --quick         # small sizes, to check the machinery

Each benchmark is a script in benchmarks/ that measures ratios against a baseline in the same
process (the machines are shared and noisy); this runner calls them one after another (never in
parallel), keeps their JSON in benchmarks/results/, and renders the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

BENCHES: dict[str, tuple[list[str], list[str]]] = {
    # name: (default args, --quick args)
    "car_racing": (["--steps", "1000", "--seeds", "0", "1", "2", "--repeats", "3"],
                   ["--steps", "200", "--seeds", "0", "--repeats", "1"]),
    "collect": (["--episodes", "8", "--max-steps", "1000", "--repeats", "5"],
                ["--episodes", "4", "--max-steps", "100", "--repeats", "1"]),
    "dream": (["--compile", "--rounds", "5"], ["--steps", "50", "--rounds", "1"]),
    "cma": (["--steps", "1000", "--real-episodes", "8"], ["--steps", "100", "--real-episodes", "2"]),
    "real_pool": (["--run", "pretrained/doom_take_cover", "--episodes", "40", "--repeats", "3"],
                  ["--episodes", "4", "--repeats", "1"]),
    "dream_shrink": (["--run", "pretrained/doom_take_cover", "--rounds", "3"],
                     ["--run", "pretrained/doom_take_cover", "--popsize", "4", "--rollouts", "2", "--steps", "100",
                      "--rounds", "1"]),
    "m_train": (["--rounds", "3"], ["--episodes", "20", "--mean-length", "100", "--hidden", "64", "--batches", "10",
                                     "--steps", "3", "--rounds", "1"]),
    "sequence": (["--repeats", "5"], ["--repeats", "1", "--batch", "2", "--block", "16", "--dreams", "64",
                                      "--dream-steps", "5"]),
}


def run(name: str, quick: bool) -> dict:
    args = BENCHES[name][1 if quick else 0]
    out = RESULTS / f"{name}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args, "--json", str(out)]
    print(f"$ {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "SDL_VIDEODRIVER": "dummy"})
    res = json.loads(out.read_text())
    res["_command"] = f"python benchmarks/{name}.py {' '.join(args)}"
    res["_wall_s"] = time.perf_counter() - t0
    res.setdefault("load_average_1min", os.getloadavg()[0])
    out.write_text(json.dumps(res, indent=2))
    return res


def fmt(x: float, d: int = 1) -> str:
    return f"{x:,.{d}f}"


def render(results: dict[str, dict]) -> str:
    L = ["# Benchmarks", "",
         "Produced by `python scripts/bench.py` (raw JSON in `benchmarks/results/`). Speed is reported as",
         "ratios against a baseline measured in the same process, since the machines are shared and noisy.",
         f"Machine of this run: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
         f"Python {platform.python_version()}, no GPU.",
         "Per-area notes, with runs made on a quieter machine by the same scripts: "
         "[car_racing](benchmarks/car_racing.md), [dream](benchmarks/dream.md).", ""]
    loads = {n: r.get("load_average_1min") for n, r in results.items() if r.get("load_average_1min") is not None}
    if loads:
        L += ["Load average (1 min) when measured: " + ", ".join(f"{n} {v:.1f}" for n, v in loads.items())
              + " (2 cores: above 2 means other jobs shared the machine).", ""]
    r = results.get("car_racing")
    if r:
        L += ["## Fast CarRacing vs Gymnasium's (one core)", "", f"Command: `{r['_command']}`", "",
              "| env | steps/s (wall) | steps/s (process CPU) |", "|---|---|---|",
              f"| gymnasium CarRacing-v3 | {fmt(r['gymnasium_steps_per_s'])} | {fmt(r['gymnasium_steps_per_cpu_s'])} |",
              f"| worldlab/CarRacing-v3 | {fmt(r['fast_steps_per_s'])} | {fmt(r['fast_steps_per_cpu_s'])} |",
              f"| **ratio** | **{fmt(r['ratio'], 2)}x** | **{fmt(r['cpu_ratio'], 2)}x** |", "",
              f"Bit-identical trajectories on this run (obs, reward, terminated, truncated, info at every step): "
              f"**{r['identical']}**.", ""]
    r = results.get("collect")
    if r:
        one, two = r["one_worker"], r["two_workers"]
        L += ["## ViZDoom TakeCover and Ray collection", "", f"Command: `{r['_command']}`", "",
              f"- `doom_take_cover` (64x64 preprocessing, paper actions): **{fmt(r['doom_take_cover_steps_per_s'], 0)}"
              f" steps/s** on one core.",
              f"- Collection of {one['episodes']} `{r['task']}` episodes ({one['frames']} frames), shards included: "
              f"1 worker {fmt(one['frames_per_s'], 0)} frames/s, 2 workers {fmt(two['frames_per_s'], 0)} frames/s: "
              f"**{fmt(r['parallel_speedup'], 2)}x** (parallel efficiency {fmt(100 * r['parallel_speedup'] / 2, 0)}%)"
              + (f"; the median of {len(r['speedups'])} alternating rounds ("
                 + ", ".join(f"{x:.2f}x" for x in r["speedups"]) + ")." if r.get("speedups") else "."),
              ""]
    r = results.get("dream")
    if r:
        L += ["## The batched dream", "", f"Command: `{r['_command']}`", "",
              f"- `DreamVectorEnv`, {r['envs']} envs with a linear controller in the loop: "
              f"**{fmt(r[r['best'] + '_steps_per_s'], 0)} steps/s** ({r['best'].replace('_', ' ')} step, {r['machine']})",
              f"- vs gymnasium CarRacing-v3 on one core ({fmt(r['car_racing_steps_per_s'], 1)} steps/s): "
              f"**{fmt(r['speedup_vs_car_racing'], 0)}x**",
              f"- {fmt(r['flops_per_env_step'], 0)} FLOP per env-step -> {fmt(r['dream_gflops'], 1)} GFLOP/s = "
              f"**{fmt(r['roofline_fraction'], 2)}** of the measured matmul roofline ({r['roofline']}; matmul "
              + ", ".join(f"{k} {fmt(v, 1)}" for k, v in r["matmul_gflops"].items()) + " GFLOP/s).",
              "- FLOPs counted as 2 x multiply-adds of the step's matrix products (LSTM gates, MDN head, controller), "
              "unpadded; element-wise work not counted. See `benchmarks/dream.py`.", ""]
    r = results.get("cma")
    if r:
        L += ["## One CMA-ES generation: dream vs real game", "", f"Command: `{r['_command']}`", "",
              f"- {r['popsize']} x {r['rollouts']} = {r['popsize'] * r['rollouts']} rollouts of {r['steps']} steps in "
              f"the dream: **{fmt(r['dream_generation_s'], 1)} s** ({fmt(r['dream_steps_per_s'], 0)} steps/s, "
              f"{r['torch_threads']} threads, "
              + (f"the compiled step, as the pipeline runs it; compiling took {fmt(r['dream_compile_s'], 1)} s "
                 "once before)." if r.get("dream_compiled") else "the eager step)."),
              f"- The same generation in the real CarRacing with V and M in the loop, {r['real_workers']} Ray workers: "
              f"{fmt(r['real_steps_per_s'], 0)} steps/s measured on {r['real_episodes']} episodes -> "
              f"{fmt(r['real_generation_s_projected'] / 60, 1)} min projected: the dream is "
              f"**{fmt(r['ratio_real_over_dream'], 0)}x** faster.", ""]
    r = results.get("real_pool")
    if r:
        st, med = r["episode_steps"], r["median_s"]
        L += ["## Real episodes on the worker pool: split up front vs fed as they finish", "",
              f"Command: `{r['_command']}`", "",
              f"- {r['episodes']} `{r['task']}` episodes ({st['min']}-{st['max']} steps, median {fmt(st['median'], 0)}; "
              + (f"the controllers of `{r['run']}`" if r.get("run") else "controllers drawn at random")
              + f") on {r['workers']} Ray workers, the median of {r['repeats']} alternating passes: split into two "
              f"batches a worker up front {fmt(med['split'], 1)} s, fed to each worker as it finishes "
              f"(`RealPool.play`) {fmt(med['fed'], 1)} s: **{fmt(r['speedup_fed_over_split'], 2)}x**; the same "
              "returns both ways. The passes (s): split "
              + ", ".join(fmt(x, 1) for x in r["seconds"]["split"]) + "; fed "
              + ", ".join(fmt(x, 1) for x in r["seconds"]["fed"])
              + " (a ratio inside their spread is no difference).", ""]
    r = results.get("dream_shrink")
    if r:
        L += ["## A CMA-ES generation in the dream: shrinking the batch as dreams end", "", f"Command: `{r['_command']}`",
              "",
              f"- {r['dreams']} dreams of at most {r['step_limit']} steps ({r['world_model']}; {r['members']} M"
              f"{'s, done = their max' if r['done_mode'] == 'max' else ''}; mean length "
              f"{fmt(r['mean_dream_length'], 0)}, longest {r['longest_dream']}): the full batch until the last dream "
              f"ends {fmt(r['seconds_full_batch'], 1)} s, shrunk as they end (`DreamFitness(shrink=True)`, the "
              f"default) {fmt(r['seconds_shrink'], 1)} s: **{fmt(r['speedup'], 2)}x** (rounds: "
              + ", ".join(f"{x:.2f}x" for x in r["speedup_rounds"]) + f"; {r['machine']}).", ""]
    r = results.get("m_train")
    if r:
        b, st = r["batch_ms"], r["step_ms"]
        L += ["## M's training: latent episodes kept in memory", "", f"Command: `{r['_command']}`", "",
              f"- {r['episodes']} episodes of random latents (z {r['z']}, mean length {r['mean_length']}, "
              f"{fmt(r['cached_mb'], 0)} MB in memory), batches of {r['batch']} windows of {r['seq_len']} "
              f"(`mdrnn_batches`): from disk each pass {fmt(b['disk'], 1)} ms a batch, kept in memory after the first "
              f"(`M_CACHE_BYTES`, the pipeline's default) {fmt(b['cached'], 1)} ms: **{fmt(r['batch_speedup'], 1)}x**.",
              f"- Whole training steps of an MDN-RNN with an LSTM of {r['hidden']} ({r['threads']} threads): "
              f"{fmt(st['disk'], 0)} ms vs {fmt(st['cached'], 0)} ms: **{fmt(r['step_speedup'], 3)}x** (the LSTM's "
              "matrix products are the rest of the step).", ""]
    r = results.get("sequence")
    if r:
        ms, tok = r["train_step_ms"], r["sample_tokens_per_s"]
        L += ["## Language models: training step and sampling", "", f"Command: `{r['_command']}`", "",
              f"One training step on {r['batch']} x {r['block']} characters ({r['threads']} thread), and sampling "
              f"(64 sequences, one token each per step):", "",
              "| model | parameters | train step | sampling |", "|---|---|---|---|"]
        L += [f"| {k} | {r['params'][k] / 1e3:.0f}k | {fmt(ms[k], 0)} ms | {fmt(tok[k], 0)} tokens/s |" for k in tok]
        L += [f"| mamba, parallel scan | | {fmt(ms['mamba_parallel'], 0)} ms | |", "",
              f"- Mamba's scan over time as a loop trains at **{fmt(r['mamba_loop_speedup'], 2)}x** the speed of the "
              "parallel (Hillis-Steele) scan on this CPU (which does log2(T) memory-bound passes over (B, T, E, N) "
              "tensors); `MambaConfig.scan=\"auto\"` takes the loop on a CPU and the parallel scan on CUDA.",
              ""]
        d = r["dream_steps_per_s"]
        tasks = list(d)
        L += [f"Dream steps per second with {r['dreams']:,} dreams at once ({r.get('dream_threads', r['threads'])} "
              "threads, untrained Ms at each task's sizes: z 32, width 256 for CarRacing; z 64, width 512 for Doom; "
              "`_compiled`: the step compiled by inductor, as the pipeline runs it; `_bf16`: "
              "`--set dream.precision=bf16`" + ("" if r.get("native_bf16", True) else
                                                 ", not measured: this CPU has no native bf16") + "):", "",
              "| M | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        L += [f"| {k} | " + " | ".join(f"{fmt(d[t][k], 0)}" if k in d[t] else "-" for t in tasks) + " |"
              for k in dict.fromkeys(k for t in tasks for k in d[t])]
        L += [""]
    return "\n".join(L)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=None)
    p.add_argument("--quick", action="store_true", help="small sizes (checks the machinery, figures not kept)")
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = p.parse_args()
    names = args.only or list(BENCHES)
    results = {}
    for n in BENCHES:
        path = RESULTS / f"{n}.json"
        if n in names:
            results[n] = run(n, args.quick)
        elif path.exists():  # keep the figures of benchmarks not rerun this time
            results[n] = json.loads(path.read_text())
    if not args.quick:
        Path(args.out).write_text(render(results) + "\n")
        print(f"wrote {args.out}")
    else:
        print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
