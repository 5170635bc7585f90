#!/usr/bin/env python3
"""Why reference notes were missed: sorts every unmatched reference note of a note-transcription
run into a cause, per instrument (or per file stem when the stem names no GM program).

    hark-train eval notes --audio DIR --notes DIR/notes --save-estimates EST
    python3 benches/notes_misses.py DIR/notes EST

A reference note counts as found when an estimate starts within 50 ms of it on the same MIDI
pitch (mir_eval's onset criterion with the pitch rounded). The others are, in this order:

    octave    an estimate starts within 50 ms, a whole number of octaves off
    pitch     an estimate starts within 50 ms on another pitch
    late      an estimate on the same pitch (+-1) starts 50-200 ms after it (slow attacks)
    early     ... 50-200 ms before it
    repeat    the same pitch as the previous reference note, which ended < 60 ms before it, and
              an estimate spans its onset (a legato repeat merged into one note)
    covered   an estimate of another note spans its onset (the previous note held too long)
    short     shorter than 120 ms (the tracker's shortest note without onsets at both ends)
    none      nothing near it (unvoiced, or below the tracker's range)

Reads the TSVs `benches/notes_renders.py` writes (onset_s, offset_s, midi_pitch, ...; a header
line), as `--save-estimates` does. Standard library only.
"""
import collections
import re
import sys
from pathlib import Path

TOL = 0.05
CAUSES = ["octave", "pitch", "late", "early", "repeat", "covered", "short", "none"]


def read_notes(path):
    notes = []
    for line in path.read_text().splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) >= 3 and cols[0]:
            notes.append((float(cols[0]), float(cols[1]), round(float(cols[2]))))
    return notes


def cause(i, ref, est):
    on, off, midi = ref[i]
    near = [e for e in est if abs(e[0] - on) <= TOL]
    if near:
        d = min((e[2] - midi for e in near), key=abs)
        return "octave" if d % 12 == 0 else "pitch"
    same = [e[0] - on for e in est if abs(e[2] - midi) <= 1 and TOL < abs(e[0] - on) <= 0.2]
    if same:
        return "late" if min(same, key=abs) > 0 else "early"
    spanning = any(e[0] < on - TOL and e[1] > on for e in est)
    prev = ref[i - 1] if i > 0 else None
    if spanning and prev and prev[2] == midi and on - prev[1] < 0.06:
        return "repeat"
    if spanning:
        return "covered"
    return "short" if off - on < 0.12 else "none"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ref_dir, est_dir = Path(sys.argv[1]), Path(sys.argv[2])
    table = collections.defaultdict(collections.Counter)
    totals = collections.Counter()
    for est_path in sorted(est_dir.glob("*.tsv")):
        ref_path = ref_dir / est_path.name
        if not ref_path.exists():
            continue
        group = re.sub(r"^.*_\d{3}_", "", est_path.stem)  # renders end in _PROGRAM_name
        ref, est = read_notes(ref_path), read_notes(est_path)
        totals[group] += len(ref)
        for i, (on, _, midi) in enumerate(ref):
            if not any(abs(e[0] - on) <= TOL and e[2] == midi for e in est):
                table[group][cause(i, ref, est)] += 1
    if not totals:
        sys.exit(f"no estimate in {est_dir} has a reference of the same name in {ref_dir}")
    print("| group | notes | missed | " + " | ".join(CAUSES) + " |")
    print("|---" * (len(CAUSES) + 3) + "|")
    rows = sorted(totals, key=lambda g: -sum(table[g].values()))
    for g in rows + ["all"]:
        counts = sum(table.values(), collections.Counter()) if g == "all" else table[g]
        n = sum(totals.values()) if g == "all" else totals[g]
        cells = " | ".join(str(counts[c]) for c in CAUSES)
        print(f"| {g} | {n} | {sum(counts.values())} | {cells} |")


if __name__ == "__main__":
    main()
