//! Fleet end to end with a real `nats-server -js` (Debian's package; `.ci/run` installs it): event
//! export survives a 10 s server outage without losing or reordering an event; a worker killed
//! mid-job has its job finished by another, with exactly one result; `hark batch` transcribes a
//! folder and a rerun skips what is done. Skips with a message when nats-server is missing.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use hark::{
    api::pb,
    fleet::queue::{self, Queue},
};
use prost::Message as _;

use crate::harness::{self, Daemon, JFK, normalise, repo, shared_data, tiny_en, write_wav};

/// A child process whose stderr is collected, so a test can wait for a log line.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Proc { child, log }
    }

    /// The first log line containing `needle` (waits up to `limit`; panics on exit or time).
    fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("exited ({s}) before logging {needle:?}:\n{}", self.text());
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {limit:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `nats-server -js` on a loopback port it picks itself, storing in a temporary directory.
pub struct NatsServer {
    proc: Option<Proc>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// None (with a SKIP message) when nats-server is not installed.
    pub fn start() -> Option<NatsServer> {
        if Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIP: nats-server is not installed (apt-get install nats-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // Port -1: the server picks a free one and logs it (no race for a port we chose).
        let mut proc = Self::spawn(dir.path(), -1);
        let line = proc.wait_for(
            "Listening for client connections on",
            Duration::from_secs(20),
        );
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        proc.wait_for("Server is ready", Duration::from_secs(20));
        Some(NatsServer {
            proc: Some(proc),
            port,
            dir,
        })
    }

    fn spawn(store: &Path, port: i32) -> Proc {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store);
        Proc::spawn(cmd)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// Starts again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.stop();
        let mut proc = Self::spawn(self.dir.path(), i32::from(self.port));
        proc.wait_for("Server is ready", Duration::from_secs(20));
        self.proc = Some(proc);
    }
}

async fn queue(url: &str) -> Queue {
    let client = hark::fleet::connect(url, "e2e", Duration::from_secs(10))
        .await
        .expect("connect");
    Queue::open(client).await.expect("queue")
}

/// Every message of `stream` on `subject`, in stream order.
async fn read_stream(
    url: &str,
    stream: &str,
    subject: &str,
) -> Vec<async_nats::jetstream::Message> {
    use async_nats::jetstream::consumer;
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let s = js.get_stream(stream).await.unwrap();
    let total = s.get_info().await.unwrap().state.messages;
    let c = s
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = c.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < total as usize {
        match tokio::time::timeout(Duration::from_secs(3), msgs.next()).await {
            Ok(Some(Ok(m))) => out.push(m),
            _ => break,
        }
    }
    out
}

fn worker(url: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(harness::harkd());
    cmd.args(["worker", "--nats", url])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("HARK_AUTO_FETCH", "0");
    Proc::spawn(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_jetstream_in_order_across_a_10_s_server_outage() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    // 22 s of real-time audio with the level meter: ~10 events a second, so ~100 are
    // published while the server is down.
    let jfk = harness::load_16k(&repo().join("tests/fixtures/jfk.flac"));
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("twice.wav");
    write_wav(&wav, &[jfk.clone(), jfk].concat());
    let config = format!(
        "[export.nats]\nenabled = true\nurl = \"{}\"\nnode = \"e2e\"\nack_timeout_ms = 1000\n",
        nats.url()
    );
    let source = format!("file:{}", wav.display());
    let daemon = Daemon::start(&["--source", &source, "--level"], Some(&config));
    let mut client = daemon.client().await;
    let (s, _) = harness::poll_status(&mut client, Duration::from_secs(20), |s| {
        s.export
            .as_ref()
            .is_some_and(|x| x.connected && x.published > 10)
    })
    .await;
    let x = s.export.clone().expect("export status");
    assert!(
        x.connected && x.published > 10,
        "{x:?}\n{}",
        daemon.log_text()
    );
    assert_eq!(x.node, "e2e");

    nats.stop();
    let down = Instant::now();
    let (s, _) = harness::poll_status(&mut client, Duration::from_secs(8), |s| {
        s.export
            .as_ref()
            .is_some_and(|x| !x.connected && x.spooled_events > 20)
    })
    .await;
    let x = s.export.clone().unwrap();
    assert!(!x.connected && x.spooled_events > 20, "{x:?}");
    assert!(x.lag_s > 0.5, "lag not reported: {x:?}");
    let sleep = Duration::from_secs(10).saturating_sub(down.elapsed());
    tokio::time::sleep(sleep).await;
    let spooled_at_restart = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .export
        .unwrap()
        .spooled_events;
    nats.restart();

    // The file ends, the spool drains, nothing is left behind.
    let (s, took) = harness::poll_status(&mut client, Duration::from_secs(60), |s| {
        let total: u64 = s.event_counts.values().sum();
        s.event_counts.contains_key("source_ended")
            && s.export
                .as_ref()
                .is_some_and(|x| x.connected && x.spooled_events == 0 && x.published == total)
    })
    .await;
    let x = s.export.clone().unwrap();
    assert!(
        x.connected && x.spooled_events == 0,
        "spool not drained after {took:?}: {x:?}\n{}",
        daemon.log_text()
    );
    assert_eq!(x.dropped, 0, "{x:?}");
    let total: u64 = s.event_counts.values().sum();
    assert_eq!(x.published, total, "published vs events on the bus: {x:?}");

    let msgs = read_stream(&nats.url(), "HARK_EVENTS", "hark.e2e.*.*").await;
    let events: Vec<pb::Event> = msgs
        .iter()
        .map(|m| {
            assert_eq!(
                m.headers
                    .as_ref()
                    .and_then(|h| h.get("Content-Type"))
                    .map(|v| v.as_str()),
                Some("application/x-protobuf; messageType=hark.v1.Event")
            );
            pb::Event::decode(m.payload.clone()).expect("a hark.v1.Event")
        })
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "stream order must be event order, with no event missing or doubled"
    );
    // Subjects name node, stream and kind.
    let first_level = msgs
        .iter()
        .zip(&events)
        .find(|(_, e)| matches!(e.kind, Some(pb::event::Kind::Level(_))))
        .expect("level events");
    assert_eq!(first_level.0.subject.as_str(), "hark.e2e.main.level");
    eprintln!(
        "fleet export: {total} events, {spooled_at_restart} spooled during the 10 s outage, \
         drained {took:?} after the restart"
    );
}

/// The longest recording in the shared set (1.8 min): long enough to kill a worker mid-job.
fn longform() -> Option<PathBuf> {
    shared_data().map(|d| d.join("speech/longform/lj001_0001-0016.flac"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_has_its_job_finished_by_another_once() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (Some(audio_path), true) = (longform(), tiny_en()) else {
        return;
    };
    let url = nats.url();
    let mut a = worker(&url, &["--ack-wait", "3"]);
    a.wait_for("Worker ready", Duration::from_secs(60));

    let q = queue(&url).await;
    let audio = std::fs::read(&audio_path).unwrap();
    let object = queue::audio_object_name(&audio);
    q.upload(&object, &audio).await.unwrap();
    let options = pb::TranscribeRequest::default();
    let id = queue::job_id(&object, &options);
    q.submit(&pb::BatchJob {
        job_id: id.clone(),
        object,
        options: Some(options),
        name: "longform.flac".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    a.wait_for("Job started", Duration::from_secs(30));
    // Let it get into the decode, then kill it without a chance to nak.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal(libc::SIGKILL);
    let killed = Instant::now();
    assert!(
        q.result(&id).await.unwrap().is_none(),
        "the job finished before the kill; it is too short for this test"
    );

    let mut b = worker(&url, &["--ack-wait", "3"]);
    b.wait_for("Worker ready", Duration::from_secs(60));
    let done = b.wait_for("Job done", Duration::from_secs(180));
    eprintln!(
        "redelivered and finished {:?} after the kill: {done}",
        killed.elapsed()
    );
    let r = q.result(&id).await.unwrap().expect("a result");
    assert!(r.error.is_empty(), "{r:?}");
    assert!(r.delivery >= 2, "delivered {} times", r.delivery);
    assert!(
        r.worker.ends_with(&format!("/{}", b.child.id())),
        "finished by {}",
        r.worker
    );
    let text = normalise(&r.response.as_ref().unwrap().text);
    assert!(text.contains("printing in the only sense"), "{text}");
    // Past another ack_wait: no second delivery, no second result, and the queue is empty.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let msgs = read_stream(&url, queue::RESULTS_STREAM, &queue::result_subject(&id)).await;
    assert_eq!(msgs.len(), 1, "exactly one result per job");
    let mut jobs = q.jobs.clone();
    assert_eq!(
        jobs.info().await.unwrap().state.messages,
        0,
        "the job was acked"
    );
    assert_eq!(b.text().matches("Job started").count(), 1, "{}", b.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hark_batch_transcribes_a_folder_and_a_rerun_skips_finished_jobs() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (Some(data), true) = (shared_data(), tiny_en()) else {
        return;
    };
    let url = nats.url();
    let mut w = worker(&url, &[]);
    w.wait_for("Worker ready", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&input).unwrap();
    for f in [
        "misc/jfk.flac",
        "misc/goforward.flac",
        "ljspeech/LJ001-0002.flac",
    ] {
        let src = data.join("speech").join(f);
        std::fs::copy(&src, input.join(src.file_name().unwrap())).unwrap();
    }
    let batch = || {
        let t = Instant::now();
        let o = Command::new(harness::hark_cli())
            .arg("batch")
            .arg(&input)
            .args([
                "--nats",
                &url,
                "--format",
                "srt",
                "--timeout",
                "300",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        (stdout, t.elapsed())
    };
    let (first, took) = batch();
    assert!(
        first.contains("3 recordings: 3 transcribed now, 0 already done"),
        "{first}"
    );
    let srt = std::fs::read_to_string(out.join("jfk.srt")).unwrap();
    assert!(srt.starts_with("1\n00:00:00,"), "{srt}");
    let text: String = srt
        .lines()
        .filter(|l| !l.contains("-->") && l.parse::<u32>().is_err())
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(normalise(&text), JFK);
    for f in ["goforward.srt", "LJ001-0002.srt"] {
        assert!(
            std::fs::metadata(out.join(f)).unwrap().len() > 10,
            "{f} is empty"
        );
    }
    // Rerun: nothing is submitted, the outputs are written again from the stored results.
    std::fs::remove_file(out.join("jfk.srt")).unwrap();
    let (second, took2) = batch();
    assert!(
        second.contains("3 recordings: 0 transcribed now, 3 already done (skipped)"),
        "{second}"
    );
    assert!(out.join("jfk.srt").is_file());
    assert_eq!(w.text().matches("Job started").count(), 3, "{}", w.text());
    let q = queue(&url).await;
    let mut results = q.results.clone();
    assert_eq!(results.info().await.unwrap().state.messages, 3);
    eprintln!("hark batch: 3 files in {took:?}; rerun in {took2:?}");
}
