//! Device loss and recovery, with a device that fails and comes back (no sound card needed): the
//! real pipeline, supervisor and bus, in process.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hark::{
    audio::{
        Format, Source, SourceContext, SourceError,
        supervise::{Backoff, Device, supervise},
    },
    events::{EventBus, EventKind, Recv},
    pipeline::{OverflowPolicy, Pipeline, PipelineOptions, StageSpec},
    stages::level::{LevelConfig, LevelStage},
};

/// Plays a tone for `run_for`, then "unplugs"; refuses `refuse` reopen attempts after that.
struct FlakyDevice {
    opens: Arc<AtomicU32>,
    refuse: u32,
    refused: u32,
    run_for: Duration,
}

struct Running {
    failed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Device for FlakyDevice {
    type Stream = Running;

    fn open(&mut self, ctx: &SourceContext) -> Result<Running, SourceError> {
        let n = self.opens.fetch_add(1, Ordering::SeqCst);
        if n > 0 && self.refused < self.refuse {
            self.refused += 1;
            return Err(SourceError::Device("still unplugged".into()));
        }
        let mut writer = ctx.open_segment(
            Format {
                rate: 48_000,
                channels: 2,
            },
            true,
        )?;
        let failed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s, run_for) = (failed.clone(), stop.clone(), self.run_for);
        // Only the first session fails; the restored device keeps running.
        let fails = n == 0;
        let thread = std::thread::spawn(move || {
            let period = vec![0.25f32; 480 * 2];
            let start = std::time::Instant::now();
            while !s.load(Ordering::Relaxed) {
                writer.write_f32(&period);
                std::thread::sleep(Duration::from_millis(10));
                if fails && start.elapsed() > run_for {
                    f.store(true, Ordering::Relaxed);
                    break;
                }
            }
        });
        Ok(Running {
            failed,
            stop,
            thread: Some(thread),
        })
    }

    fn failure(&self, s: &Running) -> Option<String> {
        s.failed
            .load(Ordering::Relaxed)
            .then(|| "device unplugged".to_string())
    }
}

struct FlakySource(Option<FlakyDevice>);

impl Source for FlakySource {
    fn describe(&self) -> String {
        "flaky test device".into()
    }
    fn run(mut self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let dev = self.0.take().expect("device");
        supervise(
            dev,
            &ctx,
            Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(80),
            },
            Duration::from_millis(10),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_loss_is_reported_retried_and_restored() {
    let bus = EventBus::new(4096);
    let mut sub = bus.subscribe();
    let opens = Arc::new(AtomicU32::new(0));
    let source = FlakySource(Some(FlakyDevice {
        opens: opens.clone(),
        refuse: 3,
        refused: 0,
        run_for: Duration::from_millis(300),
    }));
    let level = LevelConfig {
        enabled: true,
        window_ms: 50,
    };
    let pipeline = Pipeline::start(
        Box::new(source),
        vec![StageSpec {
            stage: Box::new(LevelStage::new(&level)),
            policy: OverflowPolicy::DropNewest,
            ring_ms: 1000,
        }],
        bus.clone(),
        PipelineOptions {
            stream: Arc::from("main"),
            input_ring_s: 1.0,
        },
    )
    .unwrap();
    let stats = pipeline.stats.clone();
    let mut seen = Vec::new();
    let mut levels_after_restore = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while levels_after_restore < 5 {
        let item = tokio::time::timeout_at(deadline, sub.recv())
            .await
            .expect("no DeviceRestored followed by audio within 20 s");
        let Recv::Event(e) = item else { continue };
        match &e.kind {
            EventKind::DeviceLost { reason } => {
                assert!(reason.contains("unplugged"));
                assert!(!stats.source_healthy.load(Ordering::Relaxed));
                seen.push("lost");
            }
            EventKind::DeviceRestored { outage } => {
                assert!(*outage >= Duration::from_millis(20 + 40 + 80));
                seen.push("restored");
            }
            EventKind::Level { .. } if seen.last() == Some(&"restored") => {
                levels_after_restore += 1
            }
            _ => {}
        }
    }
    assert_eq!(seen, ["lost", "restored"]);
    assert!(stats.source_healthy.load(Ordering::Relaxed));
    assert_eq!(
        opens.load(Ordering::SeqCst),
        1 + 3 + 1,
        "one open, three refusals, one reopen"
    );
    pipeline.request_stop();
    tokio::task::spawn_blocking(move || pipeline.join())
        .await
        .unwrap();
    // The stream ends cleanly with SourceEnded as its last event.
    loop {
        match sub.recv().await {
            Recv::Event(e) if matches!(e.kind, EventKind::SourceEnded { .. }) => break,
            Recv::Closed => panic!("bus closed before SourceEnded"),
            _ => {}
        }
    }
}
