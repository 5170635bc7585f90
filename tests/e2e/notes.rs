//! Notes end to end over a real socket: a rendered melody streamed into harkd yields `note`
//! events in order; TranscribeNotes returns a MIDI file that parses back to its notes (mono and
//! poly); `hark notes --render --reverse` writes the reversed sequence; silence and the shared
//! noise beds yield (almost) no notes; bad uploads get a clear error; a phone's M4A (AAC) upload
//! is transcribed like the FLAC it was made from.

use crate::{
    harness::{Daemon, hark_cli, load_16k, repo, shared_data},
    stream_file,
};
use hark::{
    api::pb,
    notes::{Note, eval, io, midi},
};
use pb::event::Kind;
use tonic::Code;

const MELODY: &str = "music/synth/mono08_bach_bwv101.7_soprano_piano.flac";
const MELODY_NOTES: &str = "music/synth/notes/mono08_bach_bwv101.7_soprano_piano.tsv";

fn notes_of(r: &[pb::Note]) -> Vec<Note> {
    r.iter()
        .map(|n| Note {
            midi: n.midi as u8,
            cents: n.cents,
            start: n.start,
            end: n.end,
            velocity: n.velocity as u8,
            confidence: n.confidence,
        })
        .collect()
}

/// The first `secs` of the shared melody and its reference notes that start in it.
fn melody(secs: f64) -> Option<(Vec<f32>, Vec<Note>)> {
    let data = shared_data()?;
    let mut audio = load_16k(&data.join(MELODY));
    audio.truncate((secs * 16_000.0) as usize);
    let reference = io::read_notes(&data.join(MELODY_NOTES)).expect("reference notes");
    let reference = reference
        .notes
        .into_iter()
        .filter(|n| n.start < secs - 0.3)
        .collect();
    Some((audio, reference))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_melody_yields_note_events_in_order() {
    let Some((audio, reference)) = melody(12.0) else {
        return;
    };
    let daemon = Daemon::start(
        &["--source", "none"],
        Some("[store]\nenabled = false\n[notes]\nenabled = true\nemit_pitch = true\n"),
    );
    let events = stream_file(&daemon, audio, 0.0).await.expect("StreamAudio");
    let notes: Vec<pb::Note> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Note(n)) => Some(n.clone()),
            _ => None,
        })
        .collect();
    let published: Vec<f64> = events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::Note(_))))
        .map(|e| e.stream_time_s)
        .collect();
    assert!(
        notes.windows(2).all(|w| w[0].start <= w[1].start),
        "not in order: {notes:#?}"
    );
    // Each note is published after it ends, and within 300 ms of its end.
    for (n, at) in notes.iter().zip(&published) {
        assert!(*at >= n.end - 1e-3 && *at - n.end < 0.3, "{n:?} at {at}");
    }
    let got = notes_of(&notes);
    let s = eval::evaluate(&reference, &got, false);
    assert!(s.f1 >= 0.9, "F1 {:.3}: {got:#?}", s.f1);
    // The bundled note-onset detector cut these notes (not only the fallback rules).
    assert!(
        daemon.log_text().contains("Note onsets: the detector"),
        "{}",
        daemon.log_text()
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, Some(Kind::Pitch(p)) if p.voiced)),
        "no pitch events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcribe_notes_returns_midi_that_round_trips_and_refuses_bad_uploads() {
    // `[notes]` keeps the bundled Basic Pitch model visible (the harness hides bundled models).
    let daemon = Daemon::start(
        &["--source", "none"],
        Some("[store]\nenabled = false\n[notes]\nmode = \"mono\"\n"),
    );
    let mut client = daemon.client().await;
    for bad in [b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk".to_vec(), Vec::new()] {
        let err = client
            .transcribe_notes(pb::TranscribeNotesRequest {
                audio: bad,
                raw: None,
                mode: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let err = client
        .transcribe_notes(pb::TranscribeNotesRequest {
            audio: b"x".to_vec(),
            raw: None,
            mode: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let Some(data) = shared_data() else { return };
    for (file, mode, min_f1) in [
        (MELODY, pb::NotesMode::Mono, 0.9),
        (
            "music/synth/poly01_bach_bwv66.6_piano.flac",
            pb::NotesMode::Poly,
            0.7,
        ),
    ] {
        let r = client
            .transcribe_notes(pb::TranscribeNotesRequest {
                audio: std::fs::read(data.join(file)).unwrap(),
                raw: None,
                mode: mode as i32,
            })
            .await
            .expect("TranscribeNotes")
            .into_inner();
        assert_eq!(r.mode, mode as i32);
        let got = notes_of(&r.notes);
        let back = midi::from_smf_bytes(&r.midi, std::path::Path::new("answer.mid"))
            .expect("the MIDI answer parses");
        assert_eq!(back.len(), got.len(), "{file}");
        for (a, b) in back.iter().zip(&got) {
            assert_eq!(a.midi, b.midi, "{file}");
            assert!((a.start - b.start).abs() < 0.002 && (a.end - b.end).abs() < 0.002);
            assert_eq!(a.velocity, b.velocity);
        }
        let stem = std::path::Path::new(file).file_stem().unwrap();
        let refs = io::read_notes(
            &data
                .join("music/synth/notes")
                .join(format!("{}.tsv", stem.to_string_lossy())),
        )
        .unwrap()
        .notes;
        let s = eval::evaluate(&refs, &got, false);
        assert!(s.f1 >= min_f1, "{file}: F1 {:.3}", s.f1);
    }

    // What a phone records: the melody's first 4 s as AAC in an M4A (made with ffmpeg, 48 kb/s).
    let (_, reference) = melody(4.0).expect("shared data");
    let r = client
        .transcribe_notes(pb::TranscribeNotesRequest {
            audio: std::fs::read(repo().join("tests/fixtures/melody_aac.m4a")).unwrap(),
            raw: None,
            mode: pb::NotesMode::Mono as i32,
        })
        .await
        .expect("TranscribeNotes on an M4A")
        .into_inner();
    let s = eval::evaluate(&reference, &notes_of(&r.notes), false);
    assert!(s.f1 >= 0.9, "M4A: F1 {:.3}: {:?}", s.f1, r.notes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hark_notes_renders_the_tune_and_its_reverse() {
    let Some(data) = shared_data() else { return };
    let daemon = Daemon::start(&["--source", "none"], Some("[store]\nenabled = false\n"));
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(hark_cli())
            .args(["--addr", &daemon.addr])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let file = data.join(MELODY);
    let file = file.to_str().unwrap();
    let fwd_json = run(&["notes", file, "--json"]);
    let fwd: Vec<Note> =
        io::parse_json(&fwd_json, std::path::Path::new("stdout")).expect("JSON notes");
    assert!(fwd.len() > 20, "{fwd_json}");
    let (rev_wav, rev_mid) = (tmp.path().join("rev.wav"), tmp.path().join("rev.mid"));
    let rev_json = run(&[
        "notes",
        file,
        "--json",
        "--reverse",
        "--render",
        rev_wav.to_str().unwrap(),
        "--midi",
        rev_mid.to_str().unwrap(),
    ]);
    let rev: Vec<Note> = io::parse_json(&rev_json, std::path::Path::new("stdout")).unwrap();
    // The reversed sequence: same notes, last first, mirrored in time.
    let pitches: Vec<u8> = fwd.iter().map(|n| n.midi).collect();
    let mut back: Vec<u8> = rev.iter().map(|n| n.midi).collect();
    back.reverse();
    assert_eq!(pitches, back);
    let total = fwd.last().unwrap().end.max(rev.last().unwrap().end);
    for (f, r) in fwd.iter().zip(rev.iter().rev()) {
        assert!((r.start - (total - f.end)).abs() < 0.5, "{f:?} vs {r:?}");
    }
    assert_eq!(midi::read(&rev_mid).unwrap().len(), rev.len());
    // The render plays the reversed tune: transcribing it gives the reversed pitches.
    let rendered = hark::audio::file::decode_file_16k(&rev_wav).expect("a WAV");
    assert!(rendered.len() > 16_000 * 10);
    let est: Vec<Note> =
        hark::notes::track::transcribe_mono(&rendered, &Default::default(), Default::default());
    let heard: Vec<u8> = est.iter().map(|n| n.midi).collect();
    let rev_pitches: Vec<u8> = rev.iter().map(|n| n.midi).collect();
    let s = eval::evaluate(&rev, &est, false);
    assert!(
        s.f1 >= 0.8,
        "render of the reverse heard as {heard:?}, sent {rev_pitches:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_and_noise_beds_yield_few_notes() {
    let daemon = Daemon::start(&["--source", "none"], Some("[store]\nenabled = false\n"));
    let mut client = daemon.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let silence = tmp.path().join("silence.wav");
    crate::harness::write_wav(&silence, &vec![0.0; 16_000 * 10]);
    let r = client
        .transcribe_notes(pb::TranscribeNotesRequest {
            audio: std::fs::read(&silence).unwrap(),
            raw: None,
            mode: pb::NotesMode::Mono as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let Some(data) = shared_data() else { return };
    let manifest = std::fs::read_to_string(data.join("noise/manifest.tsv")).unwrap();
    let (mut notes, mut minutes) = (0usize, 0.0f64);
    for line in manifest.lines().skip(1) {
        let file = line.split('\t').next().unwrap();
        // Beds of music are music: their notes are right, not false alarms.
        if line.to_ascii_lowercase().contains("music") || !file.contains('.') {
            continue;
        }
        let path = data.join("noise").join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let r = client
            .transcribe_notes(pb::TranscribeNotesRequest {
                audio: bytes,
                raw: None,
                mode: pb::NotesMode::Mono as i32,
            })
            .await
            .expect("noise bed")
            .into_inner();
        notes += r.notes.len();
        minutes += r.duration_s / 60.0;
    }
    let rate = notes as f64 / minutes.max(1e-9);
    eprintln!("noise beds: {notes} notes in {minutes:.1} min ({rate:.1} per minute)");
    assert!(minutes > 1.0, "no noise beds read");
    assert!(rate < 20.0, "{rate:.1} notes per minute on noise");
}
