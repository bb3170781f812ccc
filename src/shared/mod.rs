//! The state one opened database shares between its handles, its
//! background threads and its upgraders: the pool, the store, the catalog,
//! the live-version cache with its epoch and call path, the schema lock and
//! the settings. The layer between the store and the three that use it
//! (serving calls, the fleet, the upgrader), which import it and never
//! each other's internals (see the README's "Architecture").

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};

use crate::backend::{Backend, WriteGate};
use crate::catalog::{sha256_hex, Catalog};
use crate::error::{Error, Result};
use crate::lock::{SchemaLock, WriterPolicy};
use crate::redact::Secrets;
use crate::store::{self, Instance, Store};
use crate::version::{Phase, Version};

mod bound;
mod missed;
pub(crate) use bound::WritesBounded;
pub use missed::MissedSwitch;

/// A pooled connection of backend `B`.
pub type Conn<B> = PooledConnection<ConnectionManager<<B as Backend>::Connection>>;

/// Which path calls take (see [`crate::protocol`], 2 and 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CallPath {
    /// The cached version under the in-process read lock.
    Steady = 0,
    /// Each call in its own transaction, under the database's shared schema
    /// lock, reading the live version; no steady call is in flight.
    Locking = 1,
    /// The locking path, but steady calls that entered before the lease
    /// watchdog left the steady path may still be in flight: the next
    /// adoption drains them before anything is acknowledged.
    Undrained = 2,
}

/// A [`CallPath`] read and written atomically.
pub(crate) struct PathCell(AtomicU8);

impl PathCell {
    pub(crate) fn new(path: CallPath) -> Self {
        PathCell(AtomicU8::new(path as u8))
    }

    #[inline]
    pub(crate) fn load(&self) -> CallPath {
        match self.0.load(Ordering::Acquire) {
            0 => CallPath::Steady,
            1 => CallPath::Locking,
            _ => CallPath::Undrained,
        }
    }

    pub(crate) fn store(&self, path: CallPath) {
        self.0.store(path as u8, Ordering::Release);
    }

    /// Moves `from` to `to`; whether the path was `from`.
    pub(crate) fn replace(&self, from: CallPath, to: CallPath) -> bool {
        self.0
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A batched Rust backfill of a version's expand phase (see
/// [`Builder::backfill`](crate::Builder::backfill)).
pub(crate) struct Backfill<B: Backend> {
    pub(crate) version: u32,
    pub(crate) name: String,
    #[allow(clippy::type_complexity)]
    pub(crate) batch: Box<dyn Fn(&mut B::Connection) -> diesel::QueryResult<usize> + Send + Sync>,
    /// The statement of a [`Builder::backfill_sql`](crate::Builder::backfill_sql), checked at open.
    pub(crate) sql: Option<String>,
}

/// A test's stand-in for a database busy with another writer
/// (`testing::faults::FleetFaults::stall_writes`).
pub(crate) type WriteStall = Arc<dyn Fn() + Send + Sync>;

/// The state of one opened database (see the module docs).
pub(crate) struct Shared<B: Backend> {
    pub(crate) pool: Pool<ConnectionManager<B::Connection>>,
    pub(crate) store: Store,
    pub(crate) catalog: Catalog,
    pub(crate) first: Version,
    pub(crate) last: Version,
    /// The live version as last read or switched by this process; changed
    /// under the schema write lock, or while calls take the locking path,
    /// and only through [`Shared::cache_state`].
    pub(crate) live: AtomicU32,
    /// The epoch of the state row that `live` and `path` reflect. Held while
    /// they are checked and stored: an older row (a poller tick that read it
    /// before a switch this process made) is never cached over a newer one.
    pub(crate) cached_epoch: parking_lot::Mutex<i64>,
    pub(crate) lock: SchemaLock,
    /// How this process's write transactions pass (`Backend::Writers`:
    /// queued first come first served, or straight to the database). Always
    /// taken after the schema lock, never before.
    pub(crate) write_gate: B::Writers,
    /// `Builder::queue_writers`: whether the gate is used where the backend queues writers.
    pub(crate) queue_writers: bool,
    pub(crate) instance: String,
    pub(crate) backfills: Vec<Backfill<B>>,
    pub(crate) writer: WriterPolicy,
    pub(crate) lock_timeout: Duration,
    /// Upgrade leases this process's upgraders left behind when their
    /// command returned (the cleanup could not reach the database): the
    /// next upgrader of this process takes them over at once.
    pub(crate) orphaned_leases: parking_lot::Mutex<Vec<String>>,
    /// `Builder::switch_timeout`: the most a switch waits in all.
    pub(crate) switch_timeout: Duration,
    pub(crate) target: String,
    /// Which path calls take.
    pub(crate) path: PathCell,
    /// This instance's fleet row as registered.
    pub(crate) me: Instance,
    pub(crate) poll_interval: Duration,
    pub(crate) lease: Duration,
    /// When the lease, last renewed, stops counting as fresh.
    pub(crate) lease_deadline: AtomicU64,
    /// Test hook: the poller renews nothing (`testing::faults::FleetFaults::pause_fleet`).
    pub(crate) fleet_paused: AtomicBool,
    /// Test hook: the poller renews nothing, the confirmer still reads.
    pub(crate) renewals_held: AtomicBool,
    /// Test hook: what each write transaction runs once it has its write
    /// turn (`testing::faults::FleetFaults::stall_writes`); `stalling` says
    /// whether there is one, so that the path without costs one load.
    pub(crate) write_stall: parking_lot::Mutex<Option<WriteStall>>,
    pub(crate) stalling: AtomicBool,
    /// Serialises fleet ticks of this instance (the poller and `refresh`)
    /// and holds the last epoch adopted: an older state row is never
    /// adopted after a newer one.
    pub(crate) adopted_epoch: parking_lot::Mutex<i64>,
    /// The last epoch adopted, for the confirmer (which must not wait for a
    /// tick holding `adopted_epoch`).
    pub(crate) adopted_copy: AtomicI64,
    /// When the last lease renewal started (coarse clock ticks).
    pub(crate) renewed_at: AtomicU64,
    /// The epoch this instance's fleet row says it acknowledged, as it last
    /// wrote it (`i64::MIN`: not known): a tick writes an acknowledgement
    /// only when it differs.
    pub(crate) acknowledged: AtomicI64,
    pub(crate) shutdown: Arc<AtomicBool>,
    /// The poller and lease watchdog threads, to wake them at shutdown.
    pub(crate) threads: parking_lot::Mutex<Vec<std::thread::Thread>>,
    /// This handle's subscription to its database's change notices, if it
    /// hears them (`fleet::push`); dropped as it leaves the fleet.
    pub(crate) push: parking_lot::Mutex<Option<crate::fleet::push::Subscription>>,
    /// The database schema lock's advisory key.
    pub(crate) lock_key: i64,
    /// The last breach of the two-version rule this instance noticed
    /// (`fleet::check_two_versions`).
    pub(crate) missed_switch: parking_lot::Mutex<Option<MissedSwitch>>,
    /// The pieces of `url`'s password, masked in every message shown.
    pub(crate) secrets: Secrets,
}

impl<B: Backend> Shared<B> {
    /// A pooled connection, outside any schema lock.
    #[inline]
    pub(crate) fn connection(&self) -> Result<Conn<B>> {
        self.pool.get().map_err(|e| pool_error(&e, &self.secrets))
    }

    /// The live version as this process knows it (no database round trip).
    pub(crate) fn live_version(&self) -> Version {
        Version::new(self.live.load(Ordering::Acquire)).unwrap_or(Version::FIRST)
    }

    /// The versions this binary serves.
    pub(crate) fn served(&self) -> RangeInclusive<Version> {
        self.first..=self.last
    }

    /// A write transaction behind this process's write gate (where the
    /// backend queues writers). Callers holding the schema lock take it first.
    /// Under a [`WritesBounded`] deadline, the turn and the database's write
    /// lock are waited for no later than it (see [`bounded`](Self::bounded)).
    pub(crate) fn write_transaction<T, E, F>(&self, conn: &mut B::Connection, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut B::Connection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.gated(conn, |c| B::write_transaction(c, f))
    }

    /// One write statement as its own transaction ([`Backend::write_statement`]),
    /// queued, bounded and stalled as [`write_transaction`](Self::write_transaction).
    pub(crate) fn write_statement<T, E, F>(&self, conn: &mut B::Connection, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut B::Connection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.gated(conn, |c| B::write_statement(c, f))
    }

    /// `write` with this process's write turn, under this thread's
    /// [`WritesBounded`] deadline if one is set.
    fn gated<T, E>(
        &self,
        conn: &mut B::Connection,
        write: impl FnOnce(&mut B::Connection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<diesel::result::Error>,
    {
        let until = bound::writes_until();
        let _turn = self.write_turn(until);
        match until {
            None => write(conn),
            Some(until) => Self::bounded(conn, until, write),
        }
    }

    /// Runs `f` with `conn` waiting for the database's write lock (SQLite's
    /// busy wait) no later than `until`, then gives `conn` the pool's wait
    /// back, also if `f` panics (a pooled connection must not keep a
    /// shortened wait).
    fn bounded<T, E, F>(conn: &mut B::Connection, until: Instant, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut B::Connection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        let left = until.saturating_duration_since(Instant::now());
        B::set_busy_wait(conn, Some(left))?;
        let restore = RestoreBusyWait::<B>(conn);
        f(&mut *restore.0)
    }

    /// This process's turn to write (where the backend queues writers;
    /// waited for no later than `until`), then the test's write stall, if
    /// one is set.
    fn write_turn(&self, until: Option<Instant>) -> Option<parking_lot::FairMutexGuard<'_, ()>> {
        let turn = if self.queue_writers {
            self.write_gate.turn(until)
        } else {
            None
        };
        if self.stalling.load(Ordering::Acquire) {
            self.stall_write();
        }
        turn
    }

    /// Inside the current transaction: the database's shared schema lock
    /// (PostgreSQL: the transaction-scoped shared advisory lock; SQLite: its
    /// write lock, which the transaction holds from `BEGIN IMMEDIATE`) and
    /// the live version read with it, as stored (not yet checked against
    /// the versions served). No switch commits between this and the end of
    /// the transaction.
    pub(crate) fn enter_shared(&self, conn: &mut B::Connection) -> Result<i64> {
        B::enter_shared(
            conn,
            self.store.prefix(),
            self.store.state_table(),
            self.lock_key,
        )
        .map_err(|e| match e {
            diesel::result::Error::NotFound => self.store.state_row_missing(),
            e => Error::Query(e),
        })
    }

    /// Runs the test's write stall, if one is set (outside its lock).
    #[cold]
    fn stall_write(&self) {
        let stall = self.write_stall.lock().clone();
        if let Some(stall) = stall {
            stall();
        }
    }

    /// Sets the phase lock timeout inside the current transaction.
    pub(crate) fn ddl_preamble(&self, conn: &mut B::Connection) -> Result<()> {
        if let Some(sql) = B::lock_timeout_sql(self.lock_timeout) {
            B::execute(conn, &sql, &[])?;
        }
        Ok(())
    }

    /// Caches the live version (and the call path, if given) of the state
    /// row with `epoch`, unless a newer row is cached already (or `force`:
    /// the row was read or written just now under the in-process write
    /// lock, such as this process's own switch); returns whether it did.
    /// Callers hold the in-process write lock, or calls take the locking
    /// path.
    pub(crate) fn cache_state(
        &self,
        epoch: i64,
        version: Version,
        path: Option<CallPath>,
        force: bool,
    ) -> bool {
        let mut cached = self.cached_epoch.lock();
        if epoch < *cached && !force {
            return false;
        }
        *cached = epoch;
        self.live.store(version.get(), Ordering::Release);
        if let Some(path) = path {
            self.path.store(path);
        }
        true
    }

    /// Whether the lease, last renewed, still counts as fresh. Checked by
    /// every steady call too (a few nanoseconds), so that after a pause of
    /// the whole process no call trusts the cached version before the
    /// watchdog has run.
    #[inline]
    pub(crate) fn lease_fresh(&self) -> bool {
        coarsetime::Instant::now().as_ticks() < self.lease_deadline.load(Ordering::Acquire)
    }

    /// Whether calls take the steady path now.
    #[inline]
    pub(crate) fn steady(&self) -> bool {
        self.path.load() == CallPath::Steady && self.lease_fresh()
    }

    /// Pings every idle pooled connection once (none is handed out
    /// meanwhile) and lets the pool discard those that fail: after a call or
    /// a tick found a broken connection (the server restarted, the backend
    /// was terminated), no other broken one is handed out again.
    #[cold]
    pub(crate) fn sweep_pool(&self) {
        let pool = &self.pool;
        let mut good = Vec::new();
        let mut broken = 0u32;
        for _ in 0..pool.max_size() {
            let Some(mut c) = pool.try_get() else { break };
            if diesel::r2d2::R2D2Connection::ping(&mut *c).is_ok() {
                good.push(c);
            } else {
                broken += 1; // dropped broken: the pool discards it
            }
        }
        drop(good);
        if broken > 0 {
            tracing::warn!(
                broken,
                "discarded pooled connections the database had closed (a restart, a terminated backend)"
            );
        }
    }

    /// Checks every applied phase's recorded checksum against the catalog,
    /// for the versions the catalog has.
    pub(crate) fn verify_checksums(&self, conn: &mut B::Connection) -> Result<()> {
        let latest = self.catalog.latest();
        for entry in self.store.history::<B>(conn)? {
            let Some(phase) = entry.phase.phase() else {
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
        self.catalog
            .phase(version, phase, B::NAME)
            .map_or_else(|| sha256_hex(""), |sql| sql.checksum.to_owned())
    }
}

/// An r2d2 error as [`Error::Pool`], the password masked.
pub(crate) fn pool_error(e: &r2d2::Error, secrets: &Secrets) -> Error {
    Error::Pool {
        message: secrets.redact(&e.to_string()),
    }
}

/// Gives a connection the pool's busy wait back when dropped (see
/// [`Shared::bounded`]).
pub(crate) struct RestoreBusyWait<'c, B: Backend>(pub(crate) &'c mut B::Connection);

impl<B: Backend> Drop for RestoreBusyWait<'_, B> {
    fn drop(&mut self) {
        if let Err(e) = B::set_busy_wait(self.0, None) {
            tracing::debug!(error = %e, "could not restore a connection's busy timeout");
        }
    }
}
