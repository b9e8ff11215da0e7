"""Benchmark: the sequence families' training step and sampling, and Mamba's two scans.

    python benchmarks/sequence.py [--batch 12] [--block 64] [--repeats 5] [--json out.json]

For each family at its default size (the sizes of docs/GENERATORS.md's text table): the time of
one training step (forward, backward, AdamW) on ``--batch`` x ``--block`` characters, and sampling
throughput (one token for 64 sequences per ``step`` call). Then the world model's Ms in the dream:
steps per second of ``--dreams`` dreams at once for the MDN-RNN, a Transformer M and a Mamba M at
CarRacing's sizes (width 256) and Doom's (width 512), eager, compiled (MDN-RNN, Mamba) and, on a CPU
with native bf16, the sequence Ms with ``dream.precision=bf16``. For Mamba the training step is timed
with both scans, ``loop`` and ``parallel``, alternating in the same process: the ratio is what
``MambaConfig.scan="auto"`` relies on to pick the loop on a CPU. Median of ``--repeats`` rounds.
Weights are untrained (the cost does not depend on them); torch threads as set by ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def train_step_s(model: torch.nn.Module, batch: torch.Tensor, steps: int = 3) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model.loss(batch)  # warm-up
    loss.backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model.loss(batch).backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def sample_tokens_per_s(model: torch.nn.Module, n: int = 64, steps: int = 64) -> float:
    state = model.init_state(n)
    tok = torch.zeros(n, dtype=torch.long)
    model.step(tok, state)
    state = model.init_state(n)
    t0 = time.perf_counter()
    for _ in range(steps):
        logits, state = model.step(tok, state)
        tok = logits.argmax(-1)
    return n * steps / (time.perf_counter() - t0)


def dream_rates(ms: dict[str, torch.nn.Module], n: int, steps: int, repeats: int,
                compiled: frozenset[str] = frozenset(), bf16: frozenset[str] = frozenset()) -> dict[str, float]:
    """Dream steps per second of ``n`` dreams at once for each M of ``ms`` (any family: the dream
    step :func:`envs.dream_step.make_dream_step` builds for it; the names in ``compiled`` compiled,
    those in ``bf16`` with ``precision="bf16"``), the Ms alternating in each of ``repeats`` rounds,
    median per M. Also what ``scripts/m_compare.py`` reports for a run's trained Ms."""
    from envs.dream_step import make_dream_step

    steppers = {k: make_dream_step(m, n, "cpu", compile=k in compiled, precision="bf16" if k in bf16 else "fp32")
                for k, m in ms.items()}
    rates: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(repeats):
        for k, st in steppers.items():
            c = ms[k].config
            st.reset_rows(slice(None), torch.randn(n, c.z_size))
            actions = torch.rand(n, c.action_dim) if not c.discrete_actions else torch.randint(c.action_dim, (n,))
            for _ in range(3):  # warm-up (and the compile, once)
                st.set_actions(actions)
                st.step()
            t0 = time.perf_counter()
            for _ in range(steps):
                st.set_actions(actions)
                st.step()
            rates[k].append(n * steps / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


COMPILED_FAMILIES = ("mdrnn", "mamba")
"""The m.family names whose dream step compiles (:mod:`envs.dream_step`); the Transformer M's stays eager."""
BF16_FAMILIES = ("gpt", "mamba")
"""The m.family names whose dream step has a bf16 path (``dream.precision=bf16``)."""

SIZES = {"car_racing": {"z_size": 32, "action_dim": 3, "width": 256},
         "doom_take_cover": {"z_size": 64, "action_dim": 1, "width": 512}}
"""Each task's M sizes as the pipeline gives them (z, actions, and the LSTM's width, which the
sequence Ms take by default)."""


def dream_steps_per_s(n: int, steps: int, repeats: int, task: str = "car_racing", bf16: bool = True
                      ) -> dict[str, float]:
    """:func:`dream_rates` of the MDN-RNN, a Transformer M (2 layers, 4 heads, window 16) and a
    Mamba M (2 layers, state 16) at ``task``'s sizes (:data:`SIZES`), untrained: eager, compiled
    (``_compiled``) where the step compiles, and with ``bf16`` the sequence Ms in bf16 too (``_bf16``)."""
    from worldlab.mdrnn import MDRNN, MDRNNConfig
    from worldlab.sequence_m import make_m

    s = SIZES[task]
    io = {"z_size": s["z_size"], "action_dim": s["action_dim"]}
    torch.manual_seed(0)
    ms = {"mdrnn": MDRNN(MDRNNConfig(**io, hidden=s["width"])),
          "transformer_m": make_m("transformer_m", **io, width=s["width"], layers=2, heads=4, window=16),
          "mamba_m": make_m("mamba_m", **io, width=s["width"], layers=2)}
    ms.update({"mdrnn_compiled": ms["mdrnn"], "mamba_m_compiled": ms["mamba_m"]})
    half = {"transformer_m_bf16": ms["transformer_m"], "mamba_m_compiled_bf16": ms["mamba_m"]} if bf16 else {}
    return dream_rates({**ms, **half}, n, steps, repeats, compiled=frozenset({"mdrnn_compiled", "mamba_m_compiled",
                                                                              "mamba_m_compiled_bf16"}),
                       bf16=frozenset(half))


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--vocab", type=int, default=111, help="vocabulary size (python_docs: 111)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dream-threads", type=int, default=2,
                   help="torch threads for the dream steps (default 2: a 2-core machine's dream)")
    p.add_argument("--dreams", type=int, default=1024, help="dreams stepped at once (default 1024)")
    p.add_argument("--dream-steps", type=int, default=50, help="timed dream steps per round (default 50)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import generators

    torch.manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.batch, args.block + 1))
    models = {name: generators.make(name, shape=(args.block,), vocab_size=args.vocab) for name in ("lstm", "gpt")}
    models["mamba"] = generators.make("mamba", shape=(args.block,), vocab_size=args.vocab, scan="loop")
    parallel = generators.make("mamba", shape=(args.block,), vocab_size=args.vocab, scan="parallel")
    parallel.load_state_dict(models["mamba"].state_dict())
    times: dict[str, list[float]] = {k: [] for k in [*models, "mamba_parallel"]}
    tokens: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):  # alternate, so a noisy neighbour hits every model alike
        for name, m in models.items():
            times[name].append(train_step_s(m, batch))
            tokens[name].append(sample_tokens_per_s(m))
        times["mamba_parallel"].append(train_step_s(parallel, batch))
    torch.set_num_threads(args.dream_threads)
    from worldlab.training import native_bf16

    bf16 = native_bf16(torch.device("cpu"))  # without it a bf16 dream is far slower: not measured
    dream = {task: dream_steps_per_s(args.dreams, args.dream_steps, args.repeats, task, bf16) for task in SIZES}
    torch.set_num_threads(args.threads)
    res = {
        "dreams": args.dreams, "dream_steps_per_s": dream, "dream_threads": args.dream_threads, "native_bf16": bf16,
        "batch": args.batch, "block": args.block, "vocab": args.vocab, "threads": args.threads,
        "train_step_ms": {k: 1000 * statistics.median(v) for k, v in times.items()},
        "sample_tokens_per_s": {k: statistics.median(v) for k, v in tokens.items()},
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        "mamba_loop_speedup": statistics.median(times["mamba_parallel"]) / statistics.median(times["mamba"]),
    }
    for k, v in res["train_step_ms"].items():
        print(f"{k:15s} train step {v:8.1f} ms" + (f"   sampling {res['sample_tokens_per_s'][k]:8.0f} tokens/s"
                                                   if k in tokens else ""))
    for task, rates in dream.items():
        for k, v in rates.items():
            print(f"dream step, {args.dreams} dreams, {task} sizes, {k:22s} {v:10,.0f} steps/s")
    if not bf16:
        print("bf16 dreams not measured: this CPU has no native bf16 (AVX512-BF16 or AMX)")
    print(f"mamba: the loop scan trains {res['mamba_loop_speedup']:.2f}x faster than the parallel scan here")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
