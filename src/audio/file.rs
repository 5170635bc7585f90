//! Audio files (WAV, FLAC, MP3, OGG/Vorbis) decoded with symphonia, played at real-time pace or as
//! fast as the pipeline takes them.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use symphonia::core::{
    audio::SampleBuffer,
    codecs::{CODEC_TYPE_NULL, DecoderOptions},
    errors::Error as SymError,
    formats::{FormatOptions, FormatReader},
    io::MediaSourceStream,
    meta::MetadataOptions,
    probe::Hint,
};

use super::{Format, Source, SourceContext, SourceError};

/// A whole decoded file: interleaved f32 samples.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub format: Format,
    pub samples: Vec<f32>,
}

impl Decoded {
    pub fn duration(&self) -> Duration {
        let frames = self.samples.len() / usize::from(self.format.channels.max(1));
        Duration::from_secs_f64(frames as f64 / f64::from(self.format.rate))
    }
}

/// Streaming decoder over any `Read + Seek` media source.
pub struct Decoder {
    reader: Box<dyn FormatReader>,
    decoder: Box<dyn symphonia::core::codecs::Decoder>,
    track_id: u32,
    format: Format,
    what: String,
    buf: Option<SampleBuffer<f32>>,
    /// Packets that failed to decode and were skipped.
    pub skipped_packets: u64,
    /// The decoder panicked: its state is unknown, so it is never called again.
    poisoned: bool,
}

/// Text of a caught panic payload.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Skipped packets logged one by one before the decoder goes quiet: a junk MP3 (one frame header
/// repeated over zeros) wrote 250,000 warnings a second. The rest are counted and summarised
/// when the decoder is dropped.
const SKIP_WARNINGS: u64 = 5;

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("what", &self.what)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        if self.skipped_packets > SKIP_WARNINGS {
            tracing::warn!(
                file = %self.what,
                skipped = self.skipped_packets,
                "Undecodable packets were skipped."
            );
        }
    }
}

impl Decoder {
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(|source| SourceError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        Self::from_stream(
            MediaSourceStream::new(Box::new(file), Default::default()),
            hint,
            path.display().to_string(),
        )
    }

    /// Decodes an in-memory file (any supported container).
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<Self, SourceError> {
        let cursor = std::io::Cursor::new(bytes);
        Self::from_stream(
            MediaSourceStream::new(Box::new(cursor), Default::default()),
            Hint::new(),
            what.to_string(),
        )
    }

    fn from_stream(mss: MediaSourceStream, hint: Hint, what: String) -> Result<Self, SourceError> {
        // symphonia trusts headers and asserts on some of them (a 0 Hz WAV panicked building its
        // time base); [`super::header`] refuses those first, and a panic that still escapes is
        // a decode error for this file, never a crash of the caller.
        let w = what.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            Self::from_stream_inner(mss, hint, w)
        }))
        .unwrap_or_else(|p| {
            Err(SourceError::Decode {
                what,
                reason: format!(
                    "the decoder failed on this file ({})",
                    panic_text(p.as_ref())
                ),
            })
        })
    }

    fn from_stream_inner(
        mss: MediaSourceStream,
        hint: Hint,
        what: String,
    ) -> Result<Self, SourceError> {
        let decode_err = |reason: String| SourceError::Decode {
            what: what.clone(),
            reason,
        };
        let probed = symphonia::default::get_probe()
            .format(
                &hint,
                mss,
                &FormatOptions::default(),
                &MetadataOptions::default(),
            )
            .map_err(|e| decode_err(format!("not a recognised audio file ({e})")))?;
        let reader = probed.format;
        let track = reader
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| decode_err("no audio track".into()))?;
        let rate = track
            .codec_params
            .sample_rate
            .ok_or_else(|| decode_err("unknown sample rate".into()))?;
        let channels = track
            .codec_params
            .channels
            .map(|c| c.count())
            .ok_or_else(|| decode_err("unknown channel layout".into()))?;
        let format = Format {
            rate,
            channels: u16::try_from(channels).unwrap_or(u16::MAX),
        }
        .validate()?;
        let track_id = track.id;
        let decoder = symphonia::default::get_codecs()
            .make(&track.codec_params, &DecoderOptions::default())
            .map_err(|e| decode_err(format!("unsupported codec ({e})")))?;
        Ok(Self {
            reader,
            decoder,
            track_id,
            format,
            what,
            buf: None,
            skipped_packets: 0,
            poisoned: false,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Next block of interleaved samples, or `None` at the end of the stream.
    pub fn next_block(&mut self) -> Result<Option<&[f32]>, SourceError> {
        if self.poisoned {
            return Err(self.failed("the decoder failed earlier on this file".into()));
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.advance())) {
            Ok(Ok(true)) => Ok(Some(self.buf.as_ref().map(|b| b.samples()).unwrap_or(&[]))),
            Ok(Ok(false)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(p) => {
                self.poisoned = true;
                Err(self.failed(format!(
                    "the decoder failed on this file ({})",
                    panic_text(p.as_ref())
                )))
            }
        }
    }

    fn failed(&self, reason: String) -> SourceError {
        SourceError::Decode {
            what: self.what.clone(),
            reason,
        }
    }

    /// Decodes the next packet into `self.buf`; false at the end of the stream.
    fn advance(&mut self) -> Result<bool, SourceError> {
        loop {
            let packet = match self.reader.next_packet() {
                Ok(p) => p,
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(false);
                }
                Err(SymError::ResetRequired) => return Ok(false),
                Err(e) => {
                    return Err(SourceError::Decode {
                        what: self.what.clone(),
                        reason: e.to_string(),
                    });
                }
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            match self.decoder.decode(&packet) {
                Ok(decoded) => {
                    if decoded.frames() == 0 {
                        continue;
                    }
                    let spec = *decoded.spec();
                    if spec.rate != self.format.rate
                        || spec.channels.count() != usize::from(self.format.channels)
                    {
                        return Err(SourceError::Decode {
                            what: self.what.clone(),
                            reason: "format changes mid-stream".into(),
                        });
                    }
                    let needed = decoded.capacity() as u64;
                    let buf = match &mut self.buf {
                        Some(b) if b.capacity() as u64 >= needed * spec.channels.count() as u64 => {
                            b
                        }
                        slot => slot.insert(SampleBuffer::new(needed, spec)),
                    };
                    buf.copy_interleaved_ref(decoded);
                    return Ok(true);
                }
                // A damaged packet: skip it, as players do, but count it.
                Err(SymError::DecodeError(e)) => {
                    self.skipped_packets += 1;
                    if self.skipped_packets <= SKIP_WARNINGS {
                        tracing::warn!(file = %self.what, error = %e, "Skipped an undecodable packet.");
                    }
                    if self.skipped_packets == SKIP_WARNINGS {
                        tracing::warn!(file = %self.what, "More undecodable packets follow; counting them quietly.");
                    }
                }
                Err(e) => {
                    return Err(SourceError::Decode {
                        what: self.what.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    /// Decodes everything that is left.
    pub fn read_all(mut self) -> Result<Decoded, SourceError> {
        let mut samples = Vec::new();
        while let Some(block) = self.next_block()? {
            samples.extend_from_slice(block);
        }
        if samples.is_empty() {
            return Err(SourceError::Decode {
                what: self.what.clone(),
                reason: "no audio could be decoded".into(),
            });
        }
        Ok(Decoded {
            format: self.format,
            samples,
        })
    }
}

/// Decodes a whole file into memory.
pub fn decode_file(path: &Path) -> Result<Decoded, SourceError> {
    Decoder::open(path)?.read_all()
}

/// Decodes a whole file and converts it to 16 kHz mono (the stream format every model takes).
pub fn decode_file_16k(path: &Path) -> Result<Vec<f32>, SourceError> {
    let d = decode_file(path)?;
    to_16k_mono(d.format, &d.samples)
}

/// Mono 16-bit PCM WAV of `samples` (clamped to -1..1) at `rate` Hz, in memory: what `hark`
/// sends and saves, what the trainer writes, and what benches upload.
pub fn wav_bytes(samples: &[f32], rate: u32) -> Result<Vec<u8>, SourceError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let err = |e: hound::Error| SourceError::Format(format!("writing WAV: {e}"));
    let mut buf = std::io::Cursor::new(Vec::with_capacity(44 + 2 * samples.len()));
    let mut w = hound::WavWriter::new(&mut buf, spec).map_err(err)?;
    for s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
            .map_err(err)?;
    }
    w.finalize().map_err(err)?;
    Ok(buf.into_inner())
}

/// Converts interleaved samples of any supported format to 16 kHz mono.
pub fn to_16k_mono(format: Format, interleaved: &[f32]) -> Result<Vec<f32>, SourceError> {
    let mut conv = super::resample::ToMono16k::new(format)?;
    let frames = interleaved.len() / usize::from(format.channels.max(1));
    let mut out = Vec::with_capacity(frames * 16_000 / format.rate.max(1) as usize + 1024);
    conv.process(interleaved, &mut out);
    conv.flush(&mut out);
    Ok(out)
}

/// An uploaded file (or raw PCM) read as 16 kHz mono a block at a time, never longer than a
/// limit: memory stays at one decoded packet plus the resampler, whatever the upload declares.
#[derive(Debug)]
pub struct Upload16k {
    input: UploadInput,
    conv: super::resample::ToMono16k,
    format: Format,
    /// Input frames read so far, and the most allowed.
    frames_in: u64,
    max_frames_in: u64,
    max_s: f64,
    flushed: bool,
}

enum UploadInput {
    File(Box<Decoder>),
    Raw {
        bytes: Vec<u8>,
        at: usize,
        encoding: super::Encoding,
        scratch: Vec<f32>,
    },
}

impl std::fmt::Debug for UploadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(d) => d.fmt(f),
            Self::Raw { encoding, .. } => write!(f, "Raw({encoding:?})"),
        }
    }
}

/// Raw PCM bytes converted per call (about 0.1 s at 48 kHz stereo s16).
const RAW_BLOCK_BYTES: usize = 16 * 1024;

impl Upload16k {
    /// An uploaded container file: its header is checked ([`super::header`]) and its declared
    /// duration compared with `max_s` before the decoder is built.
    pub fn from_file_bytes(bytes: Vec<u8>, max_s: f64) -> Result<Self, SourceError> {
        if let Some(d) = super::header::inspect(&bytes)?
            && let Some(secs) = d.seconds()
            && secs > max_s
        {
            return Err(SourceError::TooLong {
                what: format!("uploaded {} ({secs:.0} s declared)", d.container),
                limit_s: max_s,
            });
        }
        let decoder = Decoder::from_bytes(bytes, "uploaded audio")?;
        let format = decoder.format();
        Self::new(UploadInput::File(Box::new(decoder)), format, max_s)
    }

    /// Raw interleaved PCM in `format`.
    pub fn from_raw(
        bytes: Vec<u8>,
        format: Format,
        encoding: super::Encoding,
        max_s: f64,
    ) -> Result<Self, SourceError> {
        let format = format.validate()?;
        let frame_bytes = encoding.bytes_per_sample() * usize::from(format.channels);
        if !bytes.len().is_multiple_of(frame_bytes) {
            return Err(SourceError::Format(
                "raw audio is not a whole number of frames".into(),
            ));
        }
        let secs = (bytes.len() / frame_bytes) as f64 / f64::from(format.rate);
        if secs > max_s {
            return Err(SourceError::TooLong {
                what: format!("uploaded raw audio ({secs:.0} s)"),
                limit_s: max_s,
            });
        }
        let input = UploadInput::Raw {
            bytes,
            at: 0,
            encoding,
            scratch: Vec::new(),
        };
        Self::new(input, format, max_s)
    }

    fn new(input: UploadInput, format: Format, max_s: f64) -> Result<Self, SourceError> {
        Ok(Self {
            input,
            conv: super::resample::ToMono16k::new(format)?,
            format,
            frames_in: 0,
            max_frames_in: (max_s * f64::from(format.rate)).ceil() as u64,
            max_s,
            flushed: false,
        })
    }

    /// The upload's own format (before conversion).
    pub fn format(&self) -> Format {
        self.format
    }

    /// Seconds of input read so far.
    pub fn seconds_read(&self) -> f64 {
        self.frames_in as f64 / f64::from(self.format.rate)
    }

    /// Appends the next block of 16 kHz mono samples to `out`; false once everything (the
    /// resampler's tail included) has been delivered. Non-finite samples and audio beyond the
    /// limit are errors.
    pub fn read(&mut self, out: &mut Vec<f32>) -> Result<bool, SourceError> {
        if self.flushed {
            return Ok(false);
        }
        let channels = usize::from(self.format.channels);
        let block: &[f32] = match &mut self.input {
            UploadInput::File(d) => d.next_block()?.unwrap_or(&[]),
            UploadInput::Raw {
                bytes,
                at,
                encoding,
                scratch,
            } => {
                let frame = encoding.bytes_per_sample() * channels;
                let end = (*at + RAW_BLOCK_BYTES / frame * frame).min(bytes.len());
                scratch.clear();
                super::stdin::decode_pcm(&bytes[*at..end], *encoding, scratch);
                *at = end;
                scratch
            }
        };
        if block.is_empty() {
            self.conv.flush(out);
            self.flushed = true;
            return Ok(true);
        }
        if let Some(bad) = block.iter().position(|s| !s.is_finite()) {
            return Err(SourceError::Decode {
                what: "uploaded audio".into(),
                reason: format!(
                    "sample {} is not finite",
                    self.frames_in * channels as u64 + bad as u64
                ),
            });
        }
        self.frames_in += (block.len() / channels.max(1)) as u64;
        if self.frames_in > self.max_frames_in {
            return Err(SourceError::TooLong {
                what: "uploaded audio".into(),
                limit_s: self.max_s,
            });
        }
        self.conv.process(block, out);
        Ok(true)
    }

    /// Reads everything (for callers that need the whole clip; still bounded by the limit).
    pub fn read_all(mut self) -> Result<Vec<f32>, SourceError> {
        let mut out = Vec::new();
        while self.read(&mut out)? {}
        if out.is_empty() {
            return Err(SourceError::Decode {
                what: "uploaded audio".into(),
                reason: "no audio could be decoded".into(),
            });
        }
        Ok(out)
    }
}

/// Plays a file into the pipeline.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    realtime: bool,
    decoder: Decoder,
}

impl FileSource {
    /// Opens and probes the file now, so that a bad path or format fails at startup.
    pub fn open(path: &Path, realtime: bool) -> Result<Self, SourceError> {
        Ok(Self {
            path: path.to_path_buf(),
            realtime,
            decoder: Decoder::open(path)?,
        })
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        format!(
            "file:{} ({} Hz, {} ch, {})",
            self.path.display(),
            self.decoder.format().rate,
            self.decoder.format().channels,
            if self.realtime { "real-time" } else { "fast" }
        )
    }

    fn run(mut self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let format = self.decoder.format();
        // A paced file behaves like a device for the pipeline (drops are counted, never waited
        // on), which is what makes it a faithful stand-in for a microphone in tests and benches.
        let mut writer = ctx.open_segment(format, self.realtime)?;
        let started = Instant::now();
        let mut frames: u64 = 0;
        let channels = u64::from(format.channels);
        while let Some(block) = self.decoder.next_block()? {
            if ctx.should_stop() {
                break;
            }
            if self.realtime {
                // Release audio no earlier than it would have been captured.
                let due = Duration::from_secs_f64(frames as f64 / f64::from(format.rate));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    sleep_unless_stopped(wait, &ctx);
                }
            }
            frames += block.len() as u64 / channels;
            if !writer.write_f32(block) {
                break;
            }
        }
        if self.realtime && !ctx.should_stop() {
            // Let the last block "play out" so the end of file lands at real time too.
            let due = Duration::from_secs_f64(frames as f64 / f64::from(format.rate));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                sleep_unless_stopped(wait, &ctx);
            }
        }
        Ok(())
    }
}

fn sleep_unless_stopped(mut wait: Duration, ctx: &SourceContext) {
    const STEP: Duration = Duration::from_millis(50);
    while !wait.is_zero() && !ctx.should_stop() {
        let d = wait.min(STEP);
        std::thread::sleep(d);
        wait -= d;
    }
}
