"""Picking the final controller among the rounds by real episodes (``eval.select_episodes``): the
last round is kept unless another beats it by ``eval.select_margin`` paired standard errors, a tie
keeps the later round, the pick is labelled in eval.json and the report,
the last round's (dream-only) controller is scored beside it, a resume redoes nothing, and turning
it off restores the last round's controller."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agents.controller import load_controller, save_controller
from agents.world_models.config import RunConfig
from agents.world_models.plan import RunPlan
from agents.world_models.stages import (
    checkpoint_id,
    evaluate_controller,
    file_digest,
    pick_round,
    rounds_run,
    rounds_stop,
    stored_selection,
)
from worldlab.logging import read_metrics
from worldlab.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run"  # car_racing, 2 rounds, eval 2 episodes of 25 steps


def _resume(cli: Callable[..., subprocess.CompletedProcess], run: Path, *sets: str,
            check: bool = True) -> subprocess.CompletedProcess:
    args = [a for s in sets for a in ("--set", s)]
    r = cli("dream_train.py", "car_racing", "--resume", "--out", str(run), "--no-progress", "--backend", "processes",
            "--workers", "1", "--set", "eval.probes=false", *args)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _bad_last_round(tmp_path: Path) -> tuple[Path, Path, tuple]:
    """OLD_RUN copied with its last round's controller made bad (large random weights steer and brake
    at random); the run, its checkpoints and that round's (config, params, extra) as they were."""
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    ck = run / "checkpoints"
    ccfg, params, extra = load_controller(ck / "controller_r1.npz")
    save_controller(ck / "controller_r1.npz", ccfg, 3 * np.random.default_rng(0).standard_normal(params.shape), **extra)
    return run, ck, (ccfg, params, extra)


def test_the_best_round_by_real_episodes_is_kept_and_labelled(
        tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    run, ck, (ccfg, params, extra) = _bad_last_round(tmp_path)

    r = _resume(cli, run, "eval.select_episodes=3")
    sel = json.loads((run / "selection.json").read_text())
    assert sel["episodes"] == 3 and len(sel["seeds"]) == 3 and [row["round"] for row in sel["rounds"]] == [0, 1]
    means = [row["mean"] for row in sel["rounds"]]
    for row in sel["rounds"]:
        assert len(row["returns"]) == 3 and np.isclose(row["mean"], np.mean(row["returns"]))
    assert means[0] > means[1] and sel["picked"] == 0
    assert (ck / "controller.npz").read_bytes() == (ck / "controller_r0.npz").read_bytes()
    ev = json.loads((run / "eval.json").read_text())
    assert ev["selected"] == {"round": 0, "of_rounds": 2, "by": "real returns", "episodes": 3, "means": means}
    assert ev["train_in"] == "dream (every round), the final controller picked among the rounds by 3 real episodes each"
    assert not set(sel["seeds"]) & set(ev["seeds"])  # picked on other episodes than it is scored on
    last = json.loads((run / "eval_last.json").read_text())  # the dream-only figure, on the same episodes
    assert last["controller"] == file_digest(ck / "controller_r1.npz") and last["seeds"] == ev["seeds"]
    assert last["train_in"] == "dream" and last["mean"] < ev["mean"]
    assert "that controller is round 0's, picked among 2 rounds by 3 real episodes each" in r.stdout
    assert "also the dream-only result" not in r.stdout  # the last round's is scored beside it instead
    report = (run / "report.md").read_text()
    assert "**A selection by real returns, not a dream-only result:**" in report and "| 0 | " in report
    assert f"the dream-only result) on the evaluation's 2 episodes: **{last['mean']:.1f}" in report
    assert "![each round's controller in the real game](figures/rounds.png)" in report
    assert (run / "figures" / "rounds.png").stat().st_size > 10_000  # a plot of the rounds' means, the kept one marked

    cfg3 = RunConfig.from_dict({**RunConfig.load(run).to_dict(), "eval": {**RunConfig.load(run).to_dict()["eval"],
                                                                          "select_episodes": 3, "probes": False}})
    evaluated = {s.key: s.done for s in RunPlan(RunDir(run), cfg3, say=lambda *_: None).stages}["evaluate"]
    shutil.copyfile(run / "eval_last.json", tmp_path / "eval_last.json")
    (run / "eval_last.json").unlink()  # the kept round's evaluation alone does not finish the stage
    assert evaluated and not {s.key: s.done for s in RunPlan(RunDir(run), cfg3, say=lambda *_: None).stages}["evaluate"]
    shutil.copyfile(tmp_path / "eval_last.json", run / "eval_last.json")
    before = {p.name: p.stat().st_mtime_ns for p in [run / "selection.json", run / "eval.json", run / "eval_last.json"]}
    again = _resume(cli, run, "eval.select_episodes=3")
    assert "picking" not in again.stdout and "evaluating" not in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in [run / "selection.json", run / "eval.json",
                                                   run / "eval_last.json"]} == before

    r = _resume(cli, run, "eval.select_episodes=3", "eval.select_margin=1000")  # the pick made again from the returns
    assert "picking" not in r.stdout and "no round beat the last by more than the margin" in r.stdout
    sel = json.loads((run / "selection.json").read_text())
    assert "it is the last round's, so this is also the dream-only result" in r.stdout
    assert "the figure above is also the dream-only result" in (run / "report.md").read_text()
    assert sel["picked"] == 1 and sel["margin"] == 1000 and [row["mean"] for row in sel["rounds"]] == means
    assert (ck / "controller.npz").read_bytes() == (ck / "controller_r1.npz").read_bytes()
    assert json.loads((run / "eval.json").read_text())["selected"]["round"] == 1

    r0_returns = sel["rounds"][0]["returns"]
    save_controller(ck / "controller_r1.npz", ccfg, 2 * np.random.default_rng(1).standard_normal(params.shape), **extra)
    r = _resume(cli, run, "eval.select_episodes=3", "eval.select_margin=1000")  # a new round 1: only it is played
    assert "round 0's controller:" not in r.stdout and "round 1's controller:" in r.stdout
    sel = json.loads((run / "selection.json").read_text())
    assert sel["rounds"][0]["returns"] == r0_returns and sel["rounds"][1]["controller"] == file_digest(ck / "controller_r1.npz")

    _resume(cli, run, "eval.select_episodes=0")  # off again: the last round's controller is the final one
    assert (ck / "controller.npz").read_bytes() == (ck / "controller_r1.npz").read_bytes()
    ev = json.loads((run / "eval.json").read_text())
    assert "selected" not in ev and ev["train_in"] == "dream" and ev["controller"] == file_digest(ck / "controller_r1.npz")

    shutil.copyfile(ck / "controller_r0.npz", ck / "controller_r1.npz")  # equal controllers: the later round is kept
    _resume(cli, run, "eval.select_episodes=2")
    sel = json.loads((run / "selection.json").read_text())
    assert sel["episodes"] == 2 and sel["rounds"][0]["returns"] == sel["rounds"][1]["returns"] and sel["picked"] == 1


def test_the_last_rounds_averaged_become_the_final_controller_with_the_last_round_scored_beside(
        tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    ck = run / "checkpoints"
    _, p0, _ = load_controller(ck / "controller_r0.npz")
    _, p1, e1 = load_controller(ck / "controller_r1.npz")
    digests = [file_digest(ck / "controller_r0.npz"), file_digest(ck / "controller_r1.npz")]

    r = _resume(cli, run, "average_rounds=2")
    assert "the final controller: the parameter mean of rounds 0-1's controllers" in r.stdout
    _, pa, extra = load_controller(ck / "controller.npz")
    np.testing.assert_allclose(pa, (p0 + p1) / 2, rtol=0, atol=1e-15)
    assert extra["rounds"] == [0, 1] and extra["averaged"] == digests and extra.get("mdrnn_id") == e1.get("mdrnn_id")
    assert (ck / "controller.npz").read_bytes() == (ck / "controller_avg.npz").read_bytes()
    ev = json.loads((run / "eval.json").read_text())
    assert ev["averaged"] == {"rounds": [0, 1], "of_rounds": 2, "by": "parameter mean"} and "selected" not in ev
    assert ev["controller"] == file_digest(ck / "controller_avg.npz")
    assert ev["train_in"] == "dream (every round), the final controller averaged from rounds 0-1's"
    last = json.loads((run / "eval_last.json").read_text())  # the last round's, on the same episodes
    assert last["controller"] == digests[1] and last["seeds"] == ev["seeds"] and last["train_in"] == "dream"
    old = json.loads((OLD_RUN / "eval.json").read_text())  # which scored it as the final controller: not played again
    assert old["controller"] == digests[1] and last["returns"] == old["returns"] and last["seeds"] == old["seeds"]
    assert "the last round's controller (beside the kept or averaged one): its 2 episodes are eval.json's" in r.stdout
    assert "evaluating the last round's controller" not in r.stdout
    assert "that controller is rounds 0-1's controllers averaged (average_rounds 2; a dream-only result); the last " \
           f"round's scores {last['mean']:.1f}" in r.stdout
    report = (run / "report.md").read_text()
    d = np.subtract(ev["returns"], last["returns"])
    assert "**The rounds' average:** the final controller is the parameter mean of rounds 0-1's" in report
    assert f"the average minus it, episode by episode: {d.mean():+.1f} ± {d.std(ddof=1) / np.sqrt(len(d)):.1f}." in report

    cfg = RunConfig.load(run)
    assert cfg.average_rounds == 2
    assert {s.key: s.done for s in RunPlan(RunDir(run), cfg, say=lambda *_: None).stages}["evaluate"]
    files = [ck / "controller_avg.npz", run / "eval.json", run / "eval_last.json"]
    before = {p.name: p.stat().st_mtime_ns for p in files}
    again = _resume(cli, run, "average_rounds=2")  # nothing to redo
    assert "the final controller: the parameter mean" not in again.stdout and "evaluating" not in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in files} == before

    ccfg, _, _ = load_controller(ck / "controller_r0.npz")
    save_controller(ck / "controller_r0.npz", ccfg, p0 + 1.0, **load_controller(ck / "controller_r0.npz")[2])
    assert not {s.key: s.done for s in RunPlan(RunDir(run), cfg, say=lambda *_: None).stages}["evaluate"]
    r = _resume(cli, run, "average_rounds=2")  # a changed round: averaged again and played again
    np.testing.assert_allclose(load_controller(ck / "controller.npz")[1], (p0 + 1.0 + p1) / 2, rtol=0, atol=1e-15)
    assert "the final controller: the parameter mean of rounds 0-1's" in r.stdout and "evaluating the controller" in r.stdout
    assert json.loads((run / "eval.json").read_text())["controller"] == file_digest(ck / "controller_avg.npz")

    _resume(cli, run, "average_rounds=0")  # off: the last round's controller is the final one again
    assert (ck / "controller.npz").read_bytes() == (ck / "controller_r1.npz").read_bytes()
    ev = json.loads((run / "eval.json").read_text())
    assert "averaged" not in ev and ev["train_in"] == "dream" and ev["controller"] == digests[1]
    assert "The rounds' average" not in (run / "report.md").read_text()


def test_a_negative_selection_is_refused_before_any_work(
        tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    r = _resume(cli, run, "eval.select_episodes=-1", check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "eval.select_episodes must be >= 0, got -1" in r.stderr
    assert not (run / "selection.json").exists()


def test_the_plan_counts_a_selection_done_only_when_it_is_this_configs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    cfg = RunConfig.load(run)
    cfg3 = RunConfig.from_dict({**cfg.to_dict(), "eval": {**cfg.to_dict()["eval"], "select_episodes": 3}})
    ck = run / "checkpoints"
    digests = [file_digest(ck / f"controller_r{k}.npz") for k in range(2)]

    def plan_says() -> bool:
        return {s.key: s.done for s in RunPlan(RunDir(run), cfg3, say=lambda *_: None).stages}["select"]

    assert stored_selection(run, cfg3) is None and not plan_says()  # none yet
    m_id = checkpoint_id(run / "checkpoints" / "mdrnn.pt")
    rows = [{"round": k, "controller": digests[k], "mdrnn": m_id, "returns": [1.0, 2.0, 3.0 + k]} for k in range(2)]
    sel = {"episodes": 3, "max_steps": cfg3.eval.max_steps, "picked": 1, "margin": 1.0, "rounds": rows}
    (run / "selection.json").write_text(json.dumps(sel))
    assert stored_selection(run, cfg3).tolist() == [[1.0, 2.0, 3.0], [1.0, 2.0, 4.0]] and plan_says()
    (run / "selection.json").write_text(json.dumps({**sel, "episodes": 2}))  # another N: to be played
    assert stored_selection(run, cfg3) is None and not plan_says()
    (run / "selection.json").write_text(json.dumps({**sel, "max_steps": 7}))  # another episode limit
    assert stored_selection(run, cfg3) is None and not plan_says()
    (run / "selection.json").write_text(json.dumps({**sel, "rounds": rows[::-1]}))  # other controllers
    assert stored_selection(run, cfg3) is None and not plan_says()
    (run / "selection.json").write_text(json.dumps({**sel, "rounds": [{**r, "mdrnn": "another"} for r in rows]}))
    assert stored_selection(run, cfg3) is None and not plan_says()  # played through another M
    (run / "selection.json").write_text(json.dumps({k: v for k, v in sel.items() if k != "picked"}))
    assert stored_selection(run, cfg3) is None and not plan_says()  # returns without a pick: the rounds' judging
    (run / "selection.json").write_text("{not json")  # unreadable: to be played
    assert stored_selection(run, cfg3) is None and not plan_says()


def test_evaluate_controller_refuses_an_unknown_kind(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    with pytest.raises(ValueError, match="which must be one of final, last_round, finetuned, got 'best'"):
        evaluate_controller(run, RunConfig.load(run), np.zeros(3), pool=lambda: None, which="best")
    assert not (run / "eval_best.json").exists()


def test_pick_round_keeps_the_last_unless_beaten_by_the_margin() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(500, 100, size=50)
    rounds = np.stack([base + 30, base + 5 + rng.normal(0, 40, 50), base])  # r0 beats r2 by 30 on every episode
    assert pick_round(rounds, 1.0) == 0 and pick_round(rounds, 0.0) == 0
    noisy = np.stack([base + rng.normal(10, 200, 50), base])  # +10 on average, with a paired s.e. of ~28
    assert pick_round(noisy, 1.0) == 1 and pick_round(noisy, 0.0) == (0 if (noisy[0] - base).mean() > 0 else 1)
    assert pick_round(np.stack([base, base, base]), 0.0) == 2  # a tie keeps the later round
    assert pick_round(np.stack([base + 1, base + 1, base]), 0.0) == 1  # equal gains: the later of the two
    assert pick_round(np.stack([base - 50, base]), 0.0) == 1


def test_selection_cv_reproduces_the_documented_figures() -> None:
    r = subprocess.run([sys.executable, "scripts/selection_cv.py", *[
        f"docs/results/doom_sel_s{s}_selection.json=docs/results/doom_def_s{s}_r{{k}}_eval.json" for s in (2, 3, 4)],
        "--margins", "0", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("margin 0: +64.8 over the last round on average (6 picks, worst -39.0)")
    assert lines[1].startswith("margin 1: +71.8 over the last round on average (6 picks, worst -22.4)")


def test_rounds_stop_after_patience_rounds_without_a_new_best() -> None:
    assert not rounds_stop([1.0], 1) and rounds_stop([2.0, 1.0], 1) and not rounds_stop([1.0, 2.0], 1)
    assert rounds_stop([2.0, 2.0], 1)  # a tie does not beat the best
    assert not rounds_stop([3.0, 1.0], 2) and rounds_stop([3.0, 1.0, 2.0], 2) and not rounds_stop([3.0, 1.0, 4.0], 2)
    assert not rounds_stop([3.0, 1.0, 2.0], 0)  # 0: off
    # rounds_min: no stop before that many rounds, whatever the patience says; then as before
    assert not rounds_stop([3.0, 1.0, 2.0], 2, least=4) and rounds_stop([3.0, 1.0, 2.0, 2.5], 2, least=4)
    assert not rounds_stop([3.0, 1.0, 2.0, 3.5], 2, least=4) and rounds_stop([3.0, 1.0, 2.0], 2, least=3)


def test_the_rounds_patience_stops_the_rounds_and_a_resume_goes_on_when_raised(
        tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    run, ck, _ = _bad_last_round(tmp_path)

    r = _resume(cli, run, "rounds=4", "rounds_patience=1", "eval.select_episodes=3")  # round 1 (bad) does not beat round 0
    assert "the rounds stop after round 1: none of the last 1 beat round 0's" in r.stdout
    assert "of work if all 4 rounds run" in r.stdout  # the estimate says what it counts while they may stop
    assert not (ck / "controller_r2.npz").exists() and not (ck / "cma_r2.npz").exists()
    judged = json.loads((run / "rounds.json").read_text())
    assert [row["round"] for row in judged["rounds"]] == [0, 1] and judged["patience"] == 1
    assert judged["rounds"][0]["mean"] > judged["rounds"][1]["mean"]
    assert rounds_run(run, RunConfig.load(run)) == 2
    logged = read_metrics(run, "rounds", "rounds/real_mean")  # TensorBoard and metrics.jsonl, a point a round
    assert [m["step"] for m in logged] == [0, 1] and [m["value"] for m in logged] == [r["mean"] for r in judged["rounds"]]
    ev = json.loads((run / "eval.json").read_text())
    assert ev["selected"]["round"] == 0 and ev["selected"]["of_rounds"] == 2
    assert (ck / "controller.npz").read_bytes() == (ck / "controller_r0.npz").read_bytes()
    sel = json.loads((run / "selection.json").read_text())
    assert len(sel["rounds"]) == 2 and sel["rounds"][1]["returns"] == judged["rounds"][1]["returns"]  # same M: kept
    assert "They stopped after round 1: none of the last 1 beat round 0's" in (run / "report.md").read_text()

    again = _resume(cli, run, "rounds=4", "rounds_patience=1", "eval.select_episodes=3")  # nothing left to do
    assert "controller:" not in again.stdout and "picking" not in again.stdout and "stop after" in again.stdout
    assert "if all" not in again.stdout  # stopped: the plan counts the rounds that ran
    assert not (ck / "controller_r2.npz").exists()

    before = judged["rounds"]
    _resume(cli, run, "rounds=4", "rounds_patience=2", "eval.select_episodes=3")  # more patience: round 2 runs
    assert (ck / "controller_r2.npz").exists()
    judged = json.loads((run / "rounds.json").read_text())
    means = [row["mean"] for row in judged["rounds"]]
    assert len(means) == 3 and judged["patience"] == 2 and judged["rounds"][:2] == before  # rounds 0, 1 kept
    assert (ck / "controller_r3.npz").exists() != rounds_stop(means, 2)  # round 3 ran unless round 2 stopped them
