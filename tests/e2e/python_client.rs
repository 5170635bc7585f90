//! examples/python against the real daemon with the stock grpcio package: grpcio sends the Unix
//! socket path as `:authority` (h2 alone would reset every stream), and the example must work
//! with no channel options. Skips with a message when python3 lacks grpcio/grpcio-tools or the
//! tiny.en model is absent.

use std::process::Command;

use crate::harness::{Daemon, repo};

fn python_has_grpc() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_example_works_on_the_unix_socket() {
    if !python_has_grpc() {
        eprintln!(
            "SKIP: python3 with grpcio and grpcio-tools is absent \
             (pip install -r examples/python/requirements.txt)"
        );
        return;
    }
    let model = hark::models::default_models_dir().join("tiny.en/model.safetensors");
    if !model.is_file() {
        eprintln!("SKIP: no tiny.en model at {}", model.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let jfk = repo().join("tests/fixtures/jfk.flac");
    let config = format!(
        "[transcribe]\nenabled = \"on\"\n[store]\npath = \"{}\"\n",
        dir.path().join("t.db").display()
    );
    let daemon = Daemon::start(
        &["--source", &format!("file:{}", jfk.display()), "--level"],
        Some(&config),
    );
    assert!(daemon.addr.starts_with("unix:"), "{}", daemon.addr);
    let out = Command::new("python3")
        .arg(repo().join("examples/python/test_client.py"))
        .arg(&daemon.addr)
        .arg(&jfk)
        .args(["--expect", "fellow americans", "--min-events", "1"])
        .args(["--duration", "3", "--timeout", "120"])
        // Generated stubs go to the test's directory, not the user's cache.
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "test_client.py failed:\n{stdout}\n{stderr}\nharkd log:\n{}",
        daemon.log_text()
    );
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
}
