//! Soak: harkd for an hour (`HARK_SOAK_S`, default 3600) with transcription on, a real
//! long-form recording pushed in a loop at real-time pace over StreamAudio, subscribers joining
//! and leaving every 20 s, and a one-shot Transcribe every 30 s. Prints a table: RSS at start,
//! every 10 minutes and at the end; events lost by the permanent subscriber (gaps); finals it
//! received against finals in the store.
//!
//! `cargo bench --profile dev --bench soak` (needs tiny.en and ../shared/data).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hark::api::{
    client::{ConnectOptions, connect},
    pb::{self, event::Kind},
};

fn rss_mb(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let long = repo.join("../shared/data/speech/longform/lj001_0001-0016.flac");
    if !long.is_file() || !hark::models::default_models_dir().join("tiny.en").is_dir() {
        eprintln!("SKIP: needs ../shared/data and the tiny.en model");
        return;
    }
    let secs: u64 = std::env::var("HARK_SOAK_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3600);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let db = dir.path().join("t.db");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[transcribe]\nenabled = \"on\"\n[store]\npath = \"{}\"\n",
            db.display()
        ),
    )
    .unwrap();
    // A copy of the binary can be given, so that rebuilding during the hour does not touch it.
    let harkd = std::env::var("HARK_SOAK_HARKD").unwrap_or(env!("CARGO_BIN_EXE_harkd").into());
    let mut child = Command::new(harkd)
        .args(["run", "--source", "none", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .env("HARK_BUNDLED_MODELS", dir.path().join("none"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let addr = format!("unix:{}", sock.display());
    let mut client = loop {
        if let Ok(c) = connect(&addr, &ConnectOptions::default()).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let audio = hark::audio::file::decode_file_16k(&long).unwrap();
    let jfk = std::fs::read(repo.join("tests/fixtures/jfk.flac")).unwrap();

    // The permanent subscriber: counts finals and gaps.
    let finals = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(AtomicU64::new(0));
    let mut sub = client
        .subscribe(pb::SubscribeRequest { kinds: vec![] })
        .await
        .unwrap()
        .into_inner();
    let (f2, g2) = (finals.clone(), gaps.clone());
    tokio::spawn(async move {
        while let Ok(Some(e)) = sub.message().await {
            match e.kind {
                Some(Kind::Transcript(t)) if t.is_final => {
                    f2.fetch_add(1, Ordering::Relaxed);
                }
                Some(Kind::Gap(g)) => {
                    g2.fetch_add(g.missed, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });

    // The source: the recording in a loop at real-time pace, 100 ms chunks.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::AudioChunk {
        payload: Some(pb::audio_chunk::Payload::Config(pb::AudioConfig {
            sample_rate: 16_000,
            channels: 1,
            encoding: pb::AudioEncoding::PcmF32le as i32,
            kinds: vec![pb::EventKind::Source as i32],
        })),
    })
    .await
    .unwrap();
    let mut session = client
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = session.message().await {} });
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let feeder = tokio::spawn(async move {
        let mut pos = 0usize;
        let mut sent = 0u64;
        while Instant::now() < until {
            let chunk: Vec<u8> = (0..1600)
                .flat_map(|i| audio[(pos + i) % audio.len()].to_le_bytes())
                .collect();
            pos = (pos + 1600) % audio.len();
            if tx
                .send(pb::AudioChunk {
                    payload: Some(pb::audio_chunk::Payload::Data(chunk)),
                })
                .await
                .is_err()
            {
                break;
            }
            sent += 1600;
            let due = started + Duration::from_secs_f64(sent as f64 / 16_000.0);
            tokio::time::sleep_until(due.into()).await;
        }
        sent
    });

    println!("| minute | RSS MB | finals received | gaps | one-shot ok | subscribers cycled |");
    println!("|---|---|---|---|---|---|");
    let rss_start = rss_mb(pid);
    println!("| 0 | {rss_start:.0} | 0 | 0 | 0 | 0 |");
    let mut oneshot_ok = 0u64;
    let mut cycled = 0u64;
    let mut tick = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(10)).await;
        tick += 1;
        if tick.is_multiple_of(2) {
            // A subscriber joins, reads for a while in the background, and leaves.
            let mut c = client.clone();
            tokio::spawn(async move {
                if let Ok(r) = c.subscribe(pb::SubscribeRequest { kinds: vec![] }).await {
                    let mut s = r.into_inner();
                    let end = Instant::now() + Duration::from_secs(15);
                    while Instant::now() < end {
                        if tokio::time::timeout(Duration::from_secs(1), s.message())
                            .await
                            .is_err()
                        {
                            continue;
                        }
                    }
                }
            });
            cycled += 1;
        }
        if tick.is_multiple_of(3) {
            let r = client
                .transcribe(pb::TranscribeRequest {
                    audio: jfk.clone(),
                    ..Default::default()
                })
                .await;
            if r.is_ok() {
                oneshot_ok += 1;
            }
        }
        if tick.is_multiple_of(60) {
            println!(
                "| {} | {:.0} | {} | {} | {oneshot_ok} | {cycled} |",
                tick / 6,
                rss_mb(pid),
                finals.load(Ordering::Relaxed),
                gaps.load(Ordering::Relaxed)
            );
        }
    }
    let sent = feeder.await.unwrap();
    // Let the session flush its last finals.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rss_end = rss_mb(pid);
    let received = finals.load(Ordering::Relaxed);
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let stored = hark::store::Store::open(&db).unwrap().count().unwrap();
    println!(
        "| end ({:.0} min, {:.0} s of audio) | {rss_end:.0} | {received} | {} | {oneshot_ok} | {cycled} |",
        started.elapsed().as_secs_f64() / 60.0,
        sent as f64 / 16_000.0,
        gaps.load(Ordering::Relaxed)
    );
    println!(
        "\nRSS start {rss_start:.0} MB, end {rss_end:.0} MB; events lost (gaps) {}; finals \
         received {received}, stored {stored} (one-shot results are not stored); daemon \
         event counts {:?}",
        gaps.load(Ordering::Relaxed),
        status.event_counts
    );
}
