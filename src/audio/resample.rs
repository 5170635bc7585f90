//! Down-mix to mono and resample to the 16 kHz stream rate (rubato), off the real-time thread.
//!
//! The converter removes the resampler's group delay, so output sample `n` corresponds to input
//! time `n / 16000` s: timestamps downstream stay aligned with the source.

use rubato::{FftFixedIn, Resampler as _};

use super::{Format, SourceError};
use crate::events::STREAM_RATE;

/// Input frames per resampler call. About 20 ms at 48 kHz: small latency, efficient FFTs.
const CHUNK_IN: usize = 1024;

/// Largest magnitude passed to the resampler (full scale is 1.0).
const MAX_SAMPLE: f32 = 8.0;

/// A sample the FFT resampler can take: non-finite values become silence and finite ones are
/// clipped (values near f32::MAX overflowed its FFT into NaN and it panicked; the fuzz bench
/// found it through a float WAV).
fn sane(v: f32) -> f32 {
    if v.is_finite() {
        v.clamp(-MAX_SAMPLE, MAX_SAMPLE)
    } else {
        0.0
    }
}

/// Converts interleaved audio of any rate and channel count into 16 kHz mono.
pub struct ToMono16k {
    channels: usize,
    /// Partial interleaved frame carried between calls.
    carry: Vec<f32>,
    resampler: Option<Resampling>,
    frames_in: u64,
    frames_out: u64,
    rate_in: u32,
}

struct Resampling {
    inner: FftFixedIn<f32>,
    pending: Vec<f32>,
    out: Vec<Vec<f32>>,
    /// Leading output samples still to discard (group delay).
    skip: usize,
}

impl std::fmt::Debug for ToMono16k {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToMono16k")
            .field("channels", &self.channels)
            .field("rate_in", &self.rate_in)
            .finish_non_exhaustive()
    }
}

impl ToMono16k {
    pub fn new(format: Format) -> Result<Self, SourceError> {
        let format = format.validate()?;
        let resampler = if format.rate == STREAM_RATE {
            None
        } else {
            let inner =
                FftFixedIn::<f32>::new(format.rate as usize, STREAM_RATE as usize, CHUNK_IN, 2, 1)
                    .map_err(|e| SourceError::Format(format!("resampler: {e}")))?;
            let out = vec![vec![0f32; inner.output_frames_max()]];
            Some(Resampling {
                skip: inner.output_delay(),
                pending: Vec::with_capacity(inner.input_frames_max()),
                inner,
                out,
            })
        };
        Ok(Self {
            channels: usize::from(format.channels),
            carry: Vec::with_capacity(usize::from(format.channels)),
            resampler,
            frames_in: 0,
            frames_out: 0,
            rate_in: format.rate,
        })
    }

    /// Appends the 16 kHz mono version of `interleaved` to `out`.
    pub fn process(&mut self, mut interleaved: &[f32], out: &mut Vec<f32>) {
        // Complete a frame split across calls.
        if !self.carry.is_empty() {
            let need = self.channels - self.carry.len();
            let take = need.min(interleaved.len());
            self.carry.extend_from_slice(&interleaved[..take]);
            interleaved = &interleaved[take..];
            if self.carry.len() < self.channels {
                return;
            }
            let frame = std::mem::take(&mut self.carry);
            self.push_frames(&frame, out);
            self.carry = frame;
            self.carry.clear();
        }
        let whole = interleaved.len() / self.channels * self.channels;
        self.push_frames(&interleaved[..whole], out);
        self.carry.extend_from_slice(&interleaved[whole..]);
    }

    fn push_frames(&mut self, frames: &[f32], out: &mut Vec<f32>) {
        let ch = self.channels;
        self.frames_in += (frames.len() / ch) as u64;
        let mono = frames.chunks_exact(ch).map(|f| {
            if ch == 1 {
                sane(f[0])
            } else {
                f.iter().map(|&v| sane(v)).sum::<f32>() / ch as f32
            }
        });
        match &mut self.resampler {
            None => {
                let before = out.len();
                out.extend(mono);
                self.frames_out += (out.len() - before) as u64;
            }
            Some(r) => {
                for s in mono {
                    r.pending.push(s);
                    if r.pending.len() == r.inner.input_frames_next() {
                        let n = run_chunk(r, false, out);
                        self.frames_out += n as u64;
                    }
                }
            }
        }
    }

    /// Emits what is still buffered (end of a segment). The total output length matches the
    /// input duration.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        self.carry.clear();
        let expected = self.frames_in * u64::from(STREAM_RATE) / u64::from(self.rate_in);
        let Some(r) = &mut self.resampler else {
            return;
        };
        // Feed zeros until the delayed tail has come out.
        let mut guard = 0;
        while self.frames_out < expected && guard < 16 {
            let before = out.len();
            run_chunk(r, true, out);
            let got = (out.len() - before) as u64;
            let keep = got.min(expected - self.frames_out);
            out.truncate(before + keep as usize);
            self.frames_out += keep;
            guard += 1;
        }
    }
}

/// Runs one resampler chunk from `r.pending` (zero-padded when `partial`), appending output.
fn run_chunk(r: &mut Resampling, partial: bool, out: &mut Vec<f32>) -> usize {
    let result = if partial {
        // rubato treats an empty slice as missing input; `None` means "all zeros".
        let input = [&r.pending[..]];
        let input = (!r.pending.is_empty()).then_some(&input[..]);
        r.inner.process_partial_into_buffer(input, &mut r.out, None)
    } else {
        r.inner
            .process_into_buffer(&[&r.pending[..]], &mut r.out, None)
    };
    r.pending.clear();
    let Ok((_, produced)) = result else {
        // Only possible with mismatched buffer sizes, which this module controls.
        return 0;
    };
    let skip = r.skip.min(produced);
    r.skip -= skip;
    out.extend_from_slice(&r.out[0][skip..produced]);
    produced - skip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, channels: u16, secs: f32, hz: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .flat_map(|i| {
                let s = (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5;
                std::iter::repeat_n(s, usize::from(channels))
            })
            .collect()
    }

    #[test]
    fn resampled_length_and_phase_match_the_input_duration() {
        for (rate, ch) in [(48_000, 2), (44_100, 1), (8_000, 1), (16_000, 3)] {
            let input = tone(rate, ch, 1.0, 440.0);
            let mut conv = ToMono16k::new(Format { rate, channels: ch }).unwrap();
            let mut out = Vec::new();
            // Odd-sized pushes exercise the frame carry.
            for chunk in input.chunks(777) {
                conv.process(chunk, &mut out);
            }
            conv.flush(&mut out);
            assert_eq!(out.len(), 16_000, "rate {rate} ch {ch}");
            // Delay compensation: the output follows the same sine without a time shift.
            let reference = tone(16_000, 1, 1.0, 440.0);
            let err: f32 = out[2000..14000]
                .iter()
                .zip(&reference[2000..14000])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            // A one-sample shift would give 0.086 here; the FFT resampler itself leaves ~0.03.
            assert!(err < 0.05, "rate {rate}: max error {err}");
        }
    }
}
