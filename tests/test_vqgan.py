"""vqgan: the quantiser's gradients and losses, code usage, the V-feature perceptual loss, the
adversarial switch, the GPT prior's data and the checkpoint (tiny sizes, seconds)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import generators
from generators.data import GenData
from generators.train import FitConfig
from generators.vqgan import VQGAN, CodeGrids, VectorQuantizer, code_usage, perceptual_distance

pytestmark = pytest.mark.usefixtures("suggested_torch_threads")


@pytest.fixture(scope="module")
def digits() -> GenData:
    return generators.data.load("digits").take(64, seed=0)


@pytest.fixture(scope="module")
def tiny_v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small V checkpoint (the lab's ConvVAE at tiny widths) for the perceptual loss."""
    from worldlab.vae import ConvVAE, VAEConfig

    torch.manual_seed(0)
    v = ConvVAE(VAEConfig(z_size=4, channels=(4, 8, 8, 8), dec_channels=(8, 8, 4)))
    return v.save(tmp_path_factory.mktemp("v") / "vae.pt", meta={"task": "car_racing"})


def tiny(shape: tuple[int, ...] = (1, 8, 8), **kw) -> VQGAN:
    torch.manual_seed(0)
    model = generators.make("vqgan", preset="tiny", shape=shape, **kw)
    assert isinstance(model, VQGAN)
    return model


def frames(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 64, 64, generator=g) * 2 - 1


def test_straight_through_gradient_reaches_the_encoder() -> None:
    model = tiny()
    z_e = torch.randn(2, 4, 4, 4, requires_grad=True)
    q = model.quantizer(z_e)
    q.z_q.sum().backward()
    assert torch.equal(z_e.grad, torch.ones_like(z_e))  # d z_q / d z_e = identity
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    model.decoder(model.quantizer(model.encoder(x)).z_q).abs().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_quantised_vectors_are_the_nearest_codebook_rows() -> None:
    vq = VectorQuantizer(6, 3, ema_decay=0.0, restart_below=0.0)
    z_e = torch.randn(2, 3, 4, 5)  # (B, D, h, w)
    q = vq(z_e)
    assert q.codes.shape == (2, 4, 5) and q.codes.dtype == torch.long
    rows = q.z_q.permute(0, 2, 3, 1).reshape(-1, 3)  # (B*h*w, D)
    assert torch.allclose(rows, vq.codebook[q.codes.flatten()], atol=1e-6)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(flat, vq.codebook).argmin(1)
    assert torch.equal(q.codes.flatten(), brute)


def test_commitment_and_codebook_losses_are_their_formulas() -> None:
    vq = VectorQuantizer(5, 3, ema_decay=0.0, restart_below=0.0)
    z_e = torch.randn(2, 3, 2, 2, requires_grad=True)
    q = vq(z_e)
    e = vq.codebook[q.codes].permute(0, 3, 1, 2)  # (B, D, h, w)
    expected = (z_e - e).pow(2).mean()
    assert torch.allclose(q.commitment, expected) and torch.allclose(q.codebook, expected)
    q.commitment.backward(retain_graph=True)  # |z_e - sg[e]|^2: only the encoder output moves
    assert torch.allclose(z_e.grad, 2 * (z_e - e).detach() / z_e.numel()) and vq.codebook.grad is None
    z_e.grad = None
    q.codebook.backward()  # |sg[z_e] - e|^2: only the codebook moves
    assert z_e.grad is None and vq.codebook.grad.abs().sum() > 0
    model = tiny(ema_decay=0.0)  # the gradient-learned codebook: loss = rec + codebook + beta * commitment
    assert model.config.beta == 0.25 and model.quantizer.codebook.requires_grad
    assert not tiny().quantizer.codebook.requires_grad  # the EMA codebook is not a gradient parameter


def test_perplexity_of_known_code_histograms() -> None:
    assert code_usage(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), 8) == pytest.approx((4.0, 0.5))
    assert code_usage(torch.zeros(10, dtype=torch.long), 4) == pytest.approx((1.0, 0.25))
    ppl, used = code_usage(torch.tensor([[0, 0], [1, 2]]), 3)  # p = 1/2, 1/4, 1/4
    assert ppl == pytest.approx(2 ** 1.5) and used == 1.0


def test_ema_moves_rows_to_their_vectors_and_restarts_unused_codes() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema_decay=0.5, restart_below=1.0)
    z_e = torch.tensor([[3.0, 3.0], [3.2, 2.8]]).T.reshape(1, 2, 1, 2)  # two vectors near (3.1, 2.9)
    q = vq(z_e)
    e0 = vq.codebook.detach().clone()
    restarted = vq.update(z_e, q.codes)
    code = int(q.codes[0, 0, 0])
    assert torch.equal(q.codes, torch.full((1, 1, 2), code))  # both vectors chose one row
    assert restarted == 3  # the three rows nobody chose are put on vectors of the batch
    others = [i for i in range(4) if i != code]
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    assert all(any(torch.allclose(vq.codebook[i], v) for v in flat) for i in others)
    # the chosen row: the EMA of its assigned vectors' sum over the EMA of their count (VQ-VAE A.1)
    ema_sum = 0.5 * e0[code] + 0.5 * torch.tensor([6.2, 5.8])
    ema_count = 0.5 * 1.0 + 0.5 * 2
    assert torch.allclose(vq.codebook[code], ema_sum / ema_count, atol=1e-4)


def test_encode_decode_codes_shapes(digits: GenData) -> None:
    model = tiny(shape=(3, 16, 16), widths=(8, 16, 16))
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    codes = model.encode(x)
    assert codes.shape == (5, 4, 4) and codes.dtype == torch.long and model.config.grid == (4, 4)
    assert 0 <= int(codes.min()) and int(codes.max()) < model.config.codebook_size
    y = model.decode_codes(codes)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.min() >= -1 and y.max() <= 1
    assert torch.equal(model.reconstruct(x), y)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*2"):
        generators.make("vqgan", shape=(3, 10, 10), widths=(8, 16, 16))


def test_perceptual_loss_in_v_features(tiny_v: Path) -> None:
    model = tiny(shape=(3, 64, 64), vae=str(tiny_v))
    assert model.v_encoder is not None and not any(p.requires_grad for p in model.v_encoder.parameters())
    x, y = frames(4, 0), frames(4, 1)
    assert torch.equal(perceptual_distance(model.v_encoder, x, x), torch.zeros(4))
    y.requires_grad_(True)
    d = perceptual_distance(model.v_encoder, x, y)
    assert d.shape == (4,) and (d > 0).all()
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0  # it trains the decoder through a frozen V
    logs = model.training_step(x, model.configure_optimizers(1e-3), step=0)
    assert logs["perceptual"] > 0 and math.isfinite(logs["loss"])
    assert "perceptual" not in tiny().training_step(torch.rand(4, 1, 8, 8) * 2 - 1,
                                                    tiny().configure_optimizers(1e-3), 0)  # no V: L1 only
    with pytest.raises(ValueError, match="64x64 RGB frames"):
        generators.make("vqgan", shape=(1, 8, 8), vae=str(tiny_v))


def test_adversarial_term_enters_the_autoencoder_at_disc_start() -> None:
    x = torch.rand(8, 1, 8, 8) * 2 - 1

    def one_step(step: int, d_seed: int) -> tuple[VQGAN, dict[str, float], list[torch.Tensor]]:
        model = tiny(disc_start=2)
        torch.manual_seed(d_seed)  # another discriminator, same autoencoder
        for p in model.discriminator_net.parameters():
            p.data.normal_(0, 0.1)
        d_before = [p.detach().clone() for p in model.discriminator_net.parameters()]
        logs = model.training_step(x, model.configure_optimizers(1e-2), step=step)
        return model, logs, d_before

    (a, logs, d_before), (b, _, _) = one_step(1, 0), one_step(1, 1)
    assert logs["adv_weight"] == 0.0  # before disc_start the discriminator does not touch the autoencoder
    assert all(torch.equal(p, q) for p, q in zip(a.decoder.parameters(), b.decoder.parameters(), strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(d_before, a.discriminator_net.parameters(), strict=True))
    (a, logs, _), (b, _, _) = one_step(2, 0), one_step(2, 1)
    assert logs["adv_weight"] > 0
    assert any(not torch.equal(p, q) for p, q in zip(a.decoder.parameters(), b.decoder.parameters(), strict=True))


def test_prior_trains_on_aligned_code_grids(digits: GenData) -> None:
    model = tiny()
    generators.fit(model, digits, FitConfig(steps=5, batch_size=32), progress=False)
    grids = model.code_grids(digits)
    assert isinstance(grids, CodeGrids) and len(grids) == len(digits) and grids.block_size == 16
    w = grids.windows(torch.tensor([0, 5, 63]))  # (3, 17): start token, then the image's 16 codes
    assert (w[:, 0] == model.start_token).all() and (w[:, 1:] < model.start_token).all()
    assert torch.equal(w[1, 1:], model.encode(digits.tensor(torch.tensor([5]))).flatten())
    hist = model.fit_prior(digits, FitConfig(steps=30, batch_size=16, lr=3e-3, log_every=1), progress=False)
    assert sum(hist["loss"][-5:]) < sum(hist["loss"][:5]) and model.meta["prior_steps"] == 30
    codes = model.sample_codes(6, generator=0)
    assert codes.shape == (6, 4, 4) and int(codes.max()) < model.config.codebook_size  # never the start token


def test_checkpoint_round_trip_keeps_codebook_prior_and_v(tiny_v: Path, tmp_path: Path) -> None:
    model = tiny(shape=(3, 64, 64), vae=str(tiny_v))
    data = GenData("frames", ((frames(16) + 1) * 127.5).round().to(torch.uint8), None, 256, 0)
    generators.fit(model, data, FitConfig(steps=2, batch_size=8), progress=False)
    model.fit_prior(data, FitConfig(steps=2, batch_size=4), progress=False)
    model.save(tmp_path / "vq.pt")
    tiny_v.rename(tmp_path / "moved.pt")  # the checkpoint carries V's encoder: V's file is not needed
    try:
        loaded = generators.load(tmp_path / "vq.pt")
    finally:
        (tmp_path / "moved.pt").rename(tiny_v)
    assert isinstance(loaded, VQGAN) and loaded.config == model.config and loaded.meta["prior_steps"] == 2
    assert torch.equal(loaded.quantizer.codebook, model.quantizer.codebook)
    for (k, a), b in zip(model.prior.state_dict().items(), loaded.prior.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    x = data.tensor(torch.arange(4))
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.sample(3, generator=5), model.sample(3, generator=5))
    assert torch.equal(perceptual_distance(loaded.v_encoder, x, -x), perceptual_distance(model.v_encoder, x, -x))


def test_frames_runs_give_their_v(tmp_path: Path, tiny_v: Path) -> None:
    from generators.vqgan import defaults_for_data

    assert defaults_for_data("digits") == {}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    assert defaults_for_data(f"frames:{tmp_path}") == {}  # no V in the run: L1 only
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "vae.pt").write_bytes(tiny_v.read_bytes())
    assert defaults_for_data(f"frames:{tmp_path}") == {"vae": str(tmp_path)}


def test_measure_reports_reconstruction_and_usage(tiny_v: Path) -> None:
    from generators.vqgan import measure
    from worldlab.vae import ConvVAE

    model = tiny(shape=(3, 64, 64))
    test = GenData("frames", ((frames(12) + 1) * 127.5).round().to(torch.uint8), None, 256, 0)
    res = measure(model, ConvVAE.load(tiny_v), test, batch_size=4, samples=3)
    for k in ("l1", "mse", "sharpness_vs_real", "frechet_v_latent", "perplexity", "code_use", "perplexity_all",
              "samples_frechet_v_latent"):
        assert math.isfinite(res[k]), k
    assert 1.0 <= res["perplexity"] <= 16 and 0 < res["code_use"] <= 1 and res["frames"] == 12
