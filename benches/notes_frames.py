#!/usr/bin/env python3
"""Frame-level pitch metrics of hark's F0 tracker (pYIN) beside SwiftF0, on the same audio.

Note F1 mixes two things: the F0 track and how it is cut into notes. This separates them. Every
frame inside a reference note is "voiced" at that note's pitch, every other frame unvoiced
(mir_eval.melody's conventions, with the notes as the reference melody):

    VR   voicing recall: reference-voiced frames the tracker calls voiced
    VFA  voicing false alarm: reference-unvoiced frames it calls voiced
    RPA  raw pitch accuracy: reference-voiced frames called voiced within 50 cents
    RCA  the same, an octave error forgiven

    hark-train eval notes --audio DIR --notes DIR/notes --save-estimates EST [--room FILE]
                          [--noise PATH... --snr DB]
    python3 benches/notes_frames.py --audio DIR --notes DIR/notes --hark EST [--room FILE]
                          [--noise PATH... --snr DB]

`--save-estimates` writes hark's frames (`EST/<stem>.f0.tsv`); the same `--room` plays the audio
in the same room here (direct sound moved to time 0, level back to the dry peak) before SwiftF0
(`pip install swift-f0 onnxruntime`; left out with a note when it is missing) hears it.
`--noise` mixes the same recordings at the same SNR (over the file's whole length, after the
room), but its own draw of which recording and where: the same conditions, not the same samples.
`--every N` takes every Nth file. Needs numpy, scipy and soundfile.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve, resample_poly

AUDIO = (".flac", ".wav", ".ogg", ".mp3")
NOTES = (".tsv", ".csv", ".txt")


def load_16k(path):
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    return x if sr == 16000 else resample_poly(x, 16000, sr).astype(np.float32)


def room(path):
    """As hark-train's --room: from 1 ms before the first sample within 20 dB of the peak."""
    h = load_16k(path)
    top = np.abs(h).max()
    direct = int(np.argmax(np.abs(h) >= 0.1 * top))
    return h[max(direct - 16, 0):]


def noise_bank(paths):
    """Every audio file under `paths` (files taken as they are), as hark-train's --noise; room
    impulse responses (under a directory named `rir`) are not noise."""
    files = []
    for p in paths:
        if p.is_file():
            files.append(p)
        else:
            files += [f for f in p.rglob("*") if f.suffix in AUDIO and "rir" not in f.parts]
    clips = [load_16k(f) for f in sorted(files)]
    return [c for c in clips if len(c) >= 16000 and np.sqrt(np.mean(c ** 2)) > 1e-4]


def add_noise(x, clips, snr_db, rng):
    n = clips[rng.integers(len(clips))]
    seg = np.take(n, rng.integers(len(n)) + np.arange(len(x)), mode="wrap")
    ps, pn = np.sqrt(np.mean(x ** 2)), np.sqrt(np.mean(seg ** 2))
    if ps > 1e-6 and pn > 1e-6:
        x = x + seg * (ps / pn / 10 ** (snr_db / 20))
    return x.astype(np.float32)


def read_notes(path):
    """(onset, offset, midi) rows of a note table; header and malformed lines skipped."""
    rows = []
    for line in open(path):
        parts = line.replace(",", "\t").split()
        try:
            rows.append((float(parts[0]), float(parts[1]), float(parts[2])))
        except (ValueError, IndexError):
            continue
    return rows


def reference(notes, times):
    """The reference MIDI pitch at each time (NaN where no note sounds)."""
    ref = np.full(len(times), np.nan)
    for on, off, midi in notes:
        ref[(times >= on) & (times < off)] = midi
    return ref


def counts(ref, hz, voiced):
    """[ref voiced, ref unvoiced, voiced on ref voiced, voiced on ref unvoiced, right, chroma]."""
    rv = ~np.isnan(ref)
    ev = voiced & (hz > 0)
    both = rv & ev
    cents = np.full(len(ref), np.inf)
    cents[both] = np.abs(1200 * np.log2(hz[both] / 440.0) + 6900 - 100 * ref[both])
    chroma = np.full(len(ref), np.inf)
    chroma[both] = np.abs(((cents[both] + 600) % 1200) - 600)
    return np.array([rv.sum(), (~rv).sum(), both.sum(), ((~rv) & ev).sum(),
                     (both & (cents <= 50)).sum(), (both & (chroma <= 50)).sum()], dtype=float)


def row(name, c, extra=""):
    rv, ru, vv, vu, right, chroma = c
    return (f"| {name} | {vv / rv:.3f} | {vu / max(ru, 1):.3f} | {right / rv:.3f} | "
            f"{chroma / rv:.3f} |{extra}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--audio", type=Path, required=True)
    ap.add_argument("--notes", type=Path, required=True)
    ap.add_argument("--hark", type=Path, required=True, help="hark-train's --save-estimates DIR")
    ap.add_argument("--room", type=Path)
    ap.add_argument("--noise", type=Path, nargs="+", default=[])
    ap.add_argument("--snr", type=float, default=10.0)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--per-file", action="store_true")
    a = ap.parse_args()
    try:
        from swift_f0 import SwiftF0
        peer = SwiftF0(threads=1, spin=False)
    except ImportError as e:
        print(f"SwiftF0 left out ({e}): pip install swift-f0 onnxruntime", file=sys.stderr)
        peer = None
    h = room(a.room) if a.room else None
    noise = noise_bank(a.noise) if a.noise else []
    if a.noise and not noise:
        sys.exit(f"--noise {a.noise} holds no audio of a second or more")
    rng = np.random.default_rng(7)
    refs = {p.stem: p for p in a.notes.iterdir() if p.suffix in NOTES}
    files = sorted(p for p in a.audio.iterdir() if p.suffix in AUDIO and p.stem in refs)
    files = files[::a.every]
    if not files:
        sys.exit("no audio file has a reference note file of the same stem")
    total = {"hark": np.zeros(6), "swiftf0": np.zeros(6)}
    seconds, peer_cpu = 0.0, 0.0
    for f in files:
        notes = read_notes(refs[f.stem])
        frames = a.hark / f"{f.stem}.f0.tsv"
        if not frames.exists():
            sys.exit(f"{frames} is missing: run hark-train eval notes --save-estimates {a.hark}")
        t, hz, v = np.loadtxt(frames, skiprows=1, usecols=(0, 1, 2), ndmin=2).T
        per = {"hark": counts(reference(notes, t), hz, v > 0)}
        if peer is not None:
            x = load_16k(f)
            if h is not None:
                y = fftconvolve(x, h)[:len(x)]
                x = (y * np.abs(x).max() / max(np.abs(y).max(), 1e-12)).astype(np.float32)
            if noise:
                x = add_noise(x, noise, a.snr, rng)
            seconds += len(x) / 16000
            c0 = time.process_time()
            r = peer.detect(x, 16000)
            peer_cpu += time.process_time() - c0
            per["swiftf0"] = counts(reference(notes, r.timestamps), r.pitch_hz,
                                    r.confidence >= 0.5)
        for k, c in per.items():
            total[k] += c
            if a.per_file:
                print(row(f"{f.stem} {k}", c))
    where = (f", room {a.room.name}" if a.room else "") + (f", noise at {a.snr:g} dB" if noise else "")
    print(f"\n{len(files)} files{where}\n")
    print("| tracker | VR | VFA | RPA | RCA |\n|---|---|---|---|---|")
    print(row("hark (pYIN, 10 ms)", total["hark"]))
    if peer is not None:
        print(row("SwiftF0 0.3 (16 ms)", total["swiftf0"],
                  f" {100 * peer_cpu / seconds:.2f} % of one core"))


if __name__ == "__main__":
    main()
