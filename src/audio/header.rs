//! Sanity checks on container headers before any decoder sees them.
//!
//! Decoders trust their headers: a WAV declaring 0 Hz made symphonia panic building a time base,
//! and an 800 KB FLAC declaring an hour of 384 kHz 8-channel audio decoded into 12 GB. Here the
//! fields that size or time the stream are read by hand from the bytes (WAV `fmt `/`data`, FLAC
//! STREAMINFO), checked against the ranges the pipeline supports, and turned into a declared
//! duration the caller compares with its limit *before* allocating anything. Containers without
//! a duration in their header (MP3, Ogg) are limited while decoding instead. An MP4's atom tree,
//! which symphonia sizes its tables by, is checked by [`check_mp4`] wherever a decoder is built
//! (`file::Decoder`), for uploads and files alike.

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

/// How far into a file symphonia's probe looks for a format's marker (bytes).
pub(crate) const PROBE_REACH: usize = 1 << 20;

/// Where symphonia would start reading a file as MP4 (M4A), given its first [`PROBE_REACH`] + 4
/// bytes (or all of it): 4 bytes before the first `ftyp` after any ID3 tag, unless the bytes
/// open with another format's signature (whose marker the probe finds first).
pub(crate) fn mp4_offset(prefix: &[u8]) -> Option<usize> {
    let body = skip_id3(prefix);
    mp4_start(body).map(|start| prefix.len() - body.len() + start)
}

fn mp4_start(b: &[u8]) -> Option<usize> {
    let other = [&b"OggS"[..], b"FORM", b"RIFF", b"fLaC"]
        .iter()
        .any(|sig| b.starts_with(sig))
        || (b.len() >= 2 && b[0] == 0xff && b[1] & 0xe0 == 0xe0);
    if other {
        return None;
    }
    let reach = &b[..b.len().min(PROBE_REACH + 4)];
    // The n-th window after the first four is the `ftyp` at n + 4, its atom's size at n.
    reach.windows(4).skip(4).position(|w| w == b"ftyp")
}

/// Atoms holding other atoms, walked into (their children are all read by symphonia).
const MP4_CONTAINERS: [&[u8; 4]; 11] = [
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex", b"moof", b"traf",
    b"udta",
];
/// Deeper than any real file nests (moov/trak/mdia/minf/stbl is 5): a hostile file nesting
/// containers a hundred thousand deep would otherwise exhaust the stack here.
const MP4_MAX_DEPTH: u8 = 12;

/// The most of a `moov` atom (an MP4's index: its tracks and sample tables) read to check it:
/// an hour of AAC indexes in about 1 MB.
const MOOV_MAX: u64 = 64 << 20;

/// Checks the atom tree of an MP4 (M4A) read from `r`'s current position to its end, reading
/// only the top-level atoms' headers and the `moov`. symphonia's MP4 reader sizes its sample
/// tables by the entry counts the file states (`Vec::with_capacity`) and reads atoms into
/// buffers of the size their headers state: a 100-byte file claiming 4 billion chunk offsets or a
/// terabyte-long atom would make it allocate that much, and a failed allocation aborts the whole
/// process. So every atom must lie within the file (within its parent; only a top-level `mdat`
/// of a recording cut short may run past the end), and every sample table's entries within its
/// atom.
///
/// Returns the audio's start trim (see [`mp4_start_trim`]) in seconds.
pub fn check_mp4<R: std::io::Read + std::io::Seek>(r: &mut R) -> Result<f64, SourceError> {
    use std::io::SeekFrom;
    let io = |e: std::io::Error| bad("MP4", e);
    let base = r.stream_position().map_err(io)?;
    let len = r.seek(SeekFrom::End(0)).map_err(io)? - base;
    let mut at = 0u64;
    let mut trim = 0.0;
    while at + 8 <= len {
        r.seek(SeekFrom::Start(base + at)).map_err(io)?;
        let mut h = [0u8; 16];
        let n = h.len().min((len - at) as usize);
        r.read_exact(&mut h[..n]).map_err(io)?;
        let (kind, head, size) = atom_header(&h[..n], len - at)?;
        let name = String::from_utf8_lossy(&kind).into_owned();
        if size > len - at {
            if &kind == b"mdat" {
                return Ok(trim);
            }
            return Err(bad(
                "MP4",
                format!("atom '{name}' states {size} bytes; {} are left", len - at),
            ));
        }
        if &kind == b"moov" {
            if size > MOOV_MAX {
                return Err(bad(
                    "MP4",
                    format!("a 'moov' atom of {size} bytes (hark reads up to {MOOV_MAX})"),
                ));
            }
            r.seek(SeekFrom::Start(base + at + head as u64))
                .map_err(io)?;
            let mut moov = vec![0u8; (size - head as u64) as usize];
            r.read_exact(&mut moov).map_err(io)?;
            mp4_atoms(&moov, 1, len)?;
            trim = mp4_start_trim(&moov);
        }
        at += size;
    }
    Ok(trim)
}

/// Checks an in-memory MP4 ([`check_mp4`]) and returns its start trim; 0 for other containers.
pub fn mp4_trim(bytes: &[u8]) -> Result<f64, SourceError> {
    match mp4_offset(bytes) {
        Some(start) => check_mp4(&mut std::io::Cursor::new(&bytes[start..])),
        None => Ok(0.0),
    }
}

/// Seconds at the start of an MP4's sound track that are not part of the recording: the AAC
/// encoder's priming (1024-2112 samples), which the track's edit list skips (its first edit's
/// media time). symphonia 0.5's MP4 reader does not apply edit lists, so without this every time
/// in an M4A read 1024 samples late: 21 ms at 48 kHz, 64 ms at 16 kHz (a note onset is matched
/// within 50 ms). `moov` is the checked body of the `moov` atom.
fn mp4_start_trim(moov: &[u8]) -> f64 {
    let trim = atoms(moov)
        .map_while(Result::ok)
        .filter(|(k, _)| k == b"trak")
        .find_map(|(_, trak)| {
            let mdia = child(trak, b"mdia")?;
            if child(mdia, b"hdlr")?.get(8..12)? != b"soun" {
                return None;
            }
            let mdhd = child(mdia, b"mdhd")?;
            let timescale = match mdhd.first()? {
                1 => u32be(mdhd.get(..24)?, 20),
                _ => u32be(mdhd.get(..16)?, 12),
            };
            let Some(elst) = child(trak, b"edts").and_then(|e| child(e, b"elst")) else {
                return Some(0.0);
            };
            let (v1, count) = (*elst.first()? == 1, u32be(elst.get(..8)?, 4) as usize);
            let entry = if v1 { 20 } else { 12 };
            let media_time = (0..count.min(elst.len() / entry))
                .map(|i| {
                    let at = 8 + i * entry;
                    match v1 {
                        true => elst.get(at..at + 16).map(|e| u64be(e, 8) as i64),
                        false => elst.get(at..at + 8).map(|e| i64::from(u32be(e, 4) as i32)),
                    }
                })
                .find(|t| t.is_none_or(|t| t >= 0))??;
            Some(media_time as f64 / f64::from(timescale.max(1)))
        })
        .unwrap_or(0.0);
    // An edit skipping seconds is an edited clip, not priming; hark reads it whole.
    if (0.0..=1.0).contains(&trim) {
        trim
    } else {
        0.0
    }
}

/// The atoms in `b`: type and body. An atom stating more bytes than `b` has left is an error,
/// and the last item.
fn atoms(b: &[u8]) -> impl Iterator<Item = Result<([u8; 4], &[u8]), SourceError>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at + 8 > b.len() {
            return None;
        }
        let room = (b.len() - at) as u64;
        let atom =
            atom_header(&b[at..b.len().min(at + 16)], room).and_then(|(kind, head, size)| {
                if size > room {
                    let name = String::from_utf8_lossy(&kind);
                    return Err(bad(
                        "MP4",
                        format!("atom '{name}' states {size} bytes; its parent holds {room}"),
                    ));
                }
                let end = at + size as usize;
                Ok((kind, &b[at + head..end], end))
            });
        at = atom.as_ref().map_or(b.len(), |a| a.2);
        Some(atom.map(|(kind, body, _)| (kind, body)))
    })
}

/// The body of the first `kind` atom in `b` (checked).
fn child<'a>(b: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    atoms(b)
        .map_while(Result::ok)
        .find(|(k, _)| k == kind)
        .map(|(_, body)| body)
}

/// An atom's type, header length and stated size from its first bytes (`h`, up to 16), `room`
/// bytes being left where it starts.
fn atom_header(h: &[u8], room: u64) -> Result<([u8; 4], usize, u64), SourceError> {
    let kind = [h[4], h[5], h[6], h[7]];
    let (head, size) = match u32be(h, 0) {
        0 => (8, room),
        1 if h.len() >= 16 => (16, u64be(h, 8)),
        1 => {
            let name = String::from_utf8_lossy(&kind);
            return Err(bad("MP4", format!("atom '{name}' cut off in its header")));
        }
        n => (8, u64::from(n)),
    };
    if size < head as u64 {
        let name = String::from_utf8_lossy(&kind);
        return Err(bad("MP4", format!("atom '{name}' of {size} bytes")));
    }
    Ok((kind, head, size))
}

/// Checks the atoms in `b` (inside the `moov`, `depth` deep), in a file of `file_len` bytes.
fn mp4_atoms(b: &[u8], depth: u8, file_len: u64) -> Result<(), SourceError> {
    for atom in atoms(b) {
        let (kind, body) = atom?;
        if MP4_CONTAINERS.contains(&&kind) && depth < MP4_MAX_DEPTH {
            mp4_atoms(body, depth + 1, file_len)?;
        }
        // Full-box tables: version and flags, [sample size,] entry count, entries.
        let (extra, entry) = match &kind {
            b"stco" => (0, 4),
            b"stts" | b"co64" => (0, 8),
            b"stsc" => (0, 12),
            b"stsz" => (4, 4),
            _ => continue,
        };
        let name = String::from_utf8_lossy(&kind);
        let count_at = 4 + extra;
        if count_at + 4 > body.len() {
            return Err(bad("MP4", format!("'{name}' atom cut off")));
        }
        let count = u64::from(u32be(body, count_at));
        let sizes = &body[count_at + 4..];
        let constant_size = &kind == b"stsz" && u32be(body, 4) != 0;
        let need = if constant_size { 0 } else { count * entry };
        if need > sizes.len() as u64 {
            return Err(bad(
                "MP4",
                format!(
                    "'{name}' states {count} entries; its {} bytes hold fewer",
                    sizes.len()
                ),
            ));
        }
        if &kind == b"stsz" && !constant_size {
            // Each sample is read into a buffer of its stated size.
            let big = (0..count as usize)
                .map(|i| u32be(sizes, 4 * i))
                .find(|&s| u64::from(s) > file_len);
            if let Some(s) = big {
                return Err(bad(
                    "MP4",
                    format!("a sample of {s} bytes in a file of {file_len}"),
                ));
            }
        }
    }
    Ok(())
}

fn u32be(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64be(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
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

    /// An atom: big-endian size, type, body.
    fn atom(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    /// ftyp, then moov/trak/mdia/minf/stbl holding `table`.
    fn mp4_with(table: Vec<u8>) -> Vec<u8> {
        let mut v = atom(b"ftyp", b"M4A \0\0\0\0isom");
        let stbl = atom(b"stbl", &table);
        let nest = [b"minf", b"mdia", b"trak", b"moov"]
            .iter()
            .fold(stbl, |inner, k| atom(k, &inner));
        v.extend(nest);
        v
    }

    #[test]
    fn a_real_m4a_passes() {
        let m4a = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/melody_aac.m4a"),
        )
        .unwrap();
        assert_eq!(inspect(&m4a).unwrap(), None);
        mp4_trim(&m4a).unwrap();
        // ffmpeg's AAC encoder primes with 1024 samples (64 ms at 16 kHz); the edit list skips
        // them.
        assert!((mp4_trim(&m4a).unwrap() - 0.064).abs() < 1e-9);
        assert_eq!(mp4_trim(b"fLaC").unwrap(), 0.0);
        // Cut short inside its mdat, as a recorder killed mid-file leaves it: the header is no
        // danger (the decoder then says the file ends early).
        mp4_trim(&m4a[..m4a.len() - 1000]).unwrap();
    }

    #[test]
    fn mp4_tables_and_atoms_bigger_than_the_file_are_refused() {
        // stco: version/flags, count, offsets. Four billion offsets in 8 bytes.
        let mut stco = vec![0; 4];
        stco.extend_from_slice(&u32::MAX.to_be_bytes());
        stco.extend_from_slice(&[0; 8]);
        let e = mp4_trim(&mp4_with(atom(b"stco", &stco)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'stco' states 4294967295 entries"), "{e}");
        // Two offsets that are there: fine.
        let mut ok = vec![0; 4];
        ok.extend_from_slice(&2u32.to_be_bytes());
        ok.extend_from_slice(&[0; 8]);
        mp4_trim(&mp4_with(atom(b"stco", &ok))).unwrap();
        // stsz with a constant sample size needs no entries; with sizes, each must fit the file.
        let stsz = |size: u32, count: u32, entries: &[u32]| {
            let mut b = vec![0; 4];
            b.extend_from_slice(&size.to_be_bytes());
            b.extend_from_slice(&count.to_be_bytes());
            entries
                .iter()
                .for_each(|e| b.extend_from_slice(&e.to_be_bytes()));
            atom(b"stsz", &b)
        };
        mp4_trim(&mp4_with(stsz(512, u32::MAX, &[]))).unwrap();
        assert!(mp4_trim(&mp4_with(stsz(0, 3, &[1, 2]))).is_err());
        let e = mp4_trim(&mp4_with(stsz(0, 2, &[1, u32::MAX]))).unwrap_err();
        assert!(
            e.to_string().contains("a sample of 4294967295 bytes"),
            "{e}"
        );
        // A 64-bit atom size of a terabyte inside a small file.
        let mut big = 1u32.to_be_bytes().to_vec();
        big.extend_from_slice(b"hdlr");
        big.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let e = mp4_trim(&mp4_with(big)).unwrap_err().to_string();
        assert!(e.contains("atom 'hdlr' states 1099511627776 bytes"), "{e}");
        // Containers nested far deeper than any file: refused or passed, never a stack overflow.
        let n = 200_000u32;
        let mut v = atom(b"ftyp", b"M4A ");
        for i in 0..n {
            v.extend_from_slice(&(8 * (n - i)).to_be_bytes());
            v.extend_from_slice(b"moov");
        }
        let _ = mp4_trim(&v);
    }
}
