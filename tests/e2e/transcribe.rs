//! Transcription end to end with the real tiny.en weights (installed by `harkd models fetch
//! tiny.en`; `.ci/run` does it). Skips with a message when the model is absent.

use std::{path::PathBuf, time::Duration};

use crate::harness::{Daemon, JFK, normalise, repo};
use hark::api::pb::{self, event::Kind};
use tonic::Code;

fn model_dir() -> Option<PathBuf> {
    let dir = hark::models::default_models_dir().join("tiny.en");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: no tiny.en model at {} (run `harkd models fetch tiny.en`)",
            dir.display()
        );
        None
    }
}

/// Word error rate of `hyp` against `reference` (both normalised).
fn wer(reference: &str, hyp: &str) -> f64 {
    let r: Vec<&str> = reference.split_whitespace().collect();
    let h: Vec<&str> = hyp.split_whitespace().collect();
    let mut d: Vec<usize> = (0..=h.len()).collect();
    for i in 1..=r.len() {
        let mut prev = d[0];
        d[0] = i;
        for j in 1..=h.len() {
            let cur = d[j];
            d[j] = (prev + usize::from(r[i - 1] != h[j - 1]))
                .min(d[j] + 1)
                .min(d[j - 1] + 1);
            prev = cur;
        }
    }
    d[h.len()] as f64 / r.len().max(1) as f64
}

fn config(store: &std::path::Path) -> String {
    format!(
        "[transcribe]\nenabled = \"on\"\n[store]\npath = \"{}\"\n",
        store.display()
    )
}

/// A daemon with transcription on and no source (one-shot RPCs only), and its state directory.
fn rpc_only_daemon() -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &["--source", "none"],
        Some(&config(&dir.path().join("t.db"))),
    );
    (dir, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcribe_rpc_matches_the_reference_and_rejects_corrupt_audio() {
    if model_dir().is_none() {
        return;
    }
    let (_dir, daemon) = rpc_only_daemon();
    let mut client = daemon.client().await;
    let audio = std::fs::read(repo().join("tests/fixtures/jfk.flac")).unwrap();
    let r = client
        .transcribe(pb::TranscribeRequest {
            audio,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(normalise(&r.text), JFK, "{r:?}");
    assert_eq!(r.language, "en");
    assert!(!r.segments.is_empty());
    let words: Vec<&pb::Word> = r.segments.iter().flat_map(|s| &s.words).collect();
    assert!(!words.is_empty(), "word timestamps missing");
    assert!(words.windows(2).all(|w| w[0].start_s <= w[1].start_s));
    let err = client
        .transcribe(pb::TranscribeRequest {
            audio: b"RIFF\x10\x00\x00\x00WAVEfmt garbage garbage".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client
        .transcribe(pb::TranscribeRequest {
            audio: std::fs::read(repo().join("tests/fixtures/jfk.flac")).unwrap(),
            task: "translate".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "translate on an English-only model: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_source_yields_interim_and_final_transcripts_that_survive_kill_9() {
    if model_dir().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("t.db"));
    let src = format!("file:{}", repo().join("tests/fixtures/jfk.flac").display());
    let mut daemon = Daemon::start(&["--source", &src], Some(&cfg));
    let mut client = daemon.client().await;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            kinds: vec![
                pb::EventKind::Transcript as i32,
                pb::EventKind::Source as i32,
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let mut finals = Vec::new();
    let mut interims = 0;
    while let Some(e) = tokio::time::timeout(Duration::from_secs(120), stream.message())
        .await
        .expect("no events")
        .unwrap()
    {
        match e.kind {
            Some(Kind::Transcript(t)) if t.is_final => finals.push(t),
            Some(Kind::Transcript(_)) => interims += 1,
            Some(Kind::SourceEnded(_)) if e.stream == "main" => break,
            _ => {}
        }
    }
    assert!(interims > 0, "no interim results");
    let text: String = finals
        .iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let w = wer(JFK, &normalise(&text));
    assert!(w <= 0.15, "streaming WER {w:.3}: {text:?}");
    let starts: Vec<f64> = finals.iter().map(|t| t.start_s).collect();
    assert!(starts.windows(2).all(|p| p[0] <= p[1]), "{starts:?}");

    // Finals reach clients only after they are on disk: kill -9 loses none of them.
    daemon.signal(libc::SIGKILL);
    assert!(daemon.wait(Duration::from_secs(10)).is_some());
    let daemon = Daemon::start(&["--source", "none"], Some(&cfg));
    let mut client = daemon.client().await;
    let hits = client
        .search(pb::SearchRequest {
            query: "country".into(),
            limit: 10,
            context: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(
        !hits.is_empty(),
        "store lost the transcript across a restart"
    );
    assert!(hits.iter().all(|h| h.stream == "main"));
}

/// Non-speech that Whisper alone turned into words ("Uh-huh" for a dog bark, "Bye bye." for a
/// car horn) and footsteps: the `Transcribe` RPC returns nothing for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcribe_rpc_writes_no_words_over_noise() {
    let (Some(_), Some(data)) = (model_dir(), crate::harness::shared_data()) else {
        return;
    };
    let (_dir, daemon) = rpc_only_daemon();
    let mut client = daemon.client().await;
    for clip in [
        "urbansound8k/audio/fold1/101415-3-0-8.flac",
        "urbansound8k/audio/fold1/175845-1-0-0.flac",
        "noise/ambient/walking.flac",
    ] {
        let r = client
            .transcribe(pb::TranscribeRequest {
                audio: std::fs::read(data.join(clip)).unwrap(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.text, "", "{clip}: {r:?}");
        assert!(r.segments.is_empty(), "{clip}: {r:?}");
    }
}
