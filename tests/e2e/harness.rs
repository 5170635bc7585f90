//! Spawns the real `harkd` binary, waits for `listening on ADDR` (with crash detection) and
//! terminates it on drop.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hark::api::client::{Client, ConnectOptions, connect};

pub struct Daemon {
    child: Child,
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

pub fn harkd() -> &'static str {
    env!("CARGO_BIN_EXE_harkd")
}

pub fn hark_cli() -> &'static str {
    env!("CARGO_BIN_EXE_hark")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data`, or None (tests that need it skip with a message).
pub fn shared_data() -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("SKIP: ../shared/data is absent; this test needs the shared audio set");
        None
    }
}

impl Daemon {
    /// Starts `harkd run` on a fresh Unix socket with `args` and an optional config body.
    pub fn start(args: &[&str], config: Option<&str>) -> Daemon {
        Self::start_env(args, config, &[])
    }

    /// As [`start`](Self::start), with extra environment variables.
    pub fn start_env(args: &[&str], config: Option<&str>, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("harkd.sock");
        let listen = format!("unix:{}", sock.display());
        let mut cmd = Command::new(harkd());
        cmd.arg("run").arg("--listen").arg(&listen).args(args);
        // No model downloads from tests unless one asks (`env` may turn it back on).
        cmd.env("HARK_AUTO_FETCH", "0");
        cmd.envs(env.iter().copied());
        let wants_asr = config.is_some_and(|c| c.contains("[transcribe]") || c.contains("[tts]"));
        if let Some(body) = config {
            let path = dir.path().join("harkd.toml");
            std::fs::write(&path, body).expect("write config");
            cmd.arg("--config").arg(path);
        }
        if !wants_asr {
            // Keep Whisper out of plumbing tests: `auto` finds no model and stays off.
            cmd.env("HARK_MODELS", dir.path().join("no-models"));
        }
        if !config
            .is_some_and(|c| c.contains("[sound]") || c.contains("[wake]") || c.contains("[notes]"))
        {
            // Likewise the bundled sound, wake and notes models (models/ in the source tree).
            cmd.env("HARK_BUNDLED_MODELS", dir.path().join("no-models"));
        }
        Self::spawn(cmd, dir)
    }

    /// Starts with an explicit listen address given in `args` (e.g. TCP port 0). `{dir}` in an
    /// argument is replaced by the daemon's temporary directory.
    pub fn start_raw(args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let mut cmd = Command::new(harkd());
        cmd.arg("run")
            .args(args.iter().map(|a| a.replace("{dir}", &d)))
            .env("HARK_AUTO_FETCH", "0")
            .env("HARK_MODELS", dir.path().join("no-models"))
            .env("HARK_BUNDLED_MODELS", dir.path().join("no-models"));
        Self::spawn(cmd, dir)
    }

    fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Daemon {
        // The transcript store goes in the test's directory, never the user's.
        cmd.env("STATE_DIRECTORY", dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn harkd");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on ") {
                    let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
                }
                log2.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                return Daemon {
                    child,
                    addr,
                    log,
                    _dir: dir,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "harkd exited during startup ({status}):\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "harkd did not start listening in time"
            );
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.addr, &ConnectOptions::default())
            .await
            .expect("connect to harkd")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for exit, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything harkd logged so far (for assertion messages).
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            self.signal(libc::SIGTERM);
            if self.wait(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Writes 16 kHz mono 16-bit WAV.
pub fn write_wav(path: &Path, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create wav");
    for &s in samples {
        w.write_sample((s * 32767.0).clamp(-32768.0, 32767.0) as i16)
            .expect("write sample");
    }
    w.finalize().expect("finalize wav");
}

/// Decodes a file to 16 kHz mono (asserting the shared set's format).
pub fn load_16k(path: &Path) -> Vec<f32> {
    let d = hark::audio::file::decode_file(path).expect("decode");
    assert_eq!(d.format.rate, 16_000, "{}", path.display());
    assert_eq!(d.format.channels, 1, "{}", path.display());
    d.samples
}

/// The JFK fixture's words, normalised.
pub const JFK: &str = "and so my fellow americans ask not what your country can do for you ask what you can do for your country";

/// Lower case, punctuation to spaces, single spaces (for comparing transcripts).
pub fn normalise(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when the tiny.en model is installed; otherwise says why the test skips.
pub fn tiny_en() -> bool {
    let ok = hark::models::default_models_dir()
        .join("tiny.en/model.safetensors")
        .is_file();
    if !ok {
        eprintln!("SKIP: no tiny.en model (run `harkd models fetch tiny.en`)");
    }
    ok
}

/// Polls GetStatus every 100 ms until `done` holds or `limit` passes; returns the last status
/// and how long it took (the caller asserts on them).
pub async fn poll_status(
    client: &mut Client,
    limit: Duration,
    done: impl Fn(&hark::api::pb::DaemonStatus) -> bool,
) -> (hark::api::pb::DaemonStatus, Duration) {
    let t = Instant::now();
    loop {
        let s = client
            .get_status(hark::api::pb::GetStatusRequest {})
            .await
            .expect("GetStatus")
            .into_inner();
        if done(&s) || t.elapsed() >= limit {
            return (s, t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
