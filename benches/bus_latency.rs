//! Publish latency of level events while final transcripts are written to a real on-disk store
//! (SQLite, WAL, synchronous=FULL): the cost a sound or wake event pays for sharing the bus with
//! the transcript store.
//!
//! Two modes, same threads and rates:
//! - `old`: the store's insert runs under a lock every publisher takes (how `EventBus::publish`
//!   ran sinks before: under its seq lock), so a level event can wait behind an fsync.
//! - `new`: the store is a bus sink; `publish` runs sinks before taking the seq lock.
//!
//! One thread publishes a level event every millisecond and times each `publish`; another
//! publishes final transcripts back to back (far more than live speech makes, to provoke
//! contention). The database lives under the target dir, not /tmp, which is often a tmpfs where
//! fsync costs nothing. Run: `cargo bench --bench bus_latency`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use hark::{
    events::{EventBus, EventKind, Transcript},
    store::Store,
};

const LEVEL_EVENTS: usize = 2000;

struct Run {
    latencies_us: Vec<f64>,
    inserts: usize,
    insert_ms: Vec<f64>,
}

fn final_transcript(i: u64) -> EventKind {
    EventKind::Transcript(Transcript {
        text: format!("final transcript number {i} with a few words in it"),
        is_final: true,
        stability: 1.0,
        start_sample: i * 16_000,
        end_sample: i * 16_000 + 16_000,
        language: "en".into(),
        words: Vec::new(),
        // Four finals per utterance, as the live transcriber sends them: most inserts update
        // the utterance's row.
        utterance_id: i / 4 + 1,
    })
}

fn run(old: bool) -> Run {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let store = Arc::new(Store::open(&dir.path().join("bench.db")).expect("open store"));
    let bus = EventBus::new(1 << 16);
    // Stands in for the old seq lock that sinks ran under.
    let big_lock = Arc::new(Mutex::new(()));
    if !old {
        bus.add_sink(store.clone());
    }
    let stream: Arc<str> = Arc::from("main");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (bus, stream, stop, store, big_lock) = (
            bus.clone(),
            stream.clone(),
            stop.clone(),
            store.clone(),
            big_lock.clone(),
        );
        std::thread::spawn(move || {
            let mut insert_ms = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if old {
                    let _g = big_lock.lock().expect("lock");
                    let e = hark::events::Event {
                        seq: 0,
                        sample: i * 16_000,
                        wall: SystemTime::now(),
                        stream_start: SystemTime::now(),
                        stream: stream.clone(),
                        kind: final_transcript(i),
                    };
                    store.insert(&e).expect("insert");
                    bus.publish(&stream, SystemTime::now(), i * 16_000, e.kind);
                } else {
                    bus.publish(&stream, SystemTime::now(), i * 16_000, final_transcript(i));
                }
                insert_ms.push(t.elapsed().as_secs_f64() * 1e3);
                i += 1;
            }
            insert_ms
        })
    };
    let mut latencies_us = Vec::with_capacity(LEVEL_EVENTS);
    for i in 0..LEVEL_EVENTS {
        let kind = EventKind::Level {
            rms_dbfs: -20.0,
            peak_dbfs: -6.0,
        };
        let t = Instant::now();
        if old {
            let _g = big_lock.lock().expect("lock");
            bus.publish(&stream, SystemTime::now(), i as u64, kind);
        } else {
            bus.publish(&stream, SystemTime::now(), i as u64, kind);
        }
        latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let insert_ms = writer.join().expect("writer");
    Run {
        latencies_us,
        inserts: insert_ms.len(),
        insert_ms,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not meaningful here.
    println!(
        "level-event publish latency while finals are written to SQLite (synchronous=FULL), \
         {LEVEL_EVENTS} level events, 1 per ms\n"
    );
    println!(
        "{:<5} {:>10} {:>10} {:>10}   {:>7} {:>14} {:>14}",
        "mode", "p50 us", "p99 us", "max us", "finals", "insert p50 ms", "insert max ms"
    );
    for old in [true, false] {
        let mut r = run(old);
        r.latencies_us.sort_by(f64::total_cmp);
        r.insert_ms.sort_by(f64::total_cmp);
        println!(
            "{:<5} {:>10.1} {:>10.1} {:>10.1}   {:>7} {:>14.2} {:>14.2}",
            if old { "old" } else { "new" },
            pct(&r.latencies_us, 0.5),
            pct(&r.latencies_us, 0.99),
            pct(&r.latencies_us, 1.0),
            r.inserts,
            pct(&r.insert_ms, 0.5),
            pct(&r.insert_ms, 1.0),
        );
    }
}
