"""The corruption matrix (agents/chaos.py) on copies of a tiny finished run: every fault is named in
one line by the resume, or repaired by it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.chaos import CASES, matrix_table, run_case

OLD_RUN = Path(__file__).parent / "fixtures" / "old_run"


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.name not in ("shard truncated", "shard deleted")],
                         ids=lambda c: c.name.replace(" ", "_"))
def test_each_fault_is_detected_or_repaired(case: object) -> None:
    row = run_case(OLD_RUN, case)  # type: ignore[arg-type]
    assert row["ok"], matrix_table([row])
    if row["outcome"] == "detected":
        assert row["file"] in row["detail"] and ("delete it" in row["detail"] or "restore" in row["detail"]
                                                 or "start the run again" in row["detail"])
