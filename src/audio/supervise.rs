//! Keeps a live input open: detects loss, reports it, reopens with exponential backoff.
//!
//! Generic over [`Device`] so the policy is tested without hardware (see the tests below and the
//! flaky device in `tests/`); the cpal microphone is one implementation.

use std::time::{Duration, Instant};

use super::{SourceContext, SourceError};
use crate::events::EventKind;

/// Something that can be opened into a running stream and may later fail.
pub trait Device: Send {
    /// The open stream; dropping it closes the device.
    type Stream;
    /// Opens the device, starting a new segment through `ctx`.
    fn open(&mut self, ctx: &SourceContext) -> Result<Self::Stream, SourceError>;
    /// `Some(reason)` once the open stream has failed.
    fn failure(&self, stream: &Self::Stream) -> Option<String>;
}

/// Reopen delays: doubling from `initial` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(5),
        }
    }
}

/// Runs `device` until stop is requested. The first open must succeed (a wrong device name is a
/// configuration error); later failures are reported as `DeviceLost` and retried until the device
/// comes back (`DeviceRestored`).
pub fn supervise<D: Device>(
    mut device: D,
    ctx: &SourceContext,
    backoff: Backoff,
    poll: Duration,
) -> Result<(), SourceError> {
    let mut stream = Some(device.open(ctx)?);
    while !ctx.should_stop() {
        std::thread::sleep(poll);
        let Some(reason) = stream.as_ref().and_then(|s| device.failure(s)) else {
            continue;
        };
        drop(stream.take());
        tracing::warn!(%reason, "Input device lost; reopening with backoff.");
        ctx.reporter().report(EventKind::DeviceLost {
            reason: reason.clone(),
        });
        let lost_at = Instant::now();
        let mut delay = backoff.initial;
        while !ctx.should_stop() {
            sleep_interruptible(delay, ctx);
            if ctx.should_stop() {
                break;
            }
            match device.open(ctx) {
                Ok(s) => {
                    stream = Some(s);
                    let outage = lost_at.elapsed();
                    tracing::info!(outage_s = outage.as_secs_f64(), "Input device restored.");
                    ctx.reporter().report(EventKind::DeviceRestored { outage });
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "Reopen failed.");
                    delay = (delay * 2).min(backoff.max);
                }
            }
        }
    }
    Ok(())
}

fn sleep_interruptible(total: Duration, ctx: &SourceContext) {
    let step = Duration::from_millis(20);
    let end = Instant::now() + total;
    while !ctx.should_stop() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep(step.min(end - now));
    }
}
