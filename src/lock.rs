//! The in-process side of the schema lock: a reader/writer lock where
//! readers (application calls) have priority and the writer (the switch)
//! waits in the background, escalating only for a bounded time.
//!
//! ## Why not a plain `RwLock`
//!
//! parking_lot's `read()` queues behind a waiting writer: with a writer
//! blocked on a long call, every new call would stall behind it. Readers here
//! use `read_recursive`, which never queues behind a waiting writer, and the
//! writer polls `try_write` with backoff for `patience`. A steady stream of
//! overlapping readers can starve such a writer, so after `patience` it
//! escalates: it sets `escalating` (new readers then take the fair `read()`
//! and queue behind it) and waits with `try_write_for(escalation)`. Readers
//! are thus delayed by at most `escalation` plus the switch itself; if the
//! in-flight readers do not drain in time the writer backs off, the queued
//! readers run at once, and it tries again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How the switch acquires the schema writer lock. Defaults suit calls of a
/// few milliseconds or less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterPolicy {
    /// How long the writer polls without delaying any reader. Defaults to 100 ms.
    pub patience: Duration,
    /// How long the writer may make new readers queue behind it, per
    /// attempt: the bound on any reader's extra wait. Defaults to 5 ms.
    pub escalation: Duration,
    /// Rounds of polling and escalation before the switch gives up.
    /// Defaults to 20.
    pub attempts: u32,
}

impl Default for WriterPolicy {
    fn default() -> Self {
        WriterPolicy {
            patience: Duration::from_millis(100),
            escalation: Duration::from_millis(5),
            attempts: 20,
        }
    }
}

/// Reader/writer schema lock with reader priority and bounded escalation.
#[derive(Debug, Default)]
pub(crate) struct SchemaLock {
    rw: RwLock<()>,
    escalating: AtomicBool,
    max_read_wait_ns: AtomicU64,
}

/// Held by a call from reading the live version until its last statement.
#[derive(Debug)]
#[must_use = "the schema read lock is released when the guard drops"]
pub(crate) struct ReadGuard<'a> {
    _guard: RwLockReadGuard<'a, ()>,
}

/// Held by the switch. Releases in `Drop`.
#[derive(Debug)]
#[must_use = "the schema write lock is released when the guard drops"]
pub(crate) struct WriteGuard<'a> {
    _guard: RwLockWriteGuard<'a, ()>,
    /// Time from the first attempt until the lock was held.
    pub(crate) waited: Duration,
    /// Whether the writer had to escalate (delay new readers) to get it.
    pub(crate) escalated: bool,
}

/// The writer gave up; nobody holds anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriterGaveUp {
    pub(crate) attempts: u32,
    pub(crate) waited: Duration,
}

impl SchemaLock {
    /// Takes the read side. Never queues behind a waiting writer unless that
    /// writer is escalating.
    #[inline]
    pub(crate) fn read(&self) -> ReadGuard<'_> {
        if !self.escalating.load(Ordering::Acquire) {
            if let Some(guard) = self.rw.try_read_recursive() {
                return ReadGuard { _guard: guard };
            }
        }
        self.read_slow()
    }

    #[cold]
    fn read_slow(&self) -> ReadGuard<'_> {
        let start = Instant::now();
        let guard = if self.escalating.load(Ordering::Acquire) {
            self.rw.read()
        } else {
            self.rw.read_recursive()
        };
        let waited = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.max_read_wait_ns.fetch_max(waited, Ordering::Relaxed);
        ReadGuard { _guard: guard }
    }

    /// Takes the write side under `policy`.
    pub(crate) fn write(&self, policy: &WriterPolicy) -> Result<WriteGuard<'_>, WriterGaveUp> {
        let start = Instant::now();
        for _attempt in 0..policy.attempts.max(1) {
            let polite_until = Instant::now() + policy.patience;
            let mut backoff = Duration::from_micros(50);
            loop {
                if let Some(guard) = self.rw.try_write() {
                    return Ok(WriteGuard {
                        _guard: guard,
                        waited: start.elapsed(),
                        escalated: false,
                    });
                }
                let now = Instant::now();
                if now >= polite_until {
                    break;
                }
                thread::sleep(backoff.min(polite_until - now));
                backoff = (backoff * 2).min(Duration::from_millis(2));
            }
            self.escalating.store(true, Ordering::Release);
            let guard = self.rw.try_write_for(policy.escalation);
            self.escalating.store(false, Ordering::Release);
            if let Some(guard) = guard {
                tracing::debug!(waited = ?start.elapsed(), "schema writer lock taken after escalation");
                return Ok(WriteGuard {
                    _guard: guard,
                    waited: start.elapsed(),
                    escalated: true,
                });
            }
            tracing::debug!("schema writer escalation timed out; readers resume, retrying");
        }
        Err(WriterGaveUp {
            attempts: policy.attempts.max(1),
            waited: start.elapsed(),
        })
    }

    /// Records a wait for the database side of the lock (locking path).
    pub(crate) fn record_wait(&self, waited: Duration) {
        let waited = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.max_read_wait_ns.fetch_max(waited, Ordering::Relaxed);
    }

    /// The longest any reader waited for the read side, since the last reset.
    pub(crate) fn max_read_wait(&self) -> Duration {
        Duration::from_nanos(self.max_read_wait_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn reset_max_read_wait(&self) {
        self.max_read_wait_ns.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Barrier};

    fn policy(patience_ms: u64, escalation_ms: u64, attempts: u32) -> WriterPolicy {
        WriterPolicy {
            patience: Duration::from_millis(patience_ms),
            escalation: Duration::from_millis(escalation_ms),
            attempts,
        }
    }

    #[test]
    fn uncontended_write_is_immediate() {
        let lock = SchemaLock::default();
        let w = lock.write(&WriterPolicy::default()).unwrap();
        assert!(!w.escalated);
        assert!(w.waited < Duration::from_millis(50));
    }

    #[test]
    fn waiting_writer_does_not_block_new_readers_while_polite() {
        let lock = Arc::new(SchemaLock::default());
        let held = lock.read();
        let writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || lock.write(&policy(300, 1, 1)).map(|g| g.escalated))
        };
        thread::sleep(Duration::from_millis(30));
        // The writer is polling; a new reader on another thread gets in at once.
        let reader = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                let start = Instant::now();
                let _g = lock.read();
                start.elapsed()
            })
        };
        let reader_wait = reader.join().unwrap();
        assert!(
            reader_wait < Duration::from_millis(20),
            "reader waited {reader_wait:?}"
        );
        drop(held);
        assert_eq!(writer.join().unwrap(), Ok(false));
    }

    #[test]
    fn escalation_lands_the_writer_under_saturation_and_bounds_reader_waits() {
        // Eight threads keep the read side held back-to-back with overlap, so a
        // polite writer alone would starve.
        let lock = Arc::new(SchemaLock::default());
        let stop = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(9));
        let calls = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (lock, stop, start, calls) =
                    (lock.clone(), stop.clone(), start.clone(), calls.clone());
                thread::spawn(move || {
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let _g = lock.read();
                        thread::sleep(Duration::from_micros(300));
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        start.wait();
        thread::sleep(Duration::from_millis(20));
        let guard = lock.write(&policy(20, 10, 50)).expect("writer must land");
        thread::sleep(Duration::from_millis(2)); // the "switch"
        drop(guard);
        thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert!(calls.load(Ordering::Relaxed) > 0);
        // A reader waits at most for one escalation window plus the switch; allow
        // generous scheduling slack on a shared 2-core machine.
        let max = lock.max_read_wait();
        assert!(max < Duration::from_millis(200), "a reader waited {max:?}");
    }

    #[test]
    fn writer_gives_up_cleanly_and_readers_continue() {
        let lock = Arc::new(SchemaLock::default());
        let held = lock.read();
        let err = lock.write(&policy(5, 5, 3)).unwrap_err();
        assert_eq!(err.attempts, 3);
        assert!(err.waited >= Duration::from_millis(30));
        // Not escalating any more: a fresh reader gets in at once.
        let other = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                let _g = lock.read();
            })
        };
        other.join().unwrap();
        drop(held);
        assert!(lock.write(&policy(5, 5, 1)).is_ok());
    }

    #[test]
    fn readers_wait_for_a_held_writer_and_the_wait_is_recorded() {
        let lock = Arc::new(SchemaLock::default());
        let w = lock.write(&WriterPolicy::default()).unwrap();
        let reader = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                let _g = lock.read();
            })
        };
        thread::sleep(Duration::from_millis(25));
        drop(w);
        reader.join().unwrap();
        assert!(lock.max_read_wait() >= Duration::from_millis(20));
        lock.reset_max_read_wait();
        assert_eq!(lock.max_read_wait(), Duration::ZERO);
    }
}
