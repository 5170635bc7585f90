//! Composition root: builds the source, stages, bus and API from a validated [`Config`], runs them,
//! and shuts them down in order (stop capture, drain stages, close the API).
//!
//! `run(config, shutdown)` takes the shutdown signal as a token so that tests and the binary drive
//! it the same way.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::{
    api::{
        self, ApiContext, HarkService, ListenAddr, ServeOptions,
        convert::{event_to_pb, pb_event_line},
        service::DeviceEntry,
    },
    audio::{Format, Source, SourceSpec, file::FileSource, stdin::StdinSource},
    config::{Config, ConfigError, OnEnd, default_socket_path},
    events::{EventBus, Recv},
    metrics,
    pipeline::{Pipeline, PipelineOptions, PipelineStats, StageSpec},
    stages::{
        self, StageContext, StageResources,
        asr::{Enable, OneShot, SharedModel},
    },
    store::Store,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("source: {0}")]
    Source(#[from] crate::audio::SourceError),
    #[error("stage setup: {0}")]
    Stage(String),
    #[error(transparent)]
    StageBuild(#[from] stages::StageBuildError),
    #[error(transparent)]
    Serve(#[from] api::server::ServeError),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("thread spawn failed: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("the audio pipeline failed: {0}")]
    PipelineFailed(String),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
}

/// The one-shot transcription path as `[transcribe]` configures it, for `harkd worker` (the
/// daemon builds the same from its shared model). The model must be installed.
pub fn one_shot_transcriber(cfg: &Config) -> Result<api::service::Transcriber, DaemonError> {
    let mut cfg = cfg.clone();
    // A worker has no other use than transcription: a missing model is an error, not "off".
    cfg.transcribe.enabled = Enable::On;
    let dir = transcribe_model_dir(&cfg)?.ok_or_else(|| {
        DaemonError::Stage(format!(
            "transcribe: no model (install one with `harkd models fetch {}`)",
            cfg.transcribe.model
        ))
    })?;
    let gate = cfg.transcribe.vad_gate.then(|| cfg.vad.clone());
    Ok(api::service::Transcriber {
        asr: Some(Arc::new(OneShot::new(
            SharedModel::new(dir),
            gate,
            cfg.transcribe.models_root(),
        ))),
        defaults: cfg.transcribe.clone(),
        max_upload_s: cfg.server.max_upload_s,
    })
}

/// Builds the enabled stages for one pipeline from the stage registry (a fresh set per
/// pipeline; loaded weights in `resources` are shared, not copied).
pub fn build_stages(
    cfg: &Config,
    resources: &StageResources,
) -> Result<Vec<StageSpec>, DaemonError> {
    Ok(stages::build_stages(&StageContext {
        config: cfg,
        resources,
    })?)
}

/// First run: the configured model is missing and `models.auto_fetch` is on, so fetch it now
/// (before the pipeline starts, so the first audio is transcribed). A failure (offline, no
/// pip) is logged with the manual command and the daemon runs without transcription.
async fn auto_fetch(cfg: &Config) {
    let dir = cfg.transcribe.model_dir();
    if cfg.transcribe.enabled == Enable::Off
        || dir.join("model.safetensors").is_file()
        || !cfg.models.auto_fetch_effective()
    {
        return;
    }
    let name = cfg.transcribe.model.clone();
    if crate::models::fetch::find_model(&name).is_err() {
        return;
    }
    let Some(root) = dir.parent().map(std::path::Path::to_path_buf) else {
        return;
    };
    tracing::info!(model = %name, dir = %dir.display(), "No speech model installed; fetching it (models.auto_fetch = true).");
    let n = name.clone();
    let r = tokio::task::spawn_blocking(move || {
        crate::models::fetch(&n, &root, crate::models::WeightDType::default())
    })
    .await;
    match r {
        Ok(Ok(path)) => tracing::info!(model = %name, dir = %path.display(), "Model fetched."),
        Ok(Err(e)) => tracing::warn!(
            model = %name,
            error = %e,
            "Could not fetch the speech model (offline?); running without transcription. \
             Install it later with `harkd models fetch {name}`."
        ),
        Err(e) => tracing::warn!(error = %e, "Model fetch task failed."),
    }
}

/// The Whisper model directory to use, or None when transcription is off (or `auto` and no
/// model is installed). A model that is required but missing is an error naming the fix.
pub fn transcribe_model_dir(cfg: &Config) -> Result<Option<std::path::PathBuf>, DaemonError> {
    let dir = cfg.transcribe.model_dir();
    let present = whisper_present(&dir);
    match cfg.transcribe.enabled {
        Enable::Off => Ok(None),
        Enable::Auto if !present => Ok(None),
        Enable::On if !present => Err(DaemonError::Stage(format!(
            "transcribe: no model at {} (install one with `harkd models fetch {}`)",
            dir.display(),
            cfg.transcribe.model
        ))),
        // Checked now (config, tokenizer, tensor shapes; no weights loaded), not on the first
        // request: a damaged model used to surface as a candle backtrace mid-stream.
        _ => match check_model(cfg) {
            Ok(()) => Ok(Some(dir)),
            Err(e) if cfg.transcribe.enabled == Enable::Auto => {
                tracing::error!(error = %e, "Transcription off: the installed model is damaged.");
                Ok(None)
            }
            Err(e) => Err(e),
        },
    }
}

/// SIGHUP: swap the Whisper model for the one the config file now names (re-read; without a
/// file, the active model is reloaded from disk). A model that fails to load is logged and the
/// old one keeps serving. Without transcription there is nothing to reload, but SIGHUP is
/// still caught so that it never terminates the daemon.
fn spawn_reload_on_hangup(
    asr: Option<Arc<OneShot>>,
    config: Option<PathBuf>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "No SIGHUP handler: reload with the ReloadModel RPC.");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            let Some(asr) = &asr else {
                tracing::info!("SIGHUP: transcription is off; nothing to reload.");
                continue;
            };
            let name = match &config {
                Some(path) => match Config::load(path) {
                    Ok(c) => c.transcribe.model,
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: cannot re-read the config; model kept.");
                        continue;
                    }
                },
                None => String::new(),
            };
            let a = asr.clone();
            let result = tokio::task::spawn_blocking(move || {
                // A path in the config is swapped to as is; a name is looked up.
                let p = PathBuf::from(&name);
                if p.components().count() > 1 {
                    a.shared().swap(p).map(|m| m.description())
                } else {
                    a.reload(&name).map(|_| a.shared().active().description)
                }
            })
            .await;
            match result {
                Ok(Ok(d)) => tracing::info!(model = %d, "SIGHUP: Whisper model reloaded."),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "SIGHUP: reload refused; the old model keeps serving.")
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed."),
            }
        }
    });
}

/// A Whisper model (weights) or adapter is installed in `dir`.
fn whisper_present(dir: &std::path::Path) -> bool {
    dir.join("model.safetensors").is_file() || crate::nn::whisper::adapter::is_adapter_dir(dir)
}

/// Checks the configured Whisper model's files when it is installed (`harkd validate` and
/// startup): `Ok` when absent, off, or sound.
pub fn check_model(cfg: &Config) -> Result<(), DaemonError> {
    let dir = cfg.transcribe.model_dir();
    if cfg.transcribe.enabled == Enable::Off || !whisper_present(&dir) {
        return Ok(());
    }
    if crate::nn::whisper::adapter::is_adapter_dir(&dir) {
        // An adapter: its description, readiness and base are checked; the weights are merged
        // when the model loads.
        let meta = crate::nn::whisper::adapter::AdapterMeta::load(&dir)
            .map_err(|e| DaemonError::Stage(format!("transcribe: {e}")))?;
        if !meta.ready {
            return Err(DaemonError::Stage(format!(
                "transcribe: adapter {} did not pass its regression gate ({})",
                dir.display(),
                meta.gate
            )));
        }
        let base = crate::nn::whisper::adapter::base_dir(&dir, &meta)
            .map_err(|e| DaemonError::Stage(format!("transcribe: {e}")))?;
        return crate::models::ModelDir::open(&base)
            .map(|_| ())
            .map_err(|e| DaemonError::Stage(format!("transcribe: base of the adapter: {e}")));
    }
    crate::models::ModelDir::open(&dir)
        .map(|_| ())
        .map_err(|e| DaemonError::Stage(format!("transcribe: {e}")))
}

/// Opens the configured source (files are probed now, so a bad file fails at startup).
pub fn open_source(cfg: &Config) -> Result<Option<Box<dyn Source>>, DaemonError> {
    Ok(match cfg.source_spec()? {
        SourceSpec::None => None,
        SourceSpec::File { path } => Some(Box::new(FileSource::open(&path, cfg.source.realtime)?)),
        SourceSpec::Stdin => Some(Box::new(StdinSource {
            format: Format {
                rate: cfg.source.stdin_rate,
                channels: cfg.source.stdin_channels,
            },
            encoding: cfg.source.stdin_encoding,
        })),
        #[cfg(feature = "mic")]
        SourceSpec::Mic { device } => Some(Box::new(crate::audio::device::MicSource::new(device)?)),
        #[cfg(not(feature = "mic"))]
        SourceSpec::Mic { .. } => return Err(crate::audio::SourceError::MicUnavailable.into()),
    })
}

/// Input devices, for `harkd devices` and the ListDevices RPC.
pub fn list_devices() -> Result<Vec<DeviceEntry>, String> {
    #[cfg(feature = "mic")]
    {
        crate::audio::device::list_devices()
            .map(|v| {
                v.into_iter()
                    .map(|d| DeviceEntry {
                        name: d.name,
                        is_default: d.is_default,
                        default_rate: d.default_rate,
                        channels: d.channels,
                    })
                    .collect()
            })
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "mic"))]
    {
        Err(crate::audio::SourceError::MicUnavailable.to_string())
    }
}

/// The listen addresses to use: configured ones, or the default Unix socket.
pub fn listen_addrs(cfg: &Config) -> Result<Vec<ListenAddr>, ConfigError> {
    if cfg.server.listen.is_empty() {
        return Ok(vec![ListenAddr::Unix(default_socket_path())]);
    }
    cfg.server
        .listen
        .iter()
        .map(|l| {
            ListenAddr::parse(l)
                .and_then(|a| {
                    a.check_security(
                        cfg.server.tls_cert.is_some(),
                        cfg.server.token_file.is_some(),
                    )
                })
                .map_err(|e| ConfigError::Invalid(format!("server.listen: {e}")))
        })
        .collect()
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, DaemonError> {
    std::fs::read(path).map_err(|source| DaemonError::ReadFile {
        path: path.display().to_string(),
        source,
    })
}

/// Runs the daemon until `shutdown` is cancelled (or the input ends with `on_end = "exit"`).
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    cfg.validate()?;
    let started = Instant::now();
    let bus = EventBus::new(cfg.pipeline.bus_capacity);
    let store = if cfg.store.enabled {
        let path = cfg.store.resolved_path();
        let store = Arc::new(Store::open(&path)?);
        if cfg.store.retention_days > 0 {
            let pruned = store.prune(Duration::from_secs(
                u64::from(cfg.store.retention_days) * 86_400,
            ))?;
            tracing::info!(path = %path.display(), pruned, "Transcript store open.");
        }
        bus.add_sink(store.clone());
        Some(store)
    } else {
        None
    };
    let listen = listen_addrs(&cfg)?;
    // Subscribe the printer before any audio flows, so it shows the stream from its first event.
    if cfg.log.events {
        spawn_event_printer(&bus, shutdown.clone());
    }
    // Likewise the exporter: it is an ordinary subscriber in its own task, so a slow or absent
    // NATS server never delays publishing.
    let export = if cfg.export.nats.enabled {
        Some(crate::export::spawn(&cfg.export.nats, &bus, api::convert::export_body).await?)
    } else {
        None
    };
    let export_stats = export.as_ref().map(|e| e.stats.clone());

    crate::actions::install(&cfg.actions, &bus)
        .map_err(|e| DaemonError::Config(ConfigError::Invalid(e)))?;
    auto_fetch(&cfg).await;
    let asr_dir = transcribe_model_dir(&cfg)?;
    let asr = asr_dir.clone().map(SharedModel::new);
    // Shared by every pipeline: the main source's and each StreamAudio session's.
    let resources = Arc::new(StageResources::new(asr.clone()));
    match &asr_dir {
        Some(d) => tracing::info!(model = %d.display(), "Transcription enabled."),
        None if cfg.transcribe.enabled == Enable::Auto => tracing::info!(
            model = %cfg.transcribe.model_dir().display(),
            "Transcription off: no model installed (run `harkd models fetch {}`).",
            cfg.transcribe.model
        ),
        None => {}
    }
    let main = match open_source(&cfg)? {
        Some(source) => {
            tracing::info!(source = %source.describe(), "Starting pipeline.");
            Some(Pipeline::start(
                source,
                build_stages(&cfg, &resources)?,
                bus.clone(),
                PipelineOptions {
                    stream: Arc::from("main"),
                    input_ring_s: cfg.pipeline.input_ring_s,
                },
            )?)
        }
        None => {
            tracing::info!("No source configured; serving StreamAudio sessions only.");
            None
        }
    };
    let main_stats = main.as_ref().map(|p| p.stats.clone());

    let one_shot = asr.map(|m| {
        let gate = cfg.transcribe.vad_gate.then(|| cfg.vad.clone());
        Arc::new(OneShot::new(m, gate, cfg.transcribe.models_root()))
    });
    let session_cfg = cfg.clone();
    let session_bus = bus.clone();
    let session_resources = resources.clone();
    let service = HarkService::new(ApiContext {
        bus: bus.clone(),
        started,
        main: main_stats.clone(),
        start_session: Arc::new(move |src| {
            let name: Arc<str> = Arc::from(src.name.as_str());
            let stages =
                build_stages(&session_cfg, &session_resources).map_err(|e| e.to_string())?;
            Pipeline::start(
                Box::new(src),
                stages,
                session_bus.clone(),
                PipelineOptions {
                    stream: name,
                    input_ring_s: session_cfg.pipeline.input_ring_s,
                },
            )
            .map_err(|e| e.to_string())
        }),
        list_devices,
        max_subscribers: cfg.server.max_subscribers,
        max_sessions: cfg.server.max_sessions,
        subscriber_buffer: cfg.server.subscriber_buffer,
        max_message_bytes: cfg.server.max_message_bytes,
        store: store.clone(),
        asr: one_shot.clone(),
        asr_defaults: cfg.transcribe.clone(),
        resources: resources.clone(),
        sound_defaults: cfg.sound.clone(),
        notes_defaults: cfg.notes.clone(),
        tts: Arc::new(crate::api::tts::TtsState::new(
            cfg.tts.clone(),
            crate::models::search_dirs(None),
        )),
        limits: crate::api::service::ApiLimits {
            max_upload_s: cfg.server.max_upload_s,
            session_idle: Duration::from_secs(cfg.server.session_idle_s),
            subscribers_per_connection: cfg.server.subscribers_per_connection,
            max_jobs: cfg.server.max_jobs,
            max_queued_jobs: cfg.server.max_queued_jobs,
        },
        shutdown: shutdown.clone(),
        export: export_stats.clone(),
    });
    let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        _ => None,
    };
    let token = match &cfg.server.token_file {
        Some(p) => Some(String::from_utf8_lossy(&read(p)?).trim().to_string()),
        None => None,
    };
    // The handler goes in before the socket accepts anyone: a client that connects and sends
    // SIGHUP at once must not meet the default action, which kills the process.
    spawn_reload_on_hangup(one_shot, cfg.loaded_from.clone(), shutdown.clone());
    let server_stop = CancellationToken::new();
    let served = api::serve(
        service.clone(),
        ServeOptions {
            listen,
            socket_mode: cfg.server.socket_mode,
            tls,
            token,
            max_message_bytes: cfg.server.max_message_bytes,
            max_concurrent_streams: cfg.server.max_concurrent_streams,
            max_connections: cfg.server.max_connections,
            connection_idle: Duration::from_secs(cfg.server.connection_idle_s),
        },
        server_stop.clone(),
    )
    .await?;
    let mut servers = served.tasks;

    if cfg.metrics.enabled {
        let addr = cfg
            .metrics
            .listen
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("metrics.listen: {e}")))?;
        let m = metrics::MetricsSource {
            bus: bus.clone(),
            started,
            main: main_stats.clone(),
            export: export_stats.clone(),
        };
        metrics::spawn(addr, m, server_stop.clone()).await?;
    }

    spawn_systemd_notifier(
        main_stats.clone(),
        service.clone(),
        served.health,
        shutdown.clone(),
    );

    // Wait for a signal, the end of input (when configured to exit), or a dead server.
    let exit_on_end = cfg.source.on_end == OnEnd::Exit;
    let mut failed = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!("Shutdown requested.");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if exit_on_end && main_stats.as_ref().is_some_and(|s| s.finished.load(Ordering::Acquire)) {
                    tracing::info!("Input ended; exiting as configured (source.on_end = \"exit\").");
                    break;
                }
                if servers.iter().any(|t| t.is_finished()) {
                    break;
                }
                // A dead pipeline behind a healthy face is the worst outcome: exit non-zero so
                // the service manager restarts the daemon (Restart=on-failure).
                if let Some(why) = main_stats.as_ref().and_then(|s| s.failure()) {
                    failed = Some(why);
                    break;
                }
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);

    // Stop capture first and let the stages drain, so every event of audio already captured is
    // published (and any final results flushed) before the API goes away.
    if let Some(p) = main {
        p.request_stop();
        let joined = tokio::task::spawn_blocking(move || p.join());
        if tokio::time::timeout(Duration::from_secs(3), joined)
            .await
            .is_err()
        {
            tracing::warn!("Pipeline did not drain within 3 s; exiting anyway.");
        }
    }
    // Give subscribers a moment to receive the last events, then close the API.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some(e) = export {
        // The last events go to NATS, or into the spool for the next start.
        e.shutdown(Duration::from_secs(3)).await;
    }
    server_stop.cancel();
    let mut result = Ok(());
    for t in servers.drain(..) {
        match tokio::time::timeout(Duration::from_secs(1), t).await {
            Ok(Ok(Err(e))) => result = Err(e.into()),
            Ok(Err(e)) => tracing::error!(error = %e, "Server task panicked."),
            Ok(Ok(Ok(()))) | Err(_) => {}
        }
    }
    if let Some(why) = failed {
        tracing::error!(reason = %why, "Stopped: the pipeline failed.");
        return Err(DaemonError::PipelineFailed(why));
    }
    tracing::info!("Stopped.");
    result
}

fn spawn_event_printer(bus: &EventBus, shutdown: CancellationToken) {
    let mut sub = bus.subscribe();
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                _ = shutdown.cancelled() => break,
                item = sub.recv() => item,
            };
            match item {
                Recv::Event(e) => println!("{}", pb_event_line(&event_to_pb(&e))),
                Recv::Gap(n) => println!("(event printer fell behind: {n} events not shown)"),
                Recv::Closed => break,
            }
        }
    });
}

/// READY=1 once audio has flowed through every stage; WATCHDOG=1 only while the pump is alive;
/// a STATUS= line every few seconds.
fn spawn_systemd_notifier(
    main: Option<Arc<PipelineStats>>,
    service: HarkService,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    use sd_notify::NotifyState;
    tokio::spawn(async move {
        let watchdog = sd_notify::watchdog_enabled();
        let tick = watchdog
            .map(|d| d / 2)
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        let mut ready = false;
        let mut last_status = Instant::now() - Duration::from_secs(60);
        let mut last_beat = 0u64;
        let mut serving = false;
        loop {
            // Ready means audio really flowed: a source that failed or has not opened yet
            // (a microphone not plugged in) is not, even though its pipeline "finished".
            let flowing = main.as_ref().is_none_or(|p| {
                p.failure().is_none()
                    && (p.all_stages_flowing()
                        || (p.finished.load(Ordering::Relaxed)
                            && p.clock.load(Ordering::Relaxed) > 0))
            });
            if !ready && flowing {
                ready = true;
                tracing::info!("Audio is flowing through every stage; ready.");
                let _ = sd_notify::notify(&[NotifyState::Ready]);
            }
            let healthy = ready
                && main.as_ref().is_none_or(|p| {
                    p.failure().is_none() && p.source_healthy.load(Ordering::Relaxed)
                });
            if healthy != serving {
                serving = healthy;
                crate::api::server::set_health(&health, serving).await;
            }
            if ready && last_status.elapsed() >= Duration::from_secs(5) {
                let line = status_line(main.as_deref(), &service);
                let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
                last_status = Instant::now();
            }
            if watchdog.is_some() {
                // Ping only if the pump has looped since the last ping (or the stream is over).
                let beat = main
                    .as_ref()
                    .map_or(u64::MAX, |p| p.heartbeat_ms.load(Ordering::Relaxed));
                let done = main
                    .as_ref()
                    .is_none_or(|p| p.finished.load(Ordering::Relaxed));
                if beat != last_beat || done {
                    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                    last_beat = beat;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(if ready { tick } else { Duration::from_millis(50) }) => {}
            }
        }
    });
}

fn status_line(main: Option<&PipelineStats>, service: &HarkService) -> String {
    match main {
        Some(p) => format!(
            "{}: {:.0} s of audio, {} stages, {} xruns, {} dropped, {} sessions{}",
            p.source,
            p.clock.load(Ordering::Relaxed) as f64 / 16_000.0,
            p.stages.len(),
            p.xruns.load(Ordering::Relaxed),
            p.stages.iter().map(|s| s.dropped_samples()).sum::<u64>(),
            service.active_sessions(),
            if p.source_healthy.load(Ordering::Relaxed) {
                ""
            } else {
                ", DEVICE LOST"
            }
        ),
        None => format!("no source; {} sessions", service.active_sessions()),
    }
}
