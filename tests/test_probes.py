"""Probe episodes (agents/probes.py): scripted real episodes and what the world model says of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from agents.probes import play_probe, probe_fidelity, probe_scripts, probe_table

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run"


def test_probe_episodes_are_scripted_and_find_the_grass() -> None:
    scripts = probe_scripts("car_racing", {})
    assert set(scripts) == {"straight_full_gas", "hard_left_off_road", "hard_right_off_road", "spin", "gas_then_brake"}
    ep = play_probe("car_racing", scripts["hard_left_off_road"], seed=0, steps=150)
    again = play_probe("car_racing", scripts["hard_left_off_road"], seed=0, steps=150)
    assert np.array_equal(ep["obs"], again["obs"]) and ep["rewards"].shape == (150,)
    assert not ep["off_road"][:20].any() and ep["off_road"].any()  # starts on the road, ends on the grass
    doom = probe_scripts("doom_take_cover", {"type": "box", "shape": [1], "low": [-1.0], "high": [1.0]})
    assert doom["hold_low"](0) == [-1.0] and doom["hold_high"](5) == [1.0]


def test_probe_fidelity_writes_the_report(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    rep = probe_fidelity(run, seeds=(0,), steps=120, starts=(30,), horizon=40)
    assert json.loads((run / "fidelity_probes.json").read_text()) == json.loads(json.dumps(rep))
    left = rep["probes"]["hard_left_off_road"]["seeds"]["0"]
    real = play_probe("car_racing", probe_scripts("car_racing", {})["hard_left_off_road"], 0, 120)
    assert np.isclose(left["real_return"], real["rewards"].sum())
    assert left["reward_mae_off_road"] is not None and np.isfinite(left["predicted_return"])
    ol = left["open_loop"][0]
    assert ol["start"] == 30 and ol["horizon"] == 40 and set(ol["latent_mse_at"]) == {"1", "10", "30"}
    assert np.isclose(ol["real_return"], real["rewards"][30:70].sum())
    table = probe_table(rep)
    assert table.count("\n") == 1 + len(rep["probes"]) and "| spin |" in table


def test_fidelity_script_prints_the_probe_table(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    out = subprocess.run([sys.executable, "scripts/fidelity.py", str(run), "--no-video", "--episodes", "0",
                          "--context", "5", "--horizon", "10", "--probes", "--probe-seeds", "0", "--probe-steps", "80"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| probe | real return |" in out.stdout and "| gas_then_brake |" in out.stdout
