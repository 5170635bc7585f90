//! Spotify's Basic Pitch (Apache-2.0), imported from the ONNX export in the `basic-pitch` 0.4.0
//! wheel (`basic_pitch/saved_models/icassp_2022/nmp.onnx`, 230 KB) into a hark model directory:
//!
//! ```text
//! <dir>/basic-pitch/
//!   model.safetensors   f32: CQT kernels, low-pass, per-bin scale, six convolutions
//!   config.json         BasicPitchConfig (CQT layout, batch-norm scalars, harmonic shifts)
//!   MODEL_CARD.md       provenance and licence
//!   hark-model.json     manifest, kind "notes"
//! ```
//!
//! The graph is recognised by its weights rather than by node names (tf2onnx mangles those):
//! the CQT kernels are the two `[36, 1, 1, 256]` convolutions (the one whose output is negated is
//! the imaginary part), the decimation filter is the `[1, 1, 1, 256]` one, and each head
//! convolution has a distinct shape. Every stride and padding the Rust port assumes is checked
//! against the graph's attributes, so a different export fails here rather than computing
//! something else.

use std::path::{Path, PathBuf};

use super::ModelError;
use super::fetch::{FetchOptions, WheelPin, obtain_wheel};
use super::onnx::{Graph, Node};
use crate::nn::basic_pitch::{BasicPitchConfig, FRAMES, HOP, SAMPLE_RATE, WINDOW, names};

/// Model kind of note transcribers in manifests.
pub const NOTES_KIND: &str = "notes";
/// Directory and catalogue name of the converted model.
pub const MODEL_NAME: &str = "basic-pitch";

/// The registry package holding the export.
pub const BASIC_PITCH_WHEEL: WheelPin = WheelPin {
    package: "basic-pitch",
    version: "0.4.0",
    file: "basic_pitch-0.4.0-py2.py3-none-any.whl",
    sha256: "738adb503aae7fdfc7d1e1511aa0ce35052315f260a19531ef4c356708425db0",
    size: 758_279,
};

/// Member of the wheel.
pub const ONNX_MEMBER: &str = "basic_pitch/saved_models/icassp_2022/nmp.onnx";

/// Max absolute difference of the port's posteriors from ONNX Runtime's on the golden window
/// (`tests/fixtures/basic_pitch_golden.py`), as measured when the port was written.
pub const GOLDEN_MAX_ERROR: &str = "2.5e-5 (onset; note 4.8e-6, contour 1.3e-5)";

fn bad(what: &str, reason: impl Into<String>) -> ModelError {
    ModelError::Onnx {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// The converted model.
pub type Converted = super::Converted<BasicPitchConfig>;

/// Reads the network out of `nmp.onnx` bytes.
pub fn convert_onnx(what: &str, onnx: &[u8]) -> Result<Converted, ModelError> {
    let graph = Graph::parse(what, onnx, |loc| {
        Err(bad(what, format!("unexpected external data {loc}")))
    })?;
    let convs: Vec<&Node> = graph.nodes.iter().filter(|n| n.op_type == "Conv").collect();
    let weight_dims = |n: &Node| {
        n.inputs
            .get(1)
            .and_then(|w| graph.tensor(w))
            .map(|t| t.dims.clone())
    };
    let negated = |output: &str| {
        graph
            .nodes
            .iter()
            .any(|n| n.op_type == "Neg" && n.inputs.iter().any(|i| i == output))
    };

    // CQT kernels: real and imaginary, told apart by the Neg on the imaginary output.
    let mut real = None;
    let mut imag = None;
    for n in &convs {
        if weight_dims(n).as_deref() != Some(&[36, 1, 1, 256][..]) {
            continue;
        }
        let slot = if negated(&n.outputs[0]) {
            &mut imag
        } else {
            &mut real
        };
        match slot {
            None => *slot = Some(n.inputs[1].clone()),
            Some(name) if *name == n.inputs[1] => {}
            Some(_) => return Err(bad(what, "more than one set of CQT kernels")),
        }
        check_bias_zero(what, &graph, n)?;
    }
    let (real, imag) = real
        .zip(imag)
        .ok_or_else(|| bad(what, "no CQT kernels ([36, 1, 1, 256] convolutions)"))?;
    let lowpass = convs
        .iter()
        .find(|n| weight_dims(n).as_deref() == Some(&[1, 1, 1, 256][..]))
        .ok_or_else(|| bad(what, "no CQT decimation filter"))?;
    if lowpass.ints_or("strides", &[1, 1]) != [1, 2] {
        return Err(bad(
            what,
            "the CQT decimation filter does not have stride 2",
        ));
    }
    check_bias_zero(what, &graph, lowpass)?;
    let octaves = convs
        .iter()
        .filter(|n| n.inputs[1] == real)
        .map(|n| n.ints_or("strides", &[1, 1]))
        .collect::<Vec<_>>();
    let expect: Vec<Vec<i64>> = (0..octaves.len())
        .map(|o| vec![1, (HOP >> o) as i64])
        .collect();
    if octaves != expect || octaves.is_empty() {
        return Err(bad(what, format!("CQT octave strides {octaves:?}")));
    }
    // The pads around each octave: reflect 128 before the kernels, zeros 127 before decimation.
    let pads: Vec<(bool, Vec<f32>)> = graph
        .nodes
        .iter()
        .filter(|n| n.op_type == "Pad" && n.outputs[0].contains("cq_t2010v2"))
        .filter_map(|n| {
            let p = graph.tensor(n.inputs.get(1)?)?;
            // `mode` is a string attribute our reader skips; reflection pads are the ones named so.
            Some((n.outputs[0].contains("reflection_pad"), p.data.clone()))
        })
        .collect();
    let pad_amount = |reflect: bool| -> Result<usize, ModelError> {
        let mut amounts: Vec<f32> = pads
            .iter()
            .filter(|(r, _)| *r == reflect)
            .flat_map(|(_, p)| p.iter().copied().filter(|&v| v != 0.0))
            .collect();
        amounts.dedup();
        match amounts[..] {
            [v] if v > 0.0 => Ok(v as usize),
            _ => Err(bad(
                what,
                format!("CQT pads {amounts:?} (reflect {reflect})"),
            )),
        }
    };
    let reflect_pad = pad_amount(true)?;
    let lowpass_pad = pad_amount(false)?;

    // Per-bin scale: the Mul by a [bins, 1, 1] constant.
    let scale = graph
        .nodes
        .iter()
        .filter(|n| n.op_type == "Mul")
        .flat_map(|n| n.inputs.iter())
        .filter_map(|i| graph.tensor(i))
        .find(|t| t.dims.len() == 3 && t.dims[1..] == [1, 1])
        .ok_or_else(|| bad(what, "no CQT bin scale"))?;
    let cqt_bins = scale.dims[0];

    // The folded batch norm: Mul then Add by scalars, on outputs named batch_normalization.
    let bn_scalar = |op: &str| -> Result<f32, ModelError> {
        graph
            .nodes
            .iter()
            .filter(|n| n.op_type == op && n.outputs[0].contains("batch_normalization"))
            .flat_map(|n| n.inputs.iter())
            .filter_map(|i| graph.tensor(i))
            .find(|t| t.data.len() == 1)
            .map(|t| t.data[0])
            .ok_or_else(|| bad(what, format!("no batch-norm {op}")))
    };
    let bn_scale = bn_scalar("Mul")?;
    let bn_shift = bn_scalar("Add")?;

    // Harmonic shifts: each Slice of the stacking starts at +shift along the bins, except the
    // sub-harmonic, which ends at -shift.
    let mut shifts = vec![0i64];
    for n in graph
        .nodes
        .iter()
        .filter(|n| n.op_type == "Slice" && n.outputs[0].contains("harmonic-stacking"))
    {
        let axis_value = |i: usize| {
            n.inputs
                .get(i)
                .and_then(|s| graph.tensor(s))
                .and_then(|t| t.data.get(2).copied())
        };
        let (start, end) = (axis_value(1).unwrap_or(0.0), axis_value(2).unwrap_or(0.0));
        if start > 0.0 {
            shifts.push(start as i64);
        } else if end < 0.0 {
            shifts.push(end as i64);
        }
    }
    shifts.sort_unstable();
    if shifts.len() != 8 {
        return Err(bad(what, format!("harmonic shifts {shifts:?}")));
    }

    let mut tensors = vec![
        tensor(what, &graph, &real, names::CQT_REAL, |d| vec![d[0], d[3]])?,
        tensor(what, &graph, &imag, names::CQT_IMAG, |d| vec![d[0], d[3]])?,
        tensor(what, &graph, &lowpass.inputs[1], names::CQT_LOWPASS, |d| {
            vec![d[3]]
        })?,
        (
            names::CQT_SCALE.to_string(),
            vec![cqt_bins],
            scale.data.clone(),
        ),
    ];
    for (name, shape, sw, (ph, pw)) in names::CONVS {
        let n = convs
            .iter()
            .find(|n| weight_dims(n).as_deref() == Some(&shape[..]))
            .ok_or_else(|| bad(what, format!("no {shape:?} convolution for {name}")))?;
        let (ph, pw) = (ph as i64, pw as i64);
        if n.ints_or("strides", &[1, 1]) != [1, sw as i64]
            || n.ints_or("pads", &[0, 0, 0, 0]) != [ph, pw, ph, pw]
            || n.ints_or("group", &[1]) != [1]
            || n.ints_or("dilations", &[1, 1]) != [1, 1]
        {
            return Err(bad(
                what,
                format!("{name}: strides/pads differ from the port's ({})", n.name),
            ));
        }
        tensors.push(tensor(
            what,
            &graph,
            &n.inputs[1],
            &format!("{name}.weight"),
            |d| d.to_vec(),
        )?);
        let bias = n
            .inputs
            .get(2)
            .and_then(|b| graph.tensor(b))
            .ok_or_else(|| bad(what, format!("{name}: no bias")))?;
        tensors.push((format!("{name}.bias"), vec![shape[0]], bias.data.clone()));
    }
    let config = BasicPitchConfig {
        sample_rate: SAMPLE_RATE,
        window: WINDOW,
        hop: HOP,
        frames: FRAMES,
        n_octaves: octaves.len(),
        bins_per_octave: 36,
        cqt_bins,
        reflect_pad,
        lowpass_pad,
        log_eps: 1e-10,
        bn_scale,
        bn_shift,
        harmonic_shifts: shifts,
    };
    // Building the network checks every shape against the config.
    crate::nn::basic_pitch::BasicPitch::from_tensors(
        config.clone(),
        Converted {
            config: config.clone(),
            tensors: tensors.clone(),
        }
        .tensor_map(),
    )
    .map_err(|e| bad(what, e))?;
    Ok(Converted { config, tensors })
}

fn tensor(
    what: &str,
    graph: &Graph,
    input: &str,
    name: &str,
    shape: impl Fn(&[usize]) -> Vec<usize>,
) -> Result<(String, Vec<usize>, Vec<f32>), ModelError> {
    let t = graph
        .tensor(input)
        .ok_or_else(|| bad(what, format!("{name}: {input} is not an initializer")))?;
    Ok((name.to_string(), shape(&t.dims), t.data.clone()))
}

/// The port has no bias on the CQT convolutions: the export's are zero.
fn check_bias_zero(what: &str, graph: &Graph, n: &Node) -> Result<(), ModelError> {
    match n.inputs.get(2).and_then(|b| graph.tensor(b)) {
        Some(b) if b.data.iter().any(|&v| v != 0.0) => Err(bad(
            what,
            format!("{}: CQT convolution with a bias", n.name),
        )),
        _ => Ok(()),
    }
}

/// Reads `nmp.onnx` from the `basic-pitch` wheel (or takes `path` as the `.onnx` itself).
pub fn read_onnx(path: &Path) -> Result<Vec<u8>, ModelError> {
    super::read_onnx_member(path, ONNX_MEMBER)
}

/// Converts `source` (the wheel, or `nmp.onnx`) into `dest_root/basic-pitch`, replacing what
/// is there. Returns the model directory.
pub fn install(source: &Path, dest_root: &Path) -> Result<PathBuf, ModelError> {
    let onnx = read_onnx(source)?;
    let what = format!("{}:{ONNX_MEMBER}", source.display());
    let converted = convert_onnx(&what, &onnx)?;
    let dest = dest_root.join(MODEL_NAME);
    super::OnnxImport {
        kind: NOTES_KIND,
        name: MODEL_NAME,
        architecture: "basic-pitch-nmp",
        pin: &BASIC_PITCH_WHEEL,
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
    let wheel = obtain_wheel(&BASIC_PITCH_WHEEL, cache, opts)?;
    install(&wheel, dest_root)
}

fn model_card(onnx: &[u8]) -> String {
    let source =
        super::onnx_card_source(&BASIC_PITCH_WHEEL, ONNX_MEMBER, onnx, "import-basic-pitch");
    format!(
        "# basic-pitch (polyphonic note transcription)\n\n\
         Spotify's Basic Pitch network (Bittner et al., \"A Lightweight Instrument-Agnostic \
         Model for Polyphonic Note Transcription and Multipitch Estimation\", ICASSP 2022): from \
         2 s windows of 22.05 kHz mono audio it predicts, per 11.6 ms frame, note and onset \
         posteriors for the 88 piano keys and a pitch contour at 1/3 semitone (264 bins). \
         hark runs it in plain Rust (`hark::nn::basic_pitch`) and decodes notes with the \
         package's `output_to_notes` algorithm (`hark::notes::poly`).\n\n\
         {source}\
         ## Licence\n\nApache-2.0 (the `basic-pitch` package and its model weights).\n\n\
         ## Accuracy of the port\n\n\
         Golden test (`cargo test --lib basic_pitch`, fixture made by \
         `tests/fixtures/basic_pitch_golden.py` with ONNX Runtime on 2 s of a Bach chorale): \
         max absolute difference of note, onset and contour posteriors {GOLDEN_MAX_ERROR}.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wheel on our machines, if present (`HARK_BASIC_PITCH_WHEEL` overrides).
    fn wheel() -> Option<PathBuf> {
        let p = PathBuf::from(
            std::env::var("HARK_BASIC_PITCH_WHEEL")
                .unwrap_or_else(|_| "/tmp/bp/basic_pitch-0.4.0-py2.py3-none-any.whl".into()),
        );
        p.exists().then_some(p)
    }

    /// The import reproduces the shipped weights bit for bit.
    #[test]
    fn basic_pitch_import_matches_the_shipped_model() {
        let Some(wheel) = wheel() else {
            eprintln!("skipping: the basic-pitch 0.4.0 wheel is not at /tmp/bp");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = install(&wheel, tmp.path()).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/basic-pitch");
        let a = std::fs::read(dir.join(super::super::WEIGHTS_FILE)).unwrap();
        let b = std::fs::read(shipped.join(super::super::WEIGHTS_FILE)).unwrap();
        assert!(a == b, "converted weights differ from models/basic-pitch");
    }
}
