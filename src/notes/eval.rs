//! Note transcription metrics, following `mir_eval.transcription` (0.8) to the letter so our
//! numbers can be compared with published ones and with the Python tooling:
//!
//! - an estimated note matches a reference note when its onset is within 50 ms, its pitch within
//!   50 cents (compared as `1200 * |log2(f_ref) - log2(f_est)|` in Hz, cents included) and, for
//!   the "with offset" variant, its offset within `max(0.2 * ref_duration, 50 ms)`;
//! - time distances are rounded to 4 decimals before the comparison (`np.around(d, 4)`), so a
//!   shift of exactly 50 ms matches despite float noise; tolerances are compared with `<=`;
//! - matches are a **maximum** bipartite matching, found with the same Hopcroft–Karp code and the
//!   same visiting order as `mir_eval.util._bipartite_match`, so that when several maximum
//!   matchings exist we pick the same pairs (the average overlap ratio depends on which);
//! - with no reference or no estimated notes every score is 0.
//!
//! mir_eval rejects negative times and notes with `end <= start`; here such notes are scored as
//! given (a zero-length pair counts as full overlap) — the readers in [`super::io`] refuse them.
//!
//! `tests/fixtures/notes_eval/make_expected.py` writes cases scored by mir_eval itself; the test
//! below requires agreement to 1e-6.

use super::Note;

/// mir_eval's `N_DECIMALS`: time distances are rounded to this many decimals.
const N_DECIMALS: i32 = 4;

/// Tolerances of the note matching; `Default` is mir_eval's (with the offset criterion).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    /// Onset tolerance in seconds (`onset_tolerance`).
    pub onset_s: f64,
    /// Pitch tolerance in cents (`pitch_tolerance`).
    pub pitch_cents: f64,
    /// Offset tolerance as a fraction of the reference note's duration (`offset_ratio`); `None`
    /// ignores offsets.
    pub offset_ratio: Option<f64>,
    /// Smallest offset tolerance in seconds (`offset_min_tolerance`).
    pub offset_min_s: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self {
            onset_s: 0.05,
            pitch_cents: 50.0,
            offset_ratio: Some(0.2),
            offset_min_s: 0.05,
        }
    }
}

/// Scores of one estimate against one reference.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct NoteScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Mean overlap ratio of the matched pairs (0 when none match).
    pub avg_overlap: f64,
    pub n_ref: usize,
    pub n_est: usize,
    pub matched: usize,
}

/// Which conditions a pair must meet to be a match (a `None` is not checked).
#[derive(Debug, Clone, Copy)]
struct Criteria {
    onset_s: Option<f64>,
    pitch_cents: Option<f64>,
    /// (ratio, minimum seconds).
    offset: Option<(f64, f64)>,
}

/// mir_eval's `precision_recall_f1_overlap` at its default tolerances, with the offset criterion
/// (`offset_ratio=0.2`) or without it (`offset_ratio=None`).
pub fn evaluate(reference: &[Note], estimate: &[Note], with_offset: bool) -> NoteScores {
    let mut tol = Tolerances::default();
    if !with_offset {
        tol.offset_ratio = None;
    }
    evaluate_with(reference, estimate, &tol)
}

/// `precision_recall_f1_overlap` at the given tolerances.
pub fn evaluate_with(reference: &[Note], estimate: &[Note], tol: &Tolerances) -> NoteScores {
    let c = Criteria {
        onset_s: Some(tol.onset_s),
        pitch_cents: Some(tol.pitch_cents),
        offset: tol.offset_ratio.map(|r| (r, tol.offset_min_s)),
    };
    scores(reference, estimate, &c)
}

/// mir_eval's `onset_precision_recall_f1`: onsets only, pitch ignored (`avg_overlap` is that of
/// the onset matching, which mir_eval does not report).
pub fn onset_scores(reference: &[Note], estimate: &[Note]) -> NoteScores {
    let c = Criteria {
        onset_s: Some(Tolerances::default().onset_s),
        pitch_cents: None,
        offset: None,
    };
    scores(reference, estimate, &c)
}

/// mir_eval's `offset_precision_recall_f1`: offsets only, pitch and onsets ignored.
pub fn offset_scores(reference: &[Note], estimate: &[Note]) -> NoteScores {
    let d = Tolerances::default();
    let c = Criteria {
        onset_s: None,
        pitch_cents: None,
        offset: Some((0.2, d.offset_min_s)),
    };
    scores(reference, estimate, &c)
}

/// Pitch only, times ignored: for references that give a pitch but no onset or offset (isolated
/// notes annotated from metadata). Not a mir_eval metric.
pub fn pitch_only_scores(reference: &[Note], estimate: &[Note]) -> NoteScores {
    let c = Criteria {
        onset_s: None,
        pitch_cents: Some(Tolerances::default().pitch_cents),
        offset: None,
    };
    scores(reference, estimate, &c)
}

/// The matched pairs `(reference index, estimate index)` under `tol`, sorted by reference index
/// (mir_eval's `match_notes`).
pub fn match_notes(reference: &[Note], estimate: &[Note], tol: &Tolerances) -> Vec<(usize, usize)> {
    let c = Criteria {
        onset_s: Some(tol.onset_s),
        pitch_cents: Some(tol.pitch_cents),
        offset: tol.offset_ratio.map(|r| (r, tol.offset_min_s)),
    };
    matching(reference, estimate, &c)
}

fn scores(reference: &[Note], estimate: &[Note], c: &Criteria) -> NoteScores {
    let (n_ref, n_est) = (reference.len(), estimate.len());
    if n_ref == 0 || n_est == 0 {
        return NoteScores {
            n_ref,
            n_est,
            ..NoteScores::default()
        };
    }
    let m = matching(reference, estimate, c);
    let precision = m.len() as f64 / n_est as f64;
    let recall = m.len() as f64 / n_ref as f64;
    NoteScores {
        precision,
        recall,
        f1: f_measure(precision, recall),
        avg_overlap: average_overlap_ratio(reference, estimate, &m),
        n_ref,
        n_est,
        matched: m.len(),
    }
}

/// `util.f_measure` with beta = 1.
fn f_measure(precision: f64, recall: f64) -> f64 {
    if precision == 0.0 && recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// `np.around(x, 4)`: numpy scales, rounds half to even, and scales back.
fn round_distance(x: f64) -> f64 {
    let f = 10f64.powi(N_DECIMALS);
    (x * f).round_ties_even() / f
}

/// `transcription.average_overlap_ratio`.
fn average_overlap_ratio(reference: &[Note], estimate: &[Note], m: &[(usize, usize)]) -> f64 {
    if m.is_empty() {
        return 0.0;
    }
    let sum: f64 = m
        .iter()
        .map(|&(i, j)| {
            let (r, e) = (&reference[i], &estimate[j]);
            let span = r.end.max(e.end) - r.start.min(e.start);
            if span > 0.0 {
                (r.end.min(e.end) - r.start.max(e.start)) / span
            } else {
                1.0
            }
        })
        .sum();
    sum / m.len() as f64
}

fn is_hit(r: &Note, e: &Note, r_log2: f64, e_log2: f64, c: &Criteria) -> bool {
    if let Some(tol) = c.onset_s
        && round_distance((r.start - e.start).abs()) > tol
    {
        return false;
    }
    if let Some(tol) = c.pitch_cents
        && (1200.0 * (r_log2 - e_log2)).abs() > tol
    {
        return false;
    }
    if let Some((ratio, min_s)) = c.offset {
        // util.intervals_to_durations takes the absolute difference.
        let tol = (ratio * (r.end - r.start).abs()).max(min_s);
        if round_distance((r.end - e.end).abs()) > tol {
            return false;
        }
    }
    true
}

/// Builds mir_eval's graph (estimate -> its candidate references, estimates in order of first
/// appearance when scanning the hit matrix row by row) and matches it.
fn matching(reference: &[Note], estimate: &[Note], c: &Criteria) -> Vec<(usize, usize)> {
    let r_log2: Vec<f64> = reference.iter().map(|n| n.hz().log2()).collect();
    let e_log2: Vec<f64> = estimate.iter().map(|n| n.hz().log2()).collect();
    let mut slot: Vec<Option<usize>> = vec![None; estimate.len()];
    let mut est_of: Vec<usize> = Vec::new();
    let mut adj: Vec<Vec<usize>> = Vec::new();
    for (i, r) in reference.iter().enumerate() {
        for (j, e) in estimate.iter().enumerate() {
            if is_hit(r, e, r_log2[i], e_log2[j], c) {
                let u = *slot[j].get_or_insert_with(|| {
                    est_of.push(j);
                    adj.push(Vec::new());
                    adj.len() - 1
                });
                adj[u].push(i);
            }
        }
    }
    bipartite_match(&adj, reference.len())
        .into_iter()
        .enumerate()
        .filter_map(|(v, u)| u.map(|u| (v, est_of[u])))
        .collect()
}

/// A left vertex's place in the layered search of one phase (mir_eval's `pred` dict: absent, the
/// `unmatched` sentinel of the first layer, or the right vertex it was reached from).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pred {
    Absent,
    Root,
    From(usize),
}

/// Maximum-cardinality matching of a bipartite graph given as `adj[u]` = right vertices of left
/// vertex `u`; returns, for each right vertex, its left match.
///
/// A port of `mir_eval.util._bipartite_match` (Hopcroft–Karp after D. Eppstein's PADS), keeping
/// its greedy start and the order in which it visits vertices, so ties resolve identically.
fn bipartite_match(adj: &[Vec<usize>], n_right: usize) -> Vec<Option<usize>> {
    let mut matched: Vec<Option<usize>> = vec![None; n_right];
    // Greedy start.
    for (u, vs) in adj.iter().enumerate() {
        if let Some(&v) = vs.iter().find(|&&v| matched[v].is_none()) {
            matched[v] = Some(u);
        }
    }
    loop {
        // Layer the residual graph from the free left vertices.
        let mut preds: Vec<Option<Vec<usize>>> = vec![None; n_right];
        let mut unmatched: Vec<usize> = Vec::new();
        let mut pred = vec![Pred::Root; adj.len()];
        for u in matched.iter().flatten() {
            pred[*u] = Pred::Absent;
        }
        let mut layer: Vec<usize> = (0..adj.len()).filter(|&u| pred[u] == Pred::Root).collect();
        // Python's insertion-ordered `new_layer` dict: right vertices in order of discovery.
        let mut new_layer_pos: Vec<Option<usize>> = vec![None; n_right];
        while !layer.is_empty() && unmatched.is_empty() {
            let mut new_layer: Vec<(usize, Vec<usize>)> = Vec::new();
            for &u in &layer {
                for &v in &adj[u] {
                    if preds[v].is_none() {
                        let k = *new_layer_pos[v].get_or_insert_with(|| {
                            new_layer.push((v, Vec::new()));
                            new_layer.len() - 1
                        });
                        new_layer[k].1.push(u);
                    }
                }
            }
            layer.clear();
            for (v, us) in new_layer {
                new_layer_pos[v] = None;
                preds[v] = Some(us);
                if let Some(u) = matched[v] {
                    layer.push(u);
                    pred[u] = Pred::From(v);
                } else {
                    unmatched.push(v);
                }
            }
        }
        if unmatched.is_empty() {
            return matched;
        }
        for v in unmatched {
            augment(v, &mut preds, &mut pred, &mut matched);
        }
    }
}

/// mir_eval's `recurse`: searches back through the layers from `v` for an alternating path and
/// flips it.
fn augment(
    v: usize,
    preds: &mut [Option<Vec<usize>>],
    pred: &mut [Pred],
    matched: &mut [Option<usize>],
) -> bool {
    let Some(us) = preds[v].take() else {
        return false;
    };
    for u in us {
        let found = match std::mem::replace(&mut pred[u], Pred::Absent) {
            Pred::Absent => continue,
            Pred::Root => true,
            Pred::From(pu) => augment(pu, preds, pred, matched),
        };
        if found {
            matched[v] = Some(u);
            return true;
        }
    }
    false
}

/// All the scores of one file.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct FileScores {
    /// Onset + pitch (mir_eval `offset_ratio=None`).
    pub no_offset: NoteScores,
    /// Onset + pitch + offset (mir_eval defaults).
    pub with_offset: NoteScores,
    /// Onsets only, pitch ignored.
    pub onset: NoteScores,
}

/// Scores one estimate every way.
pub fn evaluate_all(reference: &[Note], estimate: &[Note]) -> FileScores {
    FileScores {
        no_offset: evaluate(reference, estimate, false),
        with_offset: evaluate(reference, estimate, true),
        onset: onset_scores(reference, estimate),
    }
}

/// Scores over several files: micro (matches and note counts summed, then divided) and macro
/// (the mean of the per-file scores).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Aggregate {
    pub files: usize,
    pub n_ref: usize,
    pub n_est: usize,
    pub matched: usize,
    pub micro_precision: f64,
    pub micro_recall: f64,
    pub micro_f1: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// Mean per-file average overlap ratio.
    pub macro_avg_overlap: f64,
}

impl Aggregate {
    pub fn of<'a>(files: impl IntoIterator<Item = &'a NoteScores>) -> Self {
        let mut a = Self::default();
        for s in files {
            a.files += 1;
            a.n_ref += s.n_ref;
            a.n_est += s.n_est;
            a.matched += s.matched;
            a.macro_precision += s.precision;
            a.macro_recall += s.recall;
            a.macro_f1 += s.f1;
            a.macro_avg_overlap += s.avg_overlap;
        }
        if a.files > 0 {
            let n = a.files as f64;
            a.macro_precision /= n;
            a.macro_recall /= n;
            a.macro_f1 /= n;
            a.macro_avg_overlap /= n;
        }
        if a.n_est > 0 {
            a.micro_precision = a.matched as f64 / a.n_est as f64;
        }
        if a.n_ref > 0 {
            a.micro_recall = a.matched as f64 / a.n_ref as f64;
        }
        a.micro_f1 = f_measure(a.micro_precision, a.micro_recall);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(start: f64, end: f64, midi: u8) -> Note {
        Note {
            midi,
            cents: 0.0,
            start,
            end,
            velocity: 100,
            confidence: 1.0,
        }
    }

    #[test]
    fn identical_lists_score_one() {
        let r = vec![n(0.0, 0.5, 60), n(0.5, 1.0, 62), n(0.5, 1.5, 67)];
        let s = evaluate(&r, &r, true);
        assert_eq!(
            (s.precision, s.recall, s.f1, s.avg_overlap),
            (1.0, 1.0, 1.0, 1.0)
        );
        assert_eq!(s.matched, 3);
    }

    #[test]
    fn empty_sides_score_zero() {
        let r = vec![n(0.0, 0.5, 60)];
        assert_eq!(evaluate(&r, &[], false).f1, 0.0);
        assert_eq!(evaluate(&[], &r, false).n_est, 1);
    }

    #[test]
    fn exactly_fifty_ms_matches_despite_float_noise() {
        // 0.35 - 0.3 is 0.04999999999999993 and 0.3 + 0.05 is not 0.35 either way: rounding to
        // 4 decimals makes both sides exactly 0.05.
        let r = vec![n(0.3, 1.0, 60)];
        let e = vec![n(0.35, 1.0, 60)];
        assert_eq!(evaluate(&r, &e, false).matched, 1);
        let e = vec![n(0.3501, 1.0, 60)];
        assert_eq!(evaluate(&r, &e, false).matched, 0);
    }

    #[test]
    fn matching_is_maximum_not_greedy() {
        // Greedy in order would give est 0 to ref 0 and leave ref 1 unmatched.
        let r = vec![n(0.00, 1.0, 60), n(0.06, 1.0, 60)];
        let e = vec![n(0.03, 1.0, 60), n(0.0, 1.0, 60)];
        assert_eq!(evaluate(&r, &e, false).matched, 2);
        // A chain that needs an augmenting path of length 5.
        let r = vec![n(0.0, 1.0, 60), n(0.08, 1.0, 60), n(0.16, 1.0, 60)];
        let e = vec![n(0.04, 1.0, 60), n(0.12, 1.0, 60), n(0.0, 1.0, 60)];
        assert_eq!(evaluate(&r, &e, false).matched, 3);
    }

    #[test]
    fn aggregate_micro_and_macro() {
        let a = NoteScores {
            precision: 1.0,
            recall: 0.5,
            f1: 2.0 / 3.0,
            n_ref: 4,
            n_est: 2,
            matched: 2,
            ..Default::default()
        };
        let b = NoteScores {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
            n_ref: 1,
            n_est: 3,
            matched: 0,
            ..Default::default()
        };
        let g = Aggregate::of([&a, &b]);
        assert_eq!((g.files, g.n_ref, g.n_est, g.matched), (2, 5, 5, 2));
        assert!((g.micro_f1 - 0.4).abs() < 1e-12);
        assert!((g.macro_f1 - 1.0 / 3.0).abs() < 1e-12);
    }

    /// One case of `tests/fixtures/notes_eval/cases.json`: notes as `[start, end, midi, cents]`
    /// and mir_eval's scores.
    #[derive(Debug, serde::Deserialize)]
    struct Case {
        name: String,
        reference: Vec<(f64, f64, u8, f32)>,
        estimate: Vec<(f64, f64, u8, f32)>,
        /// precision, recall, f1, avg_overlap
        no_offset: [f64; 4],
        with_offset: [f64; 4],
        /// precision, recall, f1
        onset: [f64; 3],
        offset: [f64; 3],
    }

    fn notes(v: &[(f64, f64, u8, f32)]) -> Vec<Note> {
        v.iter()
            .map(|&(start, end, midi, cents)| Note {
                midi,
                cents,
                start,
                end,
                velocity: 100,
                confidence: 1.0,
            })
            .collect()
    }

    #[test]
    fn agrees_with_mir_eval() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/notes_eval/cases.json");
        let text = std::fs::read_to_string(&path).expect("fixture present");
        let cases: Vec<Case> = serde_json::from_str(&text).expect("fixture parses");
        assert!(cases.len() >= 20, "only {} cases", cases.len());
        let mut worst = 0f64;
        for c in &cases {
            let (r, e) = (notes(&c.reference), notes(&c.estimate));
            let check = |what: &str, got: &[f64], want: &[f64]| -> f64 {
                let mut d = 0f64;
                for (g, w) in got.iter().zip(want) {
                    d = d.max((g - w).abs());
                }
                assert!(
                    d <= 1e-6,
                    "{} {what}: got {got:?}, mir_eval {want:?}",
                    c.name
                );
                d
            };
            let s = evaluate(&r, &e, false);
            worst = worst.max(check(
                "no offset",
                &[s.precision, s.recall, s.f1, s.avg_overlap],
                &c.no_offset,
            ));
            let s = evaluate(&r, &e, true);
            worst = worst.max(check(
                "with offset",
                &[s.precision, s.recall, s.f1, s.avg_overlap],
                &c.with_offset,
            ));
            let s = onset_scores(&r, &e);
            worst = worst.max(check("onset", &[s.precision, s.recall, s.f1], &c.onset));
            let s = offset_scores(&r, &e);
            worst = worst.max(check("offset", &[s.precision, s.recall, s.f1], &c.offset));
        }
        eprintln!(
            "{} mir_eval cases agree; largest difference {worst:e}",
            cases.len()
        );
    }
}
