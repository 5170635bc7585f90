//! Conversions between domain types and protobuf messages.

use std::collections::HashSet;

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
            let cat = match pb::EventKind::try_from(k) {
                Ok(pb::EventKind::Vad) => Category::Vad,
                Ok(pb::EventKind::Level) => Category::Level,
                Ok(pb::EventKind::Source) => Category::Source,
                Ok(pb::EventKind::Transcript) => Category::Transcript,
                Ok(pb::EventKind::Unspecified | pb::EventKind::Sound) | Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "unknown event kind {k}; valid kinds: {}",
                        valid_kinds()
                    )));
                }
            };
            allowed.insert(cat);
        }
        Ok(Self { allowed })
    }

    pub fn matches(&self, e: &EventKind) -> bool {
        self.allowed.is_empty() || self.allowed.contains(&e.category())
    }
}

fn valid_kinds() -> String {
    [
        pb::EventKind::Vad,
        pb::EventKind::Level,
        pb::EventKind::Source,
    ]
    .map(|k| format!("{} ({})", k.as_str_name(), k as i32))
    .join(", ")
}

/// Maps a CLI kind name (`vad`, `level`, `source`) to the protobuf enum.
pub fn kind_from_name(name: &str) -> Option<pb::EventKind> {
    match Category::parse(name)? {
        Category::Vad => Some(pb::EventKind::Vad),
        Category::Level => Some(pb::EventKind::Level),
        Category::Source => Some(pb::EventKind::Source),
        Category::Transcript => Some(pb::EventKind::Transcript),
    }
}

pub fn event_to_pb(e: &Event) -> pb::Event {
    use pb::event::Kind;
    let kind = match &e.kind {
        EventKind::SpeechStarted => Kind::SpeechStarted(pb::SpeechStarted {}),
        EventKind::SpeechEnded { start_sample } => Kind::SpeechEnded(pb::SpeechEnded {
            start_sample: *start_sample,
            duration_s: e.sample.saturating_sub(*start_sample) as f64 / f64::from(STREAM_RATE),
        }),
        EventKind::Level {
            rms_dbfs,
            peak_dbfs,
        } => Kind::Level(pb::Level {
            rms_dbfs: *rms_dbfs,
            peak_dbfs: *peak_dbfs,
        }),
        EventKind::DeviceLost { reason } => Kind::DeviceLost(pb::DeviceLost {
            reason: reason.clone(),
        }),
        EventKind::DeviceRestored { outage } => Kind::DeviceRestored(pb::DeviceRestored {
            outage_s: outage.as_secs_f64(),
        }),
        EventKind::SourceEnded { reason } => Kind::SourceEnded(pb::SourceEnded {
            reason: reason.clone(),
        }),
        EventKind::Transcript(t) => Kind::Transcript(transcript_to_pb(t)),
    };
    pb::Event {
        seq: e.seq,
        sample: e.sample,
        stream_time_s: e.stream_time_s(),
        wall_time_unix_us: unix_us(e.wall),
        stream_start_unix_us: unix_us(e.stream_start),
        stream: e.stream.to_string(),
        kind: Some(kind),
    }
}

fn secs(sample: u64) -> f64 {
    sample as f64 / f64::from(STREAM_RATE)
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
        words: t
            .words
            .iter()
            .map(|w| pb::Word {
                word: w.word.clone(),
                start_s: secs(w.start_sample),
                end_s: secs(w.end_sample),
                p: w.p,
            })
            .collect(),
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

/// Stable name of a protobuf event's kind (as in JSON output and status counters).
pub fn pb_kind_name(e: &pb::Event) -> &'static str {
    use pb::event::Kind;
    match &e.kind {
        Some(Kind::SpeechStarted(_)) => "speech_started",
        Some(Kind::SpeechEnded(_)) => "speech_ended",
        Some(Kind::Level(_)) => "level",
        Some(Kind::DeviceLost(_)) => "device_lost",
        Some(Kind::DeviceRestored(_)) => "device_restored",
        Some(Kind::SourceEnded(_)) => "source_ended",
        Some(Kind::Gap(_)) => "gap",
        Some(Kind::Transcript(t)) if t.is_final => "transcript_final",
        Some(Kind::Transcript(_)) => "transcript_interim",
        _ => "unknown",
    }
}

/// One JSON object per event: kind, stream time in seconds, and the kind's fields.
pub fn pb_event_json(e: &pb::Event) -> serde_json::Value {
    use pb::event::Kind;
    use serde_json::json;
    let mut v = json!({
        "kind": pb_kind_name(e),
        "t": e.stream_time_s,
        "sample": e.sample,
        "seq": e.seq,
        "stream": e.stream,
        "wall_us": e.wall_time_unix_us,
    });
    let extra = match &e.kind {
        Some(Kind::SpeechEnded(s)) => json!({
            "start_t": s.start_sample as f64 / f64::from(STREAM_RATE),
            "duration_s": s.duration_s,
        }),
        Some(Kind::Level(l)) => json!({"rms_dbfs": l.rms_dbfs, "peak_dbfs": l.peak_dbfs}),
        Some(Kind::DeviceLost(d)) => json!({"reason": d.reason}),
        Some(Kind::DeviceRestored(d)) => json!({"outage_s": d.outage_s}),
        Some(Kind::SourceEnded(s)) => json!({"reason": s.reason}),
        Some(Kind::Gap(g)) => json!({"missed": g.missed}),
        Some(Kind::Transcript(t)) => json!({
            "text": t.text, "is_final": t.is_final, "stability": t.stability,
            "start": t.start_s, "end": t.end_s, "language": t.language,
            "words": t.words.iter().map(|w| json!({"word": w.word, "start": w.start_s, "end": w.end_s, "p": w.p})).collect::<Vec<_>>(),
        }),
        _ => json!({}),
    };
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    v
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
        _ => "unknown event".to_string(),
    };
    format!("[{:>9.2}s {}] {}", e.stream_time_s, e.stream, what)
}
