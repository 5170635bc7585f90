//! `harkd worker`: takes transcription jobs from the JetStream work queue, one per free slot,
//! and publishes their results (see the module docs of [`crate::fleet`] for the protocol).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{
    FleetError,
    queue::{ConsumerSettings, Queue, decode_job},
};
use crate::api::{jobs::StopFlag, pb, service::Transcriber};

/// What `harkd worker` was asked for.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub url: String,
    /// Jobs run at once in this process (they share the model and the cores).
    pub concurrency: usize,
    pub consumer: ConsumerSettings,
    /// Directories whose files path jobs may name; empty: path jobs are refused (a job must
    /// not make the worker read whatever its user can).
    pub allow_paths: Vec<PathBuf>,
}

/// Counters, logged at exit.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
    pub returned: AtomicU64,
}

/// How a job ended on this worker.
enum Outcome {
    /// Publish this result, then ack.
    Result(pb::BatchResult),
    /// Give the job back for another delivery after this delay (this worker is stopping, or a
    /// transient failure).
    Retry(Duration, String),
}

struct Worker {
    queue: Queue,
    transcriber: Arc<Transcriber>,
    opts: WorkerOptions,
    name: String,
    stats: Arc<WorkerStats>,
    shutdown: CancellationToken,
}

/// Runs until `shutdown`: connects, finds or creates the queue, calls `ready` once jobs can be
/// taken, then works. A job in flight at shutdown is handed back (nak) for another worker.
pub async fn run(
    opts: WorkerOptions,
    transcriber: Arc<Transcriber>,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
) -> Result<Arc<WorkerStats>, FleetError> {
    let name = super::worker_name();
    let client_name = format!("harkd worker {name}");
    let client = tokio::select! {
        c = super::connect(&opts.url, &client_name, Duration::from_secs(60)) => c?,
        _ = shutdown.cancelled() => return Ok(Arc::default()),
    };
    let queue = Queue::open(client).await?;
    let consumer = queue.consumer(&opts.consumer).await?;
    let stats = Arc::new(WorkerStats::default());
    let worker = Arc::new(Worker {
        queue,
        transcriber,
        opts: opts.clone(),
        name,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    });
    tracing::info!(
        url = %opts.url,
        concurrency = opts.concurrency,
        worker = %worker.name,
        "Worker ready: taking jobs from {}.",
        super::queue::JOBS_SUBJECT
    );
    ready();
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..opts.concurrency.max(1) {
        let (w, c) = (worker.clone(), consumer.clone());
        slots.spawn(async move { w.slot(slot, c).await });
    }
    while slots.join_next().await.is_some() {}
    tracing::info!(
        done = stats.done.load(Ordering::Relaxed),
        failed = stats.failed.load(Ordering::Relaxed),
        skipped = stats.skipped.load(Ordering::Relaxed),
        returned = stats.returned.load(Ordering::Relaxed),
        "Worker stopped."
    );
    Ok(stats)
}

impl Worker {
    /// One job at a time: pull one, run it, repeat. Pulling one per free slot (rather than a
    /// prefetched batch) leaves queued jobs to idle workers on other machines.
    async fn slot(
        &self,
        slot: usize,
        consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    ) {
        while !self.shutdown.is_cancelled() {
            let batch = consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(5))
                .messages();
            let mut batch = match batch.await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(slot, error = %e, "Cannot pull jobs; retrying.");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = self.shutdown.cancelled() => None,
                    m = batch.next() => m,
                };
                match next {
                    None => break,
                    Some(Ok(msg)) => self.handle(msg).await,
                    Some(Err(e)) => {
                        tracing::debug!(slot, error = %e, "Pull ended.");
                        break;
                    }
                }
            }
        }
    }

    async fn handle(&self, msg: jetstream::Message) {
        let delivery = msg.info().map(|i| i.delivered).unwrap_or(1).max(1) as u64;
        let job = match decode_job(&msg.payload) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "Discarding a job that is not a BatchJob.");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        // Delivered again after its result was published (the ack was lost, or the worker
        // died between the two): the work is done.
        if let Ok(Some(_)) = self.queue.result(&job.job_id).await {
            tracing::info!(job = %job.job_id, name = %job.name, delivery, "Job already has a result; acknowledging.");
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            let _ = msg.double_ack().await;
            return;
        }
        tracing::info!(job = %job.job_id, name = %job.name, delivery, "Job started.");
        let started = Instant::now();
        let outcome = self.with_progress(&msg, self.run_job(&job, delivery)).await;
        match outcome {
            Outcome::Result(result) => {
                if let Err(e) = self.queue.publish_result(&result).await {
                    tracing::warn!(job = %job.job_id, error = %e, "Result not stored; the job goes back to the queue.");
                    self.stats.returned.fetch_add(1, Ordering::Relaxed);
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    return;
                }
                if let Err(e) = msg.double_ack().await {
                    // The job comes back after ack_wait and is then found done.
                    tracing::warn!(job = %job.job_id, error = %e, "Ack not confirmed.");
                }
                if result.error.is_empty() {
                    self.stats.done.fetch_add(1, Ordering::Relaxed);
                    let r = result.response.as_ref();
                    tracing::info!(
                        job = %job.job_id,
                        name = %job.name,
                        audio_s = r.map_or(0.0, |r| r.duration_s),
                        processing_s = r.map_or(0.0, |r| r.processing_s),
                        wall_s = started.elapsed().as_secs_f64(),
                        "Job done."
                    );
                } else {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(job = %job.job_id, name = %job.name, error = %result.error, "Job failed.");
                }
            }
            Outcome::Retry(delay, why) => {
                self.stats.returned.fetch_add(1, Ordering::Relaxed);
                tracing::info!(job = %job.job_id, reason = %why, "Job handed back to the queue.");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    /// Runs `work`, telling the server every third of `ack_wait` that the job is in progress,
    /// so a long recording is not redelivered while it is being transcribed; a dead worker
    /// stops telling, and its job goes to another after `ack_wait`.
    async fn with_progress<T>(
        &self,
        msg: &jetstream::Message,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = (self.opts.consumer.ack_wait / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "In-progress ack failed.");
                    }
                }
            }
        }
    }

    async fn run_job(&self, job: &pb::BatchJob, delivery: u64) -> Outcome {
        let result = |response, error: String| {
            Outcome::Result(pb::BatchResult {
                job_id: job.job_id.clone(),
                name: job.name.clone(),
                response,
                error,
                worker: self.name.clone(),
                delivery,
            })
        };
        let audio = match self.audio(job).await {
            Ok(a) => a,
            Err(AudioError::Permanent(e)) => return result(None, e),
            Err(AudioError::Transient(e)) => return Outcome::Retry(Duration::from_secs(2), e),
        };
        let mut req = job.options.clone().unwrap_or_default();
        req.audio = audio;
        let stop = StopFlag::new(self.shutdown.clone(), None);
        let t = self.transcriber.clone();
        let run_stop = stop.clone();
        let r = tokio::task::spawn_blocking(move || t.run(req, &run_stop)).await;
        let status = match r {
            Ok(Ok(response)) => return result(Some(response), String::new()),
            Ok(Err(status)) => status,
            Err(e) => tonic::Status::internal(format!("transcription task failed: {e}")),
        };
        if self.shutdown.is_cancelled() {
            return Outcome::Retry(Duration::ZERO, "the worker is stopping".into());
        }
        match status.code() {
            // The job itself is at fault: another delivery would fail the same way.
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::OutOfRange => result(None, status.message().to_string()),
            _ if (delivery as i64) < self.opts.consumer.max_deliver => {
                Outcome::Retry(Duration::from_secs(5), status.message().to_string())
            }
            _ => result(None, status.message().to_string()),
        }
    }

    async fn audio(&self, job: &pb::BatchJob) -> Result<Vec<u8>, AudioError> {
        if !job.object.is_empty() {
            return self.queue.download(&job.object).await.map_err(|e| {
                // A missing object will not appear by waiting; anything else may pass.
                let msg = e.to_string();
                if msg.contains("not found") {
                    AudioError::Permanent(msg)
                } else {
                    AudioError::Transient(msg)
                }
            });
        }
        if job.path.is_empty() {
            return Err(AudioError::Permanent("the job names no audio".into()));
        }
        let path = allowed_path(Path::new(&job.path), &self.opts.allow_paths)
            .map_err(AudioError::Permanent)?;
        tokio::fs::read(&path)
            .await
            .map_err(|e| AudioError::Permanent(format!("{}: {e}", path.display())))
    }
}

enum AudioError {
    Permanent(String),
    Transient(String),
}

/// `path` resolved (symbolic links and `..` included), if it lies under one of `allowed`.
fn allowed_path(path: &Path, allowed: &[PathBuf]) -> Result<PathBuf, String> {
    if allowed.is_empty() {
        return Err(
            "this worker reads no paths (start it with --allow-path DIR for shared storage)".into(),
        );
    }
    let real = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if allowed
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .any(|d| real.starts_with(d))
    {
        Ok(real)
    } else {
        Err(format!(
            "{} is outside the worker's --allow-path directories",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_jobs_stay_inside_the_allowed_directories() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("a.wav");
        std::fs::write(&inside, b"x").unwrap();
        let allowed = vec![dir.path().to_path_buf()];
        assert!(allowed_path(&inside, &allowed).is_ok());
        assert!(allowed_path(&inside, &[]).is_err());
        let escape = dir.path().join("../../etc/passwd");
        assert!(allowed_path(&escape, &allowed).is_err());
        assert!(allowed_path(Path::new("/etc/passwd"), &allowed).is_err());
    }
}
