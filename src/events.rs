//! Domain events and the event bus.
//!
//! Stages produce [`EventKind`]s; the runner stamps them with the stream position and wall clock and
//! publishes them here. The bus is a bounded broadcast: publishing never blocks, and a subscriber
//! that falls more than `capacity` events behind loses the oldest ones and is told how many
//! ([`Recv::Gap`]). No proto types live here; `api` converts.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::broadcast;

/// Samples per second of the internal stream clock.
pub const STREAM_RATE: u32 = 16_000;

/// What happened. Sample positions inside variants use the same clock as [`Event::sample`].
///
/// **Adding a kind**: a variant here (plus its arms in [`EventKind::category`] and
/// [`EventKind::name`]; a new [`Category`] if clients should filter on it) and a message of the same
/// name in the proto's `Event.kind` oneof, with the same field names: `api` converts through this
/// serde form (`{"kind":"level","rms_dbfs":-20.0,..}`), and JSON lines and `--kinds` names follow.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    SpeechStarted,
    SpeechEnded {
        start_sample: u64,
    },
    Level {
        rms_dbfs: f32,
        peak_dbfs: f32,
    },
    DeviceLost {
        reason: String,
    },
    DeviceRestored {
        outage: Duration,
    },
    SourceEnded {
        reason: String,
    },
    Transcript(Transcript),
    /// A whole utterance: published when it ends (a pause, a sentence end, or its length cap),
    /// after its last final. Its text is the finals with its id, concatenated.
    Utterance(Utterance),
    /// One occurrence of a sound class, published when it ends (at `end_sample`).
    Sound(SoundEvent),
    /// A sound class turned on (published at its start; optional, see `sound.emit_started`).
    SoundStarted {
        class: String,
        p: f32,
    },
    /// A wake phrase was heard (published at `end_sample`, when it fired).
    Wake {
        phrase: String,
        /// Smoothed detector score (0..1).
        score: f32,
        #[serde(rename = "start", serialize_with = "samples_as_seconds")]
        start_sample: u64,
        #[serde(rename = "end", serialize_with = "samples_as_seconds")]
        end_sample: u64,
    },
    /// A spoken sentence matched a configured action (see `actions`).
    Action(ActionEvent),
    /// A note ended (published shortly after its end; see `[notes]`).
    Note(NoteEvent),
    /// F0 of one 10 ms frame (only with `notes.emit_pitch`), for karaoke-style clients.
    Pitch {
        /// Centre of the frame.
        #[serde(rename = "time", serialize_with = "samples_as_seconds")]
        sample_at: u64,
        /// 0 when unvoiced.
        hz: f32,
        voiced: bool,
        /// Voicing probability (0..1).
        p: f32,
    },
}

/// One transcribed note. Samples are on the stream clock; the serde form carries seconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NoteEvent {
    /// MIDI note number (60 = middle C).
    pub midi: u32,
    /// Scientific pitch name ("C4", "F#5").
    pub name: String,
    /// Mean deviation from the equal-tempered pitch, cents (-50..50).
    pub cents: f32,
    #[serde(rename = "start", serialize_with = "samples_as_seconds")]
    pub start_sample: u64,
    #[serde(rename = "end", serialize_with = "samples_as_seconds")]
    pub end_sample: u64,
    /// MIDI velocity (1..127), from the note's loudness.
    pub velocity: u32,
    /// 0..1.
    pub confidence: f32,
}

/// A configured sentence matched an utterance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ActionEvent {
    /// The action's id from the config.
    pub id: String,
    /// What was said (the transcript the match was made on).
    pub sentence: String,
    /// The configured sentence it matched.
    pub matched: String,
    /// 1 - word edit distance / sentence length (0..1).
    pub score: f32,
    /// Slot values, normalised (numbers as digits).
    pub slots: BTreeMap<String, String>,
    /// Whether a program was started for it.
    pub ran: bool,
    #[serde(rename = "start", serialize_with = "samples_as_seconds")]
    pub start_sample: u64,
    #[serde(rename = "end", serialize_with = "samples_as_seconds")]
    pub end_sample: u64,
}

/// One occurrence of a sound class (siren, dog bark, ...). Samples are on the stream clock; the
/// serde form (and so the proto and JSON) carries them as `start`/`end` seconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SoundEvent {
    pub class: String,
    /// Mean class probability over the occurrence.
    pub p: f32,
    #[serde(rename = "start", serialize_with = "samples_as_seconds")]
    pub start_sample: u64,
    #[serde(rename = "end", serialize_with = "samples_as_seconds")]
    pub end_sample: u64,
}

fn samples_as_seconds<S: serde::Serializer>(sample: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(*sample as f64 / f64::from(STREAM_RATE))
}

/// Recognised speech. Samples are on the stream clock.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Transcript {
    pub text: String,
    pub is_final: bool,
    /// Interim only: how likely the text is to survive unchanged (0..1). 1 for finals.
    pub stability: f32,
    pub start_sample: u64,
    pub end_sample: u64,
    pub language: String,
    pub words: Vec<Word>,
    /// The utterance this result belongs to: 1, 2, ... per stream; 0 for results outside any
    /// utterance (one-shot decodes).
    pub utterance_id: u64,
}

/// Why an utterance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UtteranceEnd {
    /// The speaker paused (the transcriber's end of speech).
    Pause,
    /// A committed word ended a sentence.
    Sentence,
    /// The utterance reached `transcribe.streaming.max_utterance_s` without either.
    MaxLength,
    /// The stream ended or broke off.
    StreamEnd,
}

/// All finals of one utterance, joined. Samples are on the stream clock.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Utterance {
    pub id: u64,
    pub text: String,
    pub start_sample: u64,
    pub end_sample: u64,
    pub language: String,
    pub words: Vec<Word>,
    pub reason: UtteranceEnd,
}

/// Whether a transcribed word ends a sentence: it ends in `.`, `?` or `!` (or their CJK forms)
/// and is not an abbreviation such as "Mr." or "U.S." that Whisper writes mid-sentence.
pub fn ends_sentence(word: &str) -> bool {
    let w = word.trim_end_matches(['"', '\'', ')', '”', '’']).trim();
    if w.ends_with(['?', '!', '。', '？', '！']) {
        return true;
    }
    let Some(stem) = w.strip_suffix('.') else {
        return false;
    };
    if stem.ends_with('.') {
        // "..." trails off: the speaker may go on (a pause still ends the utterance).
        return false;
    }
    let stem = stem.trim_start_matches(['"', '\'', '(', '“', '‘']);
    // Not "no.": "I said no." ends far more spoken sentences than "No. 5" appears.
    const ABBREVIATIONS: [&str; 12] = [
        "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "prof", "mt", "approx", "etc",
    ];
    let lower = stem.to_lowercase();
    // Initials and initialisms ("J.", "U.S.", "i.e."): a single letter, or letters with dots.
    let initialism = lower.chars().count() == 1 && lower.chars().all(char::is_alphabetic)
        || (lower.contains('.') && lower.split('.').all(|p| p.chars().count() <= 1));
    !(stem.is_empty() || initialism || ABBREVIATIONS.contains(&lower.as_str()))
}

/// One recognised word with its stream position and confidence.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Word {
    pub word: String,
    pub start_sample: u64,
    pub end_sample: u64,
    pub p: f32,
}

/// Coarse grouping used by subscription filters. The proto `EventKind` value of the same name
/// (`Vad` <-> `EVENT_KIND_VAD`) selects it; `api` matches them by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    Vad,
    Level,
    Source,
    Transcript,
    Utterance,
    Sound,
    Wake,
    Action,
    Notes,
}

impl Category {
    pub const ALL: [Category; 9] = [
        Category::Vad,
        Category::Level,
        Category::Source,
        Category::Transcript,
        Category::Utterance,
        Category::Sound,
        Category::Wake,
        Category::Action,
        Category::Notes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Vad => "vad",
            Category::Level => "level",
            Category::Source => "source",
            Category::Transcript => "transcript",
            Category::Utterance => "utterance",
            Category::Sound => "sound",
            Category::Wake => "wake",
            Category::Action => "action",
            Category::Notes => "notes",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
}

impl EventKind {
    pub fn category(&self) -> Category {
        match self {
            EventKind::SpeechStarted | EventKind::SpeechEnded { .. } => Category::Vad,
            EventKind::Level { .. } => Category::Level,
            EventKind::DeviceLost { .. }
            | EventKind::DeviceRestored { .. }
            | EventKind::SourceEnded { .. } => Category::Source,
            EventKind::Transcript(_) => Category::Transcript,
            EventKind::Utterance(_) => Category::Utterance,
            EventKind::Sound(_) | EventKind::SoundStarted { .. } => Category::Sound,
            EventKind::Wake { .. } => Category::Wake,
            EventKind::Action(_) => Category::Action,
            EventKind::Note(_) | EventKind::Pitch { .. } => Category::Notes,
        }
    }

    /// Stable name used in logs, JSON and status counters.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::SpeechStarted => "speech_started",
            EventKind::SpeechEnded { .. } => "speech_ended",
            EventKind::Level { .. } => "level",
            EventKind::DeviceLost { .. } => "device_lost",
            EventKind::DeviceRestored { .. } => "device_restored",
            EventKind::SourceEnded { .. } => "source_ended",
            EventKind::Transcript(t) if t.is_final => "transcript_final",
            EventKind::Transcript(_) => "transcript_interim",
            EventKind::Utterance(_) => "utterance",
            EventKind::Sound(_) => "sound",
            EventKind::SoundStarted { .. } => "sound_started",
            EventKind::Wake { .. } => "wake",
            EventKind::Action(_) => "action",
            EventKind::Note(_) => "note",
            EventKind::Pitch { .. } => "pitch",
        }
    }
}

/// An event as delivered to subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Bus-wide sequence number, assigned at publish time.
    pub seq: u64,
    /// Stream position: sample index at [`STREAM_RATE`] since the stream started.
    pub sample: u64,
    /// When the event was published.
    pub wall: SystemTime,
    /// When sample 0 of this stream was captured.
    pub stream_start: SystemTime,
    /// Stream name ("main" or "session-N").
    pub stream: Arc<str>,
    pub kind: EventKind,
}

impl Event {
    pub fn stream_time_s(&self) -> f64 {
        self.sample as f64 / f64::from(STREAM_RATE)
    }
}

/// Microseconds since the Unix epoch (0 before it).
pub fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What a subscriber gets from [`Subscription::recv`].
#[derive(Debug)]
pub enum Recv {
    Event(Arc<Event>),
    /// The subscriber lagged and this many events were dropped for it.
    Gap(u64),
    /// The bus was closed (daemon shutting down).
    Closed,
}

/// Daemon-wide event bus.
#[derive(Debug, Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

/// Something that must see an event *before* any subscriber does (e.g. the transcript store, so
/// that a final result a client has received is already durable).
pub trait EventSink: Send + Sync + std::fmt::Debug + 'static {
    /// Called in the publishing thread, before the event is sent and before it is given its
    /// `seq` (0 here). May block (fsync): only the publishing thread waits.
    fn persist(&self, event: &Event);
}

/// Something that reacts to an event right after subscribers were sent it, in the publishing
/// thread, and may publish follow-up events (e.g. sentence actions after a final transcript):
/// a follow-up then reaches every subscriber after the event that caused it and before anything
/// the same thread publishes next (a StreamAudio session's `SourceEnded`). Must be quick.
pub trait EventReactor: Send + Sync + std::fmt::Debug + 'static {
    fn react(&self, event: &Event, bus: &EventBus);
}

#[derive(Debug)]
struct BusInner {
    tx: broadcast::Sender<Arc<Event>>,
    // Taken by every publisher to stamp `seq` and send; held for a few hundred nanoseconds (sinks
    // run before it is taken). Never on the RT path.
    seq: Mutex<u64>,
    sinks: std::sync::RwLock<Vec<Arc<dyn EventSink>>>,
    reactors: std::sync::RwLock<Vec<Arc<dyn EventReactor>>>,
    published: AtomicU64,
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(BusInner {
                tx,
                seq: Mutex::new(0),
                sinks: std::sync::RwLock::new(Vec::new()),
                reactors: std::sync::RwLock::new(Vec::new()),
                published: AtomicU64::new(0),
                counts: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Publishes an event; never blocks on subscribers. Returns the stamped event.
    ///
    /// Sinks run first, in the publishing thread and *outside* the sequence lock: a transcript's
    /// fsync then delays only the thread that published the transcript, never a level or sound
    /// event published concurrently from another stage. Because the event is sent only after its
    /// sinks return, a final a client receives is already durable. The price is that sinks see
    /// the event before it has its `seq` (it is 0 there); none needs it (the store keys rows by
    /// stream and sample).
    pub fn publish(
        &self,
        stream: &Arc<str>,
        stream_start: SystemTime,
        sample: u64,
        kind: EventKind,
    ) -> Arc<Event> {
        let name = kind.name();
        let mut event = Event {
            seq: 0,
            sample,
            wall: SystemTime::now(),
            stream_start,
            stream: stream.clone(),
            kind,
        };
        for sink in self
            .inner
            .sinks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            sink.persist(&event);
        }
        let event = {
            // Sequence assignment and send happen under this lock so that seq order == delivery
            // order even with several publishing threads. Nothing slow runs under it.
            let mut seq = self.inner.seq.lock().unwrap_or_else(|e| e.into_inner());
            *seq += 1;
            event.seq = *seq;
            let event = Arc::new(event);
            // An error only means nobody is subscribed right now.
            let _ = self.inner.tx.send(event.clone());
            event
        };
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        *self
            .inner
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_default() += 1;
        tracing::debug!(seq = event.seq, stream = %event.stream, sample, kind = name, "Event published.");
        // A copy, so a reactor that publishes (re-entering here) holds no lock.
        let reactors = self
            .inner
            .reactors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for r in reactors {
            r.react(&event, self);
        }
        event
    }

    /// Registers a reactor (see [`EventReactor`]).
    pub fn add_reactor(&self, reactor: Arc<dyn EventReactor>) {
        self.inner
            .reactors
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(reactor);
    }

    /// Registers a sink that sees every event before subscribers do.
    pub fn add_sink(&self, sink: Arc<dyn EventSink>) {
        self.inner
            .sinks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.inner.tx.subscribe(),
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.inner.tx.receiver_count()
    }

    /// Events published so far, by kind name.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One subscriber's view of the bus.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Recv {
        match self.rx.recv().await {
            Ok(e) => Recv::Event(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Recv::Gap(n),
            Err(broadcast::error::RecvError::Closed) => Recv::Closed,
        }
    }

    /// The next event if one is waiting, without waiting (None: nothing waiting).
    pub fn try_recv(&mut self) -> Option<Recv> {
        match self.rx.try_recv() {
            Ok(e) => Some(Recv::Event(e)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Recv::Gap(n)),
            Err(broadcast::error::TryRecvError::Closed) => Some(Recv::Closed),
            Err(broadcast::error::TryRecvError::Empty) => None,
        }
    }

    /// Events published and not yet received by this subscriber.
    pub fn backlog(&self) -> usize {
        self.rx.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_ends_skip_abbreviations() {
        for w in [" country.", "you?", "Stop!", " it.\"", "end.)", "了。"] {
            assert!(ends_sentence(w), "{w:?}");
        }
        for w in [
            " Mr.",
            "Dr.",
            " U.S.",
            "e.g.",
            "i.e.",
            " J.",
            " country,",
            " well...",
            "...",
            " 3.5",
            "",
        ] {
            assert!(!ends_sentence(w), "{w:?}");
        }
    }

    #[tokio::test]
    async fn lagging_subscriber_gets_gap_and_others_do_not() {
        let bus = EventBus::new(4);
        let stream: Arc<str> = Arc::from("main");
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        for i in 0..10 {
            bus.publish(&stream, SystemTime::now(), i, EventKind::SpeechStarted);
            match fast.recv().await {
                Recv::Event(e) => assert_eq!(e.sample, i),
                other => panic!("fast subscriber got {other:?}"),
            }
        }
        match slow.recv().await {
            Recv::Gap(n) => assert_eq!(n, 6),
            other => panic!("expected a gap, got {other:?}"),
        }
        match slow.recv().await {
            Recv::Event(e) => assert_eq!(e.sample, 6),
            other => panic!("expected event 6, got {other:?}"),
        }
        assert_eq!(bus.counts()["speech_started"], 10);
    }

    /// Sleeps on every final transcript, like a store that fsyncs on a slow disk.
    #[derive(Debug)]
    struct SlowSink(Duration);

    impl EventSink for SlowSink {
        fn persist(&self, event: &Event) {
            if matches!(&event.kind, EventKind::Transcript(t) if t.is_final) {
                std::thread::sleep(self.0);
            }
        }
    }

    fn final_transcript() -> EventKind {
        EventKind::Transcript(Transcript {
            text: "hello".into(),
            is_final: true,
            stability: 1.0,
            start_sample: 0,
            end_sample: 16_000,
            language: "en".into(),
            words: Vec::new(),
            utterance_id: 1,
        })
    }

    // Regression: sinks used to run under the seq lock, so a level event waited for a
    // transcript's fsync.
    #[tokio::test]
    async fn level_publish_does_not_wait_for_a_slow_sink() {
        let bus = EventBus::new(64);
        bus.add_sink(Arc::new(SlowSink(Duration::from_millis(200))));
        let mut sub = bus.subscribe();
        let stream: Arc<str> = Arc::from("main");
        let writer = {
            let (bus, stream) = (bus.clone(), stream.clone());
            std::thread::spawn(move || {
                bus.publish(&stream, SystemTime::now(), 0, final_transcript())
            })
        };
        // Let the writer enter its sink.
        std::thread::sleep(Duration::from_millis(50));
        let t = std::time::Instant::now();
        let level = bus.publish(
            &stream,
            SystemTime::now(),
            1,
            EventKind::Level {
                rms_dbfs: -20.0,
                peak_dbfs: -6.0,
            },
        );
        let took = t.elapsed();
        // Generous for a loaded 2-core machine; the old code waited out the sink's 200 ms.
        assert!(
            took < Duration::from_millis(100),
            "level publish took {took:?}"
        );
        let fin = writer.join().unwrap();
        assert!(
            fin.seq > level.seq,
            "the final is sent after its sink returns"
        );
        // The level event is delivered first: the final was not sent before it was persisted.
        match sub.recv().await {
            Recv::Event(e) => assert_eq!(e.seq, level.seq),
            other => panic!("expected the level event, got {other:?}"),
        }
    }
}
