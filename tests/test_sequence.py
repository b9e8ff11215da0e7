"""The sequence families (lstm, gpt, mamba) and text data: what the shared family tests in
test_generators.py do not cover (tokenizer, windows, sampling filters, step == forward, the ring
KV cache past the window, scan == loop == step, the mambapy reference, run-folder outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import generators
from generators.data import load
from generators.gpt import GPT, GPTConfig
from generators.mamba import Mamba, MambaConfig
from generators.sequence import filter_logits
from generators.text import CharTokenizer, TokenData
from worldlab.blocks import pscan

pytestmark = pytest.mark.usefixtures("suggested_torch_threads")


@pytest.fixture(scope="module")
def text() -> TokenData:
    return load("pydoc", block_size=16, max_items=20_000)


def test_tokenizer_round_trip_and_refusals(tmp_path: Path) -> None:
    tok = CharTokenizer.from_text("hello, world\n")
    assert tok.vocab == "\n ,dehlorw" and tok.decode(tok.encode("world, hello")) == "world, hello"
    with pytest.raises(ValueError, match="character 'z' is not in this model's vocabulary of 10"):
        tok.encode("zebra")
    with pytest.raises(ValueError, match="unknown data source 'shakespeare'"):
        load("shakespeare")
    (tmp_path / "t.txt").write_text("abcabcabd" * 20, encoding="utf-8")
    d = load(f"text:{tmp_path / 't.txt'}", block_size=8)
    assert d.vocab == "abcd" and d.shape == (8,) and d.kind == "tokens" and d.decode(d.tokens[:4]) == "abca"
    with pytest.raises(ValueError, match="--block-size, not --image-size"):
        load("pydoc", image_size=16)
    with pytest.raises(ValueError, match="--block-size is for text sources"):
        load("digits", block_size=16)
    with pytest.raises(ValueError, match="cannot fill one window"):
        load(f"text:{tmp_path / 't.txt'}", block_size=500)


def test_missing_text_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no text file .*none.txt; give text:PATH"):
        load("text:" + str(tmp_path / "none.txt"))


def test_split_is_a_contiguous_tail_and_batches_are_seeded(text: TokenData) -> None:
    train, held = text.split()
    assert len(train.tokens) + len(held.tokens) == len(text.tokens)
    assert torch.equal(held.tokens, text.tokens[len(train.tokens):])
    a = [w.clone() for _, w in zip(range(3), train.batches(4, seed=1), strict=False)]
    b = [w.clone() for _, w in zip(range(3), train.batches(4, seed=1), strict=False)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) and a[0].shape == (4, 17)
    w = a[0][0]  # a window is consecutive tokens of the stream
    assert any(torch.equal(train.tokens[i:i + 17], w) for i in range(len(train.tokens) - 16))
    batches = train.batches(4, seed=1)
    batches.set_epoch(1)
    assert not torch.equal(next(iter(batches)), a[0])


def test_filter_logits_top_k_and_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.85)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.1)).tolist() == [[False, True, True, True]]
    with pytest.raises(ValueError, match="top_p must be in"):
        filter_logits(logits, top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        filter_logits(logits, top_k=0)


@pytest.mark.parametrize("name", ["lstm", "gpt", "mamba"])
def test_step_by_step_equals_the_parallel_forward(name: str, text: TokenData) -> None:
    torch.manual_seed(0)
    model = generators.model_for(name, text, preset="tiny").eval()
    x = text.tokens[:40][None]  # 2.5 windows of 16: the GPT's ring cache wraps twice
    with torch.no_grad():
        full = model(x)[0]
        state, steps = model.init_state(1), []
        for t in range(x.shape[1]):
            logits, state = model.step(x[:, t], state)
            steps.append(logits[0])
    assert torch.allclose(torch.stack(steps), full, atol=1e-5), (torch.stack(steps) - full).abs().max()


def test_gpt_ring_cache_reproduces_a_sliding_window_over_three_windows() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(shape=(48,), vocab_size=11, layers=2, heads=2, width=16, window=16)).eval()
    x = torch.randint(0, 11, (3, 48))  # three windows of 16
    with torch.no_grad():
        full = model(x)
        state, steps = model.init_state(3), []
        for t in range(48):
            logits, state = model.step(x[:, t], state)
            steps.append(logits)
    err = (torch.stack(steps, 1) - full).abs().max().item()
    assert err < 1e-5, err
    assert state["k"].shape[3] == 16  # the cache holds one window, whatever the length
    # the window is real: two layers of 16 reach back 30 tokens, so token 0 changes position 30, not 31
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % 11
    with torch.no_grad():
        out = model(y)
    assert not torch.allclose(out[:, 30], full[:, 30]) and torch.allclose(out[:, 31:], full[:, 31:], atol=1e-6)
    maps = model.attention_maps(x[0, :16])
    assert maps.shape == (2, 2, 16, 16) and torch.allclose(maps.sum(-1), torch.ones(2, 2, 16))
    assert torch.all(maps.triu(1) == 0)  # causal


def test_mamba_parallel_scan_loop_and_step_agree() -> None:
    a, b = torch.rand(2, 37, 3, 4), torch.randn(2, 37, 3, 4)
    h, ref = torch.zeros(2, 3, 4), []
    for t in range(37):
        h = a[:, t] * h + b[:, t]
        ref.append(h)
    assert torch.allclose(pscan(a, b), torch.stack(ref, 1), atol=1e-5)
    torch.manual_seed(0)
    par = Mamba(MambaConfig(shape=(32,), vocab_size=13, layers=2, width=16, state=4, scan="parallel")).eval()
    loop = Mamba(MambaConfig(shape=(32,), vocab_size=13, layers=2, width=16, state=4, scan="loop")).eval()
    loop.load_state_dict(par.state_dict())
    x = torch.randint(0, 13, (2, 32))
    with torch.no_grad():
        assert torch.allclose(par(x), loop(x), atol=1e-5)
    with pytest.raises(ValueError, match="scan must be"):
        MambaConfig(vocab_size=13, scan="fast")


def test_mamba_matches_the_mambapy_reference() -> None:
    mp = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    ours = Mamba(MambaConfig(shape=(24,), vocab_size=9, layers=2, width=16, state=4, conv=4, scan="parallel")).eval()
    ref = mp.Mamba(mp.MambaConfig(d_model=16, n_layers=2, d_state=4, expand_factor=2, d_conv=4)).eval()
    layers = {k[len("layers."):]: v for k, v in ours.state_dict().items() if k.startswith("layers.")}
    ref.layers.load_state_dict(layers)  # the same names and shapes: the layout is mambapy's
    x = torch.randn(2, 24, 16)
    with torch.no_grad():
        mine = x
        for layer in ours.layers:
            mine = layer(mine)
        assert torch.allclose(mine, ref(x), atol=1e-5), (mine - ref(x)).abs().max()


def test_sampling_settings_and_text_api(text: TokenData) -> None:
    torch.manual_seed(0)
    model = generators.model_for("gpt", text, preset="tiny")
    out = model.generate("The ", 30, temperature=0.7, top_k=5, generator=0)
    assert out.startswith("The ") and len(out) == 34
    assert out == model.generate("The ", 30, temperature=0.7, top_k=5, generator=0)
    greedy = model.sample(2, length=10, top_k=1, generator=0)
    assert torch.equal(greedy[0], greedy[1])  # top-1 is greedy: no randomness left
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.sample(1, temperature=0)
    with pytest.raises(ValueError, match="not in this model's vocabulary"):
        model.generate("\x00", 5)
    assert model.sample(3, length=40, prompt=model.encode("def ")).shape == (3, 40)  # past the block size


def test_train_generator_writes_text_samples_and_attention(tmp_path: Path) -> None:
    from generators.train import FitConfig, train_generator
    from worldlab.rundir import RunDir

    model, hist = train_generator("gpt", "pydoc", FitConfig(steps=6, batch_size=4, sample_every=3, log_every=1),
                                  out=tmp_path / "g", block_size=16, max_items=20_000, preset="tiny", progress=False)
    run = RunDir(tmp_path / "g")
    assert run.sample_text(3).is_file() and run.sample_text(6).is_file()
    assert "=== temperature 0.7, top-p 0.9, sample 2 ===" in run.sample_text().read_text(encoding="utf-8")
    assert run.attention_png.stat().st_size > 100 and len(hist["loss"]) == 6
    again = generators.load(run.generator_final)
    assert again.config.vocab == model.config.vocab and again.decode(again.encode("import"))[0] == "import"
    with pytest.raises(ValueError, match="dcgan models image.*not text"):
        train_generator("dcgan", "pydoc", FitConfig(steps=1), block_size=16, max_items=5000)
    with pytest.raises(ValueError, match="gpt models tokens, not image data"):
        generators.model_for("gpt", load("digits"))


def test_learning_rate_warms_up_then_decays(text: TokenData) -> None:
    model = generators.model_for("lstm", text, preset="tiny", warmup=10)
    f = [model.lr_factor(s, 110) for s in range(110)]
    assert f[0] < f[5] < f[9] <= 1.0 and f[10] == pytest.approx(1.0)
    assert f[60] < f[20] and f[-1] == pytest.approx(0.1, abs=1e-3)


def test_the_readme_text_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = re.search(r"### Text: LSTM, GPT and Mamba.*?```python\n(.*?)```", readme, re.S)
    assert code, "no python block in the README's text section"
    src = (code.group(1).replace('"python_docs", block_size=64', '"pydoc", block_size=16, max_items=20_000')
           .replace("steps=2000", "steps=3").replace(", 200,", ", 20,"))
    monkeypatch.chdir(tmp_path)
    exec(compile(src, "README.md", "exec"), {})  # noqa: S102  (the README's own snippet)
    assert (tmp_path / "runs" / "mamba" / "checkpoints" / "generator.pt").is_file()
