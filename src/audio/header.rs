//! Sanity checks on container headers before any decoder sees them.
//!
//! Decoders trust their headers: a WAV declaring 0 Hz made symphonia panic building a time base,
//! and an 800 KB FLAC declaring an hour of 384 kHz 8-channel audio decoded into 12 GB. Here the
//! fields that size or time the stream are read by hand from the bytes (WAV `fmt `/`data`, FLAC
//! STREAMINFO), checked against the ranges the pipeline supports, and turned into a declared
//! duration the caller compares with its limit *before* allocating anything. Containers without
//! a duration in their header (MP3, Ogg) are limited while decoding instead.

use super::{Format, SourceError};

/// What a header declares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Declared {
    pub container: &'static str,
    pub format: Format,
    /// Frames (samples per channel) the header promises, when it says.
    pub frames: Option<u64>,
}

impl Declared {
    /// Declared duration in seconds, when the header gives one.
    pub fn seconds(&self) -> Option<f64> {
        self.frames
            .map(|f| f as f64 / f64::from(self.format.rate.max(1)))
    }
}

fn bad(container: &str, reason: impl std::fmt::Display) -> SourceError {
    SourceError::Decode {
        what: format!("{container} header"),
        reason: reason.to_string(),
    }
}

/// Reads and checks the header of an in-memory file. `Ok(None)`: a container whose header holds
/// nothing to check (it is then bounded while decoding). `Err`: a header no decoder should see.
pub fn inspect(bytes: &[u8]) -> Result<Option<Declared>, SourceError> {
    let body = skip_id3(bytes);
    if body.len() >= 12 && &body[..4] == b"RIFF" && &body[8..12] == b"WAVE" {
        return wav(body).map(Some);
    }
    if matches!(body.get(..4), Some(b"RF64" | b"BW64")) {
        return Err(bad("WAV", "RF64/BW64 WAV files are not supported"));
    }
    if body.len() >= 4 && &body[..4] == b"fLaC" {
        return flac(body).map(Some);
    }
    Ok(None)
}

/// Skips a leading ID3v2 tag (FLAC and MP3 files may carry one).
fn skip_id3(bytes: &[u8]) -> &[u8] {
    if bytes.len() >= 10 && &bytes[..3] == b"ID3" {
        let size = bytes[6..10]
            .iter()
            .fold(0usize, |acc, &b| (acc << 7) | usize::from(b & 0x7f));
        let footer = if bytes[5] & 0x10 != 0 { 10 } else { 0 };
        return bytes.get(10 + size + footer..).unwrap_or(&[]);
    }
    bytes
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

const WAVE_PCM: u16 = 1;
const WAVE_FLOAT: u16 = 3;
const WAVE_ALAW: u16 = 6;
const WAVE_MULAW: u16 = 7;
const WAVE_EXTENSIBLE: u16 = 0xfffe;

fn wav(b: &[u8]) -> Result<Declared, SourceError> {
    let mut at = 12;
    let mut fmt: Option<(Format, u32)> = None;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let size = u32le(b, at + 4) as usize;
        let body = at + 8;
        if id == b"fmt " {
            if size < 16 || body + 16 > b.len() {
                return Err(bad("WAV", "fmt chunk shorter than 16 bytes"));
            }
            let mut tag = u16le(b, body);
            let channels = u16le(b, body + 2);
            let rate = u32le(b, body + 4);
            let block_align = u32::from(u16le(b, body + 12));
            let bits = u16le(b, body + 14);
            if tag == WAVE_EXTENSIBLE {
                if size < 40 || body + 26 > b.len() {
                    return Err(bad("WAV", "WAVE_FORMAT_EXTENSIBLE without its extension"));
                }
                tag = u16le(b, body + 24);
            }
            let bits_ok = match tag {
                WAVE_PCM => matches!(bits, 8 | 16 | 24 | 32),
                WAVE_FLOAT => matches!(bits, 32 | 64),
                WAVE_ALAW | WAVE_MULAW => bits == 8,
                other => return Err(bad("WAV", format!("unsupported format tag {other:#x}"))),
            };
            if !bits_ok {
                return Err(bad(
                    "WAV",
                    format!("{bits} bits per sample for format tag {tag}"),
                ));
            }
            let format = Format { rate, channels }
                .validate()
                .map_err(|e| bad("WAV", e))?;
            let expect = u32::from(channels) * u32::from(bits).div_ceil(8);
            if block_align != expect {
                return Err(bad(
                    "WAV",
                    format!(
                        "block align {block_align} for {channels} channels of {bits} bits \
                         (expected {expect})"
                    ),
                ));
            }
            fmt = Some((format, block_align));
        } else if id == b"data" {
            let (format, align) = fmt.ok_or_else(|| bad("WAV", "data chunk before fmt chunk"))?;
            // Streaming writers leave 0 or 0xFFFFFFFF: the bytes present are what counts.
            let present = b.len() - body;
            let bytes = if size == 0 || size > present {
                present
            } else {
                size
            };
            return Ok(Declared {
                container: "WAV",
                format,
                frames: Some(bytes as u64 / u64::from(align)),
            });
        }
        at = body.saturating_add(size).saturating_add(size & 1);
    }
    Err(bad(
        "WAV",
        if fmt.is_some() {
            "no data chunk"
        } else {
            "no fmt chunk"
        },
    ))
}

fn flac(b: &[u8]) -> Result<Declared, SourceError> {
    // The first metadata block must be STREAMINFO (34 bytes).
    let Some(h) = b.get(4..8) else {
        return Err(bad("FLAC", "truncated before STREAMINFO"));
    };
    let kind = h[0] & 0x7f;
    let len = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
    if kind != 0 || len != 34 {
        return Err(bad(
            "FLAC",
            "first metadata block is not a 34-byte STREAMINFO",
        ));
    }
    let Some(s) = b.get(8..8 + 34) else {
        return Err(bad("FLAC", "truncated STREAMINFO"));
    };
    let min_block = u16::from_be_bytes([s[0], s[1]]);
    let max_block = u16::from_be_bytes([s[2], s[3]]);
    // Bytes 10..18: 20 bits rate, 3 bits channels - 1, 5 bits bits-per-sample - 1, 36 bits
    // total samples.
    let packed = u64::from_be_bytes([s[10], s[11], s[12], s[13], s[14], s[15], s[16], s[17]]);
    let rate = (packed >> 44) as u32;
    let channels = ((packed >> 41) & 0x7) as u16 + 1;
    let bits = ((packed >> 36) & 0x1f) as u16 + 1;
    let total = packed & 0xf_ffff_ffff;
    if min_block < 16 || max_block < min_block {
        return Err(bad(
            "FLAC",
            format!("block sizes {min_block}..{max_block} (the format needs 16 <= min <= max)"),
        ));
    }
    if bits < 4 {
        return Err(bad("FLAC", format!("{bits} bits per sample")));
    }
    let format = Format { rate, channels }
        .validate()
        .map_err(|e| bad("FLAC", e))?;
    Ok(Declared {
        container: "FLAC",
        format,
        // 0 means "unknown" in STREAMINFO.
        frames: (total != 0).then_some(total),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A WAV header (+ `data_bytes` of zeros) with the given fields.
    pub(crate) fn wav_bytes(
        tag: u16,
        channels: u16,
        rate: u32,
        bits: u16,
        align: u16,
        data_bytes: u32,
    ) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&(36 + data_bytes).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        v.extend_from_slice(&(rate.wrapping_mul(u32::from(align))).to_le_bytes());
        v.extend_from_slice(&align.to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&data_bytes.to_le_bytes());
        v.resize(v.len() + data_bytes as usize, 0);
        v
    }

    /// A FLAC STREAMINFO header with the given fields (no frames).
    pub(crate) fn flac_bytes(rate: u32, channels: u8, bits: u8, total: u64) -> Vec<u8> {
        let mut v = b"fLaC".to_vec();
        v.extend_from_slice(&[0x80, 0, 0, 34]);
        v.extend_from_slice(&4096u16.to_be_bytes());
        v.extend_from_slice(&4096u16.to_be_bytes());
        v.extend_from_slice(&[0; 6]);
        let packed = (u64::from(rate) << 44)
            | (u64::from(channels - 1) << 41)
            | (u64::from(bits - 1) << 36)
            | (total & 0xf_ffff_ffff);
        v.extend_from_slice(&packed.to_be_bytes());
        v.extend_from_slice(&[0; 16]);
        v
    }

    #[test]
    fn a_sane_wav_declares_its_duration() {
        let d = inspect(&wav_bytes(1, 1, 16_000, 16, 2, 32_000))
            .unwrap()
            .unwrap();
        assert_eq!(d.format.rate, 16_000);
        assert_eq!(d.seconds(), Some(1.0));
    }

    #[test]
    fn wav_fields_out_of_range_are_refused() {
        for (what, bytes) in [
            ("0 Hz", wav_bytes(1, 1, 0, 16, 2, 100)),
            ("0 channels", wav_bytes(1, 0, 16_000, 16, 0, 100)),
            ("7 bits", wav_bytes(1, 1, 16_000, 7, 1, 100)),
            ("bad align", wav_bytes(1, 2, 16_000, 16, 3, 100)),
            ("4 GHz", wav_bytes(1, 1, u32::MAX, 16, 2, 100)),
            ("tag 0x55", wav_bytes(0x55, 1, 16_000, 16, 2, 100)),
            ("float 16", wav_bytes(3, 1, 16_000, 16, 2, 100)),
        ] {
            assert!(inspect(&bytes).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn flac_streaminfo_declares_the_bomb() {
        // The bomb: an hour of 384 kHz, 8 channels.
        let d = inspect(&flac_bytes(384_000, 8, 16, 384_000 * 3600))
            .unwrap()
            .unwrap();
        assert_eq!(d.seconds(), Some(3600.0));
        assert!(inspect(&flac_bytes(0, 1, 16, 100)).is_err());
        assert!(inspect(&flac_bytes(500_000, 1, 16, 100)).is_err());
        assert_eq!(
            inspect(&flac_bytes(16_000, 1, 16, 0))
                .unwrap()
                .unwrap()
                .frames,
            None
        );
    }

    proptest::proptest! {
        /// Any bytes, and any corruption of a valid WAV or FLAC header: an answer, never a
        /// panic, from the header check and from the whole upload path behind it (benches/
        /// fuzz.rs runs a million of these).
        #[test]
        fn no_input_panics(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..128),
            at in 0usize..64,
            byte in proptest::num::u8::ANY,
            flac in proptest::bool::ANY,
        ) {
            let _ = inspect(&raw);
            let mut v = if flac {
                flac_bytes(44_100, 2, 16, 1000)
            } else {
                wav_bytes(3, 2, 48_000, 32, 8, 256)
            };
            let n = v.len();
            v[at % n] = byte;
            let _ = inspect(&v);
            if let Ok(mut u) = crate::audio::file::Upload16k::from_file_bytes(v, 10.0) {
                let mut out = Vec::new();
                while let Ok(true) = u.read(&mut out) {}
            }
        }
    }

    #[test]
    fn truncated_headers_never_panic() {
        let full = [
            wav_bytes(1, 2, 44_100, 16, 4, 64),
            flac_bytes(44_100, 2, 16, 1000),
        ];
        for f in &full {
            for n in 0..f.len() {
                let _ = inspect(&f[..n]);
            }
        }
        let _ = inspect(b"ID3\x04\x00\x10\x7f\x7f\x7f\x7f");
    }
}
