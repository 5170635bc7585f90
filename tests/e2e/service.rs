//! Service integration: systemd notify protocol, TLS + bearer token on non-loopback TCP, metrics.

use std::{os::unix::net::UnixDatagram, time::Duration};

use crate::harness::{Daemon, repo};
use hark::api::{client::ConnectOptions, pb};

#[test]
fn systemd_ready_only_after_audio_flows_then_watchdog_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let src = format!("file:{}", repo().join("tests/fixtures/jfk.flac").display());
    let notify = sock_path.display().to_string();
    let daemon = Daemon::start_env(
        &["--source", &src],
        None,
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "1000000")],
    );
    let mut msgs: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        if msgs.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3
            && msgs.iter().any(|m| m.starts_with("STATUS="))
        {
            break;
        }
    }
    let ready = msgs.iter().position(|m| m.contains("READY=1"));
    assert!(
        ready.is_some(),
        "no READY=1 in {msgs:?}\n{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    // READY is logged after the "ready" decision, which requires every stage to have seen audio.
    assert!(
        log.contains("Audio is flowing through every stage"),
        "{log}"
    );
    assert!(
        msgs.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{msgs:?}"
    );
    let status = msgs
        .iter()
        .find(|m| m.starts_with("STATUS="))
        .expect("STATUS line");
    assert!(status.contains("file:"), "{status}");
}

fn openssl_cert(dir: &std::path::Path) -> Option<()> {
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            // A leaf, not a CA: rustls refuses a CA certificate as the server's own.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .ok()?
        .status
        .success();
    ok.then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_tcp_requires_tls_and_a_token() {
    // Refused without TLS and a token.
    let out = std::process::Command::new(crate::harness::harkd())
        .args(["run", "--source", "none", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));

    let certs = tempfile::tempdir().unwrap();
    if openssl_cert(certs.path()).is_none() {
        eprintln!("SKIP: openssl is not available to make a test certificate");
        return;
    }
    std::fs::write(certs.path().join("token"), "s3cret-token\n").unwrap();
    let config = format!(
        "[server]\nlisten = [\"0.0.0.0:0\"]\ntls_cert = \"{0}/cert.pem\"\ntls_key = \"{0}/key.pem\"\ntoken_file = \"{0}/token\"\n",
        certs.path().display()
    );
    let cfg_path = certs.path().join("harkd.toml");
    std::fs::write(&cfg_path, config).unwrap();
    let daemon = Daemon::start_raw(&["--source", "none", "--config", cfg_path.to_str().unwrap()]);
    let port = daemon.addr.rsplit(':').next().unwrap().to_string();
    let addr = format!("127.0.0.1:{port}");
    let ca = std::fs::read(certs.path().join("cert.pem")).unwrap();
    let opts = |token: Option<&str>| ConnectOptions {
        token: token.map(str::to_string),
        ca_pem: Some(ca.clone()),
        tls_domain: Some("localhost".into()),
        window_bytes: None,
    };
    let mut good = hark::api::client::connect(&addr, &opts(Some("s3cret-token")))
        .await
        .unwrap();
    good.get_status(pb::GetStatusRequest {}).await.unwrap();
    let mut wrong = hark::api::client::connect(&addr, &opts(Some("guess")))
        .await
        .unwrap();
    let err = wrong.get_status(pb::GetStatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut none = hark::api::client::connect(&addr, &opts(None))
        .await
        .unwrap();
    let err = none.get_status(pb::GetStatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // Plain text to a TLS port does not get through.
    let plain = hark::api::client::connect(&addr, &ConnectOptions::default()).await;
    if let Ok(mut c) = plain {
        assert!(c.get_status(pb::GetStatusRequest {}).await.is_err());
    }
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let src = format!("file:{}", repo().join("tests/fixtures/jfk.flac").display());
    let config = format!("[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n");
    let _daemon = Daemon::start(&["--source", &src, "--fast"], Some(&config));
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read as _, Write as _};
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            body.clear();
            s.read_to_string(&mut body).unwrap();
            if body.contains("hark_events_total{kind=\"source_ended\"}") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(body.contains("200 OK"), "{body}");
    assert!(body.contains("hark_samples_total 176000"), "{body}");
    assert!(
        body.contains("hark_stage_windows_total{stage=\"vad\"}"),
        "{body}"
    );
}
