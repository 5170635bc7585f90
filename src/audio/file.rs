//! Audio files (WAV, FLAC, MP3, OGG/Vorbis, AAC in MP4/M4A, AIFF) decoded with symphonia, played
//! at real-time pace or as fast as the pipeline takes them.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
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

/// File extensions of the containers decoded here, in the order a directory prefers them when
/// one recording is there twice (lossless first).
pub const EXTENSIONS: &[&str] = &[
    "flac", "wav", "aiff", "aif", "ogg", "oga", "mp3", "m4a", "mp4", "aac",
];

/// Whether `path` has one of [`EXTENSIONS`] (any case).
pub fn is_audio_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

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
    /// The container did not state the channels: the first decoded block sets the format.
    learn_format: bool,
    /// `buf` holds a block decoded ahead (to learn the format) that was not handed out yet.
    primed: bool,
    /// Decoded frames still to drop before the recording starts (an MP4's encoder priming).
    trim_frames: u64,
    /// Where in `buf` the block handed out starts (after the frames trimmed from it).
    block_from: usize,
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
        let open_err = |source| SourceError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        // An MP4's sample tables are sized by what the file states: checked before symphonia
        // allocates them (see `header::check_mp4`). Other containers are bounded while decoding.
        let mut prefix = Vec::new();
        (&mut file)
            .take(super::header::PROBE_REACH as u64 + 4)
            .read_to_end(&mut prefix)
            .map_err(open_err)?;
        let mut trim_s = 0.0;
        if let Some(start) = super::header::mp4_offset(&prefix) {
            file.seek(SeekFrom::Start(start as u64)).map_err(open_err)?;
            trim_s = super::header::check_mp4(&mut file).map_err(|e| match e {
                SourceError::Decode { reason, .. } => SourceError::Decode {
                    what: path.display().to_string(),
                    reason,
                },
                e => e,
            })?;
        }
        file.rewind().map_err(open_err)?;
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        Self::from_stream(
            MediaSourceStream::new(Box::new(file), Default::default()),
            hint,
            path.display().to_string(),
            trim_s,
        )
    }

    /// Decodes an in-memory file (any supported container).
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<Self, SourceError> {
        let trim_s = super::header::mp4_trim(&bytes)?;
        let cursor = std::io::Cursor::new(bytes);
        Self::from_stream(
            MediaSourceStream::new(Box::new(cursor), Default::default()),
            Hint::new(),
            what.to_string(),
            trim_s,
        )
    }

    /// `trim_s`: seconds of decoded audio that precede the recording (an MP4's edit list).
    fn from_stream(
        mss: MediaSourceStream,
        hint: Hint,
        what: String,
        trim_s: f64,
    ) -> Result<Self, SourceError> {
        // symphonia trusts headers and asserts on some of them (a 0 Hz WAV panicked building its
        // time base); [`super::header`] refuses those first, and a panic that still escapes is
        // a decode error for this file, never a crash of the caller.
        let w = what.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            Self::from_stream_inner(mss, hint, w, trim_s)
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
        trim_s: f64,
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
        // MP4 leaves an AAC track's channels to the codec: the first decoded packet says.
        let channels = track.codec_params.channels.map(|c| c.count());
        let format = Format {
            rate,
            channels: channels.map_or(1, |c| u16::try_from(c).unwrap_or(u16::MAX)),
        }
        .validate()?;
        let track_id = track.id;
        let decoder = symphonia::default::get_codecs()
            .make(&track.codec_params, &DecoderOptions::default())
            .map_err(|e| decode_err(format!("unsupported codec ({e})")))?;
        let mut me = Self {
            reader,
            decoder,
            track_id,
            format,
            what,
            buf: None,
            skipped_packets: 0,
            poisoned: false,
            learn_format: channels.is_none(),
            primed: false,
            trim_frames: (trim_s * f64::from(rate)).round() as u64,
            block_from: 0,
        };
        if me.learn_format {
            if !me.advance()? {
                return Err(me.failed("no audio could be decoded".into()));
            }
            me.primed = true;
        }
        Ok(me)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Next block of interleaved samples, or `None` at the end of the stream.
    pub fn next_block(&mut self) -> Result<Option<&[f32]>, SourceError> {
        if self.poisoned {
            return Err(self.failed("the decoder failed earlier on this file".into()));
        }
        if std::mem::take(&mut self.primed) {
            return Ok(Some(self.block()));
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.advance())) {
            Ok(Ok(true)) => Ok(Some(self.block())),
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

    /// The block last decoded, without its trimmed frames.
    fn block(&self) -> &[f32] {
        self.buf
            .as_ref()
            .map_or(&[], |b| b.samples().get(self.block_from..).unwrap_or(&[]))
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
                    if std::mem::take(&mut self.learn_format) {
                        self.format = Format {
                            rate: spec.rate,
                            channels: u16::try_from(spec.channels.count()).unwrap_or(u16::MAX),
                        }
                        .validate()?;
                    }
                    if spec.rate != self.format.rate
                        || spec.channels.count() != usize::from(self.format.channels)
                    {
                        return Err(SourceError::Decode {
                            what: self.what.clone(),
                            reason: "format changes mid-stream".into(),
                        });
                    }
                    let frames = decoded.frames() as u64;
                    let trimmed = self.trim_frames.min(frames);
                    self.trim_frames -= trimmed;
                    if trimmed == frames {
                        continue;
                    }
                    self.block_from = trimmed as usize * spec.channels.count();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m4a() -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/melody_aac.m4a"))
            .unwrap()
    }

    #[test]
    fn an_m4a_decodes_though_its_container_leaves_the_channels_to_the_codec() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/melody_aac.m4a");
        let d = decode_file(&path).unwrap();
        assert_eq!(
            d.format,
            Format {
                rate: 16_000,
                channels: 1
            }
        );
        let secs = d.duration().as_secs_f64();
        assert!((3.9..4.2).contains(&secs), "{secs} s");
        let rms = (d.samples.iter().map(|x| x * x).sum::<f32>() / d.samples.len() as f32).sqrt();
        assert!(rms > 0.01, "rms {rms}");
        // The first block (decoded early to learn the channels) is handed out, not lost.
        let mut dec = Decoder::from_bytes(m4a(), "m4a").unwrap();
        let first = dec.next_block().unwrap().unwrap().to_vec();
        assert_eq!(first[..], d.samples[..first.len()]);
    }

    #[test]
    fn an_m4a_on_disk_stating_a_huge_table_is_refused_before_decoding() {
        // The fixture's chunk-offset table, its count set to 4 billion.
        let mut bytes = m4a();
        let at = bytes.windows(4).position(|w| w == b"stco").unwrap() + 8;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.m4a");
        std::fs::write(&path, &bytes).unwrap();
        let Err(e) = Decoder::open(&path) else {
            panic!("a hostile M4A was opened")
        };
        let e = e.to_string();
        assert!(
            e.contains("hostile.m4a") && e.contains("'stco' states 4294967295"),
            "{e}"
        );
    }

    #[test]
    fn an_m4a_cut_short_is_an_error_not_a_crash() {
        // symphonia needs the whole `mdat` atom of an MP4 (a recorder killed mid-file leaves it
        // short): such a file is refused, saying so.
        let bytes = m4a();
        let e = Upload16k::from_file_bytes(bytes[..bytes.len() / 2].to_vec(), 60.0)
            .and_then(Upload16k::read_all)
            .unwrap_err();
        assert!(e.to_string().contains("uploaded audio"), "{e}");
    }
}
