//! End-to-end tests: the real `harkd` binary, real gRPC over a real socket, real audio.

mod adapt;
mod device_loss;
mod fleet;
mod hardening;
mod harness;
mod mic;
mod notes;
mod pipeline_failure;
mod python_client;
mod service;
mod sound;
mod train_sound;
mod train_wake;
mod transcribe;
mod tts;
mod utterances;
mod wake;

use std::{collections::BTreeSet, time::Duration};

use hark::api::pb::{self, event::Kind};
use harness::{Daemon, load_16k, repo, write_wav};
use tokio_stream::StreamExt as _;
use tonic::Code;

const RATE: f32 = 16_000.0;

/// Start/end (seconds) of the audible part of an utterance: 10 ms frames within 25 dB of the
/// loudest frame (the recordings' own noise floor sits 30-35 dB down).
fn active_span(samples: &[f32]) -> (f32, f32) {
    let energies: Vec<f32> = samples
        .chunks(160)
        .map(|c| c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32)
        .collect();
    let peak = energies.iter().cloned().fold(0.0, f32::max);
    let thr = peak * 10f32.powf(-2.5);
    let first = energies.iter().position(|&e| e > thr).unwrap_or(0);
    let last = energies.iter().rposition(|&e| e > thr).unwrap_or(0);
    (first as f32 * 0.01, (last + 1) as f32 * 0.01)
}

/// A timeline: quiet gaps (faint noise, as a real room) around two real utterances. Returns the
/// samples and the true (start, end) of speech in seconds.
fn speech_timeline() -> (Vec<f32>, Vec<(f32, f32)>) {
    let mut seed = 12345u32;
    let mut noise = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 * 2e-3 - 1e-3
            })
            .collect()
    };
    let mut out = noise((1.5 * RATE) as usize);
    let mut truth = Vec::new();
    for (i, f) in ["goforward.flac", "LJ001-0002.flac"].iter().enumerate() {
        let utt = load_16k(&repo().join("tests/fixtures").join(f));
        let (s, e) = active_span(&utt);
        let offset = out.len() as f32 / RATE;
        truth.push((offset + s, offset + e));
        let bed = noise(utt.len());
        out.extend(utt.iter().zip(bed).map(|(a, b)| a + b));
        let gap = if i == 0 { 2.5 } else { 1.5 };
        out.extend(noise((gap * RATE) as usize));
    }
    (out, truth)
}

async fn collect_until_source_ended(
    mut stream: tonic::Streaming<pb::Event>,
    stream_name: Option<&str>,
) -> Vec<pb::Event> {
    let mut events = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("events stopped arriving")
    {
        let e = e.expect("stream error");
        let end = matches!(e.kind, Some(Kind::SourceEnded(_)))
            && stream_name.is_none_or(|n| e.stream == n);
        events.push(e);
        if end {
            break;
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vad_events_arrive_at_the_right_times_from_a_file_source() {
    let (audio, truth) = speech_timeline();
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("timeline.wav");
    write_wav(&wav, &audio);
    let source = format!("file:{}", wav.display());
    let daemon = Daemon::start(&["--source", &source], None);
    let mut client = daemon.client().await;
    let stream = client
        .subscribe(pb::SubscribeRequest {
            kinds: vec![pb::EventKind::Vad as i32, pb::EventKind::Source as i32],
        })
        .await
        .unwrap()
        .into_inner();
    let events = collect_until_source_ended(stream, Some("main")).await;
    let starts: Vec<&pb::Event> = events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::SpeechStarted(_))))
        .collect();
    let ends: Vec<&pb::Event> = events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::SpeechEnded(_))))
        .collect();
    assert_eq!(starts.len(), truth.len(), "events: {events:#?}");
    assert_eq!(ends.len(), truth.len(), "events: {events:#?}");
    for ((s, e), (ts, te)) in starts.iter().zip(&ends).zip(&truth) {
        let (s_t, e_t) = (s.stream_time_s as f32, e.stream_time_s as f32);
        assert!(
            (s_t - ts).abs() <= 0.15,
            "onset {s_t:.3} s vs truth {ts:.3} s"
        );
        assert!(
            (e_t - te).abs() <= 0.30,
            "offset {e_t:.3} s vs truth {te:.3} s"
        );
        assert_eq!(s.sample, (s.stream_time_s * 16_000.0).round() as u64);
        // Real-time source: each event reaches us soon after its audio was captured.
        for ev in [s, e] {
            let audio_at = ev.stream_start_unix_us + (ev.stream_time_s * 1e6) as i64;
            let lag_s = (ev.wall_time_unix_us - audio_at) as f64 / 1e6;
            assert!(
                (-0.05..2.0).contains(&lag_s),
                "event published {lag_s:.3} s after its audio"
            );
        }
    }
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq not increasing: {seqs:?}"
    );
}

/// Streams a file through StreamAudio at `speed` x real time (0 = as fast as possible).
async fn stream_file(
    daemon: &Daemon,
    samples: Vec<f32>,
    speed: f32,
) -> Result<Vec<pb::Event>, tonic::Status> {
    stream_file_kinds(daemon, samples, speed, vec![]).await
}

/// As [`stream_file`], asking for `kinds` only (empty: all); returns the session's events up to
/// and including its `SourceEnded`.
async fn stream_file_kinds(
    daemon: &Daemon,
    samples: Vec<f32>,
    speed: f32,
    kinds: Vec<i32>,
) -> Result<Vec<pb::Event>, tonic::Status> {
    let mut client = daemon.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::AudioChunk {
        payload: Some(pb::audio_chunk::Payload::Config(pb::AudioConfig {
            sample_rate: 16_000,
            channels: 1,
            encoding: pb::AudioEncoding::PcmS16le as i32,
            kinds,
        })),
    })
    .await
    .unwrap();
    tokio::spawn(async move {
        for chunk in samples.chunks(1600) {
            let bytes: Vec<u8> = chunk
                .iter()
                .flat_map(|s| ((s * 32767.0) as i16).to_le_bytes())
                .collect();
            let msg = pb::AudioChunk {
                payload: Some(pb::audio_chunk::Payload::Data(bytes)),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
            if speed > 0.0 {
                tokio::time::sleep(Duration::from_secs_f32(0.1 / speed)).await;
            }
        }
    });
    let mut out = client
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = out.message().await? {
        let end = matches!(e.kind, Some(Kind::SourceEnded(_)));
        events.push(e);
        if end {
            break;
        }
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_subscribers_receive_every_event_in_order() {
    let daemon = Daemon::start(&["--source", "none", "--level"], None);
    let mut subs = Vec::new();
    for _ in 0..64 {
        let mut c = daemon.client().await;
        let s = c
            .subscribe(pb::SubscribeRequest { kinds: vec![] })
            .await
            .unwrap()
            .into_inner();
        subs.push(tokio::spawn(collect_until_source_ended(s, None)));
    }
    let audio = load_16k(&repo().join("tests/fixtures/jfk.flac"));
    let returned = stream_file(&daemon, audio, 0.0).await.unwrap();
    let expected: Vec<u64> = returned.iter().map(|e| e.seq).collect();
    assert!(
        returned.len() > 100,
        "jfk at 100 ms levels gives > 100 events"
    );
    assert!(
        returned
            .iter()
            .any(|e| matches!(e.kind, Some(Kind::SpeechStarted(_)))),
        "no speech found in jfk"
    );
    for (i, s) in subs.into_iter().enumerate() {
        let got = s.await.unwrap();
        assert!(
            got.iter().all(|e| !matches!(e.kind, Some(Kind::Gap(_)))),
            "subscriber {i} lagged"
        );
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, expected, "subscriber {i} saw a different sequence");
        assert_eq!(got, returned, "subscriber {i} saw different events");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_gets_a_gap_while_others_get_everything() {
    let Some(data) = harness::shared_data() else {
        return;
    };
    let config = "[level]\nenabled = true\nwindow_ms = 10\n[pipeline]\nbus_capacity = 512\n[server]\nsubscriber_buffer = 8\n";
    let daemon = Daemon::start(&["--source", "none"], Some(config));
    let mut c1 = daemon.client().await;
    let normal = c1
        .subscribe(pb::SubscribeRequest { kinds: vec![] })
        .await
        .unwrap()
        .into_inner();
    let normal = tokio::spawn(collect_until_source_ended(normal, None));
    // A client that stops reading: small HTTP/2 windows so the daemon notices within ~64 KB.
    let mut c2 = hark::api::client::connect(
        &daemon.addr,
        &hark::api::client::ConnectOptions {
            window_bytes: Some(65_535),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut stalled = c2
        .subscribe(pb::SubscribeRequest { kinds: vec![] })
        .await
        .unwrap()
        .into_inner();
    // 108 s of speech at 20x real time: ~11k level events in ~5 s.
    let audio = load_16k(&data.join("speech/longform/lj001_0001-0016.flac"));
    let returned = stream_file(&daemon, audio, 20.0).await.unwrap();
    let normal = normal.await.unwrap();
    assert!(normal.iter().all(|e| !matches!(e.kind, Some(Kind::Gap(_)))));
    assert_eq!(normal, returned, "the reading subscriber missed events");
    // Now read the stalled one: it must have been told what it lost, exactly.
    let mut received = 0u64;
    let mut missed = 0u64;
    let mut gaps = 0;
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), stalled.message())
            .await
            .expect("stalled subscriber got nothing")
            .unwrap()
            .expect("stream ended");
        match &e.kind {
            Some(Kind::Gap(g)) => {
                gaps += 1;
                missed += g.missed;
            }
            Some(Kind::SourceEnded(_)) => {
                received += 1;
                break;
            }
            _ => received += 1,
        }
    }
    assert!(gaps >= 1, "no Gap for the stalled subscriber");
    assert_eq!(
        received + missed,
        normal.len() as u64,
        "received + missed must account for every event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_rejected_and_the_daemon_stays_up() {
    let mut daemon = Daemon::start(
        &["--source", "none"],
        Some("[server]\nmax_message_bytes = 65536\n"),
    );
    let mut client = daemon.client().await;
    let call = |msgs: Vec<pb::AudioChunk>| {
        let mut client = client.clone();
        async move {
            let r = client.stream_audio(tokio_stream::iter(msgs)).await;
            match r {
                Err(s) => s,
                Ok(resp) => {
                    let mut s = resp.into_inner();
                    loop {
                        match s.message().await {
                            Err(st) => break st,
                            Ok(None) => panic!("stream ended without an error"),
                            Ok(Some(_)) => {}
                        }
                    }
                }
            }
        }
    };
    let config = |rate, channels, enc: pb::AudioEncoding| pb::AudioChunk {
        payload: Some(pb::audio_chunk::Payload::Config(pb::AudioConfig {
            sample_rate: rate,
            channels,
            encoding: enc as i32,
            kinds: vec![],
        })),
    };
    let data = |b: Vec<u8>| pb::AudioChunk {
        payload: Some(pb::audio_chunk::Payload::Data(b)),
    };
    let s16 = pb::AudioEncoding::PcmS16le;
    let cases: Vec<(&str, Vec<pb::AudioChunk>, Code)> = vec![
        (
            "data before config",
            vec![data(vec![0; 320])],
            Code::InvalidArgument,
        ),
        ("empty stream", vec![], Code::InvalidArgument),
        ("rate 0", vec![config(0, 1, s16)], Code::InvalidArgument),
        (
            "10000 channels",
            vec![config(16000, 10000, s16)],
            Code::InvalidArgument,
        ),
        (
            "no encoding",
            vec![config(16000, 1, pb::AudioEncoding::Unspecified)],
            Code::InvalidArgument,
        ),
        (
            "half a sample",
            vec![config(16000, 1, s16), data(vec![0; 321])],
            Code::InvalidArgument,
        ),
        (
            "NaN samples",
            vec![
                config(16000, 1, pb::AudioEncoding::PcmF32le),
                data(f32::NAN.to_le_bytes().repeat(160)),
            ],
            Code::InvalidArgument,
        ),
        (
            "second config",
            vec![config(16000, 1, s16), config(16000, 1, s16)],
            Code::InvalidArgument,
        ),
        (
            "oversized chunk",
            vec![config(16000, 1, s16), data(vec![0; 4 * 1024 * 1024])],
            Code::ResourceExhausted,
        ),
    ];
    for (name, msgs, code) in cases {
        let status = call(msgs).await;
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(!status.message().is_empty(), "{name}: no message");
    }
    let err = client
        .subscribe(pb::SubscribeRequest { kinds: vec![99] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Garbage bytes on the socket: the connection dies, the daemon does not.
    let path = daemon.addr.strip_prefix("unix:").unwrap().to_string();
    {
        use std::io::Write as _;
        let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let _ = raw.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(4096));
    }
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("daemon answers after bad input")
        .into_inner();
    assert!(status.uptime_s > 0.0);
    // A good session still works after all that.
    let ok = stream_file(&daemon, vec![0.0; 16_000], 0.0).await.unwrap();
    assert!(matches!(
        ok.last().and_then(|e| e.kind.as_ref()),
        Some(Kind::SourceEnded(_))
    ));
    assert!(daemon.is_running(), "{}", daemon.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let src = format!("file:{}", repo().join("tests/fixtures/jfk.flac").display());
    let mut daemon = Daemon::start(&["--source", &src], None);
    let mut client = daemon.client().await;
    let stream = client
        .subscribe(pb::SubscribeRequest {
            kinds: vec![pb::EventKind::Source as i32],
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = std::time::Instant::now();
    daemon.signal(libc::SIGTERM);
    let events = collect_until_source_ended(stream, Some("main")).await;
    assert!(matches!(
        events.last().and_then(|e| e.kind.as_ref()),
        Some(Kind::SourceEnded(_))
    ));
    let status = daemon
        .wait(Duration::from_secs(5))
        .expect("no exit within 5 s");
    assert!(status.success(), "exit status {status}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// SIGHUP's default action kills a process: harkd catches it from before its socket accepts
/// anyone, with or without a model to reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_never_kills_the_daemon() {
    let mut daemon = Daemon::start(&["--source", "none"], None);
    let mut client = daemon.client().await;
    daemon.signal(libc::SIGHUP);
    daemon.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(daemon.is_running(), "{}", daemon.log_text());
    client.get_status(pb::GetStatusRequest {}).await.unwrap();
    assert!(
        daemon.log_text().contains("nothing to reload"),
        "{}",
        daemon.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_health_and_reflection_work_without_the_proto_file() {
    let src = format!("file:{}", repo().join("tests/fixtures/jfk.flac").display());
    let daemon = Daemon::start_raw(&["--listen", "127.0.0.1:0", "--source", &src, "--fast"]);
    assert!(daemon.addr.starts_with("127.0.0.1:"), "{}", daemon.addr);
    let mut client = daemon.client().await;
    // Fast file: wait until it has been processed.
    let mut status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    for _ in 0..100 {
        if status.event_counts.contains_key("source_ended") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = client
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
    }
    assert!(status.source.starts_with("file:"), "{}", status.source);
    assert_eq!(status.samples_processed, 176_000, "11 s of 16 kHz audio");
    assert_eq!(status.stages.len(), 1);
    assert_eq!(status.stages[0].name, "vad");
    assert_eq!(status.stages[0].dropped_samples, 0);
    assert!(status.stages[0].windows_processed > 300);
    assert!(status.event_counts["speech_started"] >= 1);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", daemon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "hark.v1.Hark".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains("hark.v1.Hark"), "{names:?}");
    assert!(names.contains("grpc.health.v1.Health"), "{names:?}");
}

#[test]
fn hark_cli_streams_a_file_and_prints_json_lines() {
    let daemon = Daemon::start(&["--source", "none"], None);
    let out = std::process::Command::new(harness::hark_cli())
        .args(["--addr", &daemon.addr, "stream", "--fast", "--json"])
        .arg(repo().join("tests/fixtures/jfk.flac"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["kind"].as_str()).collect();
    assert!(kinds.contains(&"speech_started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"source_ended"));
    assert!(lines.iter().all(|l| l["t"].is_f64()));
    let status = std::process::Command::new(harness::hark_cli())
        .args(["--addr", &daemon.addr, "status"])
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("source    none"));
}

#[test]
fn validate_rejects_bad_config_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[vad]\naggressiveness = 9\n").unwrap();
    let out = std::process::Command::new(harness::harkd())
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("aggressiveness"));
    let good = dir.path().join("good.toml");
    let defaults = std::process::Command::new(harness::harkd())
        .arg("print-config")
        .output()
        .unwrap();
    std::fs::write(&good, &defaults.stdout).unwrap();
    let out = std::process::Command::new(harness::harkd())
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_file_source_is_a_clear_startup_error() {
    let out = std::process::Command::new(harness::harkd())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--source",
            "file:/nonexistent.flac",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.flac"));
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wav");
    std::fs::write(&junk, b"RIFF\0\0\0\0WAVEjunkjunkjunk").unwrap();
    let out = std::process::Command::new(harness::harkd())
        .args(["run", "--listen", "127.0.0.1:0", "--source"])
        .arg(format!("file:{}", junk.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.wav"));
}
