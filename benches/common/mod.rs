//! What the whole-daemon benches share: starting the release `harkd` and reading its CPU time
//! and memory from /proc.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

/// Starts `harkd run` with `config`, listening on the Unix socket `sock`, reading `file` at
/// real-time pace; warnings (or what `HARK_BENCH_LOG` selects, in `RUST_LOG` syntax) go to the
/// bench's stderr.
pub fn spawn_harkd(config: &Path, sock: &Path, file: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_harkd"))
        .args(["run", "--config"])
        .arg(config)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--source")
        .arg(format!("file:{}", file.display()))
        .env(
            "RUST_LOG",
            std::env::var("HARK_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn harkd")
}

/// User + system CPU time of process `pid`, seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" of the command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks as f64 / hz)
}

/// A `/proc/PID/status` field in kB (`VmRSS:`, `VmHWM:`).
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
