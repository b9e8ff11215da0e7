"""The corruption matrix (agents/chaos.py) on copies of a tiny finished run: every fault is named in
one line by the resume, or repaired by it. And kills: a run SIGKILLed twice inside every stage
finishes on resume with nothing lost, duplicated or half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.chaos import CASES, check_finished, kill_and_resume, kills_table, matrix_table, run_case
from worldlab.logging import RunLogger

OLD_RUN = Path(__file__).parent / "fixtures" / "old_run"


# CI's time: one case of each kind of file (scripts/chaos.py runs them all; docs/RELIABILITY.md)
IN_CI = ("shard with one flipped byte", "V with one flipped byte", "controller replaced by garbage",
         "CMA-ES state with one flipped byte", "config.json invalid", "V of another task copied in")


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.name in IN_CI], ids=lambda c: c.name.replace(" ", "_"))
def test_each_fault_is_detected_or_repaired(case: object) -> None:
    row = run_case(OLD_RUN, case)  # type: ignore[arg-type]
    assert row["ok"], matrix_table([row])
    if row["outcome"] == "detected":
        assert row["file"] in row["detail"] and ("delete it" in row["detail"] or "restore" in row["detail"]
                                                 or "start the run again" in row["detail"])


@pytest.mark.slow
def test_killed_inside_every_stage_the_run_finishes_whole(tmp_path: Path) -> None:
    # one kill per stage in CI (40 minutes); twice in a row per stage: scripts/chaos.py RUN --kills 2,
    # whose table is in docs/RELIABILITY.md
    r = kill_and_resume("car_racing", tmp_path / "run", kills_per_stage=1, seed=0, max_delay=0.4)  # inside even quick stages
    table = kills_table(r)
    assert r["exit"] == 0 and not r["problems"], table + "\n" + "\n".join(r["last_lines"])
    hits = [k["stage"] for k in r["kills"]]
    assert set(r["stages"]) <= set(hits), table  # every stage was killed
    assert len(hits) == len(r["stages"]) and r["starts"] == len(hits) + 1, table
    assert all(k["resume_said"].startswith(f"resuming {tmp_path / 'run'}: ") for k in r["kills"]), table


def test_the_finished_check_finds_duplicates_and_leftovers(tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    before = set(check_finished(run)["problems"])
    (run / "checkpoints" / ".vae.pt.abcd1234.tmp").write_bytes(b"half")
    shard = next((run / "data").glob("ep_*.npz"))
    shutil.copy(shard, run / "data" / "ep_999999.npz")
    with RunLogger(run, "vae", tensorboard=False) as log:
        log.scalar("vae/loss", 1.0, 1)
        log.scalar("vae/loss", 1.0, 1)
    problems = set(check_finished(run)["problems"]) - before
    assert any(".vae.pt.abcd1234.tmp" in p for p in problems), problems
    assert any("ep_999999.npz" in p for p in problems), problems
    assert any("logged twice" in p for p in problems), problems


def test_a_resumed_stage_forgets_what_it_logged_after_its_checkpoint(tmp_path: Path) -> None:
    with RunLogger(tmp_path, "vae") as log:
        for step in range(1, 11):
            log.scalar("vae/loss", float(step), step)
    with RunLogger(tmp_path, "mdrnn", tensorboard=False) as log:
        log.scalar("mdrnn/loss", 1.0, 7)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"stage": "vae", "step": 11, "na')  # a line a kill cut short
    with RunLogger(tmp_path, "vae") as log:
        assert log.resume_after(6) == 5  # steps 7-10 and the cut line
        log.scalar("vae/loss", 70.0, 7)
    from worldlab.logging import read_metrics

    assert [(r["step"], r["value"]) for r in read_metrics(tmp_path, "vae")] == \
        [(s, float(s)) for s in range(1, 7)] + [(7, 70.0)]
    assert [r["step"] for r in read_metrics(tmp_path, "mdrnn")] == [7]  # another stage's steps stay


@pytest.mark.parametrize("killed_in", [0, 2])
def test_evolution_killed_between_a_generations_log_and_its_save_logs_it_once(tmp_path: Path, killed_in: int) -> None:
    # the first generation too: a kill there left no state file, and its metrics were logged again on resume
    import numpy as np

    from agents.cmaes import CMAConfig, evolve
    from worldlab.logging import read_metrics

    cfg = CMAConfig(popsize=6, generations=4, sigma0=0.5, seed=3)

    def fitness(X: np.ndarray, g: int) -> np.ndarray:
        return -np.sum(X ** 2, axis=1)

    def kill(g: int, best: np.ndarray, fit: float, mean: np.ndarray) -> None:  # runs after the log, before the save
        if g == killed_in:
            raise KeyboardInterrupt

    with RunLogger(tmp_path, "evolve_r0", tensorboard=False) as log, pytest.raises(KeyboardInterrupt):
        evolve(fitness, 5, cfg, tmp_path / "cma.npz", logger=log, progress=False, on_generation=kill,
               hook_before_save=True)
    assert len({r["step"] for r in read_metrics(tmp_path, "evolve_r0")}) == killed_in + 1  # logged, not saved
    with RunLogger(tmp_path, "evolve_r0", tensorboard=False) as log:
        evolve(fitness, 5, cfg, tmp_path / "cma.npz", logger=log, progress=False)
    steps = [r["step"] for r in read_metrics(tmp_path, "evolve_r0", "evolve/best")]
    assert steps == [0, 1, 2, 3]
