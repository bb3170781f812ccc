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
use crate::meta::{self, HistoryEntry, Instance, Meta, Prefix, State};
use crate::redact::{redact, Secrets};
use crate::upgrade::{Step, Upgrader};
use crate::version::{Phase, Version};

/// The cap of every wait a setting can ask for: `Duration::MAX` means "as
/// long as it takes", and 100 years is that long without overflowing an
/// `Instant`.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The largest `poll_interval`, `connection_timeout` and `lock_timeout`, and
/// the largest `WriterPolicy` durations: an hour.
pub(crate) const MAX_SETTING: Duration = Duration::from_secs(3600);

/// The longest fleet lease: two of the longest poll intervals. It also
/// bounds how long a fleet row whose instance is gone can hold a switch
/// back: a row claiming a longer lease is read as this long.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(2 * 3600);

/// Refuses a duration setting above [`MAX_SETTING`].
fn bounded(setting: &'static str, value: Duration, why: &'static str) -> Result<Duration> {
    bounded_by(setting, value, MAX_SETTING, why)
}

fn bounded_by(
    setting: &'static str,
    value: Duration,
    max: Duration,
    why: &'static str,
) -> Result<Duration> {
    if value > max {
        return Err(Error::InvalidSetting {
            setting,
            value,
            max,
            why,
        });
    }
    Ok(value)
}

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
    pub(crate) meta: Meta,
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
                if let Err(e) = self.meta.deregister::<B>(&mut conn, &self.me.id) {
                    tracing::warn!(error = %e, "could not leave the fleet table; the row expires with its lease");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not leave the fleet table; the row expires with its lease")
            }
        }
    }
}

/// Configures and opens a [`Tandem`]. Made by [`Tandem::builder`].
pub struct Builder<B: Backend> {
    url: String,
    catalog: Catalog,
    prefix: String,
    serves: Option<RangeInclusive<u32>>,
    baseline: Option<u32>,
    settings: PoolSettings,
    steps: Vec<Step<B>>,
    writer: WriterPolicy,
    lock_timeout: Duration,
    switch_timeout: Duration,
    label: String,
    poll_interval: Duration,
    lease: Option<Duration>,
    queue_writers: bool,
    statement_cache: bool,
}

impl<B: Backend> fmt::Debug for Builder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("database", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("serves", &self.serves)
            .field("baseline", &self.baseline)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Builder<B> {
    /// Metadata table prefix. Defaults to `tandem_`. Validated by
    /// [`open`](Builder::open): lowercase letters, digits and underscores.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// The versions this binary has bindings for. Defaults to the catalog's
    /// latest version and the one before it (N-1 and N).
    pub fn serves(mut self, versions: RangeInclusive<u32>) -> Self {
        self.serves = Some(versions);
        self
    }

    /// Adopts an existing database that has no tandem metadata, declaring
    /// that its schema is version `version` of the catalog. Ignored once the
    /// database is managed, if it was baselined at that version.
    pub fn baseline(mut self, version: u32) -> Self {
        self.baseline = Some(version);
        self
    }

    /// Maximum pooled connections. Defaults to 10 (in-memory SQLite: always 1).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.settings.max_size = size.max(1);
        self
    }

    /// How long a call waits for a pooled connection before
    /// [`Error::Pool`]. Defaults to 30 s; at most an hour
    /// ([`open`](Builder::open) refuses more with [`Error::InvalidSetting`]).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connection_timeout = timeout;
        self
    }

    /// Whether the pool pings a connection on every checkout. Defaults to
    /// `false`: r2d2's own default (`true`) costs a round trip per call.
    pub fn test_on_check_out(mut self, test: bool) -> Self {
        self.settings.test_on_check_out = test;
        self
    }

    /// How the switch takes the schema writer lock. Defaults to
    /// [`WriterPolicy::default`].
    pub fn writer_policy(mut self, policy: WriterPolicy) -> Self {
        self.writer = policy;
        self
    }

    /// How long a phase statement may wait for a table lock before the
    /// phase rolls back and retries (PostgreSQL `lock_timeout`; up to
    /// `WriterPolicy::attempts` times, with backoff and jitter). Keep it well
    /// under PostgreSQL's `deadlock_timeout` (1 s). Defaults to 100 ms.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The most a switch (or switch back) waits in all before it gives up:
    /// for the fleet to acknowledge deploying mode, for this process's
    /// calls to drain, and for the exclusive schema lock (and, on SQLite,
    /// the write lock). A call frozen inside a locking-path transaction (a
    /// paused process, a stalled network) holds the shared lock; the switch
    /// gives up after this long with [`Error::LockTimeout`] or
    /// [`Error::FleetNotAcknowledged`], the fleet back in steady mode and
    /// the database unchanged (on SQLite, where a frozen writer blocks every
    /// writer, steady mode comes back with the next upgrader command).
    /// The writer policy's attempts bound it too, whichever ends first.
    /// Defaults to 10 s; at most an hour ([`Error::InvalidSetting`] from
    /// [`open`](Builder::open)). `tests/frozen_instance.rs` shows it with a
    /// `SIGSTOP`ped instance process on both backends.
    pub fn switch_timeout(mut self, timeout: Duration) -> Self {
        self.switch_timeout = timeout;
        self
    }

    /// How often the background poller reads the state row and renews this
    /// instance's lease. Defaults to 200 ms. The fleet acknowledges a change
    /// of mode within about one interval. At least 5 ms; at most an hour
    /// ([`Error::InvalidSetting`] from [`open`](Builder::open)).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(5));
        self
    }

    /// How long this instance's fleet lease lasts unless renewed: an
    /// instance that cannot renew it (database unreachable, process paused)
    /// leaves the steady path by itself after three quarters of it, and an
    /// upgrader waits at most this long for a dead instance. Defaults to ten
    /// poll intervals (at most two hours); at least two; at most two hours
    /// ([`Error::InvalidSetting`] from [`open`](Builder::open)).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Whether this process's write transactions (units of work, and
    /// tandem's own metadata writes) queue on an in-process gate, first come
    /// first served, before they ask SQLite for its single write lock.
    /// Defaults to `true`; PostgreSQL has no such gate and ignores it.
    ///
    /// SQLite's busy handler sleeps 1 to 100 ms between retries and favours
    /// no one, so without the gate a writer can wait far longer than the
    /// write it waits for. Turning it off is for measuring what it buys
    /// (`cargo run --release --example rolling_upgrade -- --no-writer-queue`;
    /// figures in BENCHMARKS.md), or for a process whose writes all go
    /// through another gate of its own.
    pub fn queue_writers(mut self, queue: bool) -> Self {
        self.queue_writers = queue;
        self
    }

    /// Whether diesel caches prepared statements on each pooled connection
    /// (named server-side statements, reused by later calls). Defaults to
    /// `true`.
    ///
    /// Turn it off behind a pooler that does not keep a client on one
    /// server connection, such as PgBouncer in transaction mode before 1.21
    /// (Debian ships 1.18): a cached statement was prepared on another
    /// server connection, so later calls fail with `prepared statement
    /// "__diesel_stmt_N" does not exist`, or run another client's statement
    /// with the wrong parameters. Off, every statement is prepared unnamed,
    /// in the same round trip as it runs. `scripts/test` runs the fleet demo
    /// and `tests/pgbouncer.rs` through a real PgBouncer this way.
    pub fn statement_cache(mut self, cache: bool) -> Self {
        self.statement_cache = cache;
        self
    }

    /// A label for this instance in the history and fleet tables (for
    /// example the service name). Defaults to the executable's name.
    pub fn label(mut self, label: &str) -> Self {
        self.label = label.to_owned();
        self
    }

    /// Registers a Rust step that runs in `version`'s expand phase after its
    /// SQL, in batches: `batch` is called repeatedly, each call in its own
    /// transaction, until it returns 0 (rows changed). It must be idempotent
    /// (a rerun after a crash calls it again), for example
    /// `INSERT … SELECT … WHERE NOT EXISTS (…) LIMIT 1000`.
    pub fn backfill<F>(mut self, version: u32, name: &str, batch: F) -> Self
    where
        F: Fn(&mut B::Connection) -> diesel::QueryResult<usize> + Send + Sync + 'static,
    {
        self.steps.push(Step {
            version,
            name: name.to_owned(),
            batch: Box::new(batch),
        });
        self
    }

    /// Opens the database: validates the configuration, builds the pool,
    /// creates the metadata tables on first use (applying version 1's
    /// `expand.sql` to an empty database), and checks every applied phase's
    /// checksum against the catalog.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPrefix`], [`Error::InvalidVersion`],
    /// [`Error::InvalidSetting`], [`Error::EmptyServedRange`],
    /// [`Error::ServedBeyondCatalog`], [`Error::BackfillBeyondCatalog`],
    /// [`Error::PrefixTaken`], [`Error::Connect`],
    /// [`Error::NotAdopted`] (tables but no metadata, and no baseline),
    /// [`Error::BaselineMismatch`], [`Error::MetadataCorrupt`],
    /// [`Error::ChecksumDrift`], [`Error::PhaseFailed`] (version 1's SQL).
    pub fn open(self) -> Result<Tandem<B>> {
        let prefix = Prefix::new(&self.prefix)?;
        let latest = self.catalog.latest();
        let version_arg = |value: u32, context: &'static str| {
            Version::new(value).ok_or(Error::InvalidVersion {
                value: i64::from(value),
                context,
            })
        };
        let (first, last) = match &self.serves {
            Some(range) => (
                version_arg(*range.start(), "serves")?,
                version_arg(*range.end(), "serves")?,
            ),
            None => (latest.previous().unwrap_or(latest), latest),
        };
        if first > last {
            return Err(Error::EmptyServedRange { first, last });
        }
        if last > latest {
            return Err(Error::ServedBeyondCatalog {
                first,
                last,
                latest,
            });
        }
        for step in &self.steps {
            let v = version_arg(step.version, "backfill")?;
            if v > latest {
                return Err(Error::BackfillBeyondCatalog {
                    step: step.name.clone(),
                    version: v,
                    latest,
                });
            }
        }
        let baseline = self
            .baseline
            .map(|b| version_arg(b, "baseline"))
            .transpose()?;
        if let Some(b) = baseline.filter(|b| *b > latest) {
            return Err(Error::UnknownVersion { version: b, latest });
        }

        bounded(
            "poll_interval",
            self.poll_interval,
            "the fleet acknowledges a switch within about one interval",
        )?;
        bounded(
            "connection_timeout",
            self.settings.connection_timeout,
            "a call waits this long for a pooled connection",
        )?;
        bounded(
            "writer_policy (patience)",
            self.writer.patience,
            "the switch's polling per attempt",
        )?;
        bounded(
            "writer_policy (escalation)",
            self.writer.escalation,
            "the longest a call can be made to wait for the switch",
        )?;
        bounded(
            "lock_timeout",
            self.lock_timeout,
            "a phase statement's wait for a table lock",
        )?;
        bounded(
            "switch_timeout",
            self.switch_timeout,
            "the most a switch (or switch back) waits for the fleet and the schema lock",
        )?;

        let target = redact(&self.url);
        let secrets = Secrets::of(&self.url);
        let connect_error = |message: String| Error::Connect {
            target: target.clone(),
            message: secrets.redact(&message),
        };
        // A URL libpq would misread quotes pieces of its password in its
        // error: refuse it before it gets there.
        if let Some(reason) = crate::redact::malformed_url_password(&self.url) {
            return Err(connect_error(reason.to_owned()));
        }
        let mut settings = self.settings;
        let (manager, backend_customizer) = B::configure_pool(&self.url, &mut settings);
        let customizer: Option<Box<dyn CustomizeConnection<B::Connection, diesel::r2d2::Error>>> =
            if self.statement_cache {
                backend_customizer
            } else {
                Some(Box::new(NoStatementCache(backend_customizer)))
            };
        // One connection first, outside the pool: a database that cannot be
        // opened at all (refused, no such file or directory, not a database,
        // bad credentials) is reported with its cause at once, instead of
        // after the pool's `connection_timeout` as "timed out".
        {
            use r2d2::ManageConnection as _;
            let mut probe = manager
                .connect()
                .map_err(|e| connect_error(e.to_string()))?;
            if let Some(customizer) = &customizer {
                customizer
                    .on_acquire(&mut probe)
                    .map_err(|e| connect_error(e.to_string()))?;
            }
        }
        let mut builder = Pool::builder()
            .max_size(settings.max_size)
            .min_idle(Some(1))
            .connection_timeout(settings.connection_timeout)
            .test_on_check_out(settings.test_on_check_out)
            .idle_timeout(settings.idle_timeout)
            .max_lifetime(settings.max_lifetime)
            .error_handler(Box::new(LogConnectionErrors(secrets.clone())));
        if let Some(customizer) = customizer {
            builder = builder.connection_customizer(customizer);
        }
        let pool = builder
            .build(manager)
            .map_err(|e| connect_error(e.to_string()))?;

        let (instance, host) = instance_id(&self.label);
        let meta = Meta::new(&prefix);
        let mut conn = pool.get().map_err(|e| pool_error(&e, &secrets))?;
        let live = initialize::<B>(&mut *conn, &meta, &self.catalog, baseline, &instance)?;
        drop(conn);
        let lease = match self.lease {
            Some(lease) => bounded_by(
                "lease",
                lease,
                MAX_LEASE,
                "a fleet row claiming a longer lease is read as this long",
            )?,
            None => (self.poll_interval * 10).min(MAX_LEASE),
        }
        .max(self.poll_interval * 2);
        let me = Instance {
            id: instance.clone(),
            host,
            pid: i64::from(std::process::id()),
            label: self.label.clone(),
            first,
            last,
            observed_epoch: 0,
            lease_until_ms: 0,
            // What this binary's catalog says of each version it serves:
            // the switch compares it across the fleet.
            catalog: Some(
                (first.get()..=last.get())
                    .filter_map(Version::new)
                    .map(|v| format!("{v}={}", self.catalog.digest(v, B::NAME)))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        };
        let lock_key = meta.lock_key();
        let inner = Inner {
            pool,
            meta,
            catalog: self.catalog,
            first,
            last,
            live: AtomicU32::new(live.get()),
            lock: SchemaLock::default(),
            write_gate: parking_lot::FairMutex::new(()),
            queue_writers: self.queue_writers,
            instance,
            steps: self.steps,
            writer: self.writer,
            lock_timeout: self.lock_timeout,
            switch_timeout: self.switch_timeout,
            orphaned_leases: parking_lot::Mutex::new(Vec::new()),
            target,
            path: AtomicU8::new(fleet::LOCKING),
            me,
            poll_interval: self.poll_interval,
            lease,
            lease_deadline: AtomicU64::new(0),
            fleet_paused: AtomicBool::new(false),
            renewals_held: AtomicBool::new(false),
            adopted_epoch: parking_lot::Mutex::new(i64::MIN),
            adopted_copy: AtomicI64::new(i64::MIN),
            renewed_at: AtomicU64::new(0),
            cached_epoch: parking_lot::Mutex::new(i64::MIN),
            shutdown: Arc::new(AtomicBool::new(false)),
            poller: parking_lot::Mutex::new(Vec::new()),
            lock_key,
            secrets,
        };
        let inner = Arc::new(inner);
        let db = Tandem {
            life: Some(Arc::new(Lifetime {
                inner: Arc::clone(&inner),
            })),
            inner,
        };
        db.verify_checksums(&mut *db.connection()?)?;
        db.join_fleet()?;
        let threads = vec![
            crate::fleet::spawn_poller(&db.inner)?,
            crate::fleet::spawn_watchdog(&db.inner)?,
            crate::fleet::spawn_confirmer(&db.inner)?,
        ];
        *db.inner.poller.lock() = threads;
        tracing::info!(database = %db.inner.target, live = %live, serves = ?(first, last), "tandem opened");
        Ok(db)
    }
}

/// Creates the metadata on first use, or checks it; returns the live version.
fn initialize<B: Backend>(
    conn: &mut B::Connection,
    meta: &Meta,
    catalog: &Catalog,
    baseline: Option<Version>,
    instance: &str,
) -> Result<Version> {
    B::write_transaction(conn, |c| {
        // Several instances starting at once on an empty database: one
        // creates the metadata and applies version 1, the others wait here
        // and then find it (transaction-scoped: nothing stays on a pooled
        // connection).
        B::serialize_initialization(c, meta.init_key())?;
        let now = meta::now_ms();
        let state_exists = Meta::table_exists::<B>(c, meta.state_table())?;
        meta.check_tables::<B>(c, state_exists)?;
        if state_exists {
            let state = meta.read_state::<B>(c)?;
            if let Some(requested) = baseline {
                let baselined = meta
                    .history::<B>(c)?
                    .iter()
                    .any(|h| h.phase == meta::BASELINE && h.version == requested);
                if !baselined {
                    return Err(Error::BaselineMismatch {
                        requested,
                        live: state.version,
                    });
                }
            }
            return Ok(state.version);
        }
        let tables = Meta::count::<B>(c, B::user_tables_sql(), &[])?;
        match baseline {
            Some(version) => {
                meta.create::<B>(c, version)?;
                meta.record::<B>(
                    c,
                    version,
                    meta::BASELINE,
                    "-",
                    now,
                    Some(now),
                    meta::APPLIED,
                    instance,
                    None,
                )?;
                tracing::info!(%version, "adopted existing database by baseline");
                Ok(version)
            }
            None if tables > 0 => Err(Error::NotAdopted {
                prefix: meta.state_table().trim_end_matches("state").to_owned(),
                tables,
            }),
            None => {
                let first = Version::FIRST;
                let sql = catalog
                    .phase(first, Phase::Expand, B::NAME)
                    .ok_or_else(|| Error::UnknownVersion {
                        version: first,
                        latest: catalog.latest(),
                    })?;
                c.batch_execute(sql.text)
                    .map_err(|source| Error::PhaseFailed {
                        version: first,
                        phase: Phase::Expand,
                        source,
                    })?;
                meta.create::<B>(c, first)?;
                meta.record::<B>(
                    c,
                    first,
                    Phase::Expand.as_str(),
                    sql.checksum,
                    now,
                    Some(meta::now_ms()),
                    meta::APPLIED,
                    instance,
                    None,
                )?;
                tracing::info!("installed version 1 on an empty database");
                Ok(first)
            }
        }
    })
}

use diesel::connection::SimpleConnection as _;

impl<B: Backend> Tandem<B> {
    /// A handle for tandem's background threads: it does not keep the
    /// instance in the fleet.
    pub(crate) fn internal(inner: Arc<Inner<B>>) -> Self {
        Tandem { inner, life: None }
    }

    /// Starts configuring a handle on the database at `url` (SQLite: a file
    /// path or `:memory:`; PostgreSQL: a `postgres://` URL) with `catalog`.
    pub fn builder(url: &str, catalog: Catalog) -> Builder<B> {
        Builder {
            url: url.to_owned(),
            catalog,
            prefix: Prefix::default().as_str().to_owned(),
            serves: None,
            baseline: None,
            settings: PoolSettings {
                max_size: 10,
                connection_timeout: Duration::from_secs(30),
                test_on_check_out: false,
                idle_timeout: Some(Duration::from_secs(600)),
                max_lifetime: Some(Duration::from_secs(1800)),
            },
            steps: Vec::new(),
            writer: WriterPolicy::default(),
            lock_timeout: Duration::from_millis(100),
            switch_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(200),
            lease: None,
            queue_writers: true,
            statement_cache: true,
            label: std::env::args()
                .next()
                .and_then(|a| a.rsplit('/').next().map(str::to_owned))
                .unwrap_or_else(|| "tandem".to_owned()),
        }
    }

    /// Runs one repository call: picks `repository`'s binding for the live
    /// version and runs `f` with it, holding the schema read lock from
    /// reading the version until `f` returns, so the version cannot change
    /// during the call.
    ///
    /// ## Atomicity
    ///
    /// `call` does not make a binding's statements one atomic write. On the
    /// steady path they run as the binding issues them (each in its own
    /// autocommit transaction, unless the binding opens one); on the locking
    /// path (deploying mode, a stale lease) they run inside the call's own
    /// transaction, which rolls back if `f` returns an error. So a binding
    /// that writes and then fails may leave its writes (steady) or not
    /// (locking). Writes that must be all or nothing go through
    /// [`unit_of_work`](Tandem::unit_of_work), one transaction on both
    /// paths, or inside a transaction the binding opens itself
    /// (`conn.transaction(..)`, a savepoint on the locking path).
    /// `tests/bad_input.rs` (c35) shows each case on both backends.
    ///
    /// # Errors
    ///
    /// [`Error::Upgrading`] (database behind the binary),
    /// [`Error::VersionNotServed`] (ahead) or [`Error::NoBinding`] before any
    /// query runs, [`Error::Pool`] when no connection is free in time, and
    /// whatever `f` returns.
    #[inline]
    pub fn call<R, T, E, F>(&self, repository: &Repository<R>, f: F) -> Result<T, E>
    where
        R: ?Sized,
        F: FnOnce(&R, &mut Session<'_, B>) -> Result<T, E>,
        E: From<Error>,
    {
        let mut conn = self.connection()?;
        let read = self.inner.lock.read();
        let result =
            if self.inner.path.load(Ordering::Acquire) == fleet::STEADY && self.lease_fresh() {
                let version = self.served_live()?;
                let binding = repository.get(version)?;
                let result = f(binding, &mut Session::new(&mut *conn, version));
                drop(read);
                result
            } else {
                drop(read);
                self.check_lease();
                self.call_locking(&mut *conn, repository, f)
            };
        if result.is_err() {
            self.after_failure(conn);
        }
        result
    }

    /// After a failed call: if its connection is broken (the server
    /// restarted, the backend was terminated), the pool discards it, and
    /// the idle connections are checked so that no other broken one is
    /// handed out again.
    #[cold]
    #[inline(never)]
    fn after_failure(&self, mut conn: Conn<B>) {
        if diesel::r2d2::R2D2Connection::is_broken(&mut *conn) {
            drop(conn);
            self.sweep_pool();
        }
    }

    /// Pings every idle pooled connection once (none is handed out
    /// meanwhile) and lets the pool discard those that fail.
    #[cold]
    pub(crate) fn sweep_pool(&self) {
        let pool = &self.inner.pool;
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

    /// The locking path of [`call`](Tandem::call): the call runs in its own
    /// transaction, which takes the database's shared schema lock and reads
    /// the live version first.
    #[cold]
    fn call_locking<R, T, E, F>(
        &self,
        conn: &mut B::Connection,
        repository: &Repository<R>,
        f: F,
    ) -> Result<T, E>
    where
        R: ?Sized,
        F: FnOnce(&R, &mut Session<'_, B>) -> Result<T, E>,
        E: From<Error>,
    {
        let result: Result<T, Locked<E>> = self.write_transaction(conn, |c| {
            let version = self.enter_shared(c).map_err(Locked::Tandem)?;
            let binding = repository.get(version).map_err(Locked::Tandem)?;
            f(binding, &mut Session::new(c, version)).map_err(Locked::App)
        });
        result.map_err(|e| match e {
            Locked::App(e) => e,
            Locked::Tandem(e) => E::from(e),
            Locked::Db(e) => E::from(Error::Query(e)),
        })
    }

    /// Runs a unit of work: several repository calls in one write
    /// transaction, all with one version. Pick bindings with
    /// [`Session::repo`].
    ///
    /// On SQLite this is the way to write: the transaction starts with
    /// `BEGIN IMMEDIATE`, and this process's units of work queue for
    /// SQLite's single write lock in-process, fairly and without sleeping
    /// (writes made by [`call`](Tandem::call) in autocommit mode wait in
    /// SQLite's busy handler instead, which sleeps 1 to 100 ms).
    ///
    /// All of `f`'s statements commit together or not at all, on the
    /// steady and the locking path alike.
    ///
    /// # Errors
    ///
    /// As [`call`](Tandem::call); the transaction rolls back if `f` fails.
    pub fn unit_of_work<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Session<'_, B>) -> Result<T, E>,
        E: From<Error> + From<diesel::result::Error>,
    {
        let mut conn = self.connection()?;
        let read = self.inner.lock.read();
        let result = if self.inner.path.load(Ordering::Acquire) == fleet::STEADY
            && self.lease_fresh()
        {
            let version = self.served_live()?;
            let result = self.write_transaction(&mut conn, |c| f(&mut Session::new(c, version)));
            drop(read);
            result
        } else {
            drop(read);
            self.check_lease();
            self.write_transaction(&mut conn, |c| {
                let version = self.enter_shared(c)?;
                f(&mut Session::new(c, version))
            })
        };
        if result.is_err() {
            self.after_failure(conn);
        }
        result
    }

    /// A write transaction behind this process's write gate (where the
    /// backend queues writers). Callers holding the schema lock take it first.
    pub(crate) fn write_transaction<T, E, F>(&self, conn: &mut B::Connection, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut B::Connection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        let _gate =
            (B::QUEUE_WRITERS && self.inner.queue_writers).then(|| self.inner.write_gate.lock());
        B::write_transaction(conn, f)
    }

    /// Sets the phase lock timeout inside the current transaction.
    pub(crate) fn ddl_preamble(&self, conn: &mut B::Connection) -> Result<()> {
        if let Some(sql) = B::lock_timeout_sql(self.inner.lock_timeout) {
            B::execute(conn, &sql, &[])?;
        }
        Ok(())
    }

    /// Locking path: the database's shared schema lock and the live version,
    /// inside the current transaction. Its duration counts as lock wait.
    fn enter_shared(&self, conn: &mut B::Connection) -> Result<Version> {
        let inner = &self.inner;
        let start = Instant::now();
        let raw = B::enter_shared(
            conn,
            inner.meta.prefix(),
            inner.meta.state_table(),
            inner.lock_key,
        )
        .map_err(|e| match e {
            diesel::result::Error::NotFound => inner.meta.state_row_missing(),
            e => Error::Query(e),
        })?;
        inner.lock.record_wait(start.elapsed());
        let live = u32::try_from(raw).unwrap_or(0);
        match Version::new(live) {
            Some(v) if v >= inner.first && v <= inner.last => Ok(v),
            _ => Err(self.not_served(live)),
        }
    }

    #[inline]
    fn served_live(&self) -> Result<Version> {
        let live = self.inner.live.load(Ordering::Acquire);
        match Version::new(live) {
            Some(v) if v >= self.inner.first && v <= self.inner.last => Ok(v),
            _ => Err(self.not_served(live)),
        }
    }

    #[cold]
    fn not_served(&self, live: u32) -> Error {
        let (first, last) = (self.inner.first, self.inner.last);
        match Version::new(live) {
            Some(live) if live < first => Error::Upgrading { live, first, last },
            Some(live) => Error::VersionNotServed { live, first, last },
            None => Error::MetadataCorrupt {
                table: self.inner.meta.state_table().to_owned(),
                detail: "live version 0".to_owned(),
            },
        }
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
        self.inner.meta.read_state::<B>(&mut *conn)
    }

    /// Every applied, running or failed phase, oldest first.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn history(&self) -> Result<Vec<HistoryEntry>> {
        let mut conn = self.connection()?;
        self.inner.meta.history::<B>(&mut *conn)
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
        for entry in self.inner.meta.history::<B>(conn)? {
            let Some(phase) = Phase::parse(&entry.phase) else {
                continue;
            };
            if entry.outcome == meta::FAILED {
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

/// The error of a locking-path call: the application's, tandem's, or the
/// transaction's own.
enum Locked<E> {
    App(E),
    Tandem(Error),
    Db(diesel::result::Error),
}

impl<E> From<diesel::result::Error> for Locked<E> {
    fn from(e: diesel::result::Error) -> Self {
        Locked::Db(e)
    }
}

pub(crate) fn pool_error(e: &r2d2::Error, secrets: &Secrets) -> Error {
    Error::Pool {
        message: secrets.redact(&e.to_string()),
    }
}

/// Turns diesel's prepared-statement cache off on every new connection
/// (`Builder::statement_cache(false)`), after the backend's own settings.
struct NoStatementCache<C: 'static>(Option<Box<dyn CustomizeConnection<C, diesel::r2d2::Error>>>);

impl<C: 'static> fmt::Debug for NoStatementCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoStatementCache")
    }
}

impl<C: diesel::Connection + 'static> CustomizeConnection<C, diesel::r2d2::Error>
    for NoStatementCache<C>
{
    fn on_acquire(&self, conn: &mut C) -> std::result::Result<(), diesel::r2d2::Error> {
        if let Some(inner) = &self.0 {
            inner.on_acquire(conn)?;
        }
        conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
        Ok(())
    }
}

/// r2d2's error handler: connection errors logged through `tracing`, with
/// every piece of the password masked (r2d2's default logs the driver's
/// message as it is, through `log`).
#[derive(Debug)]
struct LogConnectionErrors(Secrets);

impl<E: fmt::Display> r2d2::HandleError<E> for LogConnectionErrors {
    fn handle_error(&self, error: E) {
        tracing::warn!(error = %self.0.redact(&error.to_string()), "database connection failed");
    }
}

/// (`host:pid:label:nonce`, host), unique per handle.
fn instance_id(label: &str) -> (String, String) {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let nonce = hasher.finish() & 0xffff_ffff;
    (
        format!("{host}:{}:{label}:{nonce:08x}", std::process::id()),
        host,
    )
}
