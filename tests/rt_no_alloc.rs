//! The real-time capture path must not allocate: the cpal callback body ([`CaptureWriter`]) runs
//! under a counting global allocator, including when the ring overflows.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::{Arc, atomic::AtomicU64},
};

use hark::{audio::CaptureWriter, ring::ring};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: delegates to the system allocator; only counts calls made on the current thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(|c| c.get());
    f();
    ALLOCS.with(|c| c.get()) - before
}

#[test]
fn capture_callback_path_never_allocates_even_when_full() {
    let (producer, mut consumer) = ring::<f32>(48_000);
    let xruns = Arc::new(AtomicU64::new(0));
    let mut writer = CaptureWriter::realtime(producer, xruns.clone());
    let f32_period = vec![0.1f32; 960];
    let i16_period = vec![1000i16; 960];
    let u16_period = vec![40000u16; 960];
    let i32_period = vec![1 << 20; 960];
    let mut sink = vec![0f32; 4096];
    // Warm-up outside the measurement (nothing should be lazily allocated, but be fair).
    writer.write_f32(&f32_period);
    let n = allocations_during(|| {
        for round in 0..2000 {
            writer.write_f32(&f32_period);
            writer.write_i16(&i16_period);
            writer.write_u16(&u16_period);
            writer.write_i32(&i32_period);
            // Drain only sometimes, so the ring also overflows.
            if round % 50 == 0 {
                while consumer.pop_into(&mut sink) > 0 {}
            }
        }
    });
    assert_eq!(n, 0, "the capture path allocated {n} times");
    assert!(
        xruns.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the test should have overflowed the ring"
    );
}
