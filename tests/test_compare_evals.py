"""scripts/compare_evals.py: paired differences between controllers scored on the same episodes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


def _eval(path: Path, seeds: list[int], returns: list[float]) -> Path:
    path.write_text(json.dumps({"episodes": len(seeds), "seeds": seeds, "returns": returns,
                                "mean": float(np.mean(returns)), "std": float(np.std(returns))}))
    return path


def test_pairs_episodes_by_seed_whatever_their_order(script: Callable[[str], ModuleType], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ce = script("compare_evals")
    a = _eval(tmp_path / "a.json", [5, 7, 9, 11], [100.0, 200.0, 300.0, 400.0])
    b = _eval(tmp_path / "b.json", [11, 9, 7, 5], [460.0, 330.0, 210.0, 100.0])  # the same episodes, reversed
    base, other = ce.compare([a, b])
    assert "paired_diff" not in base and base["mean"] == 250.0
    diffs = np.array([0.0, 10.0, 30.0, 60.0])
    assert other["paired_diff"] == pytest.approx(diffs.mean())
    assert other["paired_se"] == pytest.approx(diffs.std(ddof=1) / 2.0)
    assert ce.main([str(a), str(b), "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| controller") and "+25.0 ± 13.2" in out[3]


def test_refuses_other_episodes_and_other_files(script: Callable[[str], ModuleType], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ce = script("compare_evals")
    a = _eval(tmp_path / "a.json", [1, 2], [1.0, 2.0])
    b = _eval(tmp_path / "b.json", [1, 3], [1.0, 2.0])
    assert ce.main([str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seeds differ" in err[0] and "--seed" in err[0]
    (tmp_path / "c.json").write_text("{}")
    assert ce.main([str(a), str(tmp_path / "c.json")]) == 2
    assert "not an evaluation JSON" in capsys.readouterr().err


def test_across_world_models_gives_their_mean_and_its_standard_error(
        script: Callable[[str], ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ce = script("compare_evals")
    a = _eval(tmp_path / "a.json", [1, 2], [100.0, 300.0])  # mean 200
    b = _eval(tmp_path / "b.json", [3, 4], [500.0, 700.0])  # mean 600, other episodes: allowed across world models
    c = _eval(tmp_path / "c.json", [5, 6], [400.0, 400.0])  # mean 400
    res = ce.across([a, b, c])
    assert res["mean"] == pytest.approx(400.0) and res["n"] == 3
    assert res["se"] == pytest.approx(np.std([200.0, 600.0, 400.0], ddof=1) / np.sqrt(3))
    assert ce.main([str(a), str(b), str(c), "--across"]) == 0
    assert "over 3 world models: 400.0 ± 115.5" in capsys.readouterr().out
    assert ce.main([str(a), "--across"]) == 2
    assert "at least two" in capsys.readouterr().err


def test_across_pairs_gives_each_world_models_paired_difference_and_their_mean(
        script: Callable[[str], ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ce = script("compare_evals")
    a0 = _eval(tmp_path / "a0.json", [1, 2, 3], [100.0, 200.0, 300.0])
    b0 = _eval(tmp_path / "b0.json", [3, 1, 2], [330.0, 110.0, 230.0])  # +10, +30, +30 by seed: +23.3
    a1 = _eval(tmp_path / "a1.json", [7, 8], [500.0, 600.0])           # another world model, other episodes
    b1 = _eval(tmp_path / "b1.json", [7, 8], [480.0, 560.0])           # -20, -40: -30
    res = ce.across_pairs([a0, b0, a1, b1])
    assert [p["diff"] for p in res["pairs"]] == pytest.approx([70.0 / 3, -30.0])
    assert res["mean"] == pytest.approx((70.0 / 3 - 30.0) / 2) and res["positive"] == 1 and res["n"] == 2
    assert res["se"] == pytest.approx(np.std([70.0 / 3, -30.0], ddof=1) / np.sqrt(2))
    assert ce.main([str(a0), str(b0), str(a1), str(b1), "--across-pairs"]) == 0
    out = capsys.readouterr().out
    assert "over 2 world models: -3.3 ± 26.7" in out and "higher on 1 of 2" in out
    assert ce.main([str(a0), str(b0), str(a1), "--across-pairs"]) == 2         # an odd count
    assert "pairs of files" in capsys.readouterr().err
    assert ce.main([str(a0), str(b1), str(a1), str(b0), "--across-pairs"]) == 2  # a pair on other episodes
    assert "seeds differ" in capsys.readouterr().err
    assert ce.main([str(a0), str(b0), str(a1), str(b1), "--across", "--across-pairs"]) == 2
    assert "pass one of them" in capsys.readouterr().err
