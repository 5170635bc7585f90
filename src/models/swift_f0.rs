//! SwiftF0 (MIT), imported from the ONNX graph in the `swift-f0` 0.3.0 wheel
//! (`swift_f0/model.onnx`, 150 KB) into a hark model directory:
//!
//! ```text
//! <dir>/swift-f0/
//!   model.safetensors   f32: three sparse spectrogram projections, fifteen convolutions
//!   config.json         SwiftF0Config (hop, FFT sizes, pitch range)
//!   MODEL_CARD.md       provenance and licence
//!   hark-model.json     manifest, kind "notes"
//! ```
//!
//! The graph is recognised by structure, not node names: the trunk is the 2-D convolutions
//! before the one reading the frequency `Slice`, the pitch head is that one and the `[1, 4, 1,
//! 1]` convolution after it (the voicing head is left out). Each spectrogram is traced back
//! from the `Concat` that stacks them to its `ScatterElements` projection, and its FFT size read
//! from the projection's row count. Every kernel, dilation and padding the port assumes is
//! checked against the graph, and the graph's windows against the periodic Hann window, so a
//! different export fails here rather than computing something else.

use std::path::{Path, PathBuf};

use super::ModelError;
use super::fetch::{FetchOptions, WheelPin, obtain_wheel};
use super::onnx::{Graph, Node};
use crate::nn::swift_f0::{
    FEATURE_BINS, HOP, PITCH_BINS, SAMPLE_RATE, SwiftF0, SwiftF0Config, hann, names,
};

/// Directory and catalogue name of the converted model.
pub const MODEL_NAME: &str = "swift-f0";

/// The registry package holding the graph.
pub const SWIFT_F0_WHEEL: WheelPin = WheelPin {
    package: "swift-f0",
    version: "0.3.0",
    file: "swift_f0-0.3.0-py3-none-any.whl",
    sha256: "d7240c7c94b1d3e8f0e0cd2701b79be89a0f23a19cd5f944895a6518ecad72f3",
    size: 116_429,
};

/// Member of the wheel.
pub const ONNX_MEMBER: &str = "swift_f0/model.onnx";

/// Max absolute difference of the port's logits from ONNX Runtime's on the golden clip
/// (`tests/fixtures/swift_f0_golden.py`), as measured when the port was written.
pub const GOLDEN_MAX_ERROR: &str = "3.9e-4 on logits between -21 and -2";

fn bad(what: &str, reason: impl Into<String>) -> ModelError {
    ModelError::Onnx {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// The converted model.
pub type Converted = super::Converted<SwiftF0Config>;

/// The initializer feeding input `i` of `n`.
fn init<'g>(
    what: &str,
    graph: &'g Graph,
    n: &Node,
    i: usize,
) -> Result<&'g super::onnx::Tensor, ModelError> {
    n.inputs
        .get(i)
        .and_then(|name| graph.tensor(name))
        .ok_or_else(|| {
            bad(
                what,
                format!(
                    "{} ({}): input {i} is not an initializer",
                    n.name, n.op_type
                ),
            )
        })
}

/// Follows first inputs back from `output` to the nearest node of type `op`.
fn back_to<'g>(graph: &'g Graph, output: &str, op: &str) -> Option<&'g Node> {
    let mut cur = graph.producer(output)?;
    for _ in 0..16 {
        if cur.op_type == op {
            return Some(cur);
        }
        cur = graph.producer(cur.inputs.first()?)?;
    }
    None
}

/// Reads the network out of `model.onnx` bytes.
pub fn convert_onnx(what: &str, onnx: &[u8]) -> Result<Converted, ModelError> {
    let graph = Graph::parse(what, onnx, |loc| {
        Err(bad(what, format!("unexpected external data {loc}")))
    })?;
    let dims = |n: &Node| init(what, &graph, n, 1).map(|t| t.dims.clone());

    // Spectrograms: the Concat of three [1, 1, 128, T] maps, each traced to its projection.
    let concat = graph
        .nodes
        .iter()
        .find(|n| {
            n.op_type == "Concat"
                && n.inputs.len() == 3
                && n.inputs.iter().all(|i| back_to(&graph, i, "Log").is_some())
        })
        .ok_or_else(|| bad(what, "no Concat of three log spectrograms"))?;
    let mut fft_sizes = Vec::new();
    let mut tensors = Vec::new();
    let mut log_eps = None;
    for input in &concat.inputs {
        let log = back_to(&graph, input, "Log").expect("checked above");
        let add = graph
            .producer(&log.inputs[0])
            .filter(|n| n.op_type == "Add")
            .ok_or_else(|| bad(what, "log spectrogram without an epsilon Add"))?;
        let eps = init(what, &graph, add, 1)?.data[0];
        if log_eps.is_some_and(|e| e != eps) {
            return Err(bad(what, "spectrograms with different log epsilons"));
        }
        log_eps = Some(eps);
        let matmul = graph
            .producer(&add.inputs[0])
            .filter(|n| n.op_type == "MatMul")
            .ok_or_else(|| bad(what, "spectrogram projection is not a MatMul"))?;
        let reshape = graph
            .producer(&matmul.inputs[1])
            .filter(|n| n.op_type == "Reshape")
            .ok_or_else(|| bad(what, "projection matrix is not a Reshape"))?;
        let shape = init(what, &graph, reshape, 1)?.data.clone();
        let scatter = graph
            .producer(&reshape.inputs[0])
            .filter(|n| n.op_type == "ScatterElements")
            .ok_or_else(|| bad(what, "projection matrix is not scattered"))?;
        let (rows, cols) = match shape[..] {
            [r, c] if c as usize == FEATURE_BINS && r >= 2.0 => (r as usize, c as usize),
            _ => return Err(bad(what, format!("projection shape {shape:?}"))),
        };
        let n = 2 * (rows - 1);
        let index = init(what, &graph, scatter, 1)?.data.clone();
        let value = init(what, &graph, scatter, 2)?.data.clone();
        if index.len() != value.len() || index.iter().any(|&i| i < 0.0 || i as usize >= rows * cols)
        {
            return Err(bad(what, format!("projection {n}: indices out of range")));
        }
        // The frame window: the 1-D Mul of this FFT size (one per spectrogram).
        let window = graph
            .nodes
            .iter()
            .filter(|m| m.op_type == "Mul")
            .filter_map(|m| graph.tensor(m.inputs.get(1)?))
            .find(|t| t.dims == [n])
            .ok_or_else(|| bad(what, format!("no window of {n} samples")))?;
        let err = window
            .data
            .iter()
            .zip(hann(n))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        if err > 1e-6 {
            return Err(bad(
                what,
                format!("window {n} is not a periodic Hann ({err})"),
            ));
        }
        let (iname, vname) = names::projection(n);
        tensors.push((iname, vec![index.len()], index));
        tensors.push((vname, vec![value.len()], value));
        fft_sizes.push(n);
    }

    // Pitch bins: the centres the range mask compares with fmin.
    let centres = graph
        .nodes
        .iter()
        .find(|n| n.op_type == "GreaterOrEqual")
        .ok_or_else(|| bad(what, "no pitch range mask"))
        .and_then(|n| init(what, &graph, n, 0))?;
    if centres.dims != [PITCH_BINS] {
        return Err(bad(
            what,
            format!("{:?} pitch bins, expected {PITCH_BINS}", centres.dims),
        ));
    }

    // The trunk, then the pitch head that reads the frequency slice.
    let convs: Vec<&Node> = graph
        .nodes
        .iter()
        .filter(|n| n.op_type == "Conv" && dims(n).is_ok_and(|d| d.len() == 4))
        .collect();
    let head_at = convs
        .iter()
        .position(|n| {
            graph
                .producer(&n.inputs[0])
                .is_some_and(|p| p.op_type == "Slice")
        })
        .ok_or_else(|| bad(what, "no convolution reads the frequency slice"))?;
    let slice = graph
        .producer(&convs[head_at].inputs[0])
        .expect("found above");
    let head_bins = init(what, &graph, slice, 2)?.data[0] as usize;
    let out = convs[head_at + 1..]
        .iter()
        .find(|n| dims(n).is_ok_and(|d| d == [1, 4, 1, 1]))
        .ok_or_else(|| bad(what, "no [1, 4, 1, 1] pitch-logit convolution"))?;
    let mut chosen: Vec<&Node> = convs[..head_at].to_vec();
    chosen.push(convs[head_at]);
    chosen.push(out);
    if chosen.len() != names::CONVS.len() {
        return Err(bad(
            what,
            format!(
                "{} convolutions, expected {}",
                chosen.len(),
                names::CONVS.len()
            ),
        ));
    }
    for (n, (name, [cout, cin, kt, kf], dw, ph, pw)) in chosen.iter().zip(names::CONVS) {
        let w = init(what, &graph, n, 1)?;
        let b = init(what, &graph, n, 2)?;
        let want_pads = [pw.0 as i64, ph as i64, pw.1 as i64, ph as i64];
        if w.dims != [cout, cin, kf, kt]
            || n.ints_or("dilations", &[1, 1]) != [dw as i64, 1]
            || n.ints_or("strides", &[1, 1]) != [1, 1]
            || n.ints_or("group", &[1]) != [1]
            || n.ints_or("pads", &[0, 0, 0, 0]) != want_pads
        {
            return Err(bad(
                what,
                format!(
                    "{name} ({}): weight {:?}, dilations {:?}, pads {:?}; the port expects \
                     [{cout}, {cin}, {kf}, {kt}], [{dw}, 1], {want_pads:?}",
                    n.name,
                    w.dims,
                    n.ints_or("dilations", &[1, 1]),
                    n.ints_or("pads", &[0, 0, 0, 0])
                ),
            ));
        }
        // [cout][cin][freq][time] -> [cout][cin][time][freq].
        let mut t = vec![0f32; w.data.len()];
        for o in 0..cout * cin {
            for f in 0..kf {
                for k in 0..kt {
                    t[(o * kt + k) * kf + f] = w.data[(o * kf + f) * kt + k];
                }
            }
        }
        tensors.push((format!("{name}.weight"), vec![cout, cin, kt, kf], t));
        tensors.push((format!("{name}.bias"), vec![cout], b.data.clone()));
    }

    let config = SwiftF0Config {
        sample_rate: SAMPLE_RATE,
        hop: HOP,
        fft_sizes,
        feature_bins: FEATURE_BINS,
        log_eps: log_eps.expect("three spectrograms"),
        fmin: centres.data[0],
        fmax: centres.data[PITCH_BINS - 1],
        pitch_bins: PITCH_BINS,
        head_bins,
    };
    let converted = Converted { config, tensors };
    // Refuse here what the runtime would refuse.
    SwiftF0::from_tensors(converted.config.clone(), converted.tensor_map())
        .map_err(|e| bad(what, e))?;
    Ok(converted)
}

/// Reads `model.onnx` from the `swift-f0` wheel (or takes `path` as the `.onnx` itself).
pub fn read_onnx(path: &Path) -> Result<Vec<u8>, ModelError> {
    super::read_onnx_member(path, ONNX_MEMBER)
}

/// Converts `source` (the wheel, or `model.onnx`) into `dest_root/swift-f0`, replacing what is
/// there. Returns the model directory.
pub fn install(source: &Path, dest_root: &Path) -> Result<PathBuf, ModelError> {
    let onnx = read_onnx(source)?;
    let what = format!("{}:{ONNX_MEMBER}", source.display());
    let converted = convert_onnx(&what, &onnx)?;
    let dest = dest_root.join(MODEL_NAME);
    super::OnnxImport {
        kind: super::basic_pitch::NOTES_KIND,
        name: MODEL_NAME,
        architecture: "swift-f0",
        pin: &SWIFT_F0_WHEEL,
        member: ONNX_MEMBER,
        onnx: &onnx,
        tensors: &converted.tensors,
        config: &converted.config,
        card: &model_card(&onnx),
    }
    .write(&dest)?;
    Ok(dest)
}

/// Downloads (or reuses) the pinned wheel in `cache`, then [`install`]s from it.
pub fn obtain_and_install(
    cache: &Path,
    opts: &FetchOptions,
    dest_root: &Path,
) -> Result<PathBuf, ModelError> {
    let wheel = obtain_wheel(&SWIFT_F0_WHEEL, cache, opts)?;
    install(&wheel, dest_root)
}

fn model_card(onnx: &[u8]) -> String {
    let source = super::onnx_card_source(&SWIFT_F0_WHEEL, ONNX_MEMBER, onnx, "import-swift-f0");
    format!(
        "# swift-f0 (monophonic pitch posterior)\n\n\
         SwiftF0 (Lars Nieradzik, \"SwiftF0: Fast and Accurate Monophonic Pitch Detection\", \
         2025): a 30 k-parameter CNN over three STFT magnitudes of 16 kHz audio that scores 95 \
         log-spaced pitches from 46.9 to 2093.8 Hz every 16 ms. hark runs its pitch head in \
         plain Rust (`hark::nn::swift_f0`) and uses the softmax of its logits as the prior its \
         pYIN tracker reweights F0 candidates by (`hark::notes::pitch::PitchPrior`); the \
         network's own voicing head is not used.\n\n\
         {source}\
         ## Licence\n\nMIT (the `swift-f0` package and its model weights), \
         Copyright (c) 2025-2026 Lars Nieradzik.\n\n\
         ## Accuracy of the port\n\n\
         Golden test (`cargo test --lib swift_f0`, fixture made by \
         `tests/fixtures/swift_f0_golden.py` with ONNX Runtime on a rendered voice and a real \
         flute): max absolute \
         difference of the pitch logits {GOLDEN_MAX_ERROR}.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wheel on our machines, if present (`HARK_SWIFT_F0_WHEEL` overrides).
    fn wheel() -> Option<PathBuf> {
        let p = PathBuf::from(
            std::env::var("HARK_SWIFT_F0_WHEEL")
                .unwrap_or_else(|_| "/tmp/swf/swift_f0-0.3.0-py3-none-any.whl".into()),
        );
        p.exists().then_some(p)
    }

    /// The import reproduces the shipped weights bit for bit.
    #[test]
    fn swift_f0_import_matches_the_shipped_model() {
        let Some(wheel) = wheel() else {
            eprintln!("skipping: the swift-f0 0.3.0 wheel is not at /tmp/swf");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = install(&wheel, tmp.path()).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/swift-f0");
        let a = std::fs::read(dir.join(super::super::WEIGHTS_FILE)).unwrap();
        let b = std::fs::read(shipped.join(super::super::WEIGHTS_FILE)).unwrap();
        assert!(a == b, "converted weights differ from models/swift-f0");
    }
}
