//! Music: notes from audio (a monophonic pitch tracker and the Basic Pitch polyphonic network's
//! decoding), the note metrics used to judge them, Standard MIDI Files, and a small synthesiser
//! that plays notes back (forwards or reversed).
//!
//! Everything here works on whole buffers or explicit streaming state and knows nothing of
//! threads, the event bus or gRPC: the `notes` stage and the TranscribeNotes RPC drive it.

pub mod poly;

/// One transcribed (or reference) note. Times are seconds from the start of the audio.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Note {
    /// MIDI note number (60 = middle C, 69 = A4 = 440 Hz).
    pub midi: u8,
    /// Mean deviation of the sung/played pitch from `midi`, in cents (-50..50); 0 when unknown.
    #[serde(default)]
    pub cents: f32,
    pub start: f64,
    pub end: f64,
    /// MIDI velocity (1..127).
    pub velocity: u8,
    /// How sure the transcriber is (0..1); 1 for reference notes.
    #[serde(default = "one")]
    pub confidence: f32,
}

fn one() -> f32 {
    1.0
}

impl Note {
    /// The note's pitch in Hz, including its cents offset.
    pub fn hz(&self) -> f64 {
        midi_to_hz(f64::from(self.midi) + f64::from(self.cents) / 100.0)
    }

    pub fn duration(&self) -> f64 {
        self.end - self.start
    }
}

/// Frequency of a (fractional) MIDI note number, A4 = 440 Hz.
pub fn midi_to_hz(midi: f64) -> f64 {
    440.0 * 2f64.powf((midi - 69.0) / 12.0)
}

/// Fractional MIDI note number of a frequency (A4 = 440 Hz).
pub fn hz_to_midi(hz: f64) -> f64 {
    69.0 + 12.0 * (hz / 440.0).log2()
}

/// Which transcriber to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One note at a time (voice, whistling, a solo instrument): the pitch tracker.
    #[default]
    Mono,
    /// Chords and piano: the Basic Pitch network.
    Poly,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midi_and_hz_agree() {
        assert!((midi_to_hz(69.0) - 440.0).abs() < 1e-9);
        assert!((hz_to_midi(261.625_565) - 60.0).abs() < 1e-5);
        let n = Note {
            midi: 69,
            cents: 100.0,
            start: 0.0,
            end: 1.0,
            velocity: 80,
            confidence: 1.0,
        };
        assert!((n.hz() - midi_to_hz(70.0)).abs() < 1e-9);
    }
}
