#!/usr/bin/env python3
"""Peers for the TTS bench (benches/tts.rs): Piper's own Python package (same voice, ONNX Runtime,
one thread, its espeak-ng phonemiser) and the espeak-ng program, on the same sentences.

usage: tts_peer.py SENTENCES.tsv OUT_DIR [PIPER_ONNX]
Writes OUT_DIR/{piper,espeak}/NNN.wav and prints one JSON line per system and sentence:
{"system", "index", "seconds" (synthesis wall time), "first_audio" (s), "audio_s"}.
Piper is skipped (with a message on stderr) when its package or the voice is missing."""

import json
import os
import subprocess
import sys
import time
import wave


def sentences(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == 0 or line.startswith("#") or not line.strip():
                continue
            written, _spoken = line.rstrip("\n").split("\t")
            out.append(written)
    return out


def write_wav(path, rate, pcm16):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)


def run_piper(texts, out, onnx):
    try:
        import onnxruntime
        from piper import PiperVoice
    except ImportError as e:
        print(f"SKIP piper: {e}", file=sys.stderr)
        return
    if not os.path.isfile(onnx):
        print(f"SKIP piper: no voice at {onnx}", file=sys.stderr)
        return
    voice = PiperVoice.load(onnx)
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    voice.session = onnxruntime.InferenceSession(
        onnx, sess_options=opts, providers=["CPUExecutionProvider"]
    )
    os.makedirs(f"{out}/piper", exist_ok=True)
    list(voice.synthesize("Warm up."))
    for i, text in enumerate(texts):
        t0 = time.perf_counter()
        first = None
        chunks = []
        rate = 22050
        for c in voice.synthesize(text):
            if first is None:
                first = time.perf_counter() - t0
            chunks.append(c.audio_int16_bytes)
            rate = c.sample_rate
        secs = time.perf_counter() - t0
        pcm = b"".join(chunks)
        write_wav(f"{out}/piper/{i:03}.wav", rate, pcm)
        print(json.dumps({"system": "piper", "index": i, "seconds": secs,
                          "first_audio": first or secs, "audio_s": len(pcm) / 2 / rate}))


def run_espeak(texts, out):
    os.makedirs(f"{out}/espeak", exist_ok=True)
    for i, text in enumerate(texts):
        path = f"{out}/espeak/{i:03}.wav"
        t0 = time.perf_counter()
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", path, "--stdin"],
                       input=text.encode(), check=True)
        secs = time.perf_counter() - t0
        with wave.open(path) as w:
            audio_s = w.getnframes() / w.getframerate()
        print(json.dumps({"system": "espeak-ng", "index": i, "seconds": secs,
                          "first_audio": secs, "audio_s": audio_s}))


if __name__ == "__main__":
    tsv, out = sys.argv[1], sys.argv[2]
    onnx = sys.argv[3] if len(sys.argv) > 3 else ""
    texts = sentences(tsv)
    run_espeak(texts, out)
    run_piper(texts, out, onnx)
    sys.stdout.flush()
