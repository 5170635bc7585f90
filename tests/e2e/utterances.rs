//! Utterances and phrase search end to end, with the real tiny.en weights: a long-form
//! recording (16 LJ Speech sentences, 1.8 min) is streamed over `StreamAudio`; the `utterance`
//! events must tile the transcript and equal the finals; then sentences' phrases are searched
//! over the socket and with `hark search`. Skips with a message when the model or
//! ../shared/data is absent.

use std::time::Duration;

use crate::harness::{Daemon, hark_cli, load_16k, normalise, shared_data, tiny_en};
use hark::api::pb::{self, event::Kind};

/// Streams `samples` (16 kHz) as one session, as fast as it takes them (StreamAudio is
/// flow-controlled, so nothing is dropped); returns its finals, its utterances and the
/// session's name.
async fn stream(
    daemon: &Daemon,
    samples: &[f32],
) -> (Vec<pb::Transcript>, Vec<pb::Utterance>, String) {
    let kinds = vec![
        pb::EventKind::Transcript as i32,
        pb::EventKind::Utterance as i32,
    ];
    let events = tokio::time::timeout(
        Duration::from_secs(600),
        crate::stream_file_kinds(daemon, samples.to_vec(), 0.0, kinds),
    )
    .await
    .expect("events stopped")
    .expect("StreamAudio");
    let (mut finals, mut utterances, mut name) = (Vec::new(), Vec::new(), String::new());
    for e in events {
        name = e.stream.clone();
        match e.kind {
            Some(Kind::Transcript(t)) if t.is_final => finals.push(t),
            Some(Kind::Utterance(u)) => utterances.push(u),
            _ => {}
        }
    }
    (finals, utterances, name)
}

fn words(s: &str) -> Vec<String> {
    normalise(s).split(' ').map(str::to_string).collect()
}

/// A 4-6 word phrase of `sentence` that the transcript has (tiny.en misses a few words of
/// the set; a phrase it misheard cannot be found and says nothing about search), that crosses
/// a boundary between two finals (the case fragment rows could not find), and that lies
/// inside one utterance (a search looks inside one). Longest first, then earliest.
fn phrase_across_finals(
    sentence: &str,
    hyp: &[String],
    boundaries: &[usize],
    utterance_ends: &[usize],
) -> Option<String> {
    let reference = words(sentence);
    for len in (4..=6).rev() {
        for w in reference.windows(len) {
            if w.iter().any(|x| x.chars().any(|c| c.is_ascii_digit())) {
                continue;
            }
            let found = hyp.windows(len).enumerate().find(|(_, h)| h == &w);
            if let Some((at, _)) = found
                && boundaries.iter().any(|&b| b > at && b < at + len)
                && !utterance_ends.iter().any(|&b| b > at && b < at + len)
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
    let (finals, utterances, session) = stream(&daemon, &samples).await;
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
    let ends = |texts: Vec<&str>| -> Vec<usize> {
        texts
            .iter()
            .scan(0, |n, t| {
                *n += normalise(t).split_whitespace().count();
                Some(*n)
            })
            .collect()
    };
    let boundaries = ends(finals.iter().map(|t| t.text.as_str()).collect());
    let utterance_ends = ends(utterances.iter().map(|u| u.text.as_str()).collect());
    let sentences: Vec<String> =
        std::fs::read_to_string(longform.join("lj001_0001-0016.segments.tsv"))
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| l.split('\t').nth(3).map(str::to_string))
            .collect();
    let phrases: Vec<String> = sentences
        .iter()
        .filter_map(|s| phrase_across_finals(s, &hyp, &boundaries, &utterance_ends))
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

/// A transcript store written by the previous harkd (schema 0: one row per streaming final,
/// `tests/fixtures/store/v0_longform.db`, from streaming the long-form file). Phrases across
/// two of its rows were not findable; the daemon migrates the store on start, and they are.
///
/// The fixture was made with harkd at commit bbfccff:
/// `harkd run --source file:../shared/data/speech/longform/lj001_0001-0016.flac --fast
/// --exit-on-end --config C` with `[transcribe] enabled = "on"` and `[store] path = ".../v0.db"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_the_previous_version_is_migrated_and_phrases_across_its_rows_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    std::fs::copy(
        crate::harness::repo().join("tests/fixtures/store/v0_longform.db"),
        &db,
    )
    .unwrap();
    // The old rows, and phrases that cross two neighbours: the last two words of one row and
    // the first three of the next, where one sentence goes on (as the migration joins them).
    let rows: Vec<(String, i64, i64)> = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0, "the fixture is a schema 0 store");
        let mut stmt = conn
            .prepare(
                "SELECT text, start_sample, end_sample FROM segments ORDER BY start_sample, id",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(rows.len() > 30, "{} rows", rows.len());
    // Pairs of neighbouring rows in one sentence, and a phrase across each: the last two
    // words of one and the first three of the next.
    let mut pairs = Vec::new();
    for pair in rows.windows(2) {
        let (a, b) = (words(&pair[0].0), words(&pair[1].0));
        let ends_sentence = pair[0].0.trim_end().ends_with(['.', '?', '!']);
        if a.len() >= 2 && b.len() >= 3 && !ends_sentence && pair[1].1 - pair[0].2 <= 16_000 {
            let phrase = [&a[a.len() - 2..], &b[..3]].concat().join(" ");
            pairs.push((format!("{} {}", a.join(" "), b.join(" ")), phrase));
        }
    }
    let old_hits = |phrase: &str| -> i64 {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(
            "SELECT count(*) FROM segments_fts WHERE segments_fts MATCH ?1",
            [format!("\"{phrase}\"")],
            |r| r.get(0),
        )
        .unwrap()
    };
    for (_, p) in &pairs {
        assert_eq!(
            old_hits(p),
            0,
            "{p:?} was already findable in the old store"
        );
    }
    let old_text = normalise(
        &rows
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );

    let daemon = Daemon::start(
        &["--source", "none"],
        Some(&format!("[store]\npath = \"{}\"\n", db.display())),
    );
    let mut client = daemon.client().await;
    // The daemon has migrated the store: the pairs it joined into one utterance (not those
    // a pause of over a second or the 30 s cap kept apart) must now be found by phrase.
    let utterances: Vec<String> = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut stmt = conn.prepare("SELECT text FROM utterances").unwrap();
        stmt.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|t| normalise(&t.unwrap()))
            .collect()
    };
    let phrases: Vec<&String> = pairs
        .iter()
        .filter(|(joined, _)| utterances.iter().any(|u| u.contains(joined.as_str())))
        .map(|(_, p)| p)
        .collect();
    assert!(
        phrases.len() >= 8,
        "{} of {} pairs joined",
        phrases.len(),
        pairs.len()
    );
    for p in phrases.iter().take(8) {
        let hits = client
            .search(pb::SearchRequest {
                query: format!("\"{p}\""),
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert!(
            hits.iter().any(|h| normalise(&h.text).contains(p.as_str())
                && h.utterance_id >= 1
                && h.stream == "main"),
            "{p:?} -> {hits:?}"
        );
    }
    drop(client);
    drop(daemon);
    // Nothing was lost: the utterances hold the old rows' words, in order.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, hark::store::SCHEMA_VERSION);
    let texts: Vec<String> = conn
        .prepare("SELECT text FROM utterances ORDER BY start_sample")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        texts.len() < rows.len() / 2,
        "{} utterances from {} rows",
        texts.len(),
        rows.len()
    );
    assert_eq!(normalise(&texts.join(" ")), old_text);
}
