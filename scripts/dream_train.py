"""World Models end to end: collect real rollouts, train V and M, evolve C in the dream, judge C
in the real game.

    python scripts/dream_train.py car_racing                      # the default preset, runs/car_racing
    python scripts/dream_train.py doom_take_cover --preset smoke --out runs/doom_smoke
    python scripts/dream_train.py car_racing --resume --out runs/car_racing   # after a kill
    python scripts/dream_train.py car_racing --address HEAD:6379 --workers 64 --preset paper

Every stage writes to the run folder and is skipped when its output is complete; rerunning the
same command (or --resume) continues where a killed run stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_config(args: argparse.Namespace):  # noqa: ANN201 - (RunConfig, RunDir)
    from agents.world_models import RunConfig, override, preset
    from worldlab.rundir import RunDir

    run = RunDir(args.out or Path("runs") / args.task)
    if args.resume:  # the saved config; flags given beside --resume still apply (and are checked)
        if not run.is_run():
            raise FileNotFoundError(f"nothing to resume: {run} holds no config.json (drop --resume to start it)")
        cfg = RunConfig.load(run)
        if cfg.task != args.task:
            raise ValueError(f"{run} is a {cfg.task} run, not {args.task}")
    else:
        cfg = preset(args.preset, args.task)
    from agents.world_models.config import FLAG_OF

    sets = list(args.set)
    for key, flag in FLAG_OF.items():  # the one table of config keys and their flags
        v = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if v is not None:
            sets.append(f"{key}={v}")
    return override(cfg, sets), run


def main(argv: list[str] | None = None) -> int:
    from agents.pool import BACKENDS
    from agents.world_models.config import PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", help="car_racing or doom_take_cover")
    p.add_argument("--preset", choices=PRESETS, default="default",
                   help="smoke: minutes (tests); default: ~1-2 h on a 2-core laptop; paper: a cluster or GPU")
    p.add_argument("--out", default=None, help="run folder (default runs/TASK)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its saved config")
    p.add_argument("--workers", type=int, default=None, help="Ray workers for real rollouts")
    p.add_argument("--train-workers", dest="train_workers", type=int, default=None,
                   help="processes that train V and M (Ray Train, DDP); default 1: this process")
    p.add_argument("--address", default=None, help="join a Ray cluster (HOST:PORT) instead of a local Ray")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="where real rollouts run: ray (default) or processes (local processes, no Ray needed)")
    p.add_argument("--device", default=None, help="torch device for training and the dream (cpu, cuda)")
    p.add_argument("--temperature", type=float, default=None, help="dream temperature tau")
    p.add_argument("--rounds", type=int, default=None, help="iterative training rounds")
    p.add_argument("--train-in", dest="train_in", choices=("dream", "real"), default=None,
                   help="evolve C in the dream (World Models) or in the real env")
    p.add_argument("--generations", type=int, default=None, help="CMA-ES generations per round")
    p.add_argument("--eval-episodes", dest="eval_episodes", type=int, default=None, help="real evaluation episodes")
    p.add_argument("--finetune-real", dest="finetune_real", type=int, default=None, metavar="G",
                   help="then continue CMA-ES in the real game for G generations (16 x 2, episodes cut after 50 "
                        "steps without reward); its score is reported apart, labelled as trained in the real game")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set cma.popsize=32 --set vae_train.steps=500")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: all cores; 1 on a machine busy with other jobs)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from worldlab.interrupt import interruptible

    trainer = cfg = run = None
    with interruptible() as stop:
        try:
            from agents.world_models import DreamTrainer, check_resumable

            cfg, run = build_config(args)
            check_resumable(run, cfg, resume=args.resume)
            if args.out is None:  # the default runs/TASK: runs/ is made on a fresh clone
                run.root.parent.mkdir(exist_ok=True)
            if not run.root.parent.exists():
                raise FileNotFoundError(f"the parent of the run folder does not exist: {run.root.parent}")
            trainer = DreamTrainer(cfg, run, address=args.address, progress=not args.no_progress,
                                   threads=args.threads)
            res = trainer.learn()
        except (ValueError, FileNotFoundError, ConnectionError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if stop.signum:
        if trainer is None or run is None:
            return stop.exit("nothing was started")
        where = trainer.plan.where() if trainer.plan is not None else "before the first stage"
        return stop.exit(f"stopped {where}; every finished stage and the last checkpoints are kept in {run}; "
                         f"go on with: python scripts/dream_train.py {args.task} --resume --out {run}")
    assert cfg is not None and run is not None
    from agents.evaluate import episode_limit

    limit = f" of up to {episode_limit(cfg.task, cfg.eval.max_steps)} steps"
    print(f"{cfg.task}: real score {res['mean']:.1f} ± {res['std']:.1f} over {res['episodes']} episodes{limit} "
          f"(C trained in the {res.get('train_in', cfg.train_in)}, preset {cfg.preset}, {res['wall_s'] / 60:.1f} min"
          f"{' since the resume; every stage: stages.json' if trainer.resuming else ''}) -> "
          f"{run.report}")
    if "selected" in res:
        sel = res["selected"]
        print(f"{cfg.task}: that controller is round {sel['round']}'s, picked among {sel['of_rounds']} rounds by "
              f"{sel['episodes']} real episodes each (a selection by real returns, not a dream-only result)"
              + (f"; the last round's (dream-only) scores {res['last_round']['mean']:.1f} ± "
                 f"{res['last_round']['std']:.1f} on the same episodes" if "last_round" in res else
                 "; it is the last round's, so this is also the dream-only result"
                 if sel["round"] == sel["of_rounds"] - 1 else ""))
    if "averaged" in res:
        r = res["averaged"]["rounds"]
        print(f"{cfg.task}: that controller is rounds {r[0]}-{r[-1]}'s controllers averaged (average_rounds "
              f"{len(r)}; a dream-only result)"
              + (f"; the last round's scores {res['last_round']['mean']:.1f} ± {res['last_round']['std']:.1f} on "
                 f"the same episodes" if "last_round" in res else ""))
    if "finetuned" in res:
        f = res["finetuned"]
        print(f"{cfg.task}: fine-tuned in the real game for {cfg.finetune.generations} generations: real score "
              f"{f['mean']:.1f} ± {f['std']:.1f} over {f['episodes']} episodes{limit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
