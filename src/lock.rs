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
//!
//! A call nested inside another call on the same thread takes the read side
//! twice; if the writer escalates in between, the inner read queues behind
//! the writer, which waits for the outer read. The escalation bound breaks
//! that cycle: the writer backs off after `escalation` and the inner read
//! proceeds. The loom model at the end of this file checks this, mutual
//! exclusion and the escalation flag's reset over all interleavings
//! (`RUSTFLAGS="--cfg tandem_loom" cargo test --no-default-features --lib loom`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clock::Instant;
use sync::AtomicBool;

/// Time for the writer's polling: the real clock, or under the model checker
/// a per-thread virtual clock that `sleep` advances (and yields), so the
/// same deadline logic runs deterministically.
#[cfg(not(tandem_loom))]
mod clock {
    pub(crate) use std::time::Instant;

    pub(crate) fn sleep(d: std::time::Duration) {
        std::thread::sleep(d);
    }
}

#[cfg(tandem_loom)]
mod clock {
    use std::cell::Cell;
    use std::time::Duration;

    loom::thread_local! {
        static NOW: Cell<Duration> = Cell::new(Duration::ZERO);
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub(crate) struct Instant(Duration);

    impl Instant {
        pub(crate) fn now() -> Instant {
            Instant(NOW.with(Cell::get))
        }
        pub(crate) fn elapsed(&self) -> Duration {
            Instant::now().0.saturating_sub(self.0)
        }
    }

    impl std::ops::Add<Duration> for Instant {
        type Output = Instant;
        fn add(self, d: Duration) -> Instant {
            Instant(self.0 + d)
        }
    }

    impl std::ops::Sub for Instant {
        type Output = Duration;
        fn sub(self, earlier: Instant) -> Duration {
            self.0.saturating_sub(earlier.0)
        }
    }

    /// Advances this thread's clock. No yield: the polling loop is bounded
    /// by virtual time, and loom already branches at every lock operation.
    pub(crate) fn sleep(d: Duration) {
        NOW.with(|now| now.set(now.get() + d));
    }
}

#[cfg(not(tandem_loom))]
mod sync {
    pub(crate) use std::sync::atomic::AtomicBool;
}

#[cfg(tandem_loom)]
mod sync {
    pub(crate) use loom::sync::atomic::AtomicBool;
}

/// The primitive under the schema lock: the five operations of parking_lot's
/// `RwLock` that the protocol uses. The model checker swaps in a loom model
/// with the same queueing rules.
pub(crate) trait RawLock: Default {
    /// Held read side.
    type Read<'a>
    where
        Self: 'a;
    /// Held write side.
    type Write<'a>
    where
        Self: 'a;
    /// A read that does not queue behind waiting writers, if free now.
    fn try_read_recursive(&self) -> Option<Self::Read<'_>>;
    /// A read that does not queue behind waiting writers.
    fn read_recursive(&self) -> Self::Read<'_>;
    /// A fair read: queues behind waiting writers.
    fn read(&self) -> Self::Read<'_>;
    /// The write side, if free now.
    fn try_write(&self) -> Option<Self::Write<'_>>;
    /// The write side, queueing (new fair readers wait behind) for up to `timeout`.
    fn try_write_for(&self, timeout: Duration) -> Option<Self::Write<'_>>;
}

/// parking_lot's reader/writer lock.
pub(crate) type Parking = parking_lot::RwLock<()>;

impl RawLock for Parking {
    type Read<'a> = parking_lot::RwLockReadGuard<'a, ()>;
    type Write<'a> = parking_lot::RwLockWriteGuard<'a, ()>;
    #[inline]
    fn try_read_recursive(&self) -> Option<Self::Read<'_>> {
        parking_lot::RwLock::try_read_recursive(self)
    }
    fn read_recursive(&self) -> Self::Read<'_> {
        parking_lot::RwLock::read_recursive(self)
    }
    fn read(&self) -> Self::Read<'_> {
        parking_lot::RwLock::read(self)
    }
    fn try_write(&self) -> Option<Self::Write<'_>> {
        parking_lot::RwLock::try_write(self)
    }
    fn try_write_for(&self, timeout: Duration) -> Option<Self::Write<'_>> {
        parking_lot::RwLock::try_write_for(self, timeout)
    }
}

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
#[derive(Default)]
pub(crate) struct SchemaLock<R: RawLock = Parking> {
    rw: R,
    escalating: AtomicBool,
    max_read_wait_ns: AtomicU64,
}

impl<R: RawLock> fmt::Debug for SchemaLock<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaLock")
            .field("escalating", &self.escalating.load(Ordering::Relaxed))
            .field("max_read_wait", &self.max_read_wait())
            .finish_non_exhaustive()
    }
}

/// Held by a call from reading the live version until its last statement.
#[must_use = "the schema read lock is released when the guard drops"]
pub(crate) struct ReadGuard<'a, R: RawLock + 'a = Parking> {
    _guard: R::Read<'a>,
}

impl<R: RawLock> fmt::Debug for ReadGuard<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadGuard")
    }
}

/// Held by the switch. Releases in `Drop`.
#[must_use = "the schema write lock is released when the guard drops"]
pub(crate) struct WriteGuard<'a, R: RawLock + 'a = Parking> {
    _guard: R::Write<'a>,
    /// Time from the first attempt until the lock was held.
    pub(crate) waited: Duration,
    /// Whether the writer had to escalate (delay new readers) to get it.
    pub(crate) escalated: bool,
}

impl<R: RawLock> fmt::Debug for WriteGuard<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteGuard")
            .field("waited", &self.waited)
            .field("escalated", &self.escalated)
            .finish_non_exhaustive()
    }
}

/// The writer gave up; nobody holds anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriterGaveUp {
    pub(crate) attempts: u32,
    pub(crate) waited: Duration,
}

impl<R: RawLock> SchemaLock<R> {
    /// Takes the read side. Never queues behind a waiting writer unless that
    /// writer is escalating.
    #[inline]
    pub(crate) fn read(&self) -> ReadGuard<'_, R> {
        if !self.escalating.load(Ordering::Acquire) {
            if let Some(guard) = self.rw.try_read_recursive() {
                return ReadGuard { _guard: guard };
            }
        }
        self.read_slow()
    }

    #[cold]
    fn read_slow(&self) -> ReadGuard<'_, R> {
        let start = Instant::now();
        let guard = if self.escalating.load(Ordering::Acquire) {
            self.rw.read()
        } else {
            self.rw.read_recursive()
        };
        self.record_wait(start.elapsed());
        ReadGuard { _guard: guard }
    }

    /// Takes the write side under `policy`.
    pub(crate) fn write(&self, policy: &WriterPolicy) -> Result<WriteGuard<'_, R>, WriterGaveUp> {
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
                clock::sleep(backoff.min(polite_until - now));
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

    /// Resets [`max_read_wait`](SchemaLock::max_read_wait) (unused by the loom models).
    #[cfg_attr(tandem_loom, allow(dead_code))]
    pub(crate) fn reset_max_read_wait(&self) {
        self.max_read_wait_ns.store(0, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(tandem_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::time::Instant;

    fn policy(patience_ms: u64, escalation_ms: u64, attempts: u32) -> WriterPolicy {
        WriterPolicy {
            patience: Duration::from_millis(patience_ms),
            escalation: Duration::from_millis(escalation_ms),
            attempts,
        }
    }

    #[test]
    fn uncontended_write_is_immediate() {
        let lock = SchemaLock::<Parking>::default();
        let w = lock.write(&WriterPolicy::default()).unwrap();
        assert!(!w.escalated);
        assert!(w.waited < Duration::from_millis(50));
    }

    #[test]
    fn waiting_writer_does_not_block_new_readers_while_polite() {
        let lock = Arc::new(SchemaLock::<Parking>::default());
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
        let lock = Arc::new(SchemaLock::<Parking>::default());
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
        let lock = Arc::new(SchemaLock::<Parking>::default());
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
        let lock = Arc::new(SchemaLock::<Parking>::default());
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

/// The loom model of parking_lot's queueing rules and the checks of the
/// protocol above: run with
/// `RUSTFLAGS="--cfg tandem_loom" cargo test --no-default-features --lib loom`.
#[cfg(test)]
#[cfg(tandem_loom)]
mod loom_model {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    /// parking_lot's rules: a recursive read ignores waiting writers; a fair
    /// read waits behind them; a timed write queues (so fair readers wait)
    /// and may give up at any point, which the model explores by giving up
    /// after a bounded number of wake-ups.
    #[derive(Default)]
    struct Model {
        state: Mutex<St>,
        changed: Condvar,
    }

    #[derive(Default)]
    struct St {
        readers: usize,
        writer: bool,
        queued_writers: usize,
    }

    struct ModelRead<'a>(&'a Model);
    struct ModelWrite<'a>(&'a Model);

    impl Drop for ModelRead<'_> {
        fn drop(&mut self) {
            self.0.state.lock().unwrap().readers -= 1;
            self.0.changed.notify_all();
        }
    }

    impl Drop for ModelWrite<'_> {
        fn drop(&mut self) {
            self.0.state.lock().unwrap().writer = false;
            self.0.changed.notify_all();
        }
    }

    impl Model {
        fn read_when(&self, blocked: impl Fn(&St) -> bool) -> ModelRead<'_> {
            let mut st = self.state.lock().unwrap();
            while blocked(&st) {
                st = self.changed.wait(st).unwrap();
            }
            st.readers += 1;
            ModelRead(self)
        }
    }

    impl RawLock for Model {
        type Read<'a> = ModelRead<'a>;
        type Write<'a> = ModelWrite<'a>;
        fn try_read_recursive(&self) -> Option<Self::Read<'_>> {
            let mut st = self.state.lock().unwrap();
            if st.writer {
                return None;
            }
            st.readers += 1;
            Some(ModelRead(self))
        }
        fn read_recursive(&self) -> Self::Read<'_> {
            self.read_when(|st| st.writer)
        }
        fn read(&self) -> Self::Read<'_> {
            self.read_when(|st| st.writer || st.queued_writers > 0)
        }
        fn try_write(&self) -> Option<Self::Write<'_>> {
            let mut st = self.state.lock().unwrap();
            if st.writer || st.readers > 0 {
                return None;
            }
            st.writer = true;
            Some(ModelWrite(self))
        }
        fn try_write_for(&self, _timeout: Duration) -> Option<Self::Write<'_>> {
            let mut st = self.state.lock().unwrap();
            st.queued_writers += 1;
            for _ in 0..2 {
                if !st.writer && st.readers == 0 {
                    st.queued_writers -= 1;
                    st.writer = true;
                    return Some(ModelWrite(self));
                }
                drop(st);
                thread::yield_now();
                st = self.state.lock().unwrap();
            }
            st.queued_writers -= 1;
            drop(st);
            self.changed.notify_all(); // fair readers may go now
            None
        }
    }

    fn tight() -> WriterPolicy {
        WriterPolicy {
            patience: Duration::from_micros(100),
            escalation: Duration::from_micros(100),
            attempts: 2,
        }
    }

    /// Readers and an escalating writer: never both inside, every thread
    /// finishes (loom reports a deadlock otherwise), and the escalation
    /// flag is down once the writer returns, whatever the outcome.
    #[test]
    fn readers_and_an_escalating_writer_exclude_and_finish() {
        loom::model(|| {
            let lock = Arc::new(SchemaLock::<Model>::default());
            let inside = Arc::new(AtomicUsize::new(0));
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let (lock, inside) = (lock.clone(), inside.clone());
                    thread::spawn(move || {
                        let _g = lock.read();
                        inside.fetch_add(1, Ordering::SeqCst);
                        thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    })
                })
                .collect();
            // The writer must get in (the readers each hold once): retried
            // until it does, every failed attempt gave up with its budget
            // spent and left the escalation flag down.
            let guard = loop {
                match lock.write(&tight()) {
                    Ok(guard) => break guard,
                    Err(gave_up) => {
                        assert_eq!(gave_up.attempts, 2, "gave up before its budget");
                        assert!(!lock.escalating.load(Ordering::SeqCst));
                    }
                }
                thread::yield_now();
            };
            assert_eq!(
                inside.load(Ordering::SeqCst),
                0,
                "a reader inside the writer"
            );
            drop(guard);
            assert!(!lock.escalating.load(Ordering::SeqCst));
            for r in readers {
                r.join().unwrap();
            }
        });
    }

    /// A call that takes the read side again on the same thread (a nested
    /// call) while the writer escalates: the inner fair read queues behind
    /// the writer, which waits for the outer read; the bounded escalation
    /// breaks the cycle and both finish.
    #[test]
    fn a_nested_read_during_escalation_cannot_deadlock() {
        loom::model(|| {
            let lock = Arc::new(SchemaLock::<Model>::default());
            let reader = {
                let lock = lock.clone();
                thread::spawn(move || {
                    let _outer = lock.read();
                    let _inner = lock.read();
                })
            };
            let _ = lock.write(&tight());
            assert!(!lock.escalating.load(Ordering::SeqCst));
            reader.join().unwrap();
        });
    }

    /// A reader that holds on through every attempt: the writer gives up
    /// with the attempts it made, and a new reader gets in at once.
    #[test]
    fn a_writer_that_gives_up_leaves_the_lock_free_for_readers() {
        loom::model(|| {
            let lock = Arc::new(SchemaLock::<Model>::default());
            let held = lock.read();
            let err = lock.write(&tight()).err();
            assert_eq!(err.map(|e| e.attempts), Some(2));
            let other = {
                let lock = lock.clone();
                thread::spawn(move || drop(lock.read()))
            };
            other.join().unwrap();
            drop(held);
            assert!(lock.write(&tight()).is_ok());
        });
    }
}
