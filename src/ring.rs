//! Lock-free single-producer single-consumer rings with drop accounting.
//!
//! A thin layer over `ringbuf`'s heap ring: the producer side counts what did not fit (overruns)
//! in an atomic instead of blocking, so it is safe to call from a real-time audio callback: no
//! allocation, lock, log or syscall after construction. The module knows nothing about audio.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use ringbuf::{
    HeapCons, HeapProd, HeapRb,
    traits::{Consumer as _, Observer as _, Producer as _, Split as _},
};

/// Shared counters of one ring, readable from any thread.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Items the producer could not store because the ring was full.
    pub overruns: AtomicU64,
    /// Items the consumer discarded on purpose (catch-up after falling behind).
    pub skipped: AtomicU64,
}

/// Creates a ring holding up to `capacity` items.
pub fn ring<T: Copy>(capacity: usize) -> (RingProducer<T>, RingConsumer<T>) {
    let (prod, cons) = HeapRb::<T>::new(capacity.max(1)).split();
    let stats = Arc::new(RingStats::default());
    (
        RingProducer {
            inner: prod,
            stats: stats.clone(),
        },
        RingConsumer { inner: cons, stats },
    )
}

/// Writing half. Never blocks.
pub struct RingProducer<T> {
    inner: HeapProd<T>,
    stats: Arc<RingStats>,
}

impl<T> std::fmt::Debug for RingProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingProducer")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl<T: Copy> RingProducer<T> {
    /// Pushes as much of `items` as fits; the rest is counted as overrun. Returns items stored.
    #[inline]
    pub fn push_or_count(&mut self, items: &[T]) -> usize {
        let n = self.inner.push_slice(items);
        if n < items.len() {
            self.stats
                .overruns
                .fetch_add((items.len() - n) as u64, Ordering::Relaxed);
        }
        n
    }

    /// Pushes as much of `items` as fits without counting the rest (the caller retries).
    #[inline]
    pub fn push_some(&mut self, items: &[T]) -> usize {
        self.inner.push_slice(items)
    }

    /// Pushes one item or returns it when the ring is full (not counted).
    #[inline]
    pub fn try_push(&mut self, item: T) -> Result<(), T> {
        self.inner.try_push(item)
    }

    /// Counts `n` items the caller decided to drop.
    pub fn count_overrun(&self, n: u64) {
        self.stats.overruns.fetch_add(n, Ordering::Relaxed);
    }
}

impl<T> RingProducer<T> {
    pub fn vacant_len(&self) -> usize {
        self.inner.vacant_len()
    }
    pub fn capacity(&self) -> usize {
        self.inner.capacity().get()
    }
    pub fn stats(&self) -> &Arc<RingStats> {
        &self.stats
    }
    /// True when the consumer half has been dropped.
    pub fn is_abandoned(&self) -> bool {
        !self.inner.read_is_held()
    }
}

/// Reading half.
pub struct RingConsumer<T> {
    inner: HeapCons<T>,
    stats: Arc<RingStats>,
}

impl<T> std::fmt::Debug for RingConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingConsumer")
            .field("occupied", &self.occupied_len())
            .finish_non_exhaustive()
    }
}

impl<T: Copy> RingConsumer<T> {
    /// Pops up to `out.len()` items; returns how many.
    #[inline]
    pub fn pop_into(&mut self, out: &mut [T]) -> usize {
        self.inner.pop_slice(out)
    }

    #[inline]
    pub fn try_pop(&mut self) -> Option<T> {
        self.inner.try_pop()
    }

    /// Discards the `n` oldest items (catch-up) and counts them as skipped.
    pub fn skip_oldest(&mut self, n: usize) -> usize {
        let skipped = self.inner.skip(n);
        self.stats
            .skipped
            .fetch_add(skipped as u64, Ordering::Relaxed);
        skipped
    }
}

impl<T> RingConsumer<T> {
    pub fn occupied_len(&self) -> usize {
        self.inner.occupied_len()
    }
    pub fn capacity(&self) -> usize {
        self.inner.capacity().get()
    }
    pub fn stats(&self) -> &Arc<RingStats> {
        &self.stats
    }
    /// True when the producer half has been dropped (no more data will come).
    pub fn is_abandoned(&self) -> bool {
        !self.inner.write_is_held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Op {
        Push(Vec<u16>),
        Pop(usize),
        Skip(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(any::<u16>(), 0..40).prop_map(Op::Push),
            (0usize..40).prop_map(Op::Pop),
            (0usize..10).prop_map(Op::Skip),
        ]
    }

    proptest! {
        // The ring behaves like a bounded VecDeque that refuses (and counts) what does not fit.
        #[test]
        fn matches_vecdeque_model(cap in 1usize..64, ops in prop::collection::vec(op(), 0..200)) {
            let (mut p, mut c) = ring::<u16>(cap);
            let mut model = VecDeque::new();
            let mut overruns = 0u64;
            let mut skipped = 0u64;
            for op in ops {
                match op {
                    Op::Push(items) => {
                        let n = p.push_or_count(&items);
                        let fits = (cap - model.len()).min(items.len());
                        prop_assert_eq!(n, fits);
                        model.extend(&items[..fits]);
                        overruns += (items.len() - fits) as u64;
                    }
                    Op::Pop(k) => {
                        let mut out = vec![0u16; k];
                        let n = c.pop_into(&mut out);
                        let expect: Vec<u16> = (0..k.min(model.len())).filter_map(|_| model.pop_front()).collect();
                        prop_assert_eq!(&out[..n], &expect[..]);
                    }
                    Op::Skip(k) => {
                        let n = c.skip_oldest(k);
                        let m = k.min(model.len());
                        prop_assert_eq!(n, m);
                        model.drain(..m);
                        skipped += m as u64;
                    }
                }
                prop_assert_eq!(c.occupied_len(), model.len());
                prop_assert_eq!(p.vacant_len(), cap - model.len());
            }
            prop_assert_eq!(p.stats().overruns.load(Ordering::Relaxed), overruns);
            prop_assert_eq!(c.stats().skipped.load(Ordering::Relaxed), skipped);
        }
    }

    #[test]
    fn abandonment_is_visible_to_the_other_half() {
        let (p, c) = ring::<f32>(8);
        assert!(!c.is_abandoned());
        drop(p);
        assert!(c.is_abandoned());
    }
}
