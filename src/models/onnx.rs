//! Just enough of ONNX to lift weights out of a model file: the graph's nodes (op type, inputs,
//! outputs, integer attributes) and its initializers (inline, or in an external data file as
//! Qualcomm's exports store them).
//!
//! We do not run ONNX graphs: hark's models run in candle. Importers (e.g. [`super::yamnet`])
//! walk the node list to recover the architecture and take the tensors by name. The message
//! definitions mirror `onnx/onnx.proto` (field numbers from there); unknown fields are skipped by
//! prost, so newer files parse.

use std::collections::HashMap;

use prost::Message;

use super::ModelError;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(float, tag = "2")]
    f: f32,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct StringEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    int32_data: Vec<i32>,
    #[prost(int64, repeated, tag = "7")]
    int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    double_data: Vec<f64>,
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<StringEntry>,
    /// 0 = DEFAULT (inline), 1 = EXTERNAL.
    #[prost(int32, tag = "14")]
    data_location: i32,
}

// onnx.proto TensorProto.DataType values we read.
const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;
const INT64: i32 = 7;
const DOUBLE: i32 = 11;

/// A graph node with its integer attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub ints: HashMap<String, Vec<i64>>,
}

impl Node {
    /// An integer attribute (scalar or list), or `default`.
    pub fn ints_or(&self, name: &str, default: &[i64]) -> Vec<i64> {
        self.ints
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_vec())
    }
}

/// An initializer converted to f32 (integer types are widened, not dequantised).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dims: Vec<usize>,
    /// The stored type was a signed 8-bit integer (matters for a zero point: ONNX quantises to
    /// the zero point's type).
    pub signed_int8: bool,
    pub data: Vec<f32>,
}

/// A parsed ONNX graph.
#[derive(Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub tensors: HashMap<String, Tensor>,
}

fn bad(what: &str, reason: impl Into<String>) -> ModelError {
    ModelError::Onnx {
        what: what.to_string(),
        reason: reason.into(),
    }
}

impl Graph {
    /// Parses `model` (the `.onnx` bytes); `external` resolves an external-data location (the
    /// file name written next to the model) to its bytes.
    pub fn parse(
        what: &str,
        model: &[u8],
        mut external: impl FnMut(&str) -> Result<Vec<u8>, ModelError>,
    ) -> Result<Self, ModelError> {
        let m = ModelProto::decode(model).map_err(|e| bad(what, format!("not ONNX: {e}")))?;
        let g = m
            .graph
            .ok_or_else(|| bad(what, "ONNX model without a graph"))?;
        let mut files: HashMap<String, Vec<u8>> = HashMap::new();
        let mut tensors = HashMap::new();
        for t in g.initializer {
            let dims = t
                .dims
                .iter()
                .map(|&d| {
                    usize::try_from(d).map_err(|_| bad(what, format!("{}: bad dims", t.name)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let count: usize = dims.iter().product();
            let raw: Vec<u8> = if t.data_location == 1 {
                let get = |k: &str| {
                    t.external_data
                        .iter()
                        .find(|e| e.key == k)
                        .map(|e| e.value.clone())
                };
                let loc = get("location").ok_or_else(|| {
                    bad(what, format!("{}: external data without location", t.name))
                })?;
                let offset: usize = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
                if !files.contains_key(&loc) {
                    files.insert(loc.clone(), external(&loc)?);
                }
                let file = &files[&loc];
                let len: usize = get("length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(file.len().saturating_sub(offset));
                file.get(offset..offset + len)
                    .ok_or_else(|| bad(what, format!("{}: external data out of range", t.name)))?
                    .to_vec()
            } else {
                t.raw_data
            };
            let data: Vec<f32> = match t.data_type {
                FLOAT if !raw.is_empty() => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                FLOAT => t.float_data,
                UINT8 if !raw.is_empty() => raw.iter().map(|&b| f32::from(b)).collect(),
                INT8 if !raw.is_empty() => raw.iter().map(|&b| f32::from(b as i8)).collect(),
                UINT8 | INT8 | INT32 if raw.is_empty() => {
                    t.int32_data.iter().map(|&v| v as f32).collect()
                }
                INT32 => raw
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                    .collect(),
                // Shapes and indices (e.g. a Reshape target): small integers, exact in f32.
                INT64 if raw.is_empty() => t.int64_data.iter().map(|&v| v as f32).collect(),
                INT64 => raw
                    .chunks_exact(8)
                    .map(|b| {
                        i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                    })
                    .collect(),
                // Narrowed: hark runs in f32 (SwiftF0 keeps its bin centres in f64).
                DOUBLE if raw.is_empty() => t.double_data.iter().map(|&v| v as f32).collect(),
                DOUBLE => raw
                    .chunks_exact(8)
                    .map(|b| {
                        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                    })
                    .collect(),
                other => {
                    return Err(bad(
                        what,
                        format!("{}: unsupported tensor type {other}", t.name),
                    ));
                }
            };
            if data.len() != count {
                return Err(bad(
                    what,
                    format!("{}: {} values for shape {dims:?}", t.name, data.len()),
                ));
            }
            let signed_int8 = t.data_type == INT8;
            tensors.insert(
                t.name,
                Tensor {
                    dims,
                    signed_int8,
                    data,
                },
            );
        }
        let nodes = g
            .node
            .into_iter()
            .map(|n| Node {
                ints: n
                    .attribute
                    .iter()
                    .map(|a| {
                        let v = if a.ints.is_empty() {
                            vec![a.i]
                        } else {
                            a.ints.clone()
                        };
                        (a.name.clone(), v)
                    })
                    .collect(),
                name: n.name,
                op_type: n.op_type,
                inputs: n.input,
                outputs: n.output,
            })
            .collect();
        Ok(Self { nodes, tensors })
    }

    /// The node that produces `output`.
    pub fn producer(&self, output: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.outputs.iter().any(|o| o == output))
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Resolves a node input to a constant weight: an initializer, or a
    /// `DequantizeLinear(QuantizeLinear(w))` chain over one (QDQ fake quantisation), which is
    /// applied here — per tensor or per output channel (axis 0) — so the result is exactly the
    /// value the quantised graph computes with.
    pub fn weight(&self, what: &str, input: &str) -> Result<Tensor, ModelError> {
        if let Some(t) = self.tensor(input) {
            return Ok(t.clone());
        }
        let dq = self
            .producer(input)
            .filter(|n| n.op_type == "DequantizeLinear")
            .ok_or_else(|| {
                bad(
                    what,
                    format!("{input} is neither a constant nor dequantised"),
                )
            })?;
        let (scale, zp) = self.qparams(what, dq)?;
        let src = &dq.inputs[0];
        if let Some(q) = self.tensor(src) {
            // Stored already quantised (int8/uint8 values).
            return Ok(dequantise(q, &scale, &zp, |v, _, _| v));
        }
        let q = self
            .producer(src)
            .filter(|n| n.op_type == "QuantizeLinear")
            .ok_or_else(|| bad(what, format!("{src}: expected QuantizeLinear")))?;
        let w = self
            .tensor(&q.inputs[0])
            .ok_or_else(|| bad(what, format!("{}: not an initializer", q.inputs[0])))?;
        let (qs, qz) = self.qparams(what, q)?;
        // Signed int8 unless the zero point says uint8 (ONNX takes the type from the zero point).
        let signed = q
            .inputs
            .get(2)
            .and_then(|z| self.tensor(z))
            .is_none_or(|z| z.signed_int8);
        let (lo, hi) = if signed {
            (-128.0, 127.0)
        } else {
            (0.0, 255.0)
        };
        Ok(dequantise(w, &scale, &zp, |v, c, _| {
            let s = qs[c.min(qs.len() - 1)];
            let z = qz[c.min(qz.len() - 1)];
            ((v / s).round_ties_even() + z).clamp(lo, hi)
        }))
    }

    fn qparams(&self, what: &str, n: &Node) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let scale = n
            .inputs
            .get(1)
            .and_then(|s| self.tensor(s))
            .ok_or_else(|| bad(what, format!("{}: scale is not a constant", n.name)))?
            .data
            .clone();
        let zp = match n.inputs.get(2).filter(|z| !z.is_empty()) {
            Some(z) => self
                .tensor(z)
                .ok_or_else(|| bad(what, format!("{}: zero point is not a constant", n.name)))?
                .data
                .clone(),
            None => vec![0.0],
        };
        if scale.is_empty() || zp.is_empty() {
            return Err(bad(
                what,
                format!("{}: empty quantisation parameters", n.name),
            ));
        }
        Ok((scale, zp))
    }
}

/// `(quantise(v) - zp) * scale` per element, with per-channel parameters along axis 0.
fn dequantise(
    t: &Tensor,
    scale: &[f32],
    zp: &[f32],
    quantise: impl Fn(f32, usize, usize) -> f32,
) -> Tensor {
    let per = t.data.len() / t.dims.first().copied().unwrap_or(1).max(1);
    let data = t
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = if scale.len() > 1 { i / per.max(1) } else { 0 };
            let s = scale[c.min(scale.len() - 1)];
            let z = zp[c.min(zp.len() - 1)];
            (quantise(v, c, i) - z) * s
        })
        .collect();
    Tensor {
        dims: t.dims.clone(),
        signed_int8: false,
        data,
    }
}
