//! Transcribes audio files with hark's Basic Pitch port and writes the notes as TSV
//! (`onset_s offset_s midi velocity`), one file per input, for comparison with the Python
//! package (benches/notes_poly_peer.py). Prints the compute time and real-time factor.
//!
//! cargo run --release --example basic_pitch_notes -- OUT_DIR FILE...
//! (RAYON_NUM_THREADS=1 for a single thread.)

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use hark::nn::basic_pitch::BasicPitch;
use hark::notes::poly::{PolyParams, transcribe_poly};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out_dir, files) = args
        .split_first()
        .context("usage: basic_pitch_notes OUT_DIR FILE...")?;
    let dir = hark::models::find("notes", "basic-pitch", None)?;
    let model = Arc::new(BasicPitch::load(&dir)?);
    std::fs::create_dir_all(out_dir)?;
    let (mut total_audio, mut total_compute) = (0.0, 0.0);
    for file in files {
        let audio = hark::audio::file::decode_file_16k(Path::new(file))
            .with_context(|| format!("decoding {file}"))?;
        let seconds = audio.len() as f64 / 16_000.0;
        let started = Instant::now();
        let notes = transcribe_poly(&audio, &model, PolyParams::default())?;
        let compute = started.elapsed().as_secs_f64();
        total_audio += seconds;
        total_compute += compute;
        let stem = Path::new(file)
            .file_stem()
            .map_or_else(|| "out".into(), |s| s.to_string_lossy().into_owned());
        let path = Path::new(out_dir).join(format!("{stem}.tsv"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        writeln!(f, "onset_s\toffset_s\tmidi\tvelocity")?;
        for n in &notes {
            writeln!(
                f,
                "{:.4}\t{:.4}\t{}\t{}",
                n.start, n.end, n.midi, n.velocity
            )?;
        }
        eprintln!(
            "{stem}: {} notes, {seconds:.1} s audio, {compute:.2} s compute, RTF {:.3}",
            notes.len(),
            compute / seconds
        );
    }
    eprintln!(
        "total: {total_audio:.1} s audio, {total_compute:.2} s compute, RTF {:.3} ({} rayon threads)",
        total_compute / total_audio.max(1e-9),
        rayon::current_num_threads()
    );
    Ok(())
}
