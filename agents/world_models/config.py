"""The World Models algorithm's configuration: one dataclass per component, composed into a
:class:`RunConfig`, with the named presets ``smoke`` (a couple of minutes; the tests use it),
``default`` (a useful result on a 2-core laptop in about 1-2 hours) and ``paper`` (the paper's
scale, for a cluster or a GPU).

The models' own configs (:class:`~worldlab.vae.VAEConfig`, :class:`~worldlab.mdrnn.MDRNNConfig`,
:class:`~worldlab.training.TrainConfig`) live with the models in the core; this module composes
them with the settings of collection, CMA-ES, the dream and the evaluation.

The resolved config is saved as ``RUN/config.json`` and every stage reads it from there;
``override(cfg, ["cma.popsize=32", "vae_train.steps=500"])`` changes single fields. Which fields a
resumed run may change is decided in :mod:`agents.world_models.resume`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agents.cmaes import CMAConfig
from agents.pool import check_backend
from envs.dream import STARTS
from envs.dream_step import DONE_MODES, MEMBER_MODES, PRECISIONS
from envs.tasks import get_task
from worldlab.blocks import SCANS
from worldlab.io import atomic_write_json, read_json
from worldlab.mdrnn import MDRNNConfig
from worldlab.rundir import RunDir
from worldlab.sequence_m import SequenceMConfig
from worldlab.training import TrainConfig
from worldlab.vae import VAEConfig
from worldlab.world_model import action_dim_of

PRESETS = ("smoke", "default", "paper")


def _at_least(section: str, obj: Any, minimum: int | float, *names: str, optional: bool = False) -> None:
    """One-line refusal of ``obj.name < minimum`` (``optional``: None is allowed)."""
    for name in names:
        v = getattr(obj, name)
        if optional and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or v < minimum:
            key = name if section == "run" else f"{section}.{name}"
            flag = FLAG_OF.get(key, f"--set {key}=...")
            raise ValueError(f"{key} must be >= {minimum}{' or None' if optional else ''}, got {v!r}; "
                             f"pass {flag} with a value >= {minimum}")


FLAG_OF = {"eval.episodes": "--eval-episodes", "cma.generations": "--generations",
           "finetune.generations": "--finetune-real", "rounds": "--rounds", "workers": "--workers",
           "backend": "--backend", "train_workers": "--train-workers", "device": "--device",
           "dream.temperature": "--temperature", "seed": "--seed", "train_in": "--train-in"}
"""Command-line flags of the config fields that have one besides ``--set``."""


@dataclass
class CollectConfig:
    """Real-environment rollouts for V and M."""

    episodes: int = 200
    """episodes collected before the first round."""
    policy: str = "brownian"
    """first-round policy (``agents.policies``): "brownian" (a random walk; its car creeps),
    "holding" (the brownian with long holds of one action: the data shows where a held action leads),
    "driving" (a smooth walk with the gas on that follows the road it sees for a while),
    "scripted" (CarRacing only: a driver that follows the track from the env's privileged state,
    with deliberate excursions onto the grass, spins and full brakes) or "random_controller" (the
    paper's). docs/RESULTS.md compares their data's coverage."""
    max_steps: int | None = None
    """cut episodes at this many steps (None: the task's limit)."""
    episodes_per_round: int = 100
    """episodes added per later round, played by the evolved controller plus noise."""
    noise_std: float = 0.1
    """exploration noise of the later rounds' controller."""
    burst_prob: float = 0.0
    """probability per step that a later round's collector starts a burst of uniformly random
    actions (0: none): the data then shows M where C's states lead when C is pushed off its path."""
    burst_steps: int = 20
    """length of each burst."""
    verify: bool = True
    """on every (re)start, hash each collected shard against its checksum before going on; a missing
    or damaged shard is dropped and its episode collected again (False: only check that each file
    exists, for data sets of many gigabytes)."""

    def __post_init__(self) -> None:
        from agents.policies import POLICIES

        if self.policy not in POLICIES or self.policy == "controller":
            raise ValueError(f"collect.policy must be one of {', '.join(p for p in POLICIES if p != 'controller')}, "
                             f"got {self.policy!r}")
        _at_least("collect", self, 1, "episodes", "episodes_per_round")
        _at_least("collect", self, 1, "max_steps", optional=True)
        _at_least("collect", self, 0, "noise_std", "burst_prob")
        _at_least("collect", self, 1, "burst_steps")
        if self.burst_prob > 1:
            raise ValueError(f"collect.burst_prob is a probability per step, got {self.burst_prob}; pass "
                             f"--set collect.burst_prob=0.02 (a burst every ~50 steps) or 0 for none")

    def later_policy(self, k: int) -> str:
        """How round ``k`` >= 1 collects, in words."""
        bursts = f", random bursts of {self.burst_steps} steps at {self.burst_prob:g} per step" \
            if self.burst_prob > 0 else ""
        return f"round {k - 1}'s controller + noise {self.noise_std}{bursts}"

    def round_episodes(self, k: int) -> range:
        """Indices of the episodes round ``k`` collects: the first ``episodes`` in round 0, the next
        ``episodes_per_round`` in each later round."""
        if k == 0:
            return range(self.episodes)
        start = self.episodes + (k - 1) * self.episodes_per_round
        return range(start, start + self.episodes_per_round)


@dataclass
class DreamConfig:
    """The dream the controller is evolved in."""

    temperature: float = 1.0
    """tau: mixture logits / tau, sigmas * sqrt(tau) (the paper's Doom optimum: 1.15)."""
    max_steps: int | None = None
    """dream episode limit (None: the task's)."""
    compile: bool = True
    """fuse the dream step's element-wise work with inductor for CMA-ES on the CPU
    (``DreamVectorEnv(compile=True)``; docs/benchmarks/dream.md measures the gain and the seconds
    of compiling per temperature). Without a C++ compiler it warns and steps the same dream
    eagerly. The smoke preset turns it off: its dreams are too short to repay the compile. An
    ensemble's dream step (``ensemble``) runs eagerly whatever this says."""
    start: str = "first"
    """where dreams start: "first" (banked real first frames, an empty past: the paper's) or "mid"
    (real mid-episode states: after M is trained it is run teacher-forced over the training
    latents and a bank of ``start_bank`` states (z, and every member's LSTM state) at random times
    is saved with it)."""
    start_bank: int = 2048
    """mid-episode states banked when ``start`` is "mid" (512 at most for a Transformer or Mamba M,
    whose whole state is banked: :attr:`RunConfig.mid_bank_size`)."""
    horizon: int | None = None
    """dream episode length when ``start`` is "mid" (None: ``max_steps``, or the task's limit)."""
    precision: str = "fp32"
    """the dream step's number format: "fp32", or "bf16" for a Transformer or Mamba M (``m.family=gpt|mamba``):
    M's weights, arithmetic and state in bfloat16, the sampling in fp32. ~3x the Transformer M's
    dream steps/s at width 512 on a CPU with native bf16 (AVX512-BF16 or AMX; far slower without
    it); ``scripts/m_compare.py`` reports the bf16 step's held-out NLL beside the fp32 one."""
    done_bias: float = 0.0
    """added to M's done logit (every member's) in the dreams C is evolved in: ``ln k`` multiplies
    the odds of an end by k (for rare ends about the death rate), a dream pessimistic about the
    deaths everywhere alike, at one M's cost (an ensemble's ``done_mode="max"`` is pessimistic where
    its members disagree). 0: M's own ends. The controller probes report M's own expectation."""
    done_calibrate: float = 0.0
    """0: off. c > 0: the dream's done bias is measured on C's own real episodes (``agents/calibrate.py``):
    before a round's search (on its starting controller) and at every gap measurement (``eval.gap_every``,
    on the best candidate's ``eval.gap_episodes`` episodes, while every M steps along), the bias
    becomes the smallest at which the dream expects ``c`` ends per end the game dealt there, if that
    is more than the bias in force (``done_bias`` is the floor; it never falls within a round).
    Recorded in ``checkpoints/done_bias_r{k}.json``, the metrics (``calibrate/*``) and the controller."""

    def __post_init__(self) -> None:
        if isinstance(self.done_calibrate, bool) or not isinstance(self.done_calibrate, int | float) or \
                not math.isfinite(self.done_calibrate) or self.done_calibrate < 0:
            raise ValueError(f"dream.done_calibrate must be a number >= 0 (0: off), got {self.done_calibrate!r}; pass "
                             f"e.g. --set dream.done_calibrate=2 (the dream expects two ends per real one)")
        if isinstance(self.done_bias, bool) or not isinstance(self.done_bias, int | float) or \
                not math.isfinite(self.done_bias):
            raise ValueError(f"dream.done_bias must be a finite number, got {self.done_bias!r}; pass e.g. "
                             f"--set dream.done_bias=1.1 (ln 3: three times the odds of an end)")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, int | float) or \
                not self.temperature > 0:
            raise ValueError(f"dream.temperature must be > 0, got {self.temperature!r}; pass --temperature with a "
                             f"positive value (the paper's Doom optimum: 1.15)")
        _at_least("dream", self, 1, "max_steps", optional=True)
        if self.start not in STARTS:
            raise ValueError(f"dream.start must be one of {', '.join(STARTS)}, got {self.start!r}; pass "
                             f"--set dream.start=first (real first frames) or mid (real mid-episode states)")
        _at_least("dream", self, 1, "start_bank")
        _at_least("dream", self, 1, "horizon", optional=True)
        if self.precision not in PRECISIONS:
            raise ValueError(f"dream.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}; pass "
                             f"--set dream.precision=fp32 (or bf16 for a Transformer or Mamba M)")
        if self.horizon is not None and self.start != "mid":
            raise ValueError(f"dream.horizon ({self.horizon}) applies to mid-episode starts only; pass "
                             f"--set dream.start=mid, or limit first-frame dreams with dream.max_steps")

    def done_bias_text(self) -> str:
        """``done_bias`` and ``done_calibrate`` in words (the evolve line and the report's world-model
        line): "" when both are 0."""
        parts = []
        if self.done_bias:
            parts.append(f"M's done logit {self.done_bias:+g} in the dream ({math.exp(self.done_bias):.2f}x the odds "
                         f"of an end)")
        if self.done_calibrate:
            parts.append(f"the dream's done bias calibrated on C's real episodes to expect {self.done_calibrate:g} "
                         f"ends per real end" + (f" (at least {self.done_bias:+g})" if self.done_bias else ""))
        return "; ".join(parts)

    @property
    def steps(self) -> int | None:
        """The dream's episode limit: ``horizon`` for mid-episode starts when set, else ``max_steps``
        (None: the task's limit)."""
        return self.horizon if self.start == "mid" and self.horizon is not None else self.max_steps


@dataclass
class EnsembleConfig:
    """An M that knows what it does not know: an ensemble of MDN-RNNs, dropout, a disagreement penalty.

    All off by default (one M, no dropout, no penalty: the paper's dream)."""

    members: int = 1
    """MDN-RNNs trained, each on a bootstrap resample of the training episodes (1: the single M,
    trained on them all). They share one initialisation, so their LSTMs learn comparable
    features: a dream's controller reads the ``h`` of its dream's member, the real game's that of
    member 0."""
    member_mode: str = "episode"
    """"episode": each dream is driven by one member for its whole episode, drawn at reset (the
    cost of one M's step); "step": a fresh member each step, every member following every dream
    (the cost of ``members`` Ms' steps)."""
    dropout: float = 0.0
    """rate of a dropout mask on M's head input drawn afresh per dream, fixed for its episode
    (Dropout's Dream Land, Wellmer & Kwok 2021: 0.1 was best). M is trained without dropout."""
    disagreement_penalty: float = 0.0
    """subtracted from the dream's reward times the members' disagreement: the standard deviation
    over members of their predicted next-z means, averaged over latent dims (MOPO-style; needs
    ``members`` > 1, and costs ``members`` Ms' steps)."""
    done_mode: str = "member"
    """"member": a dream ends by its driving member's done probability; "max": by the largest of
    the members' (a pessimistic dream: where any member expects the end, the dream ends; needs
    ``members`` > 1, and costs ``members`` Ms' steps). Aimed at the Doom dream's optimism about C's
    deaths (:attr:`EvalConfig.controller_episodes` measures it)."""

    def __post_init__(self) -> None:
        _at_least("ensemble", self, 1, "members")
        if not isinstance(self.members, int):
            raise ValueError(f"ensemble.members must be an integer >= 1, got {self.members!r}")
        if self.member_mode not in MEMBER_MODES:
            raise ValueError(f"ensemble.member_mode must be one of {', '.join(MEMBER_MODES)}, got "
                             f"{self.member_mode!r}; pass --set ensemble.member_mode=episode or step")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or \
                not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ensemble.dropout must be in [0, 1), got {self.dropout!r}; pass "
                             f"--set ensemble.dropout=0.1 (Dropout's Dream Land's best) or 0 for none")
        _at_least("ensemble", self, 0, "disagreement_penalty")
        if self.done_mode not in DONE_MODES:
            raise ValueError(f"ensemble.done_mode must be one of {', '.join(DONE_MODES)}, got {self.done_mode!r}; "
                             f"pass --set ensemble.done_mode=member or max")
        if self.done_mode == "max" and self.members < 2:
            raise ValueError("ensemble.done_mode=max needs ensemble.members >= 2 (one M is never more pessimistic "
                             "than itself); pass --set ensemble.members=3")
        if self.disagreement_penalty > 0 and self.members < 2:
            raise ValueError(f"ensemble.disagreement_penalty ({self.disagreement_penalty}) needs ensemble.members "
                             f">= 2 (one M never disagrees with itself); pass --set ensemble.members=5")


SEQUENCE_BANK_MAX = 512
"""the most mid-episode starts banked for a Transformer or Mamba M (see :attr:`RunConfig.mid_bank_size`)."""

M_FAMILIES = {"mdrnn": "mdrnn", "gpt": "transformer_m", "mamba": "mamba_m"}
"""``m.family`` -> the checkpoint family of the M it trains (:data:`worldlab.sequence_m.M_CLASSES`)."""


@dataclass
class MConfig:
    """Which M the dream runs: the MDN-RNN of World Models (sized by ``mdrnn``), a Transformer
    ("gpt") or a Mamba state-space M (:mod:`worldlab.sequence_m`). Every family ends in the
    MDN-RNN's head (``mdrnn.gaussians``, the reward and done weights and the sigma clamps apply to
    all) and hands the controller its last hidden state as ``h``."""

    family: str = "mdrnn"
    """"mdrnn" (an LSTM, the paper's M), "gpt" (causal attention in a sliding window, with a ring
    key/value cache in the dream) or "mamba" (a selective scan; O(1) state per dream step)."""
    width: int = 0
    """the Transformer's or Mamba's residual width, the size of the ``h`` C sees (0: ``mdrnn.hidden``,
    the task's LSTM size, so the controller keeps its shape)."""
    layers: int = 2
    heads: int = 4
    """gpt: attention heads (the width must split into heads of an even size)."""
    window: int = 16
    """gpt: steps each position attends to, itself included (the dream's key/value cache holds as many)."""
    state: int = 16
    """mamba: the state size N of each channel."""
    expand: int = 2
    """mamba: inner width = expand x width."""
    conv: int = 4
    """mamba: the causal convolution's width."""
    scan: str = "auto"
    """mamba's training scan: "loop", "parallel" or "auto"."""

    def __post_init__(self) -> None:
        if self.family not in M_FAMILIES:
            raise ValueError(f"m.family must be one of {', '.join(M_FAMILIES)}, got {self.family!r}; pass "
                             f"--set m.family=mdrnn (the paper's LSTM), gpt or mamba")
        _at_least("m", self, 0, "width")
        _at_least("m", self, 1, "layers", "heads", "window", "state", "expand", "conv")
        if self.scan not in SCANS:
            raise ValueError(f"m.scan must be one of {', '.join(SCANS)}, got {self.scan!r}")


@dataclass
class EvalConfig:
    """Judging the controller in the real environment."""

    episodes: int = 100
    """real episodes (the paper: 100)."""
    max_steps: int | None = None
    """cut episodes at this many steps (None: the task's limit)."""
    videos: bool = True
    """record a real and a dream video of the final controller."""
    gap_every: int = 10
    """while C evolves in the dream, play each ``gap_every``-th generation's best candidate (and
    the last generation's) in ``gap_episodes`` real episodes and log its real score beside its
    dream score (``gap/dream``, ``gap/real``): the exploitation gap, made visible; the search's
    mean after that generation (the controller the round keeps) plays the same episodes
    (``gap/real_mean``). 0: off."""
    gap_episodes: int = 4
    """real episodes per gap measurement."""
    probes: bool = True
    """after the evaluation, play the scripted probe episodes (``agents/probes.py``: straight at
    speed, hard turns off the road, a spin, braking) and compare them with what M predicts
    (``fidelity_probes.json``, a table in ``report.md``)."""
    probe_steps: int = 300
    """steps of each probe episode."""
    controller_episodes: int = 6
    """with ``probes``: the final controller also plays this many real episodes (seeds 50,000 on,
    cut at ``max_steps``) and M runs teacher-forced over them: M's return, and the episode ends it
    expects against the game's (``fidelity_controllers.json``, a table in ``report.md``). A dream
    whose M expects fewer ends than the game deals where C goes ends C's dreams too rarely: on six
    Doom round-0 world models M expected fewer than one death per episode on five (0.33-0.74); the
    one that expected 2.03 gave the best controller, yet one at 0.57 transferred too, so it is a
    symptom to watch, not a predictor (docs/RESULTS.md, session 31). 0: off."""
    select_episodes: int = 0
    """0: the final controller is the last round's (a dream-only result). N > 0, with more than one
    round: after the last round every round's controller plays the same N real episodes (seeds
    apart from training's and the evaluation's) and the best of them (``select_margin``) becomes
    the final controller (``selection.json``). A selection by real returns: ``eval.json`` and the report say
    so, and the last round's controller is scored on the evaluation's episodes too
    (``eval_last.json``, the dream-only figure)."""
    select_margin: float = 1.0
    """the selection keeps the last round's controller unless another round beats it over those N
    episodes by more than this many standard errors of the paired difference (0: the best mean).
    On the three Doom world models measured, picking on one set of 100 episodes and scoring on
    another, 1.0 gained +72 over the last round on average and never lost more than 22; the best
    mean +65, losing up to 39 (docs/RESULTS.md)."""

    def __post_init__(self) -> None:
        _at_least("eval", self, 1, "episodes", "gap_episodes")
        _at_least("eval", self, 0, "select_episodes", "select_margin")
        _at_least("eval", self, 1, "max_steps", optional=True)
        _at_least("eval", self, 0, "gap_every")
        _at_least("eval", self, 2, "probe_steps")
        _at_least("eval", self, 0, "controller_episodes")


@dataclass
class FinetuneConfig:
    """CMA-ES continued in the real game from the dream's final controller (``--finetune-real G``).

    Its controller and evaluation are kept apart (``controller_finetuned.npz``,
    ``eval_finetuned.json``) and always labelled as trained in the real game: they are never
    mixed with the dream-only result."""

    generations: int = 0
    """real-game generations (0: no fine-tune)."""
    popsize: int = 16
    """candidates per generation."""
    rollouts: int = 2
    """real episodes per candidate."""
    sigma0: float = 0.05
    """initial step size around the dream's solution (smaller than a fresh start's)."""
    stall_steps: int | None = 50
    """end a fitness episode after this many steps without a positive reward (CarRacing pays for
    new tiles only; None: play every episode to its end)."""

    def __post_init__(self) -> None:
        _at_least("finetune", self, 0, "generations")
        _at_least("finetune", self, 2, "popsize")
        _at_least("finetune", self, 1, "rollouts")
        _at_least("finetune", self, 1, "stall_steps", optional=True)
        if not self.sigma0 > 0:
            raise ValueError(f"finetune.sigma0 must be > 0, got {self.sigma0!r}")


@dataclass
class RunConfig:
    """Everything a ``dream_train`` run needs; saved as ``RUN/config.json``."""

    task: str = "car_racing"
    preset: str = "default"
    seed: int = 0
    """base seed of collection, training and evolution."""
    device: str = "cpu"
    """torch device of training and the dream ("cpu", "cuda")."""
    workers: int = 2
    """Ray workers for real rollouts (collection, evaluation, real-env fitness)."""
    train_workers: int = 1
    """processes that train V and M together (Ray Train, DDP; gloo on CPU, nccl on cuda). 1: train
    in this process; N > 1: N Ray workers, each streaming 1/N of the episodes with 1/N of the batch."""
    backend: str = "ray"
    """where real rollouts run: "ray" (Ray workers: a local Ray, or the cluster at --address) or
    "processes" (local processes, for a machine without Ray; see agents/pool.py)."""
    loader_workers: int = 0
    """DataLoader worker processes that read and decompress shards for V and M (0: in the
    training process; a few pay off on a GPU, whose training outruns one reader)."""
    train_in: str = "dream"
    """where C is evolved: "dream" (the World Models way) or "real"."""
    rounds: int = 1
    """iterative training rounds: collect -> V -> M -> evolve, then again with new real data."""
    rounds_patience: int = 0
    """0: the run goes through all ``rounds``. P > 0 (needs ``eval.select_episodes`` N): each round's
    controller plays the selection's N real episodes as soon as it is evolved, and the rounds stop
    once P rounds in a row have not beaten the best mean before them; ``rounds`` is then the most a
    run goes to, and the selection picks among the rounds run. A weak world model keeps climbing for
    more rounds, a strong one stops early (docs/RESULTS.md)."""
    rounds_min: int = 1
    """with ``rounds_patience``: the rounds never stop before this many have run (a weak world
    model's early rounds can dip before they climb: docs/RESULTS.md, session 28)."""
    average_rounds: int = 0
    """0 or 1: the final controller is the last round's. K > 1: the parameter mean of the last K
    rounds' controllers (of all of them when fewer ran; ``checkpoints/controller_avg.npz``), a
    Polyak-style average of the rounds' CMA-ES means, which scatter round to round around a
    plateau. No real episode chooses it, so it is still a dream-only result; the last round's
    controller plays the evaluation's episodes too (``eval_last.json``). Not beside
    ``eval.select_episodes`` (both choose the final controller). Doom's default averages 3: on three
    world models rounds 4-6 beat the last round in five of six paired measurements (+20.5 ± 29.2 and
    +104.6 ± 30.6 across them on their two sets of 100 episodes); K = 2-5 measured on two
    (docs/RESULTS.md, sessions 37-39)."""
    later_generations: int | None = None
    """CMA-ES generations of every round after the first (None: ``cma.generations``). A later round
    starts from the previous round's controller in an M fine-tuned on that controller's episodes;
    on Doom its gap curve was narrowest 10-20 generations in: 20 generations scored 413.2 where 50
    scored 227.9 (round 0: 310.2), and 980.0 on a second world model (round 0: 594.0; docs/RESULTS.md)."""
    later_restarts: int | None = None
    """CMA-ES searches of every round after the first (None: ``cma.restarts``). A later round's
    search starts from the previous round's controller, so the spread between searches' seeds that
    ``cma.restarts`` buys down is round 0's (docs/RESULTS.md)."""
    controller_hidden: int = 0
    """0: the paper's linear controller on [z, h]; > 0: one hidden layer of this size."""
    freeze_v: bool = False
    """later rounds keep round 0's V (False: V trains ``vae_train.steps`` more on each round's
    data, so its latents change and M starts over). Frozen, the new frames are encoded by the same
    V and the latent space the controller acts on keeps its meaning."""
    finetune_m: bool = False
    """later rounds continue M from the previous round's weights for ``mdrnn_train.steps`` more
    steps on all the data (needs ``freeze_v``: a retrained V makes M's latents stale), so C's warm
    start still reads the h it was evolved on. False: M trains ``mdrnn_train.steps`` from scratch."""
    later_m_steps: int | None = None
    """with ``finetune_m``: the steps M (each member of an ensemble) goes on for in every round after
    the first (None: ``mdrnn_train.steps``). M's training is most of a later round's time, and an
    ensemble of K multiplies it by K: ``mdrnn_train.steps / K`` keeps a later round at one M's cost."""
    m_newest_repeat: int = 1
    """1: M trains on every round's episodes alike. R > 1 (with ``finetune_m``): in each round after
    the first, the episodes that round collected (the previous round's controller + noise) appear R times in M's
    training episodes, as a bootstrap's repeats do, so M's training leans toward the states the
    newest controller visits: in round 6 of Doom's default they are 100 of the 900 episodes
    collected (300 + 6 x 100), counted as 300 of 1,100 with R = 3. Built for the weak draws, whose dream still paid twice the real return in
    rounds 4-6 (docs/RESULTS.md, session 38); not yet measured."""
    collect: CollectConfig = field(default_factory=CollectConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    vae_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, lr=1e-3, amp="auto"))
    vae_batch: int = 64
    mdrnn: MDRNNConfig = field(default_factory=MDRNNConfig)
    mdrnn_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, lr=1e-3))
    mdrnn_batch: int = 32
    seq_len: int = 64
    m: MConfig = field(default_factory=MConfig)
    cma: CMAConfig = field(default_factory=CMAConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if self.train_in not in ("dream", "real"):
            raise ValueError(f"train_in must be 'dream' or 'real', got {self.train_in!r}")
        for key, n in (("cma.restarts", self.cma.restarts), ("later_restarts", self.later_restarts or 1)):
            if n > 1 and self.train_in != "dream":
                raise ValueError(f"{key}={n} runs several searches in the dream and keeps one: it needs --train-in "
                                 f"dream; pass --set {key}=1 for a search in the real game")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        check_backend(self.backend)
        from agents.policies import check_policy

        check_policy(self.collect.policy, self.task)  # the scripted driver drives CarRacing only
        if self.loader_workers < 0:
            raise ValueError(f"loader_workers must be >= 0, got {self.loader_workers}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        _at_least("run", self, 0, "rounds_patience")
        _at_least("run", self, 1, "rounds_min")
        if self.rounds_patience and self.rounds_min > self.rounds:
            raise ValueError(f"rounds_min={self.rounds_min} is more rounds than rounds={self.rounds}: pass "
                             f"--rounds {self.rounds_min} or more, or a smaller rounds_min")
        _at_least("run", self, 0, "average_rounds")
        if self.averaged_rounds and self.eval.select_episodes:
            raise ValueError(f"average_rounds={self.average_rounds} and eval.select_episodes="
                             f"{self.eval.select_episodes} both choose the final controller: pass "
                             f"--set average_rounds=0 or --set eval.select_episodes=0")
        if self.rounds_patience and not self.eval.select_episodes:
            raise ValueError(f"rounds_patience={self.rounds_patience} judges each round by the selection's real "
                             f"episodes: pass --set eval.select_episodes=100 too, or --set rounds_patience=0")
        if self.finetune_m and not self.freeze_v:
            raise ValueError("finetune_m needs freeze_v: a V retrained each round changes the latents M learned; "
                             "pass --set freeze_v=true too, or drop finetune_m")
        if self.m.family != "mdrnn" and (self.ensemble.members > 1 or self.ensemble.dropout > 0):
            raise ValueError(f"ensembles and dropout dreams are built for the MDN-RNN, not m.family={self.m.family}; "
                             f"pass --set m.family=mdrnn or drop ensemble.members / ensemble.dropout")
        if self.dream.precision != "fp32" and self.m.family == "mdrnn":
            raise ValueError(f"dream.precision={self.dream.precision} is built for a Transformer or Mamba M, not the "
                             f"MDN-RNN; pass --set m.family=gpt or mamba, or --set dream.precision=fp32")
        if self.dream.done_calibrate and (self.train_in != "dream" or not self.eval.gap_every):
            raise ValueError("dream.done_calibrate measures the dream on the gap measurements' real episodes: it needs "
                             "--train-in dream and eval.gap_every > 0; pass --set eval.gap_every=10, or "
                             "--set dream.done_calibrate=0")
        self.m_config()  # a Transformer's width must split into its heads: refused here, before any work
        _at_least("run", self, 1, "later_generations", "later_restarts", "later_m_steps", optional=True)
        if self.later_m_steps is not None and not self.finetune_m:
            raise ValueError(f"later_m_steps={self.later_m_steps} is how far M goes on in later rounds: it needs "
                             f"--set finetune_m=true (and freeze_v=true), or drop later_m_steps")
        _at_least("run", self, 1, "m_newest_repeat")
        if self.m_newest_repeat > 1 and not self.finetune_m:
            raise ValueError(f"m_newest_repeat={self.m_newest_repeat} weights a later round's fine-tuning of M: it "
                             f"needs --set finetune_m=true (and freeze_v=true), or drop m_newest_repeat")
        _at_least("run", self, 1, "vae_batch", "mdrnn_batch")
        _at_least("run", self, 2, "seq_len")
        if isinstance(self.train_workers, bool) or not isinstance(self.train_workers, int) or self.train_workers < 1:
            raise ValueError(f"train_workers must be an integer >= 1, got {self.train_workers!r}; pass "
                             f"--train-workers 1 (one process) or N > 1 (N Ray Train workers)")

    @property
    def mid_bank_size(self) -> int:
        """Mid-episode starts banked: ``dream.start_bank``, at most :data:`SEQUENCE_BANK_MAX` for a
        Transformer or Mamba M, whose whole step state (key/value cache, scan state; ~64-80 KB a
        start at width 256) is banked instead of the LSTM's (h, c) (2 KB)."""
        return self.dream.start_bank if self.m.family == "mdrnn" else min(self.dream.start_bank, SEQUENCE_BANK_MAX)

    @property
    def m_family(self) -> str:
        """The checkpoint family of this run's M: mdrnn, transformer_m or mamba_m."""
        return M_FAMILIES[self.m.family]

    def round_generations(self, k: int) -> int:
        """CMA-ES generations of round ``k``: ``cma.generations`` for round 0, ``later_generations``
        (when set) for the rounds after it."""
        return self.cma.generations if k == 0 or self.later_generations is None else self.later_generations

    def round_restarts(self, k: int) -> int:
        """CMA-ES searches of round ``k`` (1 when C trains in the real game): ``cma.restarts`` for
        round 0, ``later_restarts`` (when set) for the rounds after it."""
        if self.train_in != "dream":
            return 1
        return self.cma.restarts if k == 0 or self.later_restarts is None else self.later_restarts

    def round_picks_by_real(self, k: int) -> bool:
        """Whether round ``k`` keeps one of several searches by real episodes (``cma.pick="real"``)."""
        return self.cma.pick == "real" and self.round_restarts(k) > 1

    @property
    def picked_by_real(self) -> bool:
        """Whether some round keeps one of several searches by real episodes: the final controller
        is then a selection by real returns, and says so."""
        return any(self.round_picks_by_real(k) for k in range(self.rounds))

    @property
    def averaged_rounds(self) -> list[int]:
        """The rounds whose controllers ``average_rounds`` averages into the final one: the last K of
        those that run (``rounds``); [] when the final controller is one round's."""
        k = min(self.average_rounds, self.rounds)
        return list(range(self.rounds - k, self.rounds)) if k > 1 else []

    def m_config(self) -> MDRNNConfig | SequenceMConfig:
        """M's architecture: ``mdrnn`` for the MDN-RNN; for a Transformer or Mamba M, ``m``'s
        fields with ``mdrnn``'s sizes of z, actions and mixture (and its loss weights)."""
        if self.m.family == "mdrnn":
            return self.mdrnn
        d, m = self.mdrnn, self.m
        width = m.width or d.hidden
        if m.family == "gpt" and (width % m.heads or (width // m.heads) % 2):
            raise ValueError(f"m.width {width} must split into m.heads={m.heads} heads of an even size; "
                             f"pass --set m.heads=4 (or a width that {m.heads} divides into even parts)")
        return SequenceMConfig(z_size=d.z_size, action_dim=d.action_dim, discrete_actions=d.discrete_actions,
                               width=width, layers=m.layers, gaussians=d.gaussians, reward_weight=d.reward_weight,
                               done_weight=d.done_weight, logsigma_min=d.logsigma_min, logsigma_max=d.logsigma_max,
                               heads=m.heads, window=m.window, state=m.state, expand=m.expand, conv=m.conv,
                               scan=m.scan)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return _from_dict(cls, d)

    def save(self, run_dir: str | Path | RunDir) -> Path:
        return atomic_write_json(RunDir(run_dir).config_json, self.to_dict())

    @classmethod
    def load(cls, run_dir: str | Path | RunDir) -> RunConfig:
        """The config saved in a run folder, as this version reads it (fields added since take
        their defaults, fields dropped since are ignored)."""
        path = RunDir(run_dir).config_json
        if not path.is_file():
            raise FileNotFoundError(f"{RunDir(run_dir)} is not a worldlab run folder (no config.json); "
                                    f"start one with the dream_train script, --out {RunDir(run_dir)}")
        try:
            d = read_json(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not valid JSON ({e}); restore it or start the run again") from None
        return cls.from_dict(d)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a dict; keys it has no field for are ignored."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        t, v = hints[f.name], d[f.name]
        kwargs[f.name] = _from_dict(t, v) if dataclasses.is_dataclass(t) and isinstance(v, dict) else v
    return cls(**kwargs)


def preset(name: str, task: str) -> RunConfig:
    """The named preset for a task (``envs.TASKS``), sized by the task table's z and LSTM sizes.

    ``smoke``: seconds per stage, only checks that everything runs. ``default``: sized from this
    machine's measured speeds (2 cores: ConvVAE ~400 frames/s fp32, fast CarRacing several
    hundred steps/s per worker, the dream ~100k steps/s): a few hundred thousand frames.
    ``paper``: 10,000 rollouts, population 64 x 16, for a cluster or GPU machine.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    spec = get_task(task)
    z_size, rnn_hidden = spec.z_size, spec.rnn_hidden
    action_dim, discrete = action_dim_of(spec.action_space)
    vae = VAEConfig(z_size=z_size)
    mdrnn = MDRNNConfig(z_size=z_size, action_dim=action_dim, discrete_actions=discrete, hidden=rnn_hidden)
    doom = task == "doom_take_cover"
    if name == "smoke":
        return RunConfig(
            task=task, preset=name, workers=2, rounds=1,
            collect=CollectConfig(episodes=6, max_steps=120, episodes_per_round=2),
            vae=vae, vae_train=TrainConfig(steps=40, lr=1e-3, amp="auto", log_every=5, checkpoint_every=20),
            vae_batch=32,
            mdrnn=MDRNNConfig(z_size=z_size, action_dim=action_dim, discrete_actions=discrete, hidden=64),
            mdrnn_train=TrainConfig(steps=40, lr=3e-3, log_every=5, checkpoint_every=20), mdrnn_batch=8, seq_len=32,
            cma=CMAConfig(popsize=8, rollouts=2, generations=3, sigma0=0.1),
            dream=DreamConfig(temperature=1.15 if doom else 1.0, max_steps=120, compile=False),
            eval=EvalConfig(episodes=4, max_steps=120, gap_every=2, gap_episodes=2, probe_steps=60,
                            controller_episodes=1),
        )
    if name == "default":
        if doom:  # its LSTM 512 makes each dream step dearer: a smaller population than CarRacing's
            # V's loss weighted toward the pixels that move (vae.salience): a briefly trained V then draws
            # the fireballs (docs/RESULTS.md: 310 and 594 over two world models, 183 and 188 without).
            # Short later rounds: 100 episodes of the last round's C (noise, random bursts) show M the deaths
            # C's own states lead to (V frozen, M fine-tuned), then 20 generations from that C
            # (docs/RESULTS.md: one such round 310 -> 413, 594 -> 980 and 271 -> 421 on three world models,
            # 50 generations: 228; six such rounds 169 -> 283 -> 313 -> 426 -> 529 -> 560 -> 646 on a fourth).
            # Dreams as long as the real episode (2,100 steps): 1,000-step dreams capped what CMA-ES could
            # climb (its best candidates scored 870-959 of ~1,000); the same seed-0 run from scratch ends at
            # 708 against 646 on the same 100 episodes (+63 ± 49 paired; its own 100 episodes: 755 vs 654).
            # The final controller: the last three rounds' controllers averaged (their CMA-ES means scatter
            # around a plateau; docs/RESULTS.md, sessions 37-39).
            return RunConfig(
                task=task, preset=name, workers=2, rounds=7, freeze_v=True, finetune_m=True, later_generations=20,
                average_rounds=3,
                collect=CollectConfig(episodes=300, episodes_per_round=100, noise_std=0.1, burst_prob=0.05),
                vae=dataclasses.replace(vae, salience=4.0), vae_train=TrainConfig(steps=3000, lr=1e-3, amp="auto", sample_every=1000), vae_batch=64,
                mdrnn=mdrnn, mdrnn_train=TrainConfig(steps=3000, lr=1e-3), mdrnn_batch=32, seq_len=64,
                cma=CMAConfig(popsize=32, rollouts=8, generations=50, sigma0=0.1),
                dream=DreamConfig(temperature=1.15, max_steps=2100),
                eval=EvalConfig(episodes=100),
            )
        return RunConfig(
            task=task, preset=name, workers=2, rounds=2,
            collect=CollectConfig(episodes=200, episodes_per_round=100, noise_std=0.1),
            vae=vae, vae_train=TrainConfig(steps=4000, lr=1e-3, amp="auto", sample_every=1000), vae_batch=64,
            mdrnn=mdrnn, mdrnn_train=TrainConfig(steps=3000, lr=1e-3), mdrnn_batch=32, seq_len=64,
            cma=CMAConfig(popsize=64, rollouts=16, generations=60, sigma0=0.1),
            dream=DreamConfig(temperature=1.0),
            eval=EvalConfig(episodes=100),
        )
    return RunConfig(
        task=task, preset=name, workers=64, rounds=1 if doom else 2,
        collect=CollectConfig(episodes=10000, policy="random_controller", episodes_per_round=2000),
        vae=vae, vae_train=TrainConfig(steps=160000, lr=1e-4, amp="auto", sample_every=5000), vae_batch=100,
        mdrnn=mdrnn, mdrnn_train=TrainConfig(steps=40000, lr=1e-3), mdrnn_batch=100, seq_len=100,
        cma=CMAConfig(popsize=64, rollouts=16, generations=600 if doom else 1800, sigma0=0.1),
        dream=DreamConfig(temperature=1.15 if doom else 1.0),
        eval=EvalConfig(episodes=100),
    )


def _coerce(text: str, current: Any, hint: Any) -> Any:
    if isinstance(current, bool) or hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if text.lower() in ("none", "null") and (current is None or "None" in str(hint)):
        return None
    if isinstance(current, (list, tuple)):
        return type(current)(json.loads(text))
    if isinstance(current, int) or "int" in str(hint):
        return int(text)
    if isinstance(current, float) or "float" in str(hint):
        return float(text)
    return text


def override(cfg: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply ``"section.field=value"`` (or ``"field=value"``) overrides; unknown keys fail clearly."""
    d = cfg.to_dict()
    for a in assignments:
        if "=" not in a:
            raise ValueError(f"override {a!r} must look like section.field=value (e.g. cma.popsize=32)")
        key, text = a.split("=", 1)
        parts = key.strip().split(".")
        obj: Any = cfg
        for p in parts[:-1]:
            if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
                raise ValueError(f"unknown config key {key!r}; sections: "
                                 f"{', '.join(f.name for f in dataclasses.fields(cfg))}")
            obj = getattr(obj, p)
        if not dataclasses.is_dataclass(obj) or parts[-1] not in {f.name for f in dataclasses.fields(obj)}:
            raise ValueError(f"unknown config key {key!r}")
        hint = typing.get_type_hints(type(obj))[parts[-1]]
        try:
            value = _coerce(text.strip(), getattr(obj, parts[-1]), hint)
        except (ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"bad value for {key}: {e}") from None
        target = d
        for p in parts[:-1]:
            target = target[p]
        target[parts[-1]] = value
    return RunConfig.from_dict(d)
