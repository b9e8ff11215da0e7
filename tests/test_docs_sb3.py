"""Every code block of docs/SB3_RLLIB.md runs, in order, as a user would run the page: on a copy of
tests/fixtures/old_run, with fewer steps. The blocks marked ``<!-- test: slow -->`` (building and
training an RLlib algorithm) run in the slow test only."""

from __future__ import annotations

import math
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

import worldlab_gymnasium

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "SB3_RLLIB.md"
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run"
CHEAPER = {
    "STEPS = 200_000": "STEPS = 256",
    "DreamSB3VecEnv(num_envs=64": "DreamSB3VecEnv(num_envs=8",
    "n_steps=256, batch_size=1024": "n_steps=16, batch_size=128",
    "MAX_STEPS = 1000": "MAX_STEPS = 25",
    "--episodes 100\n": "--episodes 2 --max-steps 25 --workers 0\n",
    "--record ppo.mp4": "--record ppo.mp4 --max-steps 10",
}
"""the doc's sizes -> test sizes (each must occur in the doc, so the page cannot drift from them)."""


def _blocks(run: Path) -> list[tuple[str, str, bool]]:
    text = DOC.read_text()
    for old, new in CHEAPER.items():
        assert old in text, f"docs/SB3_RLLIB.md no longer has {old!r}: update CHEAPER"
        text = text.replace(old, new)
    text = text.replace("runs/car_racing", str(run))
    return [(lang, code, bool(slow)) for slow, lang, code in
            re.findall(r"(<!-- test: slow -->\n)?```(\w+)\n(.*?)```", text, flags=re.S)]


def _run_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              script: Callable[[str], ModuleType], slow: bool) -> tuple[list[str], str]:
    run = tmp_path / "car_racing"
    shutil.copytree(OLD_RUN, run)
    monkeypatch.chdir(tmp_path)  # the page writes ppo_dream.zip and ppo.mp4 where it runs
    worldlab_gymnasium.install()  # what the installed worldlab_gymnasium.pth does at start-up
    blocks = _blocks(run)
    langs = [lang for lang, _, _ in blocks]
    assert set(langs) == {"python", "bash"} and langs.count("python") >= 6, langs
    namespace: dict = {}
    ran = []
    for lang, code, is_slow in blocks:
        if is_slow and not slow:
            continue
        if lang == "python":
            exec(compile(code, f"{DOC.name} block {len(ran)}", "exec"), namespace)  # one session, like a notebook
        else:
            for line in code.strip().splitlines():
                argv = shlex.split(line)
                assert argv[0] == "python" and argv[1].startswith("scripts/"), line
                assert script(Path(argv[1]).stem).main(argv[2:]) == 0, capsys.readouterr()
        ran.append(lang)
    return ran, capsys.readouterr().out


def test_every_block_of_the_sb3_rllib_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 script: Callable[[str], ModuleType]) -> None:
    ran, out = _run_page(tmp_path, monkeypatch, capsys, script, slow=False)
    assert ran.count("bash") == 1 and (tmp_path / "ppo_dream.zip").is_file() and (tmp_path / "ppo.mp4").is_file()
    real = [line for line in out.splitlines() if line.startswith("real return ")]
    assert len(real) == 1 and math.isfinite(float(real[0].split()[-1]))
    assert "over 2 episodes of at most 25 steps" in out and "real: " in out and "of at most 10 steps" in out


@pytest.mark.slow
def test_every_block_of_the_sb3_rllib_page_runs_with_rllib_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   script: Callable[[str], ModuleType]) -> None:
    ran, out = _run_page(tmp_path, monkeypatch, capsys, script, slow=True)
    assert ran.count("python") == len([b for b in _blocks(tmp_path) if b[0] == "python"])
    assert float(out.strip().splitlines()[-1]) >= 400  # env steps RLlib sampled in the dream: one train batch
