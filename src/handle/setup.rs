//! What `open` needs besides the builder: the first start's initialization
//! (serialized across processes), the connection customizers, the instance id.

use super::*;

/// The fleet lease: as set (`set`, bounded), or the backend's default
/// (SQLite: ten poll intervals; PostgreSQL: 30 s or ten polls, if longer);
/// at least two poll intervals.
pub(super) fn fleet_lease<B: Backend>(set: Option<Duration>, poll: Duration) -> Result<Duration> {
    let lease = match set {
        Some(lease) => crate::limits::bounded_by(
            "lease",
            lease,
            crate::limits::MAX_LEASE,
            "a fleet row claiming a longer lease is read as this long",
        )?,
        None => B::default_lease(poll).min(crate::limits::MAX_LEASE),
    };
    Ok(lease.max(poll.saturating_mul(2)))
}

/// This instance's fleet row as it registers, serving `first..=last`.
pub(super) fn instance_row<B: Backend>(
    catalog: &Catalog,
    label: &str,
    id: &str,
    host: String,
    (first, last): (Version, Version),
) -> Instance {
    Instance {
        id: id.to_owned(),
        host,
        pid: i64::from(std::process::id()),
        label: label.to_owned(),
        first,
        last,
        observed_epoch: 0,
        lease_until_ms: 0,
        // What this binary's catalog says of each version it serves:
        // the switch compares it across the fleet.
        catalog: Some(
            (first.get()..=last.get())
                .filter_map(Version::new)
                .map(|v| format!("{v}={}", catalog.digest(v, B::NAME)))
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

/// Creates the metadata on first use, or checks it; returns the live version.
pub(super) fn initialize<B: Backend>(
    conn: &mut B::Connection,
    store: &Store,
    catalog: &Catalog,
    baseline: Option<Version>,
    instance: &str,
) -> Result<Version> {
    B::write_transaction(conn, |c| {
        // Several instances starting at once on an empty database: one
        // creates the metadata and applies version 1, the others wait here
        // and then find it (transaction-scoped: nothing stays on a pooled
        // connection).
        B::serialize_initialization(c, store.init_key())?;
        let state_exists = Store::table_exists::<B>(c, store.state_table())?;
        store.check_tables::<B>(c, state_exists)?;
        if state_exists {
            existing::<B>(c, store, baseline)
        } else {
            create::<B>(c, store, catalog, baseline, instance)
        }
    })
}

/// Metadata found: its live version, if a requested baseline is the one
/// recorded.
fn existing<B: Backend>(
    c: &mut B::Connection,
    store: &Store,
    baseline: Option<Version>,
) -> Result<Version> {
    let state = store.read_state::<B>(c)?;
    if let Some(requested) = baseline {
        let baselined = store
            .history::<B>(c)?
            .iter()
            .any(|h| h.phase == store::BASELINE && h.version == requested);
        if !baselined {
            return Err(Error::BaselineMismatch {
                requested,
                live: state.version,
            });
        }
    }
    Ok(state.version)
}

/// No metadata: adopts the schema by `baseline`, refuses an existing schema
/// without one, or installs version 1 on an empty database.
fn create<B: Backend>(
    c: &mut B::Connection,
    store: &Store,
    catalog: &Catalog,
    baseline: Option<Version>,
    instance: &str,
) -> Result<Version> {
    let now = store::now_ms();
    let tables = Store::count::<B>(c, B::user_tables_sql(), &[])?;
    let (version, phase, checksum) = match baseline {
        Some(version) => (version, store::BASELINE, "-"),
        None if tables > 0 => {
            return Err(Error::NotAdopted {
                prefix: store.state_table().trim_end_matches("state").to_owned(),
                tables,
            })
        }
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
            (first, Phase::Expand.as_str(), sql.checksum)
        }
    };
    store.create::<B>(c, version)?;
    store.record::<B>(
        c,
        version,
        phase,
        checksum,
        now,
        Some(store::now_ms()),
        store::APPLIED,
        instance,
        None,
    )?;
    if baseline.is_some() {
        tracing::info!(%version, "adopted existing database by baseline");
    } else {
        tracing::info!("installed version 1 on an empty database");
    }
    Ok(version)
}

use diesel::connection::SimpleConnection as _;

/// Turns diesel's prepared-statement cache off on every new connection
/// (`Builder::statement_cache(false)`), after the backend's own settings.
pub(super) struct NoStatementCache<C: 'static>(
    pub(super) Option<Box<dyn CustomizeConnection<C, diesel::r2d2::Error>>>,
);

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
pub(super) struct LogConnectionErrors(pub(super) Secrets);

impl<E: fmt::Display> r2d2::HandleError<E> for LogConnectionErrors {
    fn handle_error(&self, error: E) {
        tracing::warn!(error = %self.0.redact(&error.to_string()), "database connection failed");
    }
}

/// (`host:pid:label:nonce`, host), unique per handle.
pub(super) fn instance_id(label: &str) -> (String, String) {
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

/// A handle's pool, with the redacted target and the password's pieces.
pub(super) type Opened<B> = (
    Pool<diesel::r2d2::ConnectionManager<<B as Backend>::Connection>>,
    String,
    Secrets,
);

/// How a handle opens connections: the backend's manager and session
/// settings (the statement cache off if asked), for its pool and for the
/// shared poller's reserved connection; the redacted target and the
/// password's pieces for messages.
pub(super) struct Connector<B: Backend> {
    manager: diesel::r2d2::ConnectionManager<B::Connection>,
    customizer: Option<Box<dyn CustomizeConnection<B::Connection, diesel::r2d2::Error>>>,
    settings: PoolSettings,
    pub(super) target: String,
    pub(super) secrets: Secrets,
}

impl<B: Backend> Connector<B> {
    pub(super) fn new(url: &str, settings: &PoolSettings, statement_cache: bool) -> Result<Self> {
        let target = redact(url);
        let secrets = Secrets::of(url);
        // A URL libpq would misread quotes pieces of its password in its
        // error: refuse it before it gets there.
        if let Some(reason) = crate::redact::malformed_url_password(url) {
            return Err(Error::Connect {
                target,
                message: reason.to_owned(),
            });
        }
        let mut settings = settings.clone();
        let (manager, backend_customizer) = B::configure_pool(url, &mut settings);
        let customizer: Option<Box<dyn CustomizeConnection<B::Connection, diesel::r2d2::Error>>> =
            if statement_cache {
                backend_customizer
            } else {
                Some(Box::new(NoStatementCache(backend_customizer)))
            };
        Ok(Connector {
            manager,
            customizer,
            settings,
            target,
            secrets,
        })
    }

    fn error(&self, message: &str) -> Error {
        Error::Connect {
            target: self.target.clone(),
            message: self.secrets.redact(message),
        }
    }

    /// One connection, outside any pool, with the pool's session settings.
    pub(super) fn connect(&self) -> Result<B::Connection> {
        use r2d2::ManageConnection as _;
        let mut conn = self
            .manager
            .connect()
            .map_err(|e| self.error(&e.to_string()))?;
        if let Some(customizer) = &self.customizer {
            customizer
                .on_acquire(&mut conn)
                .map_err(|e| self.error(&e.to_string()))?;
        }
        Ok(conn)
    }

    /// The connection pool, after one probe connection (the database's own
    /// error at once, not a pool timeout: a database that cannot be opened
    /// at all, refused, no such file or directory, not a database, bad
    /// credentials, is reported with its cause, instead of after the
    /// pool's `connection_timeout` as "timed out").
    pub(super) fn pool(self) -> Result<Opened<B>> {
        drop(self.connect()?);
        let settings = &self.settings;
        let mut builder = Pool::builder()
            .max_size(settings.max_size)
            .min_idle(Some(1))
            .connection_timeout(settings.connection_timeout)
            .test_on_check_out(settings.test_on_check_out)
            .idle_timeout(settings.idle_timeout)
            .max_lifetime(settings.max_lifetime)
            .error_handler(Box::new(LogConnectionErrors(self.secrets.clone())));
        if let Some(customizer) = self.customizer {
            builder = builder.connection_customizer(customizer);
        }
        let connect_error = |e: r2d2::Error| Error::Connect {
            target: self.target.clone(),
            message: self.secrets.redact(&e.to_string()),
        };
        let pool = builder.build(self.manager).map_err(connect_error)?;
        Ok((pool, self.target, self.secrets))
    }

    /// The shared poller's reserved connection (`fleet::group`): connected
    /// now, and again by the poller whenever it dropped a failed one.
    pub(super) fn reserved(self) -> Result<crate::fleet::group::Reserved<B>> {
        let first = self.connect()?;
        Ok(crate::fleet::group::Reserved::new(
            Box::new(move || self.connect()),
            first,
        ))
    }
}
