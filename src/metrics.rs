//! Optional Prometheus text endpoint (`[metrics] enabled = true`).
//!
//! The exposition format is a few lines of text; a metrics registry crate would duplicate the
//! counters the pipeline already keeps, so they are rendered directly from the live stats.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{events::EventBus, pipeline::PipelineStats};

/// What the endpoint reports.
#[derive(Debug, Clone)]
pub struct MetricsSource {
    pub bus: EventBus,
    pub started: Instant,
    pub main: Option<Arc<PipelineStats>>,
    /// Event export to NATS (None when off).
    pub export: Option<Arc<crate::export::ExportStats>>,
}

impl MetricsSource {
    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# TYPE hark_uptime_seconds gauge");
        let _ = writeln!(
            s,
            "hark_uptime_seconds {}",
            self.started.elapsed().as_secs_f64()
        );
        let _ = writeln!(s, "# TYPE hark_events_total counter");
        for (kind, n) in self.bus.counts() {
            let _ = writeln!(s, "hark_events_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(s, "# TYPE hark_subscribers gauge");
        let _ = writeln!(s, "hark_subscribers {}", self.bus.subscriber_count());
        if let Some(x) = &self.export {
            let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
            for (name, kind, v) in [
                (
                    "hark_export_connected",
                    "gauge",
                    f64::from(u8::from(x.connected.load(Ordering::Relaxed))),
                ),
                ("hark_export_published_total", "counter", c(&x.published)),
                ("hark_export_dropped_total", "counter", c(&x.dropped)),
                ("hark_export_spooled_events", "gauge", c(&x.spooled_events)),
                ("hark_export_spooled_bytes", "gauge", c(&x.spooled_bytes)),
                ("hark_export_lag_events", "gauge", c(&x.lag_events)),
                ("hark_export_lag_seconds", "gauge", x.lag_s()),
            ] {
                let _ = writeln!(s, "# TYPE {name} {kind}");
                let _ = writeln!(s, "{name} {v}");
            }
        }
        if let Some(p) = &self.main {
            let _ = writeln!(s, "# TYPE hark_samples_total counter");
            let _ = writeln!(s, "hark_samples_total {}", p.clock.load(Ordering::Relaxed));
            let _ = writeln!(s, "# TYPE hark_xruns_total counter");
            let _ = writeln!(s, "hark_xruns_total {}", p.xruns.load(Ordering::Relaxed));
            let _ = writeln!(s, "# TYPE hark_source_healthy gauge");
            let _ = writeln!(
                s,
                "hark_source_healthy {}",
                u8::from(p.source_healthy.load(Ordering::Relaxed))
            );
            for (name, kind) in [
                ("hark_stage_queue_depth_samples", "gauge"),
                ("hark_stage_dropped_samples_total", "counter"),
                ("hark_stage_windows_total", "counter"),
                ("hark_stage_busy_seconds_total", "counter"),
                ("hark_stage_cpu_seconds_total", "counter"),
            ] {
                let _ = writeln!(s, "# TYPE {name} {kind}");
                for st in &p.stages {
                    let v = match name {
                        "hark_stage_queue_depth_samples" => {
                            st.queue_depth_samples.load(Ordering::Relaxed) as f64
                        }
                        "hark_stage_dropped_samples_total" => st.dropped_samples() as f64,
                        "hark_stage_windows_total" => st.windows.load(Ordering::Relaxed) as f64,
                        "hark_stage_cpu_seconds_total" => {
                            st.cpu_ns.load(Ordering::Relaxed) as f64 / 1e9
                        }
                        _ => st.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
                    };
                    let _ = writeln!(s, "{name}{{stage=\"{}\"}} {v}", st.name);
                }
            }
        }
        s
    }
}

/// Binds `addr` and serves `/metrics` until `stop` is cancelled.
pub async fn spawn(
    addr: SocketAddr,
    source: MetricsSource,
    stop: CancellationToken,
) -> Result<(), std::io::Error> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "Serving Prometheus metrics.");
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "Metrics accept failed.");
                        continue;
                    }
                },
            };
            let source = source.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(source.render())))
                    } else {
                        Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                    };
                    async move { Ok::<_, Infallible>(body.unwrap_or_default()) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}
