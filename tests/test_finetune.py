"""The optional real-game fine-tune: episodes played in lockstep (V encoding a batch of frames)
match the one-at-a-time episodes, stalled episodes end early, and the fine-tuned controller and its
score are kept apart from the dream-only result and labelled."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agents.controller import load_controller
from agents.fitness import RealEvalWorker, generation_seeds
from worldlab.world_model import WorldModel

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run"


def test_lockstep_episodes_match_one_at_a_time_and_stall_early() -> None:
    wm = WorldModel.load(OLD_RUN)
    ccfg, params, _ = load_controller(OLD_RUN / "checkpoints" / "controller.npz")
    rng = np.random.default_rng(0)
    jobs = [(params + 0.3 * rng.standard_normal(params.shape), s) for s in generation_seeds(0, 5, 3)]
    worker = RealEvalWorker("car_racing", wm, ccfg, {"max_episode_steps": 60})
    one = worker.play(jobs)
    together = worker.play_lockstep(jobs)
    assert [r["length"] for r in together] == [r["length"] for r in one] == [60, 60, 60]
    assert [r["seed"] for r in together] == [s for _, s in jobs]
    assert np.allclose([r["return"] for r in together], [r["return"] for r in one], atol=1e-3)
    stalled = worker.play_lockstep(jobs, stall_steps=3)
    assert all(r["length"] <= 60 for r in stalled) and any(r["length"] < 60 for r in stalled)


def test_finetune_real_is_kept_apart_and_labelled(tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    eval_before = (run / "eval.json").read_text()
    out = cli("dream_train.py", "car_racing", "--resume", "--out", str(run), "--finetune-real", "2", "--no-progress",
              "--backend", "processes", "--workers", "1", "--set", "eval.probes=false")
    assert out.returncode == 0, out.stderr[-3000:]
    # the finetune's defaults: 16 x 2 per generation
    assert "fine-tuned in the real game for 2 generations: real score" in out.stdout.splitlines()[-1]
    assert (run / "eval.json").read_text() == eval_before  # the dream-only result is untouched
    ev = json.loads((run / "eval_finetuned.json").read_text())
    assert ev["train_in"] == "dream, then fine-tuned in the real game" and ev["episodes"] == 2
    _, tuned, extra = load_controller(run / "checkpoints" / "controller_finetuned.npz")
    _, start, _ = load_controller(run / "checkpoints" / "controller.npz")
    assert extra["generations"] == 2 and extra["train_in"] == "real" and not np.array_equal(tuned, start)
    gens = sorted({r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                   if r["name"] == "finetune/best"})
    assert gens == [0, 1]
    assert "## Fine-tuned in the real game (not a dream-only result)" in (run / "report.md").read_text()
    again = cli("dream_train.py", "car_racing", "--resume", "--out", str(run), "--no-progress", "--backend",
                "processes", "--workers", "1")
    assert again.returncode == 0 and "fine-tuning" not in again.stdout and "evaluating" not in again.stdout
