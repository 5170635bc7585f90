//! Sentence activation: spoken sentences mapped to configured actions.
//!
//! After a wake word (for `listen_s` seconds), or after any utterance for entries marked
//! `always`, the final transcript is matched against every configured sentence
//! ([`matcher`]); the best match at or above its `min_score` becomes an `Action` event and, when
//! the entry has a `run` command, starts that program ([`runner`]): an argv run directly (never
//! a shell), slot values substituted as whole arguments, with a timeout, its output logged.
//!
//! The listener ([`install`]) is a bus reactor: it reads wake and final transcript events as
//! they are published and publishes action events on the same stream, right after the
//! transcript they answer.

pub mod matcher;
pub mod runner;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::events::{ActionEvent, Event, EventBus, EventKind, EventReactor, STREAM_RATE};
use matcher::{Template, words};

/// `[actions]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionsConfig {
    /// Seconds after a wake word during which utterances are matched against every entry.
    pub listen_s: f32,
    /// Default minimum match score (0..1): 1 - word edits / sentence words.
    pub min_score: f32,
    /// Programs running at once; an action whose program would exceed it is reported with
    /// `ran = false` and a warning.
    pub max_running: usize,
    /// The entries.
    pub commands: Vec<ActionEntry>,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        Self {
            listen_s: 8.0,
            min_score: 0.75,
            max_running: 4,
            commands: Vec::new(),
        }
    }
}

/// One `[[actions.commands]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionEntry {
    /// Reported in the event.
    pub id: String,
    /// Templates, e.g. `"set a timer for {minutes} minutes"`, `"turn {state:on|off} the
    /// {room} lights"` (see [`matcher`]).
    pub sentences: Vec<String>,
    /// Match after any utterance, not only after a wake word.
    #[serde(default)]
    pub always: bool,
    /// Program and arguments; an argument that is exactly `{slot}` is replaced by the slot's
    /// value (one argument, whatever it contains), `{sentence}` by what was said. Absent: the
    /// event alone (an empty list is an error).
    #[serde(default)]
    pub run: Option<Vec<String>>,
    /// Seconds before the program is killed.
    #[serde(default = "default_timeout")]
    pub timeout_s: f32,
    /// Overrides `actions.min_score`.
    #[serde(default)]
    pub min_score: Option<f32>,
}

fn default_timeout() -> f32 {
    10.0
}

impl ActionsConfig {
    /// Checks every entry; errors name the entry.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.5..=120.0).contains(&self.listen_s) {
            return Err("actions.listen_s must be within 0.5..=120".into());
        }
        if !(0.0..=1.0).contains(&self.min_score) {
            return Err("actions.min_score must be within 0..=1".into());
        }
        if !(1..=64).contains(&self.max_running) {
            return Err("actions.max_running must be within 1..=64".into());
        }
        if self.commands.len() > 1000 {
            return Err("actions.commands lists more than 1000 entries".into());
        }
        let mut ids = std::collections::HashSet::new();
        for e in &self.commands {
            let at = format!("actions.commands {:?}", e.id);
            if e.id.trim().is_empty() {
                return Err("actions.commands: an entry has an empty id".into());
            }
            if !ids.insert(&e.id) {
                return Err(format!("{at}: the id is used twice"));
            }
            if e.sentences.is_empty() {
                return Err(format!("{at}: no sentences"));
            }
            let mut slot_sets = Vec::new();
            for s in &e.sentences {
                let t = Template::parse(s).map_err(|m| format!("{at}: {m}"))?;
                slot_sets.push(t.slots().into_iter().map(String::from).collect::<Vec<_>>());
            }
            if e.min_score.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return Err(format!("{at}: min_score must be within 0..=1"));
            }
            if !(0.1..=3600.0).contains(&e.timeout_s) {
                return Err(format!("{at}: timeout_s must be within 0.1..=3600"));
            }
            let run = e.run.as_deref().unwrap_or_default();
            if e.run.is_some() && run.is_empty() {
                return Err(format!(
                    "{at}: run is an empty argv (leave it out for an event-only action)"
                ));
            }
            if let Some(p) = run.first()
                && p.trim().is_empty()
            {
                return Err(format!("{at}: run has an empty program name"));
            }
            for arg in run {
                let Some(name) = placeholder(arg) else {
                    if arg.contains('{') || arg.contains('}') {
                        return Err(format!(
                            "{at}: {arg:?}: a slot must be a whole argument (\"{{name}}\"), never \
                             part of one: values are passed as separate arguments"
                        ));
                    }
                    continue;
                };
                if name == "sentence" {
                    continue;
                }
                // Every sentence of the entry must fill the slot the command uses.
                if let Some(s) = slot_sets
                    .iter()
                    .position(|set| !set.iter().any(|n| n == name))
                {
                    return Err(format!(
                        "{at}: run uses unknown slot {{{name}}}: sentence {:?} has slots {:?}",
                        e.sentences[s], slot_sets[s]
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `{name}` -> `name`.
fn placeholder(arg: &str) -> Option<&str> {
    let inner = arg.strip_prefix('{')?.strip_suffix('}')?;
    (!inner.is_empty() && inner.chars().all(|c| c.is_alphanumeric() || c == '_')).then_some(inner)
}

/// The best match of a transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub id: String,
    pub sentence: String,
    pub matched: String,
    pub score: f32,
    pub slots: BTreeMap<String, String>,
    /// The command that would run (placeholders filled), empty for none.
    pub argv: Vec<String>,
    pub timeout_s: f32,
}

/// The compiled entries.
#[derive(Debug, Clone)]
pub struct Matcher {
    min_score: f32,
    entries: Vec<(ActionEntry, Vec<Template>)>,
}

impl Matcher {
    pub fn new(cfg: &ActionsConfig) -> Result<Self, String> {
        cfg.validate()?;
        let entries = cfg
            .commands
            .iter()
            .map(|e| {
                let t = e
                    .sentences
                    .iter()
                    .map(|s| Template::parse(s))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((e.clone(), t))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            min_score: cfg.min_score,
            entries,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any entry is `always`.
    pub fn has_always(&self) -> bool {
        self.entries.iter().any(|(e, _)| e.always)
    }

    /// The best entry for `text` at or above its threshold; `woken` includes the entries that
    /// need a wake word. Ties go to the entry listed first.
    pub fn best(&self, text: &str, woken: bool) -> Option<Match> {
        let said = words(text);
        let mut best: Option<Match> = None;
        for (e, templates) in &self.entries {
            if !(woken || e.always) {
                continue;
            }
            for t in templates {
                let Some((score, slots)) = t.score(&said) else {
                    continue;
                };
                if score < e.min_score.unwrap_or(self.min_score)
                    || best.as_ref().is_some_and(|b| b.score >= score)
                {
                    continue;
                }
                let argv = e
                    .run
                    .iter()
                    .flatten()
                    .map(|a| match placeholder(a) {
                        Some("sentence") => text.trim().to_string(),
                        Some(name) => slots.get(name).cloned().unwrap_or_default(),
                        None => a.clone(),
                    })
                    .collect();
                best = Some(Match {
                    id: e.id.clone(),
                    sentence: text.trim().to_string(),
                    matched: t.text.clone(),
                    score,
                    slots,
                    argv,
                    timeout_s: e.timeout_s,
                });
            }
        }
        best
    }
}

/// `text` without the wake phrase at its start ("Hey Jarvis, set a timer" -> "set a timer"):
/// the transcript of an utterance after a wake word usually contains it.
pub fn strip_phrase(text: &str, phrase: &str) -> String {
    let said = words(text);
    let p = words(phrase);
    // Whisper may spell the name differently ("Jervis"): drop the phrase's length of words
    // when at least half of them match.
    if said.len() > p.len() {
        let same = said.iter().zip(&p).filter(|(a, b)| a == b).count();
        if 2 * same >= p.len() {
            return said[p.len()..].join(" ");
        }
    }
    said.join(" ")
}

/// Finals further apart than this (samples) belong to different utterances.
const UTTERANCE_GAP: u64 = STREAM_RATE as u64;
/// Finals of one utterance kept for matching.
const MAX_FINALS: usize = 8;

/// The listener: a bus reactor (wake and final transcript events in, action events out, in
/// the publishing thread so an action follows its transcript before the stream ends).
///
/// The streaming transcriber may cut one utterance into several finals ("Hey Jarvis," / "set
/// a" / "timer for 10 minutes."): the finals of an utterance (no gap over a second between
/// them) are matched together, after each new one, until one matches.
#[derive(Debug)]
struct Listener {
    matcher: Matcher,
    /// Stream samples after a wake word during which utterances are matched.
    listen: u64,
    runner: runner::Runner,
    streams: Mutex<HashMap<Arc<str>, StreamState>>,
}

#[derive(Debug, Default)]
struct StreamState {
    /// Listening for every entry until this sample, after this phrase.
    woken: Option<(u64, String)>,
    /// The current utterance's finals: start, end, text.
    finals: Vec<(u64, u64, String)>,
}

impl EventReactor for Listener {
    fn react(&self, e: &Event, bus: &EventBus) {
        let t = match &e.kind {
            EventKind::Wake { phrase, .. } => {
                let mut streams = self.lock();
                let st = streams.entry(e.stream.clone()).or_default();
                st.woken = Some((e.sample + self.listen, phrase.clone()));
                st.finals.clear();
                return;
            }
            EventKind::SourceEnded { .. } => {
                self.lock().remove(&e.stream);
                return;
            }
            EventKind::Transcript(t) if t.is_final && !t.text.trim().is_empty() => t,
            _ => return,
        };
        let (m, start) = {
            let mut streams = self.lock();
            let st = streams.entry(e.stream.clone()).or_default();
            if st
                .finals
                .last()
                .is_some_and(|(_, end, _)| t.start_sample > end + UTTERANCE_GAP)
            {
                st.finals.clear();
            }
            if st.finals.len() == MAX_FINALS {
                st.finals.remove(0);
            }
            st.finals
                .push((t.start_sample, t.end_sample, t.text.trim().to_string()));
            let said = st
                .finals
                .iter()
                .map(|(_, _, s)| s.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let woken = st
                .woken
                .as_ref()
                .filter(|(until, _)| t.start_sample <= *until)
                .map(|(_, p)| p.clone());
            let text = match &woken {
                Some(phrase) => strip_phrase(&said, phrase),
                None => said,
            };
            let Some(m) = self.matcher.best(&text, woken.is_some()) else {
                return;
            };
            let start = st.finals.first().map_or(t.start_sample, |f| f.0);
            st.finals.clear();
            if woken.is_some() {
                // One utterance answers one wake word.
                st.woken = None;
            }
            (m, start)
        };
        let ran = !m.argv.is_empty() && self.runner.start(&m);
        tracing::info!(id = %m.id, score = m.score, slots = ?m.slots, ran, "Action matched.");
        bus.publish(
            &e.stream,
            e.stream_start,
            t.end_sample,
            EventKind::Action(ActionEvent {
                id: m.id,
                sentence: m.sentence,
                matched: m.matched,
                score: m.score,
                slots: m.slots,
                ran,
                start_sample: start,
                end_sample: t.end_sample,
            }),
        );
    }
}

impl Listener {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, StreamState>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Installs the listener on `bus` (nothing when no entries are configured).
pub fn install(cfg: &ActionsConfig, bus: &EventBus) -> Result<(), String> {
    let matcher = Matcher::new(cfg)?;
    if matcher.is_empty() {
        return Ok(());
    }
    tracing::info!(entries = cfg.commands.len(), "Sentence actions enabled.");
    bus.add_reactor(Arc::new(Listener {
        matcher,
        listen: (cfg.listen_s * STREAM_RATE as f32) as u64,
        runner: runner::Runner::new(cfg.max_running),
        streams: Mutex::default(),
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<ActionsConfig, String> {
        let c: ActionsConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map(|_| c)
    }

    const TIMER: &str = r#"
[[commands]]
id = "timer"
sentences = ["set a timer for {minutes} minutes", "start a {minutes} minute timer"]
run = ["/bin/echo", "timer", "{minutes}"]

[[commands]]
id = "lights"
sentences = ["turn {state:on|off} the {room} lights"]
always = true
run = ["/bin/echo", "{room}", "{state}", "{sentence}"]
"#;

    #[test]
    fn best_match_fills_the_argv_with_whole_arguments() {
        let m = Matcher::new(&cfg(TIMER).unwrap()).unwrap();
        let hit = m.best("Set a timer for ten minutes.", true).unwrap();
        assert_eq!(hit.id, "timer");
        assert_eq!(hit.argv, ["/bin/echo", "timer", "10"]);
        // Not woken: only `always` entries.
        assert!(m.best("set a timer for ten minutes", false).is_none());
        // Shell metacharacters are not words: the slot gets the words, as one argument.
        let evil = "turn on the ; rm -rf ~ $(reboot) | && > lights";
        let hit = m.best(evil, false).unwrap();
        assert_eq!(hit.argv, ["/bin/echo", "rm rf reboot", "on", evil]);
        let hit = m.best("turn on the $(reboot) lights", false).unwrap();
        assert_eq!(hit.argv[1], "reboot");
        let hit = m.best("turn off the `reboot`;rm lights", false).unwrap();
        assert_eq!(hit.argv[1], "reboot rm");
        assert_eq!(hit.argv[3], "turn off the `reboot`;rm lights");
        assert_eq!(hit.argv.len(), 4);
    }

    #[test]
    fn config_errors_name_the_entry_and_the_problem() {
        let unknown = cfg(r#"
[[commands]]
id = "t"
sentences = ["set a timer for {minutes} minutes", "start a timer"]
run = ["/bin/echo", "{minutes}"]
"#)
        .unwrap_err();
        assert!(
            unknown.contains("unknown slot") && unknown.contains("start a timer"),
            "{unknown}"
        );
        let spliced = cfg(r#"
[[commands]]
id = "t"
sentences = ["set a timer for {minutes} minutes"]
run = ["/bin/sh", "-c", "sleep {minutes}"]
"#)
        .unwrap_err();
        assert!(spliced.contains("whole argument"), "{spliced}");
        let empty =
            cfg("[[commands]]\nid = \"t\"\nsentences = [\"hello\"]\nrun = [\"\"]\n").unwrap_err();
        assert!(empty.contains("empty program"), "{empty}");
        let empty =
            cfg("[[commands]]\nid = \"t\"\nsentences = [\"hello\"]\nrun = []\n").unwrap_err();
        assert!(empty.contains("empty argv"), "{empty}");
        assert!(cfg("[[commands]]\nid = \"t\"\nsentences = [\"hello\"]\n").is_ok());
        let dup = cfg("[[commands]]\nid = \"a\"\nsentences = [\"x\"]\n[[commands]]\nid = \"a\"\nsentences = [\"y\"]\n")
            .unwrap_err();
        assert!(dup.contains("twice"), "{dup}");
    }

    fn final_text(text: &str, start: u64, end: u64) -> EventKind {
        EventKind::Transcript(crate::events::Transcript {
            text: text.into(),
            is_final: true,
            stability: 1.0,
            start_sample: start,
            end_sample: end,
            language: "en".into(),
            words: Vec::new(),
            utterance_id: 1,
        })
    }

    /// The listener on a real bus: a transcript before any wake word runs nothing; after one,
    /// the configured program runs with the slot as one argument, whatever the transcript
    /// holds.
    #[tokio::test]
    async fn listener_runs_the_configured_argv_after_a_wake_word_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("argv.txt");
        let script = dir.path().join("record.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg: ActionsConfig = toml::from_str(&format!(
            "[[commands]]\nid = \"timer\"\nsentences = [\"set a timer for {{minutes:number}} minutes\"]\nrun = [\"{}\", \"{{minutes}}\", \"{{sentence}}\"]\n",
            script.display()
        ))
        .unwrap();
        let bus = EventBus::new(64);
        let mut sub = bus.subscribe();
        install(&cfg, &bus).unwrap();
        let stream: Arc<str> = Arc::from("main");
        let t0 = std::time::SystemTime::now();
        bus.publish(
            &stream,
            t0,
            100,
            final_text("set a timer for ten minutes", 0, 100),
        );
        bus.publish(
            &stream,
            t0,
            16_000,
            EventKind::Wake {
                phrase: "hey jarvis".into(),
                score: 0.9,
                start_sample: 4000,
                end_sample: 16_000,
            },
        );
        // One utterance cut into two finals, as the streaming transcriber may do.
        bus.publish(
            &stream,
            t0,
            30_000,
            final_text("Hey Jarvis; set a", 20_000, 30_000),
        );
        let evil = "timer for ten $(reboot) minutes | && > ~";
        bus.publish(&stream, t0, 40_000, final_text(evil, 31_000, 40_000));
        let mut actions = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline && actions.is_empty() {
            if let Ok(crate::events::Recv::Event(e)) =
                tokio::time::timeout(std::time::Duration::from_millis(200), sub.recv()).await
                && let EventKind::Action(a) = &e.kind
            {
                actions.push(a.clone());
            }
        }
        assert_eq!(actions.len(), 1, "{actions:?}");
        let a = &actions[0];
        assert_eq!(
            (a.id.as_str(), a.slots["minutes"].as_str()),
            ("timer", "10")
        );
        assert!(a.ran && a.start_sample == 20_000);
        while std::time::Instant::now() < deadline && !out.is_file() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let got = std::fs::read_to_string(&out).unwrap();
        // Two arguments: the slot, and the words said (metacharacters are not words).
        assert_eq!(
            got.lines().collect::<Vec<_>>(),
            ["10", "set a timer for ten reboot minutes"]
        );
    }

    #[test]
    fn the_wake_phrase_is_stripped_even_when_misspelt() {
        assert_eq!(
            strip_phrase("Hey Jervis, set a timer.", "hey jarvis"),
            "set a timer"
        );
        assert_eq!(strip_phrase("set a timer", "hey jarvis"), "set a timer");
    }
}
