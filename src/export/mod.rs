//! Event export to NATS JetStream (`[export.nats]`): every event the bus carries is published on
//! `<prefix>.<node>.<stream>.<kind>` (e.g. `hark.kitchen.main.transcript_final`), so a fleet of
//! daemons (one per room) lands in one place.
//!
//! ```text
//!  event bus ──(subscription; may lag: a Gap counts as dropped)──► exporter task
//!                                                                   │ encode (protobuf | JSON)
//!                              spool empty and server reachable ◄───┤
//!                              publish, wait for the ack            │ else: append to the spool
//!                                                                   ▼
//!                                                  on-disk spool (bounded; full => drop oldest)
//!                                                  drained in order once the server is back
//! ```
//!
//! The exporter is an ordinary bus subscriber in its own task: publishing never waits on it,
//! and nothing on the audio path knows it exists. Messages carry `Nats-Msg-Id`
//! (`<node>-<boot>-<seq>`), so a retry of a publish whose ack was lost is dropped by the server
//! instead of stored twice.
//!
//! **Order.** One publish is in flight at a time: JetStream stores messages in the order they
//! arrive, and with a window of one a message that was lost (connection dropped) can never be
//! overtaken by the next one, which a pipelined window allows after a reconnect. The price is one
//! round trip per event: ~5,000 events/s on a LAN, ~20/s across a 50 ms WAN link (a daemon
//! publishes a few per second, ~10 more with the level meter). The spool keeps order by
//! construction: while it holds anything, new events are appended behind it.
//!
//! This module knows events and nothing of stages or protobuf: the daemon hands it an encoder
//! (the API's `Event` message), so the gRPC API and the export carry the same bytes.

pub mod spool;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventBus, Recv, Subscription, unix_us};
use spool::{Record, Spool, SpoolError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("export.nats.url {url:?}: {message}")]
    Url { url: String, message: String },
}

/// `[export]`: where events go besides the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    pub nats: NatsExportConfig,
}

/// `[export.nats]`: publish every event to NATS JetStream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsExportConfig {
    /// Publish events to JetStream (off by default).
    pub enabled: bool,
    /// Server URL(s), comma-separated (`nats://host:4222`; `nats://user:pass@host` for
    /// password auth, `tls://` for TLS).
    pub url: String,
    /// This daemon's name in subjects (one subject token: letters, digits, `-`, `_`). Empty:
    /// the host name up to its first dot.
    pub node: String,
    /// JetStream stream that stores the events; created (subjects `<prefix>.*.*.*`, file
    /// storage) when missing. An existing stream is used as it is.
    pub stream: String,
    /// First subject token(s): subjects are `<prefix>.<node>.<stream>.<kind>`.
    pub subject_prefix: String,
    /// Body encoding: `protobuf` (the API's `hark.v1.Event`, as Subscribe sends it) or `json`
    /// (the line `hark subscribe --json` prints). The `Content-Type` header says which.
    pub format: ExportFormat,
    /// Where events wait while the server is unreachable. Empty: `export-spool` in the state
    /// directory (`$STATE_DIRECTORY`, `/var/lib/hark` for root, `~/.local/state/hark`).
    pub spool_dir: String,
    /// Largest spool on disk, bytes; beyond it the oldest events are dropped (and counted).
    pub spool_max_bytes: u64,
    /// How long to wait for the server to acknowledge a publish before spooling the event and
    /// retrying, milliseconds.
    pub ack_timeout_ms: u64,
    /// Days JetStream keeps events in a stream this daemon creates (0: until limits say).
    pub max_age_days: u32,
}

/// How exported events are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Protobuf,
    Json,
}

impl ExportFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Protobuf => "application/x-protobuf; messageType=hark.v1.Event",
            ExportFormat::Json => "application/json",
        }
    }
}

impl Default for NatsExportConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: "nats://127.0.0.1:4222".into(),
            node: String::new(),
            stream: "HARK_EVENTS".into(),
            subject_prefix: "hark".into(),
            format: ExportFormat::Protobuf,
            spool_dir: String::new(),
            spool_max_bytes: 256 * 1024 * 1024,
            ack_timeout_ms: 5000,
            max_age_days: 30,
        }
    }
}

/// A valid subject token: no dots, wildcards or white space, and not empty.
pub fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `s` made into a subject token (anything else becomes `_`).
pub fn subject_token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "_".into() } else { t }
}

/// This machine's host name up to its first dot, as a subject token.
pub fn default_node() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let short = name.trim().split('.').next().unwrap_or("").to_string();
    if short.is_empty() {
        "hark".into()
    } else {
        subject_token(&short)
    }
}

impl NatsExportConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        for u in self.url.split(',') {
            u.trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("export.nats.url {u:?}: {e}"))?;
        }
        if !self.node.is_empty() && !is_subject_token(&self.node) {
            return Err(format!(
                "export.nats.node {:?} must be one subject token (letters, digits, - and _)",
                self.node
            ));
        }
        if !self.subject_prefix.split('.').all(is_subject_token) {
            return Err(format!(
                "export.nats.subject_prefix {:?}: dot-separated tokens of letters, digits, - and _",
                self.subject_prefix
            ));
        }
        if !is_subject_token(&self.stream) {
            return Err(format!(
                "export.nats.stream {:?}: a JetStream stream name (letters, digits, - and _)",
                self.stream
            ));
        }
        if !(64 * 1024..=1 << 40).contains(&self.spool_max_bytes) {
            return Err("export.nats.spool_max_bytes must be within 64 KiB..=1 TiB".into());
        }
        if !(100..=600_000).contains(&self.ack_timeout_ms) {
            return Err("export.nats.ack_timeout_ms must be within 100..=600000".into());
        }
        Ok(())
    }

    /// The node name in use (configured, else the host name).
    pub fn node_name(&self) -> String {
        if self.node.is_empty() {
            default_node()
        } else {
            self.node.clone()
        }
    }

    pub fn spool_path(&self) -> PathBuf {
        if self.spool_dir.is_empty() {
            crate::store::state_dir().join("export-spool")
        } else {
            PathBuf::from(&self.spool_dir)
        }
    }
}

/// Live counters of the exporter, read by `GetStatus` and `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub url: String,
    pub node: String,
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub spooled_events: AtomicU64,
    pub spooled_bytes: AtomicU64,
    pub dropped: AtomicU64,
    pub lag_events: AtomicU64,
    /// Publish time of the oldest event not yet acknowledged, µs since the epoch (0: none).
    pub oldest_pending_us: AtomicI64,
    pub last_error: Mutex<String>,
}

impl ExportStats {
    /// Age of the oldest event not yet acknowledged, seconds.
    pub fn lag_s(&self) -> f64 {
        match self.oldest_pending_us.load(Ordering::Relaxed) {
            0 => 0.0,
            t => ((unix_us(SystemTime::now()) - t) as f64 / 1e6).max(0.0),
        }
    }

    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_error(&self, e: impl std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e.to_string();
    }
}

/// Encodes an event for the wire (the daemon passes the API's encoder).
pub type Encoder = fn(&Event, ExportFormat) -> Vec<u8>;

/// A running exporter.
#[derive(Debug)]
pub struct ExportHandle {
    pub stats: Arc<ExportStats>,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl ExportHandle {
    /// Publishes (or spools) what is still on the bus, saves the spool, and returns; gives up
    /// after `limit`, leaving whatever was not yet taken from the bus unsent.
    pub async fn shutdown(self, limit: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!(
                "Event export did not finish within {} s; exiting anyway.",
                limit.as_secs()
            );
        }
    }
}

/// Starts the exporter: subscribes to `bus` now (call before audio flows, so it sees the first
/// event), opens the spool, and connects in the background.
pub async fn spawn(
    cfg: &NatsExportConfig,
    bus: &EventBus,
    encode: Encoder,
) -> Result<ExportHandle, ExportError> {
    let sub = bus.subscribe();
    let spool = Spool::open(&cfg.spool_path(), cfg.spool_max_bytes)?;
    let node = cfg.node_name();
    let stats = Arc::new(ExportStats {
        url: cfg.url.clone(),
        node: node.clone(),
        ..Default::default()
    });
    if !spool.is_empty() {
        tracing::info!(
            events = spool.len(),
            bytes = spool.bytes(),
            "Export spool holds events from an earlier run; they go first."
        );
    }
    let client = async_nats::ConnectOptions::new()
        .name(format!("harkd {node}"))
        .retry_on_initial_connect()
        // Spooling takes over while disconnected; a short ceiling on the reconnect delay means
        // a server that is back is found within a second.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .connect(
            cfg.url
                .split(',')
                .map(|u| u.trim().parse::<async_nats::ServerAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ExportError::Url {
                    url: cfg.url.clone(),
                    message: e.to_string(),
                })?,
        )
        .await
        .map_err(|e| ExportError::Url {
            url: cfg.url.clone(),
            message: e.to_string(),
        })?;
    let ack_timeout = Duration::from_millis(cfg.ack_timeout_ms);
    let js = jetstream::ContextBuilder::new()
        .timeout(ack_timeout)
        .build(client.clone());
    let stop = CancellationToken::new();
    let exporter = Exporter {
        client,
        js,
        stream: cfg.stream.clone(),
        stream_subjects: format!("{}.*.*.*", cfg.subject_prefix),
        max_age: Duration::from_secs(u64::from(cfg.max_age_days) * 86_400),
        stream_ready: false,
        prefix: cfg.subject_prefix.clone(),
        node,
        format: cfg.format,
        boot_us: unix_us(SystemTime::now()),
        encode,
        spool,
        stats: stats.clone(),
        ack_timeout,
    };
    tracing::info!(url = %cfg.url, node = %exporter.node, stream = %cfg.stream, "Exporting events to NATS JetStream.");
    let task = tokio::spawn(exporter.run(sub, stop.clone()));
    Ok(ExportHandle { stats, task, stop })
}

struct Exporter {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    stream_subjects: String,
    max_age: Duration,
    /// The stream was found or created on the current connection.
    stream_ready: bool,
    prefix: String,
    node: String,
    format: ExportFormat,
    /// Start of this process, µs: with the bus `seq`, a message id unique across restarts.
    boot_us: i64,
    encode: Encoder,
    spool: Spool,
    stats: Arc<ExportStats>,
    ack_timeout: Duration,
}

/// Why a publish did not go through (logged once per outage, kept in the status).
#[derive(Debug, thiserror::Error)]
enum PublishFailure {
    #[error("not connected")]
    Disconnected,
    #[error("stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("publish: {0}")]
    Publish(String),
}

impl Exporter {
    fn record(&self, e: &Event) -> Record {
        Record {
            subject: format!(
                "{}.{}.{}.{}",
                self.prefix,
                self.node,
                subject_token(&e.stream),
                e.kind.name()
            ),
            msg_id: format!("{}-{}-{}", self.node, self.boot_us, e.seq),
            content_type: self.format.content_type().into(),
            wall_us: unix_us(e.wall),
            body: (self.encode)(e, self.format),
        }
    }

    /// Connected, and the stream exists (created when missing).
    async fn ready(&mut self) -> Result<(), PublishFailure> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            self.stream_ready = false;
            return Err(PublishFailure::Disconnected);
        }
        if self.stream_ready {
            return Ok(());
        }
        let config = jetstream::stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.stream_subjects.clone()],
            storage: jetstream::stream::StorageType::File,
            max_age: self.max_age,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| PublishFailure::Stream {
                stream: self.stream.clone(),
                message: e.to_string(),
            })?;
        self.stream_ready = true;
        Ok(())
    }

    /// Publishes one record and waits for the server's ack.
    async fn publish(&mut self, r: &Record) -> Result<(), PublishFailure> {
        self.ready().await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", r.content_type.as_str());
        let msg = jetstream::message::PublishMessage::build()
            .payload(r.body.clone().into())
            .headers(headers)
            .message_id(&r.msg_id);
        let result = async {
            let ack = self
                .js
                .send_publish(r.subject.clone(), msg)
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(self.ack_timeout, ack)
                .await
                .map_err(|_| "no acknowledgement in time".to_string())?
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(_) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // The stream may be gone (a server that lost its storage): look again next time.
                self.stream_ready = false;
                Err(PublishFailure::Publish(e))
            }
        }
    }

    fn spool_push(&mut self, r: &Record) {
        match self.spool.push(r) {
            Ok(0) => {}
            Ok(n) => {
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    dropped = n,
                    spooled_bytes = self.spool.bytes(),
                    "Export spool full: dropped the oldest events."
                );
            }
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.stats.set_error(&e);
                tracing::error!(error = %e, "Export spool write failed; event dropped.");
            }
        }
    }

    /// Takes one bus item: an event is spooled, a gap counted. False when the bus closed.
    fn absorb(&mut self, item: Recv) -> bool {
        match item {
            Recv::Event(e) => {
                let r = self.record(&e);
                self.spool_push(&r);
                true
            }
            Recv::Gap(n) => {
                self.gap(n);
                true
            }
            Recv::Closed => false,
        }
    }

    fn gap(&self, n: u64) {
        self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        tracing::warn!(
            missed = n,
            "Event export fell behind the bus; events dropped."
        );
    }

    fn update_stats(&mut self, sub: &Subscription, in_flight: Option<i64>) {
        let s = &self.stats;
        s.spooled_events.store(self.spool.len(), Ordering::Relaxed);
        s.spooled_bytes.store(self.spool.bytes(), Ordering::Relaxed);
        s.lag_events.store(
            self.spool.len() + sub.backlog() as u64 + u64::from(in_flight.is_some()),
            Ordering::Relaxed,
        );
        let oldest = match in_flight {
            Some(t) => t,
            None if !self.spool.is_empty() => {
                self.spool.peek().ok().flatten().map_or(0, |r| r.wall_us)
            }
            None => 0,
        };
        s.oldest_pending_us.store(oldest, Ordering::Relaxed);
        s.connected.store(
            self.stream_ready
                && self.client.connection_state() == async_nats::connection::State::Connected,
            Ordering::Relaxed,
        );
    }

    fn failed(&mut self, e: &PublishFailure, outage: &mut bool) {
        if !*outage {
            tracing::warn!(error = %e, "NATS unreachable; spooling events until it is back.");
            *outage = true;
        }
        self.stats.set_error(e);
    }

    fn recovered(&mut self, outage: &mut bool) {
        if *outage {
            tracing::info!(
                spooled = self.spool.len(),
                "NATS reachable again; publishing the spool."
            );
            *outage = false;
        }
        self.stats.set_error("");
    }

    async fn run(mut self, mut sub: Subscription, stop: CancellationToken) {
        // Backoff between attempts while the server is away (reconnects are the client's; this
        // paces the stream lookups and publishes of the spool head).
        let mut backoff = Duration::from_millis(100);
        let mut retry_at = Instant::now();
        let mut outage = false;
        let mut bus_open = true;
        self.update_stats(&sub, None);
        while bus_open && !stop.is_cancelled() {
            if self.spool.is_empty() {
                // Caught up: publish events straight from the bus.
                let item = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    item = sub.recv() => item,
                };
                match item {
                    Recv::Event(e) => {
                        let r = self.record(&e);
                        self.update_stats(&sub, Some(r.wall_us));
                        let result = if Instant::now() < retry_at {
                            Err(PublishFailure::Disconnected)
                        } else {
                            self.publish(&r).await
                        };
                        match result {
                            Ok(()) => self.recovered(&mut outage),
                            Err(e) => {
                                self.failed(&e, &mut outage);
                                self.spool_push(&r);
                                retry_at = Instant::now() + backoff;
                            }
                        }
                    }
                    other => bus_open = self.absorb(other),
                }
            } else {
                // Behind: new events queue up in the spool, and its head is retried.
                while let Some(item) = sub.try_recv() {
                    if !self.absorb(item) {
                        bus_open = false;
                        break;
                    }
                }
                if Instant::now() >= retry_at {
                    match self.publish_spool_head().await {
                        Ok(()) => {
                            self.recovered(&mut outage);
                            backoff = Duration::from_millis(100);
                        }
                        Err(e) => {
                            self.failed(&e, &mut outage);
                            retry_at = Instant::now() + backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                } else {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        item = sub.recv() => bus_open = self.absorb(item),
                        _ = tokio::time::sleep_until(retry_at.into()) => {}
                    }
                }
            }
            self.update_stats(&sub, None);
        }
        self.finish(&mut sub).await;
    }

    async fn publish_spool_head(&mut self) -> Result<(), PublishFailure> {
        let r = match self.spool.peek() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.stats.set_error(&e);
                tracing::error!(error = %e, "Export spool read failed.");
                return Err(PublishFailure::Publish(e.to_string()));
            }
        };
        self.update_stats_inflight(r.wall_us);
        self.publish(&r).await?;
        if let Err(e) = self.spool.pop() {
            tracing::error!(error = %e, "Export spool update failed.");
        }
        Ok(())
    }

    fn update_stats_inflight(&self, wall_us: i64) {
        self.stats
            .oldest_pending_us
            .store(wall_us, Ordering::Relaxed);
    }

    /// Shutdown: the pipeline has drained, so what is on the bus is the last of it. Publish it
    /// while the server answers and nothing is spooled (within a short time), spool the rest,
    /// and save the spool's position.
    async fn finish(&mut self, sub: &mut Subscription) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Some(item) = sub.try_recv() {
            match item {
                Recv::Event(e) => {
                    let r = self.record(&e);
                    let sent = self.spool.is_empty()
                        && Instant::now() < deadline
                        && self.publish(&r).await.is_ok();
                    if !sent {
                        self.spool_push(&r);
                    }
                }
                Recv::Gap(n) => self.gap(n),
                Recv::Closed => break,
            }
        }
        if let Err(e) = self.spool.flush() {
            tracing::error!(error = %e, "Export spool could not be saved.");
        }
        self.update_stats(sub, None);
        tracing::info!(
            published = self.stats.published.load(Ordering::Relaxed),
            spooled = self.spool.len(),
            dropped = self.stats.dropped.load(Ordering::Relaxed),
            "Event export stopped."
        );
    }
}
