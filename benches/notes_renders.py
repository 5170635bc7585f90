#!/usr/bin/env python3
"""Render monophonic melodies with exact note lists: training and development data for hark's
monophonic note-onset model.

    python3 benches/notes_renders.py [--out /work/data/notes] [--splits train,dev,dev_seen]
                                     [--only-first N] [--force] [--check] [--relabel]

Same recipe as ../shared/data/music/synth (see its manifest_synth.tsv): a music21 corpus melody
-> MIDI (pretty_midi) -> fluidsynth + /usr/share/sounds/sf2/FluidR3_GM.sf2 with reverb and chorus
OFF (`-R 0 -C 0`), 44.1 kHz -> sox -> 16 kHz mono 16-bit FLAC, at most ~30 s. Each render is
bounded with `timeout`. Per file:

    SPLIT/NAME.flac
    SPLIT/notes/NAME.tsv   onset_s offset_s midi_pitch velocity gm_program (header line; offsets
                           are MIDI note-offs, the audible release is longer; midi_pitch is the
                           sounding pitch, see below)
    SPLIT/midi/NAME.mid    the exact MIDI that was rendered
    SPLIT/manifest.tsv     file, tune, program, tempo, n_notes, then the other render parameters

Splits (tunes are disjoint between splits, see "Tune selection"):
    train     600 files, TRAIN-pool instruments only
    dev       ~60 files, HELD-OUT instruments only
    dev_seen  ~40 files, TRAIN-pool instruments (separates "new tune" from "new instrument")
    test      ~50 files, any melodic instrument; rendered only when asked (--splits test). No
              choice (model, threshold, rule) is made on it: it is scored once a change is done

Variation so that a model generalises:
  * tunes from four corpus families: Essen folk songs (abc), J.S. Bach chorales (soprano, alto,
    tenor or bass part), fiddle/folk tunes (Ryan's Mammoth, O'Neill's 1850, Aird's Airs, misc
    folk, Nottingham), Renaissance/Trecento single voices (Palestrina, Monteverdi, Trecento,
    Josquin);
  * tempo 60-160 beats/min (beat = quarter note; half or whole note when the part's median note
    is that long), on a third of the files a slow sinusoidal rubato of up to +-8 %;
  * transposition by a random number of semitones into the instrument's comfortable range;
  * velocity: a per-file base 55-110, each note humanised by +-15;
  * articulation per note drawn from per-file proportions: legato (note-off = next note-on),
    normal (85-97 % of the written length) or detached (35-75 %, audible gaps);
  * repeated same-pitch notes stay separate notes (only tied notes are merged);
  * onset timing jitter on half of the files (sd 5, 10 or 20 ms);
  * long rests are shortened to 0.3-1.5 s, notes longer than 4 s to 2-4 s; a lead-in of
    0.15-1.0 s of silence; the output is peak-normalised to -1..-12 dBFS (sox -R: repeatable
    dither, so a re-run is bit-identical).
Labels are the pitch that sounds, which is the MIDI key except where the soundfont's patch sounds
an octave or two below it: FluidR3's drawbar organ (16) has its strongest partials at a quarter
and a half of the key's frequency, so its waveform repeats two octaves down and a pitch
tracker (like an ear) puts it there; its percussive and rock organs (17, 18) one octave down
(their registrations hold a 16' stop: partials at 1/2, 1, 3/2, 2 and 3 times the key's
frequency, a harmonic series on the sub-octave). `sounding_shift` measures this per
program by rendering a probe note (the MIDI files keep the keys that were played), and
`--relabel` rewrites the TSVs of splits rendered before it existed. The ranges below are
sounding ranges, so those patches are played that much higher.
Monophonic only: chords keep their top note, notes starting together keep the highest, and a
note is cut at the next onset so no two notes overlap.

Evaluation tunes are EXCLUDED entirely (they are the ../shared evaluation set): Essen files
altdeu10, ballad10, erk10, han1, boehme10, fink0, dva0 (every tune in them); Bach bwv66.6,
bwv1.6, bwv101.7, bwv10.7; Joplin's Maple Leaf Rag (never used). Because the same melody occurs
in several corpus files (a chorale tune harmonised in several BWVs, folk-song variants), a
candidate is rejected too when it matches any single evaluation melody: they share >= 4
distinct 8-interval n-grams (repeated notes collapsed, transposition invariant) and these are
>= 20 % of the smaller melody's n-grams. The same test against the melodies already chosen for
the other splits keeps the splits apart (for a chorale both the soprano, which is the hymn
tune, and the chosen part are compared).

Instruments: melodic GM programs 0-111 without 47 timpani, 55 orchestra hit, 96-103 synth
effects and 109 bagpipe (drone); 112-127 (percussion and sound effects) are never used.
HELD-OUT pool = 73 flute, 52 choir aahs, 40 violin, 53 voice oohs, 71 clarinet, 68 oboe,
56 trumpet, 0 acoustic grand piano, 54 synth voice, 65 alto sax, plus 5 drawn with
random.Random(73) from the remaining melodic programs, which gives
    16 drawbar organ, 36 slap bass 1, 72 piccolo, 76 blown bottle, 84 lead 5 (charang)
(asserted below). TRAIN pool = every other melodic program (86 programs).

Tune selection (reproducible): all candidate tunes are listed from the installed music21 corpus
in sorted order and shuffled per family with --seed; splits are filled in the order dev,
dev_seen, train, test (added last, so it left the others' tunes as they were), each file drawing its family from the split's family quota and popping
candidates from that family's queue until one gives >= 8 notes and passes the duplicate test.
A tune unit (an abc tune, a chorale, a Renaissance piece) is used at most once overall. The
selection always runs for every split (--splits/--only-first only limit what is rendered), so
a partial render selects exactly the same tunes. Every random choice for file i of split S
comes from random.Random(f"{seed}:{S}:{i}").

Needs: Debian fluidsynth, fluid-soundfont-gm, sox; Python music21 (10.5.1 used), pretty_midi,
soundfile, numpy.
"""
import argparse
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")  # music21 warns about many abc/krn details we do not need

import pretty_midi  # noqa: E402
import soundfile as sf  # noqa: E402
from music21 import converter, corpus, harmony, stream  # noqa: E402

SF2 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
MAX_SEC = 30.0           # truncate renders at ~30 s (notes must end by then)
MIN_NOTES = 8            # a render needs at least this many notes
SR_OUT = 16000
TICKS_PER_SEC = 1920     # pretty_midi resolution 960 at 120 bpm: every time is a whole tick
HEADER = "onset_s\toffset_s\tmidi_pitch\tvelocity\tgm_program\n"

# ---------------------------------------------------------------------------------------------
# Instruments
# ---------------------------------------------------------------------------------------------
NOT_MELODIC = {47, 55, 109} | set(range(96, 104)) | set(range(112, 128))
MELODIC = [p for p in range(128) if p not in NOT_MELODIC]
FIXED_HELDOUT = [73, 52, 40, 53, 71, 68, 56, 0, 54, 65]
HELDOUT_SEED = 73
EXTRA_HELDOUT = sorted(random.Random(HELDOUT_SEED).sample(
    [p for p in MELODIC if p not in FIXED_HELDOUT], 5))
assert EXTRA_HELDOUT == [16, 36, 72, 76, 84], EXTRA_HELDOUT  # keep the docstring honest
HELDOUT = FIXED_HELDOUT + EXTRA_HELDOUT
TRAIN_POOL = [p for p in MELODIC if p not in HELDOUT]


def _ranges():
    """Comfortable sounding range (MIDI lo, hi) of each melodic GM program."""
    r = {}

    def put(progs, lo, hi):
        for p in progs:
            r[p] = (lo, hi)

    put(range(0, 6), 48, 84)            # pianos, electric pianos
    put([6], 41, 84)                    # harpsichord
    put([7], 48, 84)                    # clavinet
    put([8], 60, 96)                    # celesta
    put([9], 79, 105)                   # glockenspiel
    put([10], 60, 96)                   # music box
    put([11], 53, 89)                   # vibraphone
    put([12], 48, 96)                   # marimba
    put([13], 65, 100)                  # xylophone
    put([14], 60, 77)                   # tubular bells
    put([15], 55, 88)                   # dulcimer
    put(range(16, 21), 43, 84)          # organs
    put([21, 23], 53, 89)               # accordions
    put([22], 60, 86)                   # harmonica
    put(range(24, 31), 40, 79)          # guitars (sounding pitch)
    put([31], 52, 84)                   # guitar harmonics
    put(range(32, 38), 28, 55)          # basses
    put([38, 39], 28, 60)               # synth basses
    put([40], 55, 93)                   # violin
    put([41], 48, 81)                   # viola
    put([42], 36, 69)                   # cello
    put([43], 28, 55)                   # contrabass
    put([44, 48, 49, 50, 51], 43, 84)   # string ensembles
    put([45], 40, 81)                   # pizzicato strings
    put([46], 36, 91)                   # harp
    put([52, 53], 50, 79)               # choir aahs, voice oohs
    put([54], 48, 79)                   # synth voice
    put([56, 59], 55, 82)               # trumpets
    put([57], 40, 70)                   # trombone
    put([58], 29, 58)                   # tuba
    put([60], 41, 77)                   # french horn
    put([61], 45, 80)                   # brass section
    put([62, 63], 43, 84)               # synth brass
    put([64], 56, 87)                   # soprano sax
    put([65], 49, 80)                   # alto sax
    put([66], 44, 75)                   # tenor sax
    put([67], 36, 67)                   # baritone sax
    put([68], 58, 89)                   # oboe
    put([69], 52, 81)                   # english horn
    put([70], 34, 70)                   # bassoon
    put([71], 50, 89)                   # clarinet
    put([72], 74, 100)                  # piccolo
    put([73], 60, 93)                   # flute
    put([74, 75], 60, 91)               # recorder, pan flute
    put([76], 60, 84)                   # blown bottle
    put([77], 55, 84)                   # shakuhachi
    put([78], 67, 96)                   # whistle
    put([79], 60, 86)                   # ocarina
    put(range(80, 87), 48, 84)          # synth leads
    put([87], 36, 72)                   # lead 8 (bass + lead)
    put(range(88, 96), 48, 84)          # pads
    put([104, 105], 48, 81)             # sitar, banjo
    put([106], 50, 81)                  # shamisen
    put([107], 55, 88)                  # koto
    put([108], 60, 89)                  # kalimba
    put([110], 55, 93)                  # fiddle
    put([111], 60, 89)                  # shanai
    return r


RANGES = _ranges()
assert set(RANGES) == set(MELODIC), sorted(set(MELODIC) ^ set(RANGES))


def program_slug(p):
    s = pretty_midi.program_to_instrument_name(p).lower()
    return re.sub(r"[^a-z0-9]+", "_", s).strip("_")


# ---------------------------------------------------------------------------------------------
# Tunes
# ---------------------------------------------------------------------------------------------
EVAL_ESSEN = ["altdeu10", "ballad10", "erk10", "han1", "boehme10", "fink0", "dva0"]
EVAL_BACH = ["bwv66.6", "bwv1.6", "bwv101.7", "bwv10.7"]
# music21's own test files and the variant collection duplicate other Essen tunes: not used.
ESSEN_SKIP = set(EVAL_ESSEN) | {"test0", "test1", "testd", "teste", "variant0"}
FAMILY_SHARE = {"essen": 0.35, "bach": 0.25, "fiddle": 0.25, "renaissance": 0.15}
FIDDLE_DIRS = ["ryansMammoth", "oneills1850", "airdsAirs", "miscFolk", "nottingham-dataset"]
RENAISSANCE_DIRS = {"palestrina": ".krn", "monteverdi": ".mxl", "trecento": ".xml",
                    "josquin": None}
BACH_PARTS = ["soprano", "alto", "tenor", "bass"]
BACH_PART_WEIGHTS = [0.4, 0.2, 0.2, 0.2]


def corpus_files():
    """{top-level corpus folder: sorted list of Paths} for the installed music21 corpus."""
    out = {}
    for p in corpus.getCorePaths():
        parts = Path(p).parts
        top = parts[parts.index("corpus") + 1]
        out.setdefault(top, []).append(Path(p))
    return {k: sorted(v) for k, v in out.items()}


def abc_numbers(path):
    """Reference numbers (X:) of the tunes in an abc file, in file order, without duplicates."""
    text = Path(path).read_text(encoding="latin-1")
    seen, out = set(), []
    for x in re.findall(r"^X:\s*(\d+)", text, re.M):
        if x not in seen:
            seen.add(x)
            out.append(int(x))
    return out


def catalog():
    """Candidate tune units per family: dicts with family, tune (id), path, number."""
    files = corpus_files()
    cat = {f: [] for f in FAMILY_SHARE}
    for p in files["essenFolksong"]:
        if p.suffix == ".abc" and p.stem not in ESSEN_SKIP:
            for x in abc_numbers(p):
                cat["essen"].append(dict(family="essen", tune=f"essenFolksong/{p.stem}#{x}",
                                         path=p, number=x))
    for p in files["bach"]:
        base = p.stem.split("-")[0]
        if p.suffix == ".mxl" and re.fullmatch(r"bwv\d+(\.\d+)?", base) and base not in EVAL_BACH:
            cat["bach"].append(dict(family="bach", tune=f"bach/{p.stem}", path=p, number=None))
    for d in FIDDLE_DIRS:
        for p in files.get(d, []):
            if p.suffix == ".abc":
                for x in abc_numbers(p):
                    cat["fiddle"].append(dict(family="fiddle", tune=f"{d}/{p.stem}#{x}",
                                              path=p, number=x))
    for d, ext in RENAISSANCE_DIRS.items():
        for p in files.get(d, []):
            if p.suffix in (".mxl", ".xml", ".krn", ".musicxml") and (ext is None or p.suffix == ext):
                cat["renaissance"].append(dict(family="renaissance", tune=f"{d}/{p.stem}",
                                               path=p, number=None))
    return cat


def parse_unit(unit):
    s = converter.parse(unit["path"], number=unit["number"]) if unit["number"] is not None \
        else converter.parse(unit["path"])
    if isinstance(s, stream.Opus):
        s = s.scores[0]
    return s


def part_notes(part):
    """Monophonic [on_ql, off_ql, midi] list of a music21 part: ties merged, grace notes and
    chord symbols dropped, chords -> top note, simultaneous onsets -> highest, no overlaps."""
    flat = part.stripTies().flatten()
    raw = []
    for el in flat.notes:
        if isinstance(el, harmony.Harmony) or el.duration.isGrace or el.quarterLength <= 0:
            continue
        pitch = max(p.midi for p in el.pitches) if el.isChord else el.pitch.midi
        on = float(el.offset)
        raw.append([on, on + float(el.quarterLength), int(pitch)])
    raw.sort()
    notes = []
    for on, off, p in raw:
        if notes and abs(notes[-1][0] - on) < 1e-6:
            if p > notes[-1][2]:
                notes[-1] = [on, off, p]
            continue
        notes.append([on, off, p])
    for a, b in zip(notes, notes[1:]):
        a[1] = min(a[1], b[0])
    return [n for n in notes if n[1] > n[0]]


def bar_length(part):
    ts = part.recurse().getElementsByClass("TimeSignature").first()
    return float(ts.barDuration.quarterLength) if ts is not None else 4.0


def grams(pitches, n=8):
    """Transposition-invariant n-grams of pitch intervals, repeated notes collapsed."""
    col = [p for i, p in enumerate(pitches) if i == 0 or p != pitches[i - 1]]
    iv = tuple(b - a for a, b in zip(col, col[1:]))
    return {iv[i:i + n] for i in range(len(iv) - n + 1)}


class MelodyIndex:
    """Near-duplicate test for melodies given as n-gram sets (see the module docstring)."""

    def __init__(self):
        self.sets, self.owner, self.index = [], [], {}

    def add(self, g, owner):
        k = len(self.sets)
        self.sets.append(g)
        self.owner.append(owner)
        for x in g:
            self.index.setdefault(x, []).append(k)

    def matches(self, g, exclude_owner=None):
        count = {}
        for x in g:
            for k in self.index.get(x, ()):
                count[k] = count.get(k, 0) + 1
        return any(c >= 4 and c >= 0.2 * min(len(g), len(self.sets[k])) and
                   self.owner[k] != exclude_owner for k, c in count.items())


def eval_melodies(index):
    """Adds every melody (all parts) of the excluded evaluation tunes to index, owner 'eval'."""
    files = corpus_files()
    for name in EVAL_ESSEN:
        p = next(q for q in files["essenFolksong"] if q.stem == name)
        s = parse_unit(dict(path=p, number=abc_numbers(p)[0]))
        for part in s.parts:
            index.add(grams([n[2] for n in part_notes(part)]), "eval")
    for name in EVAL_BACH + ["joplin/maple_leaf_rag"]:
        s = corpus.parse(name if "/" in name else f"bach/{name}")
        for part in s.parts:
            index.add(grams([n[2] for n in part_notes(part)]), "eval")


def extract(unit, rng):
    """Parse a tune unit and pick its melody: (notes_ql, part_label, bar_ql, [n-gram sets to
    compare]) or None."""
    try:
        s = parse_unit(unit)
    except Exception:
        return None
    parts = list(s.parts) if len(s.parts) else [s]
    if unit["family"] == "bach":
        if len(parts) != 4:
            return None  # not a four-part chorale (instrumental extras, missing parts)
        i = rng.choices(range(4), BACH_PART_WEIGHTS)[0]
        label = BACH_PARTS[i]
        # a chorale is one tune: dedup on the hymn melody (soprano) as well as the chosen part
        extra = [grams([n[2] for n in part_notes(parts[0])])]
    elif unit["family"] == "renaissance":
        i = rng.randrange(len(parts))
        label = f"part{i}"
        extra = []
    else:
        i, label, extra = 0, "melody", []
    notes = part_notes(parts[i])
    if len(notes) < MIN_NOTES:
        return None
    return notes, label, bar_length(parts[i]), [grams([n[2] for n in notes])] + extra


# ---------------------------------------------------------------------------------------------
# Performance: notated quarter lengths -> timed, humanised, monophonic MIDI notes
# ---------------------------------------------------------------------------------------------
def tick(t):
    return round(t * TICKS_PER_SEC) / TICKS_PER_SEC


def perform(notes_ql, bar_ql, program, rng):
    """Returns (notes [(on_s, off_s, pitch, vel)], params dict) or (None, None)."""
    p = {}
    # tempo: the beat is a quarter note, or a half/whole note when the part moves in long
    # values (Renaissance parts written in breves and semibreves)
    med = float(np.median([b - a for a, b, _ in notes_ql]))
    beat_ql = float(min(4.0, max(1.0, 2.0 ** round(math.log2(med)))))
    bpm = rng.uniform(60, 160)
    p["tempo"], p["beat_ql"] = round(bpm, 1), beat_ql
    q_bpm = bpm / beat_ql
    # optional slow rubato: tempo factor 1 + a*sin(2*pi*q/period + phase)
    a = rng.uniform(0.02, 0.08) if rng.random() < 1 / 3 else 0.0
    period, phase = rng.uniform(8, 32), rng.uniform(0, 2 * math.pi)
    p["rubato"] = round(a, 3)
    qmax = notes_ql[-1][1] + 1
    grid = np.arange(0, qmax + 1 / 48, 1 / 48)
    sec_per_q = 60.0 / (q_bpm * (1 + a * np.sin(2 * math.pi * grid / period + phase)))
    tgrid = np.concatenate([[0.0], np.cumsum(sec_per_q[:-1] / 48)])

    def t_of(q):
        return float(np.interp(q, grid, tgrid))

    ons = [t_of(n[0]) for n in notes_ql]
    ends = [t_of(n[1]) for n in notes_ql]
    # shorten long rests and very long notes, shifting everything after them
    shift = 0.0
    for i in range(len(ons)):
        ons[i] += shift
        ends[i] += shift
        if ends[i] - ons[i] > 4.0:
            new = rng.uniform(2.0, 4.0)
            shift += new - (ends[i] - ons[i])
            ends[i] = ons[i] + new
        if i + 1 < len(ons):
            gap = t_of(notes_ql[i + 1][0]) + shift - ends[i]
            if gap > 2.0:
                shift += rng.uniform(0.3, 1.5) - gap
    # start: long pieces start at the beginning or at a random downbeat in the early part
    start = 0
    if ons[-1] - ons[0] > MAX_SEC + 5 and rng.random() < 0.6:
        last_ok = max(i for i in range(len(ons)) if ons[-1] - ons[i] > MAX_SEC)
        cands = [i for i in range(last_ok + 1) if abs(math.remainder(notes_ql[i][0], bar_ql)) < 1e-6]
        start = rng.choice(cands or list(range(last_ok + 1)))
    lead = rng.uniform(0.15, 1.0)
    off0 = ons[start] - lead
    ons = [t - off0 for t in ons[start:]]
    ends = [t - off0 for t in ends[start:]]
    pitches = [n[2] for n in notes_ql[start:]]
    contiguous = [i + 1 < len(ons) and ons[i + 1] - ends[i] < 0.02 for i in range(len(ons))]
    # onset jitter (the end of a note contiguous with the next moves with the next onset)
    sd = rng.choice([0.0, 0.0, 0.0, 0.005, 0.01, 0.02])
    p["jitter_ms"] = int(sd * 1000)
    jit = [0.0] + [max(-2.5 * sd, min(2.5 * sd, rng.gauss(0, sd))) if sd else 0.0
                   for _ in ons[1:]]
    ons = [t + j for t, j in zip(ons, jit)]
    ends = [e + (jit[i + 1] if contiguous[i] else jit[i]) for i, e in enumerate(ends)]
    for i in range(1, len(ons)):  # keep onsets ordered, >= 35 ms apart
        ons[i] = max(ons[i], ons[i - 1] + 0.035)
    # transposition into the instrument's comfortable (sounding) range
    lo, hi = (x - sounding_shift(program) for x in RANGES[program])
    pmin, pmax = min(pitches), max(pitches)
    if hi - lo >= pmax - pmin:
        tr = rng.randint(lo - pmin, hi - pmax)
    else:
        tr = round((lo + hi) / 2 - (pmin + pmax) / 2)
    p["transpose"] = tr
    # articulation proportions for this file, then per note
    w = [rng.gammavariate(1, 1) for _ in range(3)]
    w = [x / sum(w) for x in w]
    p["articulation"] = "legato={:.2f},normal={:.2f},detached={:.2f}".format(*w)
    base_vel = rng.randint(55, 110)
    p["base_velocity"] = base_vel
    out = []
    for i, (on, end, pitch) in enumerate(zip(ons, ends, pitches)):
        nxt = ons[i + 1] if i + 1 < len(ons) else None
        written = max(end - on, 0.04)
        kind = rng.choices(["legato", "normal", "detached"], w)[0]
        if kind == "legato":
            off = nxt if (nxt is not None and contiguous[i]) else on + written
        elif kind == "normal":
            off = on + written * rng.uniform(0.85, 0.97)
        else:
            off = on + written * rng.uniform(0.35, 0.75)
        on, off = tick(on), tick(max(off, on + 0.03))
        if nxt is not None:
            off = min(off, tick(nxt))
        vel = max(25, min(127, base_vel + rng.randint(-15, 15)))
        out.append((on, off, pitch + tr, vel))
    out = [n for n in out if n[1] <= MAX_SEC and n[1] > n[0]]
    if len(out) < MIN_NOTES:
        return None, None
    return out, p


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def write_midi(notes, program, length, path):
    m = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    inst = pretty_midi.Instrument(program=program)
    for on, off, pitch, vel in notes:
        inst.notes.append(pretty_midi.Note(velocity=vel, pitch=pitch, start=on, end=off))
    # a harmless controller at the end keeps the MIDI (and fluidsynth) running through the release
    inst.control_changes.append(pretty_midi.ControlChange(number=110, value=0, time=length))
    m.instruments.append(inst)
    m.write(str(path))


def render(mid, flac, length, peak_db, tmpdir):
    wav = Path(tmpdir) / "render.wav"
    subprocess.run(["timeout", "120", "fluidsynth", "-ni", "-q", "-R", "0", "-C", "0",
                    "-r", "44100", "-g", "0.6", "-T", "wav", "-O", "float", "-F", str(wav),
                    SF2, str(mid)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["sox", "-V1", "-R", str(wav), "-b", "16", str(flac), "remix", "-",
                    "rate", "-v", str(SR_OUT), "pad", "0", "3", "trim", "0", f"{length:.4f}",
                    "gain", "-n", f"{-peak_db:.1f}"], check=True)
    wav.unlink()


_SHIFTS = {}


def sounding_shift(program):
    """Semitones from the MIDI key to the pitch the FluidR3 patch sounds: -12 * k for the
    largest k in 1..2 whose sub-octave (key frequency / 2**k) is the base of the tone's
    harmonic series, else 0. It is when that partial is within 6 dB of the probe note's
    strongest, or within 10 dB with its own 3rd harmonic (3/2**k times the key's frequency, a
    partial the key's series lacks) also within 10 dB: then the waveform repeats at the
    sub-octave. Only the organs have such partials (levels at 1/4, 1/2, 1, 3/2 of the key's
    frequency, dB): drawbar organ (16) -1, 0, -5, -15; percussive organ (17) -73, 0, -8, -9;
    rock organ (18) -80, -8, 0, -9 (middle C; -2 and -9 dB an octave higher). An earlier
    version looked at the sub-octave alone, took the rock organ's for a single partial 8 dB
    under the key and labelled its key; pYIN hears it an octave down, as organists hear a 16'
    stop (SwiftF0 put it two octaves up). Other programs: the
    sub-octave 18 dB down or less. The probe is the middle of the program's range, 0.6 s of
    it after a 0.3 s attack."""
    if program in _SHIFTS:
        return _SHIFTS[program]
    key = sum(RANGES[program]) // 2
    m = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    inst = pretty_midi.Instrument(program=program)
    inst.notes.append(pretty_midi.Note(velocity=100, pitch=key, start=0.0, end=1.0))
    m.instruments.append(inst)
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "probe.mid", Path(tmp) / "probe.wav"
        m.write(str(mid))
        subprocess.run(["timeout", "60", "fluidsynth", "-ni", "-q", "-R", "0", "-C", "0",
                        "-r", "44100", "-T", "wav", "-F", str(wav), SF2, str(mid)],
                       check=True, stdout=subprocess.DEVNULL)
        x, sr = sf.read(str(wav))
    x = x.mean(axis=1) if x.ndim > 1 else x
    seg = x[int(0.3 * sr): int(0.9 * sr)]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 1 << 17))
    freqs = np.fft.rfftfreq(1 << 17, 1 / sr)
    spec /= spec.max() + 1e-12
    f0 = 440.0 * 2 ** ((key - 69) / 12)

    def level_db(hz):  # strongest bin within a quarter tone of hz
        band = (freqs > hz * 2 ** (-1 / 24)) & (freqs < hz * 2 ** (1 / 24))
        return 20 * math.log10(float(spec[band].max()) + 1e-12)

    shift = 0
    for k in (1, 2):
        sub = level_db(f0 / 2 ** k)
        if sub > -6.0 or (sub > -10.0 and level_db(3 * f0 / 2 ** k) > -10.0):
            shift = -12 * k
    _SHIFTS[program] = shift
    return shift


def write_tsv(notes, program, path):
    shift = sounding_shift(program)
    with open(path, "w") as f:
        f.write(HEADER)
        for on, off, pitch, vel in notes:
            f.write(f"{on:.4f}\t{off:.4f}\t{pitch + shift}\t{vel}\t{program}\n")


def midi_notes(path):
    """(start, end, key, velocity) of every note of a rendered MIDI file, in order."""
    return sorted((n.start, n.end, n.pitch, n.velocity)
                  for n in pretty_midi.PrettyMIDI(str(path)).instruments[0].notes)


def read_manifest(d):
    """A split's manifest.tsv as one dict per file."""
    rows = [l.rstrip("\n").split("\t") for l in open(d / "manifest.tsv")]
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def relabel_split(d):
    """Rewrites a rendered split's TSVs from its MIDI files with the sounding pitch."""
    recs = read_manifest(d)
    changed = 0
    for rec in recs:
        name, program = rec["file"][:-5], int(rec["program"])
        write_tsv(midi_notes(d / "midi" / f"{name}.mid"), program, d / "notes" / f"{name}.tsv")
        changed += sounding_shift(program) != 0
    print(f"{d.name}: {len(recs)} files relabelled, {changed} with a shifted pitch")


def slug(s, n=40):
    return re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-")[:n].strip("-")


# ---------------------------------------------------------------------------------------------
# Check
# ---------------------------------------------------------------------------------------------
def check_split(d):
    """Verify every file of a split: TSV format, monophony, MIDI == TSV, audio non-silent,
    silence before the first onset, energy at onsets. Prints a summary; returns #problems."""
    recs = read_manifest(d)
    problems, n_notes, secs = 0, 0, 0.0
    for rec in recs:
        name = rec["file"][:-5]
        lines = open(d / "notes" / f"{name}.tsv").read().splitlines()
        assert lines[0] + "\n" == HEADER
        notes = [tuple(float(x) for x in l.split("\t")) for l in lines[1:]]
        bad = []
        if len(notes) != int(rec["n_notes"]):
            bad.append("n_notes")
        if any(b[0] < a[1] - 1e-9 or b[0] <= a[0] for a, b in zip(notes, notes[1:])):
            bad.append("overlap")
        mid = [(round(a, 4), round(b, 4), k, v) for a, b, k, v in midi_notes(d / "midi" / f"{name}.mid")]
        shift = sounding_shift(int(rec["program"]))
        if len(mid) != len(notes) or any(abs(a[0] - b[0]) > 2e-4 or abs(a[1] - b[1]) > 2e-4
                                         or a[2] + shift != b[2] or a[3] != b[3]
                                         for a, b in zip(mid, notes)):
            bad.append("midi!=tsv")
        x, sr = sf.read(str(d / rec["file"]))
        secs += len(x) / sr
        rms = 20 * math.log10(math.sqrt(float(np.mean(x ** 2))) + 1e-12)
        if sr != SR_OUT or x.ndim != 1 or rms < -50:
            bad.append(f"audio(sr={sr},rms={rms:.1f})")
        pre = x[: max(0, int((notes[0][0] - 0.01) * sr))]
        if len(pre) and np.max(np.abs(pre)) > 1e-3:
            bad.append("sound-before-first-onset")
        # each note should bring energy within 100 ms of its onset (> -60 dBFS)
        quiet = 0
        for on, *_ in notes:
            seg = x[int(on * sr): int((on + 0.1) * sr)]
            if len(seg) == 0 or 20 * math.log10(math.sqrt(float(np.mean(seg ** 2))) + 1e-12) < -60:
                quiet += 1
        if quiet > len(notes) * 0.1:
            bad.append(f"{quiet}-quiet-onsets")
        n_notes += len(notes)
        if bad:
            problems += 1
            print(f"  {name}: {' '.join(bad)}")
    print(f"{d.name}: {len(recs)} files, {n_notes} notes, {secs / 60:.1f} min, "
          f"{problems} with problems")
    return problems


# ---------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/work/data/notes", type=Path)
    ap.add_argument("--seed", type=int, default=20240501)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-dev", type=int, default=60)
    ap.add_argument("--n-dev-seen", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=50)
    ap.add_argument("--splits", default="train,dev,dev_seen", help="splits to render")
    ap.add_argument("--only-first", type=int, default=None, help="render only the first N files of each split")
    ap.add_argument("--force", action="store_true", help="re-render files that exist")
    ap.add_argument("--check", action="store_true", help="only check the rendered splits")
    ap.add_argument("--relabel", action="store_true",
                    help="only rewrite the rendered splits' TSVs from their MIDI (sounding pitch)")
    args = ap.parse_args()
    render_splits = set(args.splits.split(","))
    # Checking and relabelling render probe notes too (`sounding_shift`).
    for tool in ("fluidsynth", "sox", "timeout"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install fluidsynth fluid-soundfont-gm sox)")
    if not os.path.exists(SF2):
        sys.exit(f"{SF2} not found (apt-get install fluid-soundfont-gm)")
    if args.relabel:
        for s in sorted(render_splits):
            relabel_split(args.out / s)
        return
    if args.check:
        sys.exit(1 if sum(check_split(args.out / s) for s in sorted(render_splits)) else 0)

    print(f"held-out programs: {HELDOUT}", file=sys.stderr)
    print(f"train pool ({len(TRAIN_POOL)}): {TRAIN_POOL}", file=sys.stderr)
    cat = catalog()
    queues = {}
    for fam in FAMILY_SHARE:
        q = list(cat[fam])
        random.Random(f"{args.seed}:catalog:{fam}").shuffle(q)
        queues[fam] = q
        print(f"{fam}: {len(q)} candidate tunes", file=sys.stderr)
    melodies = MelodyIndex()  # evaluation melodies, then those chosen for each split
    eval_melodies(melodies)

    plan = [("dev", args.n_dev, HELDOUT, "d"), ("dev_seen", args.n_dev_seen, TRAIN_POOL, "s"),
            ("train", args.n_train, TRAIN_POOL, "t"), ("test", args.n_test, MELODIC, "x")]
    with tempfile.TemporaryDirectory() as tmp:
        for split, n, pool, prefix in plan:
            srng = random.Random(f"{args.seed}:{split}")
            # family quota and a balanced instrument cycle for this split
            fams = []
            for fam, share in FAMILY_SHARE.items():
                fams += [fam] * round(n * share)
            fams = (fams + ["essen"] * n)[:n]
            srng.shuffle(fams)
            progs = []
            while len(progs) < n:
                cyc = list(pool)
                srng.shuffle(cyc)
                progs += cyc
            d = args.out / split
            rendering = split in render_splits
            if rendering:
                for sub in ("notes", "midi"):
                    (d / sub).mkdir(parents=True, exist_ok=True)
            manifest = []
            for i in range(n):
                rng = random.Random(f"{args.seed}:{split}:{i}")
                fam, program = fams[i], progs[i]
                while True:
                    if not queues[fam]:
                        sys.exit(f"ran out of {fam} tunes")
                    unit = queues[fam].pop()
                    got = extract(unit, rng)
                    if got is None:
                        continue
                    notes_ql, part, bar_ql, g = got
                    if any(melodies.matches(x, exclude_owner=split) for x in g):
                        continue  # same melody as an evaluation tune or another split's tune
                    notes, prm = perform(notes_ql, bar_ql, program, rng)
                    if notes is None:
                        continue
                    break
                for x in g:
                    melodies.add(x, split)
                peak_db = rng.uniform(1, 12)
                length = tick(notes[-1][1] + rng.uniform(0.8, 1.5))
                name = f"{prefix}{i:04d}_{fam}_{slug(unit['tune'].split('/', 1)[1].replace('#', '-x'))}"
                name += f"_{part}_{program:03d}_{program_slug(program)}"
                manifest.append([f"{name}.flac", unit["tune"], program, prm["tempo"], len(notes),
                                 program_slug(program), fam, part, prm["beat_ql"], prm["transpose"],
                                 f"{length:.3f}", prm["articulation"], prm["jitter_ms"], prm["rubato"],
                                 prm["base_velocity"], f"{-peak_db:.1f}"])
                if not rendering or (args.only_first is not None and i >= args.only_first):
                    continue
                flac = d / f"{name}.flac"
                if flac.exists() and not args.force:
                    continue
                mid = d / "midi" / f"{name}.mid"
                write_midi(notes, program, length, mid)
                # the TSV comes from the MIDI as written, so labels == what was rendered
                back = midi_notes(mid)
                assert len(back) == len(notes) and all(abs(a[0] - b[0]) < 1e-3 and a[2] == b[2]
                                                       for a, b in zip(back, notes))
                write_tsv(back, program, d / "notes" / f"{name}.tsv")
                render(mid, flac, length, peak_db, tmp)
                print(f"{split} {i + 1}/{n} {name}", file=sys.stderr)
            if rendering:
                with open(d / "manifest.tsv", "w") as f:
                    f.write("file\ttune\tprogram\ttempo\tn_notes\tprogram_name\tfamily\tpart\t"
                            "beat_ql\ttranspose\tduration_s\tarticulation\tjitter_ms\trubato\t"
                            "base_velocity\tpeak_dbfs\n")
                    upto = n if args.only_first is None else min(n, args.only_first)
                    for row in manifest[:upto]:
                        f.write("\t".join(str(x) for x in row) + "\n")


if __name__ == "__main__":
    main()
