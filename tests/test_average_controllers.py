"""scripts/average_controllers.py: a parameter average of one run's controllers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from agents.controller import ControllerConfig, load_controller, save_controller


def _controllers(tmp_path: Path, n: int, cfg: ControllerConfig) -> list[Path]:
    rng = np.random.default_rng(0)
    return [save_controller(tmp_path / f"c{i}.npz", cfg, rng.standard_normal(cfg.num_params), train_in="dream")
            for i in range(n)]


def test_the_average_is_the_parameters_mean_and_a_controller(script: Callable[[str], ModuleType],
                                                             tmp_path: Path) -> None:
    av = script("average_controllers")
    cfg = ControllerConfig(input_size=6)
    paths = _controllers(tmp_path, 3, cfg)
    out = tmp_path / "avg.npz"
    assert av.main([*map(str, paths), "--out", str(out)]) == 0
    got_cfg, got, extra = load_controller(out)
    params = np.stack([load_controller(p)[1] for p in paths])
    assert got_cfg == cfg and np.allclose(got, params.mean(axis=0))
    assert extra["averaged"] == [str(p) for p in paths] and extra["train_in"] == "dream"
    assert av.main([*map(str, paths), "--out", str(out), "--weights", "0", "0", "1"]) == 0
    assert np.array_equal(load_controller(out)[1], params[2])  # all the weight on one: that controller


@pytest.mark.parametrize("case, message", [
    ("other config", "has another controller config than"),
    ("weights", "--weights needs 2 numbers >= 0 with a positive sum"),
    ("missing", "no controller at"),
])
def test_bad_input_gets_one_line(script: Callable[[str], ModuleType], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str], case: str, message: str) -> None:
    av = script("average_controllers")
    a, b = _controllers(tmp_path, 2, ControllerConfig(input_size=6))
    if case == "other config":
        save_controller(b, ControllerConfig(input_size=7), np.zeros(24))
    args = [str(a), str(b) if case != "missing" else str(tmp_path / "none.npz"), "--out", str(tmp_path / "o.npz")]
    assert av.main(args + (["--weights", "1", "-1"] if case == "weights" else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "o.npz").exists()
