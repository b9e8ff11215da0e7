"""M as a choice (issue 16, item 3, the models): the Transformer M and the Mamba M step one at a
time exactly as they run teacher-forced, train on the MDN-RNN's loss, and load by family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worldlab.mdrnn import MDRNN, MDRNNConfig
from worldlab.sequence_m import SequenceMConfig, load_m, make_m


def _batch(b: int = 4, t: int = 24, z: int = 6, a: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.cumsum(0.3 * torch.randn(b, t + 1, z, generator=g), dim=1)  # smooth, predictable latents
    return {"mu": mu, "logvar": torch.full((b, t + 1, z), -6.0), "actions": torch.rand(b, t, a, generator=g),
            "rewards": mu[:, 1:, 0].clone(), "terminated": torch.zeros(b, t), "mask": torch.ones(b, t)}


@pytest.mark.parametrize("family", ["transformer_m", "mamba_m"])
def test_dream_steps_equal_the_teacher_forced_outputs_over_three_windows(family: str) -> None:
    torch.manual_seed(0)
    m = make_m(family, z_size=6, action_dim=3, width=32, layers=2, heads=4, window=8, state=4).eval()
    z, a = torch.randn(3, 24, 6), torch.rand(3, 24, 3)  # three windows of 8
    with torch.no_grad():
        full, last = m(z, a)
        state, preds = m.initial_state(3), []
        for t in range(24):
            p, state = m.step(z[:, t], a[:, t], state)
            preds.append(p)
    for name in ("mu", "logsigma", "logits", "reward", "done_logit"):
        stepped = torch.stack([getattr(p, name) for p in preds], dim=1)
        err = (stepped - getattr(full, name)).abs().max().item()
        assert err < 1e-5, (name, err)
    assert torch.allclose(state["h"], last["h"], atol=1e-5) and state["h"].shape == (3, 32)


def test_transformer_m_rows_may_be_at_different_steps() -> None:
    torch.manual_seed(0)
    m = make_m("transformer_m", z_size=4, action_dim=2, width=16, layers=1, heads=2, window=4).eval()
    z, a = torch.randn(2, 10, 4), torch.rand(2, 10, 2)
    with torch.no_grad():
        ref, _ = m(z[1:, :6], a[1:, :6])  # row 1 alone, from its own start
        state = m.initial_state(2)
        for t in range(4):  # row 0 runs 4 steps ahead
            one = {"h": state["h"][:1], "k": state["k"][:, :1], "v": state["v"][:, :1], "t": state["t"][:1]}
            _, one = m.step(z[:1, t], a[:1, t], one)
            state["h"][:1], state["k"][:, :1], state["v"][:, :1], state["t"][:1] = one["h"], one["k"], one["v"], one["t"]
        preds = []
        for t in range(6):  # now both rows step together; row 1 starts at its step 0
            p, state = m.step(torch.stack([z[0, 4 + t], z[1, t]]), torch.stack([a[0, 4 + t], a[1, t]]), state)
            preds.append(p.mu[1])
    assert torch.allclose(torch.stack(preds), ref.mu[0], atol=1e-5)


@pytest.mark.parametrize("family", ["transformer_m", "mamba_m"])
def test_sequence_ms_train_on_the_mdn_loss(family: str) -> None:
    torch.manual_seed(0)
    m = make_m(family, z_size=6, action_dim=3, width=32, layers=1, heads=4, window=8, state=4)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    batch, losses = _batch(), []
    for _ in range(40):
        out = m.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert set(out) == {"loss", "nll", "reward_mse", "done_bce"}


def test_mamba_m_scans_agree() -> None:
    torch.manual_seed(0)
    loop = make_m("mamba_m", z_size=5, action_dim=2, width=16, layers=2, state=4, scan="loop").eval()
    par = make_m("mamba_m", z_size=5, action_dim=2, width=16, layers=2, state=4, scan="parallel").eval()
    par.load_state_dict(loop.state_dict())
    z, a = torch.randn(2, 20, 5), torch.rand(2, 20, 2)
    with torch.no_grad():
        assert torch.allclose(loop(z, a)[0].mu, par(z, a)[0].mu, atol=1e-5)


def test_checkpoints_say_which_m_they_hold(tmp_path: Path) -> None:
    for family in ("transformer_m", "mamba_m"):
        m = make_m(family, z_size=4, action_dim=2, width=16, layers=1, heads=2, window=4, state=4)
        m.save(tmp_path / f"{family}.pt", meta={"task": "car_racing"})
        back = load_m(tmp_path / f"{family}.pt")
        assert type(back) is type(m) and back.config == m.config and back.meta["task"] == "car_racing"
        assert all(torch.equal(x, y) for x, y in zip(back.state_dict().values(), m.state_dict().values(), strict=True))
    MDRNN(MDRNNConfig(z_size=4, action_dim=2, hidden=8)).save(tmp_path / "mdrnn.pt")
    assert isinstance(load_m(tmp_path / "mdrnn.pt"), MDRNN)
    torch.save({"family": "vae", "config": {}, "model": {}}, tmp_path / "v.pt")
    with pytest.raises(ValueError, match="is not an M checkpoint \\(family 'vae'"):
        load_m(tmp_path / "v.pt")
    with pytest.raises(ValueError, match="unknown M 'lstm'"):
        make_m("lstm")
    with pytest.raises(ValueError, match="must split into 3 heads"):
        make_m("transformer_m", width=16, heads=3)
    assert SequenceMConfig(width=64).hidden == 64


@pytest.mark.parametrize("family", ["transformer_m", "mamba_m"])
def test_the_dream_step_runs_a_sequence_m(family: str) -> None:
    from envs.dream_step import SequenceMDreamStep, make_dream_step
    from worldlab.mdrnn import sample_mixture

    torch.manual_seed(0)
    m = make_m(family, z_size=4, action_dim=2, width=16, layers=2, heads=2, window=4, state=4).eval()
    step = make_dream_step(m, 3, "cpu")
    assert isinstance(step, SequenceMDreamStep) and step.obs_size == 20
    z0, acts = torch.randn(3, 4), torch.rand(10, 3, 2)
    step.reset_rows(slice(None), z0)
    state, z, rewards = m.initial_state(3), z0.clone(), []
    for t in range(10):  # deterministic: the most likely next latent, by hand
        step.set_actions(acts[t])
        r, _ = step.step(deterministic=True)
        rewards.append(r.clone())
        with torch.no_grad():
            p, state = m.step(z, acts[t], state)
        z = sample_mixture(p.logits, p.mu, p.logsigma, deterministic=True)
        assert torch.allclose(step.z, z, atol=1e-5) and torch.allclose(step.h, state["h"], atol=1e-5)
        assert torch.allclose(r, p.reward, atol=1e-5)
    step.reset_rows(torch.tensor([1]), z0[1:2])  # a reset row starts again from an empty past
    assert torch.equal(step.z[1], z0[1]) and not step.h[1].any()
    step.set_actions(acts[0])
    step.step(deterministic=True)
    with torch.no_grad():
        p, _ = m.step(z0[1:2], acts[0, 1:2], m.initial_state(1))
    assert torch.allclose(step.z[1], sample_mixture(p.logits, p.mu, p.logsigma, deterministic=True)[0], atol=1e-5)
    with pytest.raises(ValueError, match="ensembles and dropout dreams are built for the MDN-RNN"):
        make_dream_step(m, 3, "cpu", dropout=0.1)
    with pytest.raises(ValueError, match=f"a {family} starts from its state tensors .* by name, got tuple"):
        step.reset_rows(slice(None), z0, state0=(torch.zeros(3, 16), torch.zeros(3, 16)))


@pytest.mark.parametrize("family", ["transformer_m", "mamba_m"])
def test_a_bf16_dream_step_is_the_bf16_m_and_close_to_the_fp32_one(family: str) -> None:
    """dream.precision=bf16: the dream step plays M in bf16 (weights and state), z, h and the reward
    in fp32; teacher-forced, the bf16 M's predictions are within bf16 rounding of the fp32 M's."""
    import copy

    from envs.dream_step import make_dream_step
    from worldlab.mdrnn import sample_mixture

    torch.manual_seed(0)
    m = make_m(family, z_size=8, action_dim=3, width=32, layers=2, heads=2, window=4, state=4).eval()
    m16 = copy.deepcopy(m).to(torch.bfloat16)
    step = make_dream_step(m, 6, "cpu", precision="bf16")
    assert all(v.dtype == torch.bfloat16 for v in step.state.values() if v.is_floating_point())
    assert next(m.parameters()).dtype == torch.float32  # the caller's M is left as it was
    z0, acts, zs = torch.randn(6, 8), torch.rand(12, 6, 3), torch.randn(12, 6, 8)
    step.reset_rows(slice(None), z0)
    dream, s16, s32, z = m16.initial_state(6), m16.initial_state(6), m.initial_state(6), z0.clone()
    for t in range(12):  # past the window: the ring cache wraps
        step.set_actions(acts[t])
        r, _ = step.step(deterministic=True)
        with torch.no_grad():
            p, dream = m16.step(z, acts[t], dream)  # the dream by hand
            q16, s16 = m16.step(zs[t], acts[t], s16)  # teacher-forced, both precisions
            q32, s32 = m.step(zs[t], acts[t], s32)
        z = sample_mixture(p.logits, p.mu, p.logsigma, deterministic=True)
        assert step.obs.dtype == torch.float32 and r.dtype == torch.float32 and p.mu.dtype == torch.float32
        assert torch.allclose(step.z, z, atol=1e-5) and torch.allclose(r, p.reward, atol=1e-5)
        for x16, x32 in ((q16.mu, q32.mu), (q16.logits, q32.logits), (q16.reward, q32.reward),
                         (s16["h"].float(), s32["h"])):
            assert torch.allclose(x16, x32, atol=0.05, rtol=0.05), (t, (x16 - x32).abs().max())
    assert (q16.mu - q32.mu).abs().max() > 0  # it did run in bf16
    with pytest.raises(ValueError, match="dream.precision must be one of fp32, bf16, got 'fp16'"):
        make_dream_step(m, 6, "cpu", precision="fp16")
    with pytest.raises(ValueError, match="dream.precision=bf16 is built for a Transformer or Mamba M"):
        make_dream_step(MDRNN(MDRNNConfig(z_size=8, action_dim=3, hidden=16)), 6, "cpu", precision="bf16")


@pytest.mark.slow
def test_the_compiled_mamba_dream_equals_the_eager_one() -> None:
    from envs.dream_step import make_dream_step

    torch.manual_seed(0)
    m = make_m("mamba_m", z_size=8, action_dim=3, width=32, layers=2).eval()
    eager, fused = make_dream_step(m, 16, "cpu"), make_dream_step(m, 16, "cpu", compile=True)
    assert fused.compiled and not make_dream_step(make_m("transformer_m", z_size=8, action_dim=3, width=32,
                                                         heads=2), 16, "cpu", compile=True).compiled
    z0, acts = torch.randn(16, 8), torch.rand(20, 16, 3)
    g_eager, g_fused = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for st in (eager, fused):
        st.reset_rows(slice(None), z0)
    for t in range(20):  # sampled steps, rows reset to an empty past and to a banked state on the way
        for st in (eager, fused):
            st.set_actions(acts[t])
        r_e, d_e = eager.step(1.0, generator=g_eager)
        r_f, d_f = fused.step(1.0, generator=g_fused)
        assert torch.allclose(eager.obs, fused.obs, atol=1e-5) and torch.allclose(r_e, r_f, atol=1e-5)
        assert torch.equal(d_e, d_f)
        if t == 6:
            for st in (eager, fused):
                st.reset_rows(torch.tensor([1, 3]), z0[:2])
        if t == 12:
            from worldlab.sequence_m import state_entries

            bank = {k: v[[0, 5]][None].clone() for k, v in state_entries(m, fused.state).items()}  # (1, 2, ...)
            for st in (eager, fused):
                st.reset_rows(torch.tensor([2, 7]), z0[2:4], state0=bank)
    assert fused.compiled


@pytest.mark.parametrize("family", ["transformer_m", "mamba_m"])
def test_state_rows_and_prefixes_serve_any_m(family: str) -> None:
    from worldlab.sequence_m import (
        put_rows,
        read_prefix,
        state_entries,
        state_from_entries,
        state_h,
        take_rows,
    )

    torch.manual_seed(0)
    for m in (make_m(family, z_size=4, action_dim=2, width=16, layers=2, heads=2, window=4, state=4).eval(),
              MDRNN(MDRNNConfig(z_size=4, action_dim=2, hidden=16)).eval()):
        z, a = torch.randn(5, 11, 4), torch.rand(5, 11, 2)
        state = read_prefix(m, z, a)  # = the state after stepping the 11 steps one by one
        stepped = m.initial_state(5)
        with torch.no_grad():
            for t in range(11):
                _, stepped = m.step(z[:, t], a[:, t], stepped)
        assert torch.allclose(state_h(state), state_h(stepped), atol=1e-5) and state_h(state).shape == (5, 16)
        idx = torch.tensor([3, 0])
        rows = take_rows(m, state, idx)
        assert torch.equal(state_h(rows), state_h(state)[idx])
        fresh = m.initial_state(5)
        put_rows(m, fresh, idx, rows)  # rows 3 and 0 carry on exactly; the others stay empty
        with torch.no_grad():
            p_full, _ = m.step(z[:, -1], a[:, -1], state_from_entries(m, state_entries(m, state)))
            p_rows, _ = m.step(z[:, -1], a[:, -1], fresh)
        assert torch.allclose(p_rows.mu[idx], p_full.mu[idx], atol=1e-6)
        assert not state_h(fresh)[[1, 2, 4]].any()


@pytest.mark.parametrize("family", ["transformer_m", "mamba_m"])
def test_a_dream_starts_mid_episode_from_a_sequence_ms_bank(family: str, tmp_path: Path) -> None:
    from envs.dream import DreamVectorEnv
    from worldlab.sequence_m import read_prefix, state_entries
    from worldlab.world_model import WorldModel, WorldModelError

    torch.manual_seed(0)
    base = WorldModel.untrained(hidden=16, z_size=4)
    m = make_m(family, z_size=4, action_dim=3, width=16, layers=2, heads=2, window=4, state=4).eval()
    z, a = torch.randn(1, 9, 4), torch.rand(1, 9, 3)
    prefix = state_entries(m, read_prefix(m, z, a))  # M's state after 9 real steps: one banked start
    bank = {"mu": z[:, -1], "logvar": torch.full((1, 4), -20.0), **{k: v[None] for k, v in prefix.items()}}
    wm = WorldModel(base.vae, m, task="car_racing", action_space=base.action_space, max_episode_steps=50,
                    start_mu=base.start_mu, start_logvar=base.start_logvar, mid_bank=bank)
    wm.save(tmp_path)
    wm = WorldModel.load(tmp_path)  # the checkpoint says which M it holds, and keeps the whole banked state
    assert wm.family == family and set(wm.mid_bank) == {"mu", "logvar", *m.STATE_ROW_DIM}
    env = DreamVectorEnv(world_model=wm, num_envs=2, start="mid", deterministic=True)
    obs, _ = env.reset(seed=0)
    assert torch.allclose(torch.as_tensor(obs[:, 4:]), prefix["h"].expand(2, -1), atol=1e-6)  # C sees M's banked h
    act = torch.tensor([[0.3, 0.5, 0.0]])
    obs, r, *_ = env.step(act.expand(2, -1).numpy())
    with torch.no_grad():  # the dream goes on from the banked past exactly as M does from the real one
        p, state = m.step(z[:, -1], act, read_prefix(m, z, a))
    assert torch.allclose(torch.as_tensor(obs[:, 4:]), state["h"].expand(2, -1), atol=1e-5)
    assert torch.allclose(torch.as_tensor(r, dtype=torch.float32), p.reward.expand(2), atol=1e-5)
    env.close()
    half = DreamVectorEnv(world_model=wm, num_envs=2, start="mid", deterministic=True, precision="bf16")
    h0, _ = half.reset(seed=0)  # the fp32 bank, read into the bf16 dream's state
    obs16, r16, *_ = half.step(act.expand(2, -1).numpy())
    assert h0.dtype == obs16.dtype == np.float32 and np.allclose(h0[:, 4:], prefix["h"].expand(2, -1), atol=0.02)
    assert np.allclose(obs16[:, 4:], obs[:, 4:], atol=0.05) and np.allclose(r16, r, atol=0.05)
    half.close()
    bad = {**bank, "h": torch.zeros(1, 1, 8)}
    with pytest.raises(WorldModelError, match="bank's h must be \\(members >= 1, 1, 16\\)"):
        WorldModel(base.vae, m, task="car_racing", action_space=base.action_space, max_episode_steps=50,
                   start_mu=base.start_mu, mid_bank=bad)
