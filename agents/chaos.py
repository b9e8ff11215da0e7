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
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    from worldlab.io import sha256_file

    if not run.data_manifest.is_file():
        return False
    eps = json.loads(run.data_manifest.read_text())["episodes"]
    return listed <= set(eps) and all((run.data / e["file"]).is_file() and sha256_file(run.data / e["file"])
                                      == e["sha256"] for e in eps.values())


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
