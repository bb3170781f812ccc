//! The `Tandem` handle: opens the database, holds the pool, the catalog, the
//! cached live version and the schema lock, and runs calls.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};

use crate::backend::{Backend, PoolSettings};
use crate::catalog::{sha256_hex, Catalog};
use crate::dispatch::{Repository, Session};
use crate::error::{Error, Result};
use crate::fleet;
use crate::lock::{SchemaLock, WriterPolicy};
use crate::redact::{redact, Secrets};
use crate::store::{self, HistoryEntry, Instance, Prefix, State, Store};
use crate::upgrade::{Step, Upgrader};
use crate::version::{Phase, Version};

/// A pooled connection of backend `B`.
pub type Conn<B> = PooledConnection<ConnectionManager<<B as Backend>::Connection>>;

/// The handle an application serves through. Cheap to clone (an `Arc`
/// inside); share it between threads.
///
/// See the [crate documentation](crate) for a tour.
pub struct Tandem<B: Backend> {
    pub(crate) inner: Arc<Inner<B>>,
    /// `None` in the handles tandem's own threads make.
    life: Option<Arc<Lifetime<B>>>,
}

impl<B: Backend> Clone for Tandem<B> {
    fn clone(&self) -> Self {
        Tandem {
            inner: Arc::clone(&self.inner),
            life: self.life.clone(),
        }
    }
}

impl<B: Backend> fmt::Debug for Tandem<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tandem")
            .field("backend", &B::NAME)
            .field("database", &self.inner.target)
            .field("live", &self.live_version())
            .field("serves", &self.served_versions())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<B: Backend> {
    pub(crate) pool: Pool<ConnectionManager<B::Connection>>,
    pub(crate) store: Store,
    pub(crate) catalog: Catalog,
    pub(crate) first: Version,
    pub(crate) last: Version,
    /// The live version as last read or switched by this process; changed
    /// under the schema write lock, or while calls take the locking path,
    /// and only through `Tandem::cache_state`.
    pub(crate) live: AtomicU32,
    /// The epoch of the state row that `live` and `path` reflect. Held while
    /// they are checked and stored: an older row (a poller tick that read it
    /// before a switch this process made) is never cached over a newer one.
    pub(crate) cached_epoch: parking_lot::Mutex<i64>,
    pub(crate) lock: SchemaLock,
    /// Queues this process's write transactions (see `Backend::QUEUE_WRITERS`),
    /// first come first served: a `FairMutex` hands the lock to the longest
    /// waiter on every unlock. Always taken after the schema lock, never before.
    pub(crate) write_gate: parking_lot::FairMutex<()>,
    /// `Builder::queue_writers`: whether the gate is used where the backend queues writers.
    pub(crate) queue_writers: bool,
    pub(crate) instance: String,
    pub(crate) steps: Vec<Step<B>>,
    pub(crate) writer: WriterPolicy,
    pub(crate) lock_timeout: Duration,
    /// Upgrade leases this process's upgraders left behind when their
    /// command returned (the cleanup could not reach the database): the
    /// next upgrader of this process takes them over at once.
    pub(crate) orphaned_leases: parking_lot::Mutex<Vec<String>>,
    /// `Builder::switch_timeout`: the most a switch waits in all.
    pub(crate) switch_timeout: Duration,
    pub(crate) target: String,
    /// Which path calls take: [`fleet::STEADY`], [`fleet::LOCKING`], or
    /// [`fleet::UNDRAINED`] (locking, but steady calls may still be in
    /// flight). See `fleet`.
    pub(crate) path: AtomicU8,
    /// This instance's fleet row as registered.
    pub(crate) me: Instance,
    pub(crate) poll_interval: Duration,
    pub(crate) lease: Duration,
    /// When the lease, last renewed, stops counting as fresh.
    pub(crate) lease_deadline: AtomicU64,
    pub(crate) fleet_paused: AtomicBool,
    /// Test hook: the poller renews nothing, the confirmer still reads.
    pub(crate) renewals_held: AtomicBool,
    /// Serialises fleet ticks of this instance (the poller and `refresh`)
    /// and holds the last epoch adopted: an older state row is never
    /// adopted after a newer one.
    pub(crate) adopted_epoch: parking_lot::Mutex<i64>,
    /// The last epoch adopted, for the confirmer (which must not wait for a
    /// tick holding `adopted_epoch`).
    pub(crate) adopted_copy: AtomicI64,
    /// When the last lease renewal started (coarse clock ticks).
    pub(crate) renewed_at: AtomicU64,
    pub(crate) shutdown: Arc<AtomicBool>,
    /// The poller and lease watchdog threads, to wake them at shutdown.
    pub(crate) poller: parking_lot::Mutex<Vec<std::thread::Thread>>,
    /// The database schema lock's advisory key.
    pub(crate) lock_key: i64,
    /// The pieces of `url`'s password, masked in every message shown.
    pub(crate) secrets: Secrets,
}

/// Shared by the application's handles only, never by tandem's background
/// threads: when the last handle drops, the instance leaves the fleet at once.
pub(crate) struct Lifetime<B: Backend> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Drop for Lifetime<B> {
    fn drop(&mut self) {
        self.inner.leave_fleet();
    }
}

impl<B: Backend> Inner<B> {
    /// Stops the background threads and removes this instance's fleet row
    /// (clean shutdown). If the database is unreachable the row expires with
    /// its lease.
    fn leave_fleet(&self) {
        self.shutdown.store(true, Ordering::Release);
        for thread in self.poller.lock().drain(..) {
            thread.unpark();
        }
        // Wait for a fleet tick in progress, so it cannot renew after this.
        let _ticks = self.adopted_epoch.lock();
        match self.pool.get_timeout(Duration::from_secs(2)) {
            Ok(mut conn) => {
                if let Err(e) = self.store.deregister::<B>(&mut conn, &self.me.id) {
                    tracing::warn!(error = %e, "could not leave the fleet table; the row expires with its lease");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not leave the fleet table; the row expires with its lease")
            }
        }
    }
}

mod builder;
mod call;
mod setup;

pub use builder::Builder;

impl<B: Backend> Tandem<B> {
    /// A handle for tandem's background threads: it does not keep the
    /// instance in the fleet.
    pub(crate) fn internal(inner: Arc<Inner<B>>) -> Self {
        Tandem { inner, life: None }
    }

    /// A pooled connection, outside any schema lock: for reading or writing
    /// outside bindings (tests, verification, administration).
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when no connection is free in time.
    #[inline]
    pub fn connection(&self) -> Result<Conn<B>> {
        self.inner
            .pool
            .get()
            .map_err(|e| pool_error(&e, &self.inner.secrets))
    }

    /// The live version as this process knows it (no database round trip).
    pub fn live_version(&self) -> Version {
        Version::new(self.inner.live.load(Ordering::Acquire)).unwrap_or(Version::FIRST)
    }

    /// The versions this binary serves.
    pub fn served_versions(&self) -> RangeInclusive<Version> {
        self.inner.first..=self.inner.last
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The key of the database schema lock: on PostgreSQL, the advisory
    /// lock that locking-path calls take shared and the switch exclusive
    /// (in `pg_locks`, `locktype = 'advisory'` with `classid` the high and
    /// `objid` the low 32 bits). Derived from the metadata prefix, so
    /// applications with different prefixes never share it. Unused on SQLite,
    /// whose write lock plays that part.
    pub fn schema_lock_key(&self) -> i64 {
        self.inner.lock_key
    }

    /// This instance's id in the metadata tables (host:pid:label:nonce).
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// Reads the state row from the database.
    ///
    /// # Errors
    ///
    /// [`Error::MetadataCorrupt`] or a database error.
    pub fn state(&self) -> Result<State> {
        let mut conn = self.connection()?;
        self.inner.store.read_state::<B>(&mut *conn)
    }

    /// Every applied, running or failed phase, oldest first.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn history(&self) -> Result<Vec<HistoryEntry>> {
        let mut conn = self.connection()?;
        self.inner.store.history::<B>(&mut *conn)
    }

    /// Reads the state row now and adopts it (as the background poller does
    /// every poll interval), renewing this instance's lease.
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`] if steady calls in flight did not drain in
    /// time, or a database error.
    pub fn refresh(&self) -> Result<State> {
        self.poll_once()
    }

    /// The upgrader, which runs expand, switch and contract through this
    /// handle (sharing its schema lock).
    pub fn upgrader(&self) -> Upgrader<'_, B> {
        Upgrader::new(self)
    }

    /// The longest any call has waited for the schema read lock since the
    /// last [`reset_max_lock_wait`](Tandem::reset_max_lock_wait).
    pub fn max_lock_wait(&self) -> Duration {
        self.inner.lock.max_read_wait()
    }

    /// Resets [`max_lock_wait`](Tandem::max_lock_wait).
    pub fn reset_max_lock_wait(&self) {
        self.inner.lock.reset_max_read_wait();
    }

    /// Checks every applied phase's recorded checksum against the catalog,
    /// for the versions the catalog has.
    pub(crate) fn verify_checksums(&self, conn: &mut B::Connection) -> Result<()> {
        let latest = self.inner.catalog.latest();
        for entry in self.inner.store.history::<B>(conn)? {
            let Some(phase) = Phase::parse(&entry.phase) else {
                continue;
            };
            if entry.outcome == store::FAILED {
                continue;
            }
            // A version newer than this binary's catalog was applied by a
            // newer binary: not this one's to verify. A binary restarted in
            // the middle of a deploy (expanded, or after a switch back)
            // serves while the live version is one it serves; calls get
            // `VersionNotServed` (naming what to deploy) once it is not.
            if entry.version > latest {
                continue;
            }
            if !self
                .inner
                .catalog
                .accepts(entry.version, phase, B::NAME, &entry.checksum)
            {
                let current = self.phase_checksum(entry.version, phase);
                return Err(Error::ChecksumDrift {
                    version: entry.version,
                    phase,
                    recorded: entry.checksum,
                    current,
                });
            }
        }
        Ok(())
    }

    /// The checksum of a phase's SQL for this backend (of the empty text when
    /// the version has no file for the phase).
    pub(crate) fn phase_checksum(&self, version: Version, phase: Phase) -> String {
        self.inner
            .catalog
            .phase(version, phase, B::NAME)
            .map_or_else(|| sha256_hex(""), |sql| sql.checksum.to_owned())
    }
}

pub(crate) fn pool_error(e: &r2d2::Error, secrets: &Secrets) -> Error {
    Error::Pool {
        message: secrets.redact(&e.to_string()),
    }
}
