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
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("what", &self.what)
            .field("format", &self.format)
            .finish_non_exhaustive()
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
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Next block of interleaved samples, or `None` at the end of the stream.
    pub fn next_block(&mut self) -> Result<Option<&[f32]>, SourceError> {
        loop {
            let packet = match self.reader.next_packet() {
                Ok(p) => p,
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(None);
                }
                Err(SymError::ResetRequired) => return Ok(None),
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
                    let samples = self.buf.as_ref().map(|b| b.samples()).unwrap_or(&[]);
                    return Ok(Some(samples));
                }
                // A damaged packet: skip it, as players do, but count it.
                Err(SymError::DecodeError(e)) => {
                    self.skipped_packets += 1;
                    tracing::warn!(file = %self.what, error = %e, "Skipped an undecodable packet.");
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

/// Converts interleaved samples of any supported format to 16 kHz mono.
pub fn to_16k_mono(format: Format, interleaved: &[f32]) -> Result<Vec<f32>, SourceError> {
    let mut conv = super::resample::ToMono16k::new(format)?;
    let frames = interleaved.len() / usize::from(format.channels.max(1));
    let mut out = Vec::with_capacity(frames * 16_000 / format.rate.max(1) as usize + 1024);
    conv.process(interleaved, &mut out);
    conv.flush(&mut out);
    Ok(out)
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
