//! Raw PCM on standard input (`arecord -f S16_LE -r 16000 | harkd run --source stdin`).

use std::io::Read;

use super::{Encoding, Format, Source, SourceContext, SourceError, capture::CaptureWriter};

#[derive(Debug)]
pub struct StdinSource {
    pub format: Format,
    pub encoding: Encoding,
}

impl Source for StdinSource {
    fn describe(&self) -> String {
        format!(
            "stdin ({:?}, {} Hz, {} ch)",
            self.encoding, self.format.rate, self.format.channels
        )
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        // A pipe applies its own back-pressure, so the writer waits rather than drops.
        let mut writer = ctx.open_segment(self.format, false)?;
        let mut input = std::io::stdin().lock();
        pump_pcm(&mut input, self.encoding, &mut writer, || ctx.should_stop())
    }
}

/// Copies raw PCM from `input` to `writer` until EOF, keeping partial samples across reads.
pub fn pump_pcm(
    input: &mut impl Read,
    encoding: Encoding,
    writer: &mut CaptureWriter,
    should_stop: impl Fn() -> bool,
) -> Result<(), SourceError> {
    let width = encoding.bytes_per_sample();
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut samples = Vec::with_capacity(buf.len() / 2);
    loop {
        if should_stop() {
            return Ok(());
        }
        let n = match input.read(&mut buf[filled..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        filled += n;
        let whole = filled / width * width;
        samples.clear();
        decode_pcm(&buf[..whole], encoding, &mut samples);
        buf.copy_within(whole..filled, 0);
        filled -= whole;
        if !writer.write_f32(&samples) {
            return Ok(());
        }
    }
}

/// Appends the samples in `bytes` (whole samples only) to `out`.
pub fn decode_pcm(bytes: &[u8], encoding: Encoding, out: &mut Vec<f32>) {
    match encoding {
        Encoding::S16le => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
        ),
        Encoding::F32le => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
    }
}
