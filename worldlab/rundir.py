"""RunDir: the one place that knows a run folder's file names.

Every stage, script and report reaches the files of a run through this object instead of
spelling paths, so the layout below is written down once::

    RUN/config.json              the resolved config                    .config_json
    RUN/data/                    frame shards + manifest.json           .data, .data_manifest
    RUN/latents/                 latent shards + manifest.json          .latents
    RUN/checkpoints/             every checkpoint                       .checkpoints
        vae.pt, vae.train.pt     V and its resumable training state     .vae, .vae_train
        mdrnn.pt, mdrnn.train.pt M and its resumable training state     .mdrnn, .mdrnn_train
        mdrnn_m{k}.pt (+ .train.pt) ensemble member k >= 1 of M         .mdrnn_member(k), .mdrnn_member_train(k)
        controller_r{k}.npz      round k's controller                   .controller(k)
        cma_r{k}.npz             round k's CMA-ES state                 .cma_state(k)
        cma_r{k}_s{j}.npz        search j's state (cma.restarts)        .cma_state(k, j)
        controller_r{k}_s{j}.npz search j's final mean, before the pick .restart_controller(k, j)
        controller_avg.npz       the last rounds' controllers averaged  .controller_avg
                                 (average_rounds)
        controller.npz           the final controller                   .controller()
        controller_finetuned.npz it, fine-tuned in the real game        .controller_finetuned
        cma_finetune_{d}.npz     the fine-tune's CMA-ES state (from d)  .cma_finetune(d)
        generator.pt             a generator's checkpoint (generators)  .generator
    RUN/samples/                 V's reconstruction and sample grids    .samples
    RUN/metrics.jsonl            one JSON object per logged scalar      .metrics
    RUN/tb/<stage>/              TensorBoard event files                .tb(stage)
    RUN/eval.json                the real-game evaluation               .eval_json
    RUN/eval_finetuned.json      that of the fine-tuned controller      .eval_finetuned_json
    RUN/selection.json           every round's C in the same real       .selection_json
                                 episodes, the round kept (eval.select_episodes)
    RUN/rounds.json              each round's C in those episodes as    .rounds_json
                                 soon as it is evolved (rounds_patience)
    RUN/eval_last.json           the last round's C when another was    .eval_last_json
                                 kept or the rounds averaged: same episodes
    RUN/videos/                  real.mp4, dream.mp4                    .videos
    RUN/figures/                 the report's plots                     .figures
    RUN/report.md                the report                             .report
    RUN/stages.json              each finished stage's wall time        .stages_json
    RUN/fidelity.json            the dream-fidelity report              .fidelity_json
    RUN/fidelity/                its open-loop strips and videos        .fidelity
    RUN/fidelity_probes.json     the dream on scripted probe episodes   .fidelity_probes_json
    RUN/fidelity_controllers.json  M on controllers' own real episodes  .fidelity_controllers_json
    RUN/tau_sweep/ (+ .json/.md) the temperature sweep                  .tau_sweep
        tau_{t}/controller.npz   its controller evolved at tau t        .tau_controller(t)
        tau_{t}/cma.npz          and that evolution's CMA-ES state      .tau_cma_state(t)
    RUN/reward_compare/          the novelty-penalty comparison         .reward_compare
    RUN/ablation/{variant}/      a dream variant's controller, CMA-ES   .ablation_controller(v), .ablation_cma_state(v)
        and result (+ RUN/ablation.json/.md: the table)                 .ablation_result(v), .ablation_json, .ablation_md
    RUN/renderer/                the dream renderer's training folder   .renderer
    RUN/diffusion_renderer/      the diffusion renderer's folder        .diffusion_renderer
        distilled.pt             it, distilled to few steps             .distilled
        sharpened.pt             that, fine-tuned with a discriminator  .sharpened
    RUN/m_compare/               scripts/m_compare.py's plan.json       .m_compare
        {family}/ (+ .log)       a sub-run of another M on RUN's data   .m_compare_run(f), .m_compare_log(f)
    RUN/m_heldout.json           M's held-out figures (m_compare)       .m_heldout_json

A generator trained on its own (``generators.fit``/``scripts/train_generator.py``) writes a
folder of the same shape::

    OUT/config.json              family, data, model and train config   .config_json
    OUT/checkpoints/generator.pt the resumable training checkpoint      .generator
    OUT/samples/step_{s:06d}.png the sample grid drawn at step s        .sample_grid(s)
    OUT/samples.png              the final sample grid                  .sample_grid()
    OUT/samples/step_{s:06d}.txt a sequence model's text samples        .sample_text(s)
    OUT/samples.txt              the final text samples                 .sample_text()
    OUT/attention.png            a GPT's attention maps                 .attention_png
    OUT/generator.pt             the trained generator                  .generator_final
    OUT/timing.json              its training time (generator_report)   .timing_json
"""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST = "manifest.json"
"""the manifest file of a shard folder (``data/`` and ``latents/``)."""


class RunDir:
    """Paths of one run folder (nothing is created or read by building it)."""

    def __init__(self, root: str | os.PathLike | RunDir) -> None:
        self.root = root.root if isinstance(root, RunDir) else Path(root)

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # -- top level -----------------------------------------------------------------------------

    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def data_manifest(self) -> Path:
        return self.data / MANIFEST

    @property
    def latents(self) -> Path:
        return self.root / "latents"

    @property
    def latents_manifest(self) -> Path:
        return self.latents / MANIFEST

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def sample_grid(self, step: int | None = None) -> Path:
        """A generator's sample grid drawn at training ``step``, or (``step=None``) its final grid."""
        return self.root / "samples.png" if step is None else self.samples / f"step_{int(step):06d}.png"

    def sample_midi(self, step: int) -> Path:
        """A music model's samples at ``step`` as MIDI."""
        return self.samples / f"step_{int(step):06d}.mid"

    def sample_text(self, step: int | None = None) -> Path:
        """A sequence model's text samples written at training ``step``, or (``step=None``) the final ones."""
        return self.root / "samples.txt" if step is None else self.samples / f"step_{int(step):06d}.txt"

    @property
    def attention_png(self) -> Path:
        """A GPT's attention maps (layers x heads) on held-out text, written at the end of training."""
        return self.root / "attention.png"

    def sample_grids(self) -> list[Path]:
        """The sample grids of a generator's training on disk, in step order."""
        return sorted(self.samples.glob("step_*.png"))

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def tb(self, stage: str | None = None) -> Path:
        """TensorBoard folder (of one ``stage``)."""
        return self.root / "tb" if stage is None else self.root / "tb" / stage

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_finetuned_json(self) -> Path:
        return self.root / "eval_finetuned.json"

    @property
    def selection_json(self) -> Path:
        return self.root / "selection.json"

    @property
    def rounds_json(self) -> Path:
        return self.root / "rounds.json"

    @property
    def eval_last_json(self) -> Path:
        return self.root / "eval_last.json"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def stages_json(self) -> Path:
        """Each finished stage's wall time, summed over resumes (``agents.world_models.plan``)."""
        return self.root / "stages.json"

    @property
    def fidelity_json(self) -> Path:
        return self.root / "fidelity.json"

    @property
    def fidelity_probes_json(self) -> Path:
        return self.root / "fidelity_probes.json"

    @property
    def fidelity_controllers_json(self) -> Path:
        return self.root / "fidelity_controllers.json"

    @property
    def fidelity(self) -> Path:
        return self.root / "fidelity"

    @property
    def tau_sweep(self) -> Path:
        return self.root / "tau_sweep"

    @property
    def ablation(self) -> Path:
        """The dream ablation's folder (``scripts/ablate_dream.py``)."""
        return self.root / "ablation"

    def ablation_controller(self, variant: str) -> Path:
        return self.ablation / variant / "controller.npz"

    def ablation_cma_state(self, variant: str) -> Path:
        return self.ablation / variant / "cma.npz"

    def ablation_result(self, variant: str) -> Path:
        return self.ablation / variant / "result.json"

    @property
    def ablation_json(self) -> Path:
        return self.root / "ablation.json"

    @property
    def ablation_md(self) -> Path:
        return self.root / "ablation.md"

    def tau_controller(self, tau: float) -> Path:
        return self.tau_sweep / f"tau_{tau:g}" / "controller.npz"

    def tau_cma_state(self, tau: float) -> Path:
        return self.tau_sweep / f"tau_{tau:g}" / "cma.npz"

    @property
    def m_compare(self) -> Path:
        return self.root / "m_compare"

    def m_compare_run(self, family: str) -> Path:
        return self.m_compare / family

    def m_compare_log(self, family: str) -> Path:
        return self.m_compare / f"{family}.log"

    @property
    def m_heldout_json(self) -> Path:
        return self.root / "m_heldout.json"

    @property
    def tau_sweep_json(self) -> Path:
        return self.root / "tau_sweep.json"

    @property
    def tau_sweep_md(self) -> Path:
        return self.root / "tau_sweep.md"

    @property
    def renderer(self) -> Path:
        return self.root / "renderer"

    @property
    def diffusion_renderer(self) -> Path:
        return self.root / "diffusion_renderer"

    @property
    def distilled(self) -> Path:
        """A diffusion model distilled to few steps (in a generator's folder)."""
        return self.root / "distilled.pt"

    @property
    def sharpened(self) -> Path:
        """A distilled diffusion renderer fine-tuned with a discriminator (in a generator's folder)."""
        return self.root / "sharpened.pt"

    @property
    def reward_compare(self) -> Path:
        return self.root / "reward_compare"

    @property
    def tune(self) -> Path:
        """Ray Tune's own storage for the temperature sweep."""
        return self.root / "tune"

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def vae(self) -> Path:
        return self.checkpoints / "vae.pt"

    @property
    def vae_train(self) -> Path:
        return self.checkpoints / "vae.train.pt"

    @property
    def mdrnn(self) -> Path:
        return self.checkpoints / "mdrnn.pt"

    @property
    def mdrnn_train(self) -> Path:
        return self.checkpoints / "mdrnn.train.pt"

    def mdrnn_member(self, k: int) -> Path:
        """Ensemble member ``k`` of M: member 0 is :attr:`mdrnn` itself (it lists the others)."""
        return self.mdrnn if int(k) == 0 else self.checkpoints / f"mdrnn_m{int(k)}.pt"

    def mdrnn_member_train(self, k: int) -> Path:
        """The resumable training state of ensemble member ``k`` (member 0: :attr:`mdrnn_train`)."""
        return self.mdrnn_train if int(k) == 0 else self.checkpoints / f"mdrnn_m{int(k)}.train.pt"

    def controller(self, k: int | None = None) -> Path:
        """Round ``k``'s controller, or (``k=None``) the final one."""
        return self.checkpoints / ("controller.npz" if k is None else f"controller_r{int(k)}.npz")

    def cma_state(self, k: int, restart: int = 0) -> Path:
        """Round ``k``'s resumable CMA-ES state (of search ``restart`` > 0 with ``cma.restarts``)."""
        return self.checkpoints / (f"cma_r{int(k)}.npz" if not restart else f"cma_r{int(k)}_s{int(restart)}.npz")

    def done_calibration(self, k: int, restart: int = 0) -> Path:
        """Round ``k``'s calibrated done biases (``dream.done_calibrate``; of search ``restart`` > 0)."""
        return self.checkpoints / (f"done_bias_r{int(k)}.json" if not restart else f"done_bias_r{int(k)}_s{int(restart)}.json")

    def restart_controller(self, k: int, restart: int) -> Path:
        """The final mean of round ``k``'s search ``restart`` (``cma.restarts``), before the pick."""
        return self.checkpoints / f"controller_r{int(k)}_s{int(restart)}.npz"

    @property
    def controller_avg(self) -> Path:
        """The parameter mean of the last rounds' controllers (``average_rounds``)."""
        return self.checkpoints / "controller_avg.npz"

    @property
    def controller_finetuned(self) -> Path:
        """The final controller after CMA-ES continued in the real game."""
        return self.checkpoints / "controller_finetuned.npz"

    def cma_finetune(self, start: str) -> Path:
        """The resumable CMA-ES state of a fine-tune that started from the controller with digest ``start``."""
        return self.checkpoints / f"cma_finetune_{start}.npz"

    @property
    def generator(self) -> Path:
        """A generator's resumable checkpoint during training."""
        return self.checkpoints / "generator.pt"

    @property
    def generator_final(self) -> Path:
        """A trained generator (what ``generators.load`` reads)."""
        return self.root / "generator.pt"

    @property
    def timing_json(self) -> Path:
        """A trained generator's steps and training seconds (a report reuses the model when they match)."""
        return self.root / "timing.json"

    # -- checks --------------------------------------------------------------------------------

    def is_run(self) -> bool:
        return self.config_json.is_file()

    def has_world_model(self) -> bool:
        return self.vae.is_file() and self.mdrnn.is_file()
