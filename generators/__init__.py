"""generators: the generative families of *Generative Deep Learning* behind one small API.

    import generators
    generators.available()                       # ['cgan', 'dcgan', 'ddpm', 'ebm', ...]
    data = generators.data.load("digits")         # images (N, 1, 8, 8) in [-1, 1] + labels
    model = generators.make("dcgan", shape=data.shape)
    generators.fit(model, data, generators.FitConfig(steps=500), out="runs/dcgan")
    x = model.sample(16, generator=0)             # (16, 1, 8, 8) float32 in [-1, 1]
    model.save("dcgan.pt"); same = generators.load("dcgan.pt")

Every model: ``loss(batch)`` (or ``training_step`` for GANs), ``sample(n, cond=None,
generator=seed)``, ``log_prob`` (realnvp, pixelcnn) / ``energy`` (ebm), ``save``/``load``. The
sequence families (lstm, gpt, mamba: :mod:`generators.sequence`) model text tokens
(:mod:`generators.text`): ``generators.data.load("python_docs")``, ``model.generate("def ")``; the
music Transformer models Bach's chorales as note and duration tokens (:mod:`generators.music`:
``generators.data.load("chorales")``, MIDI in and out). Image
convention: :mod:`generators.images`. Data sources: :mod:`generators.data`. Roles in the lab:
:mod:`generators.augment` (data mixer, observation wrapper), :mod:`generators.reward`
(reward-shaping wrapper; these two import gymnasium and are not loaded here) and
:mod:`generators.renderer` (a z-conditioned renderer that ``DreamEnv(renderer=...)`` draws with).
"""

from generators import data, images, music
from generators import diffusion as _diffusion  # noqa: F401  (registers ddpm)
from generators import diffusion_renderer as _diffusion_renderer  # noqa: F401  (registers diffusion_renderer)
from generators import ebm as _ebm  # noqa: F401  (registers ebm)
from generators import flow as _flow  # noqa: F401  (registers realnvp)
from generators import gan as _gan  # noqa: F401  (registers dcgan, wgan_gp, cgan)
from generators import gpt as _gpt  # noqa: F401  (registers gpt)
from generators import latent_prior as _latent_prior  # noqa: F401  (registers latent_prior)
from generators import mamba as _mamba  # noqa: F401  (registers mamba)
from generators import musegan as _musegan  # noqa: F401  (registers musegan)
from generators import music_transformer as _music_transformer  # noqa: F401  (registers music_transformer)
from generators import pixelcnn as _pixelcnn  # noqa: F401  (registers pixelcnn)
from generators import progan as _progan  # noqa: F401  (registers progan)
from generators import renderer as _renderer  # noqa: F401  (registers renderer, the dream's sharper decoder)
from generators import sequence as _sequence  # noqa: F401  (registers lstm)
from generators import stylegan as _stylegan  # noqa: F401  (registers stylegan)
from generators import stylegan_renderer as _stylegan_renderer  # noqa: F401  (registers stylegan_renderer)
from generators import vae as _vae  # noqa: F401  (registers vae, the lab's V)
from generators import vqgan as _vqgan  # noqa: F401  (registers vqgan)
from generators.base import GenConfig, Generator
from generators.registry import Family, available, family, load, make
from generators.train import FitConfig, fit, model_for, train_generator

__all__ = ["FitConfig", "Family", "GenConfig", "Generator", "available", "data", "family", "fit", "images",
           "load", "make", "model_for", "music", "train_generator"]
