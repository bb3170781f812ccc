//! Retries: which errors are lock conflicts worth another attempt (the
//! wait between attempts is [`crate::backoff::Backoff`]).

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
