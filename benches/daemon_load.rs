//! Whole-daemon cost: spawns the release `harkd` on a real-time file source with the VAD stage,
//! samples its CPU time (/proc/PID/stat) and peak RSS (VmHWM) over a window, prints a table.
//!
//!     cargo bench --bench daemon_load            # 60 s window (the acceptance measurement)
//!     HARK_LOAD_SECS=20 cargo bench --bench daemon_load
//!
//! Targets: <= 2% of one core and <= 50 MB RSS.

mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

fn main() {
    // criterion-style args (e.g. --bench) are ignored.
    let secs: u64 = std::env::var("HARK_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let long = repo.join("../shared/data/speech/longform/lj001_0001-0016.flac");
    let file = if long.is_file() {
        long
    } else {
        eprintln!(
            "../shared/data absent: using the bundled 11 s jfk clip (loops are not supported)"
        );
        repo.join("tests/fixtures/jfk.flac")
    };
    let dir = std::env::temp_dir().join(format!("hark-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("harkd.sock");
    // The VAD stage alone (the always-on budget); Whisper is measured by benches/whisper.rs.
    let config = dir.join("harkd.toml");
    std::fs::write(
        &config,
        "[transcribe]\nenabled = \"off\"\n[store]\nenabled = false\n",
    )
    .expect("write config");
    let mut child = common::spawn_harkd(&config, &sock, &file);
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(2)); // startup is not steady state
    let t0 = Instant::now();
    let c0 = common::cpu_seconds(pid).expect("harkd is running");
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = common::cpu_seconds(pid).expect("harkd died during the measurement");
    let wall = t0.elapsed().as_secs_f64();
    let rss = common::status_kb(pid, "VmRSS:").unwrap_or(0);
    let hwm = common::status_kb(pid, "VmHWM:").unwrap_or(0);
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let cpu_s = c1 - c0;
    println!("| measurement | value | target |");
    println!("|---|---|---|");
    println!("| window | {wall:.1} s real-time file input, VAD stage | |");
    println!(
        "| CPU | {:.2}% of one core ({cpu_s:.2} s CPU) | <= 2% |",
        100.0 * cpu_s / wall
    );
    println!(
        "| RSS now / peak | {:.1} MB / {:.1} MB | <= 50 MB |",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
