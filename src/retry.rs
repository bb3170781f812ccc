//! Retries: which errors are lock conflicts worth another attempt, and
//! backoff with jitter between attempts.

use std::thread;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::Error;

/// What to do after a failed phase transaction.
pub(crate) enum Retry {
    /// A lock conflict with attempts left: back off and try again.
    Again,
    /// Give up with this error.
    Stop(Error),
}

/// A phase's lock conflict (lock timeout, deadlock, busy) is retried while
/// attempts are left and becomes [`Error::PhaseContended`] after the last;
/// any other error stops at once.
pub(crate) fn lock_conflict<B: Backend>(e: Error, attempt: u32, attempts: u32) -> Retry {
    match e {
        Error::PhaseFailed { ref source, .. } if B::is_transient(source) && attempt < attempts => {
            tracing::debug!(attempt, error = %source, "phase hit a lock conflict; retrying");
            Retry::Again
        }
        Error::PhaseFailed {
            version,
            phase,
            source,
        } if B::is_transient(&source) => Retry::Stop(Error::PhaseContended {
            version,
            phase,
            attempts,
            source,
        }),
        other => Retry::Stop(other),
    }
}

/// Exponential backoff with jitter between retries: 5 ms doubling to 500 ms.
pub(crate) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(5))
    }
}

impl Backoff {
    pub(crate) fn wait(&mut self) {
        self.wait_at_most(None);
    }

    /// As [`wait`](Self::wait), never longer than `left`.
    pub(crate) fn wait_at_most(&mut self, left: Option<Duration>) {
        thread::sleep((self.0 + jitter(self.0)).min(left.unwrap_or(Duration::MAX)));
        self.0 = (self.0 * 2).min(Duration::from_millis(500));
    }
}

/// Up to `base` of jitter, from the clock's low bits (no RNG needed for this).
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let base_ns = u32::try_from(base.as_nanos()).unwrap_or(u32::MAX).max(1);
    Duration::from_nanos(u64::from(nanos % base_ns))
}
