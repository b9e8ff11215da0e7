"""Watch a run's controller drive: in the real game, in its dream, or both side by side.

    python scripts/watch.py runs/car_racing                  # pygame window, real | dream
    python scripts/watch.py runs/car_racing --real --episodes 3
    python scripts/watch.py runs/car_racing --record drive.mp4   # headless: write a video instead
    python scripts/watch.py runs/car_racing --renderer runs/car_racing/renderer/generator.pt   # sharper dream
    python scripts/watch.py runs/car_racing --sb3 ppo_dream.zip   # a Stable-Baselines3 policy trained in the dream
    python scripts/watch.py pretrained/car_racing --controller pretrained/car_racing/checkpoints/controller_finetuned.npz
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from agents.sb3_policy import add_sb3_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder written by scripts/dream_train.py")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--dream", action="store_const", const="dream", dest="mode", help="only the dream")
    g.add_argument("--real", action="store_const", const="real", dest="mode", help="only the real game")
    p.add_argument("--record", default=None, metavar="FILE", help="write an mp4 instead of opening a window")
    p.add_argument("--sound", action="store_true",
                   help="with --record: a sound track, the dream's rollout sonified (rewards and V's latents as music)")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=50)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--renderer", default=None, metavar="PT",
                   help="draw the dream with a trained renderer (scripts/renderer_report.py) instead of V")
    p.add_argument("--controller", default=None,
                   help="watch this controller file instead of RUN/checkpoints/controller.npz (e.g. "
                        "RUN/checkpoints/controller_finetuned.npz, fine-tuned in the real game)")
    add_sb3_arguments(p, "watch")
    args = p.parse_args(argv)
    from agents.watch import has_display
    from agents.world_models.runs import watch_run
    from worldlab.interrupt import interruptible

    with interruptible() as stop:
        try:
            if args.record is None and not has_display():
                raise ValueError("no display to open a window on: pass --record FILE.mp4 (or set "
                                 "SDL_VIDEODRIVER=dummy)")
            res = watch_run(args.run, mode=args.mode or "both", episodes=args.episodes, seed=args.seed,
                            record=args.record, fps=args.fps, max_steps=args.max_steps, renderer=args.renderer,
                            sb3=args.sb3, sb3_algo=args.sb3_algo, sound=args.sound, controller=args.controller)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if stop.signum:
        return stop.exit("stopped watching" + (f"; {args.record} was not written" if args.record else ""))
    for name in ("real", "dream"):
        rs = res[name]
        if rs:
            limit = res["max_steps"][name]
            print(f"{name}: " + ", ".join(f"{r:.1f}" for r in rs)
                  + f" over {len(rs)} episode{'s' if len(rs) > 1 else ''}"
                  + (f" of at most {limit} steps" if limit else ""))
    if args.record:
        print(f"wrote {args.record}" + (" (with the dream's rollout as its sound track)" if args.sound else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
