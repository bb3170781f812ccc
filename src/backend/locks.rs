//! The database's side of the schema lock, the in-process writer queue a
//! backend asks for, and which errors are passing lock conflicts.

use std::time::Duration;

use diesel::result::QueryResult;

/// The database's side of tandem's schema lock, taken on connections of
/// type `C` (the backend's own). Implemented by [`Sqlite`](crate::Sqlite) and
/// [`Postgres`](crate::Postgres); sealed.
///
/// Every lock here is transaction-scoped: it is released when the
/// connection's transaction ends, so no session state is left on a pooled
/// connection (PgBouncer's transaction mode keeps working).
pub trait Locks<C>: super::sealed::Sealed {
    /// Inside a call's transaction on the locking path: takes the shared
    /// side of the database schema lock `key` and returns the live version as
    /// stored, read after the lock was granted. One round trip.
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn enter_shared(conn: &mut C, prefix: &str, state_table: &str, key: i64) -> QueryResult<i64>;

    /// Inside the switch's transaction: takes the exclusive side of the
    /// database schema lock `key` if it is free, without queueing (queued
    /// exclusive requests would stall every new reader behind them).
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn try_enter_exclusive(conn: &mut C, key: i64) -> QueryResult<bool>;

    /// Inside the switch's transaction: queues for the exclusive side for at
    /// most `timeout` (the bounded escalation); on timeout the transaction
    /// is aborted with a lock-timeout error (one that
    /// [`is_transient`](Locks::is_transient) accepts) and the readers
    /// behind it run.
    ///
    /// # Errors
    ///
    /// A lock-timeout error, or another database error.
    #[doc(hidden)]
    fn enter_exclusive_within(conn: &mut C, key: i64, timeout: Duration) -> QueryResult<()>;

    /// Inside the transaction that creates or checks the metadata at open:
    /// waits until no other process is doing the same (PostgreSQL: the
    /// transaction-scoped advisory lock `key`); until commit, this one is
    /// alone. SQLite's `BEGIN IMMEDIATE` already holds its only write lock.
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn serialize_initialization(conn: &mut C, key: i64) -> QueryResult<()>;

    /// Bounds how long this connection's statements wait for the database's
    /// write lock from now on (`None`: the default again). SQLite: its
    /// `busy_timeout`; a no-op where waits are bounded per statement
    /// (PostgreSQL: `lock_timeout` and the switch's escalation bound).
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn set_busy_wait(conn: &mut C, wait: Option<Duration>) -> QueryResult<()>;

    /// Whether an error is a passing lock conflict worth retrying
    /// (SQLite busy, PostgreSQL lock timeout or deadlock).
    #[doc(hidden)]
    fn is_transient(error: &diesel::result::Error) -> bool;
}

/// Inside a transaction: the exclusive side of the database schema lock
/// `key`, polled without queueing for `patience` (readers keep priority),
/// then queued for at most `escalation` — the same escalation as the
/// in-process lock's, through [`crate::lock::poll_then_queue`]. Whether it
/// escalated, or `None` if the bounded queue timed out (the backend aborted
/// the transaction then; the readers behind it run).
///
/// # Errors
///
/// A database error other than the lock timeout.
pub(crate) fn exclusive_within<C, L: Locks<C>>(
    conn: &mut C,
    key: i64,
    patience: Duration,
    escalation: Duration,
) -> QueryResult<Option<bool>> {
    let taken = crate::lock::poll_then_queue(
        conn,
        patience,
        escalation,
        |c| Ok(L::try_enter_exclusive(c, key)?.then_some(())),
        |c, bound| match L::enter_exclusive_within(c, key, bound) {
            Ok(()) => Ok(Some(())),
            Err(e) if L::is_transient(&e) => Ok(None),
            Err(e) => Err(e),
        },
    )?;
    Ok(taken.map(|t| t.escalated))
}

/// How a backend's write transactions pass this process: the capability a
/// backend states with [`Backend::Writers`](crate::Backend). Sealed.
pub trait WriteGate:
    Default + Send + Sync + std::fmt::Debug + 'static + super::sealed::Sealed
{
    /// Waits for this process's turn to write, or `None` where writers do
    /// not queue in-process. The turn lasts while the guard lives. With
    /// `until`, waits no later than that, and `None` if the turn did not
    /// come: the write then goes to the database without it (the turn only
    /// orders this process's writers; the database's lock is what
    /// excludes them).
    #[doc(hidden)]
    fn turn(
        &self,
        until: Option<std::time::Instant>,
    ) -> Option<parking_lot::FairMutexGuard<'_, ()>>;
}

/// Writers queue in-process, first come first served: a `FairMutex` hands
/// the turn to the longest waiter on every unlock (SQLite).
#[cfg(feature = "sqlite")]
#[derive(Debug, Default)]
pub struct Queued(parking_lot::FairMutex<()>);

#[cfg(feature = "sqlite")]
impl super::sealed::Sealed for Queued {}

#[cfg(feature = "sqlite")]
impl WriteGate for Queued {
    #[inline]
    fn turn(
        &self,
        until: Option<std::time::Instant>,
    ) -> Option<parking_lot::FairMutexGuard<'_, ()>> {
        match until {
            None => Some(self.0.lock()),
            Some(until) => self.0.try_lock_until(until),
        }
    }
}

/// Writers go straight to the database, which queues them (PostgreSQL).
#[cfg(feature = "postgres")]
#[derive(Debug, Default, Clone, Copy)]
pub struct Direct;

#[cfg(feature = "postgres")]
impl super::sealed::Sealed for Direct {}

#[cfg(feature = "postgres")]
impl WriteGate for Direct {
    #[inline]
    fn turn(
        &self,
        _until: Option<std::time::Instant>,
    ) -> Option<parking_lot::FairMutexGuard<'_, ()>> {
        None
    }
}

/// Whether a diesel error is a passing lock conflict: by its kind where
/// diesel has one (`SerializationFailure`, SQLSTATE 40001), else by the
/// server's message, matched against `messages` (each backend lists its own
/// and says why text is all there is).
pub(crate) fn is_lock_conflict(error: &diesel::result::Error, messages: &[&str]) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match error {
        Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        // A closed connection is not a conflict: retrying on it fails again.
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => false,
        Error::DatabaseError(_, info) => {
            let message = info.message();
            messages.iter().any(|m| message.contains(m))
        }
        _ => false,
    }
}
