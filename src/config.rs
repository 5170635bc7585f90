//! Daemon configuration: a TOML file whose every field is documented here and has a default
//! (`harkd print-config` prints them). Raw values are deserialised with unknown fields rejected,
//! then [`Config::validate`] checks everything that types alone cannot.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    audio::{Encoding, SourceSpec},
    pipeline::OverflowPolicy,
    stages::{level::LevelConfig, vad::VadConfig},
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub source: SourceConfig,
    pub server: ServerConfig,
    pub pipeline: PipelineConfig,
    pub vad: VadConfig,
    pub level: LevelConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub store: crate::store::StoreConfig,
    pub transcribe: crate::stages::asr::TranscribeConfig,
    pub sound: crate::stages::sound::SoundConfig,
    pub wake: crate::stages::wake::WakeConfig,
    pub notes: crate::stages::notes::NotesConfig,
    pub actions: crate::actions::ActionsConfig,
    pub tts: crate::tts::TtsConfig,
    pub models: ModelsConfig,
    /// Event export (`[export.nats]`: NATS JetStream).
    pub export: crate::export::ExportConfig,
    /// The file this configuration was read from (not a setting): SIGHUP re-reads it for the
    /// Whisper model to swap to.
    #[serde(skip)]
    pub loaded_from: Option<std::path::PathBuf>,
}

/// `[models]`: how models are obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// On start, fetch the configured Whisper model when it is one `harkd models fetch` knows
    /// and is not installed (sha256-checked, as `models fetch` does); offline, harkd says so and
    /// runs without transcription. The environment variable `HARK_AUTO_FETCH=0` turns it off
    /// for one run (tests, air-gapped machines).
    pub auto_fetch: bool,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self { auto_fetch: true }
    }
}

impl ModelsConfig {
    /// `auto_fetch`, unless `HARK_AUTO_FETCH` says otherwise.
    pub fn auto_fetch_effective(&self) -> bool {
        match std::env::var("HARK_AUTO_FETCH").ok().as_deref() {
            Some("0" | "false" | "no" | "off") => false,
            Some("1" | "true" | "yes" | "on") => true,
            _ => self.auto_fetch,
        }
    }
}

/// `[source]`: where audio comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `mic` (default input device), `mic:NAME` (by name or part of it), `file:PATH`, `stdin`, or
    /// `none` (only audio pushed over gRPC StreamAudio).
    pub input: String,
    /// Files only: play at real-time pace (true) or as fast as the stages take it (false).
    pub realtime: bool,
    /// What to do when a file or stdin ends: `idle` keeps serving, `exit` shuts the daemon down.
    pub on_end: OnEnd,
    /// stdin only: sample rate of the raw PCM.
    pub stdin_rate: u32,
    /// stdin only: interleaved channels.
    pub stdin_channels: u16,
    /// stdin only: `s16le` or `f32le`.
    pub stdin_encoding: Encoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnEnd {
    Idle,
    Exit,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            input: "mic".into(),
            realtime: true,
            on_end: OnEnd::Idle,
            stdin_rate: 16_000,
            stdin_channels: 1,
            stdin_encoding: Encoding::S16le,
        }
    }
}

/// `[server]`: the gRPC endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to listen on: `unix:PATH` or `HOST:PORT` (port 0 picks a free port; the bound
    /// address is logged as `listening on ADDR`). Empty means the default Unix socket
    /// (`$HARK_SOCKET`, else `/run/harkd/harkd.sock` for root, else
    /// `$XDG_RUNTIME_DIR/hark/harkd.sock`, else `/tmp/hark-UID/harkd.sock`).
    pub listen: Vec<String>,
    /// Unix socket file mode, octal digits as in chmod (`"660"` or `660`): owner and group may
    /// connect.
    #[serde(with = "octal_mode")]
    pub socket_mode: u32,
    /// TLS certificate (PEM). Required, with `tls_key` and `token_file`, for non-loopback TCP.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// File holding the bearer token clients must send (`authorization: Bearer TOKEN`) on TCP,
    /// loopback included (any local user can reach a loopback port; the Unix socket is guarded
    /// by its file mode instead).
    pub token_file: Option<PathBuf>,
    /// Largest accepted request message, bytes.
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Concurrent Subscribe streams, daemon-wide.
    pub max_subscribers: usize,
    /// Concurrent StreamAudio sessions, daemon-wide.
    pub max_sessions: usize,
    /// Events buffered per subscriber before it is considered lagging.
    pub subscriber_buffer: usize,
    /// Subscribe streams one connection may hold (one HTTP/2 connection with 256 streams took
    /// every subscriber slot).
    pub subscribers_per_connection: usize,
    /// Open connections, all listeners together; more are accepted and closed at once (logged).
    /// Keep it below the process's descriptor limit (`LimitNOFILE=` in the unit).
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (seconds). Clients answer the
    /// daemon's 30 s keep-alive pings, so only dead or hostile peers go quiet.
    pub connection_idle_s: u64,
    /// A StreamAudio session that sends no audio for this long ends with DEADLINE_EXCEEDED
    /// (seconds): idle sessions held their slot forever.
    pub session_idle_s: u64,
    /// Longest upload `Transcribe`/`Classify` accept, seconds of audio (RESOURCE_EXHAUSTED
    /// beyond; checked against the header before decoding, and while decoding).
    pub max_upload_s: f64,
    /// One-shot jobs (`Transcribe`, `Classify`) run at once; each uses the cores fully.
    pub max_jobs: usize,
    /// One-shot jobs waiting for a turn; more are refused with RESOURCE_EXHAUSTED.
    pub max_queued_jobs: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            socket_mode: 0o660,
            tls_cert: None,
            tls_key: None,
            token_file: None,
            max_message_bytes: 16 * 1024 * 1024,
            max_concurrent_streams: 256,
            max_subscribers: 256,
            max_sessions: 8,
            subscriber_buffer: 256,
            subscribers_per_connection: 16,
            max_connections: 512,
            connection_idle_s: 120,
            session_idle_s: 30,
            max_upload_s: 1800.0,
            max_jobs: 1,
            max_queued_jobs: 32,
        }
    }
}

/// `[pipeline]`: buffering between threads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Capture ring, seconds of source audio: how long the pump may stall before input is lost.
    pub input_ring_s: f32,
    /// Per-stage ring, milliseconds of 16 kHz audio.
    pub stage_ring_ms: u32,
    /// Events the bus keeps for slow subscribers before they get a Gap.
    pub bus_capacity: usize,
    /// Overflow policy per stage, keyed by stage name (`vad`, `transcribe`, `level`, ...): what
    /// a stage that falls behind does. `{ mode = "drop-newest" }` drops new audio while its ring
    /// is full (what transcription wants: a long decode must not cost the start of the next
    /// utterance); `{ mode = "catch-up", max_lag_ms = N }` skips the oldest audio beyond N ms
    /// (what live detectors want). A stage left out uses its registry default (listed here).
    pub overflow: BTreeMap<String, OverflowPolicy>,
    /// Deprecated spelling of `overflow.vad` (still honoured; wins over `overflow.vad`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vad_overflow: Option<OverflowPolicy>,
    /// Deprecated spelling of `overflow.level`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level_overflow: Option<OverflowPolicy>,
    /// Deprecated spelling of `overflow.transcribe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcribe_overflow: Option<OverflowPolicy>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            input_ring_s: 2.0,
            stage_ring_ms: 30_000,
            bus_capacity: 4096,
            overflow: crate::stages::REGISTRY
                .iter()
                .map(|e| (e.name.to_string(), e.default_overflow))
                .collect(),
            vad_overflow: None,
            level_overflow: None,
            transcribe_overflow: None,
        }
    }
}

impl PipelineConfig {
    /// The deprecated per-stage key for `stage`, if one was set.
    fn legacy_overflow(&self, stage: &str) -> Option<OverflowPolicy> {
        match stage {
            "vad" => self.vad_overflow,
            "level" => self.level_overflow,
            "transcribe" => self.transcribe_overflow,
            _ => None,
        }
    }

    /// The overflow policy of `stage`: its deprecated key, else `overflow.<stage>`, else
    /// `default` (the registry's).
    pub fn overflow_policy(&self, stage: &str, default: OverflowPolicy) -> OverflowPolicy {
        self.legacy_overflow(stage)
            .or_else(|| self.overflow.get(stage).copied())
            .unwrap_or(default)
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax (RUST_LOG overrides it), e.g. `info,hark=debug`.
    pub filter: String,
    /// Log every event at info level (handy with a file source; noisy with a level meter).
    pub events: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".into(),
            events: false,
        }
    }
}

/// `[metrics]`: Prometheus text endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` (off by default).
    pub enabled: bool,
    /// Address of the metrics endpoint. It has no authentication, so only loopback addresses
    /// are accepted unless `allow_remote` is set.
    pub listen: String,
    /// Allow a non-loopback `listen` (behind a proxy or firewall that guards it).
    pub allow_remote: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:9464".into(),
            allow_remote: false,
        }
    }
}

/// `socket_mode` as chmod writes it: the string `"660"` (or `"0o660"`), or an integer whose
/// decimal digits are read as octal (`660`, as people type it; the TOML integer 660 used to
/// be rejected while `print-config` printed the mode as 432).
mod octal_mode {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:03o}"))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(i64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let digits = match Raw::deserialize(d)? {
            Raw::Text(t) => t.trim().trim_start_matches("0o").to_string(),
            Raw::Number(n) => n.to_string(),
        };
        let mode = u32::from_str_radix(&digits, 8)
            .map_err(|_| D::Error::custom(format!("socket_mode {digits:?}: not octal digits")))?;
        if mode > 0o777 {
            return Err(D::Error::custom(format!(
                "socket_mode {digits} is not a file mode (000..777)"
            )));
        }
        Ok(mode)
    }
}

/// Where `hark` and `harkd` meet when no address is given.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HARK_SOCKET") {
        return PathBuf::from(p);
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        return PathBuf::from("/run/harkd/harkd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => Path::new(&dir).join("hark").join("harkd.sock"),
        // No runtime dir (e.g. a plain ssh session): a per-user directory in /tmp.
        None => std::env::temp_dir()
            .join(format!("hark-{uid}"))
            .join("harkd.sock"),
    }
}

impl Config {
    /// Largest config file read (`--config /dev/zero` grew the process to 5.4 GB).
    pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read as _;
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(read_err)?
            .take(Self::MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > Self::MAX_FILE_BYTES {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("larger than {} bytes", Self::MAX_FILE_BYTES),
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("not UTF-8 text ({e})"),
        })?;
        let mut cfg = Self::parse(&text, path)?;
        cfg.loaded_from = Some(path.to_path_buf());
        Ok(cfg)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The defaults as a commented TOML document.
    pub fn defaults_toml() -> String {
        let body = toml::to_string_pretty(&Config::default()).unwrap_or_default();
        format!(
            "# harkd configuration: every field with its default. Documentation: src/config.rs\n\
             # (each field's doc comment) and README.md.\n\n{body}"
        )
    }

    pub fn source_spec(&self) -> Result<SourceSpec, ConfigError> {
        self.source.input.parse().map_err(ConfigError::Invalid)
    }

    /// Checks what types cannot: ranges, combinations, referenced files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let spec = self.source_spec()?;
        if let SourceSpec::File { path } = &spec
            && !path.is_file()
        {
            return invalid(format!("source.input: no such file {}", path.display()));
        }
        if spec == SourceSpec::Stdin {
            crate::audio::Format {
                rate: self.source.stdin_rate,
                channels: self.source.stdin_channels,
            }
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("source.stdin_*: {e}")))?;
        }
        self.vad
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.level.validate().map_err(ConfigError::Invalid)?;
        self.transcribe.validate().map_err(ConfigError::Invalid)?;
        self.sound.validate().map_err(ConfigError::Invalid)?;
        self.wake.validate().map_err(ConfigError::Invalid)?;
        self.notes.validate().map_err(ConfigError::Invalid)?;
        self.actions.validate().map_err(ConfigError::Invalid)?;
        self.tts.validate().map_err(ConfigError::Invalid)?;
        self.export.nats.validate().map_err(ConfigError::Invalid)?;
        let s = &self.server;
        if s.max_message_bytes < 1024 || s.max_message_bytes > 256 * 1024 * 1024 {
            return invalid("server.max_message_bytes must be within 1 KiB..=256 MiB".into());
        }
        // Every number is bounded: 2^62 subscribers passed validation, then panicked at run
        // time allocating semaphores and buffers.
        for (name, v, lo, hi) in [
            ("subscriber_buffer", s.subscriber_buffer, 1, 65_536),
            ("max_subscribers", s.max_subscribers, 1, 4096),
            ("max_sessions", s.max_sessions, 1, 256),
            (
                "max_concurrent_streams",
                s.max_concurrent_streams as usize,
                1,
                4096,
            ),
            (
                "subscribers_per_connection",
                s.subscribers_per_connection,
                1,
                4096,
            ),
            ("max_connections", s.max_connections, 1, 65_536),
            ("max_jobs", s.max_jobs, 1, 64),
            ("max_queued_jobs", s.max_queued_jobs, 0, 100_000),
            ("connection_idle_s", s.connection_idle_s as usize, 5, 86_400),
            ("session_idle_s", s.session_idle_s as usize, 1, 86_400),
        ] {
            if !(lo..=hi).contains(&v) {
                return invalid(format!("server.{name} = {v} must be within {lo}..={hi}"));
            }
        }
        if !(1.0..=86_400.0).contains(&s.max_upload_s) {
            return invalid(format!(
                "server.max_upload_s = {} must be within 1..=86400",
                s.max_upload_s
            ));
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return invalid("server.tls_cert and server.tls_key go together".into());
        }
        for p in [&s.tls_cert, &s.tls_key, &s.token_file]
            .into_iter()
            .flatten()
        {
            if !p.is_file() {
                return invalid(format!("server: no such file {}", p.display()));
            }
        }
        for l in &s.listen {
            crate::api::ListenAddr::parse(l)
                .map_err(|e| ConfigError::Invalid(format!("server.listen: {e}")))?
                .check_security(s.tls_cert.is_some(), s.token_file.is_some())
                .map_err(|e| ConfigError::Invalid(format!("server.listen: {e}")))?;
        }
        let p = &self.pipeline;
        if !(0.05..=60.0).contains(&p.input_ring_s) {
            return invalid("pipeline.input_ring_s must be within 0.05..=60".into());
        }
        if !(100..=600_000).contains(&p.stage_ring_ms) {
            return invalid("pipeline.stage_ring_ms must be within 100..=600000".into());
        }
        for name in p.overflow.keys() {
            if crate::stages::entry(name).is_none() {
                let known: Vec<_> = crate::stages::REGISTRY.iter().map(|e| e.name).collect();
                return invalid(format!(
                    "pipeline.overflow.{name}: no such stage (stages: {})",
                    known.join(", ")
                ));
            }
        }
        for e in crate::stages::REGISTRY {
            if p.legacy_overflow(e.name).is_some()
                && p.overflow
                    .get(e.name)
                    .is_some_and(|&o| o != e.default_overflow)
            {
                return invalid(format!(
                    "pipeline.{0}_overflow and pipeline.overflow.{0} both set; keep only the \
                     second",
                    e.name
                ));
            }
            if let OverflowPolicy::CatchUp { max_lag_ms } =
                p.overflow_policy(e.name, e.default_overflow)
                && (max_lag_ms < 10 || max_lag_ms >= p.stage_ring_ms)
            {
                return invalid(format!(
                    "pipeline.overflow.{}.max_lag_ms must be >= 10 and below stage_ring_ms",
                    e.name
                ));
            }
        }
        if p.bus_capacity == 0 || p.bus_capacity > 1 << 20 {
            return invalid("pipeline.bus_capacity must be within 1..=1048576".into());
        }
        if self.metrics.enabled {
            let addr = self
                .metrics
                .listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| ConfigError::Invalid(format!("metrics.listen: {e}")))?;
            if !addr.ip().is_loopback() && !self.metrics.allow_remote {
                return invalid(format!(
                    "metrics.listen = {addr} is not loopback and /metrics has no \
                     authentication: use 127.0.0.1, or set metrics.allow_remote = true behind a \
                     proxy or firewall"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_defaults_parse_back_to_the_defaults() {
        let text = Config::defaults_toml();
        let parsed = Config::parse(&text, Path::new("defaults")).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = Config::parse("[vad]\nagressiveness = 2\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("agressiveness"), "{err}");
    }

    #[test]
    fn overflow_policies_by_stage_name_and_legacy_keys() {
        let parse = |t: &str| Config::parse(t, Path::new("x.toml"));
        let cfg = parse("[pipeline.overflow.vad]\nmode = \"drop-newest\"\n").unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.pipeline
                .overflow_policy("vad", OverflowPolicy::CatchUp { max_lag_ms: 1 }),
            OverflowPolicy::DropNewest
        );
        // Written before the [pipeline.overflow] table existed: still means the same.
        let cfg = parse("[pipeline]\nlevel_overflow = { mode = \"catch-up\", max_lag_ms = 200 }\n")
            .unwrap();
        cfg.validate().unwrap();
        let level = crate::stages::entry("level").unwrap();
        assert_eq!(
            cfg.pipeline
                .overflow_policy("level", level.default_overflow),
            OverflowPolicy::CatchUp { max_lag_ms: 200 }
        );
        let err = parse("[pipeline.overflow.vda]\nmode = \"drop-newest\"\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vda") && err.contains("vad, transcribe, wake, sound, notes, level"),
            "{err}"
        );
        let err = parse("[pipeline.overflow.level]\nmode = \"catch-up\"\nmax_lag_ms = 5\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflow.level.max_lag_ms"), "{err}");
    }

    #[test]
    fn export_nats_is_checked_only_when_enabled() {
        let parse = |t: &str| Config::parse(t, Path::new("x.toml")).unwrap().validate();
        parse("[export.nats]\nnode = \"a.b\"\n").unwrap();
        let err = parse("[export.nats]\nenabled = true\nnode = \"a.b\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("export.nats.node"), "{err}");
        let err = parse("[export.nats]\nenabled = true\nurl = \"nats://h:x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("export.nats.url"), "{err}");
        parse("[export.nats]\nenabled = true\nnode = \"kitchen-1\"\nformat = \"json\"\n").unwrap();
    }

    #[test]
    fn non_loopback_tcp_needs_tls_and_token() {
        let mut cfg = Config::default();
        cfg.server.listen = vec!["0.0.0.0:7000".into()];
        assert!(cfg.validate().is_err());
        cfg.server.listen = vec!["127.0.0.1:0".into()];
        cfg.validate().unwrap();
    }
}
