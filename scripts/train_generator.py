"""Train one generative family on one data source; writes samples, TensorBoard, a checkpoint.

    python scripts/train_generator.py dcgan --data mnist --steps 2000 --out runs/gen/dcgan-mnist
    python scripts/train_generator.py realnvp --data moons --steps 3000
    python scripts/train_generator.py ddpm --data frames:runs/cr --image-size 32 --preset small
    python scripts/train_generator.py gpt --data python_docs --steps 2000 --batch-size 12 --block-size 64

Rerun the same command to resume (up to --steps). Families: see --help; data sources: digits,
mnist, moons, frames:RUN (the rollouts collected in run folder RUN), TASK:RUN (the same, checked
to be TASK's, e.g. car_racing:RUN); text for lstm, gpt and mamba: pydoc, python_docs (Python's own
help topics and docstrings) or text:PATH.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    import generators
    from generators.data import SOURCES
    from generators.train import FitConfig, suggested_threads, train_generator
    from worldlab.rundir import RunDir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family", help=f"one of: {', '.join(generators.available())}")
    p.add_argument("--data", required=True, help=f"data source: {', '.join(SOURCES)}")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps in total (default 1000)")
    p.add_argument("--out", default=None, help="run folder (default runs/generators/FAMILY-DATA)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the book's for the family)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the book's for the family)")
    p.add_argument("--ema", type=float, default=None, help="EMA decay (default: 0.999 for ddpm, else off)")
    p.add_argument("--preset", default=None, help="config preset: tiny (seconds) or small (CPU minutes); "
                   "default: the book's sizes")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this side (power of two)")
    p.add_argument("--block-size", type=int, default=None, help="text: characters per training window (default 64)")
    p.add_argument("--max-items", type=int, default=None,
                   help="use at most this many training examples (text: the first this many characters)")
    p.add_argument("--sample-every", type=int, default=0, help="steps between sample grids (0 = at the end)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 2 on an idle machine, 1 when other jobs load it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    torch.set_num_threads(max(1, args.threads or suggested_threads()))
    out = RunDir(args.out or Path("runs") / "generators" / f"{args.family}-{args.data.replace(':', '-').replace('/', '_')}")
    settings = FitConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema=args.ema,
                         sample_every=args.sample_every, checkpoint_every=args.checkpoint_every, seed=args.seed)
    t0 = time.time()
    try:
        generators.family(args.family)
        model, history = train_generator(args.family, args.data, settings, out=out.root, image_size=args.image_size,
                                         max_items=args.max_items, preset=args.preset, device=args.device,
                                         progress=not args.no_progress, block_size=args.block_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"train_generator.py: error: {e}", file=sys.stderr)
        return 2
    last = {k: v[-1] for k, v in history.items() if v}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in list(last.items())[:4])
    print(f"{args.family} on {args.data}: {args.steps} steps in {time.time() - t0:.0f}s"
          f"{' (' + summary + ')' if summary else ''}; model {out.generator_final}, samples "
          f"{out.sample_text() if out.sample_text().exists() else out.sample_grid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
