#!/usr/bin/env python3
"""SwiftF0's pitch posterior over audio hark transcribes, as a prior for hark's pitch tracker.

hark's mono tracker is pYIN: its F0 candidates are YIN troughs, and a room or noise blurs them
(the 2nd harmonic taken for the fundamental, a trough filled in). A learned F0 network hears
those cases better (benches/notes_frames.py). This writes the network's posterior so that
`hark-train eval notes --f0-prior` can reweight pYIN's candidates by it and measure what a
learned front end would buy before one is ported:

    hark-train eval notes --audio DIR --notes DIR/notes [--room FILE] [--noise ...] --save-audio WAV
    python3 benches/notes_f0_prior.py WAV PRIOR
    hark-train eval notes --audio WAV --notes DIR/notes --f0-prior PRIOR

(the second run reads the saved audio, so --room and --noise are not given again).
`--lookahead N` gives each frame only the audio up to N samples past its centre, as a live
stream would have it (512: what pYIN has when it analyses a frame). Each
`PRIOR/<stem>.f0prior.safetensors` holds `probs` (frames x 95 pitch bins, a softmax of the
network's pitch logits, 16 ms frames), `hop_s`, `fmin` and `fmax`.

The network is SwiftF0 (`pip install swift-f0==0.3.0 onnxruntime`; MIT): its ONNX graph returns a
pitch and a confidence, and the logits they come from are read here as an extra output. Needs
numpy, soundfile, onnx and onnxruntime.
"""
import json
import struct
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import soundfile as sf

HOP = 256
HOP_S = HOP / 16000
FMIN, FMAX = 46.875, 2093.75


def session():
    import onnx
    import onnxruntime as ort
    import swift_f0

    version = metadata.version("swift-f0")
    if version != "0.3.0":
        sys.exit(f"swift-f0 {version}: this reads 0.3.0's graph (pip install swift-f0==0.3.0)")
    model = onnx.load(str(Path(swift_f0.__file__).parent / "model.onnx"))
    # The voicing path takes the arg-max of the pitch logits over bins: its input is the logits.
    logits = next(n.input[0] for n in model.graph.node
                  if n.op_type == "ArgMax"
                  and any(a.name == "keepdims" and a.i == 0 for a in n.attribute))
    model.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT,
                                                                 None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"]), logits


def write_safetensors(path, tensors):
    """The safetensors layout: an 8-byte header length, a JSON header, the raw tensors."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype="<f4")
        blobs.append(arr.tobytes())
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blobs[-1])]}
        offset += len(blobs[-1])
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def logits_of(sess, name, x):
    (z,) = sess.run([name], {"audio": x[None, :], "fmin": np.asarray(FMIN, dtype=np.float32),
                             "fmax": np.asarray(FMAX, dtype=np.float32)})
    return z[0]


def live_logits(sess, name, x, lookahead):
    """Frame k as a live stream has it: from audio up to `lookahead` samples past its centre
    (one network run per frame over its receptive field: slow, for measuring only)."""
    left = 11 * HOP + 1024
    rows = []
    for k in range(max(1, len(x) // HOP)):
        end = min(len(x), k * HOP + lookahead)
        start = max(0, (k * HOP - left) // HOP * HOP)
        z = logits_of(sess, name, x[start:end])
        rows.append(z[min(k - start // HOP, len(z) - 1)])
    return np.array(rows)


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wavs", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--lookahead", type=int,
                    help="samples of audio past each frame's centre the network may hear, as "
                         "live (default: the whole file)")
    a = ap.parse_args()
    wavs, out = a.wavs, a.out
    out.mkdir(parents=True, exist_ok=True)
    sess, logits_name = session()
    files = sorted(wavs.glob("*.wav"))
    if not files:
        sys.exit(f"no .wav in {wavs}: write them with hark-train eval notes --save-audio {wavs}")
    for w in files:
        x, sr = sf.read(str(w), dtype="float32", always_2d=True)
        if sr != 16000:
            sys.exit(f"{w}: {sr} Hz; --save-audio writes 16 kHz")
        x = x.mean(axis=1)
        z = (logits_of(sess, logits_name, x) if a.lookahead is None
             else live_logits(sess, logits_name, x, a.lookahead)).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        write_safetensors(out / f"{w.stem}.f0prior.safetensors",
                          {"probs": p, "hop_s": np.array([HOP_S]), "fmin": np.array([FMIN]),
                           "fmax": np.array([FMAX])})
    print(f"{len(files)} priors in {out}")


if __name__ == "__main__":
    main()
