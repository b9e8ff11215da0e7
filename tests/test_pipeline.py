"""The main job end to end on the smoke preset, resume, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SDL_VIDEODRIVER": "dummy", "PYTHONUNBUFFERED": "1"}


def run(script: str, *args: str, check: bool = True, env: dict | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                       env=env or ENV, timeout=1500, cwd=cwd)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def passed(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    # as the README's main command: no --out, in a folder that has no runs/ yet (a fresh clone)
    fresh = tmp_path_factory.mktemp("fresh_clone")
    r = run("dream_train.py", "car_racing", "--preset", "smoke", "--no-progress", cwd=fresh)
    return fresh / "runs" / "car_racing", r


def test_car_racing_smoke_end_to_end(smoke_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, r = smoke_run
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith("car_racing: real score ") and "over 4 episodes" in summary
    # the controller's spec (V and M) reaches the Ray workers per call, not as a constructor argument
    assert "constructor arguments in the object store" not in r.stdout + r.stderr
    ev = json.loads((out / "eval.json").read_text())
    assert ev["task"] == "car_racing" and ev["episodes"] == 4 and len(ev["returns"]) == 4
    assert np.isclose(ev["mean"], np.mean(ev["returns"])) and all(np.isfinite(ev["returns"]))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "smoke" and cfg["task"] == "car_racing"
    for f in ("checkpoints/vae.pt", "checkpoints/mdrnn.pt", "checkpoints/controller.npz", "checkpoints/cma_r0.npz",
              "figures/losses.png", "figures/cma.png", "videos/real.mp4", "videos/dream.mp4",
              "samples/vae_recon.png", "data/manifest.json", "latents/manifest.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    report = (out / "report.md").read_text()
    assert "figures/cma.png" in report and "videos/real.mp4" in report and f"{ev['mean']:.1f}" in report
    data = json.loads((out / "data" / "manifest.json").read_text())["episodes"]
    rets = [data[str(i)]["return"] for i in range(6)]  # round 0: the smoke preset's 6 brownian episodes
    assert f"| 0 | brownian | 6 (from 0) | {np.mean(rets):.1f} ± {np.std(rets):.1f} |" in report
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    gens = sorted({m["step"] for m in metrics if m["name"] == "evolve/best"})
    assert gens == [0, 1, 2]
    # the dream-vs-real gap: the smoke preset measures every 2nd generation and the last (generations 2 and 3)
    gap = {(m["step"], m["name"]): m["value"] for m in metrics if m["name"].startswith("gap/")}
    assert sorted({g for g, _ in gap}) == [1, 2]
    for g in (1, 2):
        assert np.isclose(gap[(g, "gap/dream_minus_real")], gap[(g, "gap/dream")] - gap[(g, "gap/real")])
        best = [m["value"] for m in metrics if m["name"] == "evolve/best" and m["step"] == g]
        assert np.isclose(gap[(g, "gap/dream")], best[-1])  # the candidate played is the generation's best
    assert "## Dream vs real" in report and (out / "figures" / "gap.png").stat().st_size > 0
    probes = json.loads((out / "fidelity_probes.json").read_text())
    assert probes["steps"] == 60 and "spin" in probes["probes"] and "| spin |" in report
    # the final controller's own real episode, M teacher-forced over it (eval.controller_episodes: 1 in the smoke preset)
    probed = json.loads((out / "fidelity_controllers.json").read_text())
    (row,) = probed["controllers"].values()
    assert probed["seeds"] == [50_000] and len(row["episodes"]) == 1 and row["episodes"][0]["steps"] <= 120
    assert 0 <= row["mean"]["ends_expected"] <= row["episodes"][0]["steps"]
    assert "## The controller's own episodes" in report and "| checkpoints/controller.npz | " in report
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").rglob("*"))
    # one numbered line per stage with the run's progress, and each stage's wall time in the report
    keys = ["collect_r0", "vision_r0", "encode_r0", "memory_r0", "evolve_r0", "evaluate", "probes", "videos"]
    n = len(keys)
    assert "8 stages, about " in r.stdout
    for i in range(1, n + 1):
        assert f"] stage {i}/{n} · " in r.stdout and f"] stage {i}/{n} done in " in r.stdout, i
    assert "stage 1/8 · round 0: collect 6 real episodes (brownian) · run 0% done, about " in r.stdout
    assert [t["key"] for t in json.loads((out / "stages.json").read_text())["stages"]] == keys
    assert "## Wall time per stage" in report and "| round 0: train V to 40 steps | " in report
    assert "episodes of up to 120 steps" in report and "## What V sees" in report and "samples/vae_recon.png" in report
    assert "## Environment" in report and "- worldlab commit " in report


def test_the_gap_plays_the_search_s_mean_which_the_round_keeps(
        smoke_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    """The last gap measurement's ``gap/real_mean`` is the final controller (the search's mean
    after its last generation) played on the gap's episodes."""
    from agents.fitness import GAP_GENERATION, RealPool, generation_seeds
    from agents.world_models.runs import load_run

    out, _ = smoke_run
    cfg, wm, ccfg, params = load_run(out)
    last = cfg.cma.generations - 1
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [m["value"] for m in metrics if m["name"] == "gap/real_mean" and m["step"] == last]
    pool = RealPool(cfg.task, wm, ccfg, 1, {"max_episode_steps": cfg.eval.max_steps} if cfg.eval.max_steps else {},
                    backend="processes")
    try:
        seeds = generation_seeds(cfg.cma.seed, GAP_GENERATION + last, cfg.eval.gap_episodes)
        real = float(np.mean([r["return"] for r in pool.play([(params, s) for s in seeds])]))
    finally:
        pool.close()
    assert logged and np.isclose(logged[-1], real)
    report = (out / "report.md").read_text()
    assert "| the mean, real |" in report and f"| {real:.1f} |" in report


def test_rerun_resumes_without_redoing_work(smoke_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = smoke_run
    before = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    eval_before = (out / "eval.json").read_text()
    r = run("dream_train.py", "car_racing", "--resume", "--out", str(out), "--no-progress")
    assert "collecting" not in r.stdout and "evolving" not in r.stdout and "evaluating" not in r.stdout
    assert f"] resuming {out}: round 0's 6 of 6 episodes collected; round 0's C evolved; C evaluated; " \
           "the probe episodes; 0 of 8 stages left" in r.stdout
    assert "] stage " not in r.stdout  # nothing was left to announce
    assert {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == before
    assert (out / "eval.json").read_text() == eval_before


def test_resume_may_change_rounds_and_workers_only(smoke_run: tuple[Path, subprocess.CompletedProcess],
                                                  cli: Callable[..., subprocess.CompletedProcess]) -> None:
    out, _ = smoke_run
    r = cli("dream_train.py", "car_racing", "--resume", "--out", str(out), "--temperature", "0.5", "--no-progress")
    assert r.returncode == 2 and "differs in dream.temperature" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    before = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    r = run("dream_train.py", "car_racing", "--resume", "--out", str(out), "--workers", "1", "--no-progress",
            "--set", "dream.compile=true")
    assert "collecting" not in r.stdout and "evolving" not in r.stdout  # nothing redone
    assert {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == before
    saved = json.loads((out / "config.json").read_text())
    assert saved["workers"] == 1 and saved["dream"]["compile"] is True
    run("dream_train.py", "car_racing", "--resume", "--out", str(out), "--workers", "2", "--no-progress")


def test_watch_records_both_panes_and_evaluate(smoke_run: tuple[Path, subprocess.CompletedProcess],
                                               tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    out, _ = smoke_run
    r = run("watch.py", str(out), "--record", str(tmp_path / "w.mp4"), "--max-steps", "30")
    assert (tmp_path / "w.mp4").stat().st_size > 0 and "real:" in r.stdout and "dream:" in r.stdout
    import imageio.v3 as iio

    frames = iio.imread(tmp_path / "w.mp4")
    assert frames.shape[2] == 2 * frames.shape[1]  # real | dream side by side
    r = run("evaluate.py", str(out), "--episodes", "2", "--workers", "2", "--max-steps", "50")
    assert "over 2 episodes" in r.stdout.strip().splitlines()[-1]
    r = cli("evaluate.py", str(out), "--episodes", "1", "--workers", "1", "--max-steps", "20", "--backend",
            "processes", "--controller", str(out / "checkpoints" / "controller_r0.npz"))
    assert r.returncode == 0 and "over 1 episodes" in r.stdout.strip().splitlines()[-1], r.stderr
    # the episodes the pipeline's evaluation played (on Ray), again on the processes backend: the same
    # returns, episode by episode
    r = cli("evaluate.py", str(out), "--episodes-of", str(out / "eval.json"), "--json", str(tmp_path / "again.json"),
            "--no-progress", "--backend", "processes")
    assert r.returncode == 0, r.stderr
    again, ev = (json.loads(p.read_text()) for p in (tmp_path / "again.json", out / "eval.json"))
    assert again["seeds"] == ev["seeds"] and again["returns"] == ev["returns"] and again["max_steps"] == 120
    r = cli("evaluate.py", str(out), "--episodes-of", str(out / "eval.json"), "--max-steps", "50")
    assert r.returncode == 2 and "differs from the episodes' limit" in r.stderr
    (tmp_path / "no_seeds.json").write_text(json.dumps({"mean": 3.0}))
    r = cli("evaluate.py", str(out), "--episodes-of", str(tmp_path / "no_seeds.json"))
    assert r.returncode == 2 and "no list of episode seeds in it" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("evaluate.py", str(out), "--controller", str(out / "nothing.npz"))
    assert r.returncode == 2 and "nothing.npz does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_renderer_report_then_watch_the_dream_with_it(smoke_run: tuple[Path, subprocess.CompletedProcess],
                                                       tmp_path: Path,
                                                       cli: Callable[..., subprocess.CompletedProcess]) -> None:
    out, _ = smoke_run
    rend = tmp_path / "renderer"
    passed(cli("renderer_report.py", str(out), "--steps", "4", "--batch-size", "8", "--max-frames", "200",
        "--speed-latents", "3", "--out", str(rend), "--no-progress"))
    res = json.loads((rend / "report.json").read_text())
    for who in ("v_decoder", "renderer"):
        assert 0 < res[who]["l1"] < 1 and res[who]["sharpness_vs_real"] > 0 and np.isfinite(res[who]["frechet_v_latent"])
    assert (rend / "compare.png").exists() and (rend / "dream_strip.png").exists()
    r = run("watch.py", str(out), "--dream", "--record", str(tmp_path / "d.mp4"), "--max-steps", "20",
            "--renderer", str(rend / "generator.pt"))
    assert "dream:" in r.stdout and (tmp_path / "d.mp4").stat().st_size > 0
    r = cli("watch.py", str(out), "--record", str(tmp_path / "x.mp4"), "--renderer", str(tmp_path / "no.pt"))
    assert r.returncode == 2 and "no renderer checkpoint at" in r.stderr


def test_diffusion_renderer_report_distils_then_watch_shows_it_beside_v(
        smoke_run: tuple[Path, subprocess.CompletedProcess], tmp_path: Path,
        script: Callable[[str], ModuleType], cli: Callable[..., subprocess.CompletedProcess]) -> None:
    import cv2

    import generators
    from worldlab.vae import ConvVAE

    out, _ = smoke_run
    rend, doc = tmp_path / "drend", tmp_path / "R.md"
    passed(cli("renderer_report.py", str(out), "--family", "diffusion_renderer", "--preset", "tiny", "--steps", "4",
        "--batch-size", "8", "--max-frames", "200", "--speed-latents", "4", "--teacher-steps", "4", "--distill-rounds", "2",
        "--distill-steps", "2", "--sharpen-steps", "2", "--temperature", "0.5", "--temperatures", "1",
        "--judge-vae", str(out), "--out", str(rend), "--doc", str(doc), "--no-progress"))
    res = json.loads((rend / "report.json").read_text())
    # the judge is the run's own V here: its Fréchet distances are the V-latent ones, bit for bit
    assert all(res[w]["frechet_judge"] == res[w]["frechet_v_latent"] for w in ("v_decoder", "unsharp_v", *res["drawers"]))
    assert f"Fréchet distance in the judge V's (`{out}`)" in doc.read_text() and f"--judge-vae {out}" in res["command"]
    assert res["drawers"] == ["teacher", "distilled", "distilled_t1", "sharpened"] and res["final"] == "sharpened"
    assert res["temperatures"] == {"teacher": 1.0, "distilled": 0.5, "distilled_t1": 1.0, "sharpened": 0.5}
    assert res["teacher"]["sampling_steps"] == 4 and res["distilled"]["sampling_steps"] == 1
    assert res["sharpened"]["sampling_steps"] == 1 and res["sharpen_steps"] == 2 and res["sharpen_seconds"] > 0
    for who in ("v_decoder", "teacher", "distilled", "sharpened"):
        assert 0 < res[who]["l1"] < 1 and np.isfinite(res[who]["frechet_v_latent"])
        assert res[who]["frames_per_s_1_core"] > 0
    for name in ("distilled.pt", "sharpened.pt"):
        saved = generators.load(rend / name).config
        assert saved.steps == 1 and saved.temperature == 0.5  # the dream draws with the chosen start noise
    text = doc.read_text()
    assert "<!-- diffusion-renderer:begin -->" in text and "| diffusion renderer, distilled | 1 |" in text
    assert "| diffusion renderer, distilled, start noise x0.5 | 1 |" in text
    assert "| diffusion renderer, distilled, sharpened (2 steps with D) (saved: the dream draws with it) | 1 |" in text
    assert "sharpening" in text and "adversarial diffusion distillation" in text
    assert res["speed_latents"] == 4 and "median of 3 rounds of 4 frames" in text and "--speed-latents 4" in res["command"]
    r = cli("renderer_report.py", str(out), "--sharpen-steps", "3")
    assert r.returncode == 2 and "needs --family diffusion_renderer" in r.stderr
    r = cli("renderer_report.py", str(out), "--speed-latents", "0")
    assert r.returncode == 2 and r.stderr.strip() == "error: --speed-latents must be >= 1, got 0"
    r = cli("renderer_report.py", str(out), "--judge-vae", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "--judge-vae" in r.stderr and "no V checkpoint at" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    video = tmp_path / "d.mp4"
    run("watch.py", str(out), "--record", str(video), "--max-steps", "6", "--renderer", str(rend / "sharpened.pt"))
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape[1] == 3 * frame.shape[0]  # real | dream drawn by V | the same dream by the renderer
    # the ablation: the same folder fine-tuned again without D (the distilled model kept, the fine-tune redone)
    sharp_before, distilled_before = (rend / "sharpened.pt").read_bytes(), (rend / "distilled.pt").read_bytes()
    passed(cli("renderer_report.py", str(out), "--family", "diffusion_renderer", "--preset", "tiny", "--steps", "4",
        "--batch-size", "8", "--max-frames", "200", "--speed-latents", "4", "--teacher-steps", "4", "--distill-rounds", "2",
        "--distill-steps", "2", "--sharpen-steps", "2", "--sharpen-adv-weight", "0", "--temperature", "0.5",
        "--out", str(rend), "--doc", str(doc), "--no-progress"))
    l1_only = json.loads((rend / "report.json").read_text())
    assert l1_only["sharpen_adv_weight"] == 0 and "--sharpen-adv-weight 0" in l1_only["command"]
    assert (rend / "distilled.pt").read_bytes() == distilled_before and (rend / "sharpened.pt").read_bytes() != sharp_before
    assert "| diffusion renderer, distilled, sharpened (2 steps of L1 only, no D) (saved: the dream draws with it) |" \
        in doc.read_text()
    r = cli("renderer_report.py", str(out), "--family", "diffusion_renderer", "--sharpen-adv-weight", "0")
    assert r.returncode == 2 and "need --sharpen-steps" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # more --steps continue the teacher's training and distil the longer-trained teacher again; the same
    # command once more only measures (the distilled model kept)
    again = ["renderer_report.py", str(out), "--family", "diffusion_renderer", "--preset", "tiny", "--steps", "6",
             "--batch-size", "8", "--max-frames", "200", "--speed-latents", "4", "--teacher-steps", "4", "--distill-rounds", "2",
             "--distill-steps", "2", "--temperature", "0.5", "--out", str(rend), "--no-progress"]
    before = (rend / "distilled.pt").read_bytes()
    passed(cli(*again))
    longer = json.loads((rend / "report.json").read_text())
    assert longer["steps"] == 6 and longer["extended_from"] == 4 and not longer["resumed"]
    assert longer["train_seconds"] > res["train_seconds"] and (rend / "distilled.pt").read_bytes() != before
    stamp = (rend / "distilled.pt").stat().st_mtime_ns
    passed(cli(*again))
    same = json.loads((rend / "report.json").read_text())
    assert same["resumed"] and same["distill_seconds"] == longer["distill_seconds"]
    assert (rend / "distilled.pt").stat().st_mtime_ns == stamp
    # --target-sharpness picks the start noise on training frames: the smallest scale that reaches it
    passed(cli(*[a for a in again if a not in ("--temperature", "0.5")], "--target-sharpness", "0.001", "--doc",
           str(doc)))
    picked = json.loads((rend / "report.json").read_text())
    assert picked["temperature_pick"]["picked"] == 0.5 and picked["temperatures"]["distilled"] == 0.5
    assert list(picked["temperature_pick"]["sharpness"]) == ["0.5"] and "--target-sharpness 0.001" in picked["command"]
    assert generators.load(rend / "distilled.pt").config.temperature == 0.5
    assert "was picked on" in doc.read_text() and "not on the held-out ones" in doc.read_text()
    rr = script("renderer_report")
    model, vae = generators.load(rend / "distilled.pt").eval(), ConvVAE.load(out / "checkpoints" / "vae.pt")
    frames = rr.episode_frames(out / "data", held_out=False, max_frames=40)
    t, curve = rr.pick_temperature(model, vae, frames, 100.0)  # out of reach: the largest scale, all tried
    assert t == 1.5 and list(curve) == [f"{g:g}" for g in rr.TEMPERATURE_GRID] and model.config.temperature == 0.5
    assert all(v > 0 for v in curve.values())
    r = cli(*again, "--target-sharpness", "0.8")
    assert r.returncode == 2 and "no --temperature" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("renderer_report.py", str(out), "--family", "diffusion_renderer", "--teacher-steps", "6",
            "--distill-rounds", "2")
    assert r.returncode == 2 and "divisible by 2**--distill-rounds" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_reward_compare_evolves_with_and_without_the_penalty(smoke_run: tuple[Path, subprocess.CompletedProcess]
                                                             ) -> None:
    out, _ = smoke_run
    run("reward_compare.py", str(out), "--flow-steps", "20", "--episodes", "2", "--no-progress")
    res = json.loads((out / "reward_compare" / "result.json").read_text())
    assert set(res["real"]) == {"with", "without"} and all(len(v) == 2 for v in res["real_returns"].values())
    assert np.isfinite(res["penalty_threshold_logp"]) and res["cma"]["generations"] == 3
    assert (out / "reward_compare" / "controller_penalised.npz").exists()


def test_temperature_sweep_with_ray_tune(smoke_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = smoke_run
    r = run("sweep_temperature.py", str(out), "--taus", "0.5", "1.3", "--generations", "2", "--popsize", "4",
            "--rollouts", "2", "--eval-episodes", "2", "--dream-steps", "40", "--real-steps", "40")
    rows = json.loads((out / "tau_sweep.json").read_text())["rows"]
    assert [row["temperature"] for row in rows] == [0.5, 1.3]
    assert all(len(row["real_returns"]) == 2 and np.isfinite(row["dream_mean"]) for row in rows)
    assert (out / "tau_sweep" / "tau_1.3" / "controller.npz").is_file()
    assert "| 1.3 |" in (out / "tau_sweep.md").read_text() and "1.3" in r.stdout


def test_changed_settings_need_another_folder(smoke_run: tuple[Path, subprocess.CompletedProcess],
                                             cli: Callable[..., subprocess.CompletedProcess]) -> None:
    out, _ = smoke_run
    r = cli("dream_train.py", "car_racing", "--preset", "smoke", "--out", str(out), "--temperature", "1.3")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out} already holds a run with other settings (differs in ")
    assert "dream.temperature" in lines[0] and lines[0].endswith("pass --resume to continue it or choose another --out")


def test_incompatible_controller_is_refused(smoke_run: tuple[Path, subprocess.CompletedProcess],
                                            tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    import shutil

    from agents.controller import ControllerConfig, save_controller

    out, _ = smoke_run
    bad = tmp_path / "bad"
    shutil.copytree(out, bad, ignore=shutil.ignore_patterns("data", "latents", "videos", "tb"))
    cfg = ControllerConfig.for_task({"type": "box", "shape": [3], "low": [-1, 0, 0], "high": [1, 1, 1]}, 288,
                                    "car_racing")
    save_controller(bad / "checkpoints" / "controller.npz", cfg, np.zeros(cfg.num_params))
    r = cli("evaluate.py", str(bad), "--episodes", "1")
    assert r.returncode == 2 and "belongs to another world model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_m_as_a_choice_and_m_compare(smoke_run: tuple[Path, subprocess.CompletedProcess], tmp_path: Path,
                                     cli: Callable[..., subprocess.CompletedProcess]) -> None:
    """m_compare trains a Transformer M (m.family=gpt) on the smoke run's data and V at the MDN-RNN's
    training time, through the pipeline from M on, dreaming from mid-episode states (--set)."""
    import shutil

    import torch

    out, _ = smoke_run
    doc, figures = tmp_path / "WORLD_MODELS.md", tmp_path / "m.json"
    args = [str(out), "--families", "mdrnn", "gpt", "--doc", str(doc), "--json", str(figures), "--dreams", "32",
            "--dream-steps", "3", "--probe-steps", "2", "--set", "dream.start=mid"]
    r = run("m_compare.py", *args)
    res = json.loads(figures.read_text())
    plan, rows = res["plan"], res["rows"]
    # equal time: the Transformer trains the MDN-RNN's 40 steps scaled by their measured step times
    assert plan["steps"]["gpt"] == max(1, round(40 * plan["step_seconds"]["mdrnn"] / plan["step_seconds"]["gpt"]))
    assert rows["gpt"]["train_steps"] == plan["steps"]["gpt"] and rows["mdrnn"]["train_steps"] == 40
    gpt = out / "m_compare" / "gpt"
    assert json.loads((gpt / "config.json").read_text())["m"]["family"] == "gpt"
    assert os.path.samefile(gpt / "checkpoints" / "vae.pt", out / "checkpoints" / "vae.pt")  # linked, not trained again
    log = (out / "m_compare" / "gpt.log").read_text()
    assert "collecting" not in log and "M (Transformer M 2 x 64, 4 heads, window 16, 5 Gaussians)" in log
    assert "banking 512 mid-episode states" in log and "starting mid-episode" in log
    m = torch.load(gpt / "checkpoints" / "mdrnn.pt", weights_only=True)
    assert m["family"] == "transformer_m" and m["meta"]["mid_k"].shape == (1, 512, 2, 4, 16, 16)
    assert "and M (Transformer M 2 x 64, 4 heads, window 16, 5 Gaussians)" in (gpt / "report.md").read_text()
    for f in ("mdrnn", "gpt"):
        h = rows[f]["heldout"]
        assert np.isfinite(h["nll_per_dim"]) and set(h["open_loop_latent_mse_at"]) == {"1", "10", "30"}
        assert rows[f]["dream_steps_s"] > 0 and len(json.loads((Path(rows[f]["folder"]) / "eval.json").read_text())
                                                      ["returns"]) == 4
    text = doc.read_text()
    from worldlab.training import native_bf16

    if native_bf16(torch.device("cpu")):  # the Transformer M's bf16 step beside its fp32 one
        assert np.isfinite(rows["gpt"]["heldout_bf16"]["nll_per_dim"]) and rows["gpt"]["dream_steps_s_bf16"] > 0
        assert "stepped in bf16 (`--set dream.precision=bf16`): held-out NLL" in text
    else:
        assert "heldout_bf16" not in rows["gpt"] and "stepped in bf16" not in text
    assert "<!-- m-compare-car_racing:begin -->" in text and "| Transformer M 2 x 64, 4 heads, window 16 |" in text
    assert "the MDN-RNN's at equal training time" in text
    again = cli("m_compare.py", *args)  # finished: nothing trained again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training M" not in again.stdout and "gpt: finished in" in again.stdout and "training M" in r.stdout
    run("evaluate.py", str(gpt), "--episodes", "1", "--max-steps", "20")  # the run's M loads without being told
    r = cli("dream_train.py", "car_racing", "--resume", "--out", str(gpt), "--no-progress", "--set", "m.family=mamba")
    assert r.returncode == 2 and "differs in m.family" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    shutil.copy(out / "checkpoints" / "mdrnn.pt", gpt / "checkpoints" / "mdrnn.pt")  # an MDN-RNN copied over it
    r = cli("dream_train.py", "car_racing", "--resume", "--out", str(gpt), "--no-progress")
    assert r.returncode == 2 and "holds a mdrnn M, but this run's is a transformer_m (m.family=gpt)" in r.stderr


@pytest.mark.parametrize(("name", "args", "message"), [
    ("dream_train.py", ["car_racin", "--preset", "smoke"], "error: unknown task 'car_racin'; known tasks:"),
    ("dream_train.py", ["car_racing", "--resume", "--out", "/nonexistent/run"], "error: nothing to resume"),
    ("dream_train.py", ["car_racing", "--set", "cma.popsiz=3"], "error: unknown config key 'cma.popsiz'"),
    ("watch.py", ["/nonexistent/run", "--record", "x.mp4"], "error: run folder /nonexistent/run does not exist"),
    ("evaluate.py", ["/nonexistent/run"], "error: run folder /nonexistent/run does not exist"),
    ("evaluate.py", ["/nonexistent/run", "--episodes-of", "/nonexistent/e.json"],
     "error: --episodes-of /nonexistent/e.json: cannot read it as JSON"),
])
def test_bad_input_gives_one_line(name: str, args: list[str], message: str,
                                  cli: Callable[..., subprocess.CompletedProcess]) -> None:
    r = cli(name, *args)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(message) and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_input_gives_one_line_from_the_shell_too() -> None:
    """The refusals above, called in this process, are what a shell sees: one line, status 2, nothing
    else on the interpreter's way out."""
    r = run("dream_train.py", "car_racin", "--preset", "smoke", check=False)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: unknown task 'car_racin'; known tasks:") and r.stderr.count("\n") == 1, r.stderr


def test_renderer_doc_reads_a_failed_renderer_as_failed(script: Callable[[str], ModuleType]) -> None:
    """The RENDERER.md narrative follows the figures: a renderer no sharper than V's decoder is
    said to have failed, never described as drawing objects V smears."""
    what = script("renderer_report").what_it_shows
    v = {"l1": 0.0135, "mse": 0.0009, "sharpness_vs_real": 0.10, "frechet_v_latent": 0.13}
    failed = what({"l1": 0.0327, "mse": 0.0036, "sharpness_vs_real": 0.08, "frechet_v_latent": 2.74}, v, 1500)
    assert "has not learned to draw the frames" in failed and "8%" in failed and "2.74" in failed
    assert "draws them as objects" not in failed
    sharp = what({"l1": 0.0173, "mse": 0.0015, "sharpness_vs_real": 0.96, "frechet_v_latent": 0.11}, v, 1500)
    assert "draws them as objects" in sharp and "96%" in sharp and "not learned" not in sharp
    # sharper than V but far off the frames' distribution (the residual StyleGAN renderer's figures)
    off = what({"l1": 0.026, "mse": 0.003, "sharpness_vs_real": 1.44, "frechet_v_latent": 0.775,
                "latent_error": 0.17, "detail_own": 0.02, "detail_other": -0.01}, v, 1500)
    assert "has failed" in off and "0.78 against V's 0.13" in off and "draws them as objects" not in off
    # sharp, near the distribution, but the detail does not follow the frame (the same blobs everywhere)
    # (judged against V's frame through an unsharp mask, the fixed-filter baseline)
    u = {"l1": 0.0155, "mse": 0.001, "sharpness_vs_real": 0.8, "frechet_v_latent": 0.12, "latent_error": 0.03,
         "detail_own": 0.09, "detail_other": 0.008, "amount": 2.0}
    blobs = what({"l1": 0.017, "mse": 0.0014, "sharpness_vs_real": 0.84, "frechet_v_latent": 0.12,
                  "latent_error": 0.03, "detail_own": 0.07, "detail_other": -0.003}, v, 1500, u)
    assert "Sharper, not truer" in blobs and "0.07" in blobs and "scores 0.09" in blobs
    assert "draws them as objects" not in blobs
    placed = what({"l1": 0.017, "mse": 0.0014, "sharpness_vs_real": 0.84, "frechet_v_latent": 0.12,
                   "latent_error": 0.03, "detail_own": 0.3, "detail_other": 0.0}, v, 1500, u)
    assert "draws them as objects" in placed and "correlates 0.30" in placed


def test_unsharp_baseline_reaches_the_asked_sharpness(script: Callable[[str], ModuleType]) -> None:
    rr = script("renderer_report")
    from generators.renderer import sharpness

    g = torch.Generator().manual_seed(0)
    blurred = torch.nn.functional.avg_pool2d(torch.rand(6, 3, 64, 64, generator=g), 5, 1, 2)
    assert torch.equal(rr.unsharp(blurred, 0.0), blurred)
    target = 4 * sharpness(blurred)
    amount = rr.unsharp_amount(blurred, target)
    assert amount > 0 and abs(sharpness(rr.unsharp(blurred, amount)) / target - 1) < 1e-3


def test_per_frame_figures_see_placement(script: Callable[[str], ModuleType]) -> None:
    """The per-frame figures: the real frames drawn exactly score detail 1 on their own frame; the
    same detail pasted on every frame, and noise, score ~0; V's latent error is 0 for matching codes."""
    per_frame = script("renderer_report").per_frame
    g = torch.Generator().manual_seed(0)
    n = 64
    base = torch.rand(n, 3, 16, 16, generator=g) * 0.1 + 0.4  # V's blurred frames
    real = base.clone()
    cells = torch.randperm(16, generator=g).repeat(4)[:n].roll(1)  # frames i and i + n/2 in different cells
    cells[n // 2:] = (cells[:n // 2] + 5) % 16
    for i in range(n):  # each real frame has a "monster" V lost, somewhere of its own
        r, c = divmod(int(cells[i]), 4)
        real[i, :, r * 4:r * 4 + 4, c * 4:c * 4 + 4] += 0.4
    mu = torch.randn(n, 8, generator=g).numpy()
    exact = per_frame(real, real, base, mu, mu)
    assert exact["latent_error"] == 0.0 and abs(exact["detail_own"] - 1) < 1e-6 and exact["detail_other"] < 0.1
    pasted = base.clone()
    pasted[:, :, 4:8, 4:8] += 0.4  # the same blob in every frame
    same = per_frame(pasted, real, base, mu, mu)
    noise = per_frame(base + 0.05 * torch.randn(base.shape, generator=g), real, base, mu, mu)
    assert abs(same["detail_own"]) < 0.05 and abs(noise["detail_own"]) < 0.1
    far = per_frame(real, real, base, mu[::-1].copy(), mu)
    assert 0.6 < far["latent_error"] < 1.4  # another frame's code: as far as two different frames' codes


def test_renderer_report_set_is_typed_and_checked(script: Callable[[str], ModuleType]) -> None:
    over = script("renderer_report").family_overrides
    assert over("stylegan_renderer", ["spatial=true", "d_lr_mul=0.25", "adv_ramp=300"]) == \
        {"spatial": True, "d_lr_mul": 0.25, "adv_ramp": 300}
    with pytest.raises(ValueError, match="a field of stylegan_renderer's config"):
        over("stylegan_renderer", ["spatail=true"])
    with pytest.raises(ValueError, match="adv_ramp takes a value of type int"):
        over("stylegan_renderer", ["adv_ramp=lots"])
    with pytest.raises(ValueError, match="spatial takes a value of type bool"):
        over("stylegan_renderer", ["spatial=1"])
