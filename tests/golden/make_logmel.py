#!/usr/bin/env python3
"""Golden vectors for `hark::dsp` (Whisper's log-mel front end).

Reference = openai-whisper `whisper/audio.py::log_mel_spectrogram`, re-implemented in numpy float64:

    window = torch.hann_window(N_FFT)                      # periodic Hann
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
                                                           # center=True, pad_mode='reflect'
    magnitudes = stft[..., :-1].abs() ** 2                 # drop the last frame
    mel_spec = filters @ magnitudes                        # librosa.filters.mel(sr=16000, n_fft=400, n_mels=N)
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    log_spec = (log_spec + 4.0) / 4.0

Input samples are what whisper's `load_audio` yields: int16 PCM / 32768 as float32.

Outputs (all little-endian float32, raw, no header) under tests/golden/:
  <input>.f32        input samples
  <case>.logmel.f32  expected log-mel, row-major [n_mels][n_frames]
  mel_filters_80.f32 librosa.filters.mel(sr=16000, n_fft=400, n_mels=80), [80][201]
  logmel_cases.json  index of the cases

Usage: python3 tests/golden/make_logmel.py [--speech-dir /work/shared/data/speech]
Needs: numpy, librosa, soundfile (pip install numpy librosa soundfile).
"""

import argparse
import json
import os
import sys

import librosa
import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
HERE = os.path.dirname(os.path.abspath(__file__))


def load_audio(path: str) -> np.ndarray:
    """Like whisper.load_audio for a 16 kHz mono 16-bit file: int16 / 32768 as float32."""
    pcm, sr = sf.read(path, dtype="int16", always_2d=True)
    if sr != SAMPLE_RATE or pcm.shape[1] != 1:
        sys.exit(f"{path}: expected 16 kHz mono, got {sr} Hz x {pcm.shape[1]}")
    return pcm[:, 0].astype(np.float32) / 32768.0


def hann_periodic(n: int) -> np.ndarray:
    """torch.hann_window(n) (periodic=True), in float64."""
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * k / n)


def pad_signal(x: np.ndarray, pad: int) -> np.ndarray:
    """Centre padding as torch.stft(center=True, pad_mode='reflect') does.

    torch refuses reflect padding when len(x) <= pad; hark's documented behaviour for such short
    input is to zero-extend the signal to pad + 1 samples first, then reflect. For len(x) > pad this
    is exactly numpy/torch 'reflect' (edge sample not repeated).
    """
    if len(x) <= pad:
        x = np.concatenate([x, np.zeros(pad + 1 - len(x), dtype=x.dtype)])
    return np.pad(x, (pad, pad), mode="reflect")


def log_mel(audio: np.ndarray, filters: np.ndarray) -> np.ndarray:
    x = pad_signal(audio.astype(np.float64), N_FFT // 2)
    n_frames_all = 1 + (len(x) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames_all)[:, None]
    frames = x[idx] * hann_periodic(N_FFT)[None, :]
    stft = np.fft.rfft(frames, n=N_FFT, axis=1).T  # [n_bins][n_frames_all]
    n_frames = len(audio) // HOP  # == n_frames_all - 1 whenever len(audio) > N_FFT // 2
    magnitudes = np.abs(stft[:, :n_frames]) ** 2
    mel_spec = filters.astype(np.float64) @ magnitudes
    log_spec = np.log10(np.maximum(mel_spec, 1e-10))
    if log_spec.size:
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    log_spec = (log_spec + 4.0) / 4.0
    return log_spec


def mel_filters(n_mels: int) -> np.ndarray:
    # Exactly what whisper's assets/mel_filters.npz holds (float32).
    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels)


# (case name, input name, source file in the speech dir, offset in seconds, length in samples, n_mels)
CASES = [
    ("jfk_80", "jfk_4s", "misc/jfk.flac", 0.0, 4 * SAMPLE_RATE, 80),
    ("jfk_128", "jfk_4s", "misc/jfk.flac", 0.0, 4 * SAMPLE_RATE, 128),
    ("lj001_0001_80", "lj001_0001_4s", "ljspeech/LJ001-0001.flac", 1.0, 4 * SAMPLE_RATE, 80),
    # length not a multiple of HOP, to check the frame count and right-edge reflection
    ("lj001_0002_odd_80", "lj001_0002_odd", "ljspeech/LJ001-0002.flac", 0.5, 3333, 80),
    # shorter than N_FFT // 2 + 1: the zero-extend-then-reflect rule (no torch equivalent)
    ("lj001_0002_short_80", "lj001_0002_short", "ljspeech/LJ001-0002.flac", 0.8, 190, 80),
]


def write_f32(path: str, a: np.ndarray) -> None:
    np.ascontiguousarray(a, dtype="<f4").tofile(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speech-dir", default="/work/shared/data/speech")
    ap.add_argument("--out-dir", default=HERE)
    args = ap.parse_args()

    filters = {n: mel_filters(n) for n in sorted({c[5] for c in CASES})}
    write_f32(os.path.join(args.out_dir, "mel_filters_80.f32"), filters[80])

    index = []
    written_inputs = {}
    for name, input_name, src, offset_s, length, n_mels in CASES:
        audio = load_audio(os.path.join(args.speech_dir, src))
        start = int(round(offset_s * SAMPLE_RATE))
        clip = audio[start : start + length]
        assert len(clip) == length, (name, len(clip))
        input_file = f"{input_name}.f32"
        if input_file in written_inputs:
            assert np.array_equal(written_inputs[input_file], clip), input_file
        else:
            write_f32(os.path.join(args.out_dir, input_file), clip)
            written_inputs[input_file] = clip
        lm = log_mel(clip, filters[n_mels])
        assert lm.shape == (n_mels, length // HOP), lm.shape
        expected_file = f"{name}.logmel.f32"
        write_f32(os.path.join(args.out_dir, expected_file), lm)
        index.append(
            {
                "name": name,
                "input": input_file,
                "expected": expected_file,
                "n_samples": length,
                "n_mels": n_mels,
                "n_frames": int(lm.shape[1]),
                "source": src,
                "offset_samples": start,
            }
        )
        print(f"{name}: {length} samples -> [{n_mels}][{lm.shape[1]}], range {lm.min():.4f}..{lm.max():.4f}")

    meta = {
        "reference": "openai-whisper audio.py log_mel_spectrogram, numpy float64",
        "sample_rate": SAMPLE_RATE,
        "n_fft": N_FFT,
        "hop": HOP,
        "mel_filters_80": "mel_filters_80.f32",
        "versions": {"numpy": np.__version__, "librosa": librosa.__version__},
        "cases": index,
    }
    with open(os.path.join(args.out_dir, "logmel_cases.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
