"""Bad settings are refused with one line before any work, and eval.* may change on --resume."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agents.controller import load_controller
from agents.world_models import check_resumable, override, preset
from agents.world_models.resume import RESUMABLE
from worldlab.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run"


def _dream_train(cli: Callable[..., subprocess.CompletedProcess], argv: list[str]) -> tuple[int, list[str]]:
    r = cli("dream_train.py", *argv)
    return r.returncode, r.stderr.strip().splitlines()


@pytest.mark.parametrize(("flags", "says"), [
    (["--temperature", "0"], "dream.temperature must be > 0"),
    (["--temperature", "-1.5"], "dream.temperature must be > 0"),
    (["--eval-episodes", "-4"], "eval.episodes must be >= 1"),
    (["--eval-episodes", "0"], "--eval-episodes"),
    (["--set", "eval.max_steps=0"], "eval.max_steps must be >= 1"),
    (["--set", "dream.max_steps=-1"], "dream.max_steps must be >= 1"),
    (["--set", "collect.episodes=0"], "collect.episodes must be >= 1"),
    (["--set", "seq_len=1"], "seq_len must be >= 2"),
    (["--generations", "0"], "cma.generations must be >= 1"),
    (["--set", "dream.precision=fp16"], "dream.precision must be one of fp32, bf16"),
    (["--set", "cma.restarts=0"], "cma.restarts must be >= 1"),
    (["--set", "cma.pick=best"], "cma.pick must be one of dream, real"),
    (["--set", "cma.pick_episodes=0"], "cma.pick_episodes must be >= 1"),
    (["--set", "eval.controller_episodes=-1"], "eval.controller_episodes must be >= 0"),
    (["--set", "later_restarts=2", "--train-in", "real"], "later_restarts=2 runs several searches in the dream"),
    (["--set", "later_restarts=0"], "later_restarts must be >= 1"),
    (["--set", "cma.restarts=2", "--train-in", "real"], "cma.restarts=2 runs several searches in the dream"),
    (["--set", "dream.precision=bf16"], "dream.precision=bf16 is built for a Transformer or Mamba M"),
])
def test_bad_settings_are_refused_before_any_work(flags: list[str], says: str, tmp_path: Path,
                                                  cli: Callable[..., subprocess.CompletedProcess]) -> None:
    out = tmp_path / "run"
    rc, lines = _dream_train(cli, ["car_racing", "--preset", "smoke", "--out", str(out), "--no-progress", *flags])
    assert rc == 2 and len(lines) == 1 and says in lines[0], lines
    assert not out.exists()


def test_eval_settings_may_change_on_resume(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    shutil.copytree(OLD_RUN, run.root)
    from agents.world_models import RunConfig

    cfg = RunConfig.load(run)
    assert {"eval.episodes", "eval.max_steps", "eval.videos"} <= set(RESUMABLE)
    assert check_resumable(run, override(cfg, ["eval.episodes=3", "eval.max_steps=30", "eval.videos=true"]))
    with pytest.raises(ValueError, match="already holds a run with other settings"):
        check_resumable(run, override(cfg, ["eval.episodes=3"]), resume=False)
    with pytest.raises(ValueError, match="differs in dream.temperature"):
        check_resumable(run, override(cfg, ["dream.temperature=1.2"]))
    assert not check_resumable(run, cfg)  # the same config: nothing to rewrite


def test_a_bad_eval_flag_never_leaves_a_run_stuck(tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]
                                                   ) -> None:
    """The fixed flag is accepted on --resume (the old run folder: every stage done, so only the
    evaluation runs again, with the new episode count)."""
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    rc, lines = _dream_train(cli, ["car_racing", "--resume", "--out", str(run), "--eval-episodes", "-4"])
    assert rc == 2 and len(lines) == 1
    rc, lines = _dream_train(cli, ["car_racing", "--resume", "--out", str(run), "--eval-episodes", "3", "--no-progress",
                              "--backend", "processes", "--workers", "1", "--set", "eval.probes=false"])
    assert rc == 0, lines
    import json

    ev = json.loads((run / "eval.json").read_text())
    assert ev["episodes"] == 3 and ev["max_steps"] == 25 and ev["lengths"] == [25, 25, 25]


@pytest.mark.parametrize("flags", [["--episodes", "0"], ["--episodes", "-1"], ["--max-steps", "0"]])
def test_watch_and_evaluate_refuse_bad_counts(flags: list[str], cli: Callable[..., subprocess.CompletedProcess]) -> None:
    for script, extra in (("watch.py", ["--record", "x.mp4"]), ("evaluate.py", [])):
        out = cli(script, str(OLD_RUN), *flags, *extra)
        assert out.returncode == 2, (script, out.stderr)
        assert out.stderr.strip().count("\n") == 0 and "must be >= 1" in out.stderr, (script, out.stderr)


@pytest.mark.parametrize("members, later_m_steps", [(1, None), (2, 3)])
def test_rounds_compound_with_a_frozen_v_and_a_finetuned_m(tmp_path: Path, members: int, later_m_steps: int | None
                                                           ) -> None:
    """freeze_v + finetune_m: round 1 encodes its frames with round 0's V and continues M from
    round 0's weights (its training log goes on from the saved step), so round 1's controller
    warm-starts on the same latent space. An ensemble's members each go on from their own weights,
    though round 1's episodes resample them anew, for ``later_m_steps`` more steps when given."""
    import json

    from agents.world_models import DreamTrainer, RunConfig
    from worldlab.logging import read_metrics
    from worldlab.mdrnn import MDRNN
    from worldlab.vae import ConvVAE

    cfg = override(RunConfig.load(OLD_RUN), ["freeze_v=true", "finetune_m=true", "backend=processes", "workers=1",
                                             "eval.videos=false", "eval.gap_every=0", "eval.probes=false", "later_generations=1",
                                             f"ensemble.members={members}", f"later_m_steps={later_m_steps}"])
    run = RunDir(tmp_path / "run")
    assert cfg.rounds == 2
    DreamTrainer(override(cfg, ["rounds=1"]), run, progress=False, threads=1).learn()
    between = time.time()
    DreamTrainer(cfg, run, progress=False, threads=1).learn()  # the second round, resumed
    # round 0 ran cma.generations, round 1 later_generations
    assert cfg.cma.generations == 2 and [load_controller(run.controller(k))[2]["generations"] for k in (0, 1)] == [2, 1]
    assert [len(np.load(run.cma_state(k))["hashes"]) for k in (0, 1)] == [2, 1]
    vae, m = ConvVAE.load(run.vae), MDRNN.load(run.mdrnn)
    assert vae.meta["steps"] == cfg.vae_train.steps  # not retrained in round 1
    target = cfg.mdrnn_train.steps + (later_m_steps or cfg.mdrnn_train.steps)  # round 1's
    assert m.meta["steps"] == target and m.meta["vae_id"] == vae.meta["id"]
    for k in range(members):
        stage = "mdrnn" if k == 0 else f"mdrnn_m{k}"
        recs = read_metrics(run, stage, f"{stage}/loss")
        steps = [r["step"] for r in recs]
        assert steps == sorted(steps) and len(steps) == len(set(steps))  # one run of steps: continued, not restarted
        assert steps[-1] >= target - cfg.mdrnn_train.log_every
        # round 0's steps were logged by round 0 (a restart would have logged them again in round 1)
        assert all((r["time"] < between) == (r["step"] <= cfg.mdrnn_train.steps) for r in recs)
        member = MDRNN.load(run.mdrnn_member(k))
        assert member.meta["steps"] == target
    lat = json.loads(run.latents_manifest.read_text())
    assert lat["meta"]["vae_id"] == vae.meta["id"] and len(lat["episodes"]) == 5
    # a resume asks for round 0's M again after a third round's episodes came in (which resample every member
    # anew): the members are finished, kept as they are
    from agents.world_models.stages import (
        collect_rollouts,
        encode_latents,
        memory_steps,
        train_memories,
    )

    third = override(cfg, ["rounds=3"])
    collect_rollouts(run, third, 2, progress=False)
    encode_latents(run, third, vae, progress=False)
    stamps = [run.mdrnn_member(k).stat().st_mtime_ns for k in range(members)]
    again = train_memories(run, third, vae.meta["id"], 0, progress=False, tensorboard=False)
    assert [m.meta["id"] for m in again] == [MDRNN.load(run.mdrnn_member(k)).meta["id"] for k in range(members)]
    assert [run.mdrnn_member(k).stat().st_mtime_ns for k in range(members)] == stamps
    # without finetune_m (V frozen, so its id does not change) M starts over on the grown data: not kept as finished
    before = again[0].meta["data"]
    fresh = train_memories(run, override(third, ["finetune_m=false", "later_m_steps=none"]), vae.meta["id"], 2,
                           progress=False,
                           tensorboard=False)
    assert len(fresh) == members and fresh[0].meta["data"] != before
    assert [m.meta["steps"] for m in fresh] == [cfg.mdrnn_train.steps] * members  # trained anew (it had more)
    if members == 1:  # round 2's episodes counted three times: other data, the key the plan expects of round 2
        from agents.world_models.plan import _round_data

        leaning = override(third, ["m_newest_repeat=3"])  # goes on from the fresh M's state to round 2's steps
        assert check_resumable(run, leaning)  # a run (or a copy of it) goes on with the later rounds' M leaning
        m3 = train_memories(run, leaning, vae.meta["id"], 2, progress=False, tensorboard=False)[0]
        assert m3.meta["data"] not in (before, fresh[0].meta["data"]) and m3.meta["data"] == _round_data(leaning, 2)
        assert m3.meta["steps"] == memory_steps(leaning, 2)
        with pytest.raises(ValueError, match="m_newest_repeat=3 weights a later round's fine-tuning of M: it needs "
                                             "--set finetune_m=true"):
            override(leaning, ["finetune_m=false", "later_m_steps=none"])
    with pytest.raises(ValueError, match="finetune_m needs freeze_v"):
        override(cfg, ["freeze_v=false"])
    with pytest.raises(ValueError, match="later_generations must be >= 1 or None"):
        override(cfg, ["later_generations=0"])
    with pytest.raises(ValueError, match="later_m_steps=3 is how far M goes on in later rounds: it needs"):
        override(cfg, ["finetune_m=false", "later_m_steps=3"])


def test_m_leans_toward_the_newest_rounds_episodes_when_asked() -> None:
    from collections import Counter

    from agents.world_models.stages import m_training_episodes

    cfg = override(preset("default", "doom_take_cover"), ["m_newest_repeat=3"])
    split = [e for e in range(600) if e % 10]  # rounds 0-3's training split (300 episodes, then 100 a round)
    newest = [e for e in split if e >= 500]
    assert Counter(m_training_episodes(cfg, split, 3)) == Counter(split) + Counter(newest * 2)
    assert Counter(m_training_episodes(cfg, split, 1)) == Counter(split) + Counter([e for e in split if 300 <= e < 400] * 2)
    assert m_training_episodes(cfg, split, 0) == split  # round 0 has no newer round
    assert m_training_episodes(override(cfg, ["m_newest_repeat=1"]), split, 3) == split
    assert preset("default", "doom_take_cover").m_newest_repeat == 1
    with pytest.raises(ValueError, match="m_newest_repeat must be >= 1, got 0; pass --set m_newest_repeat=... with a "
                                         "value >= 1"):
        override(cfg, ["m_newest_repeat=0"])


def test_the_rounds_patience_needs_the_selections_episodes() -> None:
    cfg = preset("smoke", "doom_take_cover")
    with pytest.raises(ValueError, match="rounds_patience=2 judges each round by the selection's real episodes: pass "
                                         "--set eval.select_episodes=100 too, or --set rounds_patience=0"):
        override(cfg, ["rounds_patience=2"])
    with pytest.raises(ValueError, match="rounds_patience must be >= 0, got -1"):
        override(cfg, ["rounds_patience=-1", "eval.select_episodes=4"])
    assert override(cfg, ["rounds_patience=2", "eval.select_episodes=4"]).rounds_patience == 2
    with pytest.raises(ValueError, match=r"rounds_min=9 is more rounds than rounds=7: pass --rounds 9 or more, "
                                         r"or a smaller rounds_min"):
        override(cfg, ["rounds_patience=2", "eval.select_episodes=4", "rounds=7", "rounds_min=9"])
    with pytest.raises(ValueError, match="rounds_min must be >= 1, got 0"):
        override(cfg, ["rounds_min=0"])
    assert override(cfg, ["rounds_patience=2", "eval.select_episodes=4", "rounds=12", "rounds_min=7"]).rounds_min == 7


def test_the_rounds_average_is_refused_beside_the_selection_and_covers_the_rounds_that_run() -> None:
    cfg = preset("smoke", "doom_take_cover")
    with pytest.raises(ValueError, match="average_rounds=3 and eval.select_episodes=4 both choose the final controller: "
                                         "pass --set average_rounds=0 or --set eval.select_episodes=0"):
        override(cfg, ["rounds=7", "average_rounds=3", "eval.select_episodes=4"])
    with pytest.raises(ValueError, match="average_rounds must be >= 0, got -1"):
        override(cfg, ["average_rounds=-1"])
    assert override(cfg, ["rounds=7", "average_rounds=3"]).averaged_rounds == [4, 5, 6]
    assert override(cfg, ["rounds=2", "average_rounds=3"]).averaged_rounds == [0, 1]  # fewer ran: all of them
    assert override(cfg, ["rounds=1", "average_rounds=3"]).averaged_rounds == []      # one round: no average
    assert override(cfg, ["rounds=7", "average_rounds=1", "eval.select_episodes=4"]).averaged_rounds == []
    doom = preset("default", "doom_take_cover")  # the Doom default averages its last three rounds
    assert doom.averaged_rounds == [4, 5, 6] and preset("default", "car_racing").average_rounds == 0
    assert override(doom, ["rounds=1"]).averaged_rounds == []  # --rounds 1 on it is not refused
    with pytest.raises(ValueError, match="pass --set average_rounds=0 or --set eval.select_episodes=0"):
        override(doom, ["eval.select_episodes=100"])
    assert override(doom, ["average_rounds=0", "eval.select_episodes=100"]).eval.select_episodes == 100
