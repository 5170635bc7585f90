//! Fleet: batch transcription throughput on the JetStream work queue with 1, 2 and 4 `harkd
//! worker` processes on this machine, and the queue's own cost per job.
//!
//! - **Throughput**: a ~30-minute batch (`HARK_FLEET_BATCH_S`, default 1800) of recordings made
//!   from ../shared/data/speech (every utterance and the long-form reading, concatenated in a
//!   different order per file with short pauses, so every file is a distinct job), submitted by
//!   `hark batch` (upload included) to a fresh `nats-server -js`; audio seconds per wall second.
//! - **Per-job overhead**: one worker, jobs submitted one at a time; round trip (submit until
//!   the result arrives) minus the worker's own transcription time (`processing_s`): the object
//!   store download, dispatch, result publish and acks. With many machines this is what each
//!   job costs beyond its transcription.
//!
//! `cargo bench --profile dev --bench fleet` (needs nats-server, tiny.en, ../shared/data).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use hark::{api::pb, fleet::queue};

const RATE: usize = 16_000;

struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Proc { child, log }
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!(
                    "exited ({s}) before {needle:?}:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
            assert!(Instant::now() < deadline, "no {needle:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
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

/// A fresh `nats-server -js` on a port it picks; returns it with its URL.
fn nats(store: &Path) -> (Proc, String) {
    let mut cmd = Command::new("nats-server");
    cmd.args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(store);
    let mut p = Proc::spawn(cmd);
    let line = p.wait_for("Listening for client connections on");
    let port = line.rsplit(':').next().unwrap().trim().to_string();
    p.wait_for("Server is ready");
    (p, format!("nats://127.0.0.1:{port}"))
}

fn workers(url: &str, n: usize) -> Vec<Proc> {
    let mut ws: Vec<Proc> = (0..n)
        .map(|_| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_harkd"));
            cmd.args(["worker", "--nats", url])
                .env("RUST_LOG", "info")
                .env("HARK_AUTO_FETCH", "0");
            Proc::spawn(cmd)
        })
        .collect();
    for w in &mut ws {
        w.wait_for("Worker ready");
    }
    ws
}

fn write_wav(path: &Path, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE as u32,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample((s * 32767.0).clamp(-32768.0, 32767.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

/// Writes recordings of ~`file_s` seconds adding up to ~`total_s` into `dir`; returns the
/// audio seconds written.
fn make_batch(data: &Path, dir: &Path, total_s: f64, file_s: f64) -> (f64, usize) {
    let mut clips: Vec<Vec<f32>> = Vec::new();
    for sub in ["misc", "ljspeech", "librivox_pocketsphinx", "longform"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("speech").join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "flac"))
            .collect();
        files.sort();
        for f in files {
            clips.push(hark::audio::file::decode_file(&f).unwrap().samples);
        }
    }
    let pause = vec![0.0f32; RATE / 2];
    let (mut written, mut n, mut k) = (0.0, 0, 0usize);
    while written < total_s {
        // A lead-in of a different length per file: the clip order repeats every few files,
        // and identical files would be one job (job ids are content hashes).
        let mut out = vec![0.0f32; 160 * (n + 1)];
        while (out.len() as f64) < file_s * RATE as f64 {
            // A stride coprime with the clip count walks a different order for each file.
            k = (k + 7) % clips.len();
            out.extend_from_slice(&clips[k]);
            out.extend_from_slice(&pause);
        }
        written += out.len() as f64 / RATE as f64;
        write_wav(&dir.join(format!("rec{n:03}.wav")), &out);
        n += 1;
    }
    (written, n)
}

/// Per-job overhead: one worker, `jobs` short recordings submitted one after another.
async fn overhead(url: &str, data: &Path, jobs: usize) -> Vec<(f64, f64)> {
    let client = hark::fleet::connect(url, "bench", Duration::from_secs(10))
        .await
        .unwrap();
    let q = queue::Queue::open(client.clone()).await.unwrap();
    let clip = hark::audio::file::decode_file(&data.join("speech/misc/goforward.flac"))
        .unwrap()
        .samples;
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for i in 0..jobs {
        // A different lead-in of silence per job: distinct content, the same work.
        let mut s = vec![0.0f32; 160 * (i + 1)];
        s.extend_from_slice(&clip);
        let path = dir.path().join(format!("j{i}.wav"));
        write_wav(&path, &s);
        let audio = std::fs::read(&path).unwrap();
        let object = queue::audio_object_name(&audio);
        let options = pb::TranscribeRequest::default();
        let id = queue::job_id(&object, &options);
        let mut sub = client.subscribe(queue::result_subject(&id)).await.unwrap();
        let t = Instant::now();
        q.upload(&object, &audio).await.unwrap();
        q.submit(&pb::BatchJob {
            job_id: id,
            object,
            options: Some(options),
            name: format!("j{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let m = sub.next().await.unwrap();
        let rtt = t.elapsed().as_secs_f64();
        let r = queue::decode_result(&m.payload).unwrap();
        let proc_s = r.response.map_or(0.0, |r| r.processing_s);
        out.push((rtt, proc_s));
    }
    out
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = repo.join("../shared/data");
    if Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
        || !data.join("speech").is_dir()
        || !hark::models::default_models_dir()
            .join("tiny.en/model.safetensors")
            .is_file()
    {
        eprintln!("SKIP: needs nats-server, ../shared/data and the tiny.en model");
        return;
    }
    let total_s: f64 = std::env::var("HARK_FLEET_BATCH_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800.0);
    let counts: Vec<usize> = std::env::var("HARK_FLEET_WORKERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4]);
    let batch_dir = tempfile::tempdir().unwrap();
    let (audio_s, files) = make_batch(&data, batch_dir.path(), total_s, 100.0);
    println!(
        "batch: {files} recordings, {:.1} min of speech; {} cores",
        audio_s / 60.0,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| worker processes | wall s | audio s / wall s | speed-up | jobs per worker |");
    println!("|---:|---:|---:|---:|---|");
    let mut base = None;
    for &n in &counts {
        let store = tempfile::tempdir().unwrap();
        let (_server, url) = nats(store.path());
        let ws = workers(&url, n);
        let out = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_hark"))
            .arg("batch")
            .arg(batch_dir.path())
            .args(["--nats", &url, "--format", "json", "--out"])
            .arg(out.path())
            .output()
            .unwrap();
        let wall = t.elapsed().as_secs_f64();
        assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let rate = audio_s / wall;
        let b = *base.get_or_insert(rate);
        let per: Vec<String> = ws
            .iter()
            .map(|w| w.count("Job started").to_string())
            .collect();
        if std::env::var_os("HARK_FLEET_DUMP").is_some() {
            for w in &ws {
                eprintln!("{}", w.log.lock().unwrap().join("\n"));
            }
            eprintln!("{}", String::from_utf8_lossy(&o.stdout));
        }
        println!(
            "| {n} | {wall:.1} | {rate:.1} | {:.2}x | {} |",
            rate / b,
            per.join(" / ")
        );
    }
    println!();
    let store = tempfile::tempdir().unwrap();
    let (_server, url) = nats(store.path());
    let _w = workers(&url, 1);
    let jobs = 20;
    let samples = overhead(&url, &data, jobs).await;
    let mut rtt: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let mut over: Vec<f64> = samples.iter().map(|s| (s.0 - s.1).max(0.0)).collect();
    let mut proc_s: Vec<f64> = samples.iter().map(|s| s.1).collect();
    println!("per-job queue overhead, {jobs} jobs of 2.8 s audio one at a time, 1 worker:");
    println!();
    println!("| | median ms | p90 ms |");
    println!("|---|---:|---:|");
    for (name, v) in [
        ("round trip (upload + submit -> result)", &mut rtt),
        ("worker transcription (processing_s)", &mut proc_s),
        ("overhead (round trip - transcription)", &mut over),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} |",
            percentile(v, 0.5) * 1e3,
            percentile(v, 0.9) * 1e3
        );
    }
}
