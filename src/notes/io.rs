//! Note lists on disk:
//!
//! - **tables** (`.tsv`, `.csv`, `.txt`): the shared data set's
//!   `onset_s\toffset_s\tmidi_pitch\tvelocity\tgm_program` with a header, the same with fewer
//!   columns, the basic-pitch package's CSV (`start_time_s,end_time_s,pitch_midi,velocity,...`),
//!   or a header-less `onset offset midi [velocity]` split by tabs, commas or spaces. Columns are
//!   found by header name; a fractional pitch becomes `midi` + `cents`.
//! - **JSON**: `{"notes":[{"midi","start","end","velocity"}]}` (`cents`, `confidence` optional).
//! - **MIDI** (`.mid`, `.midi`): see [`super::midi`].
//!
//! Some references give a pitch but no times (`NA`: isolated notes annotated from metadata):
//! [`NoteFile::timed`] is then false and every note spans `0..0`; score them with
//! [`super::eval::pitch_only_scores`]. A file mixing timed and untimed rows is refused.
//!
//! Every reader checks what it returns: finite times, `0 <= start < end`, MIDI numbers and
//! velocities within 0..=127. A bad row is an error naming the file and line, never a panic.

use std::path::{Path, PathBuf};

use super::{Note, NotesError};

/// Velocity given to notes read from files that have none.
pub const DEFAULT_VELOCITY: u8 = 100;

/// File extensions [`read_notes`] understands, in the order [`find_by_stem`] prefers them.
pub const NOTE_EXTENSIONS: &[&str] = &["tsv", "csv", "txt", "json", "mid", "midi"];

/// The notes of one file.
#[derive(Debug, Clone, PartialEq)]
pub struct NoteFile {
    /// Sorted by start, then pitch.
    pub notes: Vec<Note>,
    /// False when the file gives pitches only (its notes then span `0..0`).
    pub timed: bool,
}

/// Reads a note file, choosing the reader by extension.
pub fn read_notes(path: &Path) -> Result<NoteFile, NotesError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "mid" | "midi" => Ok(NoteFile {
            notes: super::midi::read(path)?,
            timed: true,
        }),
        "json" => Ok(NoteFile {
            notes: parse_json(&read_text(path)?, path)?,
            timed: true,
        }),
        "tsv" | "csv" | "txt" => parse_table(&read_text(path)?, path),
        _ => Err(NotesError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "unknown note file extension (expected one of {})",
                NOTE_EXTENSIONS.join(", ")
            ),
        }),
    }
}

/// Writes notes by extension: `.tsv` (the shared format), `.json` or `.mid`.
pub fn write_notes(path: &Path, notes: &[Note]) -> Result<(), NotesError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let bytes = match ext.as_str() {
        "mid" | "midi" => super::midi::to_smf_bytes(notes),
        "json" => to_json(notes).into_bytes(),
        "tsv" => to_tsv(notes).into_bytes(),
        _ => {
            return Err(NotesError::Format {
                path: path.to_path_buf(),
                reason: "can write .tsv, .json or .mid only".into(),
            });
        }
    };
    std::fs::write(path, bytes).map_err(io_err(path))
}

/// Writes pitch frames as TSV (`time_s hz voiced p_voiced`, a header line; `hz` is 0 where
/// unvoiced), one row per frame of `frame_s` seconds: the F0 track behind a transcription, for
/// frame-level melody metrics (`benches/notes_frames.py`).
pub fn write_pitch_frames(
    path: &Path,
    frames: &[super::pitch::PitchFrame],
    frame_s: f64,
) -> Result<(), NotesError> {
    let mut s = String::from("time_s\thz\tvoiced\tp_voiced\n");
    for f in frames {
        s.push_str(&format!(
            "{:.3}\t{:.2}\t{}\t{:.3}\n",
            f.index as f64 * frame_s,
            f.hz,
            u8::from(f.voiced),
            f.p_voiced
        ));
    }
    std::fs::write(path, s).map_err(io_err(path))
}

/// The shared TSV format (`onset_s offset_s midi_pitch velocity gm_program`, program 0). A
/// note off its semitone keeps its cents as a fractional pitch (`67.85`), as the reader takes
/// it: scored against a reference with fractional pitches (sung notes), a whole semitone would
/// move notes across the 50-cent line (SSVD test read 0.608 from saved estimates against 0.708
/// transcribed).
pub fn to_tsv(notes: &[Note]) -> String {
    let mut s = String::from("onset_s\toffset_s\tmidi_pitch\tvelocity\tgm_program\n");
    for n in notes {
        let pitch = if n.cents == 0.0 {
            n.midi.to_string()
        } else {
            format!("{:.2}", f64::from(n.midi) + f64::from(n.cents) / 100.0)
        };
        s.push_str(&format!(
            "{:.4}\t{:.4}\t{pitch}\t{}\t0\n",
            n.start, n.end, n.velocity
        ));
    }
    s
}

/// `{"notes":[...]}` with every field of [`Note`].
pub fn to_json(notes: &[Note]) -> String {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        notes: &'a [Note],
    }
    // Serialising plain numbers cannot fail; non-finite times would become null.
    serde_json::to_string(&Out { notes }).unwrap_or_else(|_| "{\"notes\":[]}".into())
}

/// Finds `dir/stem.EXT` for the first extension of [`NOTE_EXTENSIONS`] that exists.
pub fn find_by_stem(dir: &Path, stem: &str) -> Option<PathBuf> {
    NOTE_EXTENSIONS
        .iter()
        .map(|e| dir.join(format!("{stem}.{e}")))
        .find(|p| p.is_file())
}

fn read_text(path: &Path) -> Result<String, NotesError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NotesError + '_ {
    move |source| NotesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Parses `{"notes":[{"midi","start","end","velocity"}]}`.
pub fn parse_json(text: &str, path: &Path) -> Result<Vec<Note>, NotesError> {
    #[derive(serde::Deserialize)]
    struct In {
        notes: Vec<JsonNote>,
    }
    #[derive(serde::Deserialize)]
    struct JsonNote {
        midi: f64,
        start: f64,
        end: f64,
        velocity: Option<f64>,
        #[serde(default)]
        cents: f64,
        confidence: Option<f32>,
    }
    let bad = |reason: String| NotesError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let parsed: In =
        serde_json::from_str(text).map_err(|e| bad(format!("not a note list: {e}")))?;
    let mut notes = Vec::with_capacity(parsed.notes.len());
    for (i, j) in parsed.notes.iter().enumerate() {
        let n = make_note(
            j.start,
            j.end,
            j.midi + j.cents / 100.0,
            j.velocity,
            j.confidence,
        )
        .map_err(|r| bad(format!("note {i}: {r}")))?;
        notes.push(n);
    }
    sort(&mut notes);
    Ok(notes)
}

#[derive(Debug, Clone, Copy)]
struct Columns {
    onset: usize,
    offset: usize,
    pitch: usize,
    velocity: Option<usize>,
}

fn find_column(header: &[String], names: &[&str]) -> Option<usize> {
    header
        .iter()
        .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
}

fn split_fields(line: &str) -> Vec<String> {
    let fields: Vec<&str> = if line.contains('\t') {
        line.split('\t').collect()
    } else if line.contains(',') {
        line.split(',').collect()
    } else {
        line.split_whitespace().collect()
    };
    fields.iter().map(|f| f.trim().to_string()).collect()
}

/// A missing time: `NA` (R and pandas), `nan`, `-` or empty.
fn is_missing(field: &str) -> bool {
    matches!(
        field.to_ascii_lowercase().as_str(),
        "" | "na" | "nan" | "n/a" | "-" | "none"
    )
}

/// Parses a note table (see the module docs); `path` is for messages only.
pub fn parse_table(text: &str, path: &Path) -> Result<NoteFile, NotesError> {
    let err = |line: usize, reason: String| NotesError::Parse {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut cols: Option<Columns> = None;
    let mut notes = Vec::new();
    let mut timed_rows = 0usize;
    let mut untimed_rows = 0usize;
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_fields(line);
        let c = match cols {
            Some(c) => c,
            None => {
                let first = &fields[0];
                let c = if first.parse::<f64>().is_ok() || is_missing(first) {
                    Columns {
                        onset: 0,
                        offset: 1,
                        pitch: 2,
                        velocity: (fields.len() > 3).then_some(3),
                    }
                } else {
                    let need = |names: &[&str], what: &str| {
                        find_column(&fields, names).ok_or_else(|| {
                            err(lineno, format!("header has no {what} column ({names:?})"))
                        })
                    };
                    let c = Columns {
                        onset: need(
                            &["onset_s", "start_time_s", "onset", "start", "start_s"],
                            "onset",
                        )?,
                        offset: need(
                            &["offset_s", "end_time_s", "offset", "end", "end_s"],
                            "offset",
                        )?,
                        pitch: need(
                            &[
                                "midi_pitch",
                                "midi_pitch_float",
                                "pitch_midi",
                                "midi",
                                "pitch",
                                "note",
                            ],
                            "pitch",
                        )?,
                        velocity: find_column(&fields, &["velocity", "vel"]),
                    };
                    cols = Some(c);
                    continue;
                };
                cols = Some(c);
                c
            }
        };
        let get = |k: usize| -> Result<&str, NotesError> {
            fields
                .get(k)
                .map(String::as_str)
                .ok_or_else(|| err(lineno, format!("expected at least {} fields", k + 1)))
        };
        let num = |k: usize, what: &str| -> Result<f64, NotesError> {
            let f = get(k)?;
            f.parse::<f64>()
                .map_err(|_| err(lineno, format!("{what} {f:?} is not a number")))
        };
        let (on, off) = (get(c.onset)?, get(c.offset)?);
        let pitch = num(c.pitch, "pitch")?;
        let velocity = match c.velocity {
            Some(k) if fields.get(k).is_some_and(|f| !is_missing(f)) => Some(num(k, "velocity")?),
            _ => None,
        };
        let note = if is_missing(on) && is_missing(off) {
            untimed_rows += 1;
            make_note(0.0, 0.0, pitch, velocity, None).map(|mut n| {
                n.end = 0.0;
                n
            })
        } else {
            timed_rows += 1;
            make_note(
                num(c.onset, "onset")?,
                num(c.offset, "offset")?,
                pitch,
                velocity,
                None,
            )
        };
        notes.push(note.map_err(|r| err(lineno, r))?);
    }
    if timed_rows > 0 && untimed_rows > 0 {
        return Err(NotesError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "{untimed_rows} rows have no onset/offset and {timed_rows} do: a note list is \
                 either timed or pitch-only"
            ),
        });
    }
    sort(&mut notes);
    Ok(NoteFile {
        notes,
        timed: untimed_rows == 0,
    })
}

/// Checks and builds one note; a pitch-only note passes `start = end = 0`.
fn make_note(
    start: f64,
    end: f64,
    pitch: f64,
    velocity: Option<f64>,
    confidence: Option<f32>,
) -> Result<Note, String> {
    if !start.is_finite() || !end.is_finite() {
        return Err(format!("times must be finite (got {start}, {end})"));
    }
    if start < 0.0 {
        return Err(format!("onset {start} is negative"));
    }
    if end <= start && !(start == 0.0 && end == 0.0) {
        return Err(format!("offset {end} is not after onset {start}"));
    }
    if !(0.0..=127.5).contains(&pitch) || !pitch.is_finite() {
        return Err(format!("pitch {pitch} is outside MIDI 0..127"));
    }
    let midi = pitch.round().min(127.0);
    let velocity = match velocity {
        None => DEFAULT_VELOCITY,
        Some(v) if (0.0..=127.0).contains(&v) => v.round() as u8,
        Some(v) => return Err(format!("velocity {v} is outside 0..127")),
    };
    Ok(Note {
        midi: midi as u8,
        cents: ((pitch - midi) * 100.0) as f32,
        start,
        end,
        velocity,
        confidence: confidence.unwrap_or(1.0),
    })
}

/// `../shared/data` beside the repository, or None with a SKIP message (as the e2e harness's
/// helper of the same name does; unit tests cannot reach that one).
#[cfg(test)]
pub(crate) fn shared_data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("SKIP: ../shared/data is absent; this test needs the shared music set");
        None
    }
}

fn sort(notes: &mut [Note]) {
    notes.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.midi.cmp(&b.midi)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("test.tsv")
    }

    #[test]
    fn shared_synth_format() {
        let f = parse_table(
            "onset_s\toffset_s\tmidi_pitch\tvelocity\tgm_program\n0.0000\t1.2000\t67\t90\t73\n\
             1.2000\t2.4000\t70\t90\t73\n",
            p(),
        )
        .unwrap();
        assert!(f.timed);
        assert_eq!(f.notes.len(), 2);
        assert_eq!((f.notes[1].midi, f.notes[1].velocity), (70, 90));
        assert_eq!((f.notes[1].start, f.notes[1].end), (1.2, 2.4));
    }

    #[test]
    fn pitch_only_references() {
        let f = parse_table("onset_s\toffset_s\tmidi_pitch\nNA\tNA\t45\n", p()).unwrap();
        assert!(!f.timed);
        assert_eq!(f.notes[0].midi, 45);
        let mixed = "onset_s\toffset_s\tmidi_pitch\nNA\tNA\t45\n0.1\t0.2\t50\n";
        assert!(parse_table(mixed, p()).is_err());
    }

    #[test]
    fn simple_and_basic_pitch_tables() {
        let f = parse_table("0.5 1.0 60\n0.1\t0.4\t61.3\n", p()).unwrap();
        assert_eq!(f.notes[0].midi, 61);
        assert!((f.notes[0].cents - 30.0).abs() < 1e-3);
        assert_eq!(f.notes[1].velocity, DEFAULT_VELOCITY);
        let f = parse_table(
            "start_time_s,end_time_s,pitch_midi,velocity,pitch_bend\n0.1,0.5,64,80,0,1,2\n",
            p(),
        )
        .unwrap();
        assert_eq!((f.notes[0].midi, f.notes[0].velocity), (64, 80));
    }

    #[test]
    fn bad_rows_are_errors_with_a_line() {
        for (text, line) in [
            ("onset_s\toffset_s\tmidi_pitch\n0.1\t0.05\t60\n", 2),
            ("0.1 0.2 sixty\n", 1),
            ("0.1 0.2 200\n", 1),
            ("# c\n0.1 0.2\n", 2),
            ("-1 0.2 60\n", 1),
            ("0.1 inf 60\n", 1),
        ] {
            match parse_table(text, p()) {
                Err(NotesError::Parse { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_table("time\tfreq\n", p()),
            Err(NotesError::Parse { line: 1, .. })
        ));
    }

    #[test]
    fn json_round_trip() {
        let notes = vec![Note {
            midi: 60,
            cents: 0.0,
            start: 0.25,
            end: 0.75,
            velocity: 64,
            confidence: 0.5,
        }];
        assert_eq!(parse_json(&to_json(&notes), p()).unwrap(), notes);
        let minimal = r#"{"notes":[{"midi":62,"start":0,"end":1}]}"#;
        assert_eq!(
            parse_json(minimal, p()).unwrap()[0].velocity,
            DEFAULT_VELOCITY
        );
        assert!(parse_json(r#"{"notes":[{"midi":62,"start":1,"end":0}]}"#, p()).is_err());
        assert!(parse_json("[]", p()).is_err());
    }

    #[test]
    fn tsv_round_trip() {
        let text =
            "onset_s\toffset_s\tmidi_pitch\tvelocity\tgm_program\n0.1000\t0.5000\t60\t70\t0\n";
        let f = parse_table(text, p()).unwrap();
        assert_eq!(to_tsv(&f.notes), text);
        // A sung note's cents survive the trip.
        let sung = text.replace("\t60\t", "\t67.85\t");
        let f = parse_table(&sung, p()).unwrap();
        assert_eq!((f.notes[0].midi, f.notes[0].cents.round()), (68, -15.0));
        assert_eq!(to_tsv(&f.notes), sung);
    }

    #[test]
    fn reads_every_shared_note_file() {
        let Some(root) = shared_data() else {
            return;
        };
        for dir in ["music/synth/notes", "music/real/notes"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
                let f = read_notes(&e.path()).unwrap();
                assert!(!f.notes.is_empty(), "{}", e.path().display());
            }
        }
    }
}
