"""The run's plan: numbered stages, what a resume finds, the wall time of each stage."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from agents.world_models import RunConfig, override, preset
from agents.world_models.plan import MEMBER_STEP_COST, RunPlan, stage_times
from worldlab.rundir import RunDir

OLD_RUN = Path(__file__).parent / "fixtures" / "old_run"


@pytest.fixture()
def old_run(tmp_path: Path) -> RunDir:
    shutil.copytree(OLD_RUN, tmp_path / "run")
    return RunDir(tmp_path / "run")


def test_a_fresh_run_plans_every_stage_of_every_round(tmp_path: Path) -> None:
    cfg = preset("default", "car_racing")  # 2 rounds
    plan = RunPlan(RunDir(tmp_path / "fresh"), cfg)
    assert [s.key for s in plan.stages] == [
        "collect_r0", "vision_r0", "encode_r0", "memory_r0", "evolve_r0",
        "collect_r1", "vision_r1", "encode_r1", "memory_r1", "evolve_r1", "evaluate", "probes", "videos"]
    assert plan.resume_line() is None and plan.start_line().startswith("13 stages, about ")
    assert all(s.estimate_s > 0 and not s.done for s in plan.stages)
    # a frozen V is not trained again; a fine-tune adds its two stages
    cfg = override(cfg, ["freeze_v=true", "finetune.generations=5", "eval.videos=false", "eval.probes=false"])
    keys = [s.key for s in RunPlan(RunDir(tmp_path / "fresh"), cfg).stages]
    assert "vision_r1" not in keys and keys[-3:] == ["evaluate", "finetune", "evaluate_finetuned"]


def test_an_ensemble_s_estimate_counts_its_members(tmp_path: Path) -> None:
    base = override(preset("default", "doom_take_cover"), ["rounds=1", "eval.gap_every=0"])

    def est(*sets: str) -> dict[str, float]:
        return {s.key: s.estimate_s for s in RunPlan(RunDir(tmp_path / "fresh"), override(base, list(sets))).stages}

    one, episode, pessimistic = est(), est("ensemble.members=3"), est("ensemble.members=3", "ensemble.done_mode=max")
    assert episode["memory_r0"] == pytest.approx(3 * one["memory_r0"])  # three Ms to train
    assert episode["evolve_r0"] == pytest.approx(one["evolve_r0"])  # one member steps each dream
    # every member steps every dream: the others their LSTM cell and done logit, a penalty every member's whole head
    assert pessimistic["evolve_r0"] == pytest.approx((1 + 2 * MEMBER_STEP_COST) * one["evolve_r0"])
    penalised = est("ensemble.members=3", "ensemble.done_mode=max", "ensemble.disagreement_penalty=0.5")
    assert penalised["evolve_r0"] == pytest.approx(3 * one["evolve_r0"])
    # the calibration measures the round's starting controller too: one more gap measurement's episodes
    gaps = override(base, ["eval.gap_every=10"])
    plain = RunPlan(RunDir(tmp_path / "fresh"), gaps).stages
    calib = RunPlan(RunDir(tmp_path / "fresh"), override(gaps, ["dream.done_calibrate=2"])).stages
    d = {s.key: s.estimate_s for s in calib}["evolve_r0"] - {s.key: s.estimate_s for s in plain}["evolve_r0"]
    # six measurements (10, ..., 50, last), each the best candidate's and the search's mean's episodes
    g = {s.key: s.estimate_s for s in plain}["evolve_r0"] - one["evolve_r0"]
    assert d == pytest.approx(g / 12)


def test_a_plan_with_the_rounds_patience_says_its_estimate_counts_every_round(tmp_path: Path) -> None:
    cfg = override(preset("default", "doom_take_cover"), ["rounds=12", "rounds_patience=2", "eval.select_episodes=100",
                                                       "average_rounds=0"])
    plan = RunPlan(RunDir(tmp_path / "fresh"), cfg, say=(said := []).append)
    keys = [s.key for s in plan.stages]
    assert [k for k in keys if k.startswith("judge")] == [f"judge_r{k}" for k in range(11)]  # not the last round
    assert " of work if all 12 rounds run (ETA " in plan.start_line()
    full = plan.remaining_s()
    with plan.stage("collect_r0"):
        pass
    assert said[0].startswith("stage 1/") and " left if all 12 rounds run (ETA " in said[0]
    plan.stop_after(3)  # the rounds stopped: later rounds' stages are gone and the estimate is plain again
    assert "collect_r4" not in [s.key for s in plan.stages] and plan.remaining_s() < full
    assert "if all" not in plan.start_line()
    with plan.stage("vision_r0"):
        pass
    assert "if all" not in said[-2] and " left (ETA " in said[-2]


def test_resume_line_says_what_was_found_and_what_is_left(old_run: RunDir) -> None:
    cfg = RunConfig.load(old_run)  # 2 rounds of 3 + 2 episodes, 2 generations, evaluated
    line = RunPlan(old_run, cfg).resume_line()
    assert line is not None and line.startswith(f"resuming {old_run}: round 0's 3 of 3 episodes collected; ")
    assert "round 1's C evolved; C evaluated; 1 of 12 stages left" in line  # the probe episodes are not played yet
    # a run killed in round 1's collection, with a longer round 1 asked for
    (old_run.controller(1)).unlink()
    cfg = override(cfg, ["collect.episodes_per_round=4", "cma.generations=5"])
    plan = RunPlan(old_run, cfg)
    line = plan.resume_line()
    assert "round 1's 2 of 4 episodes collected" in line and "C at generation 2 of 5" in line
    status = {s.key: s.done for s in plan.stages}
    assert status["collect_r0"] and status["evolve_r0"] and not status["collect_r1"] and not status["evolve_r1"]


def test_a_resumed_run_s_eta_starts_from_the_pace_its_stages_json_recorded(old_run: RunDir) -> None:
    # a population this large makes the finished rounds' evolutions minutes of the cost model
    cfg = override(RunConfig.load(old_run), ["cma.popsize=4096", "cma.rollouts=256", "cma.generations=40"])
    guess = RunPlan(old_run, cfg)
    done = [s for s in guess.stages if s.done]
    assert guess.remaining_s() > 0 and sum(s.whole_s for s in done) > 60  # the probe episodes are left
    # the earlier processes ran the finished stages 10x slower than the model says
    rows = [{"key": s.key, "title": s.title, "seconds": 10 * s.whole_s, "finished": "2026-12-06 00:00:00"}
            for s in done if 10 * s.whole_s > 5]
    rows.append({"key": "probes", "title": "", "seconds": 999.0, "finished": None})  # interrupted: not a pace
    old_run.stages_json.write_text(json.dumps({"stages": rows}))
    paced = RunPlan(old_run, cfg)
    assert paced.remaining_s() == pytest.approx(10 * guess.remaining_s(), rel=1e-6)
    assert "about 10 min of work" in paced.resume_line()  # the probes' 60 s, at the recorded pace


def test_each_kind_of_stage_keeps_its_own_pace(old_run: RunDir) -> None:
    from agents.world_models.plan import stage_kind

    assert [stage_kind(k) for k in ("memory_r3", "evolve_r12", "judge_r0", "probes", "evaluate_finetuned")] == \
        ["memory", "evolve", "judge", "probes", "evaluate_finetuned"]
    cfg = override(RunConfig.load(old_run), ["cma.popsize=4096", "cma.rollouts=256", "cma.generations=40"])
    guess = RunPlan(old_run, cfg)
    done = {s.key: s for s in guess.stages if s.done}
    assert done["evolve_r0"].whole_s > 30 and "probes" not in done
    slow = {"evolve": 5.0}  # the dream ran 5x slower than its base rate, every other stage 2x
    rows = [{"key": k, "title": s.title, "seconds": slow.get(stage_kind(k), 2.0) * s.whole_s,
             "finished": "2026-12-06 00:00:00"} for k, s in done.items() if 2 * s.whole_s > 5]
    old_run.stages_json.write_text(json.dumps({"stages": rows}))
    paced = RunPlan(old_run, cfg)
    assert paced.pace("evolve_r1") == pytest.approx(5.0) and paced.pace("evolve_r0") == pytest.approx(5.0)
    actual = sum(r["seconds"] for r in rows)
    est = sum(done[r["key"]].whole_s for r in rows)
    assert paced.pace("probes") == pytest.approx(actual / est)  # no probes run yet: the pace of every stage so far
    left = [s for s in paced.stages if not s.done]
    assert paced.remaining_s() == pytest.approx(sum(paced.pace(s.key) * s.estimate_s for s in left))


def test_each_stage_says_its_number_and_records_its_wall_time(tmp_path: Path) -> None:
    cfg = preset("smoke", "car_racing")
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    lines: list[str] = []
    plan = RunPlan(run, cfg, say=lines.append)
    with plan.stage("collect_r0"):
        time.sleep(0.05)
    with plan.stage("not_a_stage"):  # passes through, silently
        pass
    assert lines[0].startswith(f"stage 1/{len(plan)} · round 0: collect 6 real episodes (brownian) · run 0% done, about ")
    assert lines[1].startswith(f"stage 1/{len(plan)} done in ") and len(lines) == 2
    with plan.stage("vision_r0"):
        pass
    assert lines[2].startswith(f"stage 2/{len(plan)} · round 0: train V to 40 steps · run ")
    # stages that took no time (their work was found done) do not teach the ETA that all is done
    with plan.stage("encode_r0"):
        pass
    assert "about 0 s left" not in lines[4] and lines[4].startswith(f"stage 3/{len(plan)} · ")
    times = {t["key"]: t for t in stage_times(run)}
    assert set(times) == {"collect_r0", "vision_r0", "encode_r0"} and times["collect_r0"]["seconds"] >= 0.0
    # a resumed stage adds its time to what the killed run spent
    d = json.loads(run.stages_json.read_text())
    d["stages"][0]["seconds"] = 100.0
    run.stages_json.write_text(json.dumps(d))
    plan = RunPlan(run, cfg, say=lines.append)
    with plan.stage("collect_r0"):
        pass
    assert 100.0 <= {t["key"]: t for t in stage_times(run)}["collect_r0"]["seconds"] < 101.0


def test_a_stage_first_removes_the_half_written_files_a_kill_left(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    (run.checkpoints).mkdir(parents=True)
    run.data.mkdir()
    stale = [run.checkpoints / ".vae.train.pt.k2j4_9xq.tmp", run.data / ".ep_000003.npz.a1b2c3d4.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 2048)
    kept = [run.checkpoints / "vae.pt", run.root / ".notes.tmp", run.data / "ep_000003.npz"]
    for p in kept:
        p.write_bytes(b"y")
    lines: list[str] = []
    plan = RunPlan(run, preset("smoke", "car_racing"), say=lines.append)
    with plan.stage("collect_r0"):
        pass
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert lines[0].startswith("removed 2 half-written files a killed run left (0.0 MB: ")
    assert all(p.name in lines[0] for p in stale)


def test_training_resumes_past_a_save_that_a_kill_cut_short(tmp_path: Path) -> None:
    """A kill during a checkpoint save leaves ``.NAME.XXXXXXXX.tmp`` beside it; the next ``train`` on that
    checkpoint (in DDP, rank 0's) removes it, and only its own."""
    import torch

    from worldlab.io import remove_stale_temps_of
    from worldlab.training import TrainConfig, train

    ckpt = tmp_path / "m.train.pt"
    cut = tmp_path / ".m.train.pt.k2j4_9xq.tmp"
    others = [tmp_path / ".vae.train.pt.a1b2c3d4.tmp", tmp_path / ".m.train.pt.tmp", tmp_path / "m.train.pt.a1b2c3d4.tmp"]
    for p in [cut, *others]:
        p.write_bytes(b"x")

    class Line(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def loss(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": ((self.w - batch) ** 2).mean()}

    train(Line(), [torch.ones(4)], TrainConfig(steps=2, lr=0.1), checkpoint_path=ckpt, progress=False)
    assert ckpt.exists() and not cut.exists() and all(p.exists() for p in others)
    assert remove_stale_temps_of(tmp_path / "absent" / "x.pt") == []


def test_a_foreign_checkpoint_is_refused_before_any_stage(old_run: RunDir) -> None:
    import torch

    from agents.world_models import DreamTrainer
    from worldlab.io import atomic_torch_save

    cfg = RunConfig.load(old_run)
    DreamTrainer(cfg, old_run, progress=False)  # the run's own files pass
    own_vae, own_m = old_run.vae.read_bytes(), old_run.mdrnn.read_bytes()
    state = torch.load(old_run.vae, weights_only=True)
    atomic_torch_save({**state, "meta": {**state["meta"], "task": "doom_take_cover"}}, old_run.vae)
    with pytest.raises(ValueError, match=r"vae.pt is the V of a doom_take_cover run, not of this car_racing run; "
                                         r"restore this run's own file, or delete it to train V again"):
        DreamTrainer(cfg, old_run, progress=False)
    old_run.vae.write_bytes(own_vae)
    state = torch.load(old_run.mdrnn, weights_only=True)
    atomic_torch_save({**state, "config": {**state["config"], "hidden": 32}}, old_run.mdrnn)
    with pytest.raises(ValueError, match=r"mdrnn.pt: this M has another architecture than the run's \(differs in "
                                         r"hidden\); restore this run's own file"):
        DreamTrainer(cfg, old_run, progress=False)
    old_run.mdrnn.write_bytes(own_m)
    DreamTrainer(cfg, old_run, progress=False)


def test_a_fine_tune_whose_generations_grew_is_not_found_done(old_run: RunDir) -> None:
    import numpy as np

    from agents.controller import load_controller, save_controller
    from agents.world_models.stages import file_digest

    cfg = override(RunConfig.load(old_run), ["finetune.generations=3"])
    ccfg, params, _ = load_controller(old_run.controller())
    start = file_digest(old_run.controller())
    np.savez(old_run.cma_finetune(start), fitness=np.zeros((3, 4)))  # three generations of CMA-ES state
    save_controller(old_run.controller_finetuned, ccfg, params, generations=3, start=start, train_in="real")
    old_run.eval_finetuned_json.write_text(json.dumps({"controller": file_digest(old_run.controller_finetuned),
                                                       "episodes": cfg.eval.episodes}))
    status = {s.key: s for s in RunPlan(old_run, cfg).stages}
    assert status["finetune"].done and status["finetune"].found == "the fine-tuned controller"
    assert status["evaluate_finetuned"].done
    # asked for more generations: it goes on from generation 3, and the old evaluation no longer counts
    plan = RunPlan(old_run, override(cfg, ["finetune.generations=5"]))
    status = {s.key: s for s in plan.stages}
    assert not status["finetune"].done and not status["evaluate_finetuned"].done
    assert "the fine-tune at generation 3 of 5" in plan.resume_line()
    assert status["finetune"].estimate_s == pytest.approx(status["finetune"].whole_s * 2 / 5)
    # a fine-tune of another final controller is not this one's
    save_controller(old_run.controller_finetuned, ccfg, params, generations=3, start="other", train_in="real")
    assert not {s.key: s for s in RunPlan(old_run, cfg).stages}["finetune"].done


def test_a_fine_tuned_m_under_way_is_found_in_its_round_only(old_run: RunDir) -> None:
    import torch

    cfg = override(RunConfig.load(old_run), ["rounds=4", "freeze_v=true", "finetune_m=true"])  # rounds 0, 1 done
    steps = cfg.mdrnn_train.steps
    torch.save({"step": 2 * steps}, old_run.mdrnn_train)  # round 1's M at its end: rounds 2 and 3 not begun
    assert "M's training" not in RunPlan(old_run, cfg).resume_line()
    torch.save({"step": 2 * steps + 1}, old_run.mdrnn_train)  # round 2's training under way
    line = RunPlan(old_run, cfg).resume_line()
    assert line.count("M's training") == 1 and f"M's training at step {2 * steps + 1} of {3 * steps}" in line


def test_a_frozen_v_round_whose_data_grew_plans_m_again(old_run: RunDir) -> None:
    """Without finetune_m an M of fewer episodes is trained again though its V (frozen) and steps fit."""
    import torch

    from agents.world_models.plan import _round_data

    cfg = override(RunConfig.load(old_run), ["rounds=3", "freeze_v=true"])  # rounds 0, 1 done; round 2 not begun
    state = torch.load(old_run.mdrnn, weights_only=True)

    def memory_r2(data: str | None) -> bool:
        if data is None:
            state["meta"].pop("data", None)
        else:
            state["meta"]["data"] = data
        torch.save(state, old_run.mdrnn)
        return {s.key: s for s in RunPlan(old_run, cfg).stages}["memory_r2"].done

    assert _round_data(cfg, 1) != _round_data(cfg, 2)  # round 2's episodes join the training split
    assert not memory_r2(_round_data(cfg, 1))  # round 1's M: trained again on round 2's data
    assert memory_r2(_round_data(cfg, 2))
    assert memory_r2(None)  # an M saved before its data was recorded is kept, as the stage keeps it
    # with finetune_m the steps say it: round 2's target is past round 1's M
    assert not {s.key: s for s in RunPlan(old_run, override(cfg, ["finetune_m=true"])).stages}["memory_r2"].done


def test_a_round_not_collected_yet_is_not_encoded(old_run: RunDir) -> None:
    """The latents holding every episode collected so far do not make a later round's encoding done."""
    cfg = override(RunConfig.load(old_run), ["rounds=4"])  # rounds 0, 1 done: episodes 0-4 collected and encoded
    plan = RunPlan(old_run, cfg)
    status = {s.key: s for s in plan.stages}
    assert status["encode_r1"].done and not status["collect_r2"].done
    assert not status["encode_r2"].done and not status["encode_r3"].done


def test_a_kind_of_stage_learns_its_pace_apart_from_the_others(tmp_path: Path) -> None:
    cfg = preset("default", "doom_take_cover")
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    plan = RunPlan(run, cfg, say=lambda _: None)
    est = {s.key: s.estimate_s for s in plan.stages}
    before = plan.remaining_s()
    plan._learn("memory_r0", 2 * est["memory_r0"], est["memory_r0"])  # M ran 2x its base rate, the dream 5x
    plan._learn("evolve_r0", 5 * est["evolve_r0"], est["evolve_r0"])
    assert plan.pace("memory_r3") == pytest.approx(2.0) and plan.pace("evolve_r6") == pytest.approx(5.0)
    assert 2.0 < plan.pace("judge_r2") < 5.0  # a kind not run yet: the pace of every stage so far
    assert plan.remaining_s() > 2 * before
