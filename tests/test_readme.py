"""The README's data-collection example, run as written (shortened) in a folder like a fresh clone."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _readme_block(after: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(after) + r"\s*```bash\n(.*?)```", text, re.S)
    assert block, f"no bash block after {after!r} in the README"
    return [ln.split("  #")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_the_collect_example_runs_on_a_fresh_clone(tmp_path: Path) -> None:
    lines = _readme_block("## Collecting rollouts")
    assert lines[0].startswith("mkdir -p runs/cr && python scripts/collect.py car_racing")
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "PYTHONPATH": str(ROOT)}
    for line in lines:
        line = line.replace("python scripts/", f"{shlex.quote(sys.executable)} {ROOT}/scripts/")
        line = line.replace("--episodes 200", "--episodes 2 --max-steps 30 --no-progress")
        line = line.replace("--workers 2", "--workers 0")  # in the test's process: no Ray to start
        r = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, line + "\n" + r.stdout[-2000:] + r.stderr[-2000:]
    shard = np.load(tmp_path / "runs" / "cr" / "data" / "ep_000000.npz")
    for key in ("obs", "actions", "rewards", "terminated", "truncated", "seed", "speed", "off_road", "tiles"):
        assert key in shard.files, key  # what the README says a shard holds
    assert shard["obs"].shape == (31, 64, 64, 3) and shard["obs"].dtype == np.uint8
    assert "| driving | 2 | " in r.stdout and "tiles reached" in r.stdout  # the coverage table of that data
