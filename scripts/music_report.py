"""The music Transformer on Bach's chorales (book chapter 11), measured: held-out note and duration
NLL against bigram baselines, the in-scale rate of its samples against the real chorales', and
samples as MIDI files and piano-roll pictures; writes the "Music Transformer" section of
docs/MUSIC.md and docs/results/music_transformer.json. ``--model musegan``: MuseGAN on the 4/4
chorales' 2-bar piano rolls, measured by MuseGAN's rates (empty bars, pitch classes per bar,
qualified notes, tonal distance) against the held-out chorales' and by how far each noise moves
the samples' pitch classes; its own section and docs/results/musegan.json.

    python scripts/music_report.py                       # all chorales, 2,000 steps
    python scripts/music_report.py --model musegan --steps 1000
    python scripts/music_report.py --steps 200 --chorales 20 --out runs/music_quick --doc /tmp/MUSIC.md

The chorales are split by chorale (10% held out, seed 0), so no held-out phrase was seen in
training. The bigram baselines are add-one bigrams over the same tokens, fitted on the training
chorales. The in-scale rate of a passage is the share of its notes in the major scale (of 12) that
holds most of them; real: the held-out chorales' parts; generated: streams sampled from a START
token at temperatures 1.0 and 0.7, of the held-out parts' median length.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEMPERATURES = (1.0, 0.7)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("music_transformer", "musegan"), default="music_transformer")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--chorales", type=int, default=None, help="the corpus's first N chorales (default: all)")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--preset", default=None, help="a model preset (tiny, small; default: the full model)")
    p.add_argument("--samples", type=int, default=32, help="streams sampled per temperature")
    p.add_argument("--out", default="runs/music_transformer", help="run folder (checkpoint, TensorBoard, MIDI)")
    p.add_argument("--doc", default=str(ROOT / "docs" / "MUSIC.md"))
    p.add_argument("--json", default=None, help="default: docs/results/<model>.json")
    p.add_argument("--book-critic", action="store_true",
                   help="musegan: the book's critic alone (critic_streams=False), the ablation of the default "
                        "four-stream critic; its own doc section and docs/results/musegan_book_critic.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 1 or args.samples < 1 or args.block_size < 2:
        print("error: --steps, --samples must be >= 1 and --block-size >= 2", file=sys.stderr)
        return 2
    import torch

    from generators import music as mu
    from worldlab.io import atomic_write_json, write_doc_section

    torch.set_num_threads(args.threads)
    if args.book_critic and args.model != "musegan":
        print("error: --book-critic is MuseGAN's; pass --model musegan", file=sys.stderr)
        return 2
    args.json = args.json or str(ROOT / "docs" / "results" / f"{args.model}{'_book_critic' if args.book_critic else ''}.json")
    if args.out == "runs/music_transformer":
        args.out = f"runs/{args.model}"
    t0 = time.time()
    say = (lambda m: None) if args.no_progress else (lambda m: print(m, flush=True))
    say("reading the chorales (parsed once, then cached)")
    chorales = mu.load_chorales(limit=args.chorales, progress=not args.no_progress)
    train_c, held_c = mu.split_chorales(chorales, seed=args.seed)
    if args.model == "musegan":
        return musegan_report(args, argv, chorales, train_c, held_c, t0, say)
    train = mu.MusicData.from_chorales("chorales (train)", train_c, args.block_size)
    held = mu.MusicData.from_chorales("chorales (held out)", held_c, args.block_size)
    say(f"{len(chorales)} chorales: {len(train_c)} to train ({len(train.tokens):,} tokens), {len(held_c)} held out "
        f"({len(held.tokens):,})")
    tok = mu.MusicTokenizer()
    baseline = {"note": mu.bigram_nll(train.tokens[:, 0], held.tokens[:, 0], tok.note_vocab),
                "duration": mu.bigram_nll(train.tokens[:, 1], held.tokens[:, 1], tok.duration_vocab)}
    model, fit_s = _train(args, train)
    windows = held.eval_windows(min(512, len(held)))
    nll = model.nll(windows)
    say(f"held-out NLL: note {nll['note']:.3f} (bigram {baseline['note']:.3f}), duration {nll['duration']:.3f} "
        f"(bigram {baseline['duration']:.3f})")

    real_parts = [c.part(k) for c in held_c for k in range(4)]
    real_rate = float(np.mean([mu.in_scale_rate(r[:, 0]) for r in real_parts]))
    length = int(np.median([len(mu.notes_to_tokens(r)[0]) for r in real_parts]))
    docs = Path(args.doc).parent / "music"  # beside the doc, which links to them
    docs.mkdir(parents=True, exist_ok=True)
    generated = {}
    for temp in TEMPERATURES:
        streams = model.sample_tokens(args.samples, length=length, temperature=temp, generator=args.seed + 1)
        rates = [mu.in_scale_rate(mu.tokens_to_notes(n, d)[:, 0]) for n, d in streams]
        rests = float(np.mean([np.mean([x == "rest" for x in n]) for n, _ in streams]))
        generated[f"{temp:g}"] = {"in_scale_rate": float(np.mean(rates)), "rest_share": rests}
        mu.tokens_to_midi(streams[:4], docs / f"music_transformer_t{temp:g}.mid")
        _roll_png(mu, streams[:4], docs / f"music_transformer_t{temp:g}.png", f"sampled at temperature {temp:g}")
    first = held_c[0]
    mu.tokens_to_midi(mu.chorale_tokens(first), docs / "chorale_heldout.mid")
    _roll_png(mu, mu.chorale_tokens(first), docs / "chorale_heldout.png", f"held out: {first.title}")
    real_rests = float(np.mean([np.mean([x == "rest" for x in mu.notes_to_tokens(r)[0]]) for r in real_parts]))
    result = {
        "command": "python scripts/music_report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "chorales": len(chorales), "train_chorales": len(train_c), "heldout_chorales": len(held_c),
        "train_tokens": int(len(train.tokens)), "heldout_tokens": int(len(held.tokens)), "steps": args.steps,
        "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": fit_s,
        "heldout_nll": nll, "bigram_nll": baseline,
        "note_ratio": nll["note"] / baseline["note"],
        "real": {"in_scale_rate": real_rate, "rest_share": real_rests}, "generated": generated,
        "seconds": time.time() - t0, "seed": args.seed}
    atomic_write_json(args.json, result)
    g = generated[f"{TEMPERATURES[0]:g}"]
    ok_note, ok_dur = result["note_ratio"] <= 0.85, nll["duration"] <= baseline["duration"]
    ok_scale = abs(g["in_scale_rate"] - real_rate) <= 0.05
    lines = [
        f"{len(chorales)} four-part chorales of music21's corpus (3/4 and 4/4, on the 16th grid), split by chorale: "
        f"{len(train_c)} to train ({len(train.tokens):,} note/duration pairs, the four parts as separate streams), "
        f"{len(held_c)} held out ({len(held.tokens):,}). A Transformer of {result['parameters']:,} parameters, "
        f"{args.steps} steps of 32 windows of {args.block_size} ({fit_s / 60:.1f} min on this machine), seed "
        f"{args.seed}.", "", "```bash", result["command"].replace(" --doc " + args.doc, ""), "```", "",
        "| held out, nats per token | music Transformer | add-one bigram | target | met |",
        "|---|---|---|---|---|",
        f"| note | **{nll['note']:.3f}** | {baseline['note']:.3f} | <= 0.85 x bigram ({0.85 * baseline['note']:.3f}) "
        f"| {'yes' if ok_note else 'no'} |",
        f"| duration | **{nll['duration']:.3f}** | {baseline['duration']:.3f} | <= bigram | "
        f"{'yes' if ok_dur else 'no'} |", "",
        "| | in-scale rate | share of rests |", "|---|---|---|",
        f"| held-out chorale parts | {real_rate:.3f} | {real_rests:.3f} |",
        *[f"| sampled, temperature {t} ({args.samples} streams of {length}) | **{v['in_scale_rate']:.3f}** | "
          f"{v['rest_share']:.3f} |" for t, v in generated.items()], "",
        f"In-scale rate within 5 points of real at temperature {TEMPERATURES[0]:g}: {'yes' if ok_scale else 'no'} "
        f"({100 * (g['in_scale_rate'] - real_rate):+.1f} points).", "",
        "Four sampled streams played as the four voices (each stream is one part's line; the model learns parts, "
        "not their harmony): [temperature 1.0](music/music_transformer_t1.mid), "
        "[temperature 0.7](music/music_transformer_t0.7.mid); a held-out chorale for comparison: "
        "[chorale_heldout.mid](music/chorale_heldout.mid).", "",
        "![sampled at temperature 1.0](music/music_transformer_t1.png)", "",
        "![a held-out chorale](music/chorale_heldout.png)", ""]
    write_doc_section(Path(args.doc), "music-transformer", ["## Music Transformer", "", *lines],
                      head="# Music\n\nBach's chorales as data (`generators/music.py`: music21's corpus, tokens, "
                           "piano roll, MIDI in and out) and the book's music models, each measured by one command.\n")
    say(f"wrote {args.doc} and {args.json} ({(time.time() - t0) / 60:.1f} min)")
    return 0


def _train(args: argparse.Namespace, train: object) -> tuple[object, float]:
    """``args.model`` trained on ``train`` into ``args.out`` (MIDI samples four times); the model and seconds.
    A larger ``--steps`` on a run folder an earlier invocation trained continues it; the seconds then
    count both invocations (the earlier one's from its JSON). A learning-rate schedule (the Music
    Transformer's) follows the new length's schedule from the step it resumes at."""
    import json

    import torch

    import generators
    from generators.train import continued_from
    from worldlab.rundir import RunDir

    prev = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    earlier = prev.get("train_seconds", 0.0) if continued_from(prev, RunDir(args.out).generator, args.steps) else 0.0

    torch.manual_seed(args.seed)
    extra = {"critic_streams": False} if getattr(args, "book_critic", False) else {}
    model = generators.model_for(args.model, train, preset=args.preset, **extra)  # type: ignore[arg-type]
    t = time.time()
    generators.fit(model, train, generators.FitConfig(steps=args.steps, sample_every=max(1, args.steps // 4),  # type: ignore[arg-type]
                                                      seed=args.seed), out=args.out, progress=not args.no_progress)
    return model, earlier + time.time() - t


def musegan_report(args: argparse.Namespace, argv: list[str] | None, chorales: list, train_c: list, held_c: list,
                   t0: float, say: object) -> int:

    from generators import music as mu
    from generators.musegan import binarize, noise_effect
    from worldlab.io import atomic_write_json, write_doc_section

    train = mu.RollData("chorale_rolls (train)", mu.piano_roll(train_c))
    held = mu.piano_roll(held_c)
    say(f"{len(train)} two-bar segments to train, {len(held)} held out")  # type: ignore[operator]
    model, fit_s = _train(args, train)
    n = max(args.samples, 64)
    fake = binarize(model.sample(n, generator=args.seed + 1).cpu())
    real_m, fake_m = mu.roll_metrics(held), mu.roll_metrics(fake)
    effects = {k: noise_effect(model, k, n=n, seed=args.seed + 2) for k in ("chords", "style", "melody", "groove")}
    docs = Path(args.doc).parent / "music"
    docs.mkdir(parents=True, exist_ok=True)
    book = args.book_critic
    name = "musegan_book_critic" if book else "musegan"
    rows = mu.segments_to_notes(fake[:4])
    mu.notes_to_midi(rows, docs / f"{name}.mid")
    _notes_png(rows, docs / f"{name}.png", f"MuseGAN{' (the book critic)' if book else ''}: four sampled 2-bar "
                                           "segments, one after another")
    keys = ("empty_bars", "pitch_classes", "qualified_notes", "tonal_distance")
    within = {k: abs(fake_m[k] - real_m[k]) <= real_m[f"{k}_std"] for k in keys}
    ratio = effects["chords"] / max(effects["groove"], 1e-9)
    result = {"command": "python scripts/music_report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "train_segments": len(train), "heldout_segments": int(len(held)), "steps": args.steps,
              "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": fit_s,
              "real": real_m, "generated": fake_m, "within_one_std": within, "noise_effect": effects,
              "chords_over_groove": ratio, "seconds": time.time() - t0, "seed": args.seed,
              "critic": "book" if book else "streams"}
    atomic_write_json(args.json, result)
    lines = [f"The 4/4 chorales of the same split as 2-bar segments, one every bar: {len(train):,} to train, "
             f"{len(held):,} held out. MuseGAN of {result['parameters']:,} parameters (generator and critic"
             + (": the book's critic alone, the ablation of the four-stream one" if book else
                ": the four-stream critic, `critic_streams=True`") + "), "
             f"{args.steps} steps ({fit_s / 60:.1f} min on this machine), seed {args.seed}; {n} samples binarised "
             f"(each track's loudest pitch per step, when above 0).", "", "```bash",
             result["command"].replace(" --doc " + args.doc, ""), "```", "",
             "| | empty bars | pitch classes per bar | qualified notes (>= an eighth) | tonal distance |",
             "|---|---|---|---|---|",
             "| held-out chorales (mean ± std over segments) | " + " | ".join(
                 f"{real_m[k]:.3f} ± {real_m[k + '_std']:.3f}" for k in keys) + " |",
             "| MuseGAN | " + " | ".join(f"**{fake_m[k]:.3f}**" for k in keys) + " |",
             "| within one std of real | " + " | ".join("yes" if within[k] else "no" for k in keys) + " |", "",
             "How far each noise moves the samples' pitch-class histograms (mean L1 distance when only that noise "
             "is drawn again): " + ", ".join(f"{k} {v:.3f}" for k, v in effects.items()) +
             f"; chords / groove = **{ratio:.2f}** (target >= 2).", "",
             f"[{name}.mid](music/{name}.mid)", "", f"![MuseGAN samples](music/{name}.png)", ""]
    write_doc_section(Path(args.doc), name.replace("_", "-"),
                      [f"## MuseGAN{' with the book critic (ablation)' if book else ''}", "", *lines],
                      head="# Music\n\nBach's chorales as data (`generators/music.py`: music21's corpus, tokens, "
                           "piano roll, MIDI in and out) and the book's music models, each measured by one command.\n")
    say(f"wrote {args.doc} and {args.json} ({(time.time() - t0) / 60:.1f} min)")  # type: ignore[operator]
    return 0


def _notes_png(rows: np.ndarray, path: Path, title: str) -> None:
    """``(part, pitch, onset, duration)`` rows as a piano roll, one colour per part."""
    import matplotlib

    from worldlab.io import atomic_savefig

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.2))
    colours = ("tab:red", "tab:orange", "tab:green", "tab:blue")
    for part, pitch, on, dur in rows:
        ax.add_patch(plt.Rectangle((on, pitch - 0.4), dur, 0.8, color=colours[int(part) % 4], alpha=0.8))
    ax.autoscale_view()
    ax.set_xlabel("time (16th notes)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=90)  # makes the folder too
    plt.close(fig)


def _roll_png(mu: object, parts: list, path: Path, title: str) -> None:
    """Up to four token streams as a piano roll (:func:`_notes_png`, one colour per voice)."""
    rows = [np.concatenate([np.full((len(r), 1), k), r], axis=1)
            for k, r in enumerate(mu.tokens_to_notes(n, d) for n, d in parts[:4])]  # type: ignore[attr-defined]
    _notes_png(np.concatenate(rows) if rows else np.zeros((0, 4), np.int64), path, title)


if __name__ == "__main__":
    sys.exit(main())
