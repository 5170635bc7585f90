//! Mutation fuzzing on the stable toolchain: over a million inputs through the parsers that
//! read untrusted bytes — container headers and the audio decoders (uploads), the config file,
//! and every request message of the API — counting panics (must be 0).
//!
//! `cargo bench --profile dev --bench fuzz` (`HARK_FUZZ_N` scales the counts; default 1).
//! Seeds are the test fixtures; mutations are byte flips, random bytes, truncation, splices
//! and integer-field overwrites at the offsets headers keep sizes in, from a fixed seed.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    time::Instant,
};

use hark::api::pb;
use prost::Message as _;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], rng: &mut Rng, head: usize) -> Vec<u8> {
    let mut v = seed.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if v.is_empty() {
            v.push(rng.next() as u8);
        }
        // Mostly within the first `head` bytes, where headers are.
        let span = if rng.below(4) == 0 {
            v.len()
        } else {
            head.min(v.len())
        };
        let at = rng.below(span);
        match rng.below(6) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v[at] = rng.next() as u8,
            2 => v.truncate(at),
            3 => {
                // A 32-bit field set to an extreme.
                let x: u32 = [0, 1, u32::MAX, 0x8000_0000, rng.next() as u32][rng.below(5)];
                for (i, b) in x.to_le_bytes().iter().enumerate() {
                    if let Some(p) = v.get_mut(at + i) {
                        *p = *b;
                    }
                }
            }
            4 => {
                let n = rng.below(64);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, junk);
            }
            _ => {
                let from = rng.below(v.len());
                let n = rng.below(32).min(v.len() - from);
                let chunk = v[from..from + n].to_vec();
                v.splice(at..at, chunk);
            }
        }
    }
    v
}

struct Tally {
    name: &'static str,
    inputs: u64,
    ok: u64,
    panics: u64,
    caught_inside: u64,
    secs: f64,
}

fn run(
    name: &'static str,
    n: u64,
    seeds: &[Vec<u8>],
    head: usize,
    rng: &mut Rng,
    f: &dyn Fn(&[u8]) -> Result<(), String>,
) -> Tally {
    let t = Instant::now();
    let mut tally = Tally {
        name,
        inputs: 0,
        ok: 0,
        panics: 0,
        caught_inside: 0,
        secs: 0.0,
    };
    for i in 0..n {
        let input = if i % 16 == 0 {
            (0..rng.below(256)).map(|_| rng.next() as u8).collect()
        } else {
            mutate(&seeds[rng.below(seeds.len())], rng, head)
        };
        tally.inputs += 1;
        match catch_unwind(AssertUnwindSafe(|| f(&input))) {
            Ok(Ok(())) => tally.ok += 1,
            Ok(Err(e)) if e.contains("the decoder failed") => tally.caught_inside += 1,
            Ok(Err(_)) => {}
            Err(_) => tally.panics += 1,
        }
    }
    tally.secs = t.elapsed().as_secs_f64();
    tally
}

fn main() {
    // Panics are counted; the first one is printed (with where it happened).
    static SHOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    std::panic::set_hook(Box::new(|info| {
        if !SHOWN.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("first panic: {info}");
        }
    }));
    let scale: u64 = std::env::var("HARK_FUZZ_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let flac = std::fs::read(repo.join("tests/fixtures/jfk.flac")).unwrap();
    // Small seeds keep decoding fast: the first 4 KB of the FLAC (header and first frames),
    // short WAVs in each sample format, an AIFF and a 4 s M4A.
    let mut audio_seeds = vec![flac[..4096].to_vec()];
    for (tag, bits, align) in [(1u16, 16u16, 2u16), (1, 24, 3), (3, 32, 4), (1, 8, 1)] {
        let mut v = b"RIFF".to_vec();
        v.extend_from_slice(&(36u32 + 800).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&16_000u32.to_le_bytes());
        v.extend_from_slice(&(16_000u32 * u32::from(align)).to_le_bytes());
        v.extend_from_slice(&align.to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&800u32.to_le_bytes());
        v.extend((0..800).map(|i| (i * 7) as u8));
        audio_seeds.push(v);
    }
    // An AIFF: 400 frames of 16-bit mono at 16 kHz (its rate an 80-bit float: 16000 = 0xFA << 6).
    let mut aiff = b"FORM".to_vec();
    aiff.extend_from_slice(&(4u32 + 26 + 16 + 800).to_be_bytes());
    aiff.extend_from_slice(b"AIFFCOMM");
    aiff.extend_from_slice(&18u32.to_be_bytes());
    aiff.extend_from_slice(&1u16.to_be_bytes());
    aiff.extend_from_slice(&400u32.to_be_bytes());
    aiff.extend_from_slice(&16u16.to_be_bytes());
    aiff.extend_from_slice(&[0x40, 0x0c, 0xfa, 0, 0, 0, 0, 0, 0, 0]);
    aiff.extend_from_slice(b"SSND");
    aiff.extend_from_slice(&(8u32 + 800).to_be_bytes());
    aiff.extend_from_slice(&[0; 8]);
    aiff.extend((0..800).map(|i| (i * 7) as u8));
    audio_seeds.push(aiff);
    // An M4A (AAC in MP4, its moov and sample tables in the first 1 KB), whole: symphonia reads
    // no MP4 without its whole mdat.
    let m4a = std::fs::read(repo.join("tests/fixtures/melody_aac.m4a")).unwrap();
    audio_seeds.push(m4a.clone());
    let config_seeds = vec![
        hark::config::Config::defaults_toml().into_bytes(),
        b"[server]\nlisten = [\"unix:/tmp/x.sock\"]\nmax_jobs = 2\nsocket_mode = \"660\"\n\
          [transcribe]\nmodel = \"base\"\nlanguage = \"auto\"\n[pipeline.overflow.vad]\n\
          mode = \"catch-up\"\nmax_lag_ms = 200\n"
            .to_vec(),
    ];
    let requests = vec![
        pb::TranscribeRequest {
            audio: flac[..2048].to_vec(),
            language: "auto".into(),
            prompt: "Bess".into(),
            beam_size: 5,
            raw: Some(pb::AudioConfig {
                sample_rate: 16_000,
                channels: 1,
                encoding: 1,
                kinds: vec![1, 4],
            }),
            ..Default::default()
        }
        .encode_to_vec(),
        pb::SearchRequest {
            query: "ask not -country".into(),
            limit: 10,
            context: 2,
            ..Default::default()
        }
        .encode_to_vec(),
        pb::AudioChunk {
            payload: Some(pb::audio_chunk::Payload::Data(vec![1, 2, 3, 4])),
        }
        .encode_to_vec(),
        pb::SubscribeRequest {
            kinds: vec![1, 2, 3],
        }
        .encode_to_vec(),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tallies = Vec::new();
    tallies.push(run(
        "header::inspect (WAV/FLAC/any)",
        500_000 * scale,
        &audio_seeds,
        64,
        &mut rng,
        &|b| {
            hark::audio::header::inspect(b)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    ));
    let upload = |b: &[u8]| {
        let mut u = hark::audio::file::Upload16k::from_file_bytes(b.to_vec(), 60.0)
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for _ in 0..8 {
            if !u.read(&mut out).map_err(|e| e.to_string())? {
                break;
            }
        }
        Ok(())
    };
    tallies.push(run(
        "upload decode (header + symphonia + resample)",
        60_000 * scale,
        &audio_seeds,
        64,
        &mut rng,
        &upload,
    ));
    tallies.push(run(
        "upload decode, M4A (mutations over its atom tree)",
        20_000 * scale,
        &[m4a],
        1100,
        &mut rng,
        &upload,
    ));
    tallies.push(run(
        "config parse + validate",
        150_000 * scale,
        &config_seeds,
        4096,
        &mut rng,
        &|b| {
            let text = std::str::from_utf8(b).map_err(|e| e.to_string())?;
            let cfg = hark::config::Config::parse(text, std::path::Path::new("fuzz.toml"))
                .map_err(|e| e.to_string())?;
            cfg.validate().map_err(|e| e.to_string())
        },
    ));
    tallies.push(run(
        "API request messages (prost decode, every request type)",
        400_000 * scale,
        &requests,
        64,
        &mut rng,
        &|b| {
            let _ = pb::TranscribeRequest::decode(b);
            let _ = pb::SearchRequest::decode(b);
            let _ = pb::AudioChunk::decode(b);
            let _ = pb::SubscribeRequest::decode(b);
            let _ = pb::ClassifyRequest::decode(b);
            if let Ok(r) = pb::SubscribeRequest::decode(b) {
                let _ = hark::api::convert::KindFilter::from_pb(&r.kinds);
            }
            Ok(())
        },
    ));
    println!("| target | inputs | accepted | decoder panics caught inside | panics | s |");
    println!("|---|---|---|---|---|---|");
    let mut total = 0;
    let mut panics = 0;
    for t in &tallies {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} |",
            t.name, t.inputs, t.ok, t.caught_inside, t.panics, t.secs
        );
        total += t.inputs;
        panics += t.panics;
    }
    println!("\n{total} inputs, {panics} panics");
    if panics > 0 {
        std::process::exit(1);
    }
}
