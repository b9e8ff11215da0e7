"""The task table: every real task the lab knows, with its spaces, limits and the paper's sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskSpec:
    """What the lab needs to know about one real task.

    Sizes follow Ha & Schmidhuber (2018): CarRacing z=32, LSTM 256, controller (32+256)*3+3 = 867
    parameters; DoomTakeCover z=64, LSTM 512, controller (64+512)*1+1 = 577 with the paper's
    one-output action mapping (the paper's 1,088 counts Doom's [z, h, c] input).
    """

    name: str
    """short task name used by ``envs.make`` and the scripts."""
    gym_id: str
    """the underlying Gymnasium id."""
    action_space: dict[str, Any]
    """the action space the agent sees: {"type": "box", "shape", "low", "high"} or {"type": "discrete", "n"}."""
    max_episode_steps: int
    """time limit (the paper's: 1000 for CarRacing, 2100 for Doom)."""
    z_size: int
    """the paper's VAE latent size."""
    rnn_hidden: int
    """the paper's MDN-RNN LSTM size."""
    make_kwargs: dict[str, Any] = field(default_factory=dict)
    """defaults passed to ``envs.make`` for this task."""
    @property
    def controller_params(self) -> int:
        """Parameters of the paper's linear controller on [z, h] (Box actions: one output per dimension)."""
        if self.action_space["type"] != "box":
            raise ValueError(f"{self.name}: the paper's controller needs a Box action space")
        outputs = int(self.action_space["shape"][0])
        return (self.z_size + self.rnn_hidden) * outputs + outputs


TASKS: dict[str, TaskSpec] = {
    "car_racing": TaskSpec(
        name="car_racing",
        gym_id="worldlab/CarRacing-v3",
        action_space={"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]},
        max_episode_steps=1000,
        z_size=32,
        rnn_hidden=256,
    ),
    "doom_take_cover": TaskSpec(
        name="doom_take_cover",
        gym_id="VizdoomTakeCover-v1",
        action_space={"type": "box", "shape": [1], "low": [-1.0], "high": [1.0]},
        max_episode_steps=2100,
        z_size=64,
        rnn_hidden=512,
        make_kwargs={"paper_actions": True},
    ),
}


def get_task(name: str) -> TaskSpec:
    """The spec of a known task; an unknown name fails with one line listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))} "
                         f"(or any registered Gymnasium id with pixels=True)") from None
