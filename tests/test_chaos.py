"""The corruption matrix (agents/chaos.py) on copies of a tiny finished run: every fault is named in
one line by the resume, or repaired by it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.chaos import CASES, matrix_table, run_case

OLD_RUN = Path(__file__).parent / "fixtures" / "old_run"


# CI's time: one case of each kind of file (scripts/chaos.py runs them all; docs/RELIABILITY.md)
IN_CI = ("shard with one flipped byte", "V with one flipped byte", "controller replaced by garbage",
         "CMA-ES state with one flipped byte", "config.json invalid", "V of another task copied in")


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.name in IN_CI], ids=lambda c: c.name.replace(" ", "_"))
def test_each_fault_is_detected_or_repaired(case: object) -> None:
    row = run_case(OLD_RUN, case)  # type: ignore[arg-type]
    assert row["ok"], matrix_table([row])
    if row["outcome"] == "detected":
        assert row["file"] in row["detail"] and ("delete it" in row["detail"] or "restore" in row["detail"]
                                                 or "start the run again" in row["detail"])
