//! Batch transcription across machines on a NATS JetStream work queue: `hark batch` submits,
//! `harkd worker` processes consume. No cluster code of our own: JetStream does the queueing,
//! redelivery, persistence and de-duplication.
//!
//! ```text
//!  hark batch DIR ──put audio──► object store bucket `hark-audio` (name: sha256 of the file)
//!        │ publish BatchJob (Nats-Msg-Id = job id)
//!        ▼
//!  stream HARK_JOBS (work queue: a job is gone once acked) ── subject hark.jobs.transcribe
//!        │ durable pull consumer `transcribe`: explicit ack, ack_wait, max_deliver
//!        ▼
//!  harkd worker × N (any machines): fetch one job per free slot, "in progress" acks while
//!        │ Whisper runs (the same one-shot path as the Transcribe RPC), then
//!        │ publish BatchResult (Nats-Msg-Id = job id), then ack the job
//!        ▼
//!  stream HARK_RESULTS (one message kept per subject) ── subject hark.results.<job id>
//!        │
//!        ▼
//!  hark batch: watches the results, writes one file per recording
//! ```
//!
//! **At least once in, exactly one result out.** A worker that dies mid-job never acks, so the
//! job is delivered again after `ack_wait` to another worker. A worker that published the result
//! but died before its ack leaves a job that is delivered again too: the next worker finds the
//! result and only acks. Should two runs of one job still both publish (the ack of the first
//! lost in a partition), the results stream de-duplicates by `Nats-Msg-Id` and keeps one message
//! per subject, so a job never has two results.
//!
//! **Job ids** are a hash of the audio and the decoding options: rerunning `hark batch` on the
//! same folder finds the finished results and submits nothing again.
//!
//! Unlike the rest of the crate outside `api`, this module speaks protobuf: the job and result
//! messages are API messages (`TranscribeRequest` options, `TranscribeResponse` results), so a
//! batch result is byte for byte what the Transcribe RPC returns.

pub mod batch;
pub mod queue;
pub mod worker;

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("NATS {url}: {message}")]
    Connect { url: String, message: String },
    #[error("JetStream {what}: {message}")]
    JetStream { what: String, message: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed {what}: {message}")]
    Decode { what: &'static str, message: String },
}

impl FleetError {
    fn js(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        FleetError::JetStream {
            what: what.into(),
            message: e.to_string(),
        }
    }
}

/// Connects to NATS (comma-separated URLs); waits up to `wait` for a server to answer, so a
/// worker started before the server comes up rather than failing at once.
pub async fn connect(
    url: &str,
    name: &str,
    wait: Duration,
) -> Result<async_nats::Client, FleetError> {
    let err = |message: String| FleetError::Connect {
        url: url.to_string(),
        message,
    };
    let addrs = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .connect(addrs)
        .await
        .map_err(|e| err(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + wait;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(err(format!(
                "no server answered within {} s",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}

/// `host/pid`, naming a worker in results and logs.
pub fn worker_name() -> String {
    let host = crate::export::default_node();
    format!("{host}/{}", std::process::id())
}
