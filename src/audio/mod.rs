//! Audio sources: where samples come from, and the real-time-safe path into the input ring.
//!
//! A [`Source`] runs on its own thread (the `source` thread; cpal adds its own callback thread for
//! microphones). It opens one or more *segments*: each segment is a fresh SPSC ring plus the format
//! of what is written into it (rate, channels). The pump drains segments in order, so a device that
//! is lost and reopened, possibly at another rate, simply starts a new segment.
//!
//! Real-time sources (microphones, paced files) never wait: what does not fit is counted as an
//! overrun. Offline sources (fast files, stdin, gRPC pushes) wait for room instead, so no audio is
//! lost when the pipeline is slower than the source.

pub mod capture;
pub mod channel;
#[cfg(feature = "mic")]
pub mod device;
pub mod file;
pub mod header;
#[cfg(feature = "mic")]
pub mod playback;
pub mod resample;
pub mod stdin;
pub mod supervise;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::SystemTime,
};

pub use capture::CaptureWriter;

use crate::{
    events::{EventBus, EventKind},
    ring::{RingConsumer, ring},
};

/// Errors opening or reading a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unsupported or corrupt audio in {what}: {reason}")]
    Decode { what: String, reason: String },
    #[error("invalid audio format: {0}")]
    Format(String),
    #[error("{what} is longer than the {limit_s} s limit (server.max_upload_s)")]
    TooLong { what: String, limit_s: f64 },
    #[error("audio device: {0}")]
    Device(String),
    #[error("microphone support was not compiled in (build with the `mic` feature)")]
    MicUnavailable,
    #[error("I/O error reading audio: {0}")]
    Io(#[from] std::io::Error),
}

/// Interleaved sample layout of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub rate: u32,
    pub channels: u16,
}

impl Format {
    pub const MAX_RATE: u32 = 384_000;
    pub const MAX_CHANNELS: u16 = 64;

    pub fn validate(self) -> Result<Self, SourceError> {
        if self.rate < 1_000 || self.rate > Self::MAX_RATE {
            return Err(SourceError::Format(format!(
                "sample rate {} Hz is outside 1000..={} Hz",
                self.rate,
                Self::MAX_RATE
            )));
        }
        if self.channels == 0 || self.channels > Self::MAX_CHANNELS {
            return Err(SourceError::Format(format!(
                "channel count {} is outside 1..={}",
                self.channels,
                Self::MAX_CHANNELS
            )));
        }
        Ok(self)
    }
}

/// Raw PCM sample encodings accepted from stdin and gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    S16le,
    F32le,
}

impl Encoding {
    pub fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::S16le => 2,
            Encoding::F32le => 4,
        }
    }
}

/// One segment as handed to the pump.
#[derive(Debug)]
pub struct Segment {
    pub format: Format,
    /// Real-time segments drop on overflow; offline ones make the pump wait for slow stages.
    pub realtime: bool,
    pub consumer: RingConsumer<f32>,
}

/// What a running source may do: open segments, report lifecycle, and watch for stop.
#[derive(Debug, Clone)]
pub struct SourceContext {
    segments: mpsc::Sender<Segment>,
    ring_seconds: f32,
    stop: Arc<AtomicBool>,
    reporter: Reporter,
    xruns: Arc<AtomicU64>,
}

impl SourceContext {
    pub fn new(
        segments: mpsc::Sender<Segment>,
        ring_seconds: f32,
        stop: Arc<AtomicBool>,
        reporter: Reporter,
        xruns: Arc<AtomicU64>,
    ) -> Self {
        Self {
            segments,
            ring_seconds,
            stop,
            reporter,
            xruns,
        }
    }

    /// Starts a new segment and returns the writer for it. `realtime` selects drop-and-count
    /// (true) or wait-for-room (false) behaviour of the writer.
    pub fn open_segment(
        &self,
        format: Format,
        realtime: bool,
    ) -> Result<CaptureWriter, SourceError> {
        let format = format.validate()?;
        let capacity = ((format.rate as f32 * self.ring_seconds) as usize).max(4096)
            * usize::from(format.channels);
        let (producer, consumer) = ring::<f32>(capacity);
        self.segments
            .send(Segment {
                format,
                realtime,
                consumer,
            })
            .map_err(|_| SourceError::Device("pipeline is gone".into()))?;
        Ok(CaptureWriter::new(
            producer,
            realtime,
            self.stop.clone(),
            self.xruns.clone(),
        ))
    }

    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn stop_flag(&self) -> &Arc<AtomicBool> {
        &self.stop
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }
}

/// Publishes source lifecycle events stamped with the pipeline's current stream position.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub bus: EventBus,
    pub stream: Arc<str>,
    pub stream_start: SystemTime,
    /// Samples (16 kHz) the pump has produced so far.
    pub clock: Arc<AtomicU64>,
    pub healthy: Arc<AtomicBool>,
}

impl Reporter {
    /// Publishes an event at an explicit stream position.
    pub fn publish_at(&self, sample: u64, kind: EventKind) {
        self.bus
            .publish(&self.stream, self.stream_start, sample, kind);
    }

    /// Publishes an event at the current stream position.
    pub fn report(&self, kind: EventKind) {
        match &kind {
            EventKind::DeviceLost { .. } => self.healthy.store(false, Ordering::Relaxed),
            EventKind::DeviceRestored { .. } => self.healthy.store(true, Ordering::Relaxed),
            _ => {}
        }
        self.bus.publish(
            &self.stream,
            self.stream_start,
            self.clock.load(Ordering::Relaxed),
            kind,
        );
    }
}

/// A producer of audio. `run` blocks until the source ends or the context asks it to stop.
pub trait Source: Send + 'static {
    /// Human-readable description for status and logs.
    fn describe(&self) -> String;
    /// Device name when this is a microphone.
    fn device_name(&self) -> Option<String> {
        None
    }
    fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError>;
}

/// Parses a source spec: `mic`, `mic:NAME`, `file:PATH`, `stdin`, `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Mic { device: Option<String> },
    File { path: std::path::PathBuf },
    Stdin,
    None,
}

impl std::str::FromStr for SourceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mic" => Ok(SourceSpec::Mic { device: None }),
            "stdin" => Ok(SourceSpec::Stdin),
            "none" => Ok(SourceSpec::None),
            _ => {
                if let Some(name) = s.strip_prefix("mic:") {
                    Ok(SourceSpec::Mic {
                        device: Some(name.to_string()),
                    })
                } else if let Some(path) = s.strip_prefix("file:") {
                    if path.is_empty() {
                        return Err("file source needs a path: file:PATH".into());
                    }
                    Ok(SourceSpec::File { path: path.into() })
                } else {
                    Err(format!(
                        "unknown source {s:?}: expected mic, mic:NAME, file:PATH, stdin or none"
                    ))
                }
            }
        }
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Mic { device: None } => write!(f, "mic"),
            SourceSpec::Mic { device: Some(d) } => write!(f, "mic:{d}"),
            SourceSpec::File { path } => write!(f, "file:{}", path.display()),
            SourceSpec::Stdin => write!(f, "stdin"),
            SourceSpec::None => write!(f, "none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs_round_trip() {
        for s in ["mic", "mic:USB Audio", "file:/tmp/a.flac", "stdin", "none"] {
            let spec: SourceSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert!("file:".parse::<SourceSpec>().is_err());
        assert!("speaker".parse::<SourceSpec>().is_err());
    }

    #[test]
    fn format_limits() {
        assert!(
            Format {
                rate: 0,
                channels: 1
            }
            .validate()
            .is_err()
        );
        assert!(
            Format {
                rate: 48_000,
                channels: 0
            }
            .validate()
            .is_err()
        );
        assert!(
            Format {
                rate: 48_000,
                channels: 2
            }
            .validate()
            .is_ok()
        );
    }
}
