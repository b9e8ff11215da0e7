"""Run logging: TensorBoard scalars plus ``metrics.jsonl`` (one JSON object per logged value).

``metrics.jsonl`` lines: ``{"stage": ..., "step": ..., "name": ..., "value": ..., "time": ...}``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from worldlab.rundir import RunDir


class RunLogger:
    """Writes scalars to TensorBoard (``RUN/tb/<stage>``) and ``RUN/metrics.jsonl``.

    Args:
        run_dir: the run folder (created if needed).
        stage: name of the stage logging now (``collect``, ``vae``, ``mdrnn``, ``evolve`` ...);
            used as the TensorBoard sub-folder and in every JSON line.
        tensorboard: set False to skip TensorBoard (``metrics.jsonl`` is always written).
    """

    def __init__(self, run_dir: str | os.PathLike, stage: str, tensorboard: bool = True) -> None:
        self.run = RunDir(run_dir)
        self.run.root.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self._jsonl = open(self.run.metrics, "a", encoding="utf-8")  # noqa: SIM115
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run.tb(stage)))

    def resume_after(self, step: int) -> int:
        """A stage resumed from its checkpoint at ``step``: forget what it logged after that step
        before it was killed (it logs those steps again), so no step appears twice.

        Rewrites ``metrics.jsonl`` (atomically) without this stage's lines of later steps and
        without lines a kill cut short; TensorBoard purges its later events (``purge_step``).
        Returns the number of lines dropped.
        """
        from worldlab.io import atomic_write_bytes

        self._jsonl.close()
        kept, dropped = [], 0
        with open(self.run.metrics, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    dropped += bool(line.strip())
                    continue
                if rec.get("stage") == self.stage and rec.get("step", -1) > step:
                    dropped += 1
                    continue
                kept.append(line if line.endswith("\n") else line + "\n")
        if dropped:
            atomic_write_bytes(self.run.metrics, "".join(kept).encode("utf-8"))
        self._jsonl = open(self.run.metrics, "a", encoding="utf-8")  # noqa: SIM115
        if dropped and self._tb is not None:  # nothing logged past ``step``: no events to purge either
            from torch.utils.tensorboard import SummaryWriter

            self._tb.close()
            self._tb = SummaryWriter(log_dir=str(self.run.tb(self.stage)), purge_step=step + 1)
        return dropped

    def scalar(self, name: str, value: float, step: int) -> None:
        value = float(value)
        self._jsonl.write(json.dumps({"stage": self.stage, "step": int(step), "name": name,
                                      "value": value, "time": time.time()}) + "\n")
        if self._tb is not None:
            self._tb.add_scalar(name, value, int(step))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.scalar(k, v, step)

    def image(self, name: str, img_hwc_uint8: Any, step: int) -> None:
        if self._tb is not None:
            self._tb.add_image(name, img_hwc_uint8, int(step), dataformats="HWC")

    def text(self, name: str, text: str, step: int) -> None:
        """Text (a sequence model's samples) shown in TensorBoard's text tab, as preformatted text."""
        if self._tb is not None:
            self._tb.add_text(name, "    " + text.replace("\n", "\n    "), int(step))

    def flush(self) -> None:
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | os.PathLike, stage: str | None = None, name: str | None = None) -> list[dict]:
    """Read ``metrics.jsonl`` back, optionally filtered by stage and name."""
    path = RunDir(run_dir).metrics
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: skip it
                continue
            if (stage is None or rec["stage"] == stage) and (name is None or rec["name"] == name):
                out.append(rec)
    return out
