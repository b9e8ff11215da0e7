"""The ``processes`` backend of ``agents.pool.WorkerPool`` (no Ray): same data and returns as
in-process runs, one-line errors, and the whole job on it, resumed with more generations."""

from __future__ import annotations

import collections
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from agents.collect import collect, episode_seed
from agents.controller import ControllerConfig, load_controller
from agents.fitness import RealEvalWorker, RealPool
from agents.pool import BACKENDS, WorkerPool, check_backend
from worldlab.storage import Manifest, load_shard
from worldlab.world_model import WorldModel

SHORT = {"max_episode_steps": 40}
CAR = {"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("ep_*")}


def test_worker_process_keeps_state_and_reports_errors() -> None:
    with WorkerPool(collections.Counter, ("ab",), workers=1, backend="processes") as pool:
        pool.submit(0, "update", "bb").result(timeout=60)  # the instance lives on between calls
        assert pool.submit(0, "most_common", 1).result(timeout=60) == [("b", 3)]
        with pytest.raises(AttributeError, match="no_such_method"):
            pool.wait([pool.submit(0, "no_such_method")])
        assert pool.submit(0, "total").result(timeout=60) == 4  # an error does not kill the worker


def test_processes_collect_equals_in_process_and_resumes(tmp_path: Path) -> None:
    ref = collect("car_racing", tmp_path / "ref", 4, workers=0, seed=5, env_kwargs=SHORT, progress=False)
    out = tmp_path / "p"
    m = collect("car_racing", out, 3, workers=2, seed=5, env_kwargs=SHORT, progress=False, backend="processes")
    assert sorted(m.episodes) == [0, 1, 2]
    assert m.meta["task"] == "car_racing" and m.meta["max_episode_steps"] == 40
    for i in range(3):
        assert m.episodes[i]["sha256"] == ref.episodes[i]["sha256"]
        assert m.episodes[i]["seed"] == episode_seed(5, i) and m.episodes[i]["length"] == ref.episodes[i]["length"]
        a = load_shard(out / m.episodes[i]["file"], m.episodes[i]["sha256"])
        b = load_shard(tmp_path / "ref" / ref.episodes[i]["file"])
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert Manifest.open(out).episodes == m.episodes  # the manifest on disk is complete

    before = _mtimes(out)
    assert len(before) == 3
    again = collect("car_racing", out, 3, workers=2, seed=5, env_kwargs=SHORT, progress=False, backend="processes")
    assert again.episodes == m.episodes and _mtimes(out) == before  # nothing collected again

    more = collect("car_racing", out, 4, workers=2, seed=5, env_kwargs=SHORT, progress=False, backend="processes")
    after = _mtimes(out)
    assert sorted(more.episodes) == [0, 1, 2, 3] and len(after) == 4
    assert {k: v for k, v in after.items() if k in before} == before  # only the missing episode was played
    assert [more.episodes[i]["sha256"] for i in range(4)] == [ref.episodes[i]["sha256"] for i in range(4)]


def test_check_backend_errors(tmp_path: Path) -> None:
    assert BACKENDS == ("ray", "processes")
    check_backend("ray")
    check_backend("ray", "127.0.0.1:6379")
    check_backend("processes")
    check_backend("processes", None)
    with pytest.raises(ValueError) as e:
        check_backend("bogus")
    msg = str(e.value)
    assert msg == "unknown backend 'bogus'; choose one of ray, processes" and "\n" not in msg
    with pytest.raises(ValueError) as e:
        check_backend("processes", "127.0.0.1:6379")
    msg = str(e.value)
    assert "--address" in msg and "--backend ray" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        collect("car_racing", tmp_path / "x", 1, workers=2, env_kwargs=SHORT, progress=False, backend="bogus")
    with pytest.raises(ValueError, match="needs --backend ray"):
        collect("car_racing", tmp_path / "y", 1, workers=2, env_kwargs=SHORT, progress=False, backend="processes",
                address="127.0.0.1:6379")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before any work


def test_collect_cli_refuses_address_without_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 script: Callable[[str], ModuleType]) -> None:
    rc = script("collect").main(["car_racing", "--episodes", "1", "--out", str(tmp_path / "x"), "--backend", "processes",
                   "--address", "127.0.0.1:6379", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --address joins a Ray cluster") and len(err.splitlines()) == 1


def test_real_pool_on_processes_equals_in_process_worker(capsys) -> None:
    wm = WorldModel.untrained(task="car_racing", action_space=CAR, z_size=32, hidden=64, max_episode_steps=30)
    cfg = ControllerConfig.for_task(CAR, wm.obs_size, "car_racing")
    rng = np.random.default_rng(0)
    cands = [rng.standard_normal(cfg.num_params) * 0.5 for _ in range(3)]
    jobs = [(p, s) for p in cands for s in (11, 12)]
    env_kwargs = {"max_episode_steps": 30}
    threads = torch.get_num_threads()
    try:
        expected = RealEvalWorker("car_racing", wm, cfg, env_kwargs).play(jobs)
    finally:
        torch.set_num_threads(threads)  # the worker sets 1 thread for this process
    pool = RealPool("car_racing", wm, cfg, workers=2, env_kwargs=env_kwargs, backend="processes")
    try:
        pids = set(pool.workers.call_all("pid"))
        assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, not this one
        got = pool.play(jobs)
        assert pool.play([]) == []
        capsys.readouterr()
        shown = pool.play(jobs, progress="evaluate")  # small batches, finished ones counted as they come
        bar = capsys.readouterr().err
    finally:
        pool.close()
    assert shown == got and "evaluate" in bar and f"{len(jobs)}/{len(jobs)}" in bar
    assert [r["seed"] for r in got] == [s for _, s in jobs]  # results come back in job order
    assert [r["return"] for r in got] == [r["return"] for r in expected]
    assert [r["length"] for r in got] == [r["length"] for r in expected]
    assert all(0 < r["length"] <= 30 for r in got)
    assert len({r["return"] for r in got}) > 1  # the jobs really differ


def test_real_pool_refuses_address_without_ray() -> None:
    wm = WorldModel.untrained(task="car_racing", action_space=CAR, z_size=32, hidden=64)
    cfg = ControllerConfig.for_task(CAR, wm.obs_size, "car_racing")
    with pytest.raises(ValueError, match="needs --backend ray"):
        RealPool("car_racing", wm, cfg, workers=2, address="127.0.0.1:6379", backend="processes")
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        RealPool("car_racing", wm, cfg, workers=2, backend="bogus")


def test_doom_smoke_on_processes_then_more_generations(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      script: Callable[[str], ModuleType]) -> None:
    """The whole job on ``processes``, two rounds (the evolved controller collects round 1's data), the
    dream's ends calibrated on the controllers' real episodes (``dream.done_calibrate``; real episodes of
    up to 400 steps, so that the game ends some); a search resumed where a kill would have left it ends
    where the whole search did; a resume with more generations extends the last round only (round 0's
    controller played round 1's data, so re-evolving it would break round 1's replay); any other change
    needs another folder; a run trained on a GPU box goes on with --device cpu. One run serves every
    check: a Doom smoke is the suite's costliest kind of test."""
    from dataclasses import replace

    from agents.cmaes import EvolutionState
    from agents.world_models.config import RunConfig

    dream_train = script("dream_train")
    out = tmp_path / "doom"
    ck = out / "checkpoints"
    threads = torch.get_num_threads()
    ray_before = "ray" in sys.modules
    try:
        rc = dream_train.main(["doom_take_cover", "--preset", "smoke", "--backend", "processes", "--rounds", "2",
                               "--out", str(out), "--no-progress", "--set", "eval.videos=false",
                               "--set", "dream.done_calibrate=2", "--set", "eval.max_steps=400"])
        r = capsys.readouterr()
        assert rc == 0, r.out[-3000:] + r.err[-3000:]
        assert r.out.strip().splitlines()[-1].startswith("doom_take_cover: real score ")
        assert "round 1: collecting 2 real episodes (controller)" in r.out
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["backend"] == "processes" and cfg["cma"]["generations"] == 3
        assert cfg["vae"]["z_size"] == 64 and cfg["dream"]["temperature"] == 1.15
        ev = json.loads((out / "eval.json").read_text())
        assert ev["episodes"] == 4 and len(ev["returns"]) == 4 and all(np.isfinite(ev["returns"]))
        # living reward 1 per tic: a return equals the episode length, capped by the limit of 400
        assert ev["returns"] == [float(n) for n in ev["lengths"]] and max(ev["lengths"]) <= 400
        m = Manifest.open(out / "data")
        assert sorted(m.episodes) == list(range(8))  # 6 + round 1's 2
        rets = [m.episodes[i]["return"] for i in (6, 7)]  # round 1's episodes, played by round 0's controller
        report = (out / "report.md").read_text()
        assert (f"| 1 | round 0's controller + noise {cfg['collect']['noise_std']} | 2 (from 6) | "
                f"{np.mean(rets):.1f} ± {np.std(rets):.1f} |") in report
        assert load_controller(ck / "controller.npz")[2]["generations"] == 3

        # the calibration: each round measures its starting controller, then the gap measurements' candidates
        for k in (0, 1):
            cal = json.loads((ck / f"done_bias_r{k}.json").read_text())
            entries = cal["entries"]
            assert [e["generation"] for e in entries] == [-1, 1, 2] and cal["target"] == 2.0 and cal["floor"] == 0.0
            biases = [e["bias"] for e in entries]
            assert biases == sorted(biases) and biases[0] >= 0.0  # never less pessimistic within a round
            for e in entries:  # the dream expects two ends per end the game dealt, or more
                assert e["expected"] >= 2 * e["ended"] - 1e-6 or e["capped"]
                assert e["bias_before"] == 0.0 or e["expected_before"] >= e["expected_m"]
            assert load_controller(ck / f"controller_r{k}.npz")[2]["done_bias"] == biases[-1]
        assert any(e["ended"] for k in (0, 1) for e in json.loads((ck / f"done_bias_r{k}.json").read_text())["entries"])
        assert "calibrating the dream's ends on the starting controller" in r.out or \
            all(e["bias"] == 0.0 for e in json.loads((ck / "done_bias_r0.json").read_text())["entries"])
        # the final controller's probes report the ends of the dream it was evolved in, at its calibrated bias
        final_bias = load_controller(ck / "controller.npz")[2]["done_bias"]
        assert json.loads((out / "fidelity_controllers.json").read_text()).get("done_bias", 0.0) == final_bias
        first = json.loads((ck / "done_bias_r1.json").read_text())["entries"][0]
        assert "## The dream's ends, calibrated on C's own episodes" in report
        assert (f"| 1 | 1 | its starting controller | {first['ended']} / 2 | {first['expected_m']:.2f} | "
                f"{first['expected_before']:.2f} | +0.00") in report
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert {(g["stage"], g["step"]) for g in metrics if g["name"] == "calibrate/done_bias"} == \
            {("evolve_r0", 1), ("evolve_r0", 2), ("evolve_r1", 1), ("evolve_r1", 2)}

        # a kill after generation 2's measurement, before its CMA-ES state was saved: the search resumes at
        # generation 2 with the bias of the measurements before it, and ends where the whole search did
        _, params, extra = load_controller(ck / "controller_r1.npz")
        cal = (ck / "done_bias_r1.json").read_text()
        with np.load(ck / "cma_r1.npz") as z:
            fit3 = z["fitness"].copy()
        assert fit3.shape == (3, 8)
        saved_cma = RunConfig.load(out).cma
        cma = replace(saved_cma, seed=saved_cma.seed + 1000)  # round 1's, as evolve_controller builds it
        st = EvolutionState.load(ck / "cma_r1.npz", cma, params.shape[0])
        EvolutionState(st.fitness[:2], st.hashes[:2], st.best_params, st.best_fitness, st.mean_params).save(
            ck / "cma_r1.npz", cma)
        for f in ("controller_r1.npz", "controller.npz"):
            (ck / f).unlink()
        rc = dream_train.main(["doom_take_cover", "--resume", "--out", str(out), "--no-progress"])
        r = capsys.readouterr()
        assert rc == 0, r.out[-3000:] + r.err[-3000:]
        again = load_controller(ck / "controller_r1.npz")
        assert np.array_equal(again[1], params) and again[2] == extra
        assert json.loads((ck / "done_bias_r1.json").read_text()) == json.loads(cal)
        with np.load(ck / "cma_r1.npz") as z:
            assert np.array_equal(z["fitness"], fit3)
        ev = json.loads((out / "eval.json").read_text())
        r0 = (ck / "controller_r0.npz").read_bytes()
        vae_mtime = (ck / "vae.pt").stat().st_mtime_ns

        # a resumed run may go on for more generations: the last round's search continues from its saved state
        rc = dream_train.main(["doom_take_cover", "--resume", "--out", str(out), "--generations", "4",
                               "--no-progress"])
        r = capsys.readouterr()
        assert rc == 0, r.out[-3000:] + r.err[-3000:]
        assert "collecting" not in r.out and "evaluating" in r.out
        assert "round 1: evolving" in r.out and "round 0: evolving" not in r.out
        assert (ck / "controller_r0.npz").read_bytes() == r0
        assert (ck / "vae.pt").stat().st_mtime_ns == vae_mtime  # V and M not retrained
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["cma"]["generations"] == 4 and cfg["backend"] == "processes"
        with np.load(ck / "cma_r1.npz") as z:
            fit4 = z["fitness"].copy()
        assert fit4.shape == (4, 8) and np.array_equal(fit4[:3], fit3)  # generations 0-2 kept, one more played
        for name in ("controller_r1.npz", "controller.npz"):
            assert load_controller(ck / name)[2]["generations"] == 4, name
        ev4 = json.loads((out / "eval.json").read_text())
        assert ev4["controller"] != ev["controller"] and len(ev4["returns"]) == 4  # the new C was evaluated
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        best = [m for m in metrics if m["name"] == "evolve/best"]
        assert sorted({m["step"] for m in best if m["stage"] == "evolve_r0"}) == [0, 1, 2]
        assert sorted({m["step"] for m in best if m["stage"] == "evolve_r1"}) == [0, 1, 2, 3]

        # any other change still needs another folder
        saved = (out / "config.json").read_text()
        rc = dream_train.main(["doom_take_cover", "--resume", "--out", str(out), "--temperature", "0.5",
                               "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "differs in dream.temperature" in err and len(err.splitlines()) == 1, err
        assert (out / "config.json").read_text() == saved

        # a run trained on a GPU box goes on (here: every stage is done) with --device cpu elsewhere
        (out / "config.json").write_text(json.dumps({**cfg, "device": "cuda"}))
        before = {p.name: p.stat().st_mtime_ns for p in ck.iterdir()}
        rc = dream_train.main(["doom_take_cover", "--resume", "--out", str(out), "--device", "cpu", "--no-progress"])
        r = capsys.readouterr()
        assert rc == 0, r.out[-3000:] + r.err[-3000:]
        assert "evolving" not in r.out and "collecting" not in r.out
        assert {p.name: p.stat().st_mtime_ns for p in ck.iterdir()} == before
        assert json.loads((out / "config.json").read_text())["device"] == "cpu"
        if not ray_before:  # run alone: the whole job never even imported Ray
            assert "ray" not in sys.modules
    finally:
        torch.set_num_threads(threads)  # the run sets this process's torch threads
