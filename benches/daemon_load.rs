//! Whole-daemon cost: spawns the release `harkd` on a real-time file source with the VAD stage,
//! samples its CPU time (/proc/PID/stat) and peak RSS (VmHWM) over a window, prints a table.
//!
//!     cargo bench --bench daemon_load            # 60 s window (the acceptance measurement)
//!     HARK_LOAD_SECS=20 cargo bench --bench daemon_load
//!
//! Targets: <= 2% of one core and <= 50 MB RSS.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" of the command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_harkd"))
        .args(["run", "--config"])
        .arg(&config)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--source")
        .arg(format!("file:{}", file.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn harkd");
    let pid = child.id();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::thread::sleep(Duration::from_secs(2)); // startup is not steady state
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid).expect("harkd is running");
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = cpu_ticks(pid).expect("harkd died during the measurement");
    let wall = t0.elapsed().as_secs_f64();
    let rss = status_kb(pid, "VmRSS:").unwrap_or(0);
    let hwm = status_kb(pid, "VmHWM:").unwrap_or(0);
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let cpu_s = (c1 - c0) as f64 / hz;
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
