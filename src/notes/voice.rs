//! Voice or instrument: which onset rules a passage gets.
//!
//! The note-onset detector was trained on rendered instruments. On real singing it fires on
//! consonants, and sung notes are annotated where the vowel's pitch starts, so it costs the sung
//! tune note F1 (SSVD v2.0 test, when the gate was added: 0.681 with it, 0.703 with the flux and
//! level rules alone), while on instruments it is worth 0.06 (dev renders 0.906 against 0.845). The
//! tracker cannot tell the two apart from pitch frames; YAMNet's AudioSet classifier can, because
//! AudioSet labels speech, singing and instruments. Sight-singing (solfege syllables) scores as
//! *Singing* or *Speech*, so both count as a voice.
//!
//! [`VoiceGate`] runs the trunk and AudioSet classifier of the bundled sound model
//! (`sound-us8k`, the weights the sound stage uses) on 0.96 s log-mel patches, one every
//! 0.96 s, and keeps a running decision; where it says "voice", the segmenter cuts by the rules
//! alone, starts a note at its vowel (`VOWEL_DB` in [`super::track`]) and drops a short note
//! begun at a pitch change (`min_sung_change_s`: a glide, not a note). The decision only
//! looks back, so a stream and a whole file give the same notes; the first second of a stream
//! has none yet and keeps the detector. With the gate, SSVD test reads 0.722 (0.708 in
//! `models/note-onset/MODEL_CARD.md`, before the glide rule), and the renders 0.001-0.008
//! above the detector alone: where no voice sings, short notes between quick pitch steps are
//! kept.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::nn::sound::SoundClassifier;

use super::NotesError;

/// The sound model whose AudioSet classifier tells voice from instrument (bundled).
pub const VOICE_MODEL: &str = "sound-us8k";

/// AudioSet classes of an articulated voice, one that sings or says words: Speech, Child
/// speech, Conversation, Narration (0-3; solfege sounds like speech to YAMNet), Singing,
/// Yodeling, Child singing, Rapping (24, 26, 29, 31).
const VOICE_CLASSES: [usize; 8] = [0, 1, 2, 3, 24, 26, 29, 31];

/// Wordless voices: Choir, Chant, Mantra, Synthetic singing, Humming (25, 27, 28, 30, 32). A
/// vowel held without consonants gives the detector nothing to misread: it serves them as it
/// serves instruments (rendered choir and "ooh" patches lost 0.02-0.14 note F1 each when
/// the gate counted them as voices).
const WORDLESS_VOICE_CLASSES: [usize; 5] = [25, 27, 28, 30, 32];

/// AudioSet's "Music" (132) and its "Musical instrument" subtree in YAMNet's class map
/// (133 Musical instrument .. 194 Harp).
const MUSIC_CLASSES: std::ops::Range<usize> = 132..195;

/// A patch is an articulated voice when its strongest voice class reaches this and beats every
/// music and wordless-voice class. Chosen on SSVD v2.0 train/valid (real singing) and the
/// development renders, not the test songs: the gate then holds on 85 % of the sung passages
/// and on under 1 % of the rendered instruments', choirs' and "ooh" voices' (6-9 % of the
/// passages in 3 of the 60 files).
const VOICE_MIN_P: f32 = 0.05;

/// Patches the decision looks back over: a passage is a voice while at least half of the
/// last 4 (3.8 s) were. One odd patch (a breath, a held vowel YAMNet calls an organ) does not
/// flip the rules in the middle of a phrase.
const HISTORY: usize = 4;

/// YAMNet patches are 0.96 s with a 0.48 s hop; the gate takes every other one (a patch every
/// 0.96 s, none overlapping), which halves its cost and still decides within about a second.
const PATCH_STRIDE: usize = 2;

/// Patches scored per network call.
const BATCH: usize = 16;

/// The running voice/instrument decision of a stream of 16 kHz mono samples.
#[derive(Debug)]
pub struct VoiceGate {
    model: Arc<SoundClassifier>,
    /// Samples not yet in a scored patch, from stream sample `buf_start`.
    buf: Vec<f32>,
    buf_start: u64,
    recent: VecDeque<bool>,
}

impl VoiceGate {
    /// A gate on `model`, which needs YAMNet's AudioSet classifier and a 16 kHz front end.
    pub fn new(model: Arc<SoundClassifier>) -> Result<Self, NotesError> {
        if model.config.frontend.sample_rate != 16_000 {
            return Err(NotesError::Model(format!(
                "voice model: front end at {} Hz, the tracker runs at 16000 Hz",
                model.config.frontend.sample_rate
            )));
        }
        if model.audioset_probs(&[], 0).ok().flatten().is_none() {
            return Err(NotesError::Model(
                "voice model: it has no AudioSet classifier (a YAMNet-trunk sound model \
                 trained by hark-train sound keeps it)"
                    .into(),
            ));
        }
        Ok(Self {
            model,
            buf: Vec::new(),
            buf_start: 0,
            recent: VecDeque::with_capacity(HISTORY + 1),
        })
    }

    /// Feeds samples; returns, for each patch completed, the stream sample where it ends
    /// (from which its decision holds) and whether the passage is a voice from there on.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<(u64, bool)>, NotesError> {
        self.buf.extend_from_slice(samples);
        let p = self.model.frontend().params();
        let (need, hop) = (p.patch_samples(), p.patch_hop_samples() * PATCH_STRIDE);
        let per = p.patch_frames * p.n_mels;
        let mut out = Vec::new();
        let mut from = 0;
        // A whole file comes in one push: its patches are made and scored a batch at a time,
        // so memory stays a few MB however long the upload.
        while self.buf.len() - from >= need {
            let mut patches = Vec::with_capacity(BATCH * per);
            let mut ends = Vec::with_capacity(BATCH);
            while ends.len() < BATCH && self.buf.len() - from >= need {
                let (patch, _) = self.model.frontend().patches(&self.buf[from..from + need]);
                patches.extend_from_slice(&patch[..per]);
                ends.push(self.buf_start + (from + need) as u64);
                from += hop;
            }
            let probs = self
                .model
                .audioset_probs(&patches, ends.len())
                .map_err(|e| NotesError::Model(format!("voice model: {e}")))?
                .unwrap_or_default();
            let classes = (probs.len() / ends.len()).max(1);
            for (row, end) in probs.chunks(classes).zip(ends) {
                self.recent.push_back(is_voice(row));
                if self.recent.len() > HISTORY {
                    self.recent.pop_front();
                }
                let voiced = self.recent.iter().filter(|&&v| v).count();
                out.push((end, 2 * voiced >= self.recent.len() && voiced > 0));
            }
        }
        self.buf.drain(..from);
        self.buf_start += from as u64;
        Ok(out)
    }
}

/// Whether one patch's AudioSet probabilities say "a voice": see [`VOICE_MIN_P`].
fn is_voice(p: &[f32]) -> bool {
    let top = |classes: &mut dyn Iterator<Item = usize>| {
        classes
            .filter_map(|c| p.get(c).copied())
            .fold(0.0f32, f32::max)
    };
    let voice = top(&mut VOICE_CLASSES.iter().copied());
    let other = top(&mut MUSIC_CLASSES.chain(WORDLESS_VOICE_CLASSES));
    voice >= VOICE_MIN_P && voice > other
}

/// Loads the sound model the gate runs (a name in the models directories, or a path).
pub fn load_voice_model(name: &str) -> Result<SoundClassifier, NotesError> {
    let dir = super::model_dir("sound", name, None)?;
    SoundClassifier::load(&dir).map_err(|e| NotesError::Model(format!("{}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> VoiceGate {
        let m = load_voice_model(VOICE_MODEL).expect("the bundled sound model");
        VoiceGate::new(Arc::new(m)).unwrap()
    }

    fn fixture(name: &str) -> Vec<f32> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        crate::audio::file::decode_file_16k(&p).unwrap()
    }

    #[test]
    fn a_voice_is_a_voice_and_a_synthesised_tune_is_not() {
        let speech = fixture("jfk.flac");
        let d = gate().push(&speech).unwrap();
        assert!(d.len() >= 8, "{} patches in 11 s", d.len());
        assert!(
            d.iter().filter(|(_, v)| *v).count() * 4 >= d.len() * 3,
            "{d:?}"
        );

        // A plucked tune from the additive synth: no voice anywhere.
        let notes: Vec<crate::notes::Note> = (0..16)
            .map(|i| crate::notes::Note {
                midi: [60, 64, 67, 72][i % 4],
                cents: 0.0,
                start: i as f64 * 0.5,
                end: i as f64 * 0.5 + 0.45,
                velocity: 90,
                confidence: 1.0,
            })
            .collect();
        let tune = crate::notes::synth::render(&notes, 16_000, &Default::default());
        let d = gate().push(&tune).unwrap();
        assert!(!d.is_empty());
        assert!(d.iter().all(|(_, v)| !v), "{d:?}");
    }

    #[test]
    fn a_tracker_with_the_gate_streams_the_notes_it_gives_a_whole_file() {
        use crate::notes::track::{MonoModels, MonoParams, MonoTracker, transcribe_mono};
        let onsets = crate::notes::load_onset_model(crate::notes::ONSET_MODEL, None).unwrap();
        let models = MonoModels {
            onsets: Some(Arc::new(onsets)),
            voice: Some(Arc::new(load_voice_model(VOICE_MODEL).unwrap())),
            f0: None,
        };
        let x = fixture("jfk.flac");
        let whole = transcribe_mono(&x, &MonoParams::default(), models.clone());
        assert!(!whole.is_empty());
        let mut t = MonoTracker::build(MonoParams::default(), models);
        let mut streamed = Vec::new();
        for c in x.chunks(160) {
            streamed.extend(t.push(c).notes);
        }
        streamed.extend(t.finish().notes);
        assert_eq!(whole, streamed);
    }

    #[test]
    fn decisions_do_not_depend_on_how_the_audio_is_chunked() {
        let speech = fixture("jfk.flac");
        let whole = gate().push(&speech).unwrap();
        let mut g = gate();
        let mut chunked = Vec::new();
        for c in speech.chunks(160) {
            chunked.extend(g.push(c).unwrap());
        }
        assert_eq!(whole, chunked);
        // Patch ends are 0.96 s apart, the first after one patch (0.975 s).
        assert_eq!(whole[0].0, 15_600);
        assert_eq!(whole[1].0 - whole[0].0, 15_360);
    }
}
