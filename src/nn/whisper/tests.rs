//! Tests: a tiny random-weight Whisper built with `VarMap` exercises the decode plumbing; the
//! real-weight tests run when a converted `tiny.en` is installed and skip with a message
//! otherwise.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::decode::{DecodeSetup, Decoders, Rng, TaughtWords, apply_filters, decode_once};
use super::model::{Config, DecoderState, Whisper};
use super::tokenizer::WhisperTokenizer;
use super::*;

/// Text tokens 0..20, then the specials; `<|notimestamps|>` = 27, timestamps from 28.
const N_TEXT: u32 = 20;
const SPECIALS: [&str; 8] = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
];

fn tiny_tokenizer() -> tokenizers::Tokenizer {
    let pieces: Vec<String> = (0..N_TEXT).map(|i| format!("w{i}")).collect();
    pieces_tokenizer(&pieces, false)
}

/// Text tokens " a" .. " t": byte-level pieces that each start a one-letter word.
fn letter_tokenizer() -> tokenizers::Tokenizer {
    let pieces: Vec<String> = (0..N_TEXT as u8)
        .map(|i| format!("\u{120}{}", (b'a' + i) as char))
        .collect();
    pieces_tokenizer(&pieces, true)
}

/// `pieces` as text tokens 0.. (at most [`N_TEXT`], padded), then the specials. With
/// `byte_level`, `\u{120}` (Ġ) in a piece decodes to a space, as in Whisper's GPT-2 vocabulary.
fn pieces_tokenizer(pieces: &[String], byte_level: bool) -> tokenizers::Tokenizer {
    assert!(pieces.len() <= N_TEXT as usize);
    let mut vocab = serde_json::Map::new();
    for i in 0..N_TEXT as usize {
        let piece = pieces.get(i).cloned().unwrap_or_else(|| format!("pad{i}"));
        vocab.insert(piece, i.into());
    }
    let added: Vec<serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(k, s)| {
            serde_json::json!({"id": N_TEXT + k as u32, "content": s, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    for (k, s) in SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), (N_TEXT + k as u32).into());
    }
    let decoder = if byte_level {
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
            "use_regex": false})
    } else {
        serde_json::Value::Null
    };
    let unk = pieces[0].clone();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": decoder,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": unk}
    });
    tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap()
}

fn tiny_config() -> Config {
    Config {
        num_mel_bins: 8,
        max_source_positions: 1500,
        d_model: 16,
        encoder_attention_heads: 2,
        encoder_layers: 2,
        vocab_size: (N_TEXT as usize + SPECIALS.len()) + 1501,
        max_target_positions: 64,
        decoder_attention_heads: 2,
        decoder_layers: 2,
        suppress_tokens: vec![3],
        begin_suppress_tokens: vec![],
    }
}

/// A random-weight network: every tensor N(0, 0.5), layer-norm gains near 1.
fn tiny_net(seed: u64) -> Whisper {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let cfg = tiny_config();
    // First pass creates every variable (zeros); then randomise them.
    Whisper::load(
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        cfg.clone(),
    )
    .unwrap();
    let mut rng = Rng::new(seed);
    {
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let n = var.elem_count();
            let vals: Vec<f32> = (0..n)
                .map(|_| {
                    // Irwin-Hall approximation of a normal.
                    let g = (0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0;
                    let v = (g * 0.5) as f32;
                    if name.contains("layer_norm.weight") {
                        1.0 + 0.1 * v
                    } else {
                        v
                    }
                })
                .collect();
            let t = Tensor::from_vec(vals, var.shape(), &dev).unwrap();
            var.set(&t).unwrap();
        }
    }
    Whisper::load(VarBuilder::from_varmap(&varmap, DType::F32, &dev), cfg).unwrap()
}

fn tiny_model(seed: u64) -> WhisperModel {
    model_with(tiny_net(seed), tiny_tokenizer())
}

fn model_with(net: Whisper, tokenizer: tokenizers::Tokenizer) -> WhisperModel {
    let tok = WhisperTokenizer::from_tokenizer(tokenizer, net.config.vocab_size, false).unwrap();
    WhisperModel::from_parts(
        net,
        tok,
        "tiny-random".into(),
        GenerationConfig::default(),
        &LoadOptions {
            q8_output: false,
            q8_layers: false,
            q8_encoder: false,
            pad_to_30s: true,
            decode_scope: None,
        },
    )
    .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn kv_cache_matches_full_recomputation() {
    let net = tiny_net(1);
    let mel: Vec<f32> = (0..8 * 200)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let xa = net.encode(&mel, 200).unwrap();
    let cross = net.decoder.cross_kv(&xa).unwrap();
    // More tokens than a decode step's row limit: the whole-sequence pass takes candle's
    // matmul path, the one-token steps the dot-product path, and they must agree.
    let tokens: Vec<u32> = (0..20u32).map(|i| (i * 7 + 21) % 41).collect();
    let n = tokens.len();

    // Without cache: the whole sequence at once.
    let mut full_state = DecoderState::new(net.decoder.n_layers());
    let input = Tensor::from_vec(tokens.clone(), (1, n), &Device::Cpu).unwrap();
    let full = net
        .decoder
        .forward(&input, &cross, &mut full_state, &[])
        .unwrap()
        .hidden;
    let full_logits = net.decoder.logits(&full.squeeze(0).unwrap()).unwrap();

    // With cache: a 3-token prompt, then one token per step.
    let mut state = DecoderState::new(net.decoder.n_layers());
    let mut pieces = Vec::new();
    let prompt = Tensor::from_vec(tokens[..3].to_vec(), (1, 3), &Device::Cpu).unwrap();
    pieces.push(
        net.decoder
            .forward(&prompt, &cross, &mut state, &[])
            .unwrap()
            .hidden,
    );
    for &t in &tokens[3..] {
        let x = Tensor::from_vec(vec![t], (1, 1), &Device::Cpu).unwrap();
        pieces.push(
            net.decoder
                .forward(&x, &cross, &mut state, &[])
                .unwrap()
                .hidden,
        );
    }
    assert_eq!(state.len, n);
    let inc = Tensor::cat(&pieces, 1).unwrap();
    let inc_logits = net.decoder.logits(&inc.squeeze(0).unwrap()).unwrap();
    let d = max_abs_diff(&full_logits, &inc_logits);
    assert!(
        d < 1e-4,
        "cached logits differ from full recomputation by {d}"
    );

    // Batch rows and beam reordering: duplicate the prompt cache, step two different tokens,
    // then swap the rows; each row must equal its single-sequence computation.
    let mut state = DecoderState::new(net.decoder.n_layers());
    net.decoder
        .forward(&prompt, &cross, &mut state, &[])
        .unwrap();
    state.select(&[0, 0]).unwrap();
    let step = Tensor::new(&[[tokens[3]], [12u32]], &Device::Cpu).unwrap();
    net.decoder.forward(&step, &cross, &mut state, &[]).unwrap();
    state.select(&[1, 0]).unwrap();
    let next = Tensor::new(&[[4u32], [tokens[4]]], &Device::Cpu).unwrap();
    let out = net
        .decoder
        .forward(&next, &cross, &mut state, &[])
        .unwrap()
        .hidden;
    let row1 = net
        .decoder
        .logits(&out.narrow(0, 1, 1).unwrap().squeeze(0).unwrap())
        .unwrap();
    let want = full_logits.narrow(0, 4, 1).unwrap();
    let d = max_abs_diff(&row1, &want);
    assert!(d < 1e-4, "reordered beam row differs by {d}");
}

#[test]
fn int8_output_projection_is_close() {
    let mut net = tiny_net(2);
    let h = Tensor::from_vec(
        (0..32).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
        (2, 16),
        &Device::Cpu,
    )
    .unwrap();
    let exact = net.decoder.logits(&h).unwrap();
    let reference = h.matmul(&net.decoder.embed_tokens.t().unwrap()).unwrap();
    assert!(max_abs_diff(&exact, &reference) < 1e-4);
    net.decoder.quantize_output(true).unwrap();
    assert!(net.decoder.output_is_int8());
    let q = net.decoder.logits(&h).unwrap();
    let d = max_abs_diff(&exact, &q);
    assert!(d < 0.05, "{d}");
}

#[test]
fn int8_encoder_is_close_where_the_cpu_has_vnni() {
    let mut net = tiny_net(6);
    let mel: Vec<f32> = (0..8 * 200)
        .map(|i| ((i * 31 % 89) as f32 / 44.0) - 1.0)
        .collect();
    let f32_out = net.encode(&mel, 200).unwrap();
    net.encoder.quantize_layers(true).unwrap();
    let q_out = net.encode(&mel, 200).unwrap();
    let d = max_abs_diff(&f32_out, &q_out);
    if super::qgemm::available() {
        assert!(net.encoder.layers_are_int8());
        // The final layer norm brings outputs to unit scale: ~0.1 is int8 rounding of every
        // product (attention included) through two random layers; a wrong product is O(1).
        assert!(d > 0.0 && d < 0.25, "int8 encoder differs by {d}");
    } else {
        assert!(!net.encoder.layers_are_int8());
        assert_eq!(d, 0.0, "no VNNI: the encoder must stay f32");
    }
    net.encoder.quantize_layers(false).unwrap();
    assert!(max_abs_diff(&f32_out, &net.encode(&mel, 200).unwrap()) < 1e-6);
}

#[test]
fn int8_decoder_layers_are_close_and_prefill_only_with_vnni() {
    let mut net = tiny_net(4);
    let mel: Vec<f32> = (0..8 * 200)
        .map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0)
        .collect();
    let xa = net.encode(&mel, 200).unwrap();
    let cross = net.decoder.cross_kv(&xa).unwrap();
    let run = |net: &Whisper, tokens: &[u32]| {
        let mut state = DecoderState::new(net.decoder.n_layers());
        let x = Tensor::from_vec(tokens.to_vec(), (1, tokens.len()), &Device::Cpu).unwrap();
        net.decoder
            .forward(&x, &cross, &mut state, &[])
            .unwrap()
            .hidden
    };
    let long: Vec<u32> = (0..20u32).map(|i| (i * 5 + 3) % 41).collect();
    let (step_f32, prefill_f32) = (run(&net, &long[..1]), run(&net, &long));
    net.decoder.quantize_layers(true).unwrap();
    let (step_i8, prefill_i8) = (run(&net, &long[..1]), run(&net, &long));
    // Prefill (20 rows) stays on the f32 weights unless the CPU has VNNI (then int8 too);
    // a step uses the int8 copies.
    let dp = max_abs_diff(&prefill_f32, &prefill_i8);
    if super::qgemm::available() {
        // Rounding over 20 rows of a random model; a wrong product is O(1).
        assert!(dp > 0.0 && dp < 0.15, "int8 prefill differs by {dp}");
    } else {
        assert!(dp < 1e-5, "prefill must stay f32 without VNNI: {dp}");
    }
    let d = max_abs_diff(&step_f32, &step_i8);
    assert!(d > 0.0 && d < 0.05, "int8 step differs by {d}");
}

fn setup_for(model: &WhisperModel, opts: &DecodeOptions) -> DecodeSetup {
    let sot = model.sot_sequence("en", Task::Transcribe);
    model.setup(opts, &sot, &[], &[], None)
}

#[test]
fn timestamp_rules() {
    let model = tiny_model(3);
    let tok = model.tokenizer();
    let ts = tok.timestamp_begin;
    let opts = DecodeOptions::default();
    let setup = setup_for(&model, &opts);
    let v = model.network().config.vocab_size;
    let allowed = |logits: &[f32]| -> Vec<u32> {
        (0..v as u32)
            .filter(|&i| logits[i as usize] > f32::NEG_INFINITY)
            .collect()
    };

    // First token: a timestamp <= 1.0 s (index 50), never text, never suppressed tokens.
    let mut l = vec![0f32; v];
    apply_filters(&mut l, &[], &setup, tok);
    let a = allowed(&l);
    assert_eq!(a.first(), Some(&ts));
    assert_eq!(a.last(), Some(&(ts + 50)));

    // Text tokens likelier than all timestamps together (no forcing) from here on.
    let text_favoured = || {
        let mut l = vec![0f32; v];
        l[..N_TEXT as usize + 1].fill(10.0);
        l
    };
    // After <|t|> text: text, eot or a later-or-equal timestamp.
    let mut l = text_favoured();
    apply_filters(&mut l, &[ts + 10, 5], &setup, tok);
    let a = allowed(&l);
    assert!(a.contains(&5) && a.contains(&tok.eot));
    assert!(!a.contains(&(ts + 9)) && a.contains(&(ts + 11)));
    assert!(!a.contains(&3), "config suppress_tokens");
    assert!(!a.contains(&tok.no_timestamps) && !a.contains(&tok.sot));

    // After text <|t|>: a timestamp (the pair's second, >= t) or eot, no text.
    let mut l = text_favoured();
    apply_filters(&mut l, &[ts, 5, ts + 20], &setup, tok);
    let a = allowed(&l);
    assert!(!a.contains(&5));
    assert!(a.contains(&tok.eot) && a.contains(&(ts + 20)) && !a.contains(&(ts + 19)));

    // After a pair <|t|><|t|>: text only.
    let mut l = text_favoured();
    apply_filters(&mut l, &[ts, 5, ts + 20, ts + 20], &setup, tok);
    let a = allowed(&l);
    assert!(a.iter().all(|&t| t < ts));

    // Timestamp mass beats any single text token: force a timestamp.
    let mut l = vec![0f32; v];
    l[7] = 3.0; // text token clearly best alone...
    for x in &mut l[ts as usize..] {
        *x = 0.5; // ...but 1501 timestamps together are more likely
    }
    apply_filters(&mut l, &[ts, 5], &setup, tok);
    assert!(allowed(&l).iter().all(|&t| t >= ts || t == u32::MAX));

    // suppress_blank: eot not allowed first.
    let mut l = vec![0f32; v];
    let mut no_ts = setup.clone();
    no_ts.without_timestamps = true;
    apply_filters(&mut l, &[], &no_ts, tok);
    assert_eq!(l[tok.eot as usize], f32::NEG_INFINITY);
}

#[test]
fn segments_split_at_timestamp_pairs() {
    let model = tiny_model(4);
    let tok = model.tokenizer();
    let ts = tok.timestamp_begin;
    // <|0.00|> a b <|1.00|><|1.00|> c <|2.00|>  -> two complete segments, seek to the end.
    let tokens = [ts, 1, 2, ts + 50, ts + 50, 3, ts + 100];
    let s = split_segments(&tokens, tok, 3000);
    assert!(s.complete && s.tail.is_none());
    assert_eq!(s.segments.len(), 2);
    assert_eq!((s.segments[0].start, s.segments[0].end), (0.0, 1.0));
    assert_eq!((s.segments[1].start, s.segments[1].end), (1.0, 2.0));
    assert_eq!(s.advance_frames, 3000);
    // Cut by the window end: the tail is incomplete and seek goes to the last timestamp.
    let tokens = [ts, 1, 2, ts + 50, ts + 50, 3, 4];
    let s = split_segments(&tokens, tok, 3000);
    assert!(!s.complete);
    assert_eq!(s.segments.len(), 1);
    assert_eq!(s.advance_frames, 100);
    assert_eq!(
        s.tail.as_ref().map(|t| t.tokens.clone()),
        Some(vec![ts + 50, 3, 4])
    );
    // No pair at all: one segment to the last timestamp.
    let tokens = [ts, 1, 2, ts + 150];
    let s = split_segments(&tokens, tok, 3000);
    assert!(s.complete);
    assert_eq!(s.segments[0].end, 3.0);
}

fn chirp(seconds: f32) -> Vec<f32> {
    let n = (seconds * 16_000.0) as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            0.3 * (2.0 * std::f32::consts::PI * (200.0 + 300.0 * t) * t).sin()
        })
        .collect()
}

fn ungated() -> DecodeOptions {
    DecodeOptions {
        no_speech_threshold: None,
        logprob_threshold: None,
        compression_ratio_threshold: None,
        temperatures: vec![0.0],
        ..DecodeOptions::default()
    }
}

fn check_segments(segs: &[Segment], tok: &WhisperTokenizer, max_end: f32) {
    let mut prev_end = 0.0;
    for s in segs {
        assert!(s.start <= s.end && s.end <= max_end + 1e-3, "{s:?}");
        assert!(s.start + 1e-3 >= prev_end - 1e-3 || s.start >= 0.0);
        prev_end = s.end;
        for &t in &s.tokens {
            assert!(
                t < tok.eot || tok.is_timestamp(t),
                "special token {t} in a segment"
            );
        }
    }
}

#[test]
fn greedy_and_beam_decode_random_model() {
    let model = tiny_model(5);
    let audio = chirp(4.0);
    let greedy = model.decode_window(&audio, &ungated(), &[]).unwrap();
    check_segments(&greedy.segments, model.tokenizer(), 30.0);
    assert_eq!(greedy.language, "en");
    let beam_opts = DecodeOptions {
        beam_size: 3,
        ..ungated()
    };
    let beam = model.decode_window(&audio, &beam_opts, &[1, 2, 3]).unwrap();
    check_segments(&beam.segments, model.tokenizer(), 30.0);

    // Beam search never scores below greedy on the same window (same filters, same start).
    let (mel, frames) = model.window_mel(&audio);
    let enc = model.encode_window(&mel, frames, 30.0).unwrap();
    let setup = setup_for(&model, &ungated());
    let mut rng = Rng::new(1);
    let d = Decoders {
        net: &model.net,
        cross: &enc.cross,
        guide: None,
    };
    let g = decode_once(&d, &model.tokenizer, &setup, 0.0, &mut rng).unwrap();
    let mut setup5 = setup.clone();
    setup5.beam_size = 4;
    let b = decode_once(&d, &model.tokenizer, &setup5, 0.0, &mut rng).unwrap();
    let score = |r: &super::decode::DecodingResult| {
        r.avg_logprob * (r.tokens.len() + 1) as f32 / r.tokens.len().max(1) as f32
    };
    assert!(
        score(&b) >= score(&g) - 1e-3,
        "beam {} < greedy {}",
        score(&b),
        score(&g)
    );
    assert!(g.tokens.len() <= setup.sample_len);

    // Sampling at temperature > 0 with best_of runs too.
    let mut setup_s = setup.clone();
    setup_s.best_of = 2;
    let s = decode_once(&d, &model.tokenizer, &setup_s, 0.7, &mut rng).unwrap();
    assert_eq!(s.temperature, 0.7);
}

#[test]
fn long_form_loop_terminates_and_orders_segments() {
    let model = tiny_model(6);
    let audio = chirp(40.0);
    let t = model.transcribe(&audio, &ungated()).unwrap();
    check_segments(&t.segments, model.tokenizer(), 40.0 + 30.0);
    // Word timestamps run through the alignment path (random weights: any times).
    let opts = DecodeOptions {
        word_timestamps: true,
        ..ungated()
    };
    let w = model.decode_window(&chirp(3.0), &opts, &[]).unwrap();
    for s in &w.segments {
        for word in &s.words {
            assert!(
                word.start <= word.end && (0.0..=1.0).contains(&word.p),
                "{word:?}"
            );
        }
    }
    // Silence with the gates on yields nothing.
    let silent = model
        .transcribe(&vec![0.0; 16_000 * 2], &DecodeOptions::default())
        .unwrap();
    assert!(silent.segments.iter().all(|s| !s.text.trim().is_empty()));
}

#[test]
fn english_only_model_pins_language_and_task() {
    let model = tiny_model(7);
    assert!(!model.is_multilingual());
    let audio = chirp(1.0);
    let err = model.detect_language(&audio).unwrap_err();
    assert!(matches!(err, NnError::EnglishOnly { .. }), "{err}");
    let translate = DecodeOptions {
        task: Task::Translate,
        ..ungated()
    };
    assert!(matches!(
        model.decode_window(&audio, &translate, &[]),
        Err(NnError::EnglishOnly { .. })
    ));
    let french = DecodeOptions {
        language: Some("fr".into()),
        ..ungated()
    };
    assert!(model.decode_window(&audio, &french, &[]).is_err());
    let auto = DecodeOptions {
        language: Some("auto".into()),
        ..ungated()
    };
    assert_eq!(
        model.decode_window(&audio, &auto, &[]).unwrap().language,
        "en"
    );
    // English-only prompt: sot alone, no language or task token.
    assert_eq!(
        model.sot_sequence("en", Task::Transcribe),
        vec![model.tokenizer().sot]
    );
    assert!(
        model
            .decode_window(&vec![0.0; N_SAMPLES + 1], &ungated(), &[])
            .is_err()
    );
}

#[test]
fn load_errors_name_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let err = WhisperModel::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("harkd models fetch tiny.en"),
        "{err}"
    );
    let err = WhisperModel::load(&dir.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("absent") && err.contains("harkd models fetch"),
        "{err}"
    );
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let err = WhisperModel::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("invalid"),
        "{err}"
    );
}

// ---- real weights -------------------------------------------------------------------------

/// The installed tiny.en directory, or None (with a message) when it is absent.
pub(crate) fn tiny_en_dir() -> Option<PathBuf> {
    let dir = crate::models::default_models_dir().join("tiny.en");
    if dir.join("model.safetensors").exists() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: no Whisper model at {} (install it with `harkd models fetch tiny.en`)",
            dir.display()
        );
        None
    }
}

/// Decodes a file to 16 kHz mono.
pub(crate) fn load_audio(path: &Path) -> Vec<f32> {
    let decoded = crate::audio::file::decode_file(path).unwrap();
    let mut conv = crate::audio::resample::ToMono16k::new(decoded.format).unwrap();
    let mut out = Vec::new();
    conv.process(&decoded.samples, &mut out);
    conv.flush(&mut out);
    out
}

#[test]
fn real_tiny_en_transcribes_jfk() {
    let Some(dir) = tiny_en_dir() else { return };
    if cfg!(debug_assertions) {
        eprintln!("note: real-weight test in a debug build is slow; use --release");
    }
    let model = WhisperModel::load(&dir).unwrap();
    let audio = load_audio(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jfk.flac"));
    let t = model.transcribe(&audio, &DecodeOptions::default()).unwrap();
    let want = "And so my fellow Americans, ask not what your country can do for you, ask what \
                you can do for your country.";
    assert_eq!(
        text::normalize(&t.text),
        text::normalize(want),
        "{}",
        t.text
    );
    assert!(t.segments.first().is_some_and(|s| s.start < 1.0));
    assert!(
        t.segments
            .last()
            .is_some_and(|s| s.end > 9.0 && s.end <= 11.1)
    );
}

#[test]
fn real_tiny_en_noise_yields_no_words() {
    let Some(dir) = tiny_en_dir() else { return };
    let noise = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/noise/ambient");
    if !noise.exists() {
        eprintln!("skipping: {} is absent", noise.display());
        return;
    }
    let model = WhisperModel::load(&dir).unwrap();
    for name in ["hens.flac", "speech_commands_exercise_bike.flac"] {
        let mut audio = load_audio(&noise.join(name));
        audio.truncate(N_SAMPLES);
        let t = model.transcribe(&audio, &DecodeOptions::default()).unwrap();
        assert!(t.segments.is_empty(), "{name}: {:?}", t.text);
    }
}

#[test]
fn short_windows_are_encoded_with_padding_after_the_audio() {
    let fps = 100;
    // 30 s minimum: always the full window.
    assert_eq!(WhisperModel::encoded_frames(3 * fps, 30.0), N_FRAMES);
    // 10 s minimum: 3 s of audio -> 10 s; 9.5 s -> 9.5 + 2 s margin; never beyond 30 s.
    assert_eq!(WhisperModel::encoded_frames(3 * fps, 10.0), 10 * fps);
    assert_eq!(WhisperModel::encoded_frames(950, 10.0), 1150);
    assert_eq!(WhisperModel::encoded_frames(29 * fps, 10.0), N_FRAMES);
    // Even frame counts (the stride-2 conv), at least 2.
    assert_eq!(WhisperModel::encoded_frames(0, 0.0) % 2, 0);
    assert_eq!(WhisperModel::encoded_frames(1001, 0.0), 1202);
}

#[test]
fn the_token_budget_follows_the_audio_length() {
    assert_eq!(super::token_budget(300), 16 + 8 * 3);
    assert_eq!(super::token_budget(301), 16 + 8 * 4);
    assert!(
        super::token_budget(N_FRAMES) > 224,
        "30 s windows keep openai's 224 limit"
    );
}

/// A decode conditioned on the previous window's text once came back empty for a whole
/// window of speech (the long-form reading behind 0.5 s of silence lost 27-57 s: WER 10%).
/// The window is decoded again without the previous text; the transcript has no hole.
#[test]
fn real_tiny_en_long_form_keeps_every_window_of_speech() {
    let Some(dir) = tiny_en_dir() else { return };
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/speech/longform/lj001_0001-0016.flac");
    if !file.exists() {
        eprintln!("skipping: {} is absent", file.display());
        return;
    }
    let reference = std::fs::read_to_string(file.with_extension("txt")).unwrap();
    let model = WhisperModel::load(&dir).unwrap();
    let mut audio = vec![0.0f32; SAMPLE_RATE as usize / 2];
    audio.extend(load_audio(&file));
    let t = model.transcribe(&audio, &DecodeOptions::default()).unwrap();
    let gaps: Vec<(f32, f32)> = t
        .segments
        .windows(2)
        .map(|w| (w[0].end, w[1].start))
        .filter(|(end, start)| start - end > 3.0)
        .collect();
    assert!(gaps.is_empty(), "holes in the transcript: {gaps:?}");
    let (errors, words) = text::word_errors(&reference, &t.text);
    let wer = errors as f32 / words as f32;
    assert!(wer < 0.06, "WER {:.1}%: {}", 100.0 * wer, t.text);
}

#[test]
fn the_word_rule_follows_word_pieces() {
    let pieces: Vec<String> = [
        "ĠHello", ",", "Ġmy", "Ġname", "Ġis", "ĠB", "ess", "Ġbest", "Ġwood", "bl", "ax", "ĠZor",
        "Ġbe", "Ġ(", "ĠBess",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    let tok = WhisperTokenizer::from_tokenizer(
        pieces_tokenizer(&pieces, true),
        tiny_config().vocab_size,
        false,
    )
    .unwrap();
    let id = |p: &str| pieces.iter().position(|x| x == p).unwrap() as u32;
    // "zorblax" as a word given on the command line that no example writes: any case.
    let words = TaughtWords::new(&["Bess".into(), "zorblax".into()], &[]);
    let spells = |seq: &[&str], next: &str| {
        let seq: Vec<u32> = seq.iter().map(|p| id(p)).collect();
        super::decode::spells_word(&tok, &seq, id(next), &words)
    };
    assert!(spells(&["ĠHello", ",", "Ġmy", "Ġname", "Ġis"], "ĠB"));
    assert!(spells(&["Ġis", "ĠB"], "ess"));
    assert!(spells(&["Ġis"], "ĠBess"));
    assert!(spells(&["Ġ("], "ĠBess"));
    assert!(spells(&["ĠZor"], "bl"));
    assert!(spells(&["ĠZor", "bl"], "ax"));
    // The common word, the name with punctuation after it (the base decides that), and a
    // word the adapter should not respell ("wood blocks" is not "woodblax").
    assert!(!spells(&["Ġis"], "Ġbest"));
    assert!(!spells(&["Ġis", "ĠB", "ess"], ","));
    assert!(!spells(&["Ġwood"], "bl"));
    assert!(!spells(&["Ġis"], "Ġmy"));
    // The common word "be" is not the start of "Bess": the examples write the name with a
    // capital. A lower-case spelling (all that is known of a word no example writes) matches
    // in any case.
    assert!(!spells(&["Ġis"], "Ġbe"));
    let folded = TaughtWords::new(&[], &["bess".into()]);
    let seq = vec![id("Ġis")];
    assert!(super::decode::spells_word(&tok, &seq, id("Ġbe"), &folded));
    assert!(super::decode::spells_word(&tok, &seq, id("ĠBess"), &folded));
    // Specials and timestamps are never the adapter's.
    let seq = vec![id("Ġis")];
    assert!(!super::decode::spells_word(&tok, &seq, tok.eot, &words));
    assert!(!super::decode::spells_word(
        &tok,
        &seq,
        tok.timestamp_begin,
        &words
    ));
}

#[test]
fn a_word_scoped_decode_is_the_base_off_the_words() {
    let audio = chirp(4.0);
    // The "adapted" network is seed 5; the "base" decoder is seed 6, reading the same encoder.
    let scoped = |base_seed: u64, words: Vec<String>| {
        let mut m = model_with(tiny_net(5), letter_tokenizer());
        m.guide = Some(Guide {
            decoder: tiny_net(base_seed).decoder,
            words: TaughtWords::new(&words, &[]),
            // Another network: its own cross-attention projections.
            own_cross: true,
        });
        m
    };
    let base_only = model_with(
        Whisper {
            encoder: tiny_net(5).encoder,
            decoder: tiny_net(6).decoder,
            config: tiny_config(),
        },
        letter_tokenizer(),
    );
    let adapted_only = model_with(tiny_net(5), letter_tokenizer());
    let tokens = |m: &WhisperModel, beam: usize| {
        let (mel, frames) = m.window_mel(&audio);
        let enc = m.encode_window(&mel, frames, 30.0).unwrap();
        let mut setup = setup_for(m, &ungated());
        setup.beam_size = beam;
        let d = Decoders {
            net: &m.net,
            cross: &enc.cross,
            guide: m.guide.as_ref().zip(enc.base.as_ref()),
        };
        decode_once(&d, &m.tokenizer, &setup, 0.0, &mut Rng::new(1))
            .unwrap()
            .tokens
    };
    let letters: Vec<String> = (b'a'..b'a' + N_TEXT as u8)
        .map(|c| (c as char).to_string())
        .collect();
    for beam in [1, 3] {
        // No word to spell: every token is the base decoder's, beams and caches in step.
        assert_eq!(tokens(&scoped(6, vec![]), beam), tokens(&base_only, beam));
        // A base identical to the adapter changes nothing.
        assert_eq!(
            tokens(&scoped(5, letters.clone()), beam),
            tokens(&adapted_only, beam)
        );
    }
    // Every text token spells a word: the adapter decides where it wants text the base does
    // not, and nowhere else.
    let base = tokens(&base_only, 1);
    let mixed = tokens(&scoped(6, letters), 1);
    let first = (0..mixed.len().min(base.len()))
        .find(|&i| mixed[i] != base[i])
        .expect("the adapter never decided a token");
    assert!(mixed[first] < base_only.tokenizer().eot, "{mixed:?}");
}

#[test]
fn the_adapter_decides_its_words_where_they_start_and_end() {
    let pieces: Vec<String> = ["ĠTell", "ĠBes", "s", "Ġbest", ",", "Ġthat", "nacht"]
        .iter()
        .map(|p| p.to_string())
        .collect();
    let vocab = tiny_config().vocab_size;
    let tok =
        WhisperTokenizer::from_tokenizer(pieces_tokenizer(&pieces, true), vocab, false).unwrap();
    let id = |p: &str| pieces.iter().position(|x| x == p).unwrap() as u32;
    let setup = DecodeSetup {
        initial_tokens: vec![],
        sot_index: 0,
        without_timestamps: true,
        suppress: vec![],
        begin_suppress: vec![],
        max_initial_timestamp_index: None,
        max_timestamp_index: None,
        sample_len: 10,
        has_previous_text: false,
        beam_size: 1,
        best_of: 1,
    };
    let guide = Guide {
        decoder: tiny_net(1).decoder,
        words: TaughtWords::new(&["Bess".into()], &["bess".into()]),
        own_cross: false,
    };
    let row = |scores: &[(&str, f32)]| {
        let mut r = vec![-10f32; vocab];
        for &(p, v) in scores {
            r[id(p) as usize] = v;
        }
        r
    };
    let choose = |seq: &[&str], adapter: &[(&str, f32)], base: &[(&str, f32)]| {
        let seq: Vec<u32> = seq.iter().map(|p| id(p)).collect();
        let r = super::decode::choose_row(
            (row(adapter), Some(row(base))),
            &seq,
            &setup,
            &tok,
            Some(&guide),
        );
        pieces[super::decode::argmax(&r.0) as usize].clone()
    };
    // 1. The adapter's choice starts the word.
    assert_eq!(
        choose(&["ĠTell"], &[("ĠBes", 5.)], &[("Ġbest", 5.)]),
        "ĠBes"
    );
    // 2. After the word, the adapter decides where it ends.
    let after = choose(
        &["ĠTell", "ĠBes", "s"],
        &[("Ġthat", 5.), ("nacht", 1.)],
        &[("nacht", 5.)],
    );
    assert_eq!(after, "Ġthat");
    // 3. The adapter wanted a comma first, then the name, and the base the common word.
    let ranked = choose(
        &["ĠTell"],
        &[(",", 5.), ("ĠBes", 4.), ("Ġbest", 1.)],
        &[("Ġbest", 5.)],
    );
    assert_eq!(ranked, "ĠBes");
    // Elsewhere the base decides: the adapter too ranks the name below the base's word, or no
    // taught word is in sight.
    let below = choose(
        &["ĠTell"],
        &[("Ġthat", 5.), ("Ġbest", 3.), ("ĠBes", 2.)],
        &[("Ġbest", 5.)],
    );
    assert_eq!(below, "Ġbest");
    assert_eq!(choose(&["ĠTell"], &[("Ġthat", 5.)], &[(",", 5.)]), ",");
}

#[test]
fn word_scoping_refuses_an_adapter_that_changes_the_encoder() {
    let meta = adapter::AdapterMeta {
        schema: 1,
        base: "tiny".into(),
        base_sha256: String::new(),
        method: adapter::Method::Lora,
        rank: 1,
        alpha: 2.0,
        freeze: "none".into(),
        ready: true,
        gate: "test".into(),
        new_words: vec!["bess".into()],
        decode_scope: adapter::DecodeScope::Words,
        spellings: vec!["Bess".into()],
        trained_at: String::new(),
        base_path: None,
    };
    let changed = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let merged = adapter::Merged {
        meta,
        base_dir: PathBuf::new(),
        tensors: std::collections::HashMap::new(),
        originals: [("model.encoder.layers.0.fc1.weight".to_string(), changed)].into(),
    };
    let opts = LoadOptions::default();
    let main = tiny_net(1).decoder;
    let err =
        WhisperModel::guide(Path::new("a"), &merged, &tiny_config(), &opts, &main).unwrap_err();
    assert!(err.to_string().contains("model.encoder"), "{err}");
    // Scoped to all tokens, nothing is asked of the base decoder.
    let all = LoadOptions {
        decode_scope: Some(adapter::DecodeScope::All),
        ..LoadOptions::default()
    };
    let guide = WhisperModel::guide(Path::new("a"), &merged, &tiny_config(), &all, &main).unwrap();
    assert!(guide.is_none());
}
