//! `hark.v1.Hark` service implementation.

use std::{
    collections::HashMap,
    ops::ControlFlow,
    pin::Pin,
    sync::Mutex,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::jobs::{Deadline, JobError, Jobs, StopFlag};
use super::server::ConnInfo;
use super::{
    convert::{KindFilter, event_to_pb, gap_event},
    pb::{self, hark_server::Hark},
};
use crate::{
    audio::{
        Encoding, Format, SourceError, channel::ChannelSource, file::Upload16k, stdin::decode_pcm,
    },
    events::{EventBus, EventKind, Recv},
    nn::whisper::Progress,
    pipeline::{Pipeline, PipelineStats},
};

/// Starts a pipeline for a StreamAudio session (stages built from the daemon's config).
pub type SessionStarter =
    Arc<dyn Fn(ChannelSource) -> Result<Pipeline, String> + Send + Sync + 'static>;

/// Lists input devices (a function so that builds without the `mic` feature can say why not).
pub type DeviceLister = fn() -> Result<Vec<DeviceEntry>, String>;

/// An input device as the API reports it.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    pub name: String,
    pub is_default: bool,
    pub default_rate: u32,
    pub channels: u16,
}

/// Everything the service needs from the daemon.
#[derive(Clone)]
pub struct ApiContext {
    pub bus: EventBus,
    pub started: Instant,
    /// The daemon's own pipeline (None with `--source none`).
    pub main: Option<Arc<PipelineStats>>,
    pub start_session: SessionStarter,
    pub list_devices: DeviceLister,
    pub max_subscribers: usize,
    pub max_sessions: usize,
    pub subscriber_buffer: usize,
    pub max_message_bytes: usize,
    /// Transcript store (None when disabled).
    pub store: Option<Arc<crate::store::Store>>,
    /// Whisper for the Transcribe RPC (None when no model is installed).
    pub asr: Option<Arc<crate::stages::asr::OneShot>>,
    /// Decoding defaults from `[transcribe]`.
    pub asr_defaults: crate::stages::asr::TranscribeConfig,
    /// Models shared with the stages (the Classify RPC uses the sound stage's).
    pub resources: Arc<crate::stages::StageResources>,
    /// `[sound]`: model, thresholds and durations for Classify.
    pub sound_defaults: crate::stages::sound::SoundConfig,
    /// `[notes]`: the mode and tracker settings TranscribeNotes uses by default.
    pub notes_defaults: crate::stages::notes::NotesConfig,
    /// Text-to-speech (loaded on first use).
    pub tts: Arc<super::tts::TtsState>,
    pub limits: ApiLimits,
    /// Cancelled when the daemon shuts down: one-shot jobs in flight stop at their next window.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Event export to NATS (None when `[export.nats]` is off).
    pub export: Option<Arc<crate::export::ExportStats>>,
}

/// Per-request limits from `[server]` (see [`crate::config::ServerConfig`]).
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub max_upload_s: f64,
    pub session_idle: Duration,
    pub subscribers_per_connection: usize,
    pub max_jobs: usize,
    pub max_queued_jobs: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        let s = crate::config::ServerConfig::default();
        Self {
            max_upload_s: s.max_upload_s,
            session_idle: Duration::from_secs(s.session_idle_s),
            subscribers_per_connection: s.subscribers_per_connection,
            max_jobs: s.max_jobs,
            max_queued_jobs: s.max_queued_jobs,
        }
    }
}

impl std::fmt::Debug for ApiContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiContext")
            .field("max_subscribers", &self.max_subscribers)
            .field("max_sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

/// The service; cheap to clone (one per listener).
#[derive(Debug, Clone)]
pub struct HarkService {
    ctx: Arc<ApiContext>,
    subscribers: Arc<Semaphore>,
    sessions: Arc<Semaphore>,
    next_session: Arc<AtomicU64>,
    jobs: Arc<Jobs>,
    /// Subscribe streams per connection id.
    per_connection: Arc<Mutex<HashMap<u64, usize>>>,
}

/// Releases a connection's subscriber share when the stream ends.
struct ConnShare {
    map: Arc<Mutex<HashMap<u64, usize>>>,
    id: u64,
}

impl Drop for ConnShare {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

impl HarkService {
    pub fn new(ctx: ApiContext) -> Self {
        Self {
            subscribers: Arc::new(Semaphore::new(ctx.max_subscribers)),
            sessions: Arc::new(Semaphore::new(ctx.max_sessions)),
            next_session: Arc::new(AtomicU64::new(1)),
            jobs: Arc::new(Jobs::new(ctx.limits.max_jobs, ctx.limits.max_queued_jobs)),
            per_connection: Arc::new(Mutex::new(HashMap::new())),
            ctx: Arc::new(ctx),
        }
    }

    /// Takes one of the connection's Subscribe slots.
    fn connection_share<T>(&self, request: &Request<T>) -> Result<Option<ConnShare>, Status> {
        let Some(id) = ConnInfo::of(request).map(|c| c.id) else {
            return Ok(None);
        };
        let limit = self.ctx.limits.subscribers_per_connection;
        let mut m = self
            .per_connection
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = m.entry(id).or_insert(0);
        if *n >= limit {
            return Err(Status::resource_exhausted(format!(
                "this connection already has {limit} Subscribe streams \
                 (server.subscribers_per_connection)"
            )));
        }
        *n += 1;
        Ok(Some(ConnShare {
            map: self.per_connection.clone(),
            id,
        }))
    }

    /// Active StreamAudio sessions.
    pub fn active_sessions(&self) -> usize {
        self.ctx.max_sessions - self.sessions.available_permits()
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Hark for HarkService {
    type SubscribeStream = ReceiverStream<Result<pb::Event, Status>>;
    type StreamAudioStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = KindFilter::from_pb(&request.get_ref().kinds)?;
        let share = self.connection_share(&request)?;
        let permit = self.subscribers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many subscribers (server.max_subscribers = {})",
                self.ctx.max_subscribers
            ))
        })?;
        let mut sub = self.ctx.bus.subscribe();
        let (tx, rx) = mpsc::channel(self.ctx.subscriber_buffer);
        tokio::spawn(async move {
            let _permit = permit;
            let _share = share;
            // Waiting on this subscriber's own channel only ever delays this task: the bus keeps
            // `bus_capacity` events for it, and once it falls further behind the bus drops the
            // oldest for it alone and we report them as a Gap before the next event it gets.
            let mut missed: u64 = 0;
            loop {
                let item = tokio::select! {
                    _ = tx.closed() => break,
                    item = sub.recv() => item,
                };
                let event = match item {
                    Recv::Event(e) => e,
                    Recv::Gap(n) => {
                        missed += n;
                        continue;
                    }
                    Recv::Closed => break,
                };
                if !filter.matches(&event.kind) {
                    continue;
                }
                if missed > 0 {
                    if tx.send(Ok(gap_event(missed))).await.is_err() {
                        break;
                    }
                    missed = 0;
                }
                if tx.send(Ok(event_to_pb(&event))).await.is_err() {
                    break;
                }
            }
            tracing::debug!("Subscriber left.");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::DaemonStatus>, Status> {
        let ctx = &self.ctx;
        let mut status = pb::DaemonStatus {
            uptime_s: ctx.started.elapsed().as_secs_f64(),
            version: env!("CARGO_PKG_VERSION").into(),
            source: "none".into(),
            source_healthy: true,
            event_counts: ctx
                .bus
                .counts()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            subscribers: (ctx.max_subscribers - self.subscribers.available_permits()) as u32,
            sessions: self.active_sessions() as u32,
            jobs_running: self.jobs.running() as u32,
            jobs_queued: self.jobs.queued() as u32,
            whisper: ctx
                .asr
                .as_ref()
                .map(|a| whisper_status(a.shared().active())),
            export: ctx.export.as_deref().map(super::convert::export_status),
            ..Default::default()
        };
        if let Some(p) = &ctx.main {
            status.source = p.source.clone();
            status.device = p.device.clone().unwrap_or_default();
            status.source_healthy = p.source_healthy.load(Ordering::Relaxed);
            status.samples_processed = p.clock.load(Ordering::Relaxed);
            status.xruns = p.xruns.load(Ordering::Relaxed);
            status.nonfinite_samples = p.nonfinite_samples.load(Ordering::Relaxed);
            status.pipeline_failure = p.failure().unwrap_or_default();
            status.stages = p
                .stages
                .iter()
                .map(|s| pb::StageStatus {
                    name: s.name.into(),
                    queue_depth: s.queue_depth_samples.load(Ordering::Relaxed) as u64,
                    queue_capacity: s.capacity_samples as u64,
                    dropped_samples: s.dropped_samples(),
                    windows_processed: s.windows.load(Ordering::Relaxed),
                    overflow_policy: s.policy.describe(),
                    mean_window_us: s.mean_window_us(),
                    cpu_share: s.cpu_share(),
                })
                .collect();
        }
        Ok(Response::new(status))
    }

    async fn transcribe(
        &self,
        request: Request<pb::TranscribeRequest>,
    ) -> Result<Response<pb::TranscribeResponse>, Status> {
        let deadline = Deadline::of(&request);
        let job = self.transcribe_job(request.into_inner())?;
        let stop = StopFlag::new(self.ctx.shutdown.clone(), deadline);
        // Dropped when the client cancels (tonic drops this future): the job stops.
        let _cancel = stop.cancel_on_drop();
        let permit = self.jobs.admit(&stop).await.map_err(job_status)?;
        let run_stop = stop.clone();
        let r = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job.run(&run_stop, &mut |_| ControlFlow::Continue(()))
        })
        .await
        .map_err(|e| Status::internal(format!("transcription task failed: {e}")))?;
        r.map(Response::new).map_err(|e| stop.status(e))
    }

    async fn reload_model(
        &self,
        request: Request<pb::ReloadModelRequest>,
    ) -> Result<Response<pb::ReloadModelResponse>, Status> {
        let asr = self.ctx.asr.clone().ok_or_else(|| {
            Status::failed_precondition("transcription is off: no Whisper model to reload")
        })?;
        let name = request.into_inner().model;
        if !name.is_empty() {
            asr.resolve(&name).map_err(model_status)?;
        }
        let started = Instant::now();
        let a = asr.clone();
        let previous = tokio::task::spawn_blocking(move || a.reload(&name))
            .await
            .map_err(|e| Status::internal(format!("reload task failed: {e}")))?
            .map_err(model_status)?;
        Ok(Response::new(pb::ReloadModelResponse {
            active: Some(whisper_status(asr.shared().active())),
            previous,
            load_s: started.elapsed().as_secs_f64(),
        }))
    }

    type TranscribeStreamStream = ReceiverStream<Result<pb::TranscribeUpdate, Status>>;

    async fn transcribe_stream(
        &self,
        request: Request<pb::TranscribeRequest>,
    ) -> Result<Response<Self::TranscribeStreamStream>, Status> {
        use pb::transcribe_update::Update;
        let deadline = Deadline::of(&request);
        let job = self.transcribe_job(request.into_inner())?;
        let stop = StopFlag::new(self.ctx.shutdown.clone(), deadline);
        let (tx, rx) = mpsc::channel::<Result<pb::TranscribeUpdate, Status>>(64);
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            let admitted = tokio::select! {
                _ = tx.closed() => return,
                p = jobs.admit(&stop) => p,
            };
            let permit = match admitted {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(job_status(e))).await;
                    return;
                }
            };
            let run_stop = stop.clone();
            let run_tx = tx.clone();
            let r = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let mut language = String::new();
                job.run(&run_stop, &mut |p| {
                    let update = match p {
                        Progress::Window { start_s } => Update::Progress(pb::TranscribeProgress {
                            processed_s: f64::from(start_s),
                            language: language.clone(),
                        }),
                        Progress::Language { code, .. } => {
                            language = code.to_string();
                            return ControlFlow::Continue(());
                        }
                        Progress::Segment(s) => Update::Segment(segment_to_pb(s.clone())),
                    };
                    // A closed channel is a client that went away: stop.
                    match run_tx.blocking_send(Ok(pb::TranscribeUpdate {
                        update: Some(update),
                    })) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(_) => ControlFlow::Break(()),
                    }
                })
            })
            .await;
            let msg = match r {
                Ok(Ok(done)) => Ok(pb::TranscribeUpdate {
                    update: Some(Update::Done(done)),
                }),
                Ok(Err(e)) => Err(stop.status(e)),
                Err(e) => Err(Status::internal(format!("transcription task failed: {e}"))),
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let this = self.clone();
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || this.search_store(&req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }

    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        use crate::stages::sound;
        let cfg = self.ctx.sound_defaults.clone();
        if cfg.enabled == crate::stages::asr::Enable::Off {
            return Err(Status::failed_precondition(
                "sound classification is off (sound.enabled = \"off\")",
            ));
        }
        let resources = self.ctx.resources.clone();
        let deadline = Deadline::of(&request);
        let req = request.into_inner();
        let stop = StopFlag::new(self.ctx.shutdown.clone(), deadline);
        let _cancel = stop.cancel_on_drop();
        let permit = self.jobs.admit(&stop).await.map_err(job_status)?;
        let max_s = self.ctx.limits.max_upload_s;
        tokio::task::spawn_blocking(move || -> Result<pb::ClassifyResponse, Status> {
            let _permit = permit;
            let model = sound::shared_model(&cfg, &resources)
                .map_err(|e| Status::failed_precondition(short(&e)))?;
            let audio = open_upload(req.audio, req.raw, max_s)?
                .read_all()
                .map_err(source_status)?;
            if audio.is_empty() {
                return Err(Status::invalid_argument("the upload holds no audio"));
            }
            let r = sound::classify_clip(&model, &cfg, &audio)
                .map_err(|e| Status::internal(short(&e)))?;
            let secs = |s: u64| s as f64 / 16_000.0;
            Ok(pb::ClassifyResponse {
                top: r
                    .top
                    .into_iter()
                    .map(|(class, p)| pb::ClassScore { class, p })
                    .collect(),
                events: r
                    .events
                    .into_iter()
                    .map(|e| pb::Sound {
                        class: e.class,
                        p: e.p,
                        start: secs(e.start_sample),
                        end: secs(e.end_sample),
                    })
                    .collect(),
                duration_s: r.duration_s,
                model: cfg.model.clone(),
            })
        })
        .await
        .map_err(|e| Status::internal(format!("classification task failed: {e}")))?
        .map(Response::new)
    }

    async fn transcribe_notes(
        &self,
        request: Request<pb::TranscribeNotesRequest>,
    ) -> Result<Response<pb::TranscribeNotesResponse>, Status> {
        use crate::notes::Mode;
        let cfg = self.ctx.notes_defaults.clone();
        let resources = self.ctx.resources.clone();
        let deadline = Deadline::of(&request);
        let req = request.into_inner();
        let mode = match pb::NotesMode::try_from(req.mode) {
            Ok(pb::NotesMode::Unspecified) => cfg.mode,
            Ok(pb::NotesMode::Mono) => Mode::Mono,
            Ok(pb::NotesMode::Poly) => Mode::Poly,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown notes mode {}",
                    req.mode
                )));
            }
        };
        let stop = StopFlag::new(self.ctx.shutdown.clone(), deadline);
        let _cancel = stop.cancel_on_drop();
        let permit = self.jobs.admit(&stop).await.map_err(job_status)?;
        let max_s = self.ctx.limits.max_upload_s;
        tokio::task::spawn_blocking(move || -> Result<pb::TranscribeNotesResponse, Status> {
            let _permit = permit;
            let audio = open_upload(req.audio, req.raw, max_s)?
                .read_all()
                .map_err(source_status)?;
            if audio.is_empty() {
                return Err(Status::invalid_argument("the upload holds no audio"));
            }
            let notes = match mode {
                Mode::Mono => {
                    let models = cfg
                        .mono_models(&resources)
                        .map_err(Status::failed_precondition)?;
                    crate::notes::track::transcribe_mono(&audio, &cfg.mono_params(), models)
                }
                Mode::Poly => {
                    let model = resources
                        .shared(crate::notes::BASIC_PITCH, || {
                            crate::notes::load_basic_pitch(None)
                        })
                        .map_err(|e| Status::failed_precondition(short(&e)))?;
                    crate::notes::poly::transcribe_poly(
                        &audio,
                        &model,
                        crate::notes::poly::PolyParams::default(),
                    )
                    .map_err(|e| Status::internal(short(&e)))?
                }
            };
            Ok(pb::TranscribeNotesResponse {
                midi: crate::notes::midi::to_smf_bytes(&notes),
                notes: notes
                    .iter()
                    .map(|n| super::convert::note_to_pb(&crate::stages::notes::note_event(n, 0)))
                    .collect(),
                duration_s: audio.len() as f64 / 16_000.0,
                mode: match mode {
                    Mode::Mono => pb::NotesMode::Mono,
                    Mode::Poly => pb::NotesMode::Poly,
                } as i32,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("note transcription task failed: {e}")))?
        .map(Response::new)
    }

    type SynthesizeStream = ReceiverStream<Result<pb::SynthesizeResponse, Status>>;

    async fn synthesize(
        &self,
        request: Request<pb::SynthesizeRequest>,
    ) -> Result<Response<Self::SynthesizeStream>, Status> {
        let deadline = Deadline::of(&request);
        self.ctx
            .tts
            .synthesize(request.into_inner(), deadline, self.ctx.shutdown.clone())
            .await
            .map(Response::new)
    }

    async fn list_voices(
        &self,
        _request: Request<pb::ListVoicesRequest>,
    ) -> Result<Response<pb::ListVoicesResponse>, Status> {
        self.ctx.tts.list_voices().await.map(Response::new)
    }

    async fn phonemize(
        &self,
        request: Request<pb::PhonemizeRequest>,
    ) -> Result<Response<pb::PhonemizeResponse>, Status> {
        self.ctx
            .tts
            .phonemize(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_lexicon(
        &self,
        request: Request<pb::GetLexiconRequest>,
    ) -> Result<Response<pb::GetLexiconResponse>, Status> {
        self.ctx
            .tts
            .get_lexicon(&request.into_inner().word)
            .await
            .map(Response::new)
    }

    async fn set_lexicon_entry(
        &self,
        request: Request<pb::SetLexiconEntryRequest>,
    ) -> Result<Response<pb::LexiconEntry>, Status> {
        let entry = request
            .into_inner()
            .entry
            .ok_or_else(|| Status::invalid_argument("give an entry (word and ipa or arpabet)"))?;
        self.ctx.tts.set_lexicon(entry).await.map(Response::new)
    }

    async fn delete_lexicon_entry(
        &self,
        request: Request<pb::DeleteLexiconEntryRequest>,
    ) -> Result<Response<pb::DeleteLexiconEntryResponse>, Status> {
        let deleted = self
            .ctx
            .tts
            .delete_lexicon(&request.into_inner().word)
            .await?;
        Ok(Response::new(pb::DeleteLexiconEntryResponse { deleted }))
    }

    async fn list_devices(
        &self,
        _request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let devices = tokio::task::spawn_blocking(self.ctx.list_devices)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::unavailable)?;
        Ok(Response::new(pb::ListDevicesResponse {
            devices: devices
                .into_iter()
                .map(|d| pb::Device {
                    name: d.name,
                    is_default: d.is_default,
                    default_sample_rate: d.default_rate,
                    channels: u32::from(d.channels),
                })
                .collect(),
        }))
    }

    async fn stream_audio(
        &self,
        request: Request<Streaming<pb::AudioChunk>>,
    ) -> Result<Response<Self::StreamAudioStream>, Status> {
        let mut inbound = request.into_inner();
        let idle = self.ctx.limits.session_idle;
        let idle_status = move || {
            Status::deadline_exceeded(format!(
                "no audio for {} s (server.session_idle_s): session closed",
                idle.as_secs()
            ))
        };
        let first = tokio::time::timeout(idle, inbound.message())
            .await
            .map_err(|_| idle_status())?
            .map_err(map_inbound_error)?
            .ok_or_else(|| {
                Status::invalid_argument("empty stream: the first message must be an AudioConfig")
            })?;
        let Some(pb::audio_chunk::Payload::Config(cfg)) = first.payload else {
            return Err(Status::invalid_argument(
                "the first StreamAudio message must carry an AudioConfig",
            ));
        };
        let encoding = match pb::AudioEncoding::try_from(cfg.encoding) {
            Ok(pb::AudioEncoding::PcmS16le) => Encoding::S16le,
            Ok(pb::AudioEncoding::PcmF32le) => Encoding::F32le,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "unsupported encoding {}; use AUDIO_ENCODING_PCM_S16LE or AUDIO_ENCODING_PCM_F32LE",
                    cfg.encoding
                )));
            }
        };
        let channels = u16::try_from(cfg.channels).unwrap_or(u16::MAX);
        let format = Format {
            rate: cfg.sample_rate,
            channels,
        }
        .validate()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let filter = KindFilter::from_pb(&cfg.kinds)?;
        let permit = self.sessions.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many StreamAudio sessions (server.max_sessions = {})",
                self.ctx.max_sessions
            ))
        })?;
        let name = format!(
            "session-{}",
            self.next_session.fetch_add(1, Ordering::Relaxed)
        );
        // Subscribe before the pipeline starts so no event of the session can be missed.
        let mut sub = self.ctx.bus.subscribe();
        let (audio_tx, audio_rx) = mpsc::channel::<Vec<f32>>(16);
        let pipeline = (self.ctx.start_session)(ChannelSource {
            name: name.clone(),
            format,
            rx: audio_rx,
        })
        .map_err(Status::internal)?;
        tracing::info!(session = %name, rate = format.rate, channels, "StreamAudio session started.");
        let (tx, rx) = mpsc::channel::<Result<pb::Event, Status>>(self.ctx.subscriber_buffer);

        // Reader: validate and decode audio, feed the session. Errors end the call with a status.
        let reader_tx = tx.clone();
        let max_bytes = self.ctx.max_message_bytes;
        let frame_bytes = encoding.bytes_per_sample() * usize::from(channels);
        tokio::spawn(async move {
            let mut carry = 0usize;
            let result: Result<(), Status> = async {
                // An idle session holds one of server.max_sessions slots: it gets
                // session_idle_s to send something.
                while let Some(msg) = tokio::time::timeout(idle, inbound.message())
                    .await
                    .map_err(|_| idle_status())?
                    .map_err(map_inbound_error)?
                {
                    match msg.payload {
                        Some(pb::audio_chunk::Payload::Data(bytes)) => {
                            if bytes.len() > max_bytes {
                                return Err(Status::resource_exhausted(format!(
                                    "audio chunk of {} bytes exceeds server.max_message_bytes = {max_bytes}",
                                    bytes.len()
                                )));
                            }
                            if bytes.len() % encoding.bytes_per_sample() != 0 {
                                return Err(Status::invalid_argument(format!(
                                    "audio chunk of {} bytes is not a whole number of {}-byte samples",
                                    bytes.len(),
                                    encoding.bytes_per_sample()
                                )));
                            }
                            carry = (carry + bytes.len()) % frame_bytes;
                            let mut samples = Vec::with_capacity(bytes.len() / encoding.bytes_per_sample());
                            decode_pcm(&bytes, encoding, &mut samples);
                            if let Some(bad) = samples.iter().position(|s| !s.is_finite() || s.abs() > 64.0) {
                                return Err(Status::invalid_argument(format!(
                                    "corrupt audio: sample {bad} of the chunk is {} (expected a finite value in [-1, 1])",
                                    samples[bad]
                                )));
                            }
                            if audio_tx.send(samples).await.is_err() {
                                return Ok(());
                            }
                        }
                        Some(pb::audio_chunk::Payload::Config(_)) => {
                            return Err(Status::invalid_argument(
                                "AudioConfig may only be sent as the first message",
                            ));
                        }
                        None => return Err(Status::invalid_argument("empty AudioChunk")),
                    }
                }
                if carry != 0 {
                    return Err(Status::invalid_argument(
                        "stream ended in the middle of a multi-channel frame",
                    ));
                }
                Ok(())
            }
            .await;
            drop(audio_tx);
            if let Err(status) = result {
                tracing::warn!(code = ?status.code(), message = status.message(), "StreamAudio input rejected.");
                let _ = reader_tx.send(Err(status)).await;
            }
        });

        // Forwarder: this session's events back to the caller, up to its SourceEnded.
        let stream_name: Arc<str> = Arc::from(name.as_str());
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let item = tokio::select! {
                    _ = tx.closed() => break,
                    item = sub.recv() => item,
                };
                match item {
                    Recv::Event(e) if e.stream == stream_name => {
                        let last = matches!(e.kind, EventKind::SourceEnded { .. });
                        if (last || filter.matches(&e.kind))
                            && tx.send(Ok(event_to_pb(&e))).await.is_err()
                        {
                            break;
                        }
                        if last {
                            break;
                        }
                    }
                    Recv::Event(_) => {}
                    Recv::Gap(n) => {
                        if tx.send(Ok(gap_event(n))).await.is_err() {
                            break;
                        }
                    }
                    Recv::Closed => break,
                }
            }
            pipeline.request_stop();
            let _ = tokio::task::spawn_blocking(move || pipeline.join()).await;
            tracing::info!(session = %stream_name, "StreamAudio session ended.");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl HarkService {
    fn search_store(&self, req: &pb::SearchRequest) -> Result<pb::SearchResponse, Status> {
        let store = self.ctx.store.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "the transcript store is disabled ([store] enabled = false)",
            )
        })?;
        if req.query.len() > 1024 {
            return Err(Status::invalid_argument("query longer than 1024 bytes"));
        }
        let limit = if req.limit == 0 {
            20
        } else {
            req.limit.min(500)
        } as usize;
        let context = if req.context == 0 {
            1
        } else {
            req.context.min(10)
        } as usize;
        let since_us = (req.since_unix_us != 0).then_some(req.since_unix_us);
        let until_us = (req.until_unix_us != 0).then_some(req.until_unix_us);
        if let (Some(a), Some(b)) = (since_us, until_us)
            && a >= b
        {
            return Err(Status::invalid_argument(
                "since_unix_us must be before until_unix_us",
            ));
        }
        if req.stream.len() > 256 {
            return Err(Status::invalid_argument(
                "stream name longer than 256 bytes",
            ));
        }
        let hits = store
            .search(&crate::store::SearchQuery {
                text: req.query.clone(),
                limit,
                context,
                stream: (!req.stream.is_empty()).then(|| req.stream.clone()),
                since_us,
                until_us,
            })
            .map_err(|e| match e {
                crate::store::StoreError::Query(m) => Status::invalid_argument(m),
                other => Status::internal(other.to_string()),
            })?;
        Ok(pb::SearchResponse {
            hits: hits
                .into_iter()
                .map(|h| pb::SearchHit {
                    stream: h.stream,
                    text: h.text,
                    start_s: h.start_s,
                    end_s: h.end_s,
                    wall_time_unix_us: h.wall_us,
                    before: h.before,
                    after: h.after,
                    snippet: h.snippet,
                    highlighted: h.highlighted,
                    utterance_id: h.utterance_id,
                })
                .collect(),
        })
    }
}

/// Opens an uploaded file (or raw PCM) as a bounded 16 kHz mono reader.
fn open_upload(
    bytes: Vec<u8>,
    raw: Option<pb::AudioConfig>,
    max_s: f64,
) -> Result<Upload16k, Status> {
    if bytes.is_empty() {
        return Err(Status::invalid_argument("no audio in the request"));
    }
    match raw {
        Some(cfg) => {
            let encoding = match pb::AudioEncoding::try_from(cfg.encoding) {
                Ok(pb::AudioEncoding::PcmS16le) => Encoding::S16le,
                Ok(pb::AudioEncoding::PcmF32le) => Encoding::F32le,
                _ => {
                    return Err(Status::invalid_argument(
                        "raw audio needs PCM_S16LE or PCM_F32LE",
                    ));
                }
            };
            let format = Format {
                rate: cfg.sample_rate,
                channels: u16::try_from(cfg.channels).unwrap_or(u16::MAX),
            };
            Upload16k::from_raw(bytes, format, encoding, max_s).map_err(source_status)
        }
        None => Upload16k::from_file_bytes(bytes, max_s).map_err(source_status),
    }
}

/// An upload error as the caller's problem: RESOURCE_EXHAUSTED for the duration limit,
/// INVALID_ARGUMENT for the rest.
fn source_status(e: SourceError) -> Status {
    match e {
        SourceError::TooLong { .. } => Status::resource_exhausted(e.to_string()),
        other => Status::invalid_argument(short(&other)),
    }
}

fn job_status(e: JobError) -> Status {
    match e {
        JobError::Full { .. } => Status::resource_exhausted(e.to_string()),
        JobError::Deadline => Status::deadline_exceeded(e.to_string()),
        JobError::ShuttingDown => Status::unavailable(e.to_string()),
    }
}

/// First line of an error, at most 512 bytes: statuses carry a message, not a backtrace (a
/// candle backtrace in a status overflowed StreamAudio's 16 KB metadata limit).
pub(crate) fn short(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or("").trim();
    if line.len() <= 512 {
        return line.to_string();
    }
    let mut end = 512;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

fn segment_to_pb(s: crate::nn::whisper::Segment) -> pb::TranscriptSegment {
    pb::TranscriptSegment {
        start_s: f64::from(s.start),
        end_s: f64::from(s.end),
        text: s.text.trim().to_string(),
        avg_logprob: s.avg_logprob,
        no_speech_prob: s.no_speech_prob,
        words: s
            .words
            .into_iter()
            .map(|w| pb::Word {
                word: w.word.trim().to_string(),
                start_s: f64::from(w.start),
                end_s: f64::from(w.end),
                p: w.p,
            })
            .collect(),
    }
}

/// Longest prompt or hotword list accepted, bytes (Whisper's prompt window is 223 tokens).
const MAX_PROMPT_BYTES: usize = 4096;

/// A validated one-shot transcription, ready to run on a blocking thread.
pub struct TranscribeJob {
    asr: Arc<crate::stages::asr::OneShot>,
    /// Requested model name (empty: the active one).
    model: String,
    opts: crate::nn::whisper::DecodeOptions,
    audio: Vec<u8>,
    raw: Option<pb::AudioConfig>,
    max_upload_s: f64,
}

/// Reads an upload for Whisper, checking the stop flag between blocks.
struct UploadFeed<'a> {
    upload: Upload16k,
    stop: &'a StopFlag,
    error: Option<SourceError>,
}

impl crate::nn::whisper::AudioFeed for UploadFeed<'_> {
    fn should_stop(&self) -> bool {
        self.stop.is_set()
    }

    fn read(&mut self, out: &mut Vec<f32>) -> Result<bool, crate::nn::NnError> {
        if self.stop.is_set() {
            return Err(crate::nn::NnError::Cancelled);
        }
        self.upload.read(out).map_err(|e| {
            let msg = e.to_string();
            self.error = Some(e);
            crate::nn::NnError::InvalidInput(msg)
        })
    }
}

impl TranscribeJob {
    fn run(
        self,
        stop: &StopFlag,
        observe: &mut dyn FnMut(Progress<'_>) -> ControlFlow<()>,
    ) -> Result<pb::TranscribeResponse, RunError> {
        let started = Instant::now();
        let upload =
            open_upload(self.audio, self.raw, self.max_upload_s).map_err(RunError::Status)?;
        let mut feed = UploadFeed {
            upload,
            stop,
            error: None,
        };
        let model = self.asr.model_for(&self.model).map_err(RunError::Nn)?;
        let result = self
            .asr
            .transcribe(&model, &mut feed, &self.opts, &mut |p| {
                if stop.is_set() {
                    return ControlFlow::Break(());
                }
                observe(p)
            });
        let t = match result {
            Ok(t) => t,
            Err(e) => {
                return Err(match feed.error.take() {
                    Some(src) => RunError::Status(source_status(src)),
                    None => RunError::Nn(e),
                });
            }
        };
        let duration_s = feed.upload.seconds_read();
        Ok(pb::TranscribeResponse {
            text: t.text.trim().to_string(),
            language: t.language,
            language_probs: t
                .language_probs
                .into_iter()
                .map(|(language, p)| pb::LanguageProb { language, p })
                .collect(),
            segments: t.segments.into_iter().map(segment_to_pb).collect(),
            duration_s,
            processing_s: started.elapsed().as_secs_f64(),
            model: model.name().to_string(),
        })
    }
}

/// The status for a model that cannot be used: unknown names are NOT_FOUND, bad names
/// INVALID_ARGUMENT, broken or refused models FAILED_PRECONDITION.
fn model_status(e: crate::nn::NnError) -> Status {
    use crate::nn::NnError;
    match e {
        NnError::InvalidInput(_) => Status::invalid_argument(short(&e)),
        NnError::MissingFile { ref path } if !path.exists() && path.extension().is_none() => {
            Status::not_found(format!(
                "no installed model {:?} (see `harkd models list`)",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))
        }
        other => Status::failed_precondition(short(&other)),
    }
}

/// The Whisper model status of the shared model.
fn whisper_status(a: crate::stages::asr::ActiveModel) -> pb::WhisperModelStatus {
    pb::WhisperModelStatus {
        description: if a.description.is_empty() {
            a.name.clone()
        } else {
            a.description
        },
        name: a.name,
        loaded: a.loaded,
        reloads: a.reloads,
        last_reload_error: a.last_error,
    }
}

/// Why a job ended without a result.
#[derive(Debug)]
enum RunError {
    Status(Status),
    Nn(crate::nn::NnError),
}

impl StopFlag {
    /// The status for a job that failed: the stop reason when it was stopped.
    fn status(&self, e: RunError) -> Status {
        use crate::nn::NnError;
        match e {
            RunError::Status(s) => s,
            RunError::Nn(NnError::Cancelled) => self.stop_status(),
            RunError::Nn(
                e @ (NnError::InvalidInput(_)
                | NnError::EnglishOnly { .. }
                | NnError::UnknownLanguage { .. }),
            ) => Status::invalid_argument(short(&e)),
            RunError::Nn(
                e @ (NnError::MissingFile { .. }
                | NnError::InvalidFile { .. }
                | NnError::Tokenizer { .. }),
            ) => Status::failed_precondition(short(&e)),
            RunError::Nn(other) => Status::internal(short(&other)),
        }
    }
}

impl std::fmt::Debug for TranscribeJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscribeJob")
            .field("model", &self.model)
            .field("audio_bytes", &self.audio.len())
            .finish_non_exhaustive()
    }
}

/// The one-shot transcription path: request validation, decoding options, the upload reader
/// and the Whisper call. The Transcribe RPCs and `harkd worker`'s batch jobs both go through
/// it, so a batch result is exactly what Transcribe returns for the same audio and options.
#[derive(Debug, Clone)]
pub struct Transcriber {
    /// Whisper (None when no model is installed: every request then fails with the fix).
    pub asr: Option<Arc<crate::stages::asr::OneShot>>,
    /// Decoding defaults from `[transcribe]`.
    pub defaults: crate::stages::asr::TranscribeConfig,
    /// `server.max_upload_s`.
    pub max_upload_s: f64,
}

impl Transcriber {
    /// Validates and runs a request on the calling (blocking) thread until it ends or `stop`
    /// is set; the error is the status Transcribe would answer with.
    pub fn run(
        &self,
        req: pb::TranscribeRequest,
        stop: &StopFlag,
    ) -> Result<pb::TranscribeResponse, Status> {
        self.job(req)?
            .run(stop, &mut |_| ControlFlow::Continue(()))
            .map_err(|e| stop.status(e))
    }

    /// Validates a Transcribe request into a job (nothing is decoded yet).
    pub fn job(&self, req: pb::TranscribeRequest) -> Result<TranscribeJob, Status> {
        let asr = self.asr.clone().ok_or_else(|| {
            Status::failed_precondition(format!(
                "no speech model installed: run `harkd models fetch {}`",
                self.defaults.model
            ))
        })?;
        let mut opts = self.defaults.decode_options();
        // 0: the configured beam (greedy by default: on held-out speech it was as accurate as
        // beam 5 and 1.5x faster; see benches/whisper.rs).
        opts.beam_size = match req.beam_size {
            0 => opts.beam_size,
            b @ 1..=16 => b as usize,
            b => {
                return Err(Status::invalid_argument(format!(
                    "beam_size {b} must be within 1..=16 (0: the configured default)"
                )));
            }
        };
        match req.task.as_str() {
            "" | "transcribe" => opts.task = crate::nn::whisper::Task::Transcribe,
            "translate" => opts.task = crate::nn::whisper::Task::Translate,
            other => {
                return Err(Status::invalid_argument(format!(
                    "task {:?}: use transcribe or translate",
                    other.chars().take(32).collect::<String>()
                )));
            }
        }
        for (name, v) in [("prompt", &req.prompt), ("hotwords", &req.hotwords)] {
            if v.len() > MAX_PROMPT_BYTES {
                return Err(Status::invalid_argument(format!(
                    "{name} of {} bytes is longer than {MAX_PROMPT_BYTES}",
                    v.len()
                )));
            }
        }
        if req.language.len() > 16 {
            return Err(Status::invalid_argument(
                "language: a code such as en, or auto",
            ));
        }
        if !req.language.is_empty() {
            opts.language = Some(req.language.clone());
        }
        if !req.prompt.is_empty() {
            opts.initial_prompt = Some(req.prompt.clone());
        }
        if !req.hotwords.is_empty() {
            opts.hotwords = Some(req.hotwords.clone());
        }
        if !req.model.is_empty() && req.model != asr.model_name() {
            asr.resolve(&req.model).map_err(model_status)?;
        }
        Ok(TranscribeJob {
            asr,
            model: req.model,
            opts,
            audio: req.audio,
            raw: req.raw,
            max_upload_s: self.max_upload_s,
        })
    }
}

impl HarkService {
    /// Validates a Transcribe request into a job (nothing is decoded yet).
    fn transcribe_job(&self, req: pb::TranscribeRequest) -> Result<TranscribeJob, Status> {
        Transcriber {
            asr: self.ctx.asr.clone(),
            defaults: self.ctx.asr_defaults.clone(),
            max_upload_s: self.ctx.limits.max_upload_s,
        }
        .job(req)
    }
}

/// tonic reports an oversized message as OUT_OF_RANGE; for clients it is a size limit.
fn map_inbound_error(s: Status) -> Status {
    if s.code() == tonic::Code::OutOfRange && s.message().contains("too large") {
        Status::resource_exhausted(s.message().to_string())
    } else {
        s
    }
}
