"""Probe episodes (agents/probes.py): scripted real episodes and what the world model says of them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from agents.controller import ControllerConfig, load_controller, save_controller
from agents.policies import ControllerPolicy
from agents.probes import (
    controller_probes,
    controller_table,
    controllers_probed,
    held_dreams,
    held_table,
    play_probe,
    probe_fidelity,
    probe_scripts,
    probe_table,
)
from agents.rollout import run_episode
from worldlab.rundir import RunDir
from worldlab.world_model import WorldModel

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


def test_controller_probes_read_m_on_the_controllers_own_episodes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    ctrl = run / "checkpoints" / "controller_r0.npz"
    rep = controller_probes(run, [ctrl], episodes=2, seed=7, max_steps=30)
    assert json.loads((run / "fidelity_controllers.json").read_text()) == json.loads(json.dumps(rep))
    row = rep["controllers"][str(ctrl)]
    assert rep["seeds"] == [7, 8] and [e["seed"] for e in row["episodes"]] == [7, 8]
    # the same episode again, M stepped one step at a time (its LSTM cell, not the sequence forward)
    wm = WorldModel.load(run)
    cfg, params, _ = load_controller(ctrl)
    arrays = run_episode(envs.make("car_racing", max_episode_steps=30), ControllerPolicy(wm, cfg, params), 7)["arrays"]
    ep = row["episodes"][0]
    assert ep["steps"] == 30 and ep["ended"] == 0 and ep["p_end_last"] is None  # truncated, not ended
    assert np.isclose(ep["real_return"], arrays["rewards"].sum(dtype=np.float64))
    with torch.inference_mode():
        z = wm.encode(torch.from_numpy(arrays["obs"]))[0]
        state, paid, ends, ends_b = None, 0.0, 0.0, 0.0
        for t in range(30):
            p, state = wm.mdrnn.step(z[t:t + 1], torch.from_numpy(arrays["actions"][t:t + 1]), state)
            paid, ends = paid + float(p.reward[0]), ends + float(torch.sigmoid(p.done_logit[0]))
            ends_b += float(torch.sigmoid(p.done_logit[0] + 1.5))  # a dream with dream.done_bias=1.5
    assert np.isclose(ep["predicted_return"], paid, atol=1e-4) and np.isclose(ep["ends_expected"], ends, atol=1e-5)
    assert np.isclose(row["mean"]["real_return"], np.mean([e["real_return"] for e in row["episodes"]]))
    acts = np.asarray(arrays["actions"], dtype=np.float64)  # what C pressed: per dimension, within the episode
    assert np.allclose(ep["action_mean"], acts.mean(axis=0)) and np.allclose(ep["action_std"], acts.std(axis=0))
    assert np.allclose(row["mean"]["action_mean"], np.mean([e["action_mean"] for e in row["episodes"]], axis=0))
    table = controller_table(rep)
    assert table.count("\n") == 2 and str(ctrl) in table
    # the same controller file on the same M: the file is kept, not played again; another file is played
    mtime = (run / "fidelity_controllers.json").stat().st_mtime_ns
    assert controllers_probed(RunDir(run), [ctrl], rep["mdrnn_id"], 2, seed=7, max_steps=30) == rep
    assert controller_probes(run, [ctrl], episodes=2, seed=7, max_steps=30) == rep
    assert (run / "fidelity_controllers.json").stat().st_mtime_ns == mtime
    assert controllers_probed(RunDir(run), [ctrl], rep["mdrnn_id"], 3, seed=7, max_steps=30) is None
    assert controllers_probed(RunDir(run), [ctrl], "another M", 2, seed=7, max_steps=30) is None
    moved = Path(os.path.relpath(ctrl))  # the same file spelled otherwise (a relative --out, then an absolute one)
    assert controllers_probed(RunDir(run), [moved], rep["mdrnn_id"], 2, seed=7, max_steps=30) == rep
    other = tmp_path / "other.npz"
    save_controller(other, cfg, params * 0.5)
    assert controllers_probed(RunDir(run), [other], rep["mdrnn_id"], 2, seed=7, max_steps=30) is None
    assert "ends_expected_biased" not in ep
    # a run whose dream shifts M's done logit (dream.done_bias): probed again, with the ends that dream expects
    assert controllers_probed(RunDir(run), [ctrl], rep["mdrnn_id"], 2, seed=7, max_steps=30, done_bias=1.5) is None
    rep_b = controller_probes(run, [ctrl], episodes=2, seed=7, max_steps=30, done_bias=1.5)
    ep_b = rep_b["controllers"][str(ctrl)]["episodes"][0]
    assert np.isclose(ep_b["ends_expected"], ends, atol=1e-5) and np.isclose(ep_b["ends_expected_biased"], ends_b,
                                                                              atol=1e-5)
    assert ends_b > 2 * ends and rep_b["done_bias"] == 1.5 and "the dream, done logit +1.5" in controller_table(rep_b)
    assert controllers_probed(RunDir(run), [ctrl], rep["mdrnn_id"], 2, seed=7, max_steps=30, done_bias=1.5) == rep_b
    assert controllers_probed(RunDir(run), [ctrl], rep["mdrnn_id"], 2, seed=7, max_steps=30) is None
    assert controller_probes(run, [ctrl], episodes=2, seed=7, max_steps=30) == rep  # back to the unbiased probes
    # other probes (a user's fidelity.py --controllers, or the pipeline's stage after them) keep the earlier ones aside
    before = (run / "fidelity_controllers.json").read_bytes()
    rep2 = controller_probes(run, [other], episodes=1, seed=7, max_steps=30)
    kept = run / f"fidelity_controllers.{hashlib.sha256(before).hexdigest()[:8]}.json"
    assert kept.read_bytes() == before and list(rep2["controllers"]) == [str(other)]
    assert json.loads((run / "fidelity_controllers.json").read_text()) == json.loads(json.dumps(rep2))
    (run / "fidelity_controllers.json").unlink()
    out = subprocess.run([sys.executable, "scripts/fidelity.py", str(run), "--no-report", "--controllers", str(ctrl),
                          "--controller-episodes", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| controller | steps |" in out.stdout and str(ctrl) in out.stdout
    assert (run / "fidelity_controllers.json").is_file() and not (run / "fidelity.json").exists()


def test_controller_probes_refuse_bad_controllers_before_playing(tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    with pytest.raises(FileNotFoundError, match="no controller at"):
        controller_probes(run, [run / "checkpoints" / "controller_r0.npz", tmp_path / "none.npz"], episodes=1)
    other = save_controller(tmp_path / "other.npz", ControllerConfig(input_size=5), np.zeros(18))
    with pytest.raises(ValueError, match="reads 5 inputs, this world model gives 24"):
        controller_probes(run, [other], episodes=1)
    with pytest.raises(ValueError, match="--controller-episodes must be >= 1"):
        controller_probes(run, [other], episodes=0)
    assert not (run / "fidelity_controllers.json").exists()
    for args, message in ((["--controllers", str(tmp_path / "none.npz")], "no controller at"),
                          (["--controllers", str(other), "--controller-episodes", "0"], "must be >= 1"),
                          (["--no-report"], "--no-report leaves nothing to do")):
        out = cli("fidelity.py", str(run), *args)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert not (run / "fidelity.json").exists()  # refused before the fidelity report's work


def test_held_dreams_pay_a_constant_controller_beside_the_game(tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    """Each bound and the middle of the action space held in dreams and in real episodes of the same
    length: the dream's returns are seeded (the same call, the same returns), the real ones are the
    game's own for that held action; too few dreams are refused, by the function and the script."""
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    rep = held_dreams(run, dreams=4, real_episodes=1, max_steps=30, temperature=1.0)
    assert json.loads((run / "fidelity_held.json").read_text()) == json.loads(json.dumps(rep))
    assert list(rep["held"]) == ["low", "middle", "high"] and rep["max_steps"] == 30
    high = rep["held"]["high"]
    assert high["action"] == [1.0, 1.0, 1.0] and len(high["dream_returns"]) == 4
    assert np.isclose(high["dream_mean"], np.mean(high["dream_returns"]))
    env = envs.make("car_racing", max_episode_steps=30)
    obs, _ = env.reset(seed=50_000)
    real, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(np.ones(3, np.float32))
        real, done = real + float(r), term or trunc
    env.close()
    assert np.isclose(high["real_mean"], real)
    again = held_dreams(run, dreams=4, real_episodes=0, max_steps=30, temperature=1.0)
    assert [r["dream_returns"] for r in again["held"].values()] == [r["dream_returns"] for r in rep["held"].values()]
    assert again["held"]["low"]["real_mean"] is None and "| high [1.0, 1.0, 1.0] |" in held_table(again)
    with pytest.raises(ValueError, match="--held-dreams must be >= 2"):
        held_dreams(run, dreams=1)
    out = cli("fidelity.py", str(run), "--no-report", "--held-dreams", "1")
    assert out.returncode == 2 and "--held-dreams must be 0 (off) or >= 2" in out.stderr
