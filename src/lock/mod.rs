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
//! proceeds. The loom model (`loom_model.rs`) checks this, mutual
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
    /// attempt: the bound on any reader's extra wait. Defaults to 5 ms. On
    /// the database's schema lock (PostgreSQL) each retry of the switch
    /// doubles it, up to 8× (40 ms by default): under load the calls in
    /// flight, each holding the shared lock until it commits, can outlast
    /// the first window on every attempt.
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

    /// Takes the write side under `policy`: each attempt polls politely,
    /// then escalates for a bounded time ([`poll_then_queue`]).
    pub(crate) fn write(&self, policy: &WriterPolicy) -> Result<WriteGuard<'_, R>, WriterGaveUp> {
        let start = Instant::now();
        for _attempt in 0..policy.attempts.max(1) {
            let taken = poll_then_queue(
                &mut (),
                policy.patience,
                policy.escalation,
                |()| Ok::<_, std::convert::Infallible>(self.rw.try_write()),
                |(), bound| {
                    self.escalating.store(true, Ordering::Release);
                    let guard = self.rw.try_write_for(bound);
                    self.escalating.store(false, Ordering::Release);
                    Ok(guard)
                },
            );
            match taken {
                Ok(Some(t)) => {
                    if t.escalated {
                        tracing::debug!(waited = ?start.elapsed(), "schema writer lock taken after escalation");
                    }
                    return Ok(WriteGuard {
                        _guard: t.value,
                        waited: start.elapsed(),
                        escalated: t.escalated,
                    });
                }
                Ok(None) => {
                    tracing::debug!("schema writer escalation timed out; readers resume, retrying");
                }
                Err(never) => match never {},
            }
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

/// What [`poll_then_queue`] took.
#[derive(Debug)]
pub(crate) struct Taken<T> {
    pub(crate) value: T,
    /// Whether it was taken by queueing (readers waited behind it).
    pub(crate) escalated: bool,
}

/// The one escalation of a writer lock, in-process or in the database:
/// polls `try_now` without queueing for `patience`, 50 µs doubling to 2 ms
/// between tries and never past `patience` (a polling writer stalls no
/// reader), then queues once with `queue(escalation)` (readers that arrive
/// now wait behind it, for at most `escalation`). `None` if the bounded
/// queue timed out.
///
/// # Errors
///
/// The first error of `try_now` or `queue`.
pub(crate) fn poll_then_queue<C: ?Sized, T, E>(
    ctx: &mut C,
    patience: Duration,
    escalation: Duration,
    mut try_now: impl FnMut(&mut C) -> Result<Option<T>, E>,
    queue: impl FnOnce(&mut C, Duration) -> Result<Option<T>, E>,
) -> Result<Option<Taken<T>>, E> {
    let polite_until = Instant::now() + patience;
    let mut backoff = Duration::from_micros(50);
    loop {
        if let Some(value) = try_now(ctx)? {
            return Ok(Some(Taken {
                value,
                escalated: false,
            }));
        }
        let now = Instant::now();
        if now >= polite_until {
            break;
        }
        clock::sleep(backoff.min(polite_until - now));
        backoff = backoff.saturating_mul(2).min(Duration::from_millis(2));
    }
    Ok(queue(ctx, escalation)?.map(|value| Taken {
        value,
        escalated: true,
    }))
}

#[cfg(test)]
#[cfg(not(tandem_loom))]
mod tests;

#[cfg(test)]
#[cfg(tandem_loom)]
mod loom_model;
