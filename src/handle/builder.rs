//! The `Builder`: settings, validated, and `open`.

use super::setup::{fleet_lease, initialize, instance_id, instance_row, Connector, Opened};
use super::*;
use crate::limits::bounded;

/// Configures and opens a [`Tandem`]. Made by [`Tandem::builder`].
pub struct Builder<B: Backend> {
    url: String,
    pub(super) catalog: Catalog,
    prefix: String,
    serves: Option<RangeInclusive<u32>>,
    baseline: Option<u32>,
    settings: PoolSettings,
    pub(super) backfills: Vec<Backfill<B>>,
    writer: WriterPolicy,
    lock_timeout: Duration,
    switch_timeout: Duration,
    label: String,
    poll_interval: Duration,
    lease: Option<Duration>,
    queue_writers: bool,
    statement_cache: bool,
    push: bool,
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
    /// this process's turn to write and the write lock). A call frozen inside a locking-path transaction (a
    /// paused process, a stalled network) holds the shared lock; the switch
    /// gives up after this long with [`Error::LockTimeout`] or
    /// [`Error::FleetNotAcknowledged`], the fleet back in steady mode and
    /// the database unchanged (on SQLite, where a frozen writer blocks every
    /// writer, steady mode comes back with the next upgrader command).
    /// The writer policy's attempts bound it too, whichever ends first.
    /// The budget starts once the command holds the upgrade lease: taking
    /// it waits like any write (on SQLite for the write lock, up to the
    /// pool's 5 s busy timeout; then a retryable "database is locked").
    /// Once the switch has committed it reports success; what follows (the
    /// fleet seeing the new version, steady mode back) gets a budget of its
    /// own, as long again, so the call can take up to twice this. If
    /// steady mode cannot be set within it (a frozen SQLite writer), the
    /// cleanup after the command, or the next command, sets it.
    /// Defaults to 10 s; at most an hour ([`Error::InvalidSetting`] from
    /// [`open`](Builder::open)). `tests/frozen_instance.rs` shows it with a
    /// `SIGSTOP`ped instance process on both backends.
    pub fn switch_timeout(mut self, timeout: Duration) -> Self {
        self.switch_timeout = timeout;
        self
    }

    /// How often the background poller reads the state row (it renews this
    /// instance's lease about every quarter lease, on one of those reads).
    /// Defaults to 200 ms. The fleet acknowledges a change
    /// of mode within about one interval. At least 5 ms; at most an hour
    /// ([`Error::InvalidSetting`] from [`open`](Builder::open)).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(5));
        self
    }

    /// How long this instance's fleet lease lasts unless renewed (about
    /// every quarter lease): an instance that cannot renew it (database
    /// unreachable, process paused) leaves the steady path by itself after
    /// three quarters of it. An instance that dies without closing its
    /// handle holds a switch back until its lease has expired, and an
    /// upgrader's own lease after that (calls it had in flight may still be
    /// finishing): up to two leases, so a switch in that time fails with
    /// [`Error::FleetNotAcknowledged`] naming it
    /// ([`Upgrader::switch_when_ready`](crate::Upgrader::switch_when_ready)
    /// waits it out). A handle dropped or closed leaves at once.
    ///
    /// Defaults to ten poll intervals on SQLite (2 s), and to 30 s (or ten
    /// polls, if longer) on PostgreSQL, where instances hear deploying mode
    /// as it commits ([`push`](Builder::push)) and renewals every 7.5 s keep
    /// a steady instance's cost under one statement a second (BENCHMARKS.md,
    /// "The fleet at scale"). Every instance of a fleet should use the same
    /// lease: an upgrader judges other rows by its own. At least two poll
    /// intervals; at most two hours ([`Error::InvalidSetting`] from
    /// [`open`](Builder::open)).
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

    /// Whether this instance hears the state row's changes as they commit,
    /// so that its poller ticks at once instead of at its next poll: the
    /// fleet then acknowledges deploying mode within a round trip plus its
    /// drain, whatever [`poll_interval`](Builder::poll_interval) is.
    /// Defaults to `true`; PostgreSQL only (SQLite polls).
    ///
    /// One session per process and database, outside the pool, runs
    /// `LISTEN` (so each process holds one more server connection). It is
    /// kept only if a probe notice sent at open from a pooled connection
    /// reaches it within a second: behind a transaction-mode pooler
    /// (PgBouncer's `pool_mode = transaction`) `LISTEN` does not work and
    /// the process polls only, as with `false`, which also skips that
    /// second. Notices are a hint; correctness never rests on them
    /// ([`Tandem::pushed`] tells whether this instance hears them).
    ///
    /// While it hears them, an instance on the steady path skips the
    /// read-only polls between its lease renewals (about every quarter
    /// lease, each of which still reads the state row): every state change
    /// tandem makes sends a notice, so a steady fleet costs the database its
    /// renewals only. A change of the state row by hand (a restore, an
    /// edit) sends none and is seen at the next renewal instead of the next
    /// poll.
    pub fn push(mut self, push: bool) -> Self {
        self.push = push;
        self
    }

    /// A label for this instance in the history and fleet tables (for
    /// example the service name). Defaults to the executable's name.
    pub fn label(mut self, label: &str) -> Self {
        self.label = label.to_owned();
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
    /// [`Error::BadBackfill`], [`Error::BackendNotSupported`],
    /// [`Error::PrefixTaken`], [`Error::Connect`],
    /// [`Error::NotAdopted`] (tables but no metadata, and no baseline),
    /// [`Error::BaselineMismatch`], [`Error::MetadataCorrupt`],
    /// [`Error::ChecksumDrift`], [`Error::PhaseFailed`] (version 1's SQL).
    pub fn open(self) -> Result<Tandem<B>> {
        let prefix = Prefix::new(&self.prefix)?;
        let (first, last, baseline) = self.versions()?;
        self.check_bounds()?;
        let (pool, target, secrets) = self.pool()?;
        // (For the shared poller's own connection, if this handle starts it.)
        let (url, settings, statement_cache) = (
            self.url.clone(),
            self.settings.clone(),
            self.statement_cache,
        );
        let (instance, host) = instance_id(&self.label);
        let store = Store::new(&prefix);
        let mut conn = pool.get().map_err(|e| pool_error(&e, &secrets))?;
        let live = initialize::<B>(&mut *conn, &store, &self.catalog, baseline, &instance)?;
        drop(conn);
        let lease = fleet_lease::<B>(self.lease, self.poll_interval)?;
        let me = instance_row::<B>(&self.catalog, &self.label, &instance, host, (first, last));
        let lock_key = store.lock_key();
        let shared = Shared {
            pool,
            store,
            catalog: self.catalog,
            first,
            last,
            live: AtomicU32::new(live.get()),
            lock: SchemaLock::default(),
            write_gate: Default::default(),
            queue_writers: self.queue_writers,
            instance,
            backfills: self.backfills,
            writer: self.writer,
            lock_timeout: self.lock_timeout,
            switch_timeout: self.switch_timeout,
            orphaned_leases: parking_lot::Mutex::new(Vec::new()),
            missed_switch: parking_lot::Mutex::new(None),
            target,
            path: PathCell::new(CallPath::Locking),
            me,
            poll_interval: self.poll_interval,
            lease,
            lease_deadline: AtomicU64::new(0),
            fleet_paused: AtomicBool::new(false),
            renewals_held: AtomicBool::new(false),
            write_stall: parking_lot::Mutex::new(None),
            stalling: AtomicBool::new(false),
            adopted_epoch: parking_lot::Mutex::new(i64::MIN),
            adopted_copy: AtomicI64::new(i64::MIN),
            renewed_at: AtomicU64::new(0),
            acknowledged: AtomicI64::new(i64::MIN),
            cached_epoch: parking_lot::Mutex::new(i64::MIN),
            shutdown: Arc::new(AtomicBool::new(false)),
            threads: parking_lot::Mutex::new(Vec::new()),
            push: parking_lot::Mutex::new(None),
            lock_key,
            secrets,
        };
        let shared = Arc::new(shared);
        let db = Tandem {
            member: Arc::new(Membership::new(Arc::clone(&shared))),
            shared,
        };
        db.shared.verify_checksums(&mut *db.connection()?)?;
        fleet::join_fleet(&db.shared)?;
        let poller = if B::SHARED_POLLER {
            let reserved = || Connector::<B>::new(&url, &settings, statement_cache)?.reserved();
            fleet::group::join(&db.shared, &self.url, statement_cache, reserved)?
        } else {
            fleet::spawn_poller(&db.shared)?
        };
        let threads = vec![
            poller,
            fleet::spawn_watchdog(&db.shared)?,
            fleet::spawn_confirmer(&db.shared)?,
        ];
        if self.push {
            *db.shared.push.lock() =
                fleet::push::subscribe(&db.shared, &self.url, threads[0].clone());
        }
        *db.shared.threads.lock() = threads;
        tracing::info!(database = %db.shared.target, live = %live, serves = ?(first, last), "tandem opened");
        Ok(db)
    }

    /// The served range and the baseline, checked against the catalog.
    fn versions(&self) -> Result<(Version, Version, Option<Version>)> {
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
        self.check_backend()?;
        self.check_backfills(latest)?;
        let baseline = self
            .baseline
            .map(|b| version_arg(b, "baseline"))
            .transpose()?;
        if let Some(b) = baseline.filter(|b| *b > latest) {
            return Err(Error::UnknownVersion { version: b, latest });
        }

        Ok((first, last, baseline))
    }

    /// Every duration setting within its bound.
    fn check_bounds(&self) -> Result<()> {
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

        Ok(())
    }

    /// The connection pool ([`Connector::pool`]), and the redacted target
    /// and the password's pieces for messages.
    fn pool(&self) -> Result<Opened<B>> {
        Connector::<B>::new(&self.url, &self.settings, self.statement_cache)?.pool()
    }
}

impl<B: Backend> Tandem<B> {
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
            backfills: Vec::new(),
            writer: WriterPolicy::default(),
            lock_timeout: Duration::from_millis(100),
            switch_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(200),
            lease: None,
            queue_writers: true,
            statement_cache: true,
            push: true,
            label: std::env::args()
                .next()
                .and_then(|a| a.rsplit('/').next().map(str::to_owned))
                .unwrap_or_else(|| "tandem".to_owned()),
        }
    }
}
