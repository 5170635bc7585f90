//! `hark-train eval notes`: scores note transcription over a directory of audio files against
//! reference note files of the same stem (`x.flac` <-> `x.tsv` / `x.csv` / `x.json` / `x.mid`).
//!
//! Estimates come from [`crate::notes::Transcriber`], or, with `--estimates DIR`, from note
//! files already written by another transcriber (e.g. the basic-pitch Python package), paired by
//! stem the same way (`x_basic_pitch.csv` / `.mid`, as basic-pitch names them, also pair with
//! `x`): that is how the bench compares hark with its peers on the same references.
//! A reference without an estimate file is scored against no notes (and listed).
//!
//! With `--room FILE` every file is first convolved with a recorded room impulse response
//! ([`super::data::room_response`]), and with `--noise PATH --snr DB` real background noise is
//! mixed in after it, to measure the transcriber away from a dry, quiet recording.
//!
//! Scores are mir_eval's ([`crate::notes::eval`]): per file P/R/F1 without and with the offset
//! criterion, then micro (notes pooled) and macro (mean over files) aggregates. References that
//! give pitches without times (isolated notes from metadata) are scored on pitch alone, shown
//! apart, and left out of the onset aggregates.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use super::{
    TrainError,
    data::{NoiseBank, add_noise, convolve, room_response},
};
use crate::notes::{
    Mode, Note, Transcriber,
    eval::{self, Aggregate, FileScores, NoteScores},
    io::{self, NOTE_EXTENSIONS},
    pitch::PitchParams,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The basic-pitch package names its outputs `STEM_basic_pitch.csv` / `.mid`.
const BASIC_PITCH_SUFFIX: &str = "_basic_pitch";
/// `--save-estimates` writes the mono tracker's pitch frames as `<stem>.f0.tsv` beside the notes.
const F0_SUFFIX: &str = ".f0.tsv";
/// Seed of `--noise`'s draws (which recording, where in it).
const NOISE_SEED: u64 = 0x6e6f_6973;

/// What `hark-train eval notes` was asked to score.
#[derive(Debug, Clone)]
pub struct NotesEvalOptions {
    /// Audio files to transcribe (or, with `estimates`, just to choose the stems).
    pub audio: Option<PathBuf>,
    /// Reference note files.
    pub notes: PathBuf,
    /// Already-transcribed note files to score instead of transcribing.
    pub estimates: Option<PathBuf>,
    pub mode: Mode,
    /// Mono: the onset detector (model name or directory); None: the flux and level rules.
    pub onset_model: Option<String>,
    /// Mono, with a detector: the voice model that sets it aside where a voice sings (model
    /// name or directory); None: the detector everywhere.
    pub voice_model: Option<String>,
    /// Mono: the pitch network whose posterior steers the tracker (model name or directory;
    /// `f0_prior` takes its place where given); None: pYIN alone.
    pub f0_model: Option<String>,
    /// Mono: stream each file through the tracker in 10 ms chunks, as the daemon's note stage
    /// hears it (the pitch network's posterior then only sees the audio a live stream has).
    pub live: bool,
    /// Write each transcription here as `<stem>.tsv` (to inspect errors, or to score again
    /// with `estimates` without transcribing).
    pub save_estimates: Option<PathBuf>,
    /// A room impulse response every file is convolved with before it is transcribed: how
    /// the transcriber holds up in a room rather than on a dry recording.
    pub room: Option<PathBuf>,
    /// Background noise (audio files or directories) mixed into every file after the room:
    /// how the transcriber holds up in a street or a kitchen. Empty: none.
    pub noise: Vec<PathBuf>,
    /// Signal-to-noise ratio of that noise (dB, over the file's whole length).
    pub snr_db: f32,
    /// Write the audio as it is transcribed (after the room and the noise) to
    /// `DIR/<stem>.wav`: what another model must hear to be compared, or to give a prior.
    pub save_audio: Option<PathBuf>,
    /// Mono: learned F0 posteriors over that audio, `DIR/<stem>.f0prior.safetensors`, that
    /// steer the pitch tracker (see [`crate::notes::pitch::PitchPrior`]).
    pub f0_prior: Option<PathBuf>,
}

/// Samples per chunk of `--live`: the daemon's 10 ms.
const LIVE_CHUNK: usize = 160;

/// `--f0-prior`'s file name after the stem.
const F0_PRIOR_SUFFIX: &str = ".f0prior.safetensors";

/// Reads a learned F0 posterior: tensors `probs` (frames x bins, f32), `hop_s`, `fmin` and
/// `fmax` (one value each).
fn read_f0_prior(path: &Path) -> Result<crate::notes::pitch::PitchPrior, TrainError> {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| data_err(path, e.to_string()))?;
    let get = |name: &str| {
        t.get(name)
            .ok_or_else(|| data_err(path, format!("no tensor `{name}`")))
    };
    let scalar = |name: &str| -> Result<f32, TrainError> {
        let v = get(name)?
            .flatten_all()
            .and_then(|x| x.to_dtype(candle_core::DType::F32))
            .and_then(|x| x.to_vec1::<f32>())
            .map_err(|e| data_err(path, e.to_string()))?;
        match v.as_slice() {
            [x] => Ok(*x),
            _ => Err(data_err(path, format!("`{name}` is not one value"))),
        }
    };
    let probs = get("probs")?;
    let (frames, bins) = probs
        .dims2()
        .map_err(|e| data_err(path, format!("`probs`: {e}")))?;
    let values = probs
        .to_dtype(candle_core::DType::F32)
        .and_then(|x| x.flatten_all())
        .and_then(|x| x.to_vec1::<f32>())
        .map_err(|e| data_err(path, e.to_string()))?;
    debug_assert_eq!(values.len(), frames * bins);
    crate::notes::pitch::PitchPrior::new(
        f64::from(scalar("hop_s")?),
        scalar("fmin")?,
        scalar("fmax")?,
        bins,
        values,
    )
    .map_err(|e| data_err(path, e))
}

/// The scores of one file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileResult {
    pub name: String,
    pub reference: PathBuf,
    /// The estimate file, or None when hark transcribed the audio.
    pub estimate: Option<PathBuf>,
    /// No estimate file was found: scored as an empty transcription.
    pub missing_estimate: bool,
    /// mir_eval scores (timed references).
    pub scores: Option<FileScores>,
    /// Pitch-only scores (references without times).
    pub pitch_only: Option<NoteScores>,
}

/// Every file's scores and their aggregates.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NotesEvaluation {
    pub mode: Mode,
    /// "hark" or the estimates directory.
    pub estimates: String,
    pub files: Vec<FileResult>,
    /// Onset + pitch, over files with timed references.
    pub no_offset: Aggregate,
    /// Onset + pitch + offset, over files with timed references.
    pub with_offset: Aggregate,
    /// Onsets only, over files with timed references.
    pub onset: Aggregate,
    /// Pitch only, over files whose references have no times.
    pub pitch_only: Aggregate,
    /// Files that could not be paired (audio without reference, reference without audio).
    pub unpaired: Vec<String>,
}

fn data_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The files of `dir` with one of `exts`, by stem; when a stem has several, the earlier
/// extension of `exts` wins.
pub(crate) fn files_by_stem(
    dir: &Path,
    exts: &[&str],
) -> Result<BTreeMap<String, PathBuf>, TrainError> {
    let rd = std::fs::read_dir(dir).map_err(|e| data_err(dir, e.to_string()))?;
    let mut out: BTreeMap<String, (usize, PathBuf)> = BTreeMap::new();
    for entry in rd.flatten() {
        let path = entry.path();
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
            continue;
        };
        let ext = ext.to_string_lossy().to_ascii_lowercase();
        let Some(rank) = exts.iter().position(|e| *e == ext) else {
            continue;
        };
        if !path.is_file() {
            continue;
        }
        let stem = stem.to_string_lossy().into_owned();
        if out.get(&stem).is_none_or(|(r, _)| rank < *r) {
            out.insert(stem, (rank, path));
        }
    }
    Ok(out.into_iter().map(|(s, (_, p))| (s, p)).collect())
}

/// Pairs, reads, transcribes (or reads estimates) and scores.
pub fn evaluate(o: &NotesEvalOptions) -> Result<NotesEvaluation, TrainError> {
    let refs = files_by_stem(&o.notes, NOTE_EXTENSIONS)?;
    if refs.is_empty() {
        return Err(data_err(
            &o.notes,
            format!("no note files ({})", NOTE_EXTENSIONS.join(", ")),
        ));
    }
    let ests = o
        .estimates
        .as_deref()
        .map(|d| files_by_stem(d, NOTE_EXTENSIONS))
        .transpose()?;
    let mut unpaired = Vec::new();
    // (stem, reference, audio)
    let items: Vec<(String, PathBuf, Option<PathBuf>)> = match &o.audio {
        Some(dir) => {
            let audio = files_by_stem(dir, crate::audio::file::EXTENSIONS)?;
            for (stem, p) in &audio {
                if !refs.contains_key(stem) {
                    unpaired.push(format!("{} (no reference)", p.display()));
                }
            }
            for (stem, p) in &refs {
                if !audio.contains_key(stem) {
                    unpaired.push(format!("{} (no audio)", p.display()));
                }
            }
            audio
                .into_iter()
                .filter_map(|(s, a)| refs.get(&s).map(|r| (s, r.clone(), Some(a))))
                .collect()
        }
        None if ests.is_some() => refs
            .iter()
            .map(|(s, r)| (s.clone(), r.clone(), None))
            .collect(),
        None => {
            return Err(TrainError::Setting(
                "give --audio DIR to transcribe, or --estimates DIR to score note files".into(),
            ));
        }
    };
    if items.is_empty() {
        return Err(data_err(
            o.audio.as_deref().unwrap_or(&o.notes),
            "no audio file has a reference note file of the same stem",
        ));
    }
    let room = o.room.as_deref().map(room_response).transpose()?;
    let noise = NoiseBank::load(&o.noise)?;
    if !o.noise.is_empty() && noise.is_empty() {
        return Err(TrainError::Setting(format!(
            "--noise {:?} holds no audio of a second or more",
            o.noise
        )));
    }
    if o.live && o.f0_prior.is_some() {
        return Err(TrainError::Setting(
            "--f0-prior is a whole-file posterior: it cannot be heard live (--live)".into(),
        ));
    }
    if o.f0_prior.is_some() && o.mode != Mode::Mono {
        return Err(TrainError::Setting(
            "--f0-prior steers the mono pitch tracker: it needs --mode mono".into(),
        ));
    }
    for dir in [&o.save_estimates, &o.save_audio].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|e| data_err(dir, e.to_string()))?;
    }
    // Drawn per transcribed file, in file order: the same files get the same noise each run.
    let mut noise_rng = StdRng::seed_from_u64(NOISE_SEED);
    // Loaded at the first file to transcribe: none when estimates are scored.
    let mut transcriber: Option<Transcriber> = None;
    let mut files = Vec::with_capacity(items.len());
    for (name, reference, audio) in items {
        let r = io::read_notes(&reference)?;
        let (estimate, missing_estimate, est): (Option<PathBuf>, bool, Vec<Note>) = match &ests {
            Some(map) => match map
                .get(&name)
                .or_else(|| map.get(&format!("{name}{BASIC_PITCH_SUFFIX}")))
            {
                Some(p) => {
                    let f = io::read_notes(p)?;
                    // Pitch-only estimates can be scored against pitch-only references only.
                    if r.timed && !f.timed {
                        return Err(data_err(p, "estimated notes have no onsets and offsets"));
                    }
                    (Some(p.clone()), false, f.notes)
                }
                None => {
                    tracing::warn!(file = %name, "No estimate file; scoring it as no notes.");
                    (None, true, Vec::new())
                }
            },
            None => {
                let a = audio.as_deref().unwrap_or(&reference);
                let mut samples = crate::audio::file::decode_file_16k(a)
                    .map_err(|e| data_err(a, format!("decoding: {e}")))?;
                if let Some(h) = &room {
                    samples = convolve(&samples, h);
                }
                if !noise.is_empty() {
                    let (_, n) = &noise.clips[noise_rng.random_range(0..noise.clips.len())];
                    let offset = noise_rng.random_range(0..n.len());
                    add_noise(&mut samples, n, offset, o.snr_db);
                }
                if let Some(dir) = &o.save_audio {
                    super::data::write_wav(&dir.join(format!("{name}.wav")), &samples)?;
                }
                let prior = match &o.f0_prior {
                    Some(dir) => Some(std::sync::Arc::new(read_f0_prior(
                        &dir.join(format!("{name}{F0_PRIOR_SUFFIX}")),
                    )?)),
                    None => None,
                };
                if transcriber.is_none() {
                    transcriber = Some(Transcriber::load(
                        o.mode,
                        o.onset_model.as_deref(),
                        o.voice_model.as_deref(),
                        o.f0_model.as_deref(),
                    )?);
                }
                let t = transcriber.as_ref().expect("loaded above");
                let (notes, frames) = if o.live {
                    t.transcribe_streamed(&samples, LIVE_CHUNK)
                } else {
                    t.transcribe(&samples, prior)
                }
                .map_err(|e| data_err(a, format!("transcribing: {e}")))?;
                let saved = match &o.save_estimates {
                    Some(dir) => {
                        let p = dir.join(format!("{name}.tsv"));
                        io::write_notes(&p, &notes)?;
                        if !frames.is_empty() {
                            let f0 = dir.join(format!("{name}{F0_SUFFIX}"));
                            io::write_pitch_frames(&f0, &frames, PitchParams::default().frame_s())?;
                        }
                        Some(p)
                    }
                    None => None,
                };
                (saved, false, notes)
            }
        };
        let (scores, pitch_only) = if r.timed {
            (Some(eval::evaluate_all(&r.notes, &est)), None)
        } else {
            (None, Some(eval::pitch_only_scores(&r.notes, &est)))
        };
        files.push(FileResult {
            name,
            reference,
            estimate,
            missing_estimate,
            scores,
            pitch_only,
        });
    }
    let timed: Vec<&FileScores> = files.iter().filter_map(|f| f.scores.as_ref()).collect();
    Ok(NotesEvaluation {
        mode: o.mode,
        estimates: o
            .estimates
            .as_ref()
            .map_or("hark".into(), |d| d.display().to_string()),
        no_offset: Aggregate::of(timed.iter().map(|s| &s.no_offset)),
        with_offset: Aggregate::of(timed.iter().map(|s| &s.with_offset)),
        onset: Aggregate::of(timed.iter().map(|s| &s.onset)),
        pitch_only: Aggregate::of(files.iter().filter_map(|f| f.pitch_only.as_ref())),
        files,
        unpaired,
    })
}

impl NotesEvaluation {
    /// The per-file table and the aggregates.
    pub fn to_text(&self) -> String {
        let w = self
            .files
            .iter()
            .map(|f| f.name.len() + if f.scores.is_none() { 13 } else { 0 })
            .chain([16])
            .max()
            .unwrap_or(16);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "notes ({:?}), estimates: {}  [P/R/F1: onset+pitch; F1+off: also offset]",
            self.mode, self.estimates
        );
        let _ = writeln!(
            s,
            "{:<w$} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}",
            "file", "n_ref", "n_est", "P", "R", "F1", "F1+off"
        );
        for f in &self.files {
            let (name, p, off) = match (&f.scores, &f.pitch_only) {
                (Some(sc), _) => (
                    f.name.clone(),
                    sc.no_offset,
                    format!("{:.3}", sc.with_offset.f1),
                ),
                (None, Some(p)) => (format!("{} (pitch only)", f.name), *p, "-".into()),
                (None, None) => continue,
            };
            let missing = if f.missing_estimate {
                "  (no estimate file)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "{name:<w$} {:>6} {:>6} {:>6.3} {:>6.3} {:>6.3} {off:>7}{missing}",
                p.n_ref, p.n_est, p.precision, p.recall, p.f1
            );
        }
        let (a, b) = (&self.no_offset, &self.with_offset);
        if a.files > 0 {
            let _ = writeln!(
                s,
                "{:<w$} {:>6} {:>6} {:>6.3} {:>6.3} {:>6.3} {:>7.3}",
                format!("micro ({} files)", a.files),
                a.n_ref,
                a.n_est,
                a.micro_precision,
                a.micro_recall,
                a.micro_f1,
                b.micro_f1
            );
            let _ = writeln!(
                s,
                "{:<w$} {:>6} {:>6} {:>6.3} {:>6.3} {:>6.3} {:>7.3}",
                "macro (mean)", "", "", a.macro_precision, a.macro_recall, a.macro_f1, b.macro_f1
            );
        }
        let p = &self.pitch_only;
        if p.files > 0 {
            let _ = writeln!(
                s,
                "pitch only ({} files, not in the rows above): micro F1 {:.3}, macro F1 {:.3}",
                p.files, p.micro_f1, p.macro_f1
            );
        }
        for u in &self.unpaired {
            let _ = writeln!(s, "unpaired: {u}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const A: &str = "onset_s\toffset_s\tmidi_pitch\tvelocity\tgm_program\n\
                     0.0\t0.5\t60\t90\t0\n0.5\t1.0\t62\t90\t0\n1.0\t2.0\t64\t90\t0\n";
    const B: &str = "0.1 0.3 70\n0.2 0.9 74\n";

    fn options(notes: &Path, estimates: Option<&Path>, audio: Option<&Path>) -> NotesEvalOptions {
        NotesEvalOptions {
            audio: audio.map(Path::to_path_buf),
            notes: notes.to_path_buf(),
            estimates: estimates.map(Path::to_path_buf),
            mode: Mode::Poly,
            onset_model: None,
            voice_model: None,
            f0_model: None,
            live: false,
            save_estimates: None,
            room: None,
            noise: Vec::new(),
            snr_db: 10.0,
            save_audio: None,
            f0_prior: None,
        }
    }

    #[test]
    fn estimates_equal_to_references_score_one() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.tsv", A);
        write(d.path(), "b.txt", B);
        write(
            d.path(),
            "c.tsv",
            "onset_s\toffset_s\tmidi_pitch\nNA\tNA\t45\n",
        );
        let ev = evaluate(&options(d.path(), Some(d.path()), None)).unwrap();
        assert_eq!(ev.files.len(), 3);
        for agg in [&ev.no_offset, &ev.with_offset, &ev.onset] {
            assert_eq!(agg.files, 2);
            assert_eq!((agg.micro_f1, agg.macro_f1), (1.0, 1.0));
            assert_eq!((agg.n_ref, agg.matched), (5, 5));
        }
        assert_eq!((ev.pitch_only.files, ev.pitch_only.micro_f1), (1, 1.0));
        let text = ev.to_text();
        assert!(text.contains("c (pitch only)"), "{text}");
        assert!(text.contains("micro (2 files)"), "{text}");
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["with_offset"]["micro_f1"], 1.0);
    }

    #[test]
    fn estimates_in_other_formats_and_missing_ones() {
        let (refs, ests) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(refs.path(), "a.tsv", A);
        write(refs.path(), "b.tsv", A);
        // a as MIDI, with the last note 0.3 s short: it matches without offsets only.
        let mut notes = io::read_notes(&refs.path().join("a.tsv")).unwrap().notes;
        notes[2].end = 1.7;
        io::write_notes(&ests.path().join("a.mid"), &notes).unwrap();
        // c as basic-pitch writes it: its name, its CSV columns, pitch bends past the header.
        write(refs.path(), "c.tsv", A);
        write(
            ests.path(),
            "c_basic_pitch.csv",
            "start_time_s,end_time_s,pitch_midi,velocity,pitch_bend\n\
             0.0,0.5,60,90,0,1\n0.5,1.0,62,90\n1.0,2.0,64,90,2,2,2\n",
        );
        let ev = evaluate(&options(refs.path(), Some(ests.path()), None)).unwrap();
        let a = ev.files[0].scores.unwrap();
        assert_eq!((a.no_offset.matched, a.with_offset.matched), (3, 2));
        assert!(ev.files[1].missing_estimate);
        assert_eq!(ev.files[2].scores.unwrap().with_offset.f1, 1.0);
        assert_eq!(ev.no_offset.matched, 6);
        assert_eq!(ev.no_offset.n_ref, 9);
        assert!((ev.no_offset.macro_f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn pairs_audio_by_stem_and_reports_transcriber_errors() {
        let (audio, refs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(refs.path(), "a.tsv", A);
        write(refs.path(), "z.tsv", A);
        write(audio.path(), "a.flac", "not audio");
        write(audio.path(), "y.wav", "not audio");
        // With estimates, audio only picks the stems.
        let ev = evaluate(&options(refs.path(), Some(refs.path()), Some(audio.path()))).unwrap();
        assert_eq!(ev.files.len(), 1);
        assert_eq!(ev.unpaired.len(), 2, "{:?}", ev.unpaired);
        // Without, the (undecodable) audio is transcribed: a clear error, not a panic.
        let err = evaluate(&options(refs.path(), None, Some(audio.path()))).unwrap_err();
        assert!(err.to_string().contains("a.flac"), "{err}");
        assert!(evaluate(&options(refs.path(), None, None)).is_err());
    }

    /// A five-note tune rendered into `audio/t.wav` with its reference in `refs/t.tsv`, and
    /// mono options to transcribe and score it (the directories live as long as they do).
    fn rendered_tune() -> (tempfile::TempDir, tempfile::TempDir, NotesEvalOptions) {
        let (audio, refs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let tune: Vec<Note> = [60u8, 64, 67, 72, 67]
            .iter()
            .enumerate()
            .map(|(i, &midi)| Note {
                midi,
                cents: 0.0,
                start: 0.3 + 0.5 * i as f64,
                end: 0.7 + 0.5 * i as f64,
                velocity: 90,
                confidence: 1.0,
            })
            .collect();
        let x = crate::notes::synth::render(&tune, 16_000, &Default::default());
        crate::train::data::write_wav(&audio.path().join("t.wav"), &x).unwrap();
        io::write_notes(&refs.path().join("t.tsv"), &tune).unwrap();
        let mut o = options(refs.path(), None, Some(audio.path()));
        o.mode = Mode::Mono;
        (audio, refs, o)
    }

    #[test]
    fn saved_estimates_score_as_the_transcription_did() {
        let (audio, refs, mut o) = rendered_tune();
        let saved = tempfile::tempdir().unwrap();
        let out = saved.path().join("new");
        o.save_estimates = Some(out.clone());
        let first = evaluate(&o).unwrap();
        let path = out.join("t.tsv");
        assert_eq!(first.files[0].estimate.as_deref(), Some(path.as_path()));
        assert!(first.no_offset.micro_f1 > 0.5, "{}", first.to_text());
        let mut again = options(refs.path(), Some(&out), None);
        again.mode = Mode::Mono;
        let second = evaluate(&again).unwrap();
        assert_eq!(second.no_offset.matched, first.no_offset.matched);
        assert_eq!(second.no_offset.n_est, first.no_offset.n_est);
        // The pitch frames behind it: one per 10 ms, voiced at the tune's pitches.
        let f0 = std::fs::read_to_string(out.join("t.f0.tsv")).unwrap();
        let rows: Vec<Vec<f64>> = f0
            .lines()
            .skip(1)
            .map(|l| l.split('\t').map(|v| v.parse().unwrap()).collect())
            .collect();
        let secs = crate::audio::file::decode_file_16k(&audio.path().join("t.wav"))
            .unwrap()
            .len() as f64
            / 16_000.0;
        assert!(
            (rows.len() as f64 * 0.01 - secs).abs() < 0.05,
            "{} frames",
            rows.len()
        );
        assert!((rows[1][0] - rows[0][0] - 0.01).abs() < 1e-9);
        let at = |t: f64| &rows[(t / 0.01).round() as usize];
        assert_eq!(at(0.5)[2], 1.0);
        assert!(
            (crate::notes::hz_to_midi(at(0.5)[1]) - 60.0).abs() < 0.5,
            "{:?}",
            at(0.5)
        );
        assert_eq!(at(0.05)[2], 0.0);
    }

    #[test]
    fn a_room_is_aligned_to_its_direct_sound_and_a_silent_one_is_refused() {
        let (_audio, _refs, mut o) = rendered_tune();
        let rooms = tempfile::tempdir().unwrap();
        let dry = evaluate(&o).unwrap();
        // 100 ms of flight time, then the direct sound and one quieter echo 15 ms later.
        let mut h = vec![0f32; 2000];
        h[1600] = 0.8;
        h[1840] = 0.2;
        let room = rooms.path().join("room.wav");
        crate::train::data::write_wav(&room, &h).unwrap();
        o.room = Some(room);
        let wet = evaluate(&o).unwrap();
        assert_eq!(
            wet.no_offset.matched,
            dry.no_offset.matched,
            "{}",
            wet.to_text()
        );
        assert!(wet.no_offset.micro_f1 > 0.9, "{}", wet.to_text());
        let silent = rooms.path().join("silent.wav");
        crate::train::data::write_wav(&silent, &[0.0; 1600]).unwrap();
        o.room = Some(silent);
        let e = evaluate(&o).unwrap_err().to_string();
        assert!(e.contains("silent"), "{e}");
    }

    #[test]
    fn noise_is_mixed_at_the_asked_snr_the_same_way_each_run() {
        let (_audio, _refs, mut o) = rendered_tune();
        let dir = tempfile::tempdir().unwrap();
        // Broadband noise: at 30 dB below the tune every note survives, at -20 dB none does.
        let n: Vec<f32> = (0..40_000u64)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        crate::train::data::write_wav(&dir.path().join("n.wav"), &n).unwrap();
        o.noise = vec![dir.path().to_path_buf()];
        o.snr_db = 30.0;
        let quiet = evaluate(&o).unwrap();
        assert!(quiet.no_offset.micro_f1 > 0.9, "{}", quiet.to_text());
        o.snr_db = -20.0;
        let loud = evaluate(&o).unwrap();
        assert!(
            loud.no_offset.matched < quiet.no_offset.matched,
            "{}",
            loud.to_text()
        );
        assert_eq!(
            evaluate(&o).unwrap().no_offset.matched,
            loud.no_offset.matched
        );
        let empty = tempfile::tempdir().unwrap();
        o.noise = vec![empty.path().to_path_buf()];
        let e = evaluate(&o).unwrap_err().to_string();
        assert!(e.contains("no audio"), "{e}");
    }

    #[test]
    fn a_saved_prior_steers_the_tracker_on_the_saved_audio() {
        use candle_core::{Device, Tensor};
        let (_audio, refs, mut o) = rendered_tune();
        let (saved, priors) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        o.save_audio = Some(saved.path().to_path_buf());
        let plain = evaluate(&o).unwrap();
        assert!(saved.path().join("t.wav").exists());
        // A prior that believes every note an octave below what sounds: the tracker follows
        // it to YIN's sub-octave trough, and every note comes out an octave low.
        let (fmin, fmax, bins, hop) = (46.875f32, 2093.75f32, 95usize, 0.016f32);
        let tune = io::read_notes(&refs.path().join("t.tsv")).unwrap().notes;
        let frames = 200;
        let mut probs = vec![1e-6f32; frames * bins];
        for (k, row) in probs.chunks_mut(bins).enumerate() {
            let t = k as f64 * f64::from(hop);
            if let Some(n) = tune.iter().find(|n| n.start <= t && t < n.end) {
                let hz = crate::notes::midi_to_hz(f64::from(n.midi) - 12.0) as f32;
                let b = ((hz / fmin).log2() / (fmax / fmin).log2() * (bins - 1) as f32).round();
                row[b as usize] = 1.0;
            }
        }
        let one = |v: f32| Tensor::new(&[v], &Device::Cpu).unwrap();
        let tensors = std::collections::HashMap::from([
            (
                "probs".to_string(),
                Tensor::from_vec(probs, (frames, bins), &Device::Cpu).unwrap(),
            ),
            ("hop_s".to_string(), one(hop)),
            ("fmin".to_string(), one(fmin)),
            ("fmax".to_string(), one(fmax)),
        ]);
        candle_core::safetensors::save(&tensors, priors.path().join("t.f0prior.safetensors"))
            .unwrap();
        o.audio = Some(saved.path().to_path_buf());
        o.save_audio = None;
        o.f0_prior = Some(priors.path().to_path_buf());
        let steered = evaluate(&o).unwrap();
        assert_eq!(plain.no_offset.matched, 5, "{}", plain.to_text());
        assert_eq!(steered.no_offset.matched, 0, "{}", steered.to_text());
        assert_eq!(steered.onset.matched, 5, "{}", steered.to_text());
        // A prior missing for a file, or asked of the poly transcriber, is an error.
        std::fs::remove_file(priors.path().join("t.f0prior.safetensors")).unwrap();
        let e = evaluate(&o).unwrap_err().to_string();
        assert!(e.contains("t.f0prior.safetensors"), "{e}");
        o.mode = Mode::Poly;
        let e = evaluate(&o).unwrap_err().to_string();
        assert!(e.contains("mono"), "{e}");
    }

    #[test]
    fn shared_synth_references_against_their_midi() {
        let Some(root) = crate::notes::io::shared_data() else {
            return;
        };
        let synth = root.join("music/synth");
        let mut o = options(
            &synth.join("notes"),
            Some(&synth.join("midi")),
            Some(&synth),
        );
        o.mode = Mode::Mono;
        let ev = evaluate(&o).unwrap();
        assert_eq!(ev.files.len(), 15);
        assert_eq!(ev.with_offset.micro_f1, 1.0, "{}", ev.to_text());
    }
}
