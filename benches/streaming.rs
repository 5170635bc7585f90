//! Live transcription as a user sees it: the release `harkd` with every stage (VAD, Whisper
//! streaming, level, transcript store) on the long-form file played at real-time pace, watched
//! over gRPC. Prints streaming WER against the offline `Transcribe` RPC on the same daemon and
//! the same audio, and per-word latency from the end of the word in the audio to the first
//! event that shows it (interim or final) and to its final.
//!
//! ```sh
//! cargo bench --bench streaming               # long-form file (~2 min)
//! HARK_STREAM_FILE=tests/fixtures/jfk.flac cargo bench --bench streaming
//! HARK_STREAM_CONFIG='streaming.min_encode_s = 30.0' cargo bench --bench streaming
//! HARK_BENCH_LOG=hark::stages::transcribe=trace HARK_STREAM_TRACE=1 cargo bench --bench streaming
//! ```
//!
//! `HARK_STREAM_CONFIG` is added to the `[transcribe]` table of the daemon's config.
//!
//! Needs an installed model (`harkd models fetch tiny.en`) and `../shared/data`; skips with a
//! message otherwise. Targets: streaming WER <= offline WER x 1.15; median latency to the first
//! interim <= 1.5 s and to the final <= 3.0 s.

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use hark::api::{
    client::{ConnectOptions, connect},
    pb::{self, event::Kind},
};
use hark::nn::whisper::text;

/// A word as an event showed it: normalised text, audio end (s), event wall time (us).
#[derive(Clone)]
struct Seen {
    word: String,
    end_s: f64,
    wall_us: i64,
}

fn norm(w: &str) -> String {
    text::normalize(w).join(" ")
}

fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = hark::models::default_models_dir().join("tiny.en");
    if !model.join("model.safetensors").is_file() {
        println!(
            "streaming bench skipped: no model at {} (run `harkd models fetch tiny.en`)",
            model.display()
        );
        return;
    }
    let file = std::env::var_os("HARK_STREAM_FILE")
        .map(|f| repo.join(f))
        .unwrap_or_else(|| repo.join("../shared/data/speech/longform/lj001_0001-0016.flac"));
    if !file.is_file() {
        println!("streaming bench skipped: {} is absent", file.display());
        return;
    }
    let reference = std::fs::read_to_string(file.with_extension("txt")).ok();

    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("harkd.sock");
    let config = dir.path().join("harkd.toml");
    std::fs::write(
        &config,
        format!(
            "[transcribe]\nenabled = \"on\"\n{}\n[level]\nenabled = true\n[store]\npath = \"{}\"\n",
            std::env::var("HARK_STREAM_CONFIG").unwrap_or_default(),
            dir.path().join("t.db").display()
        ),
    )
    .expect("write config");
    let mut child = common::spawn_harkd(&config, &sock, &file);
    let pid = child.id();
    let addr = format!("unix:{}", sock.display());
    let mut client = None;
    for _ in 0..200 {
        if let Ok(c) = connect(&addr, &ConnectOptions::default()).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("harkd did not come up");

    let result = run(&mut client, &file, reference.as_deref(), pid).await;
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    if let Err(e) = result {
        println!("streaming bench failed: {e}");
        std::process::exit(1);
    }
}

/// Watches the daemon's real-time file source until it ends, then asks for the offline
/// transcript of the same file.
async fn run(
    client: &mut hark::api::client::Client,
    file: &Path,
    reference: Option<&str>,
    pid: u32,
) -> Result<(), String> {
    let mut sub = client
        .subscribe(pb::SubscribeRequest {
            kinds: vec![
                pb::EventKind::Transcript as i32,
                pb::EventKind::Source as i32,
            ],
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let cpu0 = common::cpu_seconds(pid).unwrap_or(0.0);
    let wall0 = std::time::Instant::now();
    let stream_name = "main";
    let mut first_seen: Vec<Seen> = Vec::new();
    let mut finals: Vec<Seen> = Vec::new();
    let mut final_text = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(600), sub.message())
            .await
            .map_err(|_| "no events for 10 minutes".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("subscription ended")?;
        if e.stream != stream_name {
            continue;
        }
        match e.kind {
            Some(Kind::Transcript(t)) => {
                if std::env::var_os("HARK_STREAM_TRACE").is_some() {
                    eprintln!(
                        "{:>7.2} s  {} {:.2}-{:.2} {:?}",
                        (e.wall_time_unix_us - e.stream_start_unix_us) as f64 / 1e6,
                        if t.is_final { "final  " } else { "interim" },
                        t.start_s,
                        t.end_s,
                        t.text
                    );
                }
                // Audio times map to wall time through the stream's start (when its sample 0
                // was read, as for a microphone).
                for w in &t.words {
                    let s = Seen {
                        word: norm(&w.word),
                        end_s: w.end_s,
                        wall_us: e.wall_time_unix_us - e.stream_start_unix_us,
                    };
                    if t.is_final {
                        finals.push(s.clone());
                    }
                    first_seen.push(s);
                }
                if t.is_final {
                    final_text.push(t.text.clone());
                }
            }
            Some(Kind::SourceEnded(_)) => break,
            _ => {}
        }
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = common::cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner();

    let rss_streaming = common::status_kb(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0;
    // Offline reference on the now idle daemon: the Transcribe RPC on the same audio.
    let audio = std::fs::read(file).map_err(|e| e.to_string())?;
    let t0 = std::time::Instant::now();
    let offline = client
        .transcribe(pb::TranscribeRequest {
            audio,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let offline_s = t0.elapsed().as_secs_f64();
    let reference = reference.unwrap_or(&offline.text).to_string();
    let duration_s = offline.duration_s;

    // Latency per final word: to its final, and to the first event showing the same word
    // (same text, end within 0.8 s: re-decodes move word times by a few hundred ms).
    let mut to_final = Vec::new();
    let mut to_first = Vec::new();
    for f in &finals {
        let audio_end_us = f.end_s * 1e6;
        to_final.push((f.wall_us as f64 - audio_end_us) / 1e6);
        let first = first_seen
            .iter()
            .filter(|s| s.word == f.word && (s.end_s - f.end_s).abs() < 0.8)
            .map(|s| s.wall_us)
            .min()
            .unwrap_or(f.wall_us);
        to_first.push((first as f64 - audio_end_us) / 1e6);
    }
    let streamed = final_text.join(" ");
    let (se, sn) = text::word_errors(&reference, &streamed);
    let (oe, on) = text::word_errors(&reference, &offline.text);
    let swer = 100.0 * se as f64 / sn.max(1) as f64;
    let ower = 100.0 * oe as f64 / on.max(1) as f64;
    let dropped: u64 = status.stages.iter().map(|s| s.dropped_samples).sum();
    println!(
        "streaming bench: {} ({duration_s:.0} s) read by harkd at real-time pace, stages: {}",
        file.file_name().unwrap_or_default().to_string_lossy(),
        status
            .stages
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\n| measurement | value | target |\n|---|---|---|");
    println!(
        "| offline WER (Transcribe RPC, {offline_s:.1} s) | {ower:.1}% | |\n| streaming WER | \
         {swer:.1}% ({:.2}x offline) | <= 1.15x |",
        swer / ower.max(1e-9)
    );
    println!(
        "| latency word end -> first shown, median / p90 | {:.2} s / {:.2} s | <= 1.5 s |",
        percentile(&to_first, 0.5),
        percentile(&to_first, 0.9)
    );
    println!(
        "| latency word end -> final, median / p90 | {:.2} s / {:.2} s | <= 3.0 s |",
        percentile(&to_final, 0.5),
        percentile(&to_final, 0.9)
    );
    println!(
        "| words final | {} | |\n| audio dropped by stages | {dropped} samples | 0 |",
        finals.len()
    );
    println!(
        "| harkd CPU while streaming | {:.0}% of one core | |\n| harkd peak RSS streaming / after the offline RPC | {rss_streaming:.0} MB / {:.0} MB | <= 400 MB |",
        100.0 * cpu / wall,
        common::status_kb(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0
    );
    println!("\nstreamed text: {streamed}");
    Ok(())
}
