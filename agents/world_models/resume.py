"""The resume rules of a run folder: which settings a resumed run may change, checked once.

Every stage is keyed by what it depends on (the round, V's id, the controller's hash), so a run
folder can be resumed after a kill, or continued with some settings changed. Those settings, and
why each is safe to change, are :data:`RESUMABLE`; any other difference from the saved
``config.json`` is refused with one line before any work.
"""

from __future__ import annotations

import json
from typing import Any

from agents.world_models.config import FLAG_OF, RunConfig
from worldlab.io import torch_load, zip_damage
from worldlab.rundir import RunDir

RESUMABLE: dict[str, str] = {
    "rounds": "each round's stages are keyed by the round: a run goes on for more rounds, or stops after "
              "fewer (its last finished round's controller becomes the final one)",
    "cma.generations": "the last round's evolution continues from its saved CMA-ES state; an earlier round's "
                       "controller, which later rounds' data was played with, is kept",
    "later_generations": "likewise, for the rounds after the first",
    "later_restarts": "the rounds after the first that have not run yet search that many times; a finished round's "
                      "controller is kept",
    "m_newest_repeat": "it weights the episodes of M's training in the rounds after the first: a finished round's "
                       "fine-tuned M is kept, the rounds still to train lean as asked (so a run stopped after "
                       "round 0 can be copied and each copy go on with its own weighting, a paired comparison)",
    "rounds_patience": "each round's real returns are kept in rounds.json: a change decides again where the rounds "
                       "stop (a stopped run goes on when it is raised)",
    "rounds_min": "likewise",
    "average_rounds": "the average is made after the rounds from their finished controllers: a change averages "
                      "again (or keeps the last round's) and plays the evaluation again",
    "workers": "collection and evaluation do not depend on the number of workers",
    "backend": "nor on where the workers run",
    "train_workers": "V's and M's resumable checkpoints are the same whatever the number of workers that wrote them",
    "loader_workers": "the data loader's processes only change how shards are read",
    "device": "a run trained on a GPU box goes on, or is evaluated and reported, on a laptop",
    "dream.compile": "it only changes how the same dream step is computed",
    "eval.episodes": "eval.json records the episodes and episode limit it was played with: a change plays the "
                     "evaluation again",
    "eval.max_steps": "likewise",
    "eval.videos": "videos are recorded when missing and never read by another stage",
    "eval.gap_every": "the gap measurements only watch the evolution: its candidates do not depend on them",
    "eval.gap_episodes": "likewise",
    "eval.probes": "the probe episodes only read the world model",
    "eval.probe_steps": "likewise",
    "eval.controller_episodes": "likewise",
    "eval.select_episodes": "the selection only reads finished rounds' controllers: a change picks again, and the "
                            "final controller and its evaluation follow the pick",
    "eval.select_margin": "likewise: the pick is made again from the returns selection.json holds",
    "collect.verify": "it only decides how closely finished shards are checked on a restart",
    "finetune.generations": "the real-game fine-tune comes after the dream-only result and continues from its "
                            "saved CMA-ES state",
}
"""Settings a resumed run may change, with the reason each is safe."""

CALIBRATING = ("eval.gap_every", "eval.gap_episodes")
"""Resumable settings that a run with ``dream.done_calibrate`` may not change: its gap measurements
set the dream's done bias, so they shape the evolution rather than only watch it."""

def resumable_settings() -> str:
    """The resumable settings as the command line spells them, for messages and help."""
    return ", ".join(FLAG_OF.get(k, f"--set {k}=...") for k in RESUMABLE)


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields where two config dicts differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def check_resumable(run: RunDir, cfg: RunConfig, *, resume: bool = True) -> bool:
    """Refuse ``cfg`` for the run folder ``run`` when it cannot continue the saved run, in one line.

    ``resume=False`` (a fresh command that found a run folder) accepts only the very same config;
    ``resume=True`` accepts changes of :data:`RESUMABLE` settings. Returns whether the saved config
    must be rewritten (a resumable setting changed, or the folder has none yet).
    """
    if not run.config_json.exists():
        return True
    # the saved config as this version reads it (fields added since take their defaults); tuples -> lists
    saved = json.loads(json.dumps(RunConfig.load(run).to_dict()))
    now = json.loads(json.dumps(cfg.to_dict()))
    diff = config_diff(saved, now)
    if not diff:
        return False
    if not resume:
        raise ValueError(f"{run} already holds a run with other settings (differs in {', '.join(diff[:6])}); "
                         f"pass --resume to continue it or choose another --out")
    fixed = [k for k in diff if k not in RESUMABLE or (k in CALIBRATING and cfg.dream.done_calibrate)]
    if fixed:
        raise ValueError(f"{run} was started with another config (differs in {', '.join(fixed[:6])}); resume it "
                         f"without changing settings ({resumable_settings()} may change), or choose another --out")
    return True


def check_checkpoints(run: RunDir, cfg: RunConfig) -> None:
    """Refuse, in one line and before any stage runs, a model checkpoint in ``run`` that belongs to
    another run: V or M (or an ensemble member) of another task, or of another architecture than
    ``cfg`` asks for (a resume cannot change those, so such a file was copied in). Never trained
    over silently: the stages would otherwise retrain V and M and keep a controller evolved on the
    old ones."""
    from dataclasses import asdict

    from worldlab.vae import VAEConfig

    _check_archives(run)
    m_cfg = cfg.m_config()
    models = [(run.vae, "V", cfg.vae, VAEConfig, "vae"), (run.mdrnn, "M", m_cfg, type(m_cfg), cfg.m_family)]
    models += [(run.mdrnn_member(k), f"M's member {k}", m_cfg, type(m_cfg), cfg.m_family)
               for k in range(1, cfg.ensemble.members)]
    for path, what, want, kind, family in models:
        if not path.is_file():
            continue
        state = torch_load(path)  # a damaged file: one line naming it
        meta = state.get("meta", {}) if isinstance(state, dict) else {}
        fix = f"restore this run's own file, or delete it to train {what} again"
        task = meta.get("task")
        if task is not None and task != cfg.task:
            raise ValueError(f"{path} is the {what} of a {task} run, not of this {cfg.task} run; {fix}")
        got_family = state.get("family") if isinstance(state, dict) else None
        if got_family is not None and got_family != family:
            raise ValueError(f"{path} holds a {got_family} {what}, but this run's is a {family} (m.family="
                             f"{cfg.m.family}); {fix}")
        try:
            got = asdict(kind.from_dict(state["config"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path} is not a worldlab {what} checkpoint (no readable config); {fix}") from None
        diff = sorted(k for k in set(got) | set(asdict(want)) if got.get(k) != asdict(want).get(k))
        if diff:
            raise ValueError(f"{path}: this {what} has another architecture than the run's (differs in "
                             f"{', '.join(diff)}); {fix}")


def _check_archives(run: RunDir) -> None:
    """Every checkpoint, training state, controller and CMA-ES state of ``run`` (zip archives: .pt,
    .npz) passes its records' CRC-32 check, so a damaged file of a finished stage is named on
    resume rather than when (or if) a later stage reads it."""
    if not run.checkpoints.is_dir():
        return
    for path in sorted(run.checkpoints.iterdir()):
        if path.suffix not in (".pt", ".npz") or path.name.startswith("."):
            continue
        reason = zip_damage(path)
        if reason is not None:
            what = "the controller is evolved again" if path.name.startswith("controller") else "that stage runs again"
            raise ValueError(f"{path} is corrupt ({reason}); delete it and resume: {what}")
