//! Neural grapheme-to-phoneme conversion for words a pronouncing dictionary lacks: a port of
//! `g2p-en` 2.1.0's GRU seq2seq (`G2p.predict` in `g2p_en/g2p.py`, weights
//! `g2p_en/checkpoint20.npz`, Apache-2.0).
//!
//! ```text
//! "kubernetes" -> lowercase, keep a..z -> [k u b e r n e t e s </s>]
//!   encoder GRU over grapheme embeddings, h0 = 0 ──> h (last state)
//!   decoder GRU from <s>, greedy argmax, fed back ──> K AH0 B ER1 N AH0 T S  (stop at </s>, <= 20)
//! ```
//!
//! The model is tiny (hidden 256, 29 graphemes, 74 phonemes) and runs one word at a time, so it
//! is plain `f32` arithmetic on `Vec`s rather than candle tensors: a step is one 768×256
//! matrix-vector product, and candle's per-op dispatch would cost more than the arithmetic.
//! candle is used only to read the `.npz`. The input-side products depend only on the token, so
//! they are tabulated at load time for every grapheme and phoneme.
//!
//! Arithmetic is f32 like the numpy original; sums run in a different order, so a logit tie that
//! is decided in the last bit may rarely flip (the golden test allows 1%).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::NnError;

/// Grapheme vocabulary, in checkpoint order (`G2p.graphemes`).
const GRAPHEMES: usize = 3 + 26;
/// Index of `</s>` among the graphemes: appended to every word before encoding.
const G_END: usize = 2;
/// Index of `a` among the graphemes; `a..=z` follow in order.
const G_FIRST_LETTER: usize = 3;

/// Phoneme vocabulary, in checkpoint order (`G2p.phonemes`).
const PHONEMES: [&str; 74] = [
    "<pad>", "<unk>", "<s>", "</s>", "AA0", "AA1", "AA2", "AE0", "AE1", "AE2", "AH0", "AH1", "AH2",
    "AO0", "AO1", "AO2", "AW0", "AW1", "AW2", "AY0", "AY1", "AY2", "B", "CH", "D", "DH", "EH0",
    "EH1", "EH2", "ER0", "ER1", "ER2", "EY0", "EY1", "EY2", "F", "G", "HH", "IH0", "IH1", "IH2",
    "IY0", "IY1", "IY2", "JH", "K", "L", "M", "N", "NG", "OW0", "OW1", "OW2", "OY0", "OY1", "OY2",
    "P", "R", "S", "SH", "T", "TH", "UH0", "UH1", "UH2", "UW", "UW0", "UW1", "UW2", "V", "W", "Y",
    "Z", "ZH",
];
/// `<s>`: the decoder's first input.
const P_START: usize = 2;
/// `</s>`: greedy decoding stops when it is the argmax.
const P_END: usize = 3;
/// Decoder steps before giving up on `</s>` (`for i in range(20)` in `predict`), so at most this
/// many phones per word.
pub const MAX_PHONES: usize = 20;

/// One GRU layer (PyTorch gate order r, z, n), with the input projection precomputed per token.
#[derive(Debug)]
struct Gru {
    hidden: usize,
    /// `emb[token] @ w_ih.T + b_ih` for every token: `[vocab][3 * hidden]`.
    gi: Vec<f32>,
    /// `w_hh`, row-major `[3 * hidden][hidden]`.
    w_hh: Vec<f32>,
    b_hh: Vec<f32>,
}

impl Gru {
    fn new(
        emb: &[f32],
        emb_dim: usize,
        w_ih: &[f32],
        b_ih: &[f32],
        w_hh: Vec<f32>,
        b_hh: Vec<f32>,
    ) -> Self {
        let hidden = b_hh.len() / 3;
        let mut gi = Vec::with_capacity(emb.len() / emb_dim * 3 * hidden);
        for x in emb.chunks_exact(emb_dim) {
            gi.extend(
                w_ih.chunks_exact(emb_dim)
                    .zip(b_ih)
                    .map(|(row, b)| dot(row, x) + b),
            );
        }
        Self {
            hidden,
            gi,
            w_hh,
            b_hh,
        }
    }

    /// `G2p.grucell`: h <- (1 - z) * n + z * h, with `gh` as scratch for `w_hh @ h + b_hh`.
    fn step(&self, token: usize, h: &mut [f32], gh: &mut [f32]) {
        let n3 = 3 * self.hidden;
        for ((g, row), b) in gh
            .iter_mut()
            .zip(self.w_hh.chunks_exact(self.hidden))
            .zip(&self.b_hh)
        {
            *g = dot(row, h) + b;
        }
        let gi = &self.gi[token * n3..(token + 1) * n3];
        let (ri, rest) = gi.split_at(self.hidden);
        let (zi, ni) = rest.split_at(self.hidden);
        let (rh, rest) = gh.split_at(self.hidden);
        let (zh, nh) = rest.split_at(self.hidden);
        for j in 0..self.hidden {
            let r = sigmoid(ri[j] + rh[j]);
            let z = sigmoid(zi[j] + zh[j]);
            let n = (ni[j] + r * nh[j]).tanh();
            h[j] = (1.0 - z) * n + z * h[j];
        }
    }
}

/// g2p_en's GRU encoder-decoder, ready to predict.
#[derive(Debug)]
pub struct NeuralG2p {
    encoder: Gru,
    decoder: Gru,
    /// `fc_w`, row-major `[74][hidden]`.
    fc_w: Vec<f32>,
    fc_b: Vec<f32>,
}

impl NeuralG2p {
    /// Reads `checkpoint20.npz` (or any checkpoint of the same layout: the embedding and hidden
    /// sizes are taken from the arrays, the vocabularies are fixed).
    pub fn load(npz: &Path) -> Result<Self, NnError> {
        let invalid = |reason: String| NnError::InvalidFile {
            path: npz.to_path_buf(),
            reason,
        };
        if !npz.is_file() {
            return Err(NnError::Io {
                path: npz.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let arrays: HashMap<String, Tensor> = Tensor::read_npz(npz)
            .map_err(|e| invalid(format!("not a readable .npz: {e}")))?
            .into_iter()
            .collect();
        // `None` in `want` is a size taken from the file (embedding and hidden sizes).
        let get = |name: &str, want: &[Option<usize>]| {
            let t = arrays
                .get(name)
                .ok_or_else(|| invalid(format!("no array {name:?}")))?;
            let dims = t.dims();
            let fits = dims.len() == want.len()
                && dims
                    .iter()
                    .zip(want)
                    .all(|(d, w)| w.is_none() || *w == Some(*d));
            if !fits {
                let want: Vec<String> = want
                    .iter()
                    .map(|w| w.map_or("_".into(), |w| w.to_string()))
                    .collect();
                return Err(invalid(format!(
                    "array {name:?} has shape {dims:?}, expected [{}]",
                    want.join(", ")
                )));
            }
            let data = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| invalid(format!("array {name:?}: {e}")))?;
            Ok::<_, NnError>((data, dims.to_vec()))
        };

        // Sizes come from the encoder; every other array must agree with them.
        let (enc_emb, d) = get("enc_emb", &[Some(GRAPHEMES), None])?;
        let emb_dim = d[1];
        let (b_hh, d) = get("enc_b_hh", &[None])?;
        if d[0] == 0 || d[0] % 3 != 0 {
            return Err(invalid(format!(
                "array \"enc_b_hh\" has length {}, expected 3 * hidden",
                d[0]
            )));
        }
        let hidden = d[0] / 3;
        let (n3, e, h, p) = (
            Some(3 * hidden),
            Some(emb_dim),
            Some(hidden),
            Some(PHONEMES.len()),
        );

        let (w_ih, _) = get("enc_w_ih", &[n3, e])?;
        let (w_hh, _) = get("enc_w_hh", &[n3, h])?;
        let (b_ih, _) = get("enc_b_ih", &[n3])?;
        let encoder = Gru::new(&enc_emb, emb_dim, &w_ih, &b_ih, w_hh, b_hh);

        let (dec_emb, _) = get("dec_emb", &[p, e])?;
        let (w_ih, _) = get("dec_w_ih", &[n3, e])?;
        let (w_hh, _) = get("dec_w_hh", &[n3, h])?;
        let (b_ih, _) = get("dec_b_ih", &[n3])?;
        let (b_hh, _) = get("dec_b_hh", &[n3])?;
        let decoder = Gru::new(&dec_emb, emb_dim, &w_ih, &b_ih, w_hh, b_hh);

        let (fc_w, _) = get("fc_w", &[p, h])?;
        let (fc_b, _) = get("fc_b", &[p])?;
        Ok(Self {
            encoder,
            decoder,
            fc_w,
            fc_b,
        })
    }

    /// ARPAbet phones with stress digits (`"AH0"`), as `G2p.predict`; at most [`MAX_PHONES`].
    ///
    /// The word is lowercased. Characters other than `a..=z` (apostrophes, hyphens, digits,
    /// accented letters) are skipped, so "o'brien" is read as "obrien". This differs from
    /// `G2p.predict`, which feeds each of them as `<unk>` (and runs one more encoder step); its
    /// own front end, `G2p.__call__`, already deletes everything but letters and `'.,?!-`, so
    /// only those few ever reached the model that way. Callers should normalise text (numbers,
    /// accents) before. A word with no letters gives no phones, where `G2p.predict("")` would
    /// still decode from the `</s>` alone.
    pub fn predict(&self, word: &str) -> Result<Vec<String>, NnError> {
        let graphemes: Vec<usize> = word
            .chars()
            .flat_map(char::to_lowercase)
            .filter(char::is_ascii_lowercase)
            .map(|c| G_FIRST_LETTER + usize::from(c as u8 - b'a'))
            .collect();
        if graphemes.is_empty() {
            return Ok(Vec::new());
        }
        let hidden = self.encoder.hidden;
        let mut h = vec![0.0f32; hidden];
        let mut gh = vec![0.0f32; 3 * hidden];
        for &g in graphemes.iter().chain(&[G_END]) {
            self.encoder.step(g, &mut h, &mut gh);
        }

        let mut phones = Vec::new();
        let mut token = P_START;
        for _ in 0..MAX_PHONES {
            self.decoder.step(token, &mut h, &mut gh);
            // np.argmax: the first index wins a tie, hence the strict `>`.
            let mut best = (0, f32::NEG_INFINITY);
            for (i, (row, b)) in self.fc_w.chunks_exact(hidden).zip(&self.fc_b).enumerate() {
                let logit = dot(row, &h) + b;
                if logit > best.1 {
                    best = (i, logit);
                }
            }
            token = best.0;
            if token == P_END {
                break;
            }
            phones.push(PHONEMES[token].to_owned());
        }
        Ok(phones)
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Dot product with eight independent partial sums, so the compiler can keep them in one SIMD
/// register (it may not reorder a single float accumulator).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Where the golden test looks for g2p_en's weights unless `HARK_G2P_NPZ` says otherwise:
    /// the wheel unzipped into /tmp/g2p_en (see tests/golden/make_g2p_golden.py).
    const DEFAULT_NPZ: &str = "/tmp/g2p_en/g2p_en/checkpoint20.npz";

    /// Writes a checkpoint with g2p_en's array names and the given sizes, filled by `fill`.
    fn write_npz(
        dir: &Path,
        emb: usize,
        hidden: usize,
        mut fill: impl FnMut(&str, &[usize]) -> Vec<f32>,
    ) -> std::path::PathBuf {
        let n3 = 3 * hidden;
        let p = PHONEMES.len();
        let specs: [(&str, Vec<usize>); 12] = [
            ("enc_emb", vec![GRAPHEMES, emb]),
            ("enc_w_ih", vec![n3, emb]),
            ("enc_w_hh", vec![n3, hidden]),
            ("enc_b_ih", vec![n3]),
            ("enc_b_hh", vec![n3]),
            ("dec_emb", vec![p, emb]),
            ("dec_w_ih", vec![n3, emb]),
            ("dec_w_hh", vec![n3, hidden]),
            ("dec_b_ih", vec![n3]),
            ("dec_b_hh", vec![n3]),
            ("fc_w", vec![p, hidden]),
            ("fc_b", vec![p]),
        ];
        let tensors: Vec<(String, Tensor)> = specs
            .iter()
            .map(|(name, shape)| {
                let data = fill(name, shape);
                let t =
                    Tensor::from_vec(data, shape.as_slice(), &candle_core::Device::Cpu).unwrap();
                (name.to_string(), t)
            })
            .collect();
        let path = dir.join("g2p.npz");
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_npz(&refs, &path).unwrap();
        path
    }

    /// Small deterministic pseudo-random weights in [-0.5, 0.5).
    fn random(seed: &mut u64, shape: &[usize]) -> Vec<f32> {
        (0..shape.iter().product::<usize>())
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Random weights, except that `fc_b` is replaced by `bias` (one entry per phoneme).
    fn model_with_fc_bias(bias: impl Fn(usize) -> f32) -> NeuralG2p {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 7;
        let path = write_npz(dir.path(), 4, 8, |name, shape| match name {
            "fc_b" => (0..shape[0]).map(&bias).collect(),
            _ => random(&mut seed, shape),
        });
        NeuralG2p::load(&path).unwrap()
    }

    #[test]
    fn plumbing_random_weights() {
        let m = model_with_fc_bias(|_| 0.0);
        assert_eq!((m.encoder.hidden, m.decoder.hidden), (8, 8));
        assert_eq!(m.encoder.gi.len(), GRAPHEMES * 24);
        assert_eq!(m.decoder.gi.len(), PHONEMES.len() * 24);
        let out = m.predict("zorblax").unwrap();
        assert!(out.len() <= MAX_PHONES);
        assert!(
            out.iter()
                .all(|p| PHONEMES.contains(&p.as_str()) && p != "</s>")
        );
        // Case and characters outside a..z do not matter.
        assert_eq!(m.predict("Zor-b'lax1").unwrap(), out);
        assert_eq!(m.predict("").unwrap(), Vec::<String>::new());
        assert_eq!(m.predict("12 -'!é").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn greedy_stops_at_end_token() {
        // </s> dominates from the first step: nothing is emitted.
        let m = model_with_fc_bias(|i| if i == P_END { 100.0 } else { 0.0 });
        assert!(m.predict("anything").unwrap().is_empty());
    }

    #[test]
    fn greedy_stops_at_max_length() {
        // AH0 always wins and </s> never does: the loop runs out at MAX_PHONES.
        let ah0 = PHONEMES.iter().position(|&p| p == "AH0").unwrap();
        let m = model_with_fc_bias(|i| if i == ah0 { 100.0 } else { 0.0 });
        assert_eq!(m.predict("anything").unwrap(), vec!["AH0"; MAX_PHONES]);
    }

    #[test]
    fn argmax_tie_takes_first_index() {
        // All-zero output layer: every logit is 0, and numpy's argmax picks index 0 (<pad>).
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 3;
        let path = write_npz(dir.path(), 4, 8, |name, shape| match name {
            "fc_w" | "fc_b" => vec![0.0; shape.iter().product()],
            _ => random(&mut seed, shape),
        });
        let m = NeuralG2p::load(&path).unwrap();
        assert_eq!(m.predict("ab").unwrap(), vec!["<pad>"; MAX_PHONES]);
    }

    #[test]
    fn load_rejects_wrong_shapes_and_missing_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 1;
        // A valid file, then fc_w reshaped behind the loader's back.
        let path = write_npz(dir.path(), 4, 8, |_, shape| random(&mut seed, shape));
        let mut arrays: Vec<(String, Tensor)> = Tensor::read_npz(&path).unwrap();
        for (name, t) in &mut arrays {
            if name == "fc_w" {
                *t = t.reshape((PHONEMES.len() * 2, 4)).unwrap();
            }
        }
        let refs: Vec<(&str, &Tensor)> = arrays.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_npz(&refs, &path).unwrap();
        let err = NeuralG2p::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("\"fc_w\" has shape [148, 4], expected [74, 8]"),
            "{err}"
        );

        let refs: Vec<(&str, &Tensor)> = arrays
            .iter()
            .filter(|(n, _)| n != "dec_emb")
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        Tensor::write_npz(&refs, &path).unwrap();
        let err = NeuralG2p::load(&path).unwrap_err().to_string();
        assert!(err.contains("no array \"dec_emb\""), "{err}");

        std::fs::write(&path, b"not a zip").unwrap();
        assert!(matches!(
            NeuralG2p::load(&path),
            Err(NnError::InvalidFile { .. })
        ));
        assert!(matches!(
            NeuralG2p::load(&dir.path().join("absent.npz")),
            Err(NnError::Io { .. })
        ));
    }

    /// Exact agreement with g2p_en's numpy `predict` on tests/fixtures/g2p_golden.tsv. Needs the
    /// real weights: `HARK_G2P_NPZ`, else /tmp/g2p_en/g2p_en/checkpoint20.npz (unzip the
    /// g2p_en 2.1.0 wheel into /tmp/g2p_en); skips with a message when they are absent.
    #[test]
    fn golden_agreement() {
        let npz = std::env::var_os("HARK_G2P_NPZ")
            .map_or_else(|| DEFAULT_NPZ.into(), std::path::PathBuf::from);
        if !npz.is_file() {
            eprintln!(
                "skipping: no g2p_en checkpoint at {} (set HARK_G2P_NPZ, or unzip the g2p_en \
                 2.1.0 wheel into /tmp/g2p_en)",
                npz.display()
            );
            return;
        }
        let m = NeuralG2p::load(&npz).unwrap();
        let golden = include_str!("../../tests/fixtures/g2p_golden.tsv");
        let cases: Vec<(&str, &str)> = golden
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split_once('\t').expect("word<TAB>phones"))
            .collect();
        let start = Instant::now();
        let mut mismatches = Vec::new();
        for (word, want) in &cases {
            let got = m.predict(word).unwrap().join(" ");
            if got != *want {
                mismatches.push(format!("{word}: got {got:?}, want {want:?}"));
            }
        }
        let per_word = start.elapsed() / cases.len() as u32;
        let agree = cases.len() - mismatches.len();
        eprintln!(
            "g2p golden: {agree}/{} exact ({:.2}%), {per_word:?} per word{}",
            cases.len(),
            100.0 * agree as f64 / cases.len() as f64,
            mismatches
                .iter()
                .map(|m| format!("\n  {m}"))
                .collect::<String>()
        );
        assert!(cases.len() >= 300);
        assert!(agree * 100 >= cases.len() * 99, "{mismatches:#?}");
    }
}
