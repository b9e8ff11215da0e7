"""The corruption matrix: damage a copy of a finished run folder in each way a disk, a kill or a
careless copy can, resume it, and check that every fault is either repaired by the resume or
named in one line with its fix (``scripts/chaos.py``; the slow tests run it on a tiny run).

Each case damages one file of the copy and runs ``scripts/dream_train.py TASK --resume`` on it:

- *repaired*: the resume exits 0 and the data is whole again (every episode listed, each shard
  matching its checksum: a shard collected again, a manifest rebuilt from its shards);
- *detected*: the resume exits 2 with one line on stderr that names the file;
- anything else (a traceback, a silent success over damaged data) is a failure.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldlab.logging import read_metrics
from worldlab.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def flip_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest record's data (zip archives) or of the file."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    try:
        with zipfile.ZipFile(path) as z:
            info = max(z.infolist(), key=lambda i: i.compress_size)
        name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
        extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
        at = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    except zipfile.BadZipFile:
        pass
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a worldlab file\n" * 10)


def _first_shard(run: RunDir) -> Path:
    return run.data / json.loads(run.data_manifest.read_text())["episodes"]["0"]["file"]


def _foreign_vae(run: RunDir) -> Path:
    import torch

    from worldlab.io import atomic_torch_save

    state = torch.load(run.vae, weights_only=True)
    other = "doom_take_cover" if state["meta"].get("task") != "doom_take_cover" else "car_racing"
    atomic_torch_save({**state, "meta": {**state["meta"], "task": other}}, run.vae)
    return run.vae


@dataclass
class Case:
    name: str
    damage: Callable[[RunDir], Path]
    """damages the copy; returns the file it damaged."""
    expect: str
    """"repaired" or "detected"."""


def _on(file: Callable[[RunDir], Path], how: Callable[[Path], None]) -> Callable[[RunDir], Path]:
    def damage(run: RunDir) -> Path:
        path = file(run)
        how(path)
        return path
    return damage


def _delete(path: Path) -> None:
    path.unlink()


CASES = [
    Case("shard truncated", _on(_first_shard, _truncate), "repaired"),
    Case("shard with one flipped byte", _on(_first_shard, flip_byte), "repaired"),
    Case("shard deleted", _on(_first_shard, _delete), "repaired"),
    Case("data manifest deleted", _on(lambda r: r.data_manifest, _delete), "repaired"),
    Case("V truncated", _on(lambda r: r.vae, _truncate), "detected"),
    Case("V with one flipped byte", _on(lambda r: r.vae, flip_byte), "detected"),
    Case("M with one flipped byte", _on(lambda r: r.mdrnn, flip_byte), "detected"),
    Case("controller replaced by garbage", _on(lambda r: r.controller(), _garbage), "detected"),
    Case("CMA-ES state with one flipped byte", _on(lambda r: r.cma_state(0), flip_byte), "detected"),
    Case("config.json invalid", _on(lambda r: r.config_json, _garbage), "detected"),
    Case("V of another task copied in", _foreign_vae, "detected"),
]


def run_case(run_dir: str | Path, case: Case, timeout: float = 900) -> dict[str, Any]:
    """Damage a copy of ``run_dir`` as ``case`` says, resume it, and judge the outcome."""
    src = RunDir(run_dir)
    task = json.loads(src.config_json.read_text())["task"]
    with tempfile.TemporaryDirectory(prefix="chaos_") as tmp:
        run = RunDir(Path(tmp) / "run")
        shutil.copytree(src.root, run.root, ignore=shutil.ignore_patterns("tb", "videos"))
        listed = set(json.loads(run.data_manifest.read_text())["episodes"])
        damaged = case.damage(run)
        env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "dream_train.py"), task, "--resume", "--out",
                            str(run), "--no-progress", "--set", "eval.videos=false", "--set", "eval.probes=false"],
                           capture_output=True, text=True,
                           env=env, timeout=timeout, cwd=tmp)
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        tb = "Traceback" in r.stdout + r.stderr
        if r.returncode == 0 and not tb:
            whole = _data_whole(run, listed)
            outcome = "repaired" if whole else "not caught"
            detail = "resumed and finished; the data is whole again" if whole else "finished over damaged data"
        elif r.returncode == 2 and len(err) == 1 and str(damaged.name) in err[0] and not tb:
            outcome, detail = "detected", err[0].removeprefix("error: ")
        else:
            outcome, detail = "failed", f"exit {r.returncode}: {(err or ['(no stderr)'])[-1][:300]}"
    return {"case": case.name, "file": damaged.name, "expected": case.expect, "outcome": outcome,
            "ok": outcome == case.expect, "detail": detail}


def _data_whole(run: RunDir, listed: set[str]) -> bool:
    """Whether the data manifest lists every episode it listed before the damage, each shard on disk
    with the checksum it records."""
    if not run.data_manifest.is_file():
        return False
    eps = json.loads(run.data_manifest.read_text())["episodes"]
    return listed <= set(eps) and not bad_shards(run.data, eps)


def bad_shards(folder: Path, episodes: dict[str, dict[str, Any]]) -> list[str]:
    """The shards of a manifest's ``episodes`` missing from ``folder`` or not matching their SHA-256."""
    from worldlab.io import sha256_file

    return [e["file"] for e in episodes.values()
            if not (folder / e["file"]).is_file() or sha256_file(folder / e["file"]) != e["sha256"]]


def run_matrix(run_dir: str | Path, cases: list[Case] | None = None, say: Any = None) -> list[dict[str, Any]]:
    """Every case of ``cases`` (default :data:`CASES`) on its own copy of ``run_dir``."""
    if not RunDir(run_dir).eval_json.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished run folder (no eval.json): chaos needs one to damage")
    rows = []
    for case in cases or CASES:
        row = run_case(run_dir, case)
        if say:
            say(f"{case.name}: {row['outcome']}")
        rows.append(row)
    return rows


def matrix_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| fault | file | expected | outcome | what the resume said or did |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | `{r['file']}` | {r['expected']} | {'**' + r['outcome'] + '**' if not r['ok'] else r['outcome']} "
              f"| {r['detail'].replace('|', '/')} |" for r in rows]
    ok = sum(r["ok"] for r in rows)
    return "\n".join(lines + ["", f"{ok} of {len(rows)} faults detected or repaired as expected."])


# -- kills: SIGKILL at random points inside every stage, twice in a row, then resume ---------------

STAGE_LINE = re.compile(r"\] stage (\d+)/(\d+) · (.*?)(?: · run \d+% done.*)?$")
DONE_LINE = re.compile(r"\] stage (\d+)/(\d+) done in ")
KILL_SETTINGS = ("--preset", "smoke", "--no-progress", "--set", "eval.videos=false", "--set", "eval.probes=false",
                 "--set", "collect.episodes=50", "--set", "mdrnn_train.steps=200")
"""The smoke preset, with each stage long enough (2 s or more on a quiet 2-core machine: 50 episodes
to collect and encode, 200 steps of M) for a kill within ``max_delay`` to land inside it."""


def _dream_train(args: list[str], env: dict[str, str], cwd: str | Path) -> tuple[subprocess.Popen, queue.Queue]:
    """Start ``dream_train.py`` in its own session (a kill reaches Ray and every worker), with a
    thread that queues its output lines as they come."""
    p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "dream_train.py"), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd, start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return p, lines


def kill_and_resume(task: str, out: str | Path, *, kills_per_stage: int = 2, seed: int = 0,
                    max_delay: float = 1.2, settings: tuple[str, ...] = KILL_SETTINGS, timeout: float = 1200,
                    say: Any = None) -> dict[str, Any]:
    """Run ``dream_train.py TASK`` into ``out`` and SIGKILL its whole process group at a random
    point inside each stage (``uniform(0, max_delay)`` seconds after the stage is announced),
    ``kills_per_stage`` times in a row, resuming after each kill; the last resume runs to the end.
    A stage that ends before its kill lands is killed in the next one (the row says where each
    kill landed). Returns the kills and :func:`check_finished`'s verdict on the run folder (with a
    problem added if any start printed a traceback)."""
    rng = random.Random(seed)
    out = Path(out)
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    landed: dict[int, int] = {}
    kills: list[dict[str, Any]] = []
    starts, t_end = 0, time.monotonic() + timeout
    titles: dict[int, str] = {}
    tracebacks = 0
    while True:
        args = [task, "--out", str(out), *settings] if starts == 0 else [task, "--resume", "--out", str(out),
                                                                         "--no-progress"]
        p, lines = _dream_train(args, env, out.parent)
        starts += 1
        after = kills[-1] if kills else None  # the kill this start resumes from
        live, killed, said = None, False, []
        while True:
            try:
                line = lines.get(timeout=max(1.0, t_end - time.monotonic()))
            except queue.Empty:
                os.killpg(p.pid, signal.SIGKILL)
                raise TimeoutError(f"kill_and_resume: no end in {timeout} s; last lines: {said[-5:]}") from None
            if line is None:
                break
            said.append(line)
            tracebacks += line.startswith("Traceback")
            if after is not None and not after["resume_said"] and "resuming " in line:
                after["resume_said"] = line.split("] ", 1)[-1]
            m = STAGE_LINE.search(line)
            if m:
                live = int(m.group(1))
                titles[live] = m.group(3)
                if landed.get(live, 0) < kills_per_stage:
                    time.sleep(rng.uniform(0.0, max_delay))
                    os.killpg(p.pid, signal.SIGKILL)
                    while (more := lines.get()) is not None:  # what it printed before the kill
                        said.append(more)
                        if d := DONE_LINE.search(more):
                            live = int(d.group(1)) + 1
                        elif d := STAGE_LINE.search(more):
                            live = int(d.group(1))
                            titles[live] = d.group(3)
                    p.wait()
                    landed[live] = landed.get(live, 0) + 1
                    kills.append({"stage": live, "title": titles.get(live, "(between stages)"), "resume_said": ""})
                    if say:
                        say(f"kill {len(kills)}: inside stage {live} ({titles.get(live, 'between stages')})")
                    killed = True
                    break
        if killed:
            continue
        code = p.wait()
        verdict = check_finished(out)
        if tracebacks:
            verdict["problems"].append(f"{tracebacks} traceback(s) printed")
        return {"kills": kills, "starts": starts, "exit": code, "last_lines": said[-3:],
                "stages": {k: titles[k] for k in sorted(titles)}, **verdict}


def check_finished(run_dir: str | Path) -> dict[str, Any]:
    """What must hold in a run folder that finished after kills: ``problems`` lists every breach
    (empty: none). Finished (eval.json over the configured episodes), nothing duplicated (each
    episode once in each manifest and on disk once, no shard outside a manifest, each stage timed
    once, no metric logged twice for one step), nothing half-written (no temp file)."""
    run = RunDir(run_dir)
    problems: list[str] = []
    cfg = json.loads(run.config_json.read_text())
    if not run.eval_json.is_file():
        problems.append("no eval.json: the run did not finish")
    elif json.loads(run.eval_json.read_text())["episodes"] != cfg["eval"]["episodes"]:
        problems.append("eval.json does not hold the configured episodes")
    temps = [str(p.relative_to(run.root)) for p in run.root.rglob("*.tmp")]
    if temps:
        problems.append(f"temp files left: {temps[:5]}")
    c = cfg["collect"]
    want = c["episodes"] + (cfg["rounds"] - 1) * c["episodes_per_round"]
    for folder, manifest in ((run.data, run.data_manifest), (run.latents, run.latents_manifest)):
        if not manifest.is_file():
            problems.append(f"no {manifest.relative_to(run.root)}")
            continue
        eps = json.loads(manifest.read_text())["episodes"]
        files = [e["file"] for e in eps.values()]
        on_disk = {p.name for p in folder.glob("*.npz")}
        if len(files) != len(set(files)):
            problems.append(f"{manifest.relative_to(run.root)} lists a shard twice")
        if on_disk - set(files):
            problems.append(f"shards outside {manifest.relative_to(run.root)}: {sorted(on_disk - set(files))[:5]}")
        if folder == run.data and len(eps) != want:
            problems.append(f"{len(eps)} episodes collected, {want} configured")
        bad = bad_shards(folder, eps)
        if bad:
            problems.append(f"shards missing or not matching their checksum: {bad[:5]}")
    keys = [s["key"] for s in json.loads(run.stages_json.read_text())["stages"]] if run.stages_json.is_file() else []
    if len(keys) != len(set(keys)):
        problems.append(f"a stage timed twice in stages.json: {keys}")
    seen: set[tuple[str, str, int]] = set()
    twice: set[tuple[str, str, int]] = set()
    for rec in read_metrics(run):
        key = (rec["stage"], rec["name"], rec["step"])
        (twice if key in seen else seen).add(key)
    if twice:
        problems.append(f"{len(twice)} metrics logged twice for one step, e.g. {sorted(twice)[:3]}")
    return {"problems": problems}


def kills_table(result: dict[str, Any]) -> str:
    """Markdown: each kill (the stage it landed in, what the next start said), then the verdict."""
    lines = ["| kill | inside stage | what the next start said |", "|---|---|---|"]
    lines += [f"| {i + 1} | {k['stage']}: {k['title']} | {k['resume_said'].replace('|', '/')[:160]} |"
              for i, k in enumerate(result["kills"])]
    per = {}
    for k in result["kills"]:
        per[k["stage"]] = per.get(k["stage"], 0) + 1
    verdict = ("finished; nothing duplicated, nothing half-written" if result["exit"] == 0 and not result["problems"]
               else f"exit {result['exit']}; " + "; ".join(result["problems"]))
    return "\n".join(lines + ["", f"{len(result['kills'])} kills ({', '.join(f'stage {s}: {n}' for s, n in sorted(per.items()))}), "
                              f"{result['starts']} starts: {verdict}."])
