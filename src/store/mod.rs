//! Durable transcript store: final segments in SQLite (WAL, synchronous=FULL) with an FTS5 index.
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

use crate::events::{Event, EventKind, EventSink, STREAM_RATE, unix_us};

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
    /// Delete segments older than this many days (0 keeps everything).
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

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub stream: String,
    pub text: String,
    pub start_s: f64,
    pub end_s: f64,
    pub wall_us: i64,
    pub snippet: String,
    pub before: Vec<String>,
    pub after: Vec<String>,
}

/// The store. One connection behind a mutex: writes are a few per minute, searches are rare.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    stream_start_us INTEGER NOT NULL,
    start_sample INTEGER NOT NULL,
    end_sample INTEGER NOT NULL,
    wall_us INTEGER NOT NULL,
    language TEXT NOT NULL,
    text TEXT NOT NULL,
    words_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_by_stream ON segments(stream, stream_start_us, start_sample);
CREATE INDEX IF NOT EXISTS segments_by_wall ON segments(wall_us);
CREATE VIRTUAL TABLE IF NOT EXISTS segments_fts USING fts5(
    text, content='segments', content_rowid='id', tokenize='unicode61'
);
CREATE TRIGGER IF NOT EXISTS segments_ai AFTER INSERT ON segments BEGIN
    INSERT INTO segments_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS segments_ad AFTER DELETE ON segments BEGIN
    INSERT INTO segments_fts(segments_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
";

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
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // FULL: a commit is on disk before we return, so before any client sees the event.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a final transcript event; other events are ignored.
    pub fn insert(&self, e: &Event) -> Result<bool, StoreError> {
        let EventKind::Transcript(t) = &e.kind else {
            return Ok(false);
        };
        if !t.is_final || t.text.trim().is_empty() {
            return Ok(false);
        }
        let words: Vec<serde_json::Value> = t
            .words
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
        self.conn().execute(
            "INSERT INTO segments (stream, stream_start_us, start_sample, end_sample, wall_us, language, text, words_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                e.stream.as_ref(),
                unix_us(e.stream_start),
                t.start_sample as i64,
                t.end_sample as i64,
                unix_us(e.stream_start) + (t.start_sample as f64 / f64::from(STREAM_RATE) * 1e6) as i64,
                t.language,
                t.text.trim(),
                serde_json::Value::Array(words).to_string(),
            ],
        )?;
        Ok(true)
    }

    /// Full-text search, newest first.
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        context: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        let fts = to_fts_query(query)?;
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT s.id, s.stream, s.stream_start_us, s.start_sample, s.end_sample, s.wall_us, s.text,
                    snippet(segments_fts, 0, '[', ']', '…', 16)
             FROM segments_fts JOIN segments s ON s.id = segments_fts.rowid
             WHERE segments_fts MATCH ?1
             ORDER BY s.wall_us DESC LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![fts, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut ctx_stmt = conn.prepare(
            "SELECT text FROM segments WHERE stream = ?1 AND stream_start_us = ?2 AND id != ?3
               AND ((?4 = 0 AND start_sample < ?5) OR (?4 = 1 AND start_sample > ?5))
             ORDER BY CASE WHEN ?4 = 0 THEN -start_sample ELSE start_sample END LIMIT ?6",
        )?;
        let mut hits = Vec::with_capacity(rows.len());
        for (id, stream, ss, start, end, wall, text, snippet) in rows {
            let mut side = |after: i64| -> Result<Vec<String>, rusqlite::Error> {
                ctx_stmt
                    .query_map(params![stream, ss, id, after, start, context as i64], |r| {
                        r.get::<_, String>(0)
                    })?
                    .collect()
            };
            let mut before = side(0)?;
            before.reverse();
            let after = side(1)?;
            hits.push(Hit {
                stream: stream.clone(),
                text,
                start_s: start as f64 / f64::from(STREAM_RATE),
                end_s: end as f64 / f64::from(STREAM_RATE),
                wall_us: wall,
                snippet,
                before,
                after,
            });
        }
        Ok(hits)
    }

    /// Deletes segments older than `max_age`; returns how many.
    pub fn prune(&self, max_age: Duration) -> Result<usize, StoreError> {
        let cutoff = unix_us(
            SystemTime::now()
                .checked_sub(max_age)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        Ok(self
            .conn()
            .execute("DELETE FROM segments WHERE wall_us < ?1", params![cutoff])?)
    }

    pub fn count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM segments", [], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64)
    }
}

impl EventSink for Store {
    fn persist(&self, event: &Event) {
        if let Err(e) = self.insert(event) {
            tracing::error!(error = %e, "Could not store a final transcript.");
        }
    }
}

/// Turns user words into a safe FTS5 query: every word must match (quoted, so FTS syntax in the
/// input cannot break the query); `-word` excludes; `word*` is a prefix search.
fn to_fts_query(q: &str) -> Result<String, StoreError> {
    let mut must = Vec::new();
    let mut not = Vec::new();
    for raw in q.split_whitespace() {
        let (neg, w) = match raw.strip_prefix('-') {
            Some(w) => (true, w),
            None => (false, raw),
        };
        let prefix = w.ends_with('*');
        let cleaned: String = w
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '\'')
            .collect();
        if cleaned.is_empty() {
            continue;
        }
        let term = format!(
            "\"{}\"{}",
            cleaned.replace('"', ""),
            if prefix { "*" } else { "" }
        );
        if neg { not.push(term) } else { must.push(term) }
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

/// Most words (required and excluded) in one search.
pub const MAX_QUERY_TERMS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Transcript;
    use std::sync::Arc;

    fn final_event(stream: &str, start: u64, text: &str) -> Event {
        Event {
            seq: 1,
            sample: start + 16_000,
            wall: SystemTime::now(),
            stream_start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            stream: Arc::from(stream),
            kind: EventKind::Transcript(Transcript {
                text: text.into(),
                is_final: true,
                stability: 1.0,
                start_sample: start,
                end_sample: start + 16_000,
                language: "en".into(),
                words: vec![],
            }),
        }
    }

    #[test]
    fn finds_phrases_with_context_and_survives_reopen() {
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
                        .insert(&final_event("main", i as u64 * 32_000, t))
                        .unwrap()
                );
            }
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.count().unwrap(), 4);
        let hits = store.search("your COUNTRY", 10, 1).unwrap();
        assert_eq!(hits.len(), 2);
        let h = hits.iter().find(|h| h.text.starts_with("ask not")).unwrap();
        assert_eq!(h.before, vec!["good morning everyone".to_string()]);
        assert_eq!(
            h.after,
            vec!["ask what you can do for your country".to_string()]
        );
        assert!(h.snippet.contains("[country]"), "{}", h.snippet);
        assert_eq!(h.start_s, 2.0);
        assert_eq!(store.search("country -not", 10, 0).unwrap().len(), 1);
        assert_eq!(store.search("tomor*", 10, 0).unwrap().len(), 1);
        // FTS syntax in user input is neutralised, not an error or injection.
        assert!(store.search("\"country\" OR ) NEAR(", 10, 0).is_ok());
        assert!(store.search("  ", 10, 0).is_err());
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
        // The stream started in 2023: older than any reasonable retention.
        assert_eq!(store.prune(Duration::from_secs(86_400)).unwrap(), 1);
        assert!(store.search("old", 10, 0).unwrap().is_empty());
    }
}
