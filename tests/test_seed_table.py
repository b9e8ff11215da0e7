"""scripts/seed_table.py: the CMA-ES seed table's correlations and the pick by dream mean."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


def _scored(run: Path, seed: int, dream: float, real: list[float], **settings: object) -> None:
    d = run / "seeds" / f"seed{seed}" / "ablation" / "plain"
    d.mkdir(parents=True)
    s = {"generations": 40, "popsize": 16, "seed": seed, **settings}
    (d / "result.json").write_text(json.dumps({"dream_mean": dream, "dream_std": 1.0, "real_mean": float(np.mean(real)),
                                               "real_std": float(np.std(real)), "settings": s, "real_returns": real}))


def test_ranks_share_ties_and_spearman_is_pearson_on_ranks(script: Callable[[str], ModuleType]) -> None:
    st = script("seed_table")
    assert st.ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    up = st.correlations(np.arange(8.0), np.arange(8.0) ** 3)  # monotone, not linear
    assert up["spearman"] == pytest.approx(1.0) and up["pearson"] < 1.0
    assert up["spearman_p_permutation"] < 1e-3  # 1 in 8! orderings
    down = st.correlations(np.arange(8.0), -np.arange(8.0))
    assert down["spearman"] == pytest.approx(-1.0) and down["spearman_p_permutation"] > 0.99


def test_the_table_picks_the_best_dream_and_refuses_mixed_settings(tmp_path: Path,
                                                                    script: Callable[[str], ModuleType]) -> None:
    st = script("seed_table")
    run = tmp_path / "run"
    for seed, dream, real in ((0, 400.0, [300.0, 320.0]), (1, 600.0, [500.0, 480.0]), (2, 350.0, [200.0, 260.0])):
        _scored(run, seed, dream, real)
    out = tmp_path / "t.json"
    assert st.main([str(run), "--json", str(out)]) == 0
    t = json.loads(out.read_text())["tables"][0]
    assert [r["cma_seed"] for r in t["rows"]] == [0, 1, 2] and t["best_by_dream"] == 1
    assert t["best_by_dream_real"] == 490.0 and t["spearman"] == pytest.approx(1.0)
    assert "seed" not in t["settings"]
    _scored(run, 3, 500.0, [100.0], generations=80)
    assert st.main([str(run)]) == 2
    with pytest.raises(ValueError, match="different settings"):
        st.table(run, "plain")
    with pytest.raises(ValueError, match="holds 0 scored seeds"):
        st.table(tmp_path / "empty", "plain")
