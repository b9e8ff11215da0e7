"""generators: the API, every registered family, data sources, the CLI.

Fast by default (tiny presets on 64 sklearn digits); ``-m slow`` adds longer training checks.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import generators
from generators.data import GenData
from generators.pixelcnn import MaskedConv2d
from generators.train import FitConfig

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = generators.available()
EXPECTED = {"dcgan", "wgan_gp", "cgan", "pixelcnn", "realnvp", "ebm", "ddpm", "vae", "renderer",
            "diffusion_renderer", "stylegan_renderer", "progan", "stylegan", "vqgan"}
RENDERERS = {"renderer", "diffusion_renderer", "stylegan_renderer"}  # draw some V's latents z
FRAME_ONLY = {"vae", *RENDERERS}  # the lab's V and the dream renderers model 64x64 RGB frames
TEXT_ONLY = {n for n in FAMILIES if "tokens" in generators.family(n).kinds}  # lstm, gpt, mamba
POINTS_ONLY = {n for n in FAMILIES if generators.family(n).kinds == ("points",)}  # latent_prior
MUSIC_ONLY = {n for n in FAMILIES if "music" in generators.family(n).kinds}  # music_transformer
ROLL_ONLY = {n for n in FAMILIES if "roll" in generators.family(n).kinds}  # musegan

# per-family settings of the "loss falls" check: (steps, lr); tiny models overfit 64 digits
FALLING = {"ebm": (40, 1e-3), "realnvp": (40, 1e-3), "pixelcnn": (40, 2e-3), "ddpm": (40, 2e-3),
           "diffusion_renderer": (40, 2e-3),
           "musegan": (12, 1e-3)}  # musegan: a critic and four generators per step, the dearest here


pytestmark = pytest.mark.usefixtures("suggested_torch_threads")


@pytest.fixture(scope="module")
def digits() -> GenData:
    return generators.data.load("digits").take(64, seed=0)


def synthetic_frames(n: int = 32, size: int = 64, seed: int = 0) -> GenData:
    """``n`` RGB frames of coloured rectangles on grey, as uint8 levels (a stand-in for rollouts)."""
    rng = np.random.default_rng(seed)
    x = np.full((n, 3, size, size), 100, np.uint8)
    for i in range(n):
        r0, c0 = rng.integers(0, size // 2, 2)
        x[i, :, r0:r0 + size // 3, c0:c0 + size // 3] = rng.integers(0, 256, 3)[:, None, None]
    return GenData("frames", torch.from_numpy(x), None, 256, 0)


@pytest.fixture(scope="module")
def frames() -> GenData:
    return synthetic_frames()


@pytest.fixture(scope="module")
def text():
    """The first 20,000 characters of Python's help topics, in windows of 16 characters."""
    return generators.data.load("pydoc", block_size=16, max_items=20_000)


@pytest.fixture(scope="module")
def chorales():
    """The first 5 chorales of music21's corpus as note/duration tokens in windows of 16."""
    return generators.data.load("chorales", block_size=16, max_items=5)


@pytest.fixture(scope="module")
def rolls():
    """The 4/4 chorales among the corpus's first 5 as 2-bar piano-roll segments."""
    return generators.data.load("chorale_rolls", max_items=5)


@pytest.fixture
def data_of(digits: GenData, frames: GenData, text, chorales, rolls):
    """The tiny training set of a family: 64 digits, 32 frames for the frame-only V, text for the
    sequence families, chorales for the music ones."""
    moons = generators.data.load("moons", max_items=256)
    return lambda name: (frames if name in FRAME_ONLY else text if name in TEXT_ONLY else
                         moons if name in POINTS_ONLY else chorales if name in MUSIC_ONLY else
                         rolls if name in ROLL_ONLY else digits)


_TINY_V: list[Path] = []


def tiny_v() -> Path:
    """A small V checkpoint (z 4) for the renderer, which renders some V's latents; made once."""
    if not _TINY_V:
        import tempfile

        from worldlab.vae import ConvVAE, VAEConfig

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            v = ConvVAE(VAEConfig(z_size=4, channels=(4, 8, 8, 8), dec_channels=(8, 8, 4)))
        _TINY_V.append(v.save(Path(tempfile.mkdtemp(prefix="tiny_v_")) / "vae.pt", meta={"task": "car_racing"}))
    return _TINY_V[0]


def tiny(name: str, data: GenData, **kw) -> generators.Generator:
    if name in RENDERERS:
        kw.setdefault("vae", str(tiny_v()))
    torch.manual_seed(0)
    return generators.model_for(name, data, preset="tiny", **kw)


def test_registry_lists_every_family() -> None:
    assert EXPECTED <= set(FAMILIES)
    assert FAMILIES == sorted(FAMILIES)
    for name in FAMILIES:
        fam = generators.family(name)
        assert fam.name == name and fam.cls.family == name and fam.summary
    with pytest.raises(ValueError, match="unknown generator family 'dcgn'.*did you mean 'dcgan'"):
        generators.make("dcgn")
    with pytest.raises(ValueError, match="dcgan has no option 'zdim'"):
        generators.make("dcgan", zdim=3)
    with pytest.raises(ValueError, match="pixelcnn models images"):
        generators.make("pixelcnn", shape=(2,))
    with pytest.raises(ValueError, match="power-of-two"):
        generators.make("dcgan", shape=(1, 12, 12))


def test_config_defaults_are_the_books() -> None:
    from generators.diffusion import DDPMConfig
    from generators.ebm import EBMConfig
    from generators.gan import DCGANConfig, WGANGPConfig
    from generators.pixelcnn import PixelCNNConfig

    w = WGANGPConfig(shape=(1, 32, 32))
    assert (w.gp_weight, w.critic_steps, w.objective, w.batch_norm) == (10.0, 3, "wgan-gp", False)
    assert DCGANConfig(shape=(1, 32, 32)).z_dim == 100
    e = EBMConfig(shape=(1, 32, 32))
    assert (e.langevin_steps, e.step_size, e.noise, e.buffer_size, e.fresh) == (60, 10.0, 0.005, 8192, 0.05)
    d = DDPMConfig(shape=(1, 32, 32))
    assert (d.sampling_steps, d.min_signal_rate, d.max_signal_rate, d.widths) == (20, 0.02, 0.95, (32, 64, 96, 128))
    assert generators.family("ddpm").train["ema"] == 0.999
    p = PixelCNNConfig()
    assert (p.levels, p.filters, p.residual_blocks) == (4, 128, 5)


@pytest.mark.parametrize("name", FAMILIES)
def test_training_losses_are_finite_and_fall(name: str, data_of) -> None:
    steps, lr = FALLING.get(name, (30, 2e-3))
    data = data_of(name)
    model = tiny(name, data)
    hist = generators.fit(model, data, FitConfig(steps=steps, batch_size=32, lr=lr, log_every=1, seed=0),
                          progress=False)
    for k, v in hist.items():
        assert len(v) == steps and all(math.isfinite(x) for x in v), k
    vals = hist[generators.family(name).monitor]
    k = max(3, steps // 5)
    first, last = np.mean(vals[:k]), np.mean(vals[-k:])
    assert last < first, f"{name}: {generators.family(name).monitor} went {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("name", FAMILIES)
def test_sample_shape_dtype_range_and_seed(name: str, data_of) -> None:
    data = data_of(name)
    model = tiny(name, data)
    x = model.sample(5, generator=1)
    if name in TEXT_ONLY:  # token ids, (n, block_size) by default
        assert x.shape == (5, *data.shape) and x.dtype == torch.long
        assert x.min() >= 0 and x.max() < data.vocab_size
        assert torch.equal(x, model.sample(5, generator=1)) and not torch.equal(x, model.sample(5, generator=2))
        assert model.training
        with pytest.raises(ValueError, match="unconditional"):
            model.sample(2, cond=torch.tensor([0, 1]))
        return
    if name in MUSIC_ONLY:  # (note, duration) id pairs, (n, block_size, 2) by default
        assert x.shape == (5, *data.shape, 2) and x.dtype == torch.long
        assert x.min() >= 0 and (x[..., 0] < model.config.note_vocab).all()
        assert (x[..., 1] < model.config.duration_vocab).all()
        assert torch.equal(x, model.sample(5, generator=1)) and not torch.equal(x, model.sample(5, generator=2))
        assert model.training
        return
    assert x.shape == (5, *data.shape) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and (data.kind in ("points",) or (x.min() >= -1.0 and x.max() <= 1.0))
    assert torch.equal(x, model.sample(5, generator=1))
    assert not torch.equal(x, model.sample(5, generator=2))
    assert model.training  # sample leaves the module's mode alone
    if name in RENDERERS:  # conditioned on V's latents z, not on labels
        z = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
        assert torch.equal(model.sample(4, cond=z), model.sample(4, cond=z))  # deterministic in z
        with pytest.raises(ValueError, match=r"needs latents cond of shape \(2, 4\)"):
            model.sample(2, cond=torch.tensor([0, 1]))
    elif model.config.num_classes:
        assert model.sample(4, cond=torch.tensor([0, 1, 2, 3]), generator=0).shape == (4, 1, 8, 8)
        assert model.sample(3, cond=7, generator=0).shape == (3, 1, 8, 8)
        with pytest.raises(ValueError, match="labels must be in"):
            model.sample(2, cond=torch.tensor([0, 10]))
    else:
        with pytest.raises(ValueError, match="unconditional"):
            model.sample(2, cond=torch.tensor([0, 1]))


@pytest.mark.parametrize("name", [n for n in FAMILIES if "points" in generators.family(n).kinds])
def test_point_families_on_moons(name: str) -> None:
    moons = generators.data.load("moons", max_items=256)
    model = tiny(name, moons)
    hist = generators.fit(model, moons, FitConfig(steps=5, batch_size=64, log_every=1), progress=False)
    assert all(math.isfinite(v) for vs in hist.values() for v in vs)
    x = model.sample(7, generator=0)
    assert x.shape == (7, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_round_trip_gives_identical_samples(name: str, data_of, tmp_path: Path) -> None:
    data = data_of(name)
    model = tiny(name, data)
    generators.fit(model, data, FitConfig(steps=2, batch_size=16), progress=False)
    model.save(tmp_path / "m.pt")
    loaded = generators.load(tmp_path / "m.pt")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert torch.equal(model.sample(6, generator=3), loaded.sample(6, generator=3))
    assert type(model).load(tmp_path / "m.pt").family == name
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # plain, safe checkpoint
    assert raw["family"] == name and isinstance(raw["config"], dict)


def test_vae_is_the_labs_v_and_loads_its_checkpoints(frames: GenData, tmp_path: Path) -> None:
    from worldlab.vae import ConvVAE, VAEConfig

    torch.manual_seed(0)
    v = ConvVAE(VAEConfig(z_size=4, channels=(4, 8, 8, 8), dec_channels=(8, 8, 4)))
    v.save(tmp_path / "vae.pt", meta={"task": "car_racing"})  # as the lab's V stage writes it
    g = generators.load(tmp_path / "vae.pt")
    assert g.family == "vae" and isinstance(g.vae, ConvVAE) and g.vae.meta["task"] == "car_racing"
    x = frames.tensor(torch.arange(4))
    mu, _ = g.encode(x)
    assert torch.allclose(mu, v.encode((x + 1) / 2)[0])
    assert torch.allclose(g.sample(3, generator=0), v.sample(3, generator=0) * 2 - 1)
    g.save(tmp_path / "again.pt")
    assert isinstance(ConvVAE.load(tmp_path / "again.pt"), ConvVAE)  # and back to the lab's loader
    with pytest.raises(ValueError, match="64x64 RGB frames"):
        generators.make("vae", shape=(1, 8, 8))


def test_load_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        generators.load(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a generators checkpoint"):
        generators.load(tmp_path / "other.pt")


def test_checkpoints_in_the_format_before_configcheckpoint_still_load(digits: GenData, tmp_path: Path) -> None:
    """Files written by the generators' own save/load (``"format": 1``, no meta) load with today's code."""
    import dataclasses

    from generators.gan import DCGAN

    model = tiny("dcgan", digits)
    generators.fit(model, digits, FitConfig(steps=2, batch_size=16), progress=False)
    old = {"family": "dcgan", "config": dataclasses.asdict(model.config), "format": 1, "model": model.state_dict()}
    torch.save(old, tmp_path / "saved.pt")  # what Generator.save wrote
    for loaded in (generators.load(tmp_path / "saved.pt"), DCGAN.load(tmp_path / "saved.pt")):
        assert type(loaded) is DCGAN and loaded.config == model.config and loaded.meta == {}
        assert torch.equal(loaded.sample(5, generator=1), model.sample(5, generator=1))
    # a training checkpoint of the old loop: the EMA weights are the ones loaded
    ema = tiny("dcgan", digits)
    train_ckpt = {"model": model.state_dict(), "optimizers": {}, "step": 2, "train_config": {}, "rng": None,
                  "ema": ema.state_dict(), **{k: old[k] for k in ("family", "config", "format")}}
    torch.save(train_ckpt, tmp_path / "train.pt")
    assert torch.equal(generators.load(tmp_path / "train.pt").sample(4, generator=2), ema.sample(4, generator=2))
    # the vae wrapper's training checkpoint: V's config (with the removed ``extra``) and wrapped weights
    from worldlab.vae import VAEConfig

    v = tiny("vae", synthetic_frames(4))
    v_cfg = {**dataclasses.asdict(VAEConfig(z_size=4, channels=(4, 8, 8, 8), dec_channels=(8, 8, 4))), "extra": {}}
    torch.save({"family": "vae", "config": v_cfg, "meta": {}, "model": v.state_dict(), "step": 1},
               tmp_path / "vae_train.pt")
    v2 = generators.load(tmp_path / "vae_train.pt")
    assert v2.config == v.config and torch.equal(v2.sample(2, generator=0), v.sample(2, generator=0))
    with pytest.raises(TypeError, match="holds a dcgan model, not EBM"):
        type(tiny("ebm", digits)).load(tmp_path / "saved.pt")
    with pytest.raises(TypeError, match="use generators.load"):
        generators.Generator.load(tmp_path / "saved.pt")


def test_the_labs_v_loads_both_ways_old_and_new(tmp_path: Path) -> None:
    """V written before ``VAEConfig.extra`` was removed loads as ConvVAE and as the ``vae`` family, and a V
    saved by the family loads as ConvVAE: one checkpoint format (``worldlab.io.ConfigCheckpoint``)."""
    from worldlab.rundir import RunDir
    from worldlab.vae import ConvVAE

    old_v = RunDir(ROOT / "tests" / "fixtures" / "old_run").vae  # written by the code before the house move
    assert "extra" in torch.load(old_v, weights_only=True)["config"]
    v = ConvVAE.load(old_v)
    g = generators.load(old_v)
    assert g.family == "vae" and g.config.z_size == v.config.z_size == 8
    assert g.meta["id"] == v.meta["id"] and g.vae.meta is g.meta
    assert torch.allclose(g.sample(2, generator=0), v.sample(2, generator=0) * 2 - 1)
    state = torch.load(old_v, weights_only=True)
    state["config"]["extra"] = {"note": "free-form notes of an old run"}
    torch.save(state, tmp_path / "vae.pt")
    assert ConvVAE.load(tmp_path / "vae.pt").config == v.config
    g.save(tmp_path / "again.pt")
    again = ConvVAE.load(tmp_path / "again.pt")
    assert again.meta["id"] == v.meta["id"] and set(torch.load(tmp_path / "again.pt", weights_only=True)) == {
        "family", "config", "model", "meta"}


def test_generators_modules_import_each_other_in_one_direction() -> None:
    """No import cycle among the generators modules, counting imports inside functions too."""
    import ast

    pkg = ROOT / "generators"
    modules = {p.stem for p in pkg.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in pkg.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name.split(".")[:2] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                module = node.module.split(".")[:2]
                # `from generators import images` imports a module; `from generators import load` the package
                targets = [module] if len(module) == 2 else [[*module, a.name] for a in node.names]
            else:
                continue
            for parts in targets:
                if parts[0] == "generators":
                    # `import generators` runs the package, which imports every family
                    deps.add(parts[1] if len(parts) == 2 and parts[1] in modules else "__init__")
        deps.discard(path.stem)
        graph[path.stem] = deps
    assert graph["registry"] >= {"base"} and "registry" not in graph["base"]

    def cycle_from(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        for dep in sorted(graph[node]):
            found = cycle_from(dep, [*stack, node])
            if found:
                return found
        return None

    for start in graph:
        assert cycle_from(start, []) is None, " -> ".join(cycle_from(start, []) or [])


@pytest.mark.parametrize("shape", [(2,), (3,), (1, 4, 4), (2, 4, 4)])
def test_flow_is_exactly_invertible_and_logdet_matches_autograd(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    flow = generators.make("realnvp", preset="tiny", shape=shape).double()
    for p in flow.parameters():  # leave the identity initialisation: make every coupling act
        p.data.add_(0.1 * torch.randn_like(p))
    flow.eval()
    x = (torch.rand(3, *shape, dtype=torch.float64) * 1.8 - 0.9)
    z, logdet = flow(x)
    assert z.shape == x.shape
    assert torch.allclose(flow.inverse(z), x, atol=1e-10)
    assert (z - x).abs().max() > 1e-3  # not the identity
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0].flatten(), x[i])
        jac = jac.reshape(x[i].numel(), x[i].numel())
        assert torch.allclose(torch.linalg.slogdet(jac)[1], logdet[i], atol=1e-8)


def test_flow_bits_per_dim_and_sampling_invert(digits: GenData) -> None:
    flow = tiny("realnvp", digits)
    assert flow.config.data_levels == 17
    bpd = flow.bits_per_dim(digits.tensor(torch.arange(8)), generator=0)
    assert bpd.shape == (8,) and torch.isfinite(bpd).all() and (bpd > 0).all()
    assert torch.equal(bpd, flow.bits_per_dim(digits.tensor(torch.arange(8)), generator=0))


def test_pixelcnn_masks_are_causal_and_likelihood_normalised() -> None:
    # type A hides the centre; type B shows it; colour groups order R -> G -> B
    a = MaskedConv2d(3, 6, 3, "A", colours=3)
    assert a.mask[:, :, 2].sum() == 0 and a.mask[:, :, 1, 2].sum() == 0
    assert a.mask[0:2, :, 1, 1].sum() == 0 and a.mask[2:4, 0, 1, 1].all() and a.mask[2:4, 1:, 1, 1].sum() == 0
    b = MaskedConv2d(3, 6, 3, "B", colours=3)
    assert b.mask[0:2, 0, 1, 1].all() and b.mask[0:2, 1:, 1, 1].sum() == 0
    # the probabilities of all 2-level images of shape (3, 1, 2) sum to one
    torch.manual_seed(0)
    m = generators.make("pixelcnn", shape=(3, 1, 2), levels=2, filters=12, residual_blocks=1, first_kernel=3)
    for p in m.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    allx = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=6))).reshape(-1, 3, 1, 2)
    with torch.no_grad():
        total = m.log_prob(allx).exp().sum()
    assert abs(float(total) - 1.0) < 1e-5
    # sampling's cropped windows give the logits of the whole image
    torch.manual_seed(1)
    big = generators.make("pixelcnn", shape=(2, 9, 9), levels=3, filters=8, residual_blocks=1, first_kernel=3)
    k = torch.randint(0, 3, (2, 2, 9, 9))
    with torch.no_grad():
        full = big.logits(k)
        for i, j in [(0, 0), (4, 4), (8, 8), (8, 0), (3, 8)]:
            r0, c0, c1 = big.window(i, j, 9, 9)
            part = big.logits(k[:, :, r0:i + 1, c0:c1])[:, :, :, i - r0, j - c0]
            assert torch.allclose(part, full[:, :, :, i, j], atol=1e-5)
    # the first sub-pixel's distribution ignores the image
    x = torch.rand(2, 3, 1, 2, requires_grad=True)
    m.net(x)[:, 0:2, 0, 0].sum().backward()
    assert x.grad.abs().sum() == 0


def test_ebm_learns_lower_energy_for_data_than_noise(digits: GenData) -> None:
    ebm = tiny("ebm", digits)
    generators.fit(ebm, digits, FitConfig(steps=40, batch_size=32, lr=1e-3), progress=False)
    with torch.no_grad():
        e_data = ebm.energy(digits.tensor()).mean()
        e_noise = ebm.energy(ebm.uniform(64, torch.Generator().manual_seed(0))).mean()
    assert e_data < e_noise


def test_ddpm_schedule_is_offset_cosine() -> None:
    m = generators.make("ddpm", preset="tiny", shape=(1, 8, 8))
    t = torch.linspace(0, 1, 11)
    noise, signal = m.schedule(t)
    assert torch.allclose(noise ** 2 + signal ** 2, torch.ones(11))
    assert abs(float(signal[0]) - 0.95) < 1e-6 and abs(float(signal[-1]) - 0.02) < 1e-6
    assert (signal[1:] < signal[:-1]).all()
    assert {"start_angle", "end_angle"} <= {n for n, _ in m.named_buffers()}


def test_data_sources() -> None:
    d = generators.data.load("digits")
    assert d.shape == (1, 8, 8) and len(d) == 1797 and d.levels == 17 and d.num_classes == 10
    x = d.tensor(torch.arange(4))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    m = generators.data.load("mnist", max_items=100)
    assert m.shape == (1, 32, 32) and len(m) == 100 and m.levels == 256
    assert generators.data.load("mnist", image_size=16, max_items=10).shape == (1, 16, 16)
    moons = generators.data.load("moons")
    assert moons.shape == (2,) and len(moons) == 3000
    assert torch.allclose(moons.x.mean(0), torch.zeros(2), atol=1e-5)
    with pytest.raises(ValueError, match="unknown data source 'cifar'; use one of: digits, mnist"):
        generators.data.load("cifar")
    with pytest.raises(ValueError, match="use car_racing:RUN"):
        generators.data.load("car_racing")
    with pytest.raises(FileNotFoundError, match="collect them first: python scripts/collect.py doom_take_cover"):
        generators.data.load("doom_take_cover:/nonexistent/run")


def _fake_run(run: Path, task: str = "car_racing", episodes: int = 3, steps: int = 9) -> Path:
    from worldlab.storage import Manifest, write_shard

    m = Manifest(run / "data", meta={"task": task})
    rng = np.random.default_rng(0)
    for i in range(episodes):
        obs = rng.integers(0, 256, size=(steps + 1, 64, 64, 3), dtype=np.uint8)
        m.add(i, write_shard(run / "data", i, {"obs": obs, "actions": np.zeros((steps, 3), np.float32),
                                               "rewards": np.zeros(steps, np.float32),
                                               "terminated": np.zeros(steps, bool),
                                               "truncated": np.zeros(steps, bool), "seed": np.int64(i)}))
    return run


def test_frames_from_rollout_shards(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    d = generators.data.load(f"car_racing:{run}")
    assert d.shape == (3, 64, 64) and len(d) == 30 and d.levels == 256 and d.y is None
    assert generators.data.load(f"car_racing:{run / 'data'}", image_size=16, max_items=7).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="holds car_racing frames, not doom_take_cover; use car_racing:"):
        generators.data.load(f"doom_take_cover:{run}")
    model = generators.model_for("dcgan", generators.data.load(f"car_racing:{run}", image_size=8), preset="tiny")
    assert model.sample(2, generator=0).shape == (2, 3, 8, 8)


def test_frames_source_takes_the_task_from_the_manifest(tmp_path: Path) -> None:
    """``frames:RUN`` loads any run's frames and names them by the manifest's task; ``TASK:RUN`` checks it."""
    run = _fake_run(tmp_path / "doom", task="doom_take_cover", episodes=2, steps=4)
    d = generators.data.load(f"frames:{run}")
    assert d.name == "doom_take_cover" and d.shape == (3, 64, 64) and len(d) == 10
    assert generators.data.load(f"frames:{run / 'data'}", image_size=8).shape == (3, 8, 8)
    assert generators.data.load(f"doom_take_cover:{run}").name == "doom_take_cover"
    with pytest.raises(ValueError, match=f"holds doom_take_cover frames, not car_racing; use doom_take_cover:{run} "
                                         f"or frames:{run}") as e:
        generators.data.load(f"car_racing:{run}")
    assert len(str(e.value).splitlines()) == 1
    fixture = generators.data.load(f"frames:{ROOT / 'tests' / 'fixtures' / 'old_run'}", max_items=5)
    assert fixture.name == "car_racing" and len(fixture) == 5
    with pytest.raises(FileNotFoundError, match="collect them first: python scripts/collect.py TASK"):
        generators.data.load(f"frames:{tmp_path / 'nothing'}")
    with pytest.raises(ValueError, match="use frames:RUN"):
        generators.data.load("frames:")


def test_family_data_defaults_fill_only_what_is_not_given() -> None:
    """``Family.data_defaults`` (the renderer's V of the ``--data`` run) is how a family takes config from
    its data source; ``train_generator`` knows no family by name."""
    from generators import registry
    from generators.gan import DCGAN, DCGANConfig

    assert '"renderer"' not in (ROOT / "generators" / "train.py").read_text()
    assert generators.family("renderer").data_defaults is not None

    class Hooked(DCGAN):
        pass

    seen: list[str] = []
    registry.register(registry.Family("hooked", Hooked, DCGANConfig, "a test family", presets={"tiny": {"channels": 8}},
                                      data_defaults=lambda source: seen.append(source) or {"z_dim": 7}))
    try:
        settings = FitConfig(steps=1, batch_size=16)
        model, _ = generators.train_generator("hooked", "digits", settings, preset="tiny", progress=False)
        assert seen == ["digits"] and model.config.z_dim == 7
        model, _ = generators.train_generator("hooked", "digits", settings, preset="tiny", progress=False, z_dim=5)
        assert model.config.z_dim == 5
    finally:
        registry._FAMILIES.pop("hooked")


def test_fit_writes_grids_and_resumes(digits: GenData, tmp_path: Path) -> None:
    model = tiny("dcgan", digits)
    generators.fit(model, digits, FitConfig(steps=4, batch_size=16, sample_every=2, samples=9), out=tmp_path,
                   progress=False, tensorboard=False)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]
    again = generators.load(tmp_path / "checkpoints" / "generator.pt")
    assert again.family == "dcgan"
    state = torch.load(tmp_path / "checkpoints" / "generator.pt", weights_only=True)
    assert state["step"] == 4
    model2 = tiny("dcgan", digits)
    hist = generators.fit(model2, digits, FitConfig(steps=6, batch_size=16), out=tmp_path, progress=False,
                          tensorboard=False)
    assert len(hist["g_loss"]) == 1  # steps 5..6 only: resumed at 4
    assert torch.load(tmp_path / "checkpoints" / "generator.pt", weights_only=True)["step"] == 6


def test_a_finished_fit_resumed_hands_back_the_same_ema_weights(digits: GenData, tmp_path: Path) -> None:
    """fit() on a folder whose training finished trains nothing and leaves the model holding the
    finished run's result: the EMA average, not the raw weights of the last step."""
    model = tiny("dcgan", digits)
    settings = FitConfig(steps=4, batch_size=16, ema=0.5)
    generators.fit(model, digits, settings, out=tmp_path, progress=False, tensorboard=False)
    raw = torch.load(tmp_path / "checkpoints" / "generator.pt", weights_only=True)["model"]
    assert any(not torch.equal(raw[k], v) for k, v in model.state_dict().items())  # EMA != the last step's
    again = tiny("dcgan", digits)
    assert generators.fit(again, digits, settings, out=tmp_path, progress=False, tensorboard=False) == {}
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not again.training


def test_train_generator_refuses_a_mismatched_resume(tmp_path: Path) -> None:
    settings = FitConfig(steps=2, batch_size=16)
    model, _ = generators.train_generator("dcgan", "digits", settings, out=tmp_path, preset="tiny", progress=False)
    assert (tmp_path / "generator.pt").is_file() and model.shape == (1, 8, 8)
    with pytest.raises(ValueError, match="use the run's --image-size or another --out"):
        generators.train_generator("dcgan", "digits", settings, out=tmp_path, image_size=16, progress=False)
    with pytest.raises(ValueError, match="holds a dcgan run, not ebm"):
        generators.train_generator("ebm", "digits", settings, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="was trained on digits, not mnist"):
        generators.train_generator("dcgan", "mnist", settings, out=tmp_path, progress=False)


def test_cli_trains_writes_files_and_resumes(tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]
                                             ) -> None:
    out = tmp_path / "run"
    r = cli("train_generator.py", "cgan", "--data", "digits", "--steps", "3", "--preset", "tiny", "--batch-size", "16",
             "--out", str(out), "--no-progress", "--threads", "1")
    assert r.returncode == 0, r.stderr
    for f in ("config.json", "generator.pt", "checkpoints/generator.pt", "samples.png", "metrics.jsonl",
              "samples/step_000003.png"):
        assert (out / f).is_file(), f
    assert list((out / "tb").rglob("events.out.tfevents*"))
    m = generators.load(out / "generator.pt")
    assert m.family == "cgan" and m.sample(2, cond=torch.tensor([3, 4]), generator=0).shape == (2, 1, 8, 8)
    r = cli("train_generator.py", "cgan", "--data", "digits", "--steps", "5", "--preset", "tiny", "--batch-size", "16",
             "--out", str(out), "--no-progress", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert torch.load(out / "checkpoints" / "generator.pt", weights_only=True)["step"] == 5


@pytest.mark.parametrize(("args", "message"), [
    (["gaan", "--data", "digits"], "unknown generator family 'gaan'"),
    (["dcgan", "--data", "cifar"], "unknown data source 'cifar'; use one of"),
    (["dcgan", "--data", "car_racing:/no/such/run"], "collect them first: python scripts/collect.py car_racing"),
    (["pixelcnn", "--data", "moons"], "pixelcnn models images"),
    (["dcgan", "--data", "digits", "--preset", "huge"], "dcgan has no preset 'huge'"),
])
def test_cli_errors_are_one_line(args: list[str], message: str, cli: Callable[..., subprocess.CompletedProcess]
                                 ) -> None:
    r = cli("train_generator.py", *args, "--no-progress")
    assert r.returncode == 2
    err = r.stderr.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_longer_training_keeps_improving(name: str) -> None:
    data = (synthetic_frames(256) if name in FRAME_ONLY else generators.data.load("pydoc", block_size=16,
            max_items=200_000) if name in TEXT_ONLY else generators.data.load("moons") if name in POINTS_ONLY
            else generators.data.load("chorales", block_size=16, max_items=5) if name in MUSIC_ONLY
            else generators.data.load("chorale_rolls", max_items=5) if name in ROLL_ONLY
            else generators.data.load("digits"))
    model = tiny(name, data)
    steps, lr = FALLING.get(name, (30, 2e-3))
    # five times the fast test's steps, at its batch size: longer, not wider
    hist = generators.fit(model, data, FitConfig(steps=steps * 5, batch_size=32, lr=lr, log_every=1),
                          progress=False)
    if name == "ebm":
        # contrastive divergence is a game between the energy and its Langevin sampler, not a loss
        # that falls: after longer training, real digits must sit far below uniform noise in energy
        model.eval()
        x = data.tensor(slice(0, 256))
        with torch.no_grad():
            e_real = model.energy(x.to(model.device)).mean().item()
            e_noise = model.energy(model.uniform(256, torch.Generator().manual_seed(0))).mean().item()
        assert e_real < e_noise, (e_real, e_noise)
        return
    vals = hist[generators.family(name).monitor]
    assert np.mean(vals[-20:]) < np.mean(vals[:20])


def test_frechet_distance_matches_its_formula() -> None:
    from scipy import linalg

    from generators.metrics import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-6)  # a shift by 2 in 6 dims
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(a, b[:, :3])


def test_digit_classifier_learns(digits: GenData) -> None:
    from generators import metrics

    data = generators.data.load("digits")
    train, test = data.split(300, seed=0)
    clf = metrics.train_classifier(train, steps=150, batch_size=64)
    assert metrics.accuracy(clf, test.tensor(), test.y) > 0.8
    assert metrics.batched(clf.features, test.tensor(torch.arange(10))).shape == (10, 128)


@pytest.mark.slow
def test_report_script_runs_end_to_end(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "generator_report.py"), "--scale", "0.005",
                        "--no-frames", "--out", str(tmp_path / "docs"), "--runs", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = (tmp_path / "docs" / "GENERATORS.md").read_text()
    for name in ("dcgan", "wgan_gp", "cgan", "ddpm", "ebm", "pixelcnn", "realnvp"):
        assert f"| {name} |" in doc and (tmp_path / "docs" / "generators" / f"{name}_mnist.png").is_file()
    assert "bits/dim" in doc and "class accuracy" in doc and "NLL" in doc
