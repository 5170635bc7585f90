//! Standard MIDI Files through `midly`.
//!
//! Writing: one track (format 0), 480 ticks per quarter note at a fixed 120 bpm, so a tick is
//! 1/960 s; every note goes on channel 0 with its velocity. Times are rounded to the nearest tick
//! (a note never shorter than one), so write -> read returns each note within half a tick.
//!
//! Reading: every track of a format 0, 1 or 2 file, with the tempo map honoured (tempo events of
//! any track, as format 1 files keep them in the first) or SMPTE timing. Note-ons are paired with
//! the next note-off of the same channel and key, first in first out; a note-on with velocity 0
//! is a note-off; a note still sounding at the end closes at the last event. Programs, controllers
//! and pitch bends are ignored.

use std::path::Path;

use midly::{
    Format, Header, MetaMessage, MidiMessage, Smf, Timing, TrackEvent, TrackEventKind,
    num::{u4, u7, u15, u24, u28},
};

use super::{Note, NotesError, io::io_err};

/// Ticks per quarter note of the files we write.
pub const TICKS_PER_QUARTER: u16 = 480;
/// Microseconds per quarter note of the files we write (120 bpm).
pub const TEMPO_US_PER_QUARTER: u32 = 500_000;

/// Seconds per tick of the files we write.
pub fn tick_s() -> f64 {
    f64::from(TEMPO_US_PER_QUARTER) * 1e-6 / f64::from(TICKS_PER_QUARTER)
}

/// Writes notes to a Standard MIDI File.
pub fn write(path: &Path, notes: &[Note]) -> Result<(), NotesError> {
    std::fs::write(path, to_smf_bytes(notes)).map_err(io_err(path))
}

/// Reads the notes of a Standard MIDI File, sorted by start then pitch.
pub fn read(path: &Path) -> Result<Vec<Note>, NotesError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    from_smf_bytes(&bytes, path)
}

/// Encodes notes as a format-0 SMF (see the module docs).
pub fn to_smf_bytes(notes: &[Note]) -> Vec<u8> {
    let per_tick = tick_s();
    let to_tick = |s: f64| {
        (s.max(0.0) / per_tick)
            .round()
            .min(f64::from(u32::MAX >> 5)) as u32
    };
    // (tick, is_on, key, velocity); offs sort before ons at the same tick so a repeated key
    // starts after the previous one ends.
    let mut ev: Vec<(u32, bool, u8, u8)> = Vec::with_capacity(notes.len() * 2);
    for n in notes {
        let on = to_tick(n.start);
        let off = to_tick(n.end).max(on + 1);
        let key = n.midi.min(127);
        ev.push((on, true, key, n.velocity.clamp(1, 127)));
        ev.push((off, false, key, 0));
    }
    ev.sort_by_key(|&(t, on, key, _)| (t, on, key));
    let mut track: Vec<TrackEvent<'static>> = Vec::with_capacity(ev.len() + 2);
    track.push(TrackEvent {
        delta: u28::new(0),
        kind: TrackEventKind::Meta(MetaMessage::Tempo(u24::new(TEMPO_US_PER_QUARTER))),
    });
    let mut last = 0u32;
    for (t, on, key, vel) in ev {
        let (key, vel) = (u7::new(key), u7::new(vel));
        let message = if on {
            MidiMessage::NoteOn { key, vel }
        } else {
            MidiMessage::NoteOff { key, vel }
        };
        track.push(TrackEvent {
            delta: u28::new(t - last),
            kind: TrackEventKind::Midi {
                channel: u4::new(0),
                message,
            },
        });
        last = t;
    }
    track.push(TrackEvent {
        delta: u28::new(0),
        kind: TrackEventKind::Meta(MetaMessage::EndOfTrack),
    });
    let smf = Smf {
        header: Header::new(
            Format::SingleTrack,
            Timing::Metrical(u15::new(TICKS_PER_QUARTER)),
        ),
        tracks: vec![track],
    };
    let mut out = Vec::new();
    // Writing to a Vec fails only on values out of range, which the types above rule out.
    if let Err(e) = smf.write_std(&mut out) {
        tracing::error!(error = %e, "Encoding a MIDI file failed.");
    }
    out
}

/// Tick -> seconds through a tempo map.
#[derive(Debug)]
struct TempoMap {
    /// (tick, seconds at that tick, seconds per tick from there on), sorted by tick.
    segments: Vec<(u64, f64, f64)>,
}

impl TempoMap {
    fn new(timing: Timing, mut tempos: Vec<(u64, u32)>) -> Self {
        match timing {
            Timing::Timecode(fps, sub) => Self {
                segments: vec![(
                    0,
                    0.0,
                    1.0 / (f64::from(fps.as_f32()) * f64::from(sub.max(1))),
                )],
            },
            Timing::Metrical(tpq) => {
                let tpq = f64::from(u16::from(tpq).max(1));
                let spt = |us: u32| f64::from(us) * 1e-6 / tpq;
                tempos.sort_by_key(|&(t, _)| t);
                let mut segments = vec![(0u64, 0.0, spt(TEMPO_US_PER_QUARTER))];
                for (tick, us) in tempos {
                    let &(t0, s0, r0) = segments.last().unwrap_or(&(0, 0.0, 0.0));
                    segments.push((tick, s0 + (tick - t0) as f64 * r0, spt(us)));
                }
                Self { segments }
            }
        }
    }

    fn seconds(&self, tick: u64) -> f64 {
        let i = self.segments.partition_point(|&(t, _, _)| t <= tick);
        let (t0, s0, r) = self.segments[i.saturating_sub(1)];
        s0 + (tick - t0) as f64 * r
    }
}

/// Decodes an SMF (see the module docs); `path` is for messages only.
pub fn from_smf_bytes(bytes: &[u8], path: &Path) -> Result<Vec<Note>, NotesError> {
    let smf = Smf::parse(bytes).map_err(|e| NotesError::Format {
        path: path.to_path_buf(),
        reason: format!("not a readable MIDI file: {e}"),
    })?;
    // (absolute tick, track, channel, key, Some(velocity) = on / None = off)
    let mut events: Vec<(u64, usize, u8, u8, Option<u8>)> = Vec::new();
    let mut tempos: Vec<(u64, u32)> = Vec::new();
    let mut end_tick = 0u64;
    for (ti, track) in smf.tracks.iter().enumerate() {
        let mut tick = 0u64;
        for ev in track {
            tick += u64::from(u32::from(ev.delta));
            end_tick = end_tick.max(tick);
            match ev.kind {
                TrackEventKind::Meta(MetaMessage::Tempo(us)) => {
                    tempos.push((tick, u32::from(us).max(1)));
                }
                TrackEventKind::Midi { channel, message } => {
                    let ch = u8::from(channel);
                    match message {
                        MidiMessage::NoteOn { key, vel } if u8::from(vel) > 0 => {
                            events.push((tick, ti, ch, u8::from(key), Some(u8::from(vel))));
                        }
                        MidiMessage::NoteOn { key, .. } | MidiMessage::NoteOff { key, .. } => {
                            events.push((tick, ti, ch, u8::from(key), None));
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
    let map = TempoMap::new(smf.header.timing, tempos);
    // Stable: events of one tick keep their order within a track.
    events.sort_by_key(|&(t, ..)| t);
    let mut open: Vec<std::collections::VecDeque<(u64, u8)>> =
        vec![std::collections::VecDeque::new(); 16 * 128];
    let mut notes = Vec::new();
    let mut push = |key: u8, on: u64, vel: u8, off: u64| {
        if off > on {
            notes.push(Note {
                midi: key,
                cents: 0.0,
                start: map.seconds(on),
                end: map.seconds(off),
                velocity: vel,
                confidence: 1.0,
            });
        }
    };
    for (tick, _, ch, key, vel) in events {
        let slot = &mut open[usize::from(ch) * 128 + usize::from(key)];
        match vel {
            Some(v) => slot.push_back((tick, v)),
            None => {
                if let Some((on, v)) = slot.pop_front() {
                    push(key, on, v, tick);
                }
            }
        }
    }
    for (i, slot) in open.iter().enumerate() {
        for &(on, v) in slot {
            push((i % 128) as u8, on, v, end_tick);
        }
    }
    notes.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.midi.cmp(&b.midi)));
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(start: f64, end: f64, midi: u8, velocity: u8) -> Note {
        Note {
            midi,
            cents: 0.0,
            start,
            end,
            velocity,
            confidence: 1.0,
        }
    }

    #[test]
    fn write_read_round_trip_within_a_tick() {
        let notes = vec![
            note(0.0, 0.5, 60, 100),
            note(0.5, 1.0, 60, 30),
            note(0.25, 1.7333, 64, 127),
            note(0.25, 0.26, 67, 1),
            note(3.0173, 4.0, 21, 64),
        ];
        let back = from_smf_bytes(&to_smf_bytes(&notes), Path::new("x.mid")).unwrap();
        assert_eq!(back.len(), notes.len());
        let mut want = notes.clone();
        want.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.midi.cmp(&b.midi)));
        for (w, g) in want.iter().zip(&back) {
            assert_eq!((w.midi, w.velocity), (g.midi, g.velocity));
            assert!((w.start - g.start).abs() <= tick_s(), "{w:?} {g:?}");
            assert!((w.end - g.end).abs() <= tick_s(), "{w:?} {g:?}");
        }
    }

    /// A format-1 file with a tempo change in the conductor track and velocity-0 note-offs.
    #[test]
    fn tempo_map_and_running_note_offs() {
        let ev = |delta: u32, kind| TrackEvent {
            delta: u28::new(delta),
            kind,
        };
        let on = |key: u8, vel: u8| TrackEventKind::Midi {
            channel: u4::new(3),
            message: MidiMessage::NoteOn {
                key: u7::new(key),
                vel: u7::new(vel),
            },
        };
        let conductor = vec![
            ev(
                0,
                TrackEventKind::Meta(MetaMessage::Tempo(u24::new(1_000_000))),
            ),
            ev(
                100,
                TrackEventKind::Meta(MetaMessage::Tempo(u24::new(250_000))),
            ),
            ev(0, TrackEventKind::Meta(MetaMessage::EndOfTrack)),
        ];
        // 100 ticks per quarter: ticks 0..100 last 1 s, then 0.25 s per 100 ticks.
        let music = vec![
            ev(50, on(60, 90)),
            ev(100, on(60, 0)),
            ev(0, on(62, 70)),
            ev(200, on(62, 0)),
            ev(0, TrackEventKind::Meta(MetaMessage::EndOfTrack)),
        ];
        let smf = Smf {
            header: Header::new(Format::Parallel, Timing::Metrical(u15::new(100))),
            tracks: vec![conductor, music],
        };
        let mut bytes = Vec::new();
        smf.write_std(&mut bytes).unwrap();
        let notes = from_smf_bytes(&bytes, Path::new("x.mid")).unwrap();
        assert_eq!(notes.len(), 2);
        assert!((notes[0].start - 0.5).abs() < 1e-9 && (notes[0].end - 1.125).abs() < 1e-9);
        assert!((notes[1].start - 1.125).abs() < 1e-9 && (notes[1].end - 1.625).abs() < 1e-9);
        assert_eq!((notes[0].velocity, notes[1].midi), (90, 62));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(from_smf_bytes(b"MThd nope", Path::new("x.mid")).is_err());
        assert!(from_smf_bytes(&[], Path::new("x.mid")).is_err());
    }

    #[test]
    fn shared_midi_files_match_their_tsv() {
        let Some(root) = super::super::io::shared_data() else {
            return;
        };
        let dir = root.join("music/synth");
        let mut checked = 0;
        for e in std::fs::read_dir(dir.join("midi")).unwrap().flatten() {
            let p = e.path();
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let mid = read(&p).unwrap();
            let tsv = super::super::io::read_notes(&dir.join(format!("notes/{stem}.tsv")))
                .unwrap()
                .notes;
            assert_eq!(mid.len(), tsv.len(), "{stem}");
            for (m, t) in mid.iter().zip(&tsv) {
                assert_eq!((m.midi, m.velocity), (t.midi, t.velocity), "{stem}");
                assert!((m.start - t.start).abs() < 1e-3, "{stem}: {m:?} vs {t:?}");
                assert!((m.end - t.end).abs() < 1e-3, "{stem}: {m:?} vs {t:?}");
            }
            checked += usize::from(stem.starts_with("mono01_"));
        }
        assert_eq!(checked, 1, "mono01 .mid not found");
    }
}
