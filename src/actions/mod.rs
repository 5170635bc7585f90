//! Sentence activation: spoken sentences mapped to configured actions.
//!
//! After a wake word (for `listen_s` seconds), or after any utterance for entries marked
//! `always`, the final transcript is matched against every configured sentence
//! ([`matcher`]); the best match at or above its `min_score` becomes an `Action` event and, when
//! the entry has a `run` command, starts that program ([`runner`]): an argv run directly (never
//! a shell), slot values substituted as whole arguments, with a timeout, its output logged.
//!
//! The listener ([`spawn`]) is a bus consumer like the API: it reads wake and transcript events
//! and publishes action events on the same stream.

pub mod matcher;
pub mod runner;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::events::{ActionEvent, EventBus, EventKind, Recv, STREAM_RATE};
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
    /// value (one argument, whatever it contains), `{sentence}` by what was said. Empty: the
    /// event alone.
    #[serde(default)]
    pub run: Vec<String>,
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
            if let Some(p) = e.run.first()
                && p.trim().is_empty()
            {
                return Err(format!("{at}: run has an empty program name"));
            }
            for arg in &e.run {
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

/// Per-stream listening state.
#[derive(Debug, Default)]
struct Listening {
    /// Until this stream sample, after a wake word, with the phrase heard.
    until: Option<(u64, String)>,
}

/// Starts the listener on `bus`: wake and final transcript events in, action events out.
/// Returns immediately; it stops at `shutdown`. Nothing starts when no entries are configured.
pub fn spawn(
    cfg: &ActionsConfig,
    bus: EventBus,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let matcher = Matcher::new(cfg)?;
    if matcher.is_empty() {
        return Ok(());
    }
    let listen = (cfg.listen_s * STREAM_RATE as f32) as u64;
    let runner = Arc::new(runner::Runner::new(cfg.max_running));
    let mut sub = bus.subscribe();
    tracing::info!(entries = cfg.commands.len(), "Sentence actions enabled.");
    tokio::spawn(async move {
        let mut streams: HashMap<Arc<str>, (Listening, SystemTime)> = HashMap::new();
        loop {
            let item = tokio::select! {
                _ = shutdown.cancelled() => break,
                item = sub.recv() => item,
            };
            let e = match item {
                Recv::Event(e) => e,
                Recv::Gap(n) => {
                    tracing::warn!(missed = n, "Action listener fell behind; events skipped.");
                    continue;
                }
                Recv::Closed => break,
            };
            let state = streams
                .entry(e.stream.clone())
                .or_insert_with(|| (Listening::default(), e.stream_start));
            match &e.kind {
                EventKind::Wake { phrase, .. } => {
                    state.0.until = Some((e.sample + listen, phrase.clone()));
                }
                EventKind::SourceEnded { .. } => {
                    streams.remove(&e.stream);
                }
                EventKind::Transcript(t) if t.is_final => {
                    let woken = state.0.until.as_ref().filter(|(u, _)| t.start_sample <= *u);
                    let text = match woken {
                        Some((_, phrase)) => strip_phrase(&t.text, phrase),
                        None => t.text.clone(),
                    };
                    let Some(m) = matcher.best(&text, woken.is_some()) else {
                        continue;
                    };
                    // One utterance answers one wake word.
                    if woken.is_some() {
                        state.0.until = None;
                    }
                    let ran = !m.argv.is_empty() && runner.start(&m);
                    tracing::info!(id = %m.id, score = m.score, slots = ?m.slots, ran, "Action matched.");
                    bus.publish(
                        &e.stream,
                        state.1,
                        t.end_sample,
                        EventKind::Action(ActionEvent {
                            id: m.id,
                            sentence: m.sentence,
                            matched: m.matched,
                            score: m.score,
                            slots: m.slots,
                            ran,
                            start_sample: t.start_sample,
                            end_sample: t.end_sample,
                        }),
                    );
                }
                _ => {}
            }
        }
    });
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
        let empty = cfg(r#"
[[commands]]
id = "t"
sentences = ["hello"]
run = [""]
"#)
        .unwrap_err();
        assert!(empty.contains("empty program"), "{empty}");
        let dup = cfg("[[commands]]\nid = \"a\"\nsentences = [\"x\"]\n[[commands]]\nid = \"a\"\nsentences = [\"y\"]\n")
            .unwrap_err();
        assert!(dup.contains("twice"), "{dup}");
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
