//! Note transcription bench: accuracy of the monophonic tracker, hark's Basic Pitch port against
//! the `basic-pitch` Python package, and the tracker's speed and note latency in a live stream.
//!
//! 1. Mono note F1 (mir_eval conventions, without and with offsets) on the shared synthetic
//!    melodies (`synth/mono*`) and on the sets named by `HARK_NOTES_SETS`
//!    (`name=AUDIO_DIR:NOTES_DIR,...`; references are matched to audio by stem).
//! 2. Poly note F1 of `poly::transcribe_poly` and of the Python package (run through
//!    `benches/notes_poly_peer.py`, scored here with the same metrics), file by file.
//! 3. Speed of the mono tracker fed 10 ms chunks (real-time factor, share of one core) and the
//!    delay from a note's true end (the reference note-off) and from the end the tracker gives
//!    it to the moment the stream hands it out.
//!
//! `cargo bench --profile dev --config 'profile.dev.opt-level=3' --bench notes`
//! (`HARK_NOTES_DATA` points at another copy of the shared `music` directory;
//! `HARK_NOTES_NO_PEER=1` skips the Python peer).

// The whole-daemon helpers there are not used here, only the CPU clock.
#[allow(dead_code)]
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Instant,
};

use hark::notes::{
    Note,
    eval::{self, Aggregate, NoteScores, Tolerances},
    io, poly,
    track::{self, MonoModels, MonoParams, MonoTracker},
};

const SR: usize = 16_000;
/// The live stage's chunk: 10 ms.
const CHUNK: usize = SR / 100;

fn data_dir() -> PathBuf {
    std::env::var_os("HARK_NOTES_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/music"),
        PathBuf::from,
    )
}

fn decode(p: &Path) -> Vec<f32> {
    hark::audio::file::decode_file_16k(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Audio files of `dir` (sorted) whose names start with `prefix`.
fn audio_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("flac" | "wav" | "mp3" | "ogg")
                    ) && p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

/// The timed reference notes of `audio` in `notes_dir`, if any.
fn reference(notes_dir: &Path, audio: &Path) -> Option<Vec<Note>> {
    let p = io::find_by_stem(notes_dir, &stem(audio))?;
    let f = io::read_notes(&p).ok()?;
    f.timed.then_some(f.notes)
}

struct SetScores {
    no_offset: Aggregate,
    with_offset: Aggregate,
}

fn score_mono(files: &[(PathBuf, Vec<Note>)], models: &MonoModels) -> SetScores {
    let p = MonoParams::default();
    let (mut a, mut b): (Vec<NoteScores>, Vec<NoteScores>) = (Vec::new(), Vec::new());
    for (audio, refs) in files {
        let est = track::transcribe_mono(&decode(audio), &p, models.clone());
        a.push(eval::evaluate(refs, &est, false));
        b.push(eval::evaluate(refs, &est, true));
    }
    SetScores {
        no_offset: Aggregate::of(&a),
        with_offset: Aggregate::of(&b),
    }
}

/// CPU seconds this process has used, all threads (NaN where /proc does not exist).
fn process_cpu_s() -> f64 {
    common::cpu_seconds(std::process::id()).unwrap_or(f64::NAN)
}

/// The mono trackers compared: the rules alone, with the bundled onset detector
/// (`HARK_NOTES_ONSET` names another model name or directory), with the detector set aside
/// where the bundled sound model hears a voice, and with SwiftF0's posterior steering pYIN too
/// (the daemon's default; whole-file in the F1 tables, live in the speed and latency ones).
/// Each is left out when its model does not load.
fn trackers() -> Vec<(&'static str, MonoModels)> {
    let name =
        std::env::var("HARK_NOTES_ONSET").unwrap_or_else(|_| hark::notes::ONSET_MODEL.into());
    let onsets = match hark::notes::load_onset_model(&name, None) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            println!("(onset detector {name} not loaded: {e}; rules only)\n");
            return vec![("rules", MonoModels::default())];
        }
    };
    let detector = MonoModels {
        onsets: Some(onsets),
        voice: None,
        f0: None,
    };
    let mut out = vec![
        ("rules", MonoModels::default()),
        ("detector", detector.clone()),
    ];
    let gated = match hark::notes::voice::load_voice_model(hark::notes::voice::VOICE_MODEL) {
        Ok(v) => {
            let m = MonoModels {
                voice: Some(Arc::new(v)),
                ..detector
            };
            out.push(("detector + voice gate", m.clone()));
            m
        }
        Err(e) => {
            println!("(voice model not loaded: {e})\n");
            detector
        }
    };
    match hark::notes::load_f0_model(hark::notes::F0_MODEL, None) {
        Ok(f0) => out.push((
            "+ SwiftF0 prior",
            MonoModels {
                f0: Some(Arc::new(f0)),
                ..gated
            },
        )),
        Err(e) => println!("(pitch network not loaded: {e})\n"),
    }
    out
}

fn mono_section(data: &Path) {
    println!("## Mono note F1 (onset 50 ms, pitch 50 cents; offset 20 % / 50 ms)\n");
    let mut sets: Vec<(String, PathBuf, PathBuf, &str)> = Vec::new();
    let synth = data.join("synth");
    if synth.is_dir() {
        sets.push((
            "shared synth mono".into(),
            synth.clone(),
            synth.join("notes"),
            "mono",
        ));
    } else {
        println!(
            "(shared data absent at {}: shared set skipped)\n",
            data.display()
        );
    }
    if let Ok(spec) = std::env::var("HARK_NOTES_SETS") {
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let Some((name, dirs)) = item.split_once('=') else {
                println!("(HARK_NOTES_SETS item `{item}` is not name=AUDIO_DIR:NOTES_DIR)");
                continue;
            };
            let Some((a, n)) = dirs.split_once(':') else {
                println!("(HARK_NOTES_SETS item `{item}` is not name=AUDIO_DIR:NOTES_DIR)");
                continue;
            };
            sets.push((name.into(), a.into(), n.into(), ""));
        }
    }
    println!(
        "| set | files | ref notes | est notes | F1 micro | F1 macro | P micro | R micro | F1+off micro | F1+off macro |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, audio, notes, prefix) in sets {
        let files: Vec<(PathBuf, Vec<Note>)> = audio_files(&audio, prefix)
            .into_iter()
            .filter_map(|a| reference(&notes, &a).map(|r| (a, r)))
            .collect();
        if files.is_empty() {
            println!(
                "| {name} | 0 | (no audio with references in {}) | | | | | | | |",
                audio.display()
            );
            continue;
        }
        for (how, m) in trackers() {
            let s = score_mono(&files, &m);
            let (a, b) = (s.no_offset, s.with_offset);
            println!(
                "| {name}, {how} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                a.files,
                a.n_ref,
                a.n_est,
                a.micro_f1,
                a.macro_f1,
                a.micro_precision,
                a.micro_recall,
                b.micro_f1,
                b.macro_f1
            );
        }
    }
    println!();
}

/// The polyphonic corpus of `benches/notes_poly_peer.py`: `synth/poly*` and the real
/// recordings with at least two reference notes.
fn poly_corpus(data: &Path) -> Vec<(PathBuf, Vec<Note>)> {
    let mut files: Vec<PathBuf> = audio_files(&data.join("synth"), "poly");
    if let Ok(m) = std::fs::read_to_string(data.join("manifest_real.tsv")) {
        let mut lines = m.lines();
        let head: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
        let col = |n: &str| head.iter().position(|h| *h == n);
        if let (Some(fc), Some(nc)) = (col("file"), col("n_notes")) {
            for l in lines {
                let f: Vec<&str> = l.split('\t').collect();
                if f.get(nc).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0) >= 2 {
                    files.push(data.join(f[fc]));
                }
            }
        }
    }
    files
        .into_iter()
        .filter_map(|a| {
            let notes = a.parent()?.join("notes");
            let p = io::find_by_stem(&notes, &stem(&a))?;
            Some((a, io::read_notes(&p).ok()?.notes))
        })
        .collect()
}

/// Pitch-only references (zero-length notes) are widened the way the peer script does, so both
/// sides are scored alike.
fn widen(notes: &[Note]) -> Vec<Note> {
    notes
        .iter()
        .map(|n| Note {
            end: n.end.max(n.start + 1e-3),
            ..*n
        })
        .collect()
}

fn run_peer(files: &[(PathBuf, Vec<Note>)]) -> Result<PathBuf, String> {
    if std::env::var_os("HARK_NOTES_NO_PEER").is_some() {
        return Err("HARK_NOTES_NO_PEER set".into());
    }
    let probe = Command::new("python3")
        .args(["-c", "import basic_pitch, onnxruntime"])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if !probe.status.success() {
        return Err("the basic-pitch package (with onnxruntime) is not importable".into());
    }
    let out = std::env::temp_dir().join(format!("hark-notes-peer-{}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/notes_poly_peer.py");
    let r = Command::new("python3")
        .arg(&script)
        .arg(&out)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !r.status.success() {
        return Err(format!(
            "peer failed: {}",
            String::from_utf8_lossy(&r.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let missing = files
        .iter()
        .filter(|(a, _)| !out.join(format!("{}.tsv", stem(a))).is_file())
        .count();
    if missing > 0 {
        println!("({missing} files have no peer output)\n");
    }
    Ok(out)
}

fn poly_section(data: &Path) {
    println!("## Poly note F1: hark's Basic Pitch port vs the basic-pitch package (ONNX)\n");
    let files = poly_corpus(data);
    if files.is_empty() {
        println!("(no polyphonic corpus under {}: skipped)\n", data.display());
        return;
    }
    let model = match hark::notes::load_basic_pitch(None) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            println!("(Basic Pitch model not available: {e}; skipped)\n");
            return;
        }
    };
    let peer = run_peer(&files);
    if let Err(e) = &peer {
        println!("(peer skipped: {e})\n");
    }
    println!(
        "| file | ref | hark est | peer est | hark F1 | peer F1 | hark F1+off | peer F1+off |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut agg: [Vec<NoteScores>; 4] = Default::default();
    let (mut hark_s, mut audio_s) = (0.0, 0.0);
    for (audio, refs) in &files {
        let refs = widen(refs);
        let x = decode(audio);
        audio_s += x.len() as f64 / SR as f64;
        let t = Instant::now();
        let est =
            poly::transcribe_poly(&x, &model, poly::PolyParams::default()).unwrap_or_default();
        hark_s += t.elapsed().as_secs_f64();
        let est = widen(&est);
        let (h0, h1) = (
            eval::evaluate(&refs, &est, false),
            eval::evaluate(&refs, &est, true),
        );
        agg[0].push(h0);
        agg[1].push(h1);
        let peer_est = peer.as_ref().ok().and_then(|d| {
            io::read_notes(&d.join(format!("{}.tsv", stem(audio))))
                .ok()
                .map(|f| widen(&f.notes))
        });
        let (pn, p0, p1) = match &peer_est {
            Some(p) => {
                let (p0, p1) = (
                    eval::evaluate(&refs, p, false),
                    eval::evaluate(&refs, p, true),
                );
                agg[2].push(p0);
                agg[3].push(p1);
                (
                    p.len().to_string(),
                    format!("{:.3}", p0.f1),
                    format!("{:.3}", p1.f1),
                )
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {} | {pn} | {:.3} | {p0} | {:.3} | {p1} |",
            stem(audio),
            refs.len(),
            est.len(),
            h0.f1,
            h1.f1
        );
    }
    let a: Vec<Aggregate> = agg.iter().map(Aggregate::of).collect();
    let peer_cell = |x: &Aggregate, f: f64| {
        if x.files == 0 {
            "-".to_string()
        } else {
            format!("{f:.3}")
        }
    };
    println!(
        "| **micro** | {} | {} | {} | {:.3} | {} | {:.3} | {} |",
        a[0].n_ref,
        a[0].n_est,
        if a[2].files == 0 {
            "-".into()
        } else {
            a[2].n_est.to_string()
        },
        a[0].micro_f1,
        peer_cell(&a[2], a[2].micro_f1),
        a[1].micro_f1,
        peer_cell(&a[3], a[3].micro_f1)
    );
    println!(
        "| **macro** | | | | {:.3} | {} | {:.3} | {} |",
        a[0].macro_f1,
        peer_cell(&a[2], a[2].macro_f1),
        a[1].macro_f1,
        peer_cell(&a[3], a[3].macro_f1)
    );
    println!(
        "\nhark poly real-time factor (whole buffers): {:.3}\n",
        hark_s / audio_s.max(1e-9)
    );
    if let Ok(d) = &peer {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn speed_section(data: &Path) {
    println!("## Mono tracker speed and latency (10 ms chunks)\n");
    let synth = data.join("synth");
    let mut files = audio_files(&synth, "mono");
    if files.is_empty() {
        // Without the shared set, time whatever dev set was named.
        if let Some(dir) = std::env::var("HARK_NOTES_SETS").ok().and_then(|s| {
            s.split(',').next().and_then(|i| {
                i.split_once('=')?
                    .1
                    .split_once(':')
                    .map(|d| PathBuf::from(d.0))
            })
        }) {
            files = audio_files(&dir, "");
        }
    }
    if files.is_empty() {
        println!("(no audio: skipped)\n");
        return;
    }
    let audio: Vec<(PathBuf, Vec<f32>)> = files.iter().map(|p| (p.clone(), decode(p))).collect();
    let total_s: f64 = audio.iter().map(|(_, x)| x.len() as f64 / SR as f64).sum();
    let trackers = trackers();
    // Wall time, and CPU time of every thread: the voice gate's network runs its matrix
    // products on a thread pool, so its wall time alone would understate what it costs.
    println!(
        "| tracker | audio | files | real-time factor | share of one core (wall) | CPU time (all threads) |"
    );
    println!("|---|---|---|---|---|---|");
    for (how, m) in &trackers {
        let mut best = f64::MAX;
        let mut best_cpu = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let cpu = process_cpu_s();
            for (_, x) in &audio {
                let mut tr = MonoTracker::build(MonoParams::default(), m.clone());
                for c in x.chunks(CHUNK) {
                    std::hint::black_box(tr.push(c));
                }
                std::hint::black_box(tr.finish());
            }
            best = best.min(t.elapsed().as_secs_f64());
            best_cpu = best_cpu.min(process_cpu_s() - cpu);
        }
        let rtf = best / total_s;
        println!(
            "| {how} | {:.1} s | {} | {rtf:.4} | {:.2} % | {:.2} % of one core |",
            total_s,
            audio.len(),
            rtf * 100.0,
            best_cpu / total_s * 100.0
        );
    }
    println!();

    // Latency: when (in stream time) each note came out, against the end of the reference note
    // it matches (onset and pitch), and against the end the tracker gives the note. The
    // reference end is the MIDI note-off: a note followed by a rest sounds on through its
    // release (100-500 ms on these patches), and no tracker can end it before the sound stops;
    // the note's own end is where the tracker heard it stop (or the next note begin).
    // The last tracker is the daemon's default.
    let (how, model) = trackers.last().expect("the rules at least").clone();
    println!(
        "Note out ({how}; stream position at emission) after the reference note-off, and after the note's own end, matched notes:\n"
    );
    println!("| file | matched | mean ms | p50 ms | p90 ms | after own end: p50 ms | p90 ms |");
    println!("|---|---|---|---|---|---|---|");
    let mut all = Vec::new();
    let mut all_own = Vec::new();
    for (p, x) in &audio {
        let Some(refs) = reference(&p.parent().unwrap().join("notes"), p) else {
            continue;
        };
        let mut tr = MonoTracker::build(MonoParams::default(), model.clone());
        let mut out: Vec<(Note, f64)> = Vec::new();
        let mut pos = 0usize;
        for c in x.chunks(CHUNK) {
            pos += c.len();
            let at = pos as f64 / SR as f64;
            out.extend(tr.push(c).notes.into_iter().map(|n| (n, at)));
        }
        let at = pos as f64 / SR as f64;
        out.extend(tr.finish().notes.into_iter().map(|n| (n, at)));
        let est: Vec<Note> = out.iter().map(|o| o.0).collect();
        let tol = Tolerances {
            offset_ratio: None,
            ..Tolerances::default()
        };
        let matched = eval::match_notes(&refs, &est, &tol);
        let mut d: Vec<f64> = matched
            .iter()
            .map(|&(r, e)| (out[e].1 - refs[r].end) * 1000.0)
            .collect();
        let mut own: Vec<f64> = matched
            .iter()
            .map(|&(_, e)| (out[e].1 - est[e].end) * 1000.0)
            .collect();
        d.sort_by(f64::total_cmp);
        own.sort_by(f64::total_cmp);
        if d.is_empty() {
            continue;
        }
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            stem(p),
            d.len(),
            d.iter().sum::<f64>() / d.len() as f64,
            percentile(&d, 0.5),
            percentile(&d, 0.9),
            percentile(&own, 0.5),
            percentile(&own, 0.9)
        );
        all.extend(d);
        all_own.extend(own);
    }
    all_own.sort_by(f64::total_cmp);
    all.sort_by(f64::total_cmp);
    if !all.is_empty() {
        println!(
            "| **all** | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            all.len(),
            all.iter().sum::<f64>() / all.len() as f64,
            percentile(&all, 0.5),
            percentile(&all, 0.9),
            percentile(&all_own, 0.5),
            percentile(&all_own, 0.9)
        );
    }
    println!();
}

fn main() {
    // SAFETY: no other thread exists yet.
    unsafe { hark::nn::prepare_process() };
    let data = data_dir();
    println!("# hark note transcription bench\n");
    mono_section(&data);
    poly_section(&data);
    speed_section(&data);
}
