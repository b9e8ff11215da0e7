"""V and M on two Ray Train workers (real DDP over gloo, two worker processes): losses fall, the
checkpoints are the single-process ones (no ``module.`` keys), resume continues from the saved
step, and a bad ``--train-workers`` is one clear line."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from agents.world_models import DreamTrainer, RunConfig, override, preset
from agents.world_models.stages import encode_latents, train_memory, train_vision
from worldlab.io import torch_load
from worldlab.logging import read_metrics
from worldlab.mdrnn import MDRNN, MDRNNConfig
from worldlab.training import TrainConfig
from worldlab.vae import ConvVAE, VAEConfig

ROOT = Path(__file__).resolve().parents[1]
FIRST, V_STEPS, M_STEPS = 4, 16, 8
SMALL_V = VAEConfig(z_size=32, channels=(8, 16, 32, 64), dec_channels=(32, 16, 8))
SMALL_M = MDRNNConfig(z_size=32, action_dim=3, hidden=32)


def v_cfg(steps: int = V_STEPS) -> TrainConfig:
    return TrainConfig(steps=steps, lr=2e-3, log_every=2, checkpoint_every=4)


def m_cfg(steps: int = M_STEPS) -> TrainConfig:
    return TrainConfig(steps=steps, lr=3e-3, log_every=2, checkpoint_every=4)


def train_vae(run: Path, steps: int = V_STEPS, batch: int = 16, workers: int = 1) -> ConvVAE:
    cfg = RunConfig(vae=SMALL_V, vae_train=v_cfg(steps), vae_batch=batch, train_workers=workers)
    return train_vision(run, cfg, progress=False, tensorboard=False)


def train_mdrnn(run: Path, steps: int = M_STEPS, workers: int = 1) -> MDRNN:
    cfg = RunConfig(vae=SMALL_V, mdrnn=SMALL_M, mdrnn_train=m_cfg(steps), mdrnn_batch=4, seq_len=16,
                    train_workers=workers)
    return train_memory(run, cfg, progress=False, tensorboard=False)


def falling(values: list[float]) -> bool:
    k = max(1, len(values) // 3)
    return float(np.mean(values[-k:])) < float(np.mean(values[:k]))


@pytest.fixture(scope="module")
def ddp_run(tiny_data: Path, ray_session, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny data; V trained FIRST steps in this process, then (resumed from
    that checkpoint) up to V_STEPS on 2 Ray Train workers. One Ray Train run: each costs seconds."""
    run = tmp_path_factory.mktemp("ddp_run")
    shutil.copytree(tiny_data, run / "data")
    train_vae(run, FIRST)
    train_vae(run, workers=2)
    return run


def test_v_trains_on_two_workers_from_the_saved_step(ddp_run: Path) -> None:
    recs = read_metrics(ddp_run, "vae", "vae/loss")
    # steps 2, 4 from the single process; the workers went on from the saved step 4, logged once (rank 0)
    assert [r["step"] for r in recs] == list(range(2, V_STEPS + 1, 2))
    values = [r["value"] for r in recs]
    assert all(math.isfinite(v) for v in values) and falling(values), values
    ddp = values[FIRST // 2:]
    assert falling(ddp) and max(ddp[-2:]) < values[0], values
    assert (ddp_run / "samples" / "vae_recon.png").stat().st_size > 0  # rank 0's sample grids
    assert not list((ddp_run / "checkpoints").glob(".*")) and not list(ddp_run.glob("**/ray_results"))  # no scratch


def test_checkpoints_are_the_single_process_format(ddp_run: Path) -> None:
    ck = ddp_run / "checkpoints"
    vae = ConvVAE.load(ck / "vae.pt")
    assert vae.meta["steps"] == V_STEPS and vae.meta["train_workers"] == 2
    state = torch_load(ck / "vae.train.pt")
    for keys in (state["model"], torch_load(ck / "vae.pt")["model"]):
        assert not [k for k in keys if k.startswith(("module.", "model."))]
    assert state["step"] == V_STEPS and state["config"]["z_size"] == 32 and state["train_config"]["seed"] == 0
    assert len(state["optimizers"]["model"]["state"]) == len(list(vae.parameters()))  # Adam moments per parameter
    for k, v in vae.state_dict().items():  # the trained weights came back to the driver
        assert torch.equal(v, state["model"][k]), k
    assert vae.reconstruct(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 3, 64, 64)


def test_a_ddp_checkpoint_resumes_in_one_process(ddp_run: Path) -> None:
    n_logged = len(read_metrics(ddp_run, "vae", "vae/loss"))
    vae = train_vae(ddp_run, V_STEPS + 4)
    new = read_metrics(ddp_run, "vae", "vae/loss")[n_logged:]
    assert [r["step"] for r in new] == [V_STEPS + 2, V_STEPS + 4]  # from the saved step, not from scratch
    assert vae.meta["steps"] == V_STEPS + 4 and "train_workers" not in vae.meta


@pytest.mark.slow
def test_m_trains_on_two_workers_and_resumes(tiny_data: Path, ray_session, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_data, run / "data")
    train_vae(run, FIRST)
    encode_latents(run, RunConfig(vae=SMALL_V), progress=False)
    train_mdrnn(run, workers=2)
    recs = read_metrics(run, "mdrnn", "mdrnn/loss")
    values = [r["value"] for r in recs]
    assert [r["step"] for r in recs] == list(range(2, M_STEPS + 1, 2))
    assert all(math.isfinite(v) for v in values) and falling(values), values
    m = MDRNN.load(run / "checkpoints" / "mdrnn.pt")
    assert m.meta["steps"] == M_STEPS and m.meta["start_mu"].shape == (5, 32)
    assert not [k for k in torch_load(run / "checkpoints" / "mdrnn.train.pt")["model"] if k.startswith("module.")]
    train_mdrnn(run, M_STEPS + 4, workers=2)
    assert [r["step"] for r in read_metrics(run, "mdrnn", "mdrnn/loss")[len(recs):]] == [M_STEPS + 2, M_STEPS + 4]
    assert MDRNN.load(run / "checkpoints" / "mdrnn.pt").meta["steps"] == M_STEPS + 4


@pytest.mark.slow
def test_a_worker_error_comes_back_as_itself(tiny_data: Path, ray_session, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_data, run / "data")
    cfg = RunConfig(vae=SMALL_V, vae_train=TrainConfig(steps=50, lr=1e12, log_every=2, checkpoint_every=100),
                    vae_batch=16, train_workers=2)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train_vision(run, cfg, progress=False, tensorboard=False)
    assert not (run / "checkpoints" / "vae.pt").exists()


KILLED = """
import sys
from worldlab.ray_utils import init_ray
from agents.world_models import RunConfig
from agents.world_models.stages import train_vision
from worldlab.training import TrainConfig
from worldlab.vae import VAEConfig
init_ray(num_cpus=2)
cfg = RunConfig(vae=VAEConfig(channels=(8, 16, 32, 64), dec_channels=(32, 16, 8)),
                vae_train=TrainConfig(steps=100000, lr=2e-3, log_every=2, checkpoint_every=4), vae_batch=16,
                train_workers=2)
train_vision(sys.argv[1], cfg, progress=False, tensorboard=False)
"""


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_from_its_last_checkpoint(tiny_data: Path, ray_session, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_data, run / "data")
    state_path = run / "checkpoints" / "vae.train.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(run)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 400
        while not state_path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert state_path.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
        time.sleep(3)
    finally:  # a hard kill of the driver, its local Ray and the training workers (nothing flushes)
        procs = [psutil.Process(proc.pid)]
        with contextlib.suppress(psutil.NoSuchProcess):
            procs += procs[0].children(recursive=True)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _, alive = psutil.wait_procs(procs, timeout=60)
        assert not alive
        proc.wait()
    saved = int(torch_load(state_path)["step"])
    assert saved >= 4 and saved % 4 == 0 and not (run / "checkpoints" / "vae.pt").exists()
    vae = train_vae(run, saved + 4, workers=2)
    # the killed run may have logged a step after its last checkpoint: the resume drops it and logs it anew,
    # so the log holds every step once, in order, up to the new end
    steps = [r["step"] for r in read_metrics(run, "vae", "vae/loss")]
    assert steps == list(range(2, saved + 5, 2))
    assert vae.meta["steps"] == saved + 4 and torch_load(state_path)["step"] == saved + 4
    assert not list((run / "checkpoints").glob(".*"))  # the killed run's scratch folder was cleared


def test_bad_worker_counts_fail_with_one_line(tiny_data: Path, tmp_path: Path, ray_session,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import dream_train
    finally:
        sys.path.pop(0)
    rc = dream_train.main(["car_racing", "--train-workers", "0", "--out", str(tmp_path / "run"), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "--train-workers" in lines[0], lines
    assert not (tmp_path / "run").exists()
    run = tmp_path / "r"
    shutil.copytree(tiny_data, run / "data")
    with pytest.raises(ValueError, match="--train-workers"):
        train_vae(run, workers=0)
    with pytest.raises(ValueError, match="needs 3 CPUs"):  # more workers than the Ray cluster has cores
        train_vae(run, workers=3)
    with pytest.raises(ValueError, match="needs at least 9 training episodes"):
        train_vae(run, workers=9)
    with pytest.raises(ValueError, match="less than its batch of 2000"):
        train_vae(run, batch=4000, workers=2)
    assert not (run / "checkpoints").exists()


def test_a_run_may_resume_with_another_number_of_training_workers(tmp_path: Path) -> None:
    cfg = preset("smoke", "car_racing")
    DreamTrainer(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["train_workers"]  # a run started before the field existed reads as train_workers=1
    (tmp_path / "config.json").write_text(json.dumps(saved))
    DreamTrainer(override(cfg, ["train_workers=2"]), tmp_path, progress=False)
    assert RunConfig.load(tmp_path).train_workers == 2
    with pytest.raises(ValueError, match="differs in cma.popsize"):
        DreamTrainer(override(cfg, ["train_workers=2", "cma.popsize=4"]), tmp_path, progress=False)
