//! Note stage: the live note transcriber. Mono mode runs the pYIN tracker on every 10 ms frame
//! (cheap, always-on capable); poly mode runs Basic Pitch on overlapping windows. A `note` event
//! is published when a note ends; with `emit_pitch`, a `pitch` event per decided frame too.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    events::{EventKind, NoteEvent, STREAM_RATE},
    nn::{basic_pitch::BasicPitch, onset::OnsetModel, sound::SoundClassifier},
    notes::{
        Mode, Note,
        poly::{PolyParams, PolyTranscriber},
        track::{MonoModels, MonoParams, MonoTracker},
    },
    pipeline::{Emitted, Stage, StageError, Window, WindowSpec},
};

use super::StageContext;

/// Note transcription settings (`[notes]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotesConfig {
    /// Run the note stage (off by default; `harkd run --notes` turns it on for one run).
    pub enabled: bool,
    /// `mono`: one note at a time (voice, whistling, a solo instrument), the pYIN tracker, a
    /// few percent of a core. `poly`: chords and piano, the Basic Pitch network (model
    /// `basic-pitch`, bundled), notes arrive up to ~5 s late.
    pub mode: Mode,
    /// Also publish a `pitch` event per 10 ms frame (F0 and voicing), e.g. for karaoke.
    pub emit_pitch: bool,
    /// Mono: notes shorter than this are dropped (milliseconds, 20..=2000) ...
    pub min_note_ms: u32,
    /// ... except notes the onset detector marks at both ends with a steady pitch (fast runs,
    /// ornaments), kept down to this length (milliseconds, 20..=2000; at or above
    /// `min_note_ms` the exception is off; no effect without the detector).
    pub min_struck_note_ms: u32,
    /// Mono: the note-onset detector notes are cut at (a model name in the models
    /// directories, or a path; default the bundled `note-onset`, trained with `hark-train
    /// notes-onset`). Empty: cut by the spectral-flux and level rules alone (no model). The
    /// detector was trained on instruments (rendered instruments 0.906 note F1 with it, 0.845
    /// without) and fires on a singer's consonants: see `voice_model`.
    pub onset_model: String,
    /// Mono, with the detector: a sound model with YAMNet's AudioSet classifier (a name or a
    /// path; default the bundled `sound-us8k`). Where it hears a voice singing or saying words
    /// (in at least half of the last four 0.96 s patches), notes are cut by the rules alone,
    /// which suit a voice, a sung note starts at its vowel and a glide between two sung notes
    /// is no note (under 200 ms, begun at a pitch change); elsewhere the detector cuts them
    /// too, and a short note between quick pitch steps is kept. Real singing 0.722 note F1
    /// with it, 0.677 without (the rules alone 0.687); instruments 0.001-0.008 above the
    /// detector alone. It costs about 1 % of a core (the tracker 1.7 %
    /// with it, 0.6 % without). Empty: the detector everywhere.
    pub voice_model: String,
    /// Mono: a learned pitch network (a name or a path; default the bundled `swift-f0`,
    /// converted from the swift-f0 package) whose pitch posterior reweights the tracker's F0
    /// candidates: it keeps the pitch where YIN takes a harmonic or noise fills its troughs
    /// (live: singing in a bright room 0.688 -> 0.723 note F1, rendered instruments in
    /// ambient noise at 10 dB 0.731 -> 0.742). Live it takes the tracker from 1.7 % to 4.7 % of
    /// a core and holds a frame back up to 48 ms until its posterior is computed (notes still
    /// go out 270 ms after their end at p90). Empty: pYIN alone.
    pub f0_model: String,
}

impl Default for NotesConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: Mode::Mono,
            emit_pitch: false,
            min_note_ms: (MonoParams::default().segment.min_note_s * 1000.0).round() as u32,
            min_struck_note_ms: (MonoParams::default().segment.min_onset_note_s * 1000.0).round()
                as u32,
            onset_model: crate::notes::ONSET_MODEL.into(),
            voice_model: crate::notes::voice::VOICE_MODEL.into(),
            f0_model: crate::notes::F0_MODEL.into(),
        }
    }
}

impl NotesConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(20..=2000).contains(&self.min_note_ms) {
            return Err("notes.min_note_ms must be within 20..=2000".into());
        }
        if !(20..=2000).contains(&self.min_struck_note_ms) {
            return Err("notes.min_struck_note_ms must be within 20..=2000".into());
        }
        Ok(())
    }

    /// The tracker settings this config asks for.
    pub fn mono_params(&self) -> MonoParams {
        let mut p = MonoParams::default();
        p.segment.min_note_s = f64::from(self.min_note_ms) / 1000.0;
        p.segment.min_onset_note_s =
            f64::from(self.min_struck_note_ms.min(self.min_note_ms)) / 1000.0;
        p
    }

    /// The networks the mono tracker runs with (each loaded once per process).
    pub fn mono_models(
        &self,
        resources: &crate::stages::StageResources,
    ) -> Result<MonoModels, String> {
        let onsets = self.onset_model(resources)?;
        let voice = match onsets {
            Some(_) => self.voice_model(resources)?,
            None => None,
        };
        let f0 = named_model(
            resources,
            ("f0", &self.f0_model, crate::notes::F0_MODEL),
            |n| crate::notes::load_f0_model(n, None),
            "Note pitch: pYIN steered by the learned pitch network.",
            "Pitch network not found; the note tracker runs pYIN alone.",
        )?;
        Ok(MonoModels { onsets, voice, f0 })
    }

    /// The voice model this config names (None: none named, or the default one missing).
    fn voice_model(
        &self,
        resources: &crate::stages::StageResources,
    ) -> Result<Option<Arc<SoundClassifier>>, String> {
        named_model(
            resources,
            ("voice", &self.voice_model, crate::notes::voice::VOICE_MODEL),
            crate::notes::voice::load_voice_model,
            "Note onsets: the rules alone where a voice sings.",
            "Voice model not found; the note-onset detector cuts every passage.",
        )
    }

    /// The onset detector this config names, loaded once per process (None: the rules).
    fn onset_model(
        &self,
        resources: &crate::stages::StageResources,
    ) -> Result<Option<Arc<OnsetModel>>, String> {
        named_model(
            resources,
            ("onset", &self.onset_model, crate::notes::ONSET_MODEL),
            |n| crate::notes::load_onset_model(n, None),
            "Note onsets: the detector and the flux and level rules.",
            "Note-onset detector not found; cutting notes by the flux and level rules.",
        )
    }
}

/// A model a `[notes]` field names, loaded once per process under `kind:name`. An empty name
/// is none. The default model missing (a models directory without the bundled models) is
/// none too, with a warning, so notes still work; a model the user named must exist.
fn named_model<T: Send + Sync + 'static>(
    resources: &crate::stages::StageResources,
    (kind, name, default): (&str, &str, &str),
    load: impl FnOnce(&str) -> Result<T, crate::notes::NotesError>,
    loaded: &'static str,
    missing: &'static str,
) -> Result<Option<Arc<T>>, String> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    match resources.shared(&format!("{kind}:{name}"), || load(name)) {
        Ok(m) => {
            tracing::info!(model = %name, "{loaded}");
            Ok(Some(m))
        }
        Err(e) if name == default => {
            tracing::warn!(error = %e, "{missing}");
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Scientific pitch name of a MIDI note ("C4" = 60).
pub fn note_name(midi: u8) -> String {
    const NAMES: [&str; 12] = [
        "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
    ];
    format!(
        "{}{}",
        NAMES[usize::from(midi % 12)],
        i32::from(midi / 12) - 1
    )
}

/// A note at `origin` samples into the stream as its event.
pub fn note_event(n: &Note, origin: u64) -> NoteEvent {
    let at = |s: f64| origin + (s.max(0.0) * f64::from(STREAM_RATE)).round() as u64;
    NoteEvent {
        midi: u32::from(n.midi),
        name: note_name(n.midi),
        cents: n.cents,
        start_sample: at(n.start),
        end_sample: at(n.end),
        velocity: u32::from(n.velocity),
        confidence: n.confidence,
    }
}

enum Engine {
    Mono(Box<MonoTracker>),
    Poly {
        model: Arc<BasicPitch>,
        t: Option<Box<PolyTranscriber>>,
    },
}

pub struct NotesStage {
    cfg: NotesConfig,
    engine: Engine,
    /// Stream sample at which the current tracker's time 0 lies.
    origin: Option<u64>,
}

impl std::fmt::Debug for NotesStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotesStage")
            .field("cfg", &self.cfg)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

pub fn enabled(cx: &StageContext<'_>) -> bool {
    cx.config.notes.enabled
}

pub fn build(cx: &StageContext<'_>) -> Result<Box<dyn Stage>, String> {
    let cfg = cx.config.notes.clone();
    let engine = match cfg.mode {
        Mode::Mono => {
            let models = cfg.mono_models(cx.resources)?;
            Engine::Mono(Box::new(MonoTracker::build(cfg.mono_params(), models)))
        }
        Mode::Poly => {
            let model = cx
                .resources
                .shared(crate::notes::BASIC_PITCH, || {
                    crate::notes::load_basic_pitch(None)
                })
                .map_err(|e| e.to_string())?;
            Engine::Poly { model, t: None }
        }
    };
    Ok(Box::new(NotesStage {
        cfg,
        engine,
        origin: None,
    }))
}

impl NotesStage {
    fn emit_notes(&self, notes: Vec<Note>, at: u64, out: &mut Vec<Emitted>) {
        let origin = self.origin.unwrap_or(0);
        for n in notes {
            let e = note_event(&n, origin);
            // Published no earlier than the note's end (a poly window can finish early).
            out.push((at.max(e.end_sample), EventKind::Note(e)));
        }
    }

    fn step(&mut self, samples: &[f32], at: u64, out: &mut Vec<Emitted>) -> Result<(), StageError> {
        match &mut self.engine {
            Engine::Mono(t) => {
                let r = t.push(samples);
                let hop = t.frame_s();
                if self.cfg.emit_pitch {
                    let origin = self.origin.unwrap_or(0);
                    for f in &r.frames {
                        let centre =
                            origin + (f.index as f64 * hop * f64::from(STREAM_RATE)) as u64;
                        out.push((
                            at,
                            EventKind::Pitch {
                                sample_at: centre,
                                hz: f.hz,
                                voiced: f.voiced,
                                p: f.p_voiced,
                            },
                        ));
                    }
                }
                self.emit_notes(r.notes, at, out);
            }
            Engine::Poly { model, t } => {
                if t.is_none() {
                    *t = Some(Box::new(
                        PolyTranscriber::new(model.clone(), PolyParams::default())
                            .map_err(|e| StageError::Failed(e.to_string()))?,
                    ));
                }
                let notes = t
                    .as_mut()
                    .expect("transcriber")
                    .push(samples)
                    .map_err(|e| StageError::Failed(e.to_string()))?;
                self.emit_notes(notes, at, out);
            }
        }
        Ok(())
    }

    /// Ends the current tracker (stream end or a gap) and emits what it still holds.
    fn close(&mut self, at: u64, out: &mut Vec<Emitted>) {
        let notes = match &mut self.engine {
            Engine::Mono(t) => {
                let notes = t.finish().notes;
                t.restart();
                notes
            }
            Engine::Poly { t, .. } => match t.take().map(|t| t.finish()) {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Polyphonic notes at the end were lost.");
                    Vec::new()
                }
                None => Vec::new(),
            },
        };
        self.emit_notes(notes, at, out);
        self.origin = None;
    }
}

impl Stage for NotesStage {
    fn name(&self) -> &'static str {
        "notes"
    }

    fn window(&self) -> WindowSpec {
        // 10 ms: the tracker's hop, so notes and pitch frames leave as soon as they are decided.
        let len = (STREAM_RATE / 100) as usize;
        WindowSpec { len, hop: len }
    }

    fn process(&mut self, w: &Window<'_>, out: &mut Vec<Emitted>) -> Result<(), StageError> {
        self.origin.get_or_insert(w.start);
        let at = w.start + w.samples.len() as u64;
        self.step(w.samples, at, out)
    }

    fn discontinuity(&mut self, at: u64, out: &mut Vec<Emitted>) {
        // Notes cannot span dropped audio: close them where the audio stopped.
        self.close(at, out);
    }

    fn finish(&mut self, end: u64, out: &mut Vec<Emitted>) {
        self.close(end, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_scientific_pitch() {
        assert_eq!(note_name(60), "C4");
        assert_eq!(note_name(69), "A4");
        assert_eq!(note_name(61), "C#4");
        assert_eq!(note_name(21), "A0");
        assert_eq!(note_name(0), "C-1");
    }

    #[test]
    fn a_tone_in_10ms_windows_gives_one_note_at_its_stream_time() {
        let mut st = build(&StageContext {
            config: &crate::config::Config {
                notes: NotesConfig {
                    enabled: true,
                    emit_pitch: true,
                    ..NotesConfig::default()
                },
                ..Default::default()
            },
            resources: &super::super::StageResources::default(),
        })
        .unwrap();
        // 0.5 s of A4 after 0.3 s of silence, starting 1 s into the stream.
        let mut x = vec![0.0f32; 4800];
        x.extend(
            (0..8000)
                .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin()),
        );
        x.extend(vec![0.0f32; 8000]);
        let mut out = Vec::new();
        for (k, c) in x.chunks(160).enumerate() {
            let w = Window {
                samples: c,
                start: 16_000 + k as u64 * 160,
            };
            st.process(&w, &mut out).unwrap();
        }
        st.finish(16_000 + x.len() as u64, &mut out);
        let notes: Vec<_> = out
            .iter()
            .filter_map(|(at, k)| match k {
                EventKind::Note(n) => Some((*at, n.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(notes.len(), 1, "{notes:?}");
        let (at, n) = &notes[0];
        assert_eq!((n.midi, n.name.as_str()), (69, "A4"));
        assert!((n.start_sample as i64 - 20_800).abs() < 800, "{n:?}");
        assert!((n.end_sample as i64 - 28_800).abs() < 800, "{n:?}");
        // Published within 300 ms of the note's end, never before it.
        assert!(
            *at >= n.end_sample && *at - n.end_sample < 4800,
            "at {at}, {n:?}"
        );
        assert!(
            out.iter()
                .any(|(_, k)| matches!(k, EventKind::Pitch { voiced: true, .. }))
        );
    }
}
