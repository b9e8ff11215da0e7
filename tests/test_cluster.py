"""A 2-node Ray cluster on this machine (two `ray start`, each with its own temp dir, token auth on):
collection joins it through --address; a client without the token gets one clear line; a worker
node lost in the middle of a generation does not lose the generation."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _kill_nodes(*temp_dirs: Path) -> None:
    """Stop only these nodes' processes (``ray stop`` would stop every Ray on the machine): those
    whose command line names a node's temp dir, and their children (Ray's agents rename
    themselves ``ray::DashboardAgent`` and the like, and would outlive their raylet)."""
    marks = [str(t) for t in temp_dirs]
    doomed: list[psutil.Process] = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(m in cmd for m in marks):
            try:
                doomed += [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    for p in doomed:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    home = tmp_path_factory.mktemp("home")
    head_dir, node_dir = Path("/tmp") / f"wl_head_{os.getpid()}", Path("/tmp") / f"wl_node_{os.getpid()}"
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "SDL_VIDEODRIVER": "dummy",
           # a dead node is noticed in ~3 s rather than Ray's default ~15-30 s (the lost-node test)
           "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    try:
        out = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--port=0", "--num-cpus=1",
                              f"--temp-dir={head_dir}", "--include-dashboard=false"],
                             env=env, capture_output=True, text=True, timeout=120, check=True).stdout
        m = re.search(r"ray start --address='([^']+)'", out)
        assert m, out
        address = m.group(1)
        subprocess.run([RAY, "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        f"--temp-dir={node_dir}"], env=env, capture_output=True, text=True, timeout=120, check=True)
        yield address, env
    finally:
        _kill_nodes(head_dir, node_dir)


def test_collect_through_address(ray_cluster: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = ray_cluster
    probe = subprocess.run([sys.executable, "-c", (
        f"import ray; ray.init(address='{address}', log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))")], env=env, capture_output=True, text=True,
        timeout=120)
    assert probe.stdout.strip().splitlines()[-1] == "2", probe.stderr[-2000:]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect.py"), "car_racing", "--episodes", "4",
                        "--workers", "2", "--max-steps", "40", "--out", str(tmp_path / "d"), "--address", address,
                        "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 episodes, 160 steps" in r.stdout


def test_join_without_token_says_how_to_fix(ray_cluster: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = ray_cluster
    env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect.py"), "car_racing", "--episodes", "1",
                        "--out", str(tmp_path / "d"), "--address", address, "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not join the Ray cluster at {address}")
    assert "RAY_AUTH_MODE=token" in last and "RAY_AUTH_TOKEN" in last


@pytest.mark.slow
def test_smoke_pipeline_through_address(ray_cluster: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = ray_cluster
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "dream_train.py"), "car_racing", "--preset", "smoke",
                        "--out", str(out), "--address", address, "--no-progress", "--set", "eval.videos=false"],
                       env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1].startswith("car_racing: real score ")
    assert (out / "eval.json").is_file() and (out / "checkpoints" / "controller.npz").is_file()


LOST_NODE_DRIVER = """
import json, sys, time
import numpy as np, ray
sys.path.insert(0, {tests!r})
from test_agents import CAR, small_wm
from agents.controller import ControllerConfig
from agents.fitness import RealFitness, RealPool

wm = small_wm(max_steps=80)
cfg = ControllerConfig.for_task(CAR, wm.obs_size, "car_racing")
pool = RealPool("car_racing", wm, cfg, workers=2, env_kwargs={{"max_episode_steps": 80}}, address={address!r})
fit = RealFitness(pool, rollouts=2, seed=0)
X = np.random.default_rng(0).standard_normal((4, cfg.num_params)) * 0.1
before = fit(X, 0).tolist()
where = ray.get([a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
                 for a in pool.workers._workers])
sockets = {{n["NodeID"]: n["ObjectStoreSocketName"] for n in ray.nodes() if n["Alive"]}}
print(json.dumps({{"actor_sockets": [sockets[w] for w in where], "pids": pool.workers.call_all("pid")}}), flush=True)
sys.stdin.readline()
after = fit(X, 0).tolist()  # the test kills a node holding one of the actors while this runs
print(json.dumps({{"before": before, "after": after, "ended": time.time(), "pids": pool.workers.call_all("pid"),
                  "alive": sum(n["Alive"] for n in ray.nodes())}}), flush=True)
"""


def _json_line(p: subprocess.Popen) -> dict:
    """The first JSON line ``p`` prints (Ray may print other lines first)."""
    assert p.stdout is not None
    for line in p.stdout:
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"the driver ended without its line: {p.stderr.read()[-3000:] if p.stderr else ''}")


@pytest.mark.slow
def test_a_worker_node_lost_mid_generation_does_not_lose_the_generation(
        ray_cluster: tuple[str, dict[str, str]]) -> None:
    # runs last in this module: it may kill the fixture's second node
    address, env = ray_cluster
    doomed_dir = Path("/tmp") / f"wl_doomed_{os.getpid()}"
    subprocess.run([RAY, "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                    f"--temp-dir={doomed_dir}"], env=env, capture_output=True, text=True, timeout=120, check=True)
    driver = subprocess.Popen([sys.executable, "-c", LOST_NODE_DRIVER.format(tests=str(ROOT / "tests"),
                                                                             address=address)],
                              env={**env, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert driver.stdout is not None and driver.stdin is not None
        placed = _json_line(driver)
        # 2 actors of 1 CPU on three nodes of 1 CPU: at least one sits on a worker node, and one CPU is free
        victims = [s for s in placed["actor_sockets"] if "wl_head_" not in s]
        assert victims, placed
        victim = next((s for s in victims if str(doomed_dir) in s), victims[0])
        node_dir = victim.split("/session_")[0]
        driver.stdin.write("go\n")
        driver.stdin.flush()
        time.sleep(0.3)  # inside the generation: every worker is playing its batch
        _kill_nodes(Path(node_dir))
        killed_at = time.time()
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill_nodes(doomed_dir)
    assert driver.returncode == 0, err[-3000:]
    done = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    assert killed_at < done["ended"]  # the node died while the generation was running
    assert np.array_equal(done["before"], done["after"]), done  # every candidate scored, as without the loss
    lost = placed["actor_sockets"].index(victim)
    assert done["pids"][lost] != placed["pids"][lost]  # that actor was restarted elsewhere
    assert done["alive"] == 2
