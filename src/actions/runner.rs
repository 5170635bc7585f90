//! Runs an action's program: argv as configured (no shell, so nothing in a transcript is ever
//! interpreted), stdin closed, as the daemon's user, killed after its timeout, stdout and stderr
//! logged (first 4 KiB each). At most `max_running` programs at once.

use std::{
    io::Read,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::Match;

/// Bytes of each output stream kept for the log.
const LOG_BYTES: usize = 4096;

/// Starts programs on their own threads and counts them.
#[derive(Debug)]
pub struct Runner {
    max: usize,
    running: Arc<AtomicUsize>,
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Exit code; `None` when killed by a signal or the timeout.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Runner {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            running: Arc::default(),
        }
    }

    /// Starts `m.argv` in the background; false (and a warning) when too many are running or
    /// the thread could not start.
    pub fn start(&self, m: &Match) -> bool {
        if self.running.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.running.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(id = %m.id, max = self.max, "Action not run: too many programs running.");
            return false;
        }
        let running = self.running.clone();
        let (id, argv) = (m.id.clone(), m.argv.clone());
        let timeout = Duration::from_secs_f32(m.timeout_s);
        let spawned = std::thread::Builder::new()
            .name(format!("action-{id}"))
            .spawn(move || {
                match run(&argv, timeout) {
                    Ok(o) => tracing::info!(
                        id = %id, code = ?o.code, timed_out = o.timed_out,
                        stdout = %o.stdout.trim_end(), stderr = %o.stderr.trim_end(),
                        "Action program finished."
                    ),
                    Err(e) => tracing::warn!(id = %id, program = %argv[0], "Action program failed to start: {e}"),
                }
                running.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// Runs `argv` to completion or `timeout` (then kills it), collecting its output.
pub fn run(argv: &[String], timeout: Duration) -> std::io::Result<Outcome> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty argv"))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Readers on their own threads so a chatty program cannot block on a full pipe.
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut r) = r {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let room = LOG_BYTES.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let (status, timed_out) = loop {
        if let Some(s) = child.try_wait()? {
            break (Some(s), false);
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Outcome {
        code: status.and_then(|s| s.code()),
        timed_out,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_never_interpreted_by_a_shell() {
        let evil = "; touch /tmp/hark-pwned $(reboot) | && >".to_string();
        let o = run(&["/bin/echo".into(), evil.clone()], Duration::from_secs(10)).unwrap();
        assert_eq!(o.stdout.trim_end(), evil);
        assert_eq!(o.code, Some(0));
        assert!(!std::path::Path::new("/tmp/hark-pwned").exists());
    }

    #[test]
    fn a_slow_program_is_killed_at_its_timeout() {
        let t = Instant::now();
        let o = run(
            &["/bin/sleep".into(), "30".into()],
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(o.timed_out && o.code.is_none());
        assert!(t.elapsed() < Duration::from_secs(20));
        assert!(run(&["/nonexistent/prog".into()], Duration::from_secs(1)).is_err());
    }
}
