"""A 2-node Ray cluster on this machine (two `ray start`, each with its own temp dir, token auth on):
collection joins it through --address; a client without the token gets one clear line."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _kill_nodes(*temp_dirs: Path) -> None:
    """Stop only this cluster's processes (``ray stop`` would stop every Ray on the machine)."""
    marks = [str(t) for t in temp_dirs]
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(m in cmd for m in marks):
            try:
                os.kill(p.info["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    home = tmp_path_factory.mktemp("home")
    head_dir, node_dir = Path("/tmp") / f"wl_head_{os.getpid()}", Path("/tmp") / f"wl_node_{os.getpid()}"
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "SDL_VIDEODRIVER": "dummy"}
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
