#!/usr/bin/env python3
"""Peer for hark's polyphonic transcription: the `basic-pitch` 0.4.0 Python package (ONNX
model, default parameters) on the polyphonic corpus files, notes written as TSV
(`onset_s offset_s midi velocity`, one file per input) so the Rust note bench can score both
transcribers with the same metrics.

    python3 benches/notes_poly_peer.py OUT_DIR [--hark HARK_DIR]

Files: /work/shared/data/music/synth/poly*.flac and the real recordings with >= 2 reference
notes (manifest_real.tsv). With --hark (TSVs from `cargo run --release --example
basic_pitch_notes -- HARK_DIR FILE...`), also prints note F1 of both against the references,
mir_eval conventions: onset 50 ms, pitch 50 cents, without offsets and with (offset_ratio 0.2,
min 50 ms).

Needs: pip install basic-pitch==0.4.0 --no-deps, onnxruntime, librosa, resampy, pretty_midi,
mir_eval, scipy.
"""
import argparse
import csv
import glob
import logging
import os
import sys
import time

logging.disable(logging.WARNING)  # basic_pitch warns about every backend it does not find

import numpy as np

DATA = "/work/shared/data/music"


def corpus():
    files = sorted(glob.glob(os.path.join(DATA, "synth", "poly*.flac")))
    with open(os.path.join(DATA, "manifest_real.tsv")) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if int(row["n_notes"]) >= 2:
                files.append(os.path.join(DATA, row["file"]))
    return files


def reference_path(audio):
    d, name = os.path.split(audio)
    return os.path.join(d, "notes", os.path.splitext(name)[0] + ".tsv")


def read_notes(path):
    """(intervals [n, 2], midi [n]) from a TSV whose first three columns are onset, offset, midi."""
    rows = []
    with open(path) as f:
        next(f)
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3:
                rows.append((float(parts[0]), float(parts[1]), float(parts[2])))
    a = np.array(rows, dtype=float).reshape(-1, 3)
    return a[:, :2], a[:, 2]


def f1(ref, est, with_offset):
    import mir_eval

    (ri, rp), (ei, ep) = ref, est
    if len(ri) == 0 or len(ei) == 0:
        return 0.0
    hz = lambda m: 440.0 * 2 ** ((m - 69) / 12)
    # Zero-length reference intervals (pitch-only annotations) are invalid for mir_eval.
    ri = np.maximum(ri, np.stack([ri[:, 0], ri[:, 0] + 1e-3], axis=1))
    ei = np.maximum(ei, np.stack([ei[:, 0], ei[:, 0] + 1e-3], axis=1))
    _, _, f, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ri, hz(rp), ei, hz(ep), onset_tolerance=0.05, pitch_tolerance=50.0,
        offset_ratio=0.2 if with_offset else None, offset_min_tolerance=0.05,
    )
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--hark", help="directory of hark's TSVs to score side by side")
    args = ap.parse_args()
    from basic_pitch import FilenameSuffix, build_icassp_2022_model_path
    from basic_pitch.inference import Model, predict

    model = Model(build_icassp_2022_model_path(FilenameSuffix.onnx))
    os.makedirs(args.out_dir, exist_ok=True)
    print("file\tref_notes\tpeer_notes\thark_notes\tpeer_f1\thark_f1\tpeer_f1_offset\thark_f1_offset\tpeer_rtf")
    for audio in corpus():
        stem = os.path.splitext(os.path.basename(audio))[0]
        started = time.perf_counter()
        stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")  # predict() prints progress
        try:
            _, _, events = predict(audio, model)
        finally:
            sys.stdout.close()
            sys.stdout = stdout
        elapsed = time.perf_counter() - started
        import soundfile as sf

        duration = sf.info(audio).duration
        out = os.path.join(args.out_dir, stem + ".tsv")
        with open(out, "w") as f:
            f.write("onset_s\toffset_s\tmidi\tvelocity\n")
            for start, end, pitch, amplitude, _ in sorted(events, key=lambda e: (e[0], e[2])):
                f.write(f"{start:.4f}\t{end:.4f}\t{pitch}\t{int(round(127 * amplitude))}\n")
        ref = read_notes(reference_path(audio))
        peer = read_notes(out)
        row = [stem, len(ref[1]), len(peer[1])]
        hark_path = os.path.join(args.hark, stem + ".tsv") if args.hark else None
        if hark_path and os.path.exists(hark_path):
            hark = read_notes(hark_path)
            row += [len(hark[1]), f"{f1(ref, peer, False):.3f}", f"{f1(ref, hark, False):.3f}",
                    f"{f1(ref, peer, True):.3f}", f"{f1(ref, hark, True):.3f}"]
        else:
            row += ["-", f"{f1(ref, peer, False):.3f}", "-", f"{f1(ref, peer, True):.3f}", "-"]
        row.append(f"{elapsed / duration:.3f}")
        print("\t".join(map(str, row)), flush=True)


if __name__ == "__main__":
    main()
