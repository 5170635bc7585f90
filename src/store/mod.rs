//! Durable transcript store: one row per utterance in SQLite (WAL, synchronous=FULL) with an
//! FTS5 index, so phrase searches work across the streaming finals an utterance was sent as.
//!
//! The store is an [`EventSink`] on the bus, so a final transcript is committed to disk *before*
//! any client receives it: what a client has seen survives SIGTERM, `kill -9` and power loss.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use crate::events::{Event, EventKind, EventSink, STREAM_RATE, ends_sentence, unix_us};

mod when;
pub use when::parse_when;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("transcript store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("transcript store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("invalid search query: {0}")]
    Query(String),
    #[error(
        "transcript store {path} has schema version {found}, newer than this hark understands \
         ({SCHEMA_VERSION}): use the hark that wrote it, or another [store] path"
    )]
    Version { path: PathBuf, found: i64 },
}

/// `[store]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Keep final transcripts in a database.
    pub enabled: bool,
    /// Database file. Empty: `$STATE_DIRECTORY/transcripts.db` under systemd, else
    /// `~/.local/state/hark/transcripts.db` (root: `/var/lib/hark/transcripts.db`).
    pub path: String,
    /// Delete utterances older than this many days (0 keeps everything).
    pub retention_days: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: String::new(),
            retention_days: 30,
        }
    }
}

impl StoreConfig {
    pub fn resolved_path(&self) -> PathBuf {
        if !self.path.is_empty() {
            return PathBuf::from(&self.path);
        }
        state_dir().join("transcripts.db")
    }
}

/// The daemon's state directory: `$STATE_DIRECTORY` under systemd, `/var/lib/hark` for root,
/// else `$XDG_STATE_HOME/hark` (`~/.local/state/hark`).
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return PathBuf::from("/var/lib/hark");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("hark")
}

/// A search result: one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub stream: String,
    /// The stream's utterance id (0 for rows stored without one).
    pub utterance_id: u64,
    pub text: String,
    pub start_s: f64,
    pub end_s: f64,
    pub wall_us: i64,
    /// The whole text with each match wrapped in `[ ]` (adjacent matched words share one pair).
    pub highlighted: String,
    /// A short excerpt around the matches, marked the same way.
    pub snippet: String,
    pub before: Vec<String>,
    pub after: Vec<String>,
}

/// What to search for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchQuery {
    /// Words (all must match), `"quoted phrases"`, `-excluded` words or phrases, `prefix*`.
    pub text: String,
    pub limit: usize,
    /// Utterances of context on each side of a hit.
    pub context: usize,
    /// Only this stream.
    pub stream: Option<String>,
    /// Only utterances that started at or after / before this wall time (unix microseconds).
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
}

/// The store. One connection behind a mutex: writes are a few per minute, searches are rare.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

/// The schema this build writes (`PRAGMA user_version`). 0: stores of hark before utterances
/// (one `segments` row per streaming final), migrated in place on open.
pub const SCHEMA_VERSION: i64 = 2;

/// One row per utterance. `utterance_id` is the stream's own id (NULL for finals that belong
/// to no utterance); `complete` is set once the utterance's own event was stored (until then
/// the row grows with each final, so a crash loses nothing a client has seen).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS utterances (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    stream_start_us INTEGER NOT NULL,
    utterance_id INTEGER,
    start_sample INTEGER NOT NULL,
    end_sample INTEGER NOT NULL,
    wall_us INTEGER NOT NULL,
    language TEXT NOT NULL,
    text TEXT NOT NULL,
    words_json TEXT NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS utterances_key ON utterances(stream, stream_start_us, utterance_id);
CREATE INDEX IF NOT EXISTS utterances_by_stream ON utterances(stream, stream_start_us, start_sample);
CREATE INDEX IF NOT EXISTS utterances_by_wall ON utterances(wall_us);
CREATE VIRTUAL TABLE IF NOT EXISTS utterances_fts USING fts5(
    text, content='utterances', content_rowid='id', tokenize='unicode61'
);
CREATE TRIGGER IF NOT EXISTS utterances_ai AFTER INSERT ON utterances BEGIN
    INSERT INTO utterances_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS utterances_ad AFTER DELETE ON utterances BEGIN
    INSERT INTO utterances_fts(utterances_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER IF NOT EXISTS utterances_au AFTER UPDATE OF text ON utterances BEGIN
    INSERT INTO utterances_fts(utterances_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO utterances_fts(rowid, text) VALUES (new.id, new.text);
END;
";

/// Version 0 rows further apart than this (samples) were different utterances when migrating,
/// as were rows after a sentence end: the same rule the live transcriber uses, with the
/// one-second pause the action matcher has always used to group finals.
const MIGRATE_GAP: i64 = STREAM_RATE as i64;
/// Longest utterance the migration builds, samples (the transcriber's default cap).
const MIGRATE_MAX: i64 = 30 * STREAM_RATE as i64;

/// Markers `highlight()` puts around matches before they become `[ ]`: private-use characters,
/// which no transcript contains, so adjacent matches can be merged safely.
const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: char = '\u{E001}';

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // FULL: a commit is on disk before we return, so before any client sees the event.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        if version < SCHEMA_VERSION {
            let migrated = migrate(&mut conn).map_err(open_err)?;
            if migrated > 0 {
                tracing::info!(
                    path = %path.display(),
                    from = version,
                    to = SCHEMA_VERSION,
                    utterances = migrated,
                    "Migrated the transcript store."
                );
            }
        }
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a final transcript (appended to its utterance's row) or a whole utterance
    /// (replacing the row with the authoritative text); other events are ignored.
    pub fn insert(&self, e: &Event) -> Result<bool, StoreError> {
        let (id, text, start, end, language, words, complete) = match &e.kind {
            EventKind::Transcript(t) if t.is_final && !t.text.trim().is_empty() => (
                t.utterance_id,
                t.text.trim(),
                t.start_sample,
                t.end_sample,
                &t.language,
                &t.words,
                false,
            ),
            EventKind::Utterance(u) if !u.text.trim().is_empty() => (
                u.id,
                u.text.trim(),
                u.start_sample,
                u.end_sample,
                &u.language,
                &u.words,
                true,
            ),
            _ => return Ok(false),
        };
        let words = words_json(words);
        let stream_start = unix_us(e.stream_start);
        let wall = |start: u64| stream_start + (start as f64 / f64::from(STREAM_RATE) * 1e6) as i64;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let existing = if id == 0 {
            None
        } else {
            tx.query_row(
                "SELECT id, start_sample, text, words_json FROM utterances
                 WHERE stream = ?1 AND stream_start_us = ?2 AND utterance_id = ?3",
                params![e.stream.as_ref(), stream_start, id as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?
        };
        match existing {
            Some((row, _, _, _)) if complete => {
                tx.execute(
                    "UPDATE utterances SET start_sample = ?2, end_sample = ?3, wall_us = ?4,
                        language = ?5, text = ?6, words_json = ?7, complete = 1 WHERE id = ?1",
                    params![
                        row,
                        start as i64,
                        end as i64,
                        wall(start),
                        language,
                        text,
                        words
                    ],
                )?;
            }
            Some((row, first, old_text, old_words)) => {
                let mut all: Vec<serde_json::Value> =
                    serde_json::from_str(&old_words).unwrap_or_default();
                all.extend(
                    serde_json::from_str::<Vec<serde_json::Value>>(&words).unwrap_or_default(),
                );
                let start = (first as u64).min(start);
                tx.execute(
                    "UPDATE utterances SET start_sample = ?2, end_sample = max(end_sample, ?3),
                        wall_us = ?4, language = ?5, text = ?6, words_json = ?7 WHERE id = ?1",
                    params![
                        row,
                        start as i64,
                        end as i64,
                        wall(start),
                        language,
                        format!("{old_text} {text}"),
                        serde_json::Value::Array(all).to_string(),
                    ],
                )?;
            }
            None => {
                tx.execute(
                    "INSERT INTO utterances (stream, stream_start_us, utterance_id, start_sample,
                        end_sample, wall_us, language, text, words_json, complete)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        e.stream.as_ref(),
                        stream_start,
                        (id != 0).then_some(id as i64),
                        start as i64,
                        end as i64,
                        wall(start),
                        language,
                        text,
                        words,
                        complete,
                    ],
                )?;
            }
        }
        tx.commit()?;
        Ok(true)
    }

    /// Full-text search over utterances, newest first.
    pub fn search(&self, q: &SearchQuery) -> Result<Vec<Hit>, StoreError> {
        let fts = to_fts_query(&q.text)?;
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT s.id, s.stream, s.stream_start_us, s.utterance_id, s.start_sample,
                    s.end_sample, s.wall_us, s.text,
                    highlight(utterances_fts, 0, '{MARK_OPEN}', '{MARK_CLOSE}'),
                    snippet(utterances_fts, 0, '{MARK_OPEN}', '{MARK_CLOSE}', '…', 16)
             FROM utterances_fts JOIN utterances s ON s.id = utterances_fts.rowid
             WHERE utterances_fts MATCH ?1
               AND (?3 IS NULL OR s.stream = ?3)
               AND (?4 IS NULL OR s.wall_us >= ?4)
               AND (?5 IS NULL OR s.wall_us < ?5)
             ORDER BY s.wall_us DESC LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(
                params![fts, q.limit as i64, q.stream, q.since_us, q.until_us],
                |r| {
                    Ok((
                        (
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                        ),
                        r.get::<_, Option<i64>>(3)?,
                        (
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, i64>(6)?,
                        ),
                        (
                            r.get::<_, String>(7)?,
                            r.get::<_, String>(8)?,
                            r.get::<_, String>(9)?,
                        ),
                    ))
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let mut ctx_stmt = conn.prepare(
            "SELECT text FROM utterances WHERE stream = ?1 AND stream_start_us = ?2 AND id != ?3
               AND ((?4 = 0 AND start_sample < ?5) OR (?4 = 1 AND start_sample > ?5))
             ORDER BY CASE WHEN ?4 = 0 THEN -start_sample ELSE start_sample END LIMIT ?6",
        )?;
        let mut hits = Vec::with_capacity(rows.len());
        for ((id, stream, ss), utterance_id, (start, end, wall), (text, marked, snippet)) in rows {
            let mut side = |after: i64| -> Result<Vec<String>, rusqlite::Error> {
                ctx_stmt
                    .query_map(
                        params![stream, ss, id, after, start, q.context as i64],
                        |r| r.get::<_, String>(0),
                    )?
                    .collect()
            };
            let mut before = side(0)?;
            before.reverse();
            let after = side(1)?;
            hits.push(Hit {
                stream: stream.clone(),
                utterance_id: utterance_id.unwrap_or(0) as u64,
                text,
                start_s: start as f64 / f64::from(STREAM_RATE),
                end_s: end as f64 / f64::from(STREAM_RATE),
                wall_us: wall,
                highlighted: brackets(&marked),
                snippet: brackets(&snippet),
                before,
                after,
            });
        }
        Ok(hits)
    }

    /// Deletes utterances older than `max_age`; returns how many.
    pub fn prune(&self, max_age: Duration) -> Result<usize, StoreError> {
        let cutoff = unix_us(
            SystemTime::now()
                .checked_sub(max_age)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        Ok(self
            .conn()
            .execute("DELETE FROM utterances WHERE wall_us < ?1", params![cutoff])?)
    }

    /// Stored utterances.
    pub fn count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM utterances", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0) as u64)
    }
}

fn words_json(words: &[crate::events::Word]) -> String {
    let words: Vec<serde_json::Value> = words
        .iter()
        .map(|w| {
            serde_json::json!({
                "word": w.word,
                "start": w.start_sample as f64 / f64::from(STREAM_RATE),
                "end": w.end_sample as f64 / f64::from(STREAM_RATE),
                "p": w.p,
            })
        })
        .collect();
    serde_json::Value::Array(words).to_string()
}

/// Turns the highlight markers into `[ ]`, one pair around a run of matched words that only
/// spaces separate.
fn brackets(marked: &str) -> String {
    let chars: Vec<char> = marked.chars().collect();
    let mut out = String::with_capacity(marked.len());
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            MARK_OPEN => out.push('['),
            MARK_CLOSE => {
                let mut j = i + 1;
                while chars.get(j) == Some(&' ') {
                    j += 1;
                }
                if chars.get(j) == Some(&MARK_OPEN) {
                    out.extend(&chars[i + 1..j]);
                    i = j;
                } else {
                    out.push(']');
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Migrates a store of an older schema to [`SCHEMA_VERSION`] in one transaction; returns the
/// number of utterances written. Version 0 kept one `segments` row per streaming final: rows
/// of a stream are joined into utterances where they follow each other by at most
/// [`MIGRATE_GAP`] and the earlier one does not end a sentence.
fn migrate(conn: &mut Connection) -> Result<usize, rusqlite::Error> {
    let tx = conn.transaction()?;
    tx.execute_batch(SCHEMA)?;
    let has_segments: bool = tx.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'segments'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    let mut written = 0;
    if has_segments {
        struct Row {
            stream: String,
            stream_start_us: i64,
            start: i64,
            end: i64,
            wall: i64,
            language: String,
            text: String,
            words: Vec<serde_json::Value>,
        }
        let rows: Vec<Row> = tx
            .prepare(
                "SELECT stream, stream_start_us, start_sample, end_sample, wall_us, language,
                        text, words_json
                 FROM segments ORDER BY stream, stream_start_us, start_sample, id",
            )?
            .query_map([], |r| {
                Ok(Row {
                    stream: r.get(0)?,
                    stream_start_us: r.get(1)?,
                    start: r.get(2)?,
                    end: r.get(3)?,
                    wall: r.get(4)?,
                    language: r.get(5)?,
                    text: r.get(6)?,
                    words: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut insert = tx.prepare(
            "INSERT INTO utterances (stream, stream_start_us, utterance_id, start_sample,
                end_sample, wall_us, language, text, words_json, complete)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1)",
        )?;
        let mut next_id = 0i64;
        let mut current: Option<Row> = None;
        let mut flush = |u: Row, id: i64| {
            insert.execute(params![
                u.stream,
                u.stream_start_us,
                id,
                u.start,
                u.end,
                u.wall,
                u.language,
                u.text,
                serde_json::Value::Array(u.words).to_string(),
            ])
        };
        for row in rows {
            match current.as_mut() {
                Some(u)
                    if u.stream == row.stream
                        && u.stream_start_us == row.stream_start_us
                        && row.start - u.end <= MIGRATE_GAP
                        && row.end - u.start <= MIGRATE_MAX
                        && !u.text.split_whitespace().last().is_some_and(ends_sentence) =>
                {
                    u.end = u.end.max(row.end);
                    u.text.push(' ');
                    u.text.push_str(&row.text);
                    u.words.extend(row.words);
                }
                _ => {
                    let same_stream = current.as_ref().is_some_and(|u| {
                        u.stream == row.stream && u.stream_start_us == row.stream_start_us
                    });
                    if let Some(u) = current.replace(row) {
                        flush(u, next_id)?;
                        written += 1;
                    }
                    next_id = if same_stream { next_id + 1 } else { 1 };
                }
            }
        }
        if let Some(u) = current.take() {
            flush(u, next_id)?;
            written += 1;
        }
        drop(insert);
        tx.execute_batch(
            "DROP TRIGGER IF EXISTS segments_ai;
             DROP TRIGGER IF EXISTS segments_ad;
             DROP TABLE IF EXISTS segments_fts;
             DROP TABLE segments;",
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(written)
}

impl EventSink for Store {
    fn persist(&self, event: &Event) {
        if let Err(e) = self.insert(event) {
            tracing::error!(error = %e, "Could not store a transcript.");
        }
    }
}

/// Turns user input into a safe FTS5 query. Every word and every `"quoted phrase"` must match
/// (quoted again here, so FTS syntax in the input cannot break the query); `-word` and
/// `-"phrase"` exclude; `word*` is a prefix search. An unclosed quote runs to the end.
fn to_fts_query(q: &str) -> Result<String, StoreError> {
    let mut must = Vec::new();
    let mut not = Vec::new();
    let clean = |w: &str| -> String {
        w.chars()
            .filter(|c| c.is_alphanumeric() || *c == '\'')
            .collect()
    };
    let mut rest = q.trim_start();
    while !rest.is_empty() {
        let (neg, body) = match rest.strip_prefix('-') {
            Some(b) if b.starts_with(|c: char| !c.is_whitespace()) => (true, b),
            _ => (false, rest),
        };
        let term;
        if let Some(phrase) = body.strip_prefix('"') {
            let (inside, after) = phrase.split_once('"').unwrap_or((phrase, ""));
            let words: Vec<String> = inside
                .split_whitespace()
                .map(clean)
                .filter(|w| !w.is_empty())
                .collect();
            rest = after.trim_start();
            term = (!words.is_empty()).then(|| format!("\"{}\"", words.join(" ")));
        } else {
            let end = body.find(char::is_whitespace).unwrap_or(body.len());
            let w = &body[..end];
            rest = body[end..].trim_start();
            let cleaned = clean(w);
            term = (!cleaned.is_empty())
                .then(|| format!("\"{cleaned}\"{}", if w.ends_with('*') { "*" } else { "" }));
        }
        if let Some(t) = term {
            if neg { not.push(t) } else { must.push(t) }
        }
    }
    if must.is_empty() {
        return Err(StoreError::Query(
            "the query has no words to search for".into(),
        ));
    }
    // SQLite's FTS parser nests each NOT: 300 of them overflowed its expression depth, which
    // came back as an internal error.
    if must.len() + not.len() > MAX_QUERY_TERMS {
        return Err(StoreError::Query(format!(
            "the query has {} terms; at most {MAX_QUERY_TERMS} are allowed",
            must.len() + not.len()
        )));
    }
    let mut s = must.join(" AND ");
    for n in not {
        s.push_str(" NOT ");
        s.push_str(&n);
    }
    Ok(s)
}

/// Most words and phrases (required and excluded) in one search.
pub const MAX_QUERY_TERMS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Transcript, Utterance, UtteranceEnd, Word};
    use std::sync::Arc;

    const STREAM_START_S: u64 = 1_700_000_000;

    fn event(stream: &str, kind: EventKind) -> Event {
        Event {
            seq: 1,
            sample: 0,
            wall: SystemTime::now(),
            stream_start: SystemTime::UNIX_EPOCH + Duration::from_secs(STREAM_START_S),
            stream: Arc::from(stream),
            kind,
        }
    }

    fn words(text: &str, start: u64) -> Vec<Word> {
        text.split_whitespace()
            .enumerate()
            .map(|(i, w)| Word {
                word: w.into(),
                start_sample: start + i as u64 * 4_000,
                end_sample: start + i as u64 * 4_000 + 3_000,
                p: 0.9,
            })
            .collect()
    }

    fn final_in(stream: &str, utterance_id: u64, start: u64, text: &str) -> Event {
        let words = words(text, start);
        event(
            stream,
            EventKind::Transcript(Transcript {
                text: text.into(),
                is_final: true,
                stability: 1.0,
                start_sample: start,
                end_sample: words.last().map_or(start, |w| w.end_sample),
                language: "en".into(),
                words,
                utterance_id,
            }),
        )
    }

    fn final_event(stream: &str, start: u64, text: &str) -> Event {
        final_in(stream, 0, start, text)
    }

    fn query(text: &str, context: usize) -> SearchQuery {
        SearchQuery {
            text: text.into(),
            limit: 10,
            context,
            ..SearchQuery::default()
        }
    }

    #[test]
    fn finds_words_with_context_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let store = Store::open(&path).unwrap();
            for (i, t) in [
                "good morning everyone",
                "ask not what your country can do for you",
                "ask what you can do for your country",
                "see you tomorrow",
            ]
            .iter()
            .enumerate()
            {
                assert!(
                    store
                        .insert(&final_in("main", i as u64 + 1, i as u64 * 64_000, t))
                        .unwrap()
                );
            }
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.count().unwrap(), 4);
        let hits = store.search(&query("your COUNTRY", 1)).unwrap();
        assert_eq!(hits.len(), 2);
        let h = hits.iter().find(|h| h.text.starts_with("ask not")).unwrap();
        assert_eq!(h.before, vec!["good morning everyone".to_string()]);
        assert_eq!(
            h.after,
            vec!["ask what you can do for your country".to_string()]
        );
        assert!(h.snippet.contains("[your country]"), "{}", h.snippet);
        assert_eq!(h.utterance_id, 2);
        assert_eq!(h.start_s, 4.0);
        assert_eq!(store.search(&query("country -not", 0)).unwrap().len(), 1);
        assert_eq!(store.search(&query("tomor*", 0)).unwrap().len(), 1);
        // FTS syntax in user input is neutralised, not an error or injection.
        assert!(store.search(&query("\"country\" OR ) NEAR(", 0)).is_ok());
        assert!(store.search(&query("  ", 0)).is_err());
        assert!(store.search(&query("\" \" -", 0)).is_err());
    }

    #[test]
    fn finals_of_one_utterance_are_one_row_and_phrases_span_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        // How the streaming transcriber sends a sentence: low-latency fragments.
        for (start, t) in [
            (0, "the first books"),
            (12_000, "were printed from"),
            (24_000, "movable types."),
        ] {
            store.insert(&final_in("main", 7, start, t)).unwrap();
        }
        assert_eq!(store.count().unwrap(), 1);
        let hits = store
            .search(&query("\"the first books were printed\"", 0))
            .unwrap();
        assert_eq!(hits.len(), 1, "the phrase spans two finals");
        let h = &hits[0];
        assert_eq!(h.text, "the first books were printed from movable types.");
        assert_eq!(
            h.highlighted,
            "[the first books were printed] from movable types."
        );
        assert_eq!(
            (h.start_s, h.end_s),
            (0.0, (24_000 + 4_000 + 3_000) as f64 / 16e3)
        );
        // Word order matters in a phrase; not for plain words.
        assert!(
            store
                .search(&query("\"books first\"", 0))
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.search(&query("books first", 0)).unwrap().len(), 1);
        assert!(
            store
                .search(&query("-\"movable types\" books", 0))
                .unwrap()
                .is_empty()
        );
        // An unclosed quote runs to the end.
        assert_eq!(store.search(&query("\"movable types", 0)).unwrap().len(), 1);
        // The utterance event is authoritative: its text replaces the row's, still one row.
        let text = "The first books were printed from movable types.";
        store
            .insert(&event(
                "main",
                EventKind::Utterance(Utterance {
                    id: 7,
                    text: text.into(),
                    start_sample: 0,
                    end_sample: 31_000,
                    language: "en".into(),
                    words: words(text, 0),
                    reason: UtteranceEnd::Sentence,
                }),
            ))
            .unwrap();
        assert_eq!(store.count().unwrap(), 1);
        let conn = store.conn();
        let (stored, complete, n_words): (String, bool, i64) = conn
            .query_row(
                "SELECT text, complete, json_array_length(words_json) FROM utterances",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((stored.as_str(), complete, n_words), (text, true, 8));
    }

    #[test]
    fn filters_by_stream_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .insert(&final_in("main", 1, 0, "hello there"))
            .unwrap();
        store
            .insert(&final_in("main", 2, 160_000, "hello again"))
            .unwrap();
        store
            .insert(&final_in("session-1", 1, 0, "hello from a session"))
            .unwrap();
        let base = STREAM_START_S as i64 * 1_000_000;
        let run = |stream: Option<&str>, since: Option<i64>, until: Option<i64>| {
            let mut found: Vec<String> = store
                .search(&SearchQuery {
                    stream: stream.map(str::to_string),
                    since_us: since,
                    until_us: until,
                    ..query("hello", 0)
                })
                .unwrap()
                .into_iter()
                .map(|h| h.text)
                .collect();
            found.sort();
            found
        };
        assert_eq!(run(None, None, None).len(), 3);
        assert_eq!(run(Some("session-1"), None, None), ["hello from a session"]);
        // The second utterance started 10 s into the stream.
        assert_eq!(
            run(Some("main"), Some(base + 5_000_000), None),
            ["hello again"]
        );
        assert_eq!(
            run(None, None, Some(base + 5_000_000)),
            ["hello from a session", "hello there"]
        );
        assert!(run(Some("nope"), None, None).is_empty());
    }

    /// The schema of hark before utterances, as it created it.
    const V0_SCHEMA: &str = "
    CREATE TABLE segments (
        id INTEGER PRIMARY KEY, stream TEXT NOT NULL, stream_start_us INTEGER NOT NULL,
        start_sample INTEGER NOT NULL, end_sample INTEGER NOT NULL, wall_us INTEGER NOT NULL,
        language TEXT NOT NULL, text TEXT NOT NULL, words_json TEXT NOT NULL
    );
    CREATE INDEX segments_by_stream ON segments(stream, stream_start_us, start_sample);
    CREATE INDEX segments_by_wall ON segments(wall_us);
    CREATE VIRTUAL TABLE segments_fts USING fts5(
        text, content='segments', content_rowid='id', tokenize='unicode61'
    );
    CREATE TRIGGER segments_ai AFTER INSERT ON segments BEGIN
        INSERT INTO segments_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER segments_ad AFTER DELETE ON segments BEGIN
        INSERT INTO segments_fts(segments_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    ";

    #[test]
    fn version_0_stores_are_migrated_into_utterances() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(V0_SCHEMA).unwrap();
            // (stream, start s, end s, text): fragments as the old daemon stored them.
            for (stream, a, b, t) in [
                ("main", 1.0, 2.0, "the first books"),
                ("main", 2.1, 3.0, "were printed from"),
                ("main", 3.2, 4.0, "movable types."),
                ("main", 4.3, 5.0, "Then came"),
                // A pause of 3 s: another utterance.
                ("main", 8.0, 9.0, "paper mills"),
                ("session-1", 1.0, 2.0, "another stream"),
            ] {
                let s = (a * 16_000.0) as i64;
                conn.execute(
                    "INSERT INTO segments (stream, stream_start_us, start_sample, end_sample,
                        wall_us, language, text, words_json) VALUES (?1, 5, ?2, ?3, ?4, 'en', ?5, ?6)",
                    params![
                        stream,
                        s,
                        (b * 16_000.0) as i64,
                        5 + (a * 1e6) as i64,
                        t,
                        format!("[{{\"word\":\"{t}\",\"start\":{a},\"end\":{b},\"p\":0.9}}]"),
                    ],
                )
                .unwrap();
            }
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.count().unwrap(), 4);
        let hits = store
            .search(&query("\"books were printed from movable\"", 0))
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(
            hits[0].text,
            "the first books were printed from movable types."
        );
        assert_eq!(
            (hits[0].start_s, hits[0].end_s, hits[0].utterance_id),
            (1.0, 4.0, 1)
        );
        let then = store.search(&query("came", 1)).unwrap();
        assert_eq!(then[0].text, "Then came");
        assert_eq!(then[0].utterance_id, 2);
        assert_eq!(then[0].after, ["paper mills"]);
        {
            let conn = store.conn();
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION);
            let words: i64 = conn
                .query_row(
                    "SELECT json_array_length(words_json) FROM utterances WHERE utterance_id = 1
                       AND stream = 'main'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(words, 3);
            let old: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name LIKE 'segments%'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(old, 0);
        }
        drop(store);
        // Opening again changes nothing; new finals go on after the migrated rows.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.count().unwrap(), 4);
        store
            .insert(&final_in("main", 1, 0, "a new stream run"))
            .unwrap();
        assert_eq!(store.count().unwrap(), 5);
    }

    #[test]
    fn a_store_of_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Version { found: 3, .. }), "{err}");
    }

    #[test]
    fn interim_results_are_not_stored_and_retention_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let mut e = final_event("main", 0, "maybe");
        if let EventKind::Transcript(t) = &mut e.kind {
            t.is_final = false;
        }
        assert!(!store.insert(&e).unwrap());
        assert!(store.insert(&final_event("main", 0, "old words")).unwrap());
        assert!(
            store
                .insert(&final_event("main", 0, "more old words"))
                .unwrap()
        );
        assert_eq!(
            store.count().unwrap(),
            2,
            "finals outside utterances stay apart"
        );
        // The stream started in 2023: older than any reasonable retention.
        assert_eq!(store.prune(Duration::from_secs(86_400)).unwrap(), 2);
        assert!(store.search(&query("old", 0)).unwrap().is_empty());
    }

    #[test]
    fn highlight_markers_become_one_bracket_pair_per_run() {
        let m = |s: &str| {
            s.replace('<', &MARK_OPEN.to_string())
                .replace('>', &MARK_CLOSE.to_string())
        };
        assert_eq!(brackets(&m("<a> <b> c <d>")), "[a b] c [d]");
        assert_eq!(brackets(&m("<a>, <b>")), "[a], [b]");
        assert_eq!(brackets(&m("x")), "x");
    }
}
