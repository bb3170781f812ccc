//! Serving: the `Tandem` handle and its `Builder`, which opens the database,
//! and the one way into a call (`call` and `unit_of_work`). Uses the shared
//! state, the fleet and the upgrader; none of them uses this module.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::r2d2::{CustomizeConnection, Pool};

use crate::backend::{Backend, PoolSettings};
use crate::catalog::Catalog;
use crate::dispatch::{self, Repository, Session};
use crate::error::{Error, Result};
use crate::fleet::{self, Membership};
use crate::lock::{SchemaLock, WriterPolicy};
use crate::redact::{redact, Secrets};
pub use crate::shared::Conn;
use crate::shared::MissedSwitch;
use crate::shared::{pool_error, Backfill, CallPath, PathCell, Shared};
use crate::store::{self, HistoryEntry, Instance, Prefix, State, Store};
use crate::upgrade::Upgrader;
use crate::version::{Phase, Version};

/// The handle an application serves through. Cheap to clone (an `Arc`
/// inside); share it between threads.
///
/// See the [crate documentation](crate) for a tour.
pub struct Tandem<B: Backend> {
    pub(crate) shared: Arc<Shared<B>>,
    /// Keeps this instance in the fleet while any handle or upgrader lives.
    member: Arc<Membership<B>>,
}

impl<B: Backend> Clone for Tandem<B> {
    fn clone(&self) -> Self {
        Tandem {
            shared: Arc::clone(&self.shared),
            member: Arc::clone(&self.member),
        }
    }
}

impl<B: Backend> fmt::Debug for Tandem<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tandem")
            .field("backend", &B::NAME)
            .field("database", &self.shared.target)
            .field("live", &self.live_version())
            .field("serves", &self.served_versions())
            .finish_non_exhaustive()
    }
}

mod backfills;
mod builder;
mod call;
mod setup;

pub use builder::Builder;

impl<B: Backend> Tandem<B> {
    /// A pooled connection, outside any schema lock: for reading or writing
    /// outside bindings (tests, verification, administration).
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when no connection is free in time.
    #[inline]
    pub fn connection(&self) -> Result<Conn<B>> {
        self.shared.connection()
    }

    /// The live version as this process knows it (no database round trip).
    pub fn live_version(&self) -> Version {
        self.shared.live_version()
    }

    /// The versions this binary serves.
    pub fn served_versions(&self) -> RangeInclusive<Version> {
        self.shared.served()
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    /// The key of the database schema lock: on PostgreSQL, the advisory
    /// lock that locking-path calls take shared and the switch exclusive
    /// (in `pg_locks`, `locktype = 'advisory'` with `classid` the high and
    /// `objid` the low 32 bits). Derived from the metadata prefix, so
    /// applications with different prefixes never share it. Unused on SQLite,
    /// whose write lock plays that part.
    pub fn schema_lock_key(&self) -> i64 {
        self.shared.lock_key
    }

    /// This instance's id in the metadata tables (host:pid:label:nonce).
    pub fn instance_id(&self) -> &str {
        &self.shared.instance
    }

    /// Whether this instance hears the state row's changes as they commit
    /// (see [`Builder::push`]): PostgreSQL, push on, and the listening
    /// session's probe notice arrived and it is connected now. `false`: it
    /// polls only (SQLite; `push(false)`; a transaction-mode pooler between;
    /// the session reconnecting).
    pub fn pushed(&self) -> bool {
        self.shared
            .push
            .lock()
            .as_ref()
            .is_some_and(crate::fleet::push::Subscription::listening)
    }

    /// Reads the state row from the database.
    ///
    /// # Errors
    ///
    /// [`Error::MetadataCorrupt`] or a database error.
    pub fn state(&self) -> Result<State> {
        let mut conn = self.connection()?;
        self.shared.store.read_state::<B>(&mut *conn)
    }

    /// Every applied, running or failed phase, oldest first.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn history(&self) -> Result<Vec<HistoryEntry>> {
        let mut conn = self.connection()?;
        self.shared.store.history::<B>(&mut *conn)
    }

    /// Reads the state row now and adopts it (as the background poller does
    /// every poll interval), renewing this instance's lease (which the
    /// poller does about every quarter lease).
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`] if steady calls in flight did not drain in
    /// time, or a database error.
    pub fn refresh(&self) -> Result<State> {
        fleet::poll_once(&self.shared)
    }

    /// The upgrader, which runs expand, switch and contract through this
    /// handle (sharing its schema lock).
    pub fn upgrader(&self) -> Upgrader<B> {
        Upgrader::new(Arc::clone(&self.shared), Arc::clone(&self.member))
    }

    /// Live instances (expired ones are removed on the way).
    ///
    /// # Errors
    ///
    /// A database error, or [`Error::MetadataCorrupt`] for a fleet row with
    /// an impossible version.
    pub fn instances(&self) -> Result<Vec<Instance>> {
        fleet::instances(&self.shared)
    }

    /// The last time this instance found the database more than one
    /// version away from the version it had been serving (it missed a whole
    /// switch: frozen longer than its lease, or the state row restored), if
    /// ever. Its calls left the steady path at once; the log has an error
    /// naming both versions too. `None` in a healthy fleet.
    pub fn missed_switch(&self) -> Option<MissedSwitch> {
        *self.shared.missed_switch.lock()
    }

    /// Whether calls of this instance currently take the steady path.
    pub fn steady(&self) -> bool {
        self.shared.steady()
    }

    /// The longest any call has waited for the schema read lock since the
    /// last [`reset_max_lock_wait`](Tandem::reset_max_lock_wait).
    pub fn max_lock_wait(&self) -> Duration {
        self.shared.lock.max_read_wait()
    }

    /// Resets [`max_lock_wait`](Tandem::max_lock_wait).
    pub fn reset_max_lock_wait(&self) {
        self.shared.lock.reset_max_read_wait();
    }
}
