"""Music as data (generators/music.py): chorales parsed from music21's corpus and cached, the book's
note and duration tokens, the piano roll, and MIDI round trips."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from generators import music as mu


@pytest.fixture(scope="module")
def chorales(tmp_path_factory: pytest.TempPathFactory) -> list[mu.Chorale]:
    import os

    os.environ["WORLDLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return mu.load_chorales(limit=5)
    finally:
        del os.environ["WORLDLAB_CACHE"]


def test_chorales_are_four_parts_on_the_16th_grid_and_cached(chorales: list[mu.Chorale], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert 3 <= len(chorales) <= 5
    for c in chorales:
        assert set(np.unique(c.notes[:, 0])) == {0, 1, 2, 3} and c.beats_per_bar in (3, 4)
        assert (c.notes[:, 3] > 0).all() and (c.notes[:, 2] >= 0).all()
        sop, bass = c.part(0)[:, 0], c.part(3)[:, 0]
        assert sop.mean() > bass.mean() + 12  # the soprano sits above the bass
    monkeypatch.setenv("WORLDLAB_CACHE", str(tmp_path))
    first = mu.load_chorales(limit=2)
    cached = next(tmp_path.glob("chorales_v*_first2.npz"))
    monkeypatch.setattr(mu, "_parse", lambda score: pytest.fail("parsed again instead of read from the cache"))
    again = mu.load_chorales(limit=2)
    assert cached.is_file() and [c.title for c in again] == [c.title for c in first]
    assert all(np.array_equal(a.notes, b.notes) for a, b in zip(first, again, strict=True))


def test_tokens_are_the_books_notes_and_durations(chorales: list[mu.Chorale]) -> None:
    notes, durs = mu.chorale_tokens(chorales[0])[0]
    assert notes[:2] == ["G4", "G4"] and durs[:2] == ["1.0", "2.0"]  # "Aus meines Herzens Grunde" opens so
    tok = mu.MusicTokenizer()
    n_ids, d_ids = tok.encode(notes, durs)
    assert tok.decode(n_ids, d_ids) == (notes, durs)
    assert tok.note_vocab == 130 and tok.duration_vocab == 65
    with pytest.raises(ValueError, match="'H4' is not a note"):
        tok.encode(["H4"], ["1.0"])
    with pytest.raises(ValueError, match="not a positive multiple of a 16th"):
        mu.tokens_to_notes(["C4"], ["0.3"])


def test_canonical_tokens_merge_rests_and_split_long_notes() -> None:
    rows = np.array([[60, 0, 4], [62, 8, 100], [64, 120, 4]])  # a gap, a note of 25 quarters, a gap
    notes, durs = mu.notes_to_tokens(rows)
    assert notes == ["C4", "rest", "D4", "D4", "rest", "E4"]
    assert durs == ["1.0", "1.0", "16.0", "9.0", "3.0", "1.0"]


def test_tokens_midi_tokens_round_trip_exactly(chorales: list[mu.Chorale], tmp_path: Path) -> None:
    for c in chorales:
        parts = mu.chorale_tokens(c)
        data = mu.tokens_to_midi(parts, tmp_path / "c.mid")
        assert (tmp_path / "c.mid").read_bytes() == data
        assert mu.midi_to_tokens(tmp_path / "c.mid") == [(list(n), list(d)) for n, d in parts]
        canonical = np.array(sorted((k, *r) for k, (n, d) in enumerate(parts) for r in mu.tokens_to_notes(n, d)),
                             dtype=np.int32)
        assert np.array_equal(mu.midi_to_notes(data), canonical)


def test_piano_roll_segments_and_back(chorales: list[mu.Chorale]) -> None:
    roll = mu.piano_roll(chorales)
    four = [c for c in chorales if c.beats_per_bar == 4]
    assert roll.shape[1:] == (4, 2, 16, 84) and roll.dtype == bool
    assert len(roll) == sum((c.length - c.pickup) // 16 - 1 for c in four)
    assert roll.any(axis=-1).mean() > 0.9  # four voices sound almost always
    assert (roll.sum(-1) <= 1).all()  # each voice one pitch at a time
    rows = mu.roll_to_notes(roll[0])
    assert np.array_equal(mu.notes_to_roll(rows, 32).reshape(4, 2, 16, 84), roll[0])  # roll -> notes -> roll
    assert np.array_equal(mu.midi_to_notes(mu.notes_to_midi(rows)), rows)  # notes -> MIDI -> notes


def test_the_metrics_measure_what_they_say() -> None:
    assert mu.in_scale_rate([60, 62, 64, 65, 67, 69, 71, 72]) == 1.0  # C major
    assert mu.in_scale_rate([57, 59, 60, 62, 64, 65, 67]) == 1.0  # A minor: its relative major's notes
    assert mu.in_scale_rate(range(60, 72)) == pytest.approx(7 / 12)  # the chromatic scale
    cycle = np.tile([0, 1, 2], 200)
    assert mu.bigram_nll(cycle, cycle, vocab=3, alpha=1e-6) < 1e-4  # a deterministic sequence
    assert mu.bigram_nll(np.array([0]), cycle, vocab=5) == pytest.approx(np.log(5))  # nothing learned: uniform


def test_the_music_transformer_learns_and_the_report_says_so(tmp_path: Path, script: Callable[[str], ModuleType]
                                                            ) -> None:
    import json

    music_report = script("music_report")
    doc, out = tmp_path / "MUSIC.md", tmp_path / "r.json"
    assert music_report.main(["--steps", "40", "--chorales", "6", "--preset", "tiny", "--samples", "2",
                              "--block-size", "16", "--out", str(tmp_path / "run"), "--doc", str(doc),
                              "--json", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["heldout_nll"]["note"] < np.log(mu.MusicTokenizer().note_vocab)  # better than uniform after 40 steps
    assert 0.0 < r["real"]["in_scale_rate"] <= 1.0 and set(r["generated"]) == {"1", "0.7"}
    text = doc.read_text()
    assert "<!-- music-transformer:begin -->" in text and "| note | **" in text
    assert (tmp_path / "music" / "music_transformer_t1.mid").is_file()
    assert mu.midi_to_tokens(tmp_path / "music" / "chorale_heldout.mid")  # a readable MIDI file
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.mid"))  # samples written while training


def test_roll_measures_and_musegans_noises(chorales: list[mu.Chorale]) -> None:
    import torch

    import generators
    from generators.musegan import binarize, noise_effect

    real = mu.piano_roll(chorales)
    m = mu.roll_metrics(real)
    assert m["empty_bars"] < 0.05 and 2.0 < m["pitch_classes"] < 6.0 and m["qualified_notes"] > 0.9
    assert 0.0 < m["tonal_distance"] < 2.0 and all(m[f"{k}_std"] >= 0 for k in ("empty_bars", "pitch_classes"))
    silent = np.zeros_like(real[:2])
    assert mu.roll_metrics(silent)["empty_bars"] == 1.0
    h = mu.pitch_class_histogram(real)
    assert h.shape == (len(real), 12) and np.allclose(h.sum(1), 1.0)
    x = torch.full((1, 4, 2, 16, 84), -1.0)
    x[0, 0, 0, :, 36] = 0.5  # one pitch held in track 0, bar 0; all else below 0: silence
    b = binarize(x)
    assert b.sum() == 16 and b[0, 0, 0, :, 36].all()
    torch.manual_seed(0)
    model = generators.make("musegan", preset="tiny")
    assert noise_effect(model, "chords", n=8) >= 0.0 and np.isfinite(noise_effect(model, "groove", n=8))
    with pytest.raises(ValueError, match="unknown noise 'rhythm'"):
        noise_effect(model, "rhythm", n=2)
    with pytest.raises(ValueError, match="piano rolls"):
        generators.make("musegan", shape=(1, 8, 8))


def test_musegans_critic_streams_and_checkpoints_of_the_books_critic() -> None:
    """The default critic reads the segment in four streams, each reached by the gradient; a
    checkpoint saved before the streams existed loads as the book's critic, same outputs."""
    import torch

    import generators
    from generators.musegan import MuseGAN

    torch.manual_seed(0)
    m = generators.make("musegan", preset="tiny")
    assert m.config.critic_streams
    x = torch.rand(3, 4, 2, 16, 84) * 2 - 1
    m.critic(x).sum().backward()
    for stream in ("net", "time_pitch", "onsets", "chroma", "head"):
        grads = [p.grad for p in getattr(m.critic, stream).parameters()]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), stream

    book = generators.make("musegan", preset="tiny", critic_streams=False).eval()
    state = book.checkpoint()
    old = {"critic.head.0.": "critic.net.13.", "critic.head.2.": "critic.net.15."}  # the names it was saved under
    state["model"] = {next((o + k[len(n):] for n, o in old.items() if k.startswith(n)), k): v
                      for k, v in state["model"].items()}
    del state["config"]["critic_streams"]
    back = MuseGAN.from_checkpoint(state).eval()
    assert not back.config.critic_streams and not hasattr(back.critic, "onsets")
    # resuming training goes through the same renaming (worldlab.training.train loads state["model"] raw)
    fresh = generators.make("musegan", preset="tiny", critic_streams=False)
    fresh.load_state_dict(MuseGAN.upgrade_checkpoint(state)["model"])
    new_state = m.checkpoint()
    assert MuseGAN.upgrade_checkpoint(new_state) is new_state  # a current checkpoint is left as it is
    with torch.no_grad():
        assert torch.equal(back.critic(x), book.critic(x))


def test_the_musegan_report_measures_rates_and_noises(tmp_path: Path, script: Callable[[str], ModuleType]) -> None:
    import json

    music_report = script("music_report")
    doc, out = tmp_path / "MUSIC.md", tmp_path / "g.json"
    assert music_report.main(["--model", "musegan", "--steps", "2", "--chorales", "8", "--preset", "tiny",
                              "--out", str(tmp_path / "run"), "--doc", str(doc), "--json", str(out),
                              "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert set(r["noise_effect"]) == {"chords", "style", "melody", "groove"}
    assert all(np.isfinite(v) and v >= 0 for v in r["noise_effect"].values())
    assert r["real"]["qualified_notes"] > 0.9 and "tonal_distance" in r["generated"]
    assert "<!-- musegan:begin -->" in doc.read_text() and (tmp_path / "music" / "musegan.mid").is_file()
    assert sorted((tmp_path / "run" / "samples").glob("*.mid"))  # MIDI samples written while training
    assert r["critic"] == "streams"
    assert music_report.main(["--model", "musegan", "--steps", "3", "--chorales", "8", "--preset", "tiny",
                              "--out", str(tmp_path / "run"), "--doc", str(doc), "--json", str(out),
                              "--no-progress"]) == 0  # more steps continue the run: its time counts both
    longer = json.loads(out.read_text())
    assert longer["steps"] == 3 and longer["train_seconds"] > r["train_seconds"]
    book = tmp_path / "book.json"
    assert music_report.main(["--model", "musegan", "--steps", "1", "--chorales", "8", "--preset", "tiny",
                              "--book-critic", "--out", str(tmp_path / "book"), "--doc", str(doc), "--json", str(book),
                              "--no-progress"]) == 0
    b = json.loads(book.read_text())
    assert b["critic"] == "book" and b["parameters"] < r["parameters"] and "<!-- musegan:begin -->" in doc.read_text()
    assert "<!-- musegan-book-critic:begin -->" in doc.read_text() and (tmp_path / "music" / "musegan_book_critic.png").is_file()


def test_sonify_maps_latents_pay_and_events_deterministically() -> None:
    rng = np.random.default_rng(0)
    rewards, z = rng.standard_normal(96) * 0.1, rng.standard_normal((96, 8))
    rewards[[20, 70]] = 3.0  # two tiles reached
    rows = mu.sonify(rewards, z, seed=3)
    assert np.array_equal(rows, mu.sonify(rewards, z, seed=3)) and not np.array_equal(rows, mu.sonify(rewards, z, seed=4))
    melody, bass, events = (rows[rows[:, 0] == k] for k in range(3))
    assert melody[:, 2].min() == 0 and (melody[:, 2] + melody[:, 3]).max() == 96  # the melody spans the rollout
    assert np.isin(melody[:, 1] % 12, mu.MELODY_SCALE).all() and (60 <= melody[:, 1]).all() and (melody[:, 1] < 84).all()
    assert len(bass) == 6 and set(bass[:, 1]) <= {36, 41, 43, 45}  # a note a bar
    assert events[:, 2].tolist() == [20, 70]
    with pytest.raises(ValueError, match="one latent per reward"):
        mu.sonify(rewards, z[:5])


def test_watch_records_the_dream_with_its_sound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str],
                                               script: Callable[[str], ModuleType]) -> None:
    import subprocess

    import imageio_ffmpeg

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    watch = script("watch")
    fixture = Path(__file__).parent / "fixtures" / "old_run"
    assert watch.main([str(fixture), "--sound"]) == 2
    assert "sound goes into a recorded video: pass record=FILE.mp4" in capsys.readouterr().err
    out = tmp_path / "w.mp4"
    assert watch.main([str(fixture), "--record", str(out), "--sound", "--max-steps", "30", "--fps", "30"]) == 0
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(out)], capture_output=True, text=True).stderr
    assert "Video: h264" in probe and "Audio: aac" in probe
    assert not list(tmp_path.glob(".*"))  # no temp file left beside it
