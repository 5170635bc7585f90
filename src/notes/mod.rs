//! Music: notes from audio (a monophonic pitch tracker and the Basic Pitch polyphonic network's
//! decoding), the note metrics used to judge them, Standard MIDI Files, and a small synthesiser
//! that plays notes back (forwards or reversed).
//!
//! Everything here works on whole buffers or explicit streaming state and knows nothing of
//! threads, the event bus or gRPC: the `notes` stage and the TranscribeNotes RPC drive it.

pub mod eval;
pub mod io;
pub mod midi;
pub mod pitch;
pub mod poly;
pub mod synth;
pub mod track;
pub mod voice;

use std::path::{Path, PathBuf};

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

/// Pitch class (C = 0 ... B = 11) of the nearest note to a fractional MIDI note number.
pub fn pitch_class(midi: f64) -> usize {
    (midi.round() as i64).rem_euclid(12) as usize
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

/// Errors of note reading, writing and transcription; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum NotesError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A row of a note table that cannot be read.
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A whole file that is not what its name says (JSON, MIDI, an unknown extension).
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error(transparent)]
    Audio(#[from] crate::audio::SourceError),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Poly(#[from] poly::PolyError),
    #[error("notes model: {0}")]
    Model(String),
}

/// Name of the Basic Pitch model directory (bundled in `models/`).
pub const BASIC_PITCH: &str = "basic-pitch";

/// Loads the Basic Pitch network from the first models directory that has it (`root` or the
/// default models directory, then the bundled models).
pub fn load_basic_pitch(
    root: Option<&Path>,
) -> Result<crate::nn::basic_pitch::BasicPitch, NotesError> {
    let dir = crate::models::find("notes", BASIC_PITCH, root)
        .map_err(|e| NotesError::Model(e.to_string()))?;
    crate::nn::basic_pitch::BasicPitch::load(&dir)
        .map_err(|e| NotesError::Model(format!("{}: {e}", dir.display())))
}

/// Name of the note-onset detector the monophonic transcriber cuts at (bundled in `models/`).
pub const ONSET_MODEL: &str = "note-onset";

/// Loads an onset detector: `name` is a model directory name (found like every model: `root`,
/// the default models directory, then the bundled models) or a path to one.
pub fn load_onset_model(
    name: &str,
    root: Option<&Path>,
) -> Result<crate::nn::onset::OnsetModel, NotesError> {
    load_named(name, root, crate::nn::onset::OnsetModel::load)
}

/// Name of the learned pitch network whose posterior steers the mono tracker (bundled in
/// `models/`, converted by `harkd models import-swift-f0`).
pub const F0_MODEL: &str = "swift-f0";

/// Loads a pitch network: `name` is a model directory name (found like every model) or a path
/// to one.
pub fn load_f0_model(
    name: &str,
    root: Option<&Path>,
) -> Result<crate::nn::swift_f0::SwiftF0, NotesError> {
    load_named(name, root, crate::nn::swift_f0::SwiftF0::load)
}

/// Loads the notes model `name` (a name or a path, see [`model_dir`]) with `load`.
fn load_named<T>(
    name: &str,
    root: Option<&Path>,
    load: impl FnOnce(&Path) -> Result<T, crate::nn::NnError>,
) -> Result<T, NotesError> {
    let dir = model_dir("notes", name, root)?;
    load(&dir).map_err(|e| NotesError::Model(format!("{}: {e}", dir.display())))
}

/// The directory of a model the notes config names: a path to a model directory, or a name
/// found like every model of `kind` (`root`, the default models directory, the bundled ones).
pub(crate) fn model_dir(
    kind: &str,
    name: &str,
    root: Option<&Path>,
) -> Result<PathBuf, NotesError> {
    let as_path = Path::new(name);
    if as_path.join("config.json").is_file() {
        return Ok(as_path.to_path_buf());
    }
    crate::models::find(kind, name, root).map_err(|e| NotesError::Model(e.to_string()))
}

/// A whole-recording transcriber with its networks loaded once: `hark-train eval notes`
/// transcribes many files with one.
#[derive(Debug, Clone)]
pub enum Transcriber {
    Mono(track::MonoModels),
    Poly(std::sync::Arc<crate::nn::basic_pitch::BasicPitch>),
}

impl Transcriber {
    /// Loads what `mode` runs; for mono, the onset detector (`None`: the flux and level rules),
    /// the voice model (`None`: the detector everywhere) and the pitch network (`None`: pYIN
    /// alone), by name or path.
    pub fn load(
        mode: Mode,
        onset_model: Option<&str>,
        voice_model: Option<&str>,
        f0_model: Option<&str>,
    ) -> Result<Self, NotesError> {
        Ok(match mode {
            Mode::Mono => Self::Mono(track::MonoModels {
                onsets: onset_model
                    .map(|n| load_onset_model(n, None).map(std::sync::Arc::new))
                    .transpose()?,
                voice: voice_model
                    .map(|n| voice::load_voice_model(n).map(std::sync::Arc::new))
                    .transpose()?,
                f0: f0_model
                    .map(|n| load_f0_model(n, None).map(std::sync::Arc::new))
                    .transpose()?,
            }),
            Mode::Poly => Self::Poly(std::sync::Arc::new(load_basic_pitch(None)?)),
        })
    }

    /// The notes of 16 kHz mono `samples` and, in mono mode, the pitch frames they were cut
    /// from (none in poly mode), with default settings. `prior`, a learned F0 posterior over
    /// the same samples, steers the mono pitch tracker instead of the loaded pitch network's
    /// (see [`pitch::PitchPrior`]); poly mode has no use for it.
    pub fn transcribe(
        &self,
        samples: &[f32],
        prior: Option<std::sync::Arc<pitch::PitchPrior>>,
    ) -> Result<(Vec<Note>, Vec<pitch::PitchFrame>), NotesError> {
        match self {
            Self::Mono(models) => {
                let out = track::transcribe_mono_frames(
                    samples,
                    &track::MonoParams::default(),
                    models.clone(),
                    prior,
                );
                Ok((out.notes, out.frames))
            }
            Self::Poly(model) => Ok((
                poly::transcribe_poly(samples, model, poly::PolyParams::default())?,
                Vec::new(),
            )),
        }
    }

    /// As [`Self::transcribe`], but mono mode hears the samples as the daemon's note stage
    /// does: streamed in chunks of `chunk` samples, so the pitch network's posterior is the
    /// live one (see [`pitch::LivePrior`]) rather than the whole recording's. Poly mode is the
    /// same either way.
    pub fn transcribe_streamed(
        &self,
        samples: &[f32],
        chunk: usize,
    ) -> Result<(Vec<Note>, Vec<pitch::PitchFrame>), NotesError> {
        match self {
            Self::Mono(models) => {
                let mut t = track::MonoTracker::build(track::MonoParams::default(), models.clone());
                let (mut notes, mut frames) = (Vec::new(), Vec::new());
                let outs = samples
                    .chunks(chunk.max(1))
                    .map(|c| t.push(c))
                    .collect::<Vec<_>>();
                for out in outs.into_iter().chain([t.finish()]) {
                    notes.extend(out.notes);
                    frames.extend(out.frames);
                }
                Ok((notes, frames))
            }
            Self::Poly(_) => self.transcribe(samples, None),
        }
    }
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
