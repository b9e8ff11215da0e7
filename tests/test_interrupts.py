"""Ctrl-C and SIGTERM in the middle of a stage: no traceback, one line that says what was kept and
how to go on, the shell's exit status (130, 143), and what was done kept whole for a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "PYTHONUNBUFFERED": "1"}
QUICK = ["--preset", "smoke", "--no-progress", "--generations", "2", "--set", "eval.videos=false",
         "--set", "eval.probes=false"]


def _start(out: Path, log: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, object]:
    err = log.open("w")
    # its own session, as a shell's foreground job: a Ctrl-C reaches every process of the group
    p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "dream_train.py"), "car_racing", "--out", str(out),
                          *QUICK, *extra], stdout=subprocess.PIPE, stderr=err, text=True, env=ENV, cwd=ROOT,
                         start_new_session=True)
    return p, err


def _read_until(p: subprocess.Popen, text: str, timeout: float = 600) -> list[str]:
    lines: list[str] = []
    t0 = time.monotonic()
    assert p.stdout is not None
    for line in p.stdout:
        lines.append(line)
        if text in line:
            return lines
        assert time.monotonic() - t0 < timeout, f"no {text!r} in {timeout} s"
    raise AssertionError(f"the run ended before {text!r}: {''.join(lines)[-2000:]}")


def _interrupt(tmp_path: Path, stage: str, sig: int, group: bool, extra: tuple[str, ...] = ()
               ) -> tuple[int, str, str, Path]:
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    p, err = _start(out, log, extra)
    seen = _read_until(p, stage)
    time.sleep(2.0)  # well inside the stage: workers busy, a model training
    if group:
        os.killpg(p.pid, sig)
    else:
        p.send_signal(sig)
    rest, _ = p.communicate(timeout=120)
    err.close()  # type: ignore[attr-defined]
    return p.returncode, "".join(seen) + rest, log.read_text(), out


def _kept_whole(out: Path) -> int:
    """The episodes an interrupted collection kept: each listed shard on disk with its checksum, no
    temp file left (what a resume starts from; tests/test_chaos.py resumes killed runs to the end)."""
    from agents.chaos import bad_shards

    eps = json.loads((out / "data" / "manifest.json").read_text())["episodes"]
    assert bad_shards(out / "data", eps) == []
    assert not list(out.rglob("*.tmp"))
    return len(eps)


def test_ctrl_c_during_collection_says_one_line_and_keeps_what_it_collected(tmp_path: Path) -> None:
    # 100 episodes: the smoke preset's 6 can all be collected within the 2 s the interrupt waits
    code, stdout, stderr, out = _interrupt(tmp_path, "] stage 1/6 · round 0: collect", signal.SIGINT, group=True,
                                           extra=("--set", "collect.episodes=100"))
    assert code == 130, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr and "retries remaining" not in stdout + stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0] == (f"interrupted (Ctrl-C): stopped stage 1/6 (round 0: collect 100 real episodes (brownian)); "
                        f"every finished stage and the last checkpoints are kept in {out}; go on with: "
                        f"python scripts/dream_train.py car_racing --resume --out {out}")
    assert _kept_whole(out) < 100  # those collected before the Ctrl-C (none if Ray was still starting)


@pytest.mark.slow
def test_sigterm_during_training_says_one_line_and_keeps_the_stage_time(tmp_path: Path) -> None:
    code, stdout, stderr, out = _interrupt(tmp_path, "] stage 2/6 · round 0: train V", signal.SIGTERM, group=False)
    assert code == 143, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr and "SIGTERM received" not in stdout + stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM): stopped stage 2/6 (round 0: train V to "), \
        stderr
    assert (out / "data" / "manifest.json").is_file()  # stage 1's episodes are kept
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert [t["key"] for t in stages][:2] == ["collect_r0", "vision_r0"]  # the interrupted stage's time counts
    assert stages[1]["finished"] is None and stages[1]["seconds"] > 1
    # (a resume after a kill completing the run: tests/test_chaos.py::test_killed_inside_every_stage...)


def test_a_watch_window_does_not_open_the_sound_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # pygame.init() starts the mixer too: on a machine without a sound card, 9 lines of "ALSA lib ..."
    import pygame

    from agents.world_models.runs import watch_run

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")

    def refuse() -> None:
        raise AssertionError("pygame.init() opens the sound device; init the display (and fonts) only")

    monkeypatch.setattr(pygame, "init", refuse)
    res = watch_run(ROOT / "tests" / "fixtures" / "old_run", mode="both", episodes=1, max_steps=5, fps=1000)
    assert len(res["real"]) == 1 and len(res["dream"]) == 1
    assert pygame.mixer.get_init() is None
