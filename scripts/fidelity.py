"""Dream fidelity report of a run: python scripts/fidelity.py RUN [--episodes 0 3] [--horizon 32].

With --probes it also plays scripted probe episodes in the real game (CarRacing: straight at
full speed, hard turns off the road, a spin, braking) and compares them with what M predicts
(agents/probes.py): RUN/fidelity_probes.json and a Markdown table on stdout. With --controllers
C [C ...] it plays each evolved controller in real episodes and runs M teacher-forced over them:
the return M pays and the episode ends it expects on the controller's own trajectory
(RUN/fidelity_controllers.json and a table). With --held-dreams N it holds each bound and the
middle of the action space on every step, in N dreams and in real episodes: what the dream pays a
constant controller against the game (RUN/fidelity_held.json and a table)."""

from __future__ import annotations

import argparse
import json
import sys

from worldlab.fidelity import fidelity_report
from worldlab.rundir import RunDir


def run_done_bias(run: str) -> float:
    """The done bias of the run's dream: ``dream.done_bias``, or the calibrated bias its final
    controller records (``dream.done_calibrate``); 0 without a readable config.json."""
    from agents.world_models.config import RunConfig
    from agents.world_models.stages import dream_done_bias

    try:
        return dream_done_bias(run, RunConfig.load(run))
    except (FileNotFoundError, ValueError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run", help="run folder with data/ and checkpoints/{vae,mdrnn}.pt")
    p.add_argument("--episodes", type=int, nargs="*", default=None,
                   help="episode indices (default: the held-out episodes recorded by train_mdrnn)")
    p.add_argument("--max-episodes", type=int, default=3, help="at most this many episodes")
    p.add_argument("--context", type=int, default=16, help="real steps fed to M before the open-loop prediction")
    p.add_argument("--horizon", type=int, default=32, help="open-loop steps predicted from actions alone")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-video", action="store_true", help="skip the mp4 videos")
    p.add_argument("--probes", action="store_true", help="also play the scripted probe episodes (agents/probes.py)")
    p.add_argument("--probe-seeds", type=int, nargs="+", default=[0, 1], help="seeds of the probe episodes")
    p.add_argument("--probe-steps", type=int, default=300, help="steps of each probe episode")
    p.add_argument("--controllers", nargs="+", default=None, metavar="NPZ",
                   help="also play these controllers in real episodes and run M teacher-forced over them: "
                        "what M pays and which ends it expects on the controller's own trajectory "
                        "(RUN/fidelity_controllers.json; an earlier file of other probes is kept beside it as "
                        "fidelity_controllers.HASH.json)")
    p.add_argument("--controller-episodes", type=int, default=12, help="real episodes per controller")
    p.add_argument("--done-bias", type=float, default=None, metavar="B",
                   help="also the ends a dream with M's done logit + B expects on the controllers' episodes "
                        "(default: the run's dream.done_bias, or the calibrated bias of its final controller)")
    p.add_argument("--held-dreams", type=int, default=0, metavar="N",
                   help="also hold each bound and the middle of the action space on every step in N dreams and "
                        "in --held-episodes real episodes: what the dream pays a constant controller against the "
                        "game (RUN/fidelity_held.json)")
    p.add_argument("--held-episodes", type=int, default=8, help="real episodes per held action")
    p.add_argument("--no-report", action="store_true",
                   help="skip the report on held-out episodes (RUN/fidelity.json stays as it is): only the "
                        "--probes and --controllers asked for")
    a = p.parse_args(argv)
    if a.controller_episodes < 1:
        print(f"error: --controller-episodes must be >= 1, got {a.controller_episodes}", file=sys.stderr)
        return 2
    if a.controllers:  # refused before the report's work
        from agents.probes import load_controllers

        try:
            load_controllers(RunDir(a.run), a.controllers)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if a.held_dreams == 1 or a.held_dreams < 0 or a.held_episodes < 0:
        print(f"error: --held-dreams must be 0 (off) or >= 2 and --held-episodes >= 0, got {a.held_dreams} and "
              f"{a.held_episodes}", file=sys.stderr)
        return 2
    if a.no_report and not (a.probes or a.controllers or a.held_dreams):
        print("error: --no-report leaves nothing to do; add --probes, --controllers NPZ or --held-dreams N",
              file=sys.stderr)
        return 2
    if not a.no_report:
        try:
            r = fidelity_report(a.run, episodes=a.episodes, max_episodes=a.max_episodes, context=a.context,
                                horizon=a.horizon, device=a.device, video=not a.no_video)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        summary = {k: r[k] for k in ("vae_recon_mse", "mdrnn_nll_per_dim", "reward_mse", "reward_mae",
                                     "done_accuracy")}
        print(json.dumps({"episodes": r["episodes"], **summary}, indent=None))
        print(f"wrote {a.run}/fidelity.json and {len(r['files'])} files under {a.run}/fidelity/")
    if a.probes:
        from agents.probes import probe_fidelity, probe_table

        print(probe_table(probe_fidelity(a.run, seeds=tuple(a.probe_seeds), steps=a.probe_steps, device=a.device)))
    if a.controllers:
        from agents.probes import controller_probes, controller_table

        try:
            report = controller_probes(a.run, a.controllers, episodes=a.controller_episodes, device=a.device,
                                       done_bias=run_done_bias(a.run) if a.done_bias is None else a.done_bias)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(controller_table(report))
    if a.held_dreams:
        from agents.probes import held_dreams, held_table

        try:
            print(held_table(held_dreams(a.run, dreams=a.held_dreams, real_episodes=a.held_episodes, device=a.device)))
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
