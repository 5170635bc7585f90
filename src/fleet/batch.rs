//! `hark batch`: submit a folder of recordings as jobs and collect their results.
//!
//! Results are watched on a plain subscription to `hark.results.*`, opened before the first
//! job is submitted, so none can slip by; a slow sweep of the results stream covers what a
//! reconnect may have missed. Jobs whose result is already stored are not submitted again.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;

use super::{
    FleetError,
    queue::{Queue, RESULTS_PREFIX, audio_object_name, decode_result, job_id},
};
use crate::api::pb;

/// How to submit.
#[derive(Debug, Clone, Default)]
pub struct BatchOptions {
    /// Decoding options (audio empty).
    pub options: pb::TranscribeRequest,
    /// Send file paths instead of uploading (the workers see the same files at the same
    /// paths: shared storage, `harkd worker --allow-path`).
    pub shared_paths: bool,
    /// Give up waiting after this long (None: wait as long as it takes).
    pub timeout: Option<Duration>,
}

/// What happened to one recording, as it happens.
#[derive(Debug)]
pub enum BatchEvent<'a> {
    /// Submitted as a new job (`uploaded`: its audio was not in the bucket yet).
    Submitted { path: &'a Path, uploaded: bool },
    /// Its result was already stored by an earlier run: not submitted.
    AlreadyDone {
        path: &'a Path,
        result: &'a pb::BatchResult,
    },
    /// Its result arrived.
    Done {
        path: &'a Path,
        result: &'a pb::BatchResult,
    },
}

/// The audio files directly in `dir`, sorted by name.
pub fn list_recordings(dir: &Path) -> Result<Vec<PathBuf>, FleetError> {
    let read_err = |source| FleetError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && crate::audio::file::is_audio_path(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Submits `files` and waits for every result; returns them in the order of `files`.
/// `on_event` sees each submission and result as it happens (progress, output files).
pub async fn run(
    queue: &Queue,
    files: &[PathBuf],
    opts: &BatchOptions,
    mut on_event: impl FnMut(BatchEvent<'_>),
) -> Result<Vec<pb::BatchResult>, FleetError> {
    let started = Instant::now();
    let mut results = queue
        .js
        .client()
        .subscribe(format!("{RESULTS_PREFIX}.*"))
        .await
        .map_err(|e| FleetError::js("subscribe to results", e))?;
    let mut done: Vec<Option<pb::BatchResult>> = vec![None; files.len()];
    // Job id -> indices in `files` (copies of one recording are one job), for the jobs out.
    let mut pending: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, path) in files.iter().enumerate() {
        let audio = tokio::fs::read(path)
            .await
            .map_err(|source| FleetError::Read {
                path: path.display().to_string(),
                source,
            })?;
        let object = audio_object_name(&audio);
        let id = job_id(&object, &opts.options);
        if let Some(r) = queue.result(&id).await? {
            on_event(BatchEvent::AlreadyDone { path, result: &r });
            done[i] = Some(r);
            continue;
        }
        if let Some(copies) = pending.get_mut(&id) {
            // The same audio as a file already submitted: its result serves both.
            copies.push(i);
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut job = pb::BatchJob {
            job_id: id.clone(),
            options: Some(opts.options.clone()),
            name,
            ..Default::default()
        };
        let mut uploaded = false;
        if opts.shared_paths {
            job.path = path
                .canonicalize()
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string();
        } else {
            uploaded = queue.upload(&object, &audio).await?;
            job.object = object;
        }
        queue.submit(&job).await?;
        pending.insert(id, vec![i]);
        on_event(BatchEvent::Submitted { path, uploaded });
    }
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    sweep.tick().await;
    while !pending.is_empty() {
        let left = opts
            .timeout
            .map(|t| t.saturating_sub(started.elapsed()))
            .unwrap_or(Duration::MAX);
        if left.is_zero() {
            return Err(FleetError::JetStream {
                what: "batch".into(),
                message: format!(
                    "{} of {} jobs unfinished after {} s (are workers running?)",
                    pending.len(),
                    files.len(),
                    opts.timeout.unwrap_or_default().as_secs()
                ),
            });
        }
        let arrived: Vec<pb::BatchResult> = tokio::select! {
            m = results.next() => match m {
                Some(m) => match decode_result(&m.payload) {
                    Ok(r) => vec![r],
                    Err(e) => {
                        tracing::warn!(subject = %m.subject, error = %e, "Ignoring a malformed result.");
                        continue;
                    }
                },
                None => return Err(FleetError::js("results", "subscription closed")),
            },
            // Results published while the connection was down reach no subscription.
            _ = sweep.tick() => {
                let mut found = Vec::new();
                for id in pending.keys() {
                    if let Some(r) = queue.result(id).await? {
                        found.push(r);
                    }
                }
                found
            }
            _ = tokio::time::sleep(left.min(Duration::from_secs(3600))) => continue,
        };
        for r in arrived {
            for i in pending.remove(&r.job_id).unwrap_or_default() {
                on_event(BatchEvent::Done {
                    path: &files[i],
                    result: &r,
                });
                done[i] = Some(r.clone());
            }
        }
    }
    Ok(done.into_iter().flatten().collect())
}
