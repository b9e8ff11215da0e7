"""The GPU paths: V and M trained on CUDA (bf16 autocast), checkpoints that load on the CPU, the
fused dream step and CMA-ES fitness on CUDA against the CPU. Skipped without a CUDA device."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.dream_step import make_dream_step
from worldlab.mdrnn import MDRNN, MDRNNConfig, sample_mixture
from worldlab.world_model import WorldModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def falling(values: list[float]) -> bool:
    k = max(1, len(values) // 3)
    return float(np.mean(values[-k:])) < float(np.mean(values[:k]))


def test_stages_train_on_cuda_and_load_on_cpu(tiny_data: Path, tmp_path: Path) -> None:
    import json

    from agents.world_models import RunConfig
    from agents.world_models.stages import encode_latents, train_memory, train_vision
    from worldlab.training import TrainConfig

    shutil.copytree(tiny_data, tmp_path / "data")
    cfg = RunConfig(device="cuda", vae_train=TrainConfig(steps=30, lr=1e-3, amp="auto", log_every=3), vae_batch=32,
                    mdrnn_train=TrainConfig(steps=30, lr=3e-3, log_every=3), mdrnn_batch=4, seq_len=32)
    vae = train_vision(tmp_path, cfg, progress=False, tensorboard=False)
    assert vae.device.type == "cuda"
    encode_latents(tmp_path, cfg, vae, progress=False)
    train_memory(tmp_path, cfg, vae.meta["id"], progress=False, tensorboard=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for stage in ("vae", "mdrnn"):
        loss = [r["value"] for r in rows if r["stage"] == stage and r["name"].endswith("loss")]
        assert loss and np.isfinite(loss).all() and falling(loss), stage
    gpu = WorldModel.load(tmp_path, device="cuda")
    cpu = WorldModel.load(tmp_path, device="cpu")
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        mu_gpu, _ = gpu.vae.encode(x.cuda())
        mu_cpu, _ = cpu.vae.encode(x)
    torch.testing.assert_close(mu_gpu.cpu(), mu_cpu, atol=1e-3, rtol=1e-3)


def test_fused_dream_step_on_cuda_matches_the_cell() -> None:
    torch.manual_seed(0)
    m = MDRNN(MDRNNConfig(z_size=8, action_dim=2, hidden=32)).eval()
    fs = make_dream_step(m.cuda(), 5, "cuda")
    z = torch.randn(5, 8)
    fs.reset_rows(slice(None), z.cuda())
    ref, state = m.cpu(), None
    with torch.no_grad():
        for _ in range(6):
            a = torch.rand(5, 2)
            fs.set_actions(a.cuda())
            reward, done = fs.step(deterministic=True)
            pred, state = ref.step(z, a, state)
            z = sample_mixture(pred.logits, pred.mu, pred.logsigma, deterministic=True)
            torch.testing.assert_close(fs.z.cpu(), z, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(reward.cpu(), pred.reward, atol=1e-4, rtol=1e-4)


def test_dream_fitness_on_cuda() -> None:
    from agents.controller import ControllerConfig
    from agents.fitness import DreamFitness

    wm = WorldModel.untrained(bank=8, max_episode_steps=30, seed=0)
    ccfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, "car_racing")
    params = np.random.default_rng(0).normal(0, 0.1, (4, ccfg.num_params))
    fit = DreamFitness(wm, ccfg, popsize=4, rollouts=2, device="cuda", seed=0)
    a, b = fit(params, 0), fit(params, 0)
    assert a.shape == (4,) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # same generation, same seeds: the same scores
