"""Publishing a finished run: the checkpoints a user needs to watch and evaluate it (V, M and its
members, the final controller, each round's and the fine-tuned one if any), its ``config.json``, ``eval.json``,
``report.md``, its figures and videos, without rollout data, latents or training states, in half precision,
under a size limit. ``pretrained/car_racing`` and ``pretrained/doom_take_cover`` are made this way:

    python scripts/publish_run.py runs/car_racing pretrained/car_racing

A published folder is a run folder: ``scripts/watch.py`` and ``scripts/evaluate.py`` take it as
they take ``runs/...``. An existing publication is replaced only by a run that scored higher in
the real game (``--force`` replaces it anyway).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from worldlab.io import atomic_torch_save, atomic_write_json, read_json, sha256_file, torch_load
from worldlab.rundir import RunDir

LIMIT_MB = 40.0
DROPPED_META = ("mid_mu", "mid_logvar", "mid_h", "mid_c")
"""M's mid-episode start bank: only evolution reads it (megabytes for an ensemble)."""


def _half(state: dict[str, Any]) -> dict[str, Any]:
    """A module checkpoint with its floating-point weights in float16 (loading casts them back)."""
    out = dict(state)
    out["model"] = {k: v.half() if torch.is_tensor(v) and v.is_floating_point() else v
                    for k, v in state["model"].items()}
    out["meta"] = {k: v for k, v in state.get("meta", {}).items() if k not in DROPPED_META}
    return out


def publish_run(run_dir: str | Path, out_dir: str | Path, limit_mb: float = LIMIT_MB, force: bool = False,
                half: bool = True) -> dict[str, Any]:
    """Copy what watching and evaluating ``run_dir`` needs into ``out_dir`` (see the module doc);
    returns the manifest written as ``out_dir/published.json``."""
    run, out = RunDir(run_dir), RunDir(out_dir)
    for need in (run.config_json, run.eval_json, run.vae, run.mdrnn, run.controller()):
        if not need.is_file():
            raise FileNotFoundError(f"{run} is not a finished run ({need.name} is missing); finish it with "
                                    f"python scripts/dream_train.py TASK --resume --out {run}")
    score = read_json(run.eval_json)
    if out.eval_json.is_file() and not force:
        old = read_json(out.eval_json)
        if old.get("task") == score.get("task") and old["mean"] >= score["mean"]:
            raise ValueError(f"{out} already holds a better run ({old['mean']:.1f} against {score['mean']:.1f} over "
                             f"{old['episodes']} episodes); pass --force to replace it anyway")
    if not out.root.parent.is_dir():
        raise FileNotFoundError(f"the parent of {out} does not exist")
    tmp = RunDir(tempfile.mkdtemp(prefix=f".{out.root.name}.", dir=out.root.parent))
    try:
        tmp.checkpoints.mkdir()
        models = [run.vae, run.mdrnn, *sorted(run.checkpoints.glob("mdrnn_m*.pt"))]
        for src in models:
            if src.name.endswith(".train.pt"):
                continue
            state = torch_load(src)
            atomic_torch_save(_half(state) if half else state, tmp.checkpoints / src.name)
        # every round's controller too: a published folder resumes (``--resume --finetune-real G``)
        # without evolving its rounds again
        for src in (run.controller(), run.controller_finetuned, *sorted(run.checkpoints.glob("controller_r*.npz"))):
            if src.is_file():
                shutil.copy2(src, tmp.checkpoints / src.name)
        # the selection's and the rounds' patience's returns: which rounds ran and which was kept
        for src in (run.config_json, run.eval_json, run.eval_finetuned_json, run.eval_last_json, run.selection_json,
                    run.rounds_json, run.report, run.stages_json, run.fidelity_probes_json):
            if src.is_file():
                shutil.copy2(src, tmp.root / src.name)
        if run.figures.is_dir():
            shutil.copytree(run.figures, tmp.figures)
        if run.videos.is_dir():  # the report links them
            shutil.copytree(run.videos, tmp.videos)
        for grid in ("vae_recon.png", "vae_samples.png"):
            if (run.samples / grid).is_file():
                tmp.samples.mkdir(exist_ok=True)
                shutil.copy2(run.samples / grid, tmp.samples / grid)
        files = sorted(p for p in tmp.root.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        if size > limit_mb * 2**20:
            raise ValueError(f"the published run would take {size / 2**20:.1f} MB, over the limit of {limit_mb:g} MB")
        manifest = {"source": str(run), "half_precision": half, "score": {k: score[k] for k in
                    ("task", "episodes", "mean", "std", "min", "max")}, "megabytes": round(size / 2**20, 2),
                    "files": {p.relative_to(tmp.root).as_posix(): sha256_file(p) for p in files}}
        atomic_write_json(tmp.root / "published.json", manifest)
        if out.root.exists():  # the old publication goes only once the new one is complete
            old = out.root.with_name(f".{out.root.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.root.rename(old)
            tmp.root.rename(out.root)
            shutil.rmtree(old)
        else:
            tmp.root.rename(out.root)
    finally:
        shutil.rmtree(tmp.root, ignore_errors=True)
    return manifest


def describe(manifest: dict[str, Any]) -> str:
    s = manifest["score"]
    return (f"{s['task']}: {s['mean']:.1f} ± {s['std']:.1f} over {s['episodes']} real episodes, "
            f"{manifest['megabytes']:.1f} MB, {len(manifest['files'])} files{' (float16 weights)' if manifest['half_precision'] else ''}")


__all__ = ["publish_run", "describe", "LIMIT_MB"]
