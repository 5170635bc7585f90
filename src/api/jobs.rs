//! Admission and stopping of one-shot jobs (`Transcribe`, `TranscribeStream`, `Classify`).
//!
//! Each job uses the cores fully, so only `server.max_jobs` run at once; up to
//! `server.max_queued_jobs` more wait their turn *without* holding a thread (200 concurrent
//! calls used to hold 200 blocking threads), and beyond that callers are told
//! RESOURCE_EXHAUSTED at once. A job stops at its next window when its caller cancels, its
//! deadline (`grpc-timeout`) passes, or the daemon shuts down.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(
        "busy: {running} jobs running and {queued} waiting (server.max_jobs, \
         server.max_queued_jobs); try again later"
    )]
    Full { running: usize, queued: usize },
    #[error("the deadline passed while the job waited for its turn")]
    Deadline,
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// Running and waiting one-shot jobs.
#[derive(Debug)]
pub struct Jobs {
    run: Arc<Semaphore>,
    max_running: usize,
    queued: AtomicUsize,
    max_queued: usize,
}

/// Counts a waiting job until it runs or gives up.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Jobs {
    pub fn new(max_running: usize, max_queued: usize) -> Self {
        Self {
            run: Arc::new(Semaphore::new(max_running.max(1))),
            max_running: max_running.max(1),
            queued: AtomicUsize::new(0),
            max_queued,
        }
    }

    /// Jobs waiting for a turn.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Jobs running.
    pub fn running(&self) -> usize {
        self.max_running - self.run.available_permits()
    }

    /// Waits for a turn (the permit is the turn). Dropping the future (a cancelled call)
    /// leaves the queue.
    pub async fn admit(&self, stop: &StopFlag) -> Result<OwnedSemaphorePermit, JobError> {
        if let Ok(p) = self.run.clone().try_acquire_owned() {
            return Ok(p);
        }
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.queued);
        if before >= self.max_queued {
            return Err(JobError::Full {
                running: self.running(),
                queued: before,
            });
        }
        let deadline = async {
            match stop.deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            p = self.run.clone().acquire_owned() => p.map_err(|_| JobError::ShuttingDown),
            _ = deadline => Err(JobError::Deadline),
            _ = stop.shutdown.cancelled() => Err(JobError::ShuttingDown),
        }
    }
}

/// The caller's deadline from its `grpc-timeout` header.
#[derive(Debug, Clone, Copy)]
pub struct Deadline;

impl Deadline {
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Instant> {
        let v = request.metadata().get("grpc-timeout")?.to_str().ok()?;
        parse_grpc_timeout(v).map(|d| Instant::now() + d)
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Why a job should stop: its caller went away, its deadline passed, or the daemon is
/// stopping. Cheap to clone; checked between windows and decoded blocks.
#[derive(Debug, Clone)]
pub struct StopFlag {
    cancelled: Arc<AtomicBool>,
    shutdown: CancellationToken,
    deadline: Option<Instant>,
}

/// Sets the flag when dropped: held by the request future, which tonic drops when the client
/// cancels.
#[derive(Debug)]
pub struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl StopFlag {
    pub fn new(shutdown: CancellationToken, deadline: Option<Instant>) -> Self {
        Self {
            cancelled: Arc::new(AtomicBool::new(false)),
            shutdown,
            deadline,
        }
    }

    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.cancelled.clone())
    }

    pub fn is_set(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
            || self.shutdown.is_cancelled()
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The status a stopped job ends with.
    pub fn stop_status(&self) -> Status {
        if self.shutdown.is_cancelled() {
            Status::unavailable("the daemon is shutting down")
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Status::deadline_exceeded("the deadline passed; the job was stopped")
        } else {
            Status::cancelled("the call was cancelled; the job was stopped")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "S", "5", "123456789S", "5x", "-5S", "5 S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_freed_slot_admits() {
        let jobs = Jobs::new(1, 1);
        let stop = StopFlag::new(CancellationToken::new(), None);
        let first = jobs.admit(&stop).await.unwrap();
        let jobs = Arc::new(jobs);
        let j2 = jobs.clone();
        let s2 = stop.clone();
        let waiting = tokio::spawn(async move { j2.admit(&s2).await.map(|_| ()) });
        while jobs.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            jobs.admit(&stop).await,
            Err(JobError::Full { queued: 1, .. })
        ));
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(jobs.queued(), 0);
    }

    #[tokio::test]
    async fn a_deadline_ends_the_wait() {
        let jobs = Jobs::new(1, 4);
        let free = StopFlag::new(CancellationToken::new(), None);
        let _held = jobs.admit(&free).await.unwrap();
        let soon = StopFlag::new(
            CancellationToken::new(),
            Some(Instant::now() + Duration::from_millis(20)),
        );
        assert!(matches!(jobs.admit(&soon).await, Err(JobError::Deadline)));
        assert!(soon.is_set());
        assert_eq!(jobs.queued(), 0);
    }
}
