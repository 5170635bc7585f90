//! Utterances and phrase search end to end, with the real tiny.en weights: a long-form
//! recording (16 LJ Speech sentences, 1.8 min) is streamed over `StreamAudio`; the `utterance`
//! events must tile the transcript and equal the finals; then sentences' phrases are searched
//! over the socket and with `hark search`. Skips with a message when the model or
//! ../shared/data is absent.

use std::time::Duration;

use crate::harness::{Daemon, hark_cli, load_16k, normalise, shared_data, tiny_en};
use hark::api::pb::{self, event::Kind};

/// Streams `samples` (16 kHz) as one session; returns its finals, its utterances and the
/// session's name.
async fn stream(
    client: &mut hark::api::client::Client,
    samples: &[f32],
) -> (Vec<pb::Transcript>, Vec<pb::Utterance>, String) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::AudioChunk {
        payload: Some(pb::audio_chunk::Payload::Config(pb::AudioConfig {
            sample_rate: 16_000,
            channels: 1,
            encoding: pb::AudioEncoding::PcmS16le as i32,
            kinds: vec![
                pb::EventKind::Transcript as i32,
                pb::EventKind::Utterance as i32,
            ],
        })),
    })
    .await
    .unwrap();
    let samples = samples.to_vec();
    // As fast as the session takes it: StreamAudio is flow-controlled, so nothing is dropped.
    tokio::spawn(async move {
        for chunk in samples.chunks(8_000) {
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
        }
    });
    let mut out = client
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut finals, mut utterances, mut name) = (Vec::new(), Vec::new(), String::new());
    while let Some(e) = tokio::time::timeout(Duration::from_secs(600), out.message())
        .await
        .expect("events stopped")
        .unwrap()
    {
        name = e.stream.clone();
        match e.kind {
            Some(Kind::Transcript(t)) if t.is_final => finals.push(t),
            Some(Kind::Utterance(u)) => utterances.push(u),
            Some(Kind::SourceEnded(_)) => break,
            _ => {}
        }
    }
    (finals, utterances, name)
}

fn words(s: &str) -> Vec<String> {
    normalise(s).split(' ').map(str::to_string).collect()
}

/// A 4-6 word phrase of `sentence` that the transcript has (tiny.en misses a few words of
/// the set; a phrase it misheard cannot be found and says nothing about search) and that
/// crosses a boundary between two finals (the case fragment rows could not find). Longest
/// first, then earliest.
fn phrase_across_finals(sentence: &str, hyp: &[String], boundaries: &[usize]) -> Option<String> {
    let reference = words(sentence);
    for len in (4..=6).rev() {
        for w in reference.windows(len) {
            if w.iter().any(|x| x.chars().any(|c| c.is_ascii_digit())) {
                continue;
            }
            let found = hyp.windows(len).enumerate().find(|(_, h)| h == &w);
            if let Some((at, _)) = found
                && boundaries.iter().any(|&b| b > at && b < at + len)
            {
                return Some(w.join(" "));
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utterances_tile_a_long_recording_and_phrase_search_finds_its_sentences() {
    let Some(data) = shared_data() else {
        return;
    };
    if !tiny_en() {
        return;
    }
    let longform = data.join("speech/longform");
    let samples = load_16k(&longform.join("lj001_0001-0016.flac"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[transcribe]\nenabled = \"on\"\n[store]\npath = \"{}\"\n",
        dir.path().join("t.db").display()
    );
    let daemon = Daemon::start(&["--source", "none"], Some(&cfg));
    let mut client = daemon.client().await;
    let (finals, utterances, session) = stream(&mut client, &samples).await;
    assert!(finals.len() > 20, "{} finals", finals.len());

    // Utterances: ids 1, 2, ... in order, without gaps or overlaps, each the concatenation of
    // the finals that carry its id; together they are the whole transcript.
    for u in &utterances {
        eprintln!(
            "utterance {} {:.2}-{:.2} ({}): {}",
            u.id, u.start_s, u.end_s, u.reason, u.text
        );
    }
    // The recording has 7 sentence ends; an utterance is at most 30 s.
    assert!(
        utterances.len() >= 4 && utterances.len() < finals.len(),
        "{} utterances for {} finals",
        utterances.len(),
        finals.len()
    );
    for (i, u) in utterances.iter().enumerate() {
        assert_eq!(u.id, i as u64 + 1, "{u:?}");
        let own: Vec<&pb::Transcript> = finals.iter().filter(|t| t.utterance_id == u.id).collect();
        assert!(!own.is_empty(), "utterance {} has no finals", u.id);
        let joined = own
            .iter()
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(normalise(&u.text), normalise(&joined), "utterance {}", u.id);
        assert_eq!(u.start_s, own[0].start_s);
        assert_eq!(u.end_s, own[own.len() - 1].end_s);
        assert_eq!(
            u.words.len(),
            own.iter().map(|t| t.words.len()).sum::<usize>()
        );
        assert!(u.start_s <= u.end_s);
        if let Some(next) = utterances.get(i + 1) {
            assert!(u.end_s <= next.start_s, "overlap: {u:?} / {next:?}");
        }
    }
    assert!(
        finals
            .iter()
            .all(|t| t.utterance_id >= 1 && t.utterance_id <= utterances.len() as u64),
        "a final outside every utterance"
    );
    let all_finals = normalise(
        &finals
            .iter()
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    let all_utterances = normalise(
        &utterances
            .iter()
            .map(|u| u.text.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    assert_eq!(all_finals, all_utterances);
    // Finals are in order, so utterances that follow each other in id follow each other in
    // time: the ids of the finals never go back.
    assert!(
        finals
            .windows(2)
            .all(|w| w[0].utterance_id <= w[1].utterance_id)
    );

    // Phrase search: for 8 sentences, a 4-6 word phrase that crosses two finals.
    let hyp: Vec<String> = all_finals.split(' ').map(str::to_string).collect();
    let mut boundaries = Vec::new();
    let mut n = 0;
    for t in &finals {
        n += normalise(&t.text).split_whitespace().count();
        boundaries.push(n);
    }
    let sentences: Vec<String> =
        std::fs::read_to_string(longform.join("lj001_0001-0016.segments.tsv"))
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| l.split('\t').nth(3).map(str::to_string))
            .collect();
    let phrases: Vec<String> = sentences
        .iter()
        .filter_map(|s| phrase_across_finals(s, &hyp, &boundaries))
        .take(8)
        .collect();
    assert_eq!(
        phrases.len(),
        8,
        "phrases found: {phrases:?}\ntranscript: {all_finals}"
    );
    for phrase in &phrases {
        let hits = client
            .search(pb::SearchRequest {
                query: format!("\"{phrase}\""),
                limit: 5,
                context: 0,
                stream: session.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        let h = hits
            .iter()
            .find(|h| normalise(&h.text).contains(phrase.as_str()))
            .unwrap_or_else(|| panic!("{phrase:?} not found: {hits:?}"));
        // The match is marked as one span in the whole utterance.
        let marked: Vec<&str> = h
            .highlighted
            .match_indices('[')
            .map(|(i, _)| &h.highlighted[i..])
            .collect();
        assert!(
            marked
                .iter()
                .any(|m| normalise(&m[..m.find(']').unwrap_or(m.len())]) == *phrase),
            "{phrase:?} highlighted as {:?}",
            h.highlighted
        );
        assert!(h.utterance_id >= 1);
    }

    // The same from the command line: the phrase as one shell argument, filtered by stream
    // and by a time window around now.
    let out = std::process::Command::new(hark_cli())
        .args([
            "--addr",
            &daemon.addr,
            "search",
            &phrases[0],
            "--stream",
            &session,
        ])
        .args(["--since", "1h", "--until", "now", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !lines.is_empty(),
        "hark search found nothing for {:?}",
        phrases[0]
    );
    assert!(lines[0]["highlighted"].as_str().unwrap().contains('['));
    // A window in the past finds nothing; another stream finds nothing.
    for extra in [&["--until", "1h"][..], &["--stream", "main"][..]] {
        let out = std::process::Command::new(hark_cli())
            .args(["--addr", &daemon.addr, "search", &phrases[0], "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout.is_empty(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
