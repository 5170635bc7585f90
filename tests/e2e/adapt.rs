//! Whisper adapters end to end: an adapter trained by `hark-train whisper-adapt` with its
//! defaults (the fixture `tests/fixtures/adapt/bess`: LoRA r8 on tiny.en's decoder, taught
//! "Bess" from 15 synthetic clips, word-scoped) is swapped in with `ReloadModel` while audio
//! streams, compared with its base through `Transcribe`'s model field, and broken adapters are
//! refused while the old model keeps serving. The test sentences are spoken by voices the
//! adapter never heard (flite and festival's `slt`). Needs the real tiny.en weights; skips when
//! they are absent.

use std::{path::Path, time::Duration};

use crate::harness::{Daemon, load_16k, normalise, repo};
use hark::api::pb::{self, event::Kind};
use tonic::Code;

/// A models directory holding tiny.en (a link to the installed one), the fixture adapter, a
/// broken copy (NaN weights), and a copy that failed its regression gate.
fn models_dir(root: &Path) -> Option<std::path::PathBuf> {
    let tiny = hark::models::default_models_dir().join("tiny.en");
    if !tiny.join("model.safetensors").is_file() {
        eprintln!("SKIP: no tiny.en model (run `harkd models fetch tiny.en`)");
        return None;
    }
    let models = root.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::os::unix::fs::symlink(&tiny, models.join("tiny.en")).unwrap();
    let fixture = repo().join("tests/fixtures/adapt/bess");
    for name in ["bess", "broken", "unready"] {
        let d = models.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter.json", "adapter.safetensors"] {
            std::fs::copy(fixture.join(f), d.join(f)).unwrap();
        }
    }
    // Broken: one LoRA factor full of NaN (what a diverged run would write).
    let path = models.join("broken/adapter.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let name = tensors.keys().next()?.clone();
    let t = &tensors[&name];
    let nan = (t.to_dtype(candle_core::DType::F32).unwrap() * f64::NAN).unwrap();
    tensors.insert(name, nan);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    // Unready: the gate said no.
    let meta_path = models.join("unready/adapter.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["ready"] = false.into();
    meta["gate"] = "failed: regression WER 5.00% -> 7.00% (+2.00 points, limit 0.50)".into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    Some(models)
}

fn config(models: &Path) -> String {
    format!(
        "[transcribe]\nenabled = \"on\"\nmodel = \"tiny.en\"\nmodels_dir = \"{}\"\n[store]\nenabled = false\n",
        models.display()
    )
}

async fn transcribe(client: &mut hark::api::client::Client, audio: &[u8], model: &str) -> String {
    client
        .transcribe(pb::TranscribeRequest {
            audio: audio.to_vec(),
            model: model.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .text
}

async fn status(client: &mut hark::api::client::Client) -> pb::WhisperModelStatus {
    client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .whisper
        .expect("whisper status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_adapter_hears_the_new_name_mid_stream_and_broken_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(models) = models_dir(dir.path()) else {
        return;
    };
    let daemon = Daemon::start(&["--source", "none"], Some(&config(&models)));
    let mut client = daemon.client().await;
    let bess_file = repo().join("tests/fixtures/adapt/bess_sentences.flac");
    let bess_bytes = std::fs::read(&bess_file).unwrap();

    // Side by side: the base model does not know the name, the adapter does.
    let base = normalise(&transcribe(&mut client, &bess_bytes, "").await);
    let adapted = normalise(&transcribe(&mut client, &bess_bytes, "bess").await);
    assert!(!base.contains("bess"), "base already says bess: {base:?}");
    assert_eq!(
        adapted.matches("bess").count(),
        3,
        "adapter transcript: {adapted:?} (base: {base:?})"
    );
    let s = status(&mut client).await;
    assert_eq!(
        s.name, "tiny.en",
        "a one-shot model must not change the active one"
    );
    // The adapter decides only the tokens of its word: speech without the name comes out as
    // the base model writes it.
    let jfk_bytes = std::fs::read(repo().join("tests/fixtures/jfk.flac")).unwrap();
    assert_eq!(
        transcribe(&mut client, &jfk_bytes, "bess").await,
        transcribe(&mut client, &jfk_bytes, "").await
    );

    // Stream JFK, swap to the adapter while it plays, then the sentences with the name.
    let jfk = load_16k(&repo().join("tests/fixtures/jfk.flac"));
    let bess = load_16k(&bess_file);
    let mut samples = jfk.clone();
    samples.extend(std::iter::repeat_n(0.0, 16_000));
    let swap_at = samples.len();
    samples.extend(&bess);
    samples.extend(std::iter::repeat_n(0.0, 32_000));
    let total = samples.len() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::AudioChunk {
        payload: Some(pb::audio_chunk::Payload::Config(pb::AudioConfig {
            sample_rate: 16_000,
            channels: 1,
            encoding: pb::AudioEncoding::PcmS16le as i32,
            kinds: vec![
                pb::EventKind::Transcript as i32,
                pb::EventKind::Source as i32,
            ],
        })),
    })
    .await
    .unwrap();
    let mut reloader = daemon.client().await;
    let feeder = tokio::spawn(async move {
        let mut reloaded = None;
        for (i, chunk) in samples.chunks(1600).enumerate() {
            if i * 1600 >= swap_at && reloaded.is_none() {
                // Mid-stream, between the two parts: audio keeps flowing during the load.
                let r = reloader
                    .reload_model(pb::ReloadModelRequest {
                        model: "bess".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                reloaded = Some(r);
            }
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
            // Faster than real time, but paced, so the swap happens while audio is queued.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        reloaded
    });
    let mut out = client
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut finals = Vec::new();
    let mut ended_at = None;
    while let Some(e) = tokio::time::timeout(Duration::from_secs(180), out.message())
        .await
        .expect("events stopped")
        .unwrap()
    {
        match e.kind {
            Some(Kind::Transcript(t)) if t.is_final => finals.push(t),
            Some(Kind::SourceEnded(_)) => {
                ended_at = Some(e.sample);
                break;
            }
            _ => {}
        }
    }
    let reloaded = feeder.await.unwrap().expect("the swap happened");
    let active = reloaded.active.unwrap();
    assert_eq!(active.name, "bess");
    assert_eq!(reloaded.previous, "tiny.en");
    assert!(active.description.contains("tiny.en"), "{active:?}");
    // No audio lost: the session's clock reached the end of what was sent.
    assert_eq!(ended_at, Some(total), "stream clock at the end");
    let text = normalise(
        &finals
            .iter()
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    for w in ["ask", "country", "fellow"] {
        assert!(text.contains(w), "speech before the swap lost: {text:?}");
    }
    assert!(
        text.matches("bess").count() >= 2,
        "the adapter's name is missing from the finals: {text:?}"
    );
    let starts: Vec<f64> = finals.iter().map(|t| t.start_s).collect();
    assert!(starts.windows(2).all(|p| p[0] <= p[1]), "{starts:?}");

    // Broken adapters: refused with the reason, and the adapter keeps serving.
    let err = client
        .reload_model(pb::ReloadModelRequest {
            model: "broken".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("NaN"), "{err:?}");
    let err = client
        .reload_model(pb::ReloadModelRequest {
            model: "unready".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("regression gate"), "{err:?}");
    let err = client
        .reload_model(pb::ReloadModelRequest {
            model: "no-such-model".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = client
        .reload_model(pb::ReloadModelRequest {
            model: "../tiny.en".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let s = status(&mut client).await;
    assert_eq!(s.name, "bess");
    assert!(s.last_reload_error.contains("NaN") || !s.last_reload_error.is_empty());
    let again = normalise(&transcribe(&mut client, &bess_bytes, "").await);
    assert_eq!(again, adapted, "the active adapter stopped serving");
    let err = client
        .transcribe(pb::TranscribeRequest {
            audio: bess_bytes.clone(),
            model: "broken".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_to_the_model_the_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let Some(models) = models_dir(dir.path()) else {
        return;
    };
    // `harkd models list` shows adapters as base + adapter, and which are not ready.
    let out = std::process::Command::new(crate::harness::harkd())
        .args(["models", "list", "--dir"])
        .arg(&models)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.contains("bess")
                && l.contains("tiny.en + lora r8 (Bess only) adapter, ready")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.contains("unready") && l.contains("NOT READY")),
        "{listing}"
    );
    let daemon = Daemon::start(&["--source", "none"], Some(&config(&models)));
    let mut client = daemon.client().await;
    assert_eq!(status(&mut client).await.name, "tiny.en");
    // The harness wrote the config beside the socket; point it at the adapter and hang up.
    let cfg_path = Path::new(&daemon.addr.trim_start_matches("unix:"))
        .parent()
        .unwrap()
        .join("harkd.toml");
    std::fs::write(
        &cfg_path,
        config(&models).replace("\"tiny.en\"", "\"bess\""),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    let mut active = String::new();
    for _ in 0..300 {
        active = status(&mut client).await.name;
        if active == "bess" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active, "bess", "SIGHUP did not swap the model");
    // A config naming a broken adapter: refused, the adapter keeps serving, harkd stays up.
    std::fs::write(
        &cfg_path,
        config(&models).replace("\"tiny.en\"", "\"broken\""),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    let mut err = String::new();
    for _ in 0..300 {
        err = status(&mut client).await.last_reload_error;
        if !err.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(err.contains("NaN"), "{err:?}");
    assert_eq!(status(&mut client).await.name, "bess");
}
