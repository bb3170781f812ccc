//! What the steady path's lease check costs: every steady call reads a
//! coarse monotonic clock (`coarsetime`, `CLOCK_MONOTONIC_COARSE`) and
//! compares it with the lease deadline. Side by side with `Instant::now()`
//! (`CLOCK_MONOTONIC`), which the check would otherwise use, and an atomic
//! load (what the check compares against).
//!
//! ```text
//! cargo bench --bench clock               # add `-- --quick` for a short pass
//! ```
//!
//! BENCHMARKS.md quotes these figures.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use criterion::Criterion;

fn clocks(c: &mut Criterion) {
    let deadline = AtomicU64::new(u64::MAX);
    let mut group = c.benchmark_group("clock");
    group.bench_function("coarsetime::Instant::now", |b| {
        b.iter(|| black_box(coarsetime::Instant::now()))
    });
    group.bench_function("std::time::Instant::now", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    group.bench_function("lease check (coarse clock vs atomic deadline)", |b| {
        b.iter(|| {
            black_box(coarsetime::Instant::now().as_ticks() < deadline.load(Ordering::Acquire))
        })
    });
    group.bench_function("atomic load", |b| {
        b.iter(|| black_box(deadline.load(Ordering::Acquire)))
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    clocks(&mut c);
    c.final_summary();
}
