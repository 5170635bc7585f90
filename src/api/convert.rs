//! Conversions between domain types and protobuf messages, and the renderings of protobuf
//! events for people and scripts.
//!
//! Everything per kind is derived, so a new event kind is a domain variant in `events.rs` plus a
//! message in the proto's `Event.kind` oneof, and nothing here:
//! - **domain -> proto**: kinds without a hand-written arm in [`event_to_pb`] go through serde: the
//!   domain variant (internally tagged, snake_case) must be named like the oneof field and have
//!   fields named like the proto message's (`EventKind::Level { rms_dbfs, .. }` <-> `Level level`);
//! - **JSON lines** ([`pb_event_json`]): the common keys plus the proto message serialised by the
//!   serde derive that `build.rs` puts on generated types (f32 printed short: `0.9`);
//! - **kind filters** (`--kinds`, `SubscribeRequest.kinds`): a domain [`Category`] matches the
//!   proto `EventKind` of the same name (`Category::Vad` <-> `EVENT_KIND_VAD`);
//! - **human lines** ([`pb_event_line`]): custom text for the kinds people watch most, else the
//!   kind name and its JSON fields.

use std::collections::HashSet;

use serde::Serialize;
use tonic::Status;

use super::pb;
use crate::events::{Category, Event, EventKind, STREAM_RATE, unix_us};

/// Which events a stream wants.
#[derive(Debug, Clone, Default)]
pub struct KindFilter {
    /// Empty means everything.
    allowed: HashSet<Category>,
}

impl KindFilter {
    /// Parses the `kinds` field; unknown or unspecified values are rejected.
    pub fn from_pb(kinds: &[i32]) -> Result<Self, Status> {
        let mut allowed = HashSet::new();
        for &k in kinds {
            match pb::EventKind::try_from(k).ok().and_then(category_of) {
                Some(cat) => allowed.insert(cat),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "unknown event kind {k}; valid kinds: {}",
                        valid_kinds()
                    )));
                }
            };
        }
        Ok(Self { allowed })
    }

    pub fn matches(&self, e: &EventKind) -> bool {
        self.allowed.is_empty() || self.allowed.contains(&e.category())
    }
}

/// Prefix of the proto `EventKind` names; the rest is the category name in upper case.
const PB_KIND_PREFIX: &str = "EVENT_KIND_";

/// The domain category a proto `EventKind` stands for, matched by name.
fn category_of(k: pb::EventKind) -> Option<Category> {
    let name = k.as_str_name().strip_prefix(PB_KIND_PREFIX)?;
    Category::parse(&name.to_ascii_lowercase())
}

/// The proto `EventKind` of a domain category (None if the proto lacks it).
pub fn pb_kind(c: Category) -> Option<pb::EventKind> {
    pb::EventKind::from_str_name(&format!(
        "{PB_KIND_PREFIX}{}",
        c.name().to_ascii_uppercase()
    ))
}

/// The categories a client can ask for: those both the domain and the proto know.
fn known_kinds() -> impl Iterator<Item = (Category, pb::EventKind)> {
    Category::ALL
        .into_iter()
        .filter_map(|c| pb_kind(c).map(|k| (c, k)))
}

fn valid_kinds() -> String {
    known_kinds()
        .map(|(_, k)| format!("{} ({})", k.as_str_name(), k as i32))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names accepted by `--kinds` (`vad`, `level`, ...).
pub fn kind_names() -> Vec<&'static str> {
    known_kinds().map(|(c, _)| c.name()).collect()
}

/// Maps a CLI kind name (`vad`, `level`, `source`, `transcript`) to the protobuf enum.
pub fn kind_from_name(name: &str) -> Option<pb::EventKind> {
    pb_kind(Category::parse(name)?)
}

/// A `--kinds` name that no category has.
#[derive(Debug, thiserror::Error)]
#[error("unknown kind {name:?}; valid kinds: {}", kind_names().join(", "))]
pub struct UnknownKind {
    pub name: String,
}

/// Parses `--kinds` names (empty entries ignored) into `SubscribeRequest.kinds` values.
pub fn kinds_from_names<S: AsRef<str>>(names: &[S]) -> Result<Vec<i32>, UnknownKind> {
    names
        .iter()
        .map(|n| n.as_ref().trim())
        .filter(|n| !n.is_empty())
        .map(|n| {
            kind_from_name(n)
                .map(|k| k as i32)
                .ok_or_else(|| UnknownKind { name: n.into() })
        })
        .collect()
}

pub fn event_to_pb(e: &Event) -> pb::Event {
    use pb::event::Kind;
    let kind = match &e.kind {
        // Hand-written where the proto carries more than the domain variant (seconds next to
        // samples) or the types differ; every other kind is converted by name through serde.
        EventKind::SpeechEnded { start_sample } => Some(Kind::SpeechEnded(pb::SpeechEnded {
            start_sample: *start_sample,
            duration_s: e.sample.saturating_sub(*start_sample) as f64 / f64::from(STREAM_RATE),
        })),
        EventKind::DeviceRestored { outage } => Some(Kind::DeviceRestored(pb::DeviceRestored {
            outage_s: outage.as_secs_f64(),
        })),
        EventKind::Transcript(t) => Some(Kind::Transcript(transcript_to_pb(t))),
        EventKind::Utterance(u) => Some(Kind::Utterance(utterance_to_pb(u))),
        other => by_name(other),
    };
    pb::Event {
        seq: e.seq,
        sample: e.sample,
        stream_time_s: e.stream_time_s(),
        wall_time_unix_us: unix_us(e.wall),
        stream_start_unix_us: unix_us(e.stream_start),
        stream: e.stream.to_string(),
        kind,
    }
}

/// Domain kind -> proto oneof through their common serde form (`{"kind":"level","rms_dbfs":..}`).
/// f32 fields survive exactly (widened to f64 and narrowed back).
fn by_name(kind: &EventKind) -> Option<pb::event::Kind> {
    let converted = serde_json::to_value(kind).and_then(serde_json::from_value);
    match converted {
        Ok(k) => Some(k),
        Err(e) => {
            // A domain variant whose name or fields do not match its proto message: a bug that
            // the `every_domain_kind_converts` test catches for the kinds it builds.
            tracing::error!(kind = kind.name(), error = %e, "Event kind has no proto form.");
            None
        }
    }
}

/// Serialises a sample position as seconds (SpeechEnded's `start_t` JSON key).
pub fn serialize_samples_as_seconds<S: serde::Serializer>(
    sample: &u64,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_f64(secs(*sample))
}

fn secs(sample: u64) -> f64 {
    sample as f64 / f64::from(STREAM_RATE)
}

pub fn note_to_pb(n: &crate::events::NoteEvent) -> pb::Note {
    pb::Note {
        midi: n.midi,
        name: n.name.clone(),
        cents: n.cents,
        start: secs(n.start_sample),
        end: secs(n.end_sample),
        velocity: n.velocity,
        confidence: n.confidence,
    }
}

fn words_to_pb(words: &[crate::events::Word]) -> Vec<pb::Word> {
    words
        .iter()
        .map(|w| pb::Word {
            word: w.word.clone(),
            start_s: secs(w.start_sample),
            end_s: secs(w.end_sample),
            p: w.p,
        })
        .collect()
}

pub fn utterance_to_pb(u: &crate::events::Utterance) -> pb::Utterance {
    let reason = serde_json::to_value(u.reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    pb::Utterance {
        id: u.id,
        text: u.text.clone(),
        start_sample: u.start_sample,
        end_sample: u.end_sample,
        start_s: secs(u.start_sample),
        end_s: secs(u.end_sample),
        language: u.language.clone(),
        words: words_to_pb(&u.words),
        reason,
    }
}

pub fn transcript_to_pb(t: &crate::events::Transcript) -> pb::Transcript {
    pb::Transcript {
        text: t.text.clone(),
        is_final: t.is_final,
        stability: t.stability,
        start_sample: t.start_sample,
        end_sample: t.end_sample,
        start_s: secs(t.start_sample),
        end_s: secs(t.end_sample),
        language: t.language.clone(),
        words: words_to_pb(&t.words),
        utterance_id: t.utterance_id,
    }
}

/// The message telling a subscriber it lost `missed` events.
pub fn gap_event(missed: u64) -> pb::Event {
    pb::Event {
        wall_time_unix_us: unix_us(std::time::SystemTime::now()),
        kind: Some(pb::event::Kind::Gap(pb::Gap { missed })),
        ..Default::default()
    }
}

/// The JSON payload of an event: `kind` plus the proto message's fields, flattened into the line.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Payload<'a> {
    // Finals and interims have their own kind names, as in status counters.
    TranscriptFinal(&'a pb::Transcript),
    TranscriptInterim(&'a pb::Transcript),
    Unknown,
    // Every other kind as its oneof variant, which is tagged with the oneof field name.
    #[serde(untagged)]
    Other(&'a pb::event::Kind),
}

impl<'a> Payload<'a> {
    fn of(e: &'a pb::Event) -> Self {
        use pb::event::Kind;
        match &e.kind {
            Some(Kind::Transcript(t)) if t.is_final => Payload::TranscriptFinal(t),
            Some(Kind::Transcript(t)) => Payload::TranscriptInterim(t),
            Some(k) => Payload::Other(k),
            None => Payload::Unknown,
        }
    }
}

/// One JSON line: common keys + payload. Serialised straight to text, never through
/// `serde_json::Value`, which would widen f32 (0.9 -> 0.8999999761581421).
#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(flatten)]
    payload: Payload<'a>,
    t: f64,
    sample: u64,
    seq: u64,
    stream: &'a str,
    wall_us: i64,
}

/// One JSON object per event: kind, stream time in seconds, and the kind's fields.
pub fn pb_event_json(e: &pb::Event) -> String {
    let line = JsonLine {
        payload: Payload::of(e),
        t: e.stream_time_s,
        sample: e.sample,
        seq: e.seq,
        stream: &e.stream,
        wall_us: e.wall_time_unix_us,
    };
    serde_json::to_string(&line).unwrap_or_else(|err| {
        // Only a non-string map key or a failing custom serializer could get here.
        format!(r#"{{"kind":"unknown","error":{:?}}}"#, err.to_string())
    })
}

/// An event as `[export.nats]` publishes it: the `hark.v1.Event` message Subscribe sends, or
/// its JSON line.
pub fn export_body(e: &Event, format: crate::export::ExportFormat) -> Vec<u8> {
    use prost::Message as _;
    let pb = event_to_pb(e);
    match format {
        crate::export::ExportFormat::Protobuf => pb.encode_to_vec(),
        crate::export::ExportFormat::Json => pb_event_json(&pb).into_bytes(),
    }
}

/// The exporter's counters as the status message carries them.
pub fn export_status(s: &crate::export::ExportStats) -> pb::ExportStatus {
    use std::sync::atomic::Ordering::Relaxed;
    pb::ExportStatus {
        url: s.url.clone(),
        node: s.node.clone(),
        connected: s.connected.load(Relaxed),
        published: s.published.load(Relaxed),
        spooled_events: s.spooled_events.load(Relaxed),
        spooled_bytes: s.spooled_bytes.load(Relaxed),
        dropped: s.dropped.load(Relaxed),
        lag_events: s.lag_events.load(Relaxed),
        lag_s: s.lag_s(),
        last_error: s.last_error(),
    }
}

/// Stable name of a protobuf event's kind (as in JSON lines and status counters).
pub fn pb_kind_name(e: &pb::Event) -> String {
    #[derive(serde::Deserialize)]
    struct Tag {
        kind: String,
    }
    serde_json::to_string(&Payload::of(e))
        .ok()
        .and_then(|j| serde_json::from_str::<Tag>(&j).ok())
        .map_or_else(|| "unknown".into(), |t| t.kind)
}

/// A human-readable one-line rendering.
pub fn pb_event_line(e: &pb::Event) -> String {
    use pb::event::Kind;
    let what = match &e.kind {
        Some(Kind::SpeechStarted(_)) => "speech started".to_string(),
        Some(Kind::SpeechEnded(s)) => format!("speech ended ({:.2} s)", s.duration_s),
        Some(Kind::Level(l)) => format!(
            "level rms {:6.1} dBFS peak {:6.1} dBFS",
            l.rms_dbfs, l.peak_dbfs
        ),
        Some(Kind::DeviceLost(d)) => format!("device lost: {}", d.reason),
        Some(Kind::DeviceRestored(d)) => format!("device restored after {:.1} s", d.outage_s),
        Some(Kind::SourceEnded(s)) => format!("source ended: {}", s.reason),
        Some(Kind::Gap(g)) => return format!("!! fell behind: {} events missed", g.missed),
        Some(Kind::Transcript(t)) => format!(
            "{} {:.2}-{:.2}: {}",
            if t.is_final { "FINAL  " } else { "interim" },
            t.start_s,
            t.end_s,
            t.text.trim()
        ),
        Some(Kind::Utterance(u)) => format!(
            "UTTERANCE #{} {:.2}-{:.2} ({}): {}",
            u.id,
            u.start_s,
            u.end_s,
            u.reason,
            u.text.trim()
        ),
        // Kinds added after these were written: no code needed here for them.
        #[allow(unreachable_patterns)]
        Some(_) => generic_line(e),
        None => "unknown event".to_string(),
    };
    format!("[{:>9.2}s {}] {}", e.stream_time_s, e.stream, what)
}

/// `kind key=value ...` from the event's JSON payload, for kinds without a custom rendering.
fn generic_line(e: &pb::Event) -> String {
    let json = serde_json::to_string(&Payload::of(e)).unwrap_or_default();
    // Parsing the short text gives the f64 nearest to it, which prints short again.
    let mut fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json).unwrap_or_default();
    let kind = match fields.remove("kind") {
        Some(serde_json::Value::String(k)) => k,
        _ => "unknown".into(),
    };
    fields
        .into_iter()
        .fold(kind.replace('_', " "), |mut line, (k, v)| {
            use std::fmt::Write as _;
            let _ = match v {
                serde_json::Value::String(s) => write!(line, " {k}={s}"),
                v => write!(line, " {k}={v}"),
            };
            line
        })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, sync::Arc, time::Duration, time::SystemTime};

    use super::*;
    use crate::events::{Transcript, Word};

    fn event(sample: u64, kind: EventKind) -> Event {
        Event {
            seq: 7,
            sample,
            wall: SystemTime::now(),
            stream_start: SystemTime::now(),
            stream: Arc::from("main"),
            kind,
        }
    }

    fn keys(line: &str) -> BTreeSet<String> {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        v.keys().cloned().collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        ["kind", "t", "sample", "seq", "stream", "wall_us"]
            .iter()
            .chain(names)
            .map(|s| s.to_string())
            .collect()
    }

    // The keys clients parsed before JSON lines were derived from the proto (one case per kind).
    #[test]
    fn json_keys_of_every_kind_are_unchanged() {
        let transcript = |is_final| {
            EventKind::Transcript(Transcript {
                text: "hi there".into(),
                is_final,
                stability: 0.9,
                start_sample: 16_000,
                end_sample: 32_000,
                language: "en".into(),
                words: vec![Word {
                    word: "hi".into(),
                    start_sample: 16_000,
                    end_sample: 20_000,
                    p: 0.9,
                }],
                utterance_id: 3,
            })
        };
        let cases: Vec<(EventKind, &str, &[&str])> = vec![
            (EventKind::SpeechStarted, "speech_started", &[]),
            (
                EventKind::SpeechEnded {
                    start_sample: 8_000,
                },
                "speech_ended",
                &["start_t", "duration_s"],
            ),
            (
                EventKind::Level {
                    rms_dbfs: -20.5,
                    peak_dbfs: -6.0,
                },
                "level",
                &["rms_dbfs", "peak_dbfs"],
            ),
            (
                EventKind::DeviceLost { reason: "x".into() },
                "device_lost",
                &["reason"],
            ),
            (
                EventKind::DeviceRestored {
                    outage: Duration::from_millis(1500),
                },
                "device_restored",
                &["outage_s"],
            ),
            (
                EventKind::SourceEnded { reason: "x".into() },
                "source_ended",
                &["reason"],
            ),
            (
                transcript(true),
                "transcript_final",
                &[
                    "text",
                    "is_final",
                    "stability",
                    "start",
                    "end",
                    "language",
                    "words",
                    "utterance_id",
                ],
            ),
            (
                transcript(false),
                "transcript_interim",
                &[
                    "text",
                    "is_final",
                    "stability",
                    "start",
                    "end",
                    "language",
                    "words",
                    "utterance_id",
                ],
            ),
            (
                EventKind::Utterance(crate::events::Utterance {
                    id: 3,
                    text: "hi there.".into(),
                    start_sample: 16_000,
                    end_sample: 24_000,
                    language: "en".into(),
                    words: vec![],
                    reason: crate::events::UtteranceEnd::Sentence,
                }),
                "utterance",
                &["id", "text", "start", "end", "language", "words", "reason"],
            ),
            (
                EventKind::Wake {
                    phrase: "hey jarvis".into(),
                    score: 0.9,
                    start_sample: 8_000,
                    end_sample: 24_000,
                },
                "wake",
                &["phrase", "score", "start", "end"],
            ),
            (
                EventKind::Action(crate::events::ActionEvent {
                    id: "timer".into(),
                    sentence: "set a timer for ten minutes".into(),
                    matched: "set a timer for {minutes} minutes".into(),
                    score: 1.0,
                    slots: [("minutes".to_string(), "10".to_string())].into(),
                    ran: true,
                    start_sample: 0,
                    end_sample: 24_000,
                }),
                "action",
                &[
                    "id", "sentence", "matched", "score", "slots", "ran", "start", "end",
                ],
            ),
            (
                EventKind::Note(crate::events::NoteEvent {
                    midi: 62,
                    name: "D4".into(),
                    cents: -8.0,
                    start_sample: 16_320,
                    end_sample: 23_680,
                    velocity: 80,
                    confidence: 0.9,
                }),
                "note",
                &[
                    "midi",
                    "name",
                    "cents",
                    "start",
                    "end",
                    "velocity",
                    "confidence",
                ],
            ),
            (
                EventKind::Pitch {
                    sample_at: 16_000,
                    hz: 293.7,
                    voiced: true,
                    p: 0.95,
                },
                "pitch",
                &["time", "hz", "voiced", "p"],
            ),
        ];
        for (kind, name, extra) in cases {
            let e = event_to_pb(&event(24_000, kind));
            let line = pb_event_json(&e);
            assert_eq!(keys(&line), set(extra), "{line}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["kind"], name, "{line}");
            assert_eq!(pb_kind_name(&e), name);
            assert_eq!(v["t"], 1.5, "{line}");
        }
        let gap = pb_event_json(&gap_event(3));
        assert_eq!(keys(&gap), set(&["missed"]), "{gap}");
    }

    #[test]
    fn json_values_keep_units_and_print_f32_short() {
        let line = pb_event_json(&event_to_pb(&event(
            24_000,
            EventKind::SpeechEnded {
                start_sample: 8_000,
            },
        )));
        assert!(line.contains(r#""start_t":0.5"#), "{line}");
        assert!(line.contains(r#""duration_s":1.0"#), "{line}");
        let level = EventKind::Level {
            rms_dbfs: 0.9,
            peak_dbfs: -6.1,
        };
        let line = pb_event_json(&event_to_pb(&event(0, level)));
        assert!(line.contains(r#""rms_dbfs":0.9,"#), "{line}");
        assert!(line.contains(r#""peak_dbfs":-6.1"#), "{line}");
        let t = EventKind::Transcript(Transcript {
            text: "hi".into(),
            is_final: true,
            stability: 0.9,
            start_sample: 16_000,
            end_sample: 32_000,
            language: "en".into(),
            words: vec![Word {
                word: "hi".into(),
                start_sample: 16_000,
                end_sample: 20_000,
                p: 0.7,
            }],
            utterance_id: 1,
        });
        let line = pb_event_json(&event_to_pb(&event(32_000, t)));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["start"], 1.0);
        assert_eq!(v["end"], 2.0);
        assert_eq!(v["words"][0]["end"], 1.25);
        assert!(line.contains(r#""stability":0.9,"#), "{line}");
        assert!(line.contains(r#""p":0.7}"#), "{line}");
    }

    // Kinds without a hand-written arm go through serde by name; a mismatch would drop the kind.
    #[test]
    fn domain_kinds_convert_by_name() {
        use pb::event::Kind;
        let level = event_to_pb(&event(
            0,
            EventKind::Level {
                rms_dbfs: 0.9,
                peak_dbfs: -3.25,
            },
        ));
        assert_eq!(
            level.kind,
            Some(Kind::Level(pb::Level {
                rms_dbfs: 0.9,
                peak_dbfs: -3.25
            }))
        );
        let started = event_to_pb(&event(0, EventKind::SpeechStarted));
        assert_eq!(
            started.kind,
            Some(Kind::SpeechStarted(pb::SpeechStarted {}))
        );
        let lost = event_to_pb(&event(
            0,
            EventKind::DeviceLost {
                reason: "gone".into(),
            },
        ));
        assert_eq!(
            lost.kind,
            Some(Kind::DeviceLost(pb::DeviceLost {
                reason: "gone".into()
            }))
        );
        let ended = event_to_pb(&event(
            0,
            EventKind::SourceEnded {
                reason: "eof".into(),
            },
        ));
        assert_eq!(
            ended.kind,
            Some(Kind::SourceEnded(pb::SourceEnded {
                reason: "eof".into()
            }))
        );
    }

    #[test]
    fn every_category_has_a_proto_kind_and_back() {
        for c in Category::ALL {
            let k = pb_kind(c).unwrap_or_else(|| panic!("no EVENT_KIND_ for {c:?}"));
            assert_eq!(category_of(k), Some(c));
        }
        // Every proto value but UNSPECIFIED is some category (values are small and dense).
        for v in 1..64 {
            if let Ok(k) = pb::EventKind::try_from(v) {
                assert!(
                    category_of(k).is_some(),
                    "{} has no Category",
                    k.as_str_name()
                );
            }
        }
    }

    // Regression: the INVALID_ARGUMENT message used to leave out TRANSCRIPT.
    #[test]
    fn unknown_kinds_are_rejected_with_the_full_list() {
        assert_eq!(
            kinds_from_names(&["vad", " level", "", "transcript"]).unwrap(),
            vec![
                pb::EventKind::Vad as i32,
                pb::EventKind::Level as i32,
                pb::EventKind::Transcript as i32
            ]
        );
        let err = kinds_from_names(&["vad", "sounds"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            r#"unknown kind "sounds"; valid kinds: vad, level, source, transcript, utterance, sound, wake, action, notes"#
        );
        let status = KindFilter::from_pb(&[1, 99]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        for name in ["EVENT_KIND_VAD (1)", "EVENT_KIND_TRANSCRIPT (4)"] {
            assert!(status.message().contains(name), "{}", status.message());
        }
        assert!(
            KindFilter::from_pb(&[0]).is_err(),
            "UNSPECIFIED is not a kind"
        );
    }

    #[test]
    fn generic_human_line_names_the_kind_and_its_fields() {
        let e = pb::Event {
            stream: "main".into(),
            kind: Some(pb::event::Kind::Level(pb::Level {
                rms_dbfs: 0.9,
                peak_dbfs: -1.5,
            })),
            ..Default::default()
        };
        // Fields in key order (serde_json's map is sorted).
        assert_eq!(generic_line(&e), "level peak_dbfs=-1.5 rms_dbfs=0.9");
    }
}
