//! `hark.v1.Hark` service implementation.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use futures_util::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    convert::{KindFilter, event_to_pb, gap_event},
    pb::{self, hark_server::Hark},
};
use crate::{
    audio::{Encoding, Format, channel::ChannelSource, stdin::decode_pcm},
    events::{EventBus, EventKind, Recv},
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
}

impl HarkService {
    pub fn new(ctx: ApiContext) -> Self {
        Self {
            subscribers: Arc::new(Semaphore::new(ctx.max_subscribers)),
            sessions: Arc::new(Semaphore::new(ctx.max_sessions)),
            next_session: Arc::new(AtomicU64::new(1)),
            ctx: Arc::new(ctx),
        }
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
            ..Default::default()
        };
        if let Some(p) = &ctx.main {
            status.source = p.source.clone();
            status.device = p.device.clone().unwrap_or_default();
            status.source_healthy = p.source_healthy.load(Ordering::Relaxed);
            status.samples_processed = p.clock.load(Ordering::Relaxed);
            status.xruns = p.xruns.load(Ordering::Relaxed);
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
        let asr = self.ctx.asr.clone().ok_or_else(|| {
            Status::failed_precondition(format!(
                "no speech model installed: run `harkd models fetch {}`",
                self.ctx.asr_defaults.model
            ))
        })?;
        let req = request.into_inner();
        let mut opts = self.ctx.asr_defaults.decode_options();
        // 0: the configured beam (greedy by default: on held-out speech it was as accurate as
        // beam 5 and 1.5x faster; see benches/whisper.rs).
        opts.beam_size = if req.beam_size == 0 {
            opts.beam_size
        } else {
            req.beam_size.min(16) as usize
        };
        match req.task.as_str() {
            "" | "transcribe" => opts.task = crate::nn::whisper::Task::Transcribe,
            "translate" => opts.task = crate::nn::whisper::Task::Translate,
            other => {
                return Err(Status::invalid_argument(format!(
                    "task {other:?}: use transcribe or translate"
                )));
            }
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
        let raw = req.raw;
        let bytes = req.audio;
        let model = asr.model_name();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            let audio = decode_upload(bytes, raw)?;
            let duration = audio.len() as f64 / 16_000.0;
            let t = asr.transcribe(&audio, &opts).map_err(|e| match e {
                crate::nn::NnError::InvalidInput(_)
                | crate::nn::NnError::EnglishOnly { .. }
                | crate::nn::NnError::UnknownLanguage { .. } => {
                    Status::invalid_argument(e.to_string())
                }
                crate::nn::NnError::MissingFile { .. }
                | crate::nn::NnError::InvalidFile { .. }
                | crate::nn::NnError::Tokenizer { .. } => {
                    Status::failed_precondition(e.to_string())
                }
                other => Status::internal(other.to_string()),
            })?;
            Ok((t, duration))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let (t, duration_s) = result;
        Ok(Response::new(pb::TranscribeResponse {
            text: t.text.trim().to_string(),
            language: t.language,
            language_probs: t
                .language_probs
                .into_iter()
                .map(|(language, p)| pb::LanguageProb { language, p })
                .collect(),
            segments: t
                .segments
                .into_iter()
                .map(|s| pb::TranscriptSegment {
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
                })
                .collect(),
            duration_s,
            processing_s: started.elapsed().as_secs_f64(),
            model,
        }))
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
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || -> Result<pb::ClassifyResponse, Status> {
            let model =
                sound::shared_model(&cfg, &resources).map_err(Status::failed_precondition)?;
            let audio = decode_upload(req.audio, req.raw)?;
            if audio.is_empty() {
                return Err(Status::invalid_argument("the upload holds no audio"));
            }
            let r = sound::classify_clip(&model, &cfg, &audio).map_err(Status::internal)?;
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
        .map_err(|e| Status::internal(e.to_string()))?
        .map(Response::new)
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
        let first = inbound
            .message()
            .await
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
                while let Some(msg) = inbound.message().await.map_err(map_inbound_error)? {
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
        let hits = store
            .search(&req.query, limit, context)
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
                })
                .collect(),
        })
    }
}

/// Decodes an uploaded file (or raw PCM) to 16 kHz mono.
fn decode_upload(bytes: Vec<u8>, raw: Option<pb::AudioConfig>) -> Result<Vec<f32>, Status> {
    if bytes.is_empty() {
        return Err(Status::invalid_argument("no audio in the request"));
    }
    let (format, samples) = match raw {
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
            }
            .validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if bytes.len() % (encoding.bytes_per_sample() * usize::from(format.channels)) != 0 {
                return Err(Status::invalid_argument(
                    "raw audio is not a whole number of frames",
                ));
            }
            let mut samples = Vec::with_capacity(bytes.len() / encoding.bytes_per_sample());
            decode_pcm(&bytes, encoding, &mut samples);
            (format, samples)
        }
        None => {
            let d = crate::audio::file::Decoder::from_bytes(bytes, "uploaded audio")
                .and_then(|d| d.read_all())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            (d.format, d.samples)
        }
    };
    if let Some(bad) = samples.iter().position(|s| !s.is_finite()) {
        return Err(Status::invalid_argument(format!(
            "corrupt audio: sample {bad} is not finite"
        )));
    }
    crate::audio::file::to_16k_mono(format, &samples)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// tonic reports an oversized message as OUT_OF_RANGE; for clients it is a size limit.
fn map_inbound_error(s: Status) -> Status {
    if s.code() == tonic::Code::OutOfRange && s.message().contains("too large") {
        Status::resource_exhausted(s.message().to_string())
    } else {
        s
    }
}
