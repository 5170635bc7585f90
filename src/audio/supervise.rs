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

/// Runs `device` until stop is requested. Failures, including a first open that fails (no
/// sound card yet, a USB microphone plugged in after boot), are reported as `DeviceLost` and
/// retried with backoff until the device is there (`DeviceRestored`).
pub fn supervise<D: Device>(
    mut device: D,
    ctx: &SourceContext,
    backoff: Backoff,
    poll: Duration,
) -> Result<(), SourceError> {
    let mut stream = match device.open(ctx) {
        Ok(s) => Some(s),
        Err(e) => {
            let reason = e.to_string();
            tracing::warn!(%reason, "Input device unavailable; waiting for it (retrying with backoff).");
            ctx.reporter().report(EventKind::DeviceLost { reason });
            let since = Instant::now();
            match reopen(&mut device, ctx, backoff) {
                Some(s) => {
                    let outage = since.elapsed();
                    tracing::info!(outage_s = outage.as_secs_f64(), "Input device available.");
                    ctx.reporter().report(EventKind::DeviceRestored { outage });
                    Some(s)
                }
                None => return Ok(()),
            }
        }
    };
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
        if let Some(s) = reopen(&mut device, ctx, backoff) {
            stream = Some(s);
            let outage = lost_at.elapsed();
            tracing::info!(outage_s = outage.as_secs_f64(), "Input device restored.");
            ctx.reporter().report(EventKind::DeviceRestored { outage });
        }
    }
    Ok(())
}

/// Retries opening with doubling delays until it works (`None` once stop is requested).
fn reopen<D: Device>(device: &mut D, ctx: &SourceContext, backoff: Backoff) -> Option<D::Stream> {
    let mut delay = backoff.initial;
    while !ctx.should_stop() {
        sleep_interruptible(delay, ctx);
        if ctx.should_stop() {
            break;
        }
        match device.open(ctx) {
            Ok(s) => return Some(s),
            Err(e) => {
                tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "Reopen failed.");
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
    None
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
