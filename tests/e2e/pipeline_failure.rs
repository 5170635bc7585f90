//! A pipeline thread that panics leaves no zombie: the pipeline is marked failed (status
//! `pipeline_failure`, source unhealthy), its stream ends with the reason, and harkd exits
//! non-zero on it (daemon.rs) so the service manager restarts it.

use std::{sync::Arc, time::Duration};

use hark::{
    audio::{Format, Source, SourceContext, SourceError},
    events::{EventBus, EventKind, Recv},
    pipeline::{
        Emitted, OverflowPolicy, Pipeline, PipelineOptions, Stage, StageError, StageSpec, Window,
        WindowSpec,
    },
};

/// Two seconds of a quiet tone, as fast as the pipeline takes it.
struct Tone;

impl Source for Tone {
    fn describe(&self) -> String {
        "tone".into()
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let mut w = ctx.open_segment(
            Format {
                rate: 16_000,
                channels: 1,
            },
            false,
        )?;
        let block: Vec<f32> = (0..1600).map(|i| (i as f32 * 0.05).sin() * 0.1).collect();
        for _ in 0..20 {
            if !w.write_f32(&block) {
                break;
            }
        }
        Ok(())
    }
}

/// Panics on its fifth window.
struct Bomb(u32);

impl Stage for Bomb {
    fn name(&self) -> &'static str {
        "bomb"
    }

    fn window(&self) -> WindowSpec {
        WindowSpec {
            len: 1600,
            hop: 1600,
        }
    }

    fn process(&mut self, _w: &Window<'_>, _out: &mut Vec<Emitted>) -> Result<(), StageError> {
        self.0 += 1;
        assert!(self.0 < 5, "bomb stage went off");
        Ok(())
    }
}

#[test]
fn a_panicking_stage_marks_the_pipeline_failed() {
    let bus = EventBus::new(1024);
    let mut sub = bus.subscribe();
    let pipeline = Pipeline::start(
        Box::new(Tone),
        vec![StageSpec {
            stage: Box::new(Bomb(0)),
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
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reason = rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), sub.recv()).await {
                Ok(Recv::Event(e)) => {
                    if let EventKind::SourceEnded { reason } = &e.kind {
                        break reason.clone();
                    }
                }
                Ok(Recv::Gap(_)) => {}
                Ok(Recv::Closed) | Err(_) => panic!("the stream never ended"),
            }
        }
    });
    pipeline.join();
    assert!(reason.contains("pipeline failed"), "{reason}");
    let failure = stats.failure().expect("no failure recorded");
    assert!(failure.contains("bomb stage went off"), "{failure}");
    assert!(
        !stats
            .source_healthy
            .load(std::sync::atomic::Ordering::Relaxed)
    );
}
