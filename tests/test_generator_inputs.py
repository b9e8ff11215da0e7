"""Augmenters and generator training refuse data of the wrong shape, dtype or range with one line
(what was given, what is expected, the fix), and a generator whose EMA has not warmed up says so."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import generators
from generators.augment import MixedDataset
from generators.data import GenData
from generators.train import FitConfig, fit, train_generator
from worldlab.rundir import RunDir


@pytest.fixture(scope="module")
def frames() -> GenData:
    """16x16 RGB "frames" as GenData keeps them: uint8 levels (N, 3, 16, 16)."""
    g = torch.Generator().manual_seed(0)
    return GenData("frames", torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=g), levels=256)


@pytest.fixture(scope="module")
def dcgan(frames: GenData) -> generators.Generator:
    torch.manual_seed(0)
    return generators.model_for("dcgan", frames, preset="tiny")


def _one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize(("real", "fix"), [
    (torch.randint(0, 256, (10, 16, 16, 3), dtype=torch.uint8), "x.permute(0, 3, 1, 2).float() / 127.5 - 1"),
    (np.zeros((10, 16, 16, 3), np.uint8) + 255, "torch.as_tensor(x).permute(0, 3, 1, 2).float() / 127.5 - 1"),
    (torch.rand(10, 16, 16, 3), "x.permute(0, 3, 1, 2) * 2 - 1"),
    (torch.rand(10, 3, 16, 16) * 255, "x.float() / 127.5 - 1"),
    (torch.rand(10, 3, 32, 32) * 2 - 1, "make them (3, 16, 16)"),
    ([torch.full((16, 16, 3), 7, dtype=torch.uint8)] * 4, "x.permute(2, 0, 1).float() / 127.5 - 1"),
])
def test_mixed_dataset_refuses_data_outside_the_model_space(real, fix: str, dcgan: generators.Generator) -> None:
    with pytest.raises(ValueError) as e:
        MixedDataset(real, dcgan, 0.25)
    msg = _one_line(e)
    given = "uint8" if getattr(real, "dtype", None) in (torch.uint8, np.uint8) or isinstance(real, list) else "float32"
    assert msg.startswith("MixedDataset: the real ") and f"are {given} (" in msg
    assert "dcgan generates float32 (3, 16, 16) images in [-1, 1]" in msg and fix in msg
    assert "or pass transform=" in msg


def test_mixed_dataset_takes_model_space_data_and_checks_what_transform_makes(dcgan: generators.Generator) -> None:
    ok = MixedDataset(torch.rand(12, 3, 16, 16) * 2 - 1, dcgan, 0.25)
    assert len(ok) == 16 and ok[15].shape == (3, 16, 16)
    nhwc = torch.randint(0, 256, (12, 16, 16, 3), dtype=torch.uint8)
    good = MixedDataset(nhwc, dcgan, 0.25,
                        transform=lambda x: ((x.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8))
    assert good[15].shape == (16, 16, 3) and good[15].dtype == torch.uint8  # the real format, as asked
    bad = MixedDataset(nhwc, dcgan, 0.25, transform=lambda x: x)
    with pytest.raises(ValueError) as e:
        bad[15]
    assert "transform turns the generated batches into items of float32 (3, 16, 16)" in _one_line(e)
    assert "real items are uint8 (16, 16, 3)" in str(e.value)


def test_fit_refuses_data_that_are_not_gen_data_levels(dcgan: generators.Generator) -> None:
    cases = [
        (torch.randint(0, 256, (10, 16, 16, 3), dtype=torch.uint8),
         "got uint8 (10, 16, 16, 3) with values", "GenData('mine', x, levels=256)"),
        (GenData("f", torch.rand(10, 3, 16, 16) * 2 - 1, levels=256),
         "got float32 (10, 3, 16, 16)", "((x + 1) * 127.5).round().to(torch.uint8)"),
        (GenData("f", torch.randint(0, 256, (10, 16, 16, 3), dtype=torch.uint8), levels=256),
         "channels-last", "x.permute(0, 3, 1, 2)"),
        (GenData("f", torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8), levels=17),
         "with levels=17", "256 for 0..255"),
    ]
    for data, given, fix in cases:
        with pytest.raises(ValueError) as e:
            fit(dcgan, data, FitConfig(steps=1), progress=False)
        msg = _one_line(e)
        assert msg.startswith("dcgan trains on a generators.data.GenData with integer levels (N, 3, 16, 16)")
        assert given in msg and fix in msg, msg


def test_a_generator_warns_when_its_ema_has_not_warmed_up(tmp_path) -> None:
    """A DDPM trained for 100 steps with the book's EMA 0.999 samples from weights that barely moved."""
    with pytest.warns(UserWarning) as caught:
        model, _ = train_generator("ddpm", "digits", FitConfig(steps=4, log_every=2, samples=4), out=tmp_path / "ddpm",
                                   preset="tiny", max_items=64, progress=False)
    msgs = [str(w.message) for w in caught if "EMA" in str(w.message)]
    assert len(msgs) == 1, msgs  # one warning, naming the steps and the fix
    assert "ddpm: its EMA weights (decay 0.999, averaging ~1,000 steps) have seen only 4 steps" in msgs[0]
    assert "train at least 1,000 steps (--steps) or lower the decay (--ema 0; 0 turns EMA off)" in msgs[0]
    assert model.meta["ema"] == {"decay": 0.999, "steps": 4}
    run = RunDir(tmp_path / "ddpm")
    for path in (run.generator, run.generator_final):  # the training checkpoint and the final model say it again
        with pytest.warns(UserWarning, match="have seen only 4 steps"):
            generators.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warmed up, or no EMA: silent
        assert generators.base.ema_warmup_warning("ddpm", 0.9, 10) is None
        assert generators.base.ema_warmup_warning("dcgan", 0.0, 4) is None
    assert "--ema 0.9;" in generators.base.ema_warmup_warning("ddpm", 0.999, 100)
