"""generators.clip: the contrastive loss, captions, zero-shot use, save/load, and CLIP's roles in the lab
(text reward in a wrapper and in DreamFitness, prompt-chosen dream starts, the text-conditioned prior)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from generators.clip import (
    CLIP,
    CaptionBatches,
    CaptionData,
    CLIPConfig,
    auroc,
    best_matches,
    digit_captions,
    fit_clip,
    fit_text_prior,
    info_nce,
    normalize,
    recall_at_1,
    sample_text,
    text_reward,
    zero_shot,
)
from worldlab.training import TrainConfig

pytestmark = pytest.mark.usefixtures("suggested_torch_threads")

TINY = {"embed_dim": 16, "image_width": 16, "image_layers": 1, "text_layers": 1, "text_heads": 2,
        "text_width": 16, "context": 32}


def tiny_clip(shape: tuple[int, ...] = (4,), seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(CLIPConfig(shape=shape, **TINY))


def toy_points(n: int = 128, seed: int = 0) -> CaptionData:
    """Two well-separated clusters of 4-d points captioned "left" and "right"."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=g) * 0.3
    x[:, 0] += torch.where(y == 1, 3.0, -3.0)
    return CaptionData("toy", x, y[:, None], ["left", "a point on the left", "right", "a point on the right"],
                       torch.tensor([[0], [0], [1], [1]]))


def test_info_nce_on_known_similarities() -> None:
    b = 6
    sure = 50.0 * torch.eye(b)
    assert info_nce(sure).item() < 1e-6  # every pair certain of its own match
    assert info_nce(torch.zeros(b, b)).item() == pytest.approx(math.log(b))  # no information: log B
    logits = torch.randn(b, b, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(info_nce(logits), info_nce(logits.T))  # symmetric in images and texts
    assert torch.allclose(info_nce(logits, torch.eye(b, dtype=torch.bool)), info_nce(logits))
    # by hand: mean of the row and the column cross-entropies
    want = 0.5 * (-logits.log_softmax(1).diag().mean() - logits.log_softmax(0).diag().mean())
    assert torch.allclose(info_nce(logits), want)
    # shared captions: two items that fit each other's captions split their target evenly
    match = torch.eye(b, dtype=torch.bool)
    match[0, 1] = match[1, 0] = True
    tied = 50.0 * match.float()
    assert info_nce(tied, match).item() == pytest.approx(2 / b * math.log(2), abs=1e-4)
    with pytest.raises(ValueError, match="at least one match"):
        info_nce(logits, torch.zeros(b, b, dtype=torch.bool))


def test_tokenizer_and_captions_round_trip() -> None:
    clip = tiny_clip()
    tok = clip.tokenize(["On the  ROAD", "a 3"])
    assert tok.shape == (2, 32) and tok.dtype == torch.long
    assert clip.tokenizer.decode(tok[0]).rstrip("\n") == "on the road" == normalize("On the  ROAD")
    assert clip.tokenizer.decode(tok[1]).startswith("a 3\n")
    with pytest.raises(ValueError, match="reads at most 31: shorten it"):
        clip.tokenize(["x" * 40])
    with pytest.raises(ValueError, match="not in this model's vocabulary"):
        clip.tokenize(["on the road!"])
    # the text embedding is the end token's: padding after it changes nothing (causal blocks)
    a = clip.text_features(tok[:1])
    b = tok[:1].clone()
    b[0, -1] = 5
    assert torch.allclose(a, clip.text_features(b), atol=1e-6)
    d = digit_captions(torch.zeros(3, 1, 8, 8), torch.tensor([3, 0, 9]))
    for i, k in enumerate([3, 0, 9]):  # each item draws only captions of its digit
        fits = [d.texts[j] for j in d.options[int(d.key[i])].tolist()]
        assert "the digit " + ["three", "zero", "nine"][i] in fits and all(str(k) in t or len(t) > 1 for t in fits)


def test_car_captions_from_signals() -> None:
    from agents.captions import ATTRIBUTES, canonical, caption_set, frame_attributes

    t = 12
    steer = np.zeros(t)
    steer[:4] = -0.8  # left first
    ep = {"off_road": np.array([0] * 6 + [1] * 6, bool), "speed": np.linspace(0, 60, t).astype(np.float32),
          "actions": np.stack([steer, np.ones(t), np.zeros(t)], 1).astype(np.float32)}
    a = frame_attributes(ep)
    assert a.shape == (t, 3)
    assert a[0].tolist() == [0, 0, 1] and a[-1].tolist() == [1, 2, 0]  # on road, stopped, left / grass, fast
    texts, said = caption_set()
    assert len(texts) == len(set(texts)) == len(said) and said.shape[1] == len(ATTRIBUTES)
    full = said[texts.index(canonical((1, 2, 1)))]
    assert full.tolist() == [1, 2, 1] and canonical((1, 2, 1)) == "on the grass, fast, turning left"
    assert said[texts.index("on the grass")].tolist() == [1, -1, -1]
    with pytest.raises(ValueError, match="lacks"):
        frame_attributes({"speed": ep["speed"]})


def test_batches_mark_every_fitting_pair() -> None:
    data = toy_points(16)
    batches = CaptionBatches(data, 8, torch.arange(len(data.texts)), seed=0)
    x, ids, match = next(iter(batches))
    assert x.shape == (8, 4) and match.shape == (8, 8) and match.diag().all()
    side = data.text_attrs[ids][:, 0]  # what each drawn caption says
    item = torch.where(x[:, 0] > 0, 1, 0)
    assert torch.equal(match, item[:, None] == side[None, :])


def test_zero_shot_and_retrieval_on_a_separable_toy_set() -> None:
    data = toy_points()
    clip = tiny_clip()
    hist = fit_clip(clip, data, TrainConfig(steps=60, lr=3e-3, log_every=5, seed=0), batch_size=32)
    assert all(math.isfinite(v) for v in hist["loss"]) and np.mean(hist["loss"][-3:]) < np.mean(hist["loss"][:3])
    test = toy_points(64, seed=1)
    pred = zero_shot(clip, test.x, [["left", "a point on the left"], "a point on the right"])
    assert (pred == test.attrs[:, 0]).float().mean().item() == 1.0
    sim = clip.similarity(test.x, ["left", "right"])
    fits = test.fits(test.attrs, torch.tensor([0, 2]))
    assert recall_at_1(sim, fits, k=2) == 1.0 and recall_at_1(sim.T, fits.T, k=2, trials=50) == 1.0
    assert auroc(sim[:, 1] - sim[:, 0], test.attrs[:, 0] == 1) == 1.0
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    with pytest.raises(ValueError, match="reads inputs of shape"):
        clip.encode_image(torch.zeros(2, 5))


def test_save_load_round_trip(tmp_path) -> None:
    clip = tiny_clip((1, 8, 8))
    d = digit_captions(torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10)
    fit_clip(clip, d, TrainConfig(steps=2, log_every=1), batch_size=8, out=tmp_path / "run")
    assert (tmp_path / "run" / "clip_train.pt").exists()
    clip.save(tmp_path / "clip.pt", meta={"source": "digits"})
    raw = torch.load(tmp_path / "clip.pt", weights_only=True)
    assert raw["family"] == "clip" and tuple(raw["config"]["shape"]) == (1, 8, 8)
    loaded = CLIP.load(tmp_path / "clip.pt")
    assert loaded.config == clip.config and loaded.meta["source"] == "digits"
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(loaded.similarity(x, ["a 3", "the digit nine"]), clip.similarity(x, ["a 3", "the digit nine"]))
    assert CLIP.load(tmp_path / "run" / "clip_train.pt").config == clip.config  # the training checkpoint too
    torch.save({"family": "vae", "config": {}, "model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a worldlab CLIP checkpoint"):
        CLIP.load(tmp_path / "other.pt")


class _VectorEnv(gym.Env):
    """Observations: a fixed 6-vector; reward 1 per step."""

    observation_space = gym.spaces.Box(-10, 10, (6,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.arange(6, dtype=np.float32) / 6, {}

    def step(self, action):
        return np.arange(6, dtype=np.float32) / 6, 1.0, False, False, {}


def test_text_reward_wrapper_adds_the_term() -> None:
    from generators.clip_env import TextReward

    clip = tiny_clip()
    env = TextReward(_VectorEnv(), clip, "stay on the road", scale=0.5)
    obs, _ = env.reset(seed=0)
    _, r, _, _, info = env.step(0)
    want = float(text_reward(clip, "stay on the road")(torch.as_tensor(obs[:4])[None])[0])
    assert info["base_reward"] == 1.0 and info["generator_term"] == pytest.approx(want, abs=1e-6)
    assert r == pytest.approx(1.0 + 0.5 * want, abs=1e-6) and -1.0 <= want <= 1.0
    with_base = text_reward(clip, "on the road", baseline="on the grass")(torch.as_tensor(obs[:4])[None])
    assert with_base.shape == (1,)
    ref = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    pen = text_reward(clip, "on the road", reference=ref, quantile=0.5)
    raw = text_reward(clip, "on the road")
    assert torch.allclose(pen(ref), (raw(ref) - pen.threshold).clamp(max=0))  # a penalty only, zero above the median
    assert (pen(ref) == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def _tiny_world_model():
    from worldlab.world_model import WorldModel

    return WorldModel.untrained(z_size=4, hidden=8, gaussians=2, bank=16, max_episode_steps=5)


def test_prompt_starts_pick_the_best_matching_state() -> None:
    from envs.dream import DreamEnv, DreamVectorEnv
    from generators.clip_env import PromptStarts, PromptStartsVector

    wm = _tiny_world_model()
    clip = tiny_clip()
    bank = wm.start_mu.clone()
    best = int(clip.similarity(bank, ["a sharp left turn"])[:, 0].argmax())
    assert int(best_matches(clip, bank, "a sharp left turn")[0]) == best
    env = PromptStarts(DreamEnv(world_model=wm), clip)
    _, info = env.reset(seed=0, options={"prompt": "a sharp left turn"})
    assert info["start_index"] == best and torch.allclose(env.unwrapped.latents()[0], bank[best])
    env.reset(seed=0)  # without a prompt: the dream's own seeded start
    top3 = set(best_matches(clip, bank, "on the grass", k=3).tolist())
    venv = PromptStartsVector(DreamVectorEnv(num_envs=8, world_model=wm), clip, top_k=3)
    _, info = venv.reset(seed=1, options={"prompt": "on the grass"})
    assert set(info["start_index"].tolist()) <= top3
    assert torch.allclose(venv.unwrapped.latents(), bank[torch.as_tensor(info["start_index"])])
    with pytest.raises(ValueError, match="either a prompt or z0"):
        env.reset(options={"prompt": "x", "z0": bank[0]})


def test_text_reward_as_a_dream_fitness_term() -> None:
    from agents.controller import ControllerConfig
    from agents.fitness import DreamFitness

    wm = _tiny_world_model()
    clip = tiny_clip()
    cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, "car_racing")
    params = np.random.default_rng(0).normal(size=(2, cfg.num_params))
    term = text_reward(clip, "stay on the road")
    plain = DreamFitness(wm, cfg, 2, 2, max_steps=5, seed=0)(params, 0)
    fit = DreamFitness(wm, cfg, 2, 2, max_steps=5, seed=0, reward_term=term, term_scale=0.5)
    with_term = fit(params, 0)
    assert np.allclose(fit.last_base_returns.mean(1).numpy(), plain)  # same dreams, same M rewards
    assert not np.allclose(with_term, plain)


def test_text_conditioned_prior_samples_per_prompt() -> None:
    clip = tiny_clip((1, 8, 8))
    d = digit_captions(torch.rand(32, 1, 8, 8) * 2 - 1, torch.arange(32) % 10)
    prior = fit_text_prior(clip, d, TrainConfig(steps=5, log_every=1), batch_size=16, width=16, blocks=1,
                           embedding_dim=8)
    assert prior.cfg.cond_dim == 16 and prior.meta["item_shape"] == [1, 8, 8]
    x = sample_text(prior, clip, "the digit seven", 5, generator=0)
    assert x.shape == (5, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, sample_text(prior, clip, "the digit seven", 5, generator=0))
    with pytest.raises(ValueError, match="use the CLIP it was trained with"):
        sample_text(prior, tiny_clip((1, 8, 8)).__class__(CLIPConfig(shape=(1, 8, 8), **{**TINY, "embed_dim": 8})),
                    "a 7", 2)


@pytest.mark.slow
def test_report_script_runs_end_to_end(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tiny = ["--digit-clip-steps", "5", "--digit-prior-steps", "5", "--judge-steps", "20", "--episodes", "5",
            "--max-steps", "60", "--car-clip-steps", "5", "--car-prior-steps", "5", "--generations", "1",
            "--popsize", "4", "--rollouts", "1", "--dream-steps", "10", "--eval-episodes", "1", "--eval-steps", "20"]
    r = subprocess.run([sys.executable, str(root / "scripts" / "multimodal_report.py"), "--out", str(tmp_path / "out"),
                        "--doc", str(tmp_path / "docs" / "MULTIMODAL.md"), "--workers", "0", "--no-progress", *tiny],
                       capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = (tmp_path / "docs" / "MULTIMODAL.md").read_text()
    assert "## Acceptance figures" in doc and "real steps off the road" in doc
    for png in ("digits_from_text", "car_retrieval", "car_from_text", "dream_starts"):
        assert (tmp_path / "docs" / "multimodal" / f"{png}.png").is_file()
    res = json.loads((tmp_path / "out" / "report.json").read_text())
    assert 0.0 <= res["controllers"]["with"]["off_road"] <= 1.0 and 0.0 <= res["digits"]["zero_shot"]["ensemble"] <= 1.0
    assert CLIP.load(tmp_path / "out" / "car" / "clip.pt").config.shape == (32,)
