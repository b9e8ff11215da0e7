"""Publishing a run: half-precision checkpoints, no data, under the limit, watchable and
evaluable like the run itself; a better publication is not replaced by a worse run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agents.world_models.publish import publish_run
from agents.world_models.runs import evaluate_run, watch_run
from worldlab.io import torch_load
from worldlab.rundir import RunDir

OLD_RUN = Path(__file__).parent / "fixtures" / "old_run"


def test_a_published_run_plays_as_the_run_did(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    shutil.copytree(OLD_RUN, run.root)
    out = RunDir(tmp_path / "pretrained" / "car_racing")
    out.root.parent.mkdir()
    manifest = publish_run(run, out)
    assert manifest["half_precision"] and manifest["megabytes"] < 40
    files = {p.relative_to(out.root).as_posix() for p in out.root.rglob("*") if p.is_file()}
    assert {"config.json", "eval.json", "published.json", "checkpoints/vae.pt", "checkpoints/mdrnn.pt",
            "checkpoints/controller.npz", "checkpoints/controller_r0.npz", "checkpoints/controller_r1.npz"} <= files
    assert not any(f.startswith(("data/", "latents/")) or f.endswith(".train.pt") or "cma_" in f for f in files)
    state = torch_load(out.vae)
    assert all(v.dtype.is_floating_point is False or str(v.dtype) == "torch.float16" for v in state["model"].values())
    assert out.vae.stat().st_size < 0.6 * run.vae.stat().st_size
    # evaluated and watched like the run: half-precision weights move the returns by little
    kw = {"episodes": 2, "workers": 1, "max_steps": 25, "backend": "processes"}
    a, b = evaluate_run(run, **kw), evaluate_run(out, **kw)
    assert np.allclose(a["returns"], b["returns"], atol=0.5)
    res = watch_run(out, mode="both", episodes=1, max_steps=5, record=str(tmp_path / "w.mp4"))
    assert len(res["real"]) == 1 and (tmp_path / "w.mp4").stat().st_size > 0
    # resumed (e.g. to fine-tune in the real game), its rounds' controllers are found, not evolved again
    from agents.world_models import RunConfig
    from agents.world_models.plan import RunPlan

    status = {s.key: s.done for s in RunPlan(out, RunConfig.load(out)).stages}
    assert status["evolve_r0"] and status["evolve_r1"] and status["evaluate"]
    # a worse run does not replace it; --force does; the limit is enforced before anything moves
    worse = RunDir(tmp_path / "worse")
    shutil.copytree(OLD_RUN, worse.root)
    ev = json.loads(worse.eval_json.read_text())
    worse.eval_json.write_text(json.dumps({**ev, "mean": ev["mean"] - 1}))
    with pytest.raises(ValueError, match="already holds a better run"):
        publish_run(worse, out)
    with pytest.raises(ValueError, match="over the limit of 0.01 MB"):
        publish_run(worse, out, limit_mb=0.01, force=True)
    assert json.loads(out.eval_json.read_text())["mean"] == ev["mean"]  # untouched
    publish_run(worse, out, force=True)
    assert json.loads(out.eval_json.read_text())["mean"] == ev["mean"] - 1
    assert not any(p.name.startswith(".") for p in out.root.parent.iterdir())  # no temp folder left
    with pytest.raises(FileNotFoundError, match="is not a finished run"):
        publish_run(tmp_path / "nothing", tmp_path / "x")


def test_damaged_files_are_named_with_a_safe_fix(tmp_path: Path) -> None:
    from agents.controller import load_controller

    bad = tmp_path / "controller.npz"
    np.savez(bad, config=np.array([{"a": 1}], dtype=object), params=np.zeros(3))  # pickled content
    with pytest.raises(ValueError) as e:
        load_controller(bad)
    msg = str(e.value)
    assert msg.startswith(f"controller {bad} is corrupt or not a worldlab controller") and "allow_pickle" not in msg
    assert msg.endswith("delete it and resume the run to evolve it again")
    ckpt = tmp_path / "vae.pt"
    ckpt.write_bytes((OLD_RUN / "checkpoints" / "vae.pt").read_bytes()[:5000])  # truncated
    with pytest.raises(ValueError) as e:
        torch_load(ckpt)
    assert str(e.value).startswith(f"checkpoint {ckpt} is corrupt") and str(e.value).endswith(
        "delete it and rerun that stage") and len(str(e.value)) < 400


@pytest.mark.parametrize("name", ["vae.pt", "mdrnn.pt", "controller.npz", "cma_r0.npz"])
def test_one_flipped_byte_in_a_checkpoint_is_caught_and_named(tmp_path: Path, name: str) -> None:
    from agents.chaos import flip_byte
    from agents.cmaes import CMAConfig, EvolutionState
    from agents.controller import load_controller

    path = tmp_path / name
    shutil.copy2(OLD_RUN / "checkpoints" / name, path)
    flip_byte(path)  # inside the largest record's data, not its headers
    with pytest.raises(ValueError) as e:
        if name.endswith(".pt"):
            torch_load(path)
        elif name.startswith("controller"):
            load_controller(path)
        else:
            EvolutionState.load(path, CMAConfig(popsize=4, rollouts=2, generations=2, seed=0, sigma0=0.1), 3)
    msg = str(e.value)
    assert str(path) in msg and "corrupt" in msg and "delete it" in msg and len(msg.splitlines()) == 1


@pytest.mark.parametrize("task", ["car_racing", "doom_take_cover"])
def test_the_published_runs_are_watched_and_evaluated_as_shipped(task: str, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1] / "pretrained"
    shipped = root / task
    published = json.loads((shipped / "published.json").read_text())
    assert published["score"]["episodes"] == 100 and published["score"]["task"] == task
    assert sum(json.loads((d / "published.json").read_text())["megabytes"] for d in root.iterdir()) <= 40
    from worldlab.io import sha256_file

    for name, digest in published["files"].items():  # what was published is what is shipped
        assert sha256_file(shipped / name) == digest, name
    res = evaluate_run(shipped, episodes=1, workers=1, max_steps=30, backend="processes")
    assert len(res["returns"]) == 1 and np.isfinite(res["returns"][0])
    watched = watch_run(shipped, mode="both", episodes=1, max_steps=5, record=str(tmp_path / "p.mp4"))
    assert len(watched["dream"]) == 1 and (tmp_path / "p.mp4").stat().st_size > 0
    # both ship their real-game fine-tune, watched with --controller (never with --sb3 at once)
    tuned = shipped / "checkpoints" / "controller_finetuned.npz"
    assert json.loads((shipped / "eval_finetuned.json").read_text())["episodes"] == 100
    watched = watch_run(shipped, mode="real", episodes=1, max_steps=5, controller=tuned, record=str(tmp_path / "t.mp4"))
    assert len(watched["real"]) == 1 and (tmp_path / "t.mp4").stat().st_size > 0
    with pytest.raises(ValueError, match="not both"):
        watch_run(shipped, sb3=tmp_path / "policy.zip", controller=tuned)


def test_a_published_run_resumes_without_collecting_its_data_again(tmp_path: Path) -> None:
    from agents.world_models import DreamTrainer, RunConfig, override
    from agents.world_models.plan import RunPlan

    run = RunDir(tmp_path / "run")
    shutil.copytree(OLD_RUN, run.root)
    out = RunDir(tmp_path / "pub")
    publish_run(run, out)
    cfg = override(RunConfig.load(out), ["eval.probes=false", "eval.videos=false", "backend=processes"])
    plan = RunPlan(out, cfg)
    assert all(s.done for s in plan.stages) and "collected" not in plan.resume_line()  # it has no data
    result = DreamTrainer(cfg, out, progress=False).learn()  # every round final: nothing to collect or encode
    assert result["mean"] == json.loads(out.eval_json.read_text())["mean"]
    assert not out.data.exists() and not out.latents.exists()
    # a round with work left (a longer last evolution) still needs the data: it is collected as before
    longer = override(cfg, ["cma.generations=5"])
    assert not {s.key: s.done for s in RunPlan(out, longer).stages}["collect_r0"]
    # the run it came from has its data: its rounds are not skipped, so its collection still checks
    # (and repairs) every shard
    from agents.world_models.plan import rounds_final

    assert rounds_final(out, cfg) and not rounds_final(run, override(RunConfig.load(run), ["backend=processes"]))
