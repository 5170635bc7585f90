//! The text-to-speech RPCs: Synthesize (streamed sentence by sentence), ListVoices, Phonemize and
//! the lexicon. The synthesiser is loaded on first use (the neural voice is 63 MB and most
//! daemons never speak); syntheses are admitted like one-shot jobs, with their own limit.

use std::{path::PathBuf, sync::Arc};

use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{
    jobs::{JobError, Jobs, StopFlag},
    pb,
    service::short,
};
use crate::tts::{Input, Tts, TtsConfig, TtsError, Unit, lexicon::Entry};

/// Samples per data message (about 0.7 s at 22 kHz in s16).
const CHUNK_SAMPLES: usize = 16_384;

/// Samples -> little-endian f32 or s16 bytes.
fn encode(samples: &[f32], f32_out: bool) -> Vec<u8> {
    if f32_out {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    } else {
        samples
            .iter()
            .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
            .collect()
    }
}

/// The synthesiser's state in the daemon.
#[derive(Debug)]
pub struct TtsState {
    cfg: TtsConfig,
    models: Vec<PathBuf>,
    loaded: Mutex<Option<Arc<Tts>>>,
    jobs: Jobs,
}

fn tts_status(e: TtsError) -> Status {
    match e {
        TtsError::Ssml(_) | TtsError::UnknownVoice { .. } | TtsError::Invalid(_) => {
            Status::invalid_argument(e.to_string())
        }
        TtsError::Lexicon(ref l) => match l {
            crate::tts::lexicon::LexiconError::BadWord { .. }
            | crate::tts::lexicon::LexiconError::BadPhonemes { .. } => {
                Status::invalid_argument(e.to_string())
            }
            crate::tts::lexicon::LexiconError::Full { .. } => {
                Status::resource_exhausted(e.to_string())
            }
            _ => Status::internal(short(&e)),
        },
        TtsError::NoVoice => Status::failed_precondition(e.to_string()),
        TtsError::Voice(_) => Status::internal(short(&e)),
    }
}

fn job_status(e: JobError) -> Status {
    match e {
        JobError::Full { running, queued } => Status::resource_exhausted(format!(
            "busy: {running} syntheses running and {queued} waiting (tts.max_concurrent); try \
             again later"
        )),
        JobError::Deadline => Status::deadline_exceeded(e.to_string()),
        JobError::ShuttingDown => Status::unavailable(e.to_string()),
    }
}

impl TtsState {
    /// `models`: the directories searched for voices (installed first, then bundled).
    pub fn new(cfg: TtsConfig, models: Vec<PathBuf>) -> Self {
        let jobs = Jobs::new(cfg.max_concurrent, cfg.max_concurrent * 8);
        Self {
            cfg,
            models,
            loaded: Mutex::new(None),
            jobs,
        }
    }

    /// The synthesiser, loading it the first time (concurrent first callers wait for one load).
    pub async fn get(&self) -> Result<Arc<Tts>, Status> {
        let mut slot = self.loaded.lock().await;
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let cfg = self.cfg.clone();
        let dirs = self.models.clone();
        let started = std::time::Instant::now();
        let tts = tokio::task::spawn_blocking(move || Tts::load(&cfg, &dirs))
            .await
            .map_err(|e| Status::internal(format!("loading the voices failed: {e}")))?
            .map_err(|e| match e {
                TtsError::NoVoice => Status::failed_precondition(e.to_string()),
                e => Status::failed_precondition(format!("text-to-speech is unavailable: {e}")),
            })?;
        tracing::info!(
            voices = ?tts.voices().iter().map(|v| v.name().to_string()).collect::<Vec<_>>(),
            default = tts.default_voice(),
            ms = started.elapsed().as_millis() as u64,
            "Text-to-speech loaded."
        );
        let tts = Arc::new(tts);
        *slot = Some(tts.clone());
        Ok(tts)
    }

    /// The request's text (or SSML document), checked against the limits before anything
    /// loads; `true` for SSML.
    fn checked(
        &self,
        text: Option<String>,
        ssml: Option<String>,
    ) -> Result<(String, bool), Status> {
        let (s, is_ssml) = match (text, ssml) {
            (Some(t), None) => (t, false),
            (None, Some(s)) => (s, true),
            _ => return Err(Status::invalid_argument("give text or ssml")),
        };
        let n = s.chars().count();
        if n > self.cfg.max_chars {
            return Err(Status::invalid_argument(format!(
                "the text is {n} characters; tts.max_chars allows {} (split it into several \
                 requests)",
                self.cfg.max_chars
            )));
        }
        if s.trim().is_empty() {
            return Err(Status::invalid_argument("the text is empty"));
        }
        Ok((s, is_ssml))
    }

    /// Normalisation and phonemes for up to `tts.max_chars` characters (the neural G2P runs per
    /// unknown word): on a blocking thread, off the runtime's workers.
    async fn plan(
        tts: &Arc<Tts>,
        text: String,
        is_ssml: bool,
        rate: f32,
    ) -> Result<Vec<Unit>, Status> {
        let tts = tts.clone();
        tokio::task::spawn_blocking(move || {
            let input = if is_ssml {
                Input::Ssml(&text)
            } else {
                Input::Text(&text)
            };
            tts.plan(input, rate)
        })
        .await
        .map_err(|e| Status::internal(format!("planning failed: {e}")))?
        .map_err(tts_status)
    }

    pub async fn synthesize(
        &self,
        req: pb::SynthesizeRequest,
        deadline: Option<std::time::Instant>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<ReceiverStream<Result<pb::SynthesizeResponse, Status>>, Status> {
        use pb::synthesize_request::Input as In;
        use pb::synthesize_response::Payload;
        let (text, ssml) = match req.input {
            Some(In::Text(t)) => (Some(t), None),
            Some(In::Ssml(s)) => (None, Some(s)),
            None => (None, None),
        };
        // Checked before the voices load, so a bad request costs nothing.
        let (text, is_ssml) = self.checked(text, ssml)?;
        let rate = if req.rate == 0.0 { 1.0 } else { req.rate };
        let f32_out = match pb::AudioEncoding::try_from(req.encoding) {
            Ok(pb::AudioEncoding::Unspecified | pb::AudioEncoding::PcmS16le) => false,
            Ok(pb::AudioEncoding::PcmF32le) => true,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown encoding {}",
                    req.encoding
                )));
            }
        };
        if req.sample_rate != 0 && req.sample_rate != 16_000 {
            return Err(Status::invalid_argument(format!(
                "sample_rate {} is not offered: 0 (the voice's own) or 16000",
                req.sample_rate
            )));
        }
        let tts = self.get().await?;
        let voice = tts.voice(&req.voice).map_err(tts_status)?;
        let plan = Self::plan(&tts, text, is_ssml, rate).await?;
        let stop = StopFlag::new(shutdown, deadline);
        let (tx, rx) = mpsc::channel::<Result<pb::SynthesizeResponse, Status>>(16);
        let out_rate = if req.sample_rate == 0 {
            voice.sample_rate()
        } else {
            req.sample_rate
        };
        let seed = req.seed;
        let admitted = self.jobs.admit(&stop).await.map_err(job_status)?;
        tokio::spawn(async move {
            let run_tx = tx.clone();
            let run_stop = stop.clone();
            let r = tokio::task::spawn_blocking(move || -> Result<(), Status> {
                let _permit = admitted;
                let send = |p: Payload| {
                    run_tx
                        .blocking_send(Ok(pb::SynthesizeResponse { payload: Some(p) }))
                        .map_err(|_| Status::cancelled("the client went away"))
                };
                send(Payload::Config(pb::AudioConfig {
                    sample_rate: out_rate,
                    channels: 1,
                    encoding: if f32_out {
                        pb::AudioEncoding::PcmF32le
                    } else {
                        pb::AudioEncoding::PcmS16le
                    } as i32,
                    kinds: Vec::new(),
                }))?;
                let mut resampler = if out_rate != voice.sample_rate() {
                    Some(
                        crate::audio::resample::ToMono16k::new(crate::audio::Format {
                            rate: voice.sample_rate(),
                            channels: 1,
                        })
                        .map_err(|e| Status::internal(e.to_string()))?,
                    )
                } else {
                    None
                };
                let mut emitted = 0usize;
                let mut out = Vec::new();
                for (i, unit) in plan.iter().enumerate() {
                    if run_stop.is_set() {
                        return Err(run_stop.stop_status());
                    }
                    let (text, phonemes) = match unit {
                        Unit::Speech { text, ipa, .. } => (text.clone(), ipa.clone()),
                        Unit::Pause { .. } => (String::new(), String::new()),
                    };
                    send(Payload::Sentence(pb::SpokenSentence {
                        text,
                        phonemes,
                        start_s: emitted as f64 / f64::from(out_rate),
                    }))?;
                    let last = i + 1 == plan.len();
                    let mut failed: Option<Status> = None;
                    let mut deliver = |audio: &[f32]| -> bool {
                        out.clear();
                        match resampler.as_mut() {
                            Some(r) => r.process(audio, &mut out),
                            None => out.extend_from_slice(audio),
                        }
                        emitted += out.len();
                        for chunk in out.chunks(CHUNK_SAMPLES) {
                            if let Err(e) = send(Payload::Data(encode(chunk, f32_out))) {
                                failed = Some(e);
                                return false;
                            }
                        }
                        // Stop between chunks when the caller cancels or its deadline passes.
                        !run_stop.is_set()
                    };
                    tts.render_chunked(&voice, unit, seed.wrapping_add(i as u64), &mut deliver)
                        .map_err(tts_status)?;
                    if let Some(e) = failed {
                        return Err(e);
                    }
                    if run_stop.is_set() {
                        return Err(run_stop.stop_status());
                    }
                    if last && let Some(r) = resampler.as_mut() {
                        out.clear();
                        r.flush(&mut out);
                        if !out.is_empty() {
                            send(Payload::Data(encode(&out, f32_out)))?;
                        }
                    }
                }
                Ok(())
            })
            .await;
            let err = match r {
                Ok(Ok(())) => return,
                Ok(Err(s)) => s,
                Err(e) => Status::internal(format!("synthesis task failed: {e}")),
            };
            let _ = tx.send(Err(err)).await;
        });
        Ok(ReceiverStream::new(rx))
    }

    pub async fn list_voices(&self) -> Result<pb::ListVoicesResponse, Status> {
        let tts = self.get().await?;
        Ok(pb::ListVoicesResponse {
            voices: tts
                .voices()
                .iter()
                .map(|v| pb::VoiceInfo {
                    name: v.name().into(),
                    kind: v.kind().into(),
                    sample_rate: v.sample_rate(),
                    language: v.language().into(),
                })
                .collect(),
            default_voice: tts.default_voice().into(),
        })
    }

    pub async fn phonemize(
        &self,
        req: pb::PhonemizeRequest,
    ) -> Result<pb::PhonemizeResponse, Status> {
        use pb::phonemize_request::Input as In;
        let (text, ssml) = match req.input {
            Some(In::Text(t)) => (Some(t), None),
            Some(In::Ssml(s)) => (None, Some(s)),
            None => (None, None),
        };
        let (text, is_ssml) = self.checked(text, ssml)?;
        let tts = self.get().await?;
        let plan = Self::plan(&tts, text, is_ssml, 1.0).await?;
        let mut resp = pb::PhonemizeResponse::default();
        for unit in plan {
            if let Unit::Speech { ipa, tokens, .. } = unit {
                resp.sentences.push(ipa);
                for t in tokens {
                    if let crate::tts::g2p::Token::Word { text, ipa, source } = t {
                        resp.words.push(pb::PhonemizedWord {
                            word: text,
                            ipa,
                            source: source.as_str().into(),
                        });
                    }
                }
            }
        }
        Ok(resp)
    }

    pub async fn get_lexicon(&self, word: &str) -> Result<pb::GetLexiconResponse, Status> {
        let tts = self.get().await?;
        let lex = tts
            .phonemizer()
            .user_lexicon()
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let entry = |w: &str, e: &Entry, ipa: &str| pb::LexiconEntry {
            word: w.into(),
            ipa: ipa.into(),
            arpabet: e.arpabet.clone().unwrap_or_default(),
        };
        let entries = if word.trim().is_empty() {
            lex.entries().map(|(w, e, ipa)| entry(w, e, ipa)).collect()
        } else {
            match lex.get(word.trim()) {
                Some((e, ipa)) => vec![entry(&word.trim().to_lowercase(), e, ipa)],
                None => {
                    return Err(Status::not_found(format!(
                        "{:?} is not in the lexicon",
                        word.trim()
                    )));
                }
            }
        };
        Ok(pb::GetLexiconResponse { entries })
    }

    pub async fn set_lexicon(&self, e: pb::LexiconEntry) -> Result<pb::LexiconEntry, Status> {
        let tts = self.get().await?;
        let entry = Entry {
            ipa: Some(e.ipa.clone()).filter(|s| !s.trim().is_empty()),
            arpabet: Some(e.arpabet.clone()).filter(|s| !s.trim().is_empty()),
        };
        let word = e.word.trim().to_lowercase();
        let lexicon = tts.phonemizer().user_lexicon().clone();
        let arpabet = entry.arpabet.clone().unwrap_or_default();
        // The file write is blocking I/O.
        let ipa = tokio::task::spawn_blocking(move || {
            let mut lex = lexicon.write().unwrap_or_else(|p| p.into_inner());
            lex.set(&word, entry)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| tts_status(TtsError::Lexicon(e)))?;
        Ok(pb::LexiconEntry {
            word: e.word.trim().to_lowercase(),
            ipa,
            arpabet,
        })
    }

    pub async fn delete_lexicon(&self, word: &str) -> Result<bool, Status> {
        let tts = self.get().await?;
        let lexicon = tts.phonemizer().user_lexicon().clone();
        let word = word.to_string();
        tokio::task::spawn_blocking(move || {
            let mut lex = lexicon.write().unwrap_or_else(|p| p.into_inner());
            lex.delete(&word)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| tts_status(TtsError::Lexicon(e)))
    }
}
