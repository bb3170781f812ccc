//! PostgreSQL: dialect and primitives.

use std::time::Duration;

use diesel::r2d2::{ConnectionManager, CustomizeConnection};
use diesel::result::QueryResult;
use diesel::{Connection, PgConnection, RunQueryDsl};

use std::borrow::Cow;

use super::locks::is_lock_conflict;
use super::{bound_query, Backend, Bind, Dialect, Direct, Locks, MetaRow, PoolSettings};

/// PostgreSQL's messages (`lc_messages = 'C'`) for the lock conflicts that
/// diesel gives no kind: 55P03 `lock_not_available` ("canceling statement
/// due to lock timeout", "could not obtain lock on …") and 40P01
/// `deadlock_detected`; and 40001's text, for errors diesel did not type.
/// `tests/bad_input.rs` (c39) produces each on a server with `lc_messages`
/// set to `C`.
const PG_LOCK_CONFLICTS: &[&str] = &[
    "lock timeout",
    "could not obtain lock",
    "deadlock detected",
    "could not serialize access",
];

#[derive(diesel::QueryableByName)]
struct MaybeCount {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    n: Option<i64>,
}

/// A session that ran `LISTEN` (see [`Backend::listen`]).
#[doc(hidden)]
pub struct PgListener(PgConnection);

impl std::fmt::Debug for PgListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgListener")
    }
}

impl super::Listener for PgListener {
    /// `PQconsumeInput` and `PQnotifies`: reads what the socket already
    /// holds, no round trip to the server.
    fn heard(&mut self) -> QueryResult<bool> {
        let mut heard = false;
        for notice in self.0.notifications_iter() {
            notice?;
            heard = true;
        }
        Ok(heard)
    }
}

/// libpq's TCP keepalives for the listening session (unless the URL sets
/// its own): it only ever reads, so without them a connection that died
/// silently (a NAT or load balancer dropping an idle flow, a failover
/// behind a virtual address) would look alive for the operating system's
/// default of two hours or more. With them a dead peer fails the session's
/// next read within about 11 s (5 s idle, then 3 probes 2 s apart), and the
/// hearer opens another. Both URL and keyword/value forms.
fn with_keepalives(url: &str) -> String {
    const SETTINGS: [(&str, &str); 4] = [
        ("keepalives", "1"),
        ("keepalives_idle", "5"),
        ("keepalives_interval", "2"),
        ("keepalives_count", "3"),
    ];
    if url.contains("keepalives") {
        return url.to_owned();
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Ok(mut parsed) = url::Url::parse(url) {
            parsed.query_pairs_mut().extend_pairs(SETTINGS);
            return parsed.into();
        }
        return url.to_owned();
    }
    let mut conninfo = url.trim_end().to_owned();
    for (key, value) in SETTINGS {
        conninfo.push_str(&format!(" {key}={value}"));
    }
    conninfo
}

/// The PostgreSQL backend (libpq), for fleets of instances on one database.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postgres;

impl super::sealed::Sealed for Postgres {}

impl Dialect for Postgres {
    const RENEW_RETURNS_STATE: bool = true;
    const SHARED_POLLER: bool = true;
    const WRITING_WITH: bool = true;
    const HOLD_ROWS: &'static str = " FOR SHARE";

    fn placeholders(sql: &str) -> Cow<'_, str> {
        super::dialect::numbered(sql)
    }

    fn metadata_extras(prefix: &str, state_table: &str) -> Vec<String> {
        // Lock, then read in a second statement of a VOLATILE function: it
        // takes a fresh snapshot after the lock is granted. (Lock and read in
        // one plain statement would read the snapshot taken before the wait.)
        vec![
            format!(
                "CREATE OR REPLACE FUNCTION {prefix}enter(k BIGINT) RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$ \
                 BEGIN PERFORM pg_advisory_xact_lock_shared(k); \
                 RETURN (SELECT version FROM {state_table} WHERE id = 1); END $$"
            ),
            // The fleet table: a few rows updated over and over. Half of
            // each page left free keeps the renewals HOT updates (no index
            // entry, no new page), and autovacuum by a fixed count of dead
            // rows instead of a fraction of a table this small.
            format!(
                "ALTER TABLE {prefix}fleet SET (fillfactor = 50, \
                 autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500, \
                 autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 500)"
            ),
        ]
    }

    fn notify_sql() -> Option<&'static str> {
        Some("SELECT pg_notify(?, ?)")
    }

    /// 30 s (or ten polls, if longer): a server's instances hear deploying
    /// mode as it commits (`Builder::push`), so polls and renewals need not
    /// be frequent, and each renewal is a round trip and a row write that a
    /// fleet of thousands multiplies. A dead instance holds a switch back
    /// longer in exchange (see `Builder::lease`).
    fn default_lease(poll_interval: Duration) -> Duration {
        poll_interval
            .saturating_mul(10)
            .max(Duration::from_secs(30))
    }

    fn lock_timeout_sql(timeout: Duration) -> Option<String> {
        Some(format!(
            "SET LOCAL lock_timeout = '{}ms'",
            timeout.as_millis().max(1)
        ))
    }

    fn table_exists_sql() -> &'static str {
        "SELECT count(*) AS n FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = ?"
    }

    fn user_tables_sql() -> &'static str {
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = current_schema()"
    }

    fn serial_primary_key() -> &'static str {
        "BIGSERIAL PRIMARY KEY"
    }

    fn greatest_sql() -> &'static str {
        "GREATEST"
    }

    /// `clock_timestamp()`: the server's clock as the statement runs (not
    /// `now()`, the transaction's start).
    fn now_ms_sql() -> &'static str {
        "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT"
    }

    fn column_names_sql() -> &'static str {
        "SELECT column_name::text AS name FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = ?"
    }
}

impl Locks<PgConnection> for Postgres {
    /// `pg_advisory_xact_lock_shared`, released at commit: no session state
    /// is left on the pooled connection (works behind a transaction pooler).
    /// <https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-ADVISORY-LOCKS>
    fn enter_shared(
        conn: &mut PgConnection,
        prefix: &str,
        _state_table: &str,
        key: i64,
    ) -> QueryResult<i64> {
        // NULL when the state row is missing: reported as `NotFound`.
        let rows: Vec<MaybeCount> = Self::load(
            conn,
            &format!("SELECT {prefix}enter(?) AS n"),
            &[Bind::I64(key)],
        )?;
        rows.first()
            .and_then(|r| r.n)
            .ok_or(diesel::result::Error::NotFound)
    }

    fn try_enter_exclusive(conn: &mut PgConnection, key: i64) -> QueryResult<bool> {
        let rows: Vec<super::CountRow> = Self::load(
            conn,
            "SELECT CASE WHEN pg_try_advisory_xact_lock(?) THEN 1 ELSE 0 END::BIGINT AS n",
            &[Bind::I64(key)],
        )?;
        Ok(rows.first().is_some_and(|r| r.n == 1))
    }

    fn enter_exclusive_within(
        conn: &mut PgConnection,
        key: i64,
        timeout: Duration,
    ) -> QueryResult<()> {
        Self::execute(
            conn,
            &format!(
                "SET LOCAL lock_timeout = '{}ms'",
                timeout.as_millis().max(1)
            ),
            &[],
        )?;
        Self::execute(conn, "SELECT pg_advisory_xact_lock(?)", &[Bind::I64(key)])?;
        Ok(())
    }

    fn serialize_initialization(conn: &mut PgConnection, key: i64) -> QueryResult<()> {
        Self::execute(conn, "SELECT pg_advisory_xact_lock(?)", &[Bind::I64(key)])?;
        Ok(())
    }

    /// Waits here are bounded per statement (`lock_timeout`, the switch's
    /// escalation bound): nothing to set.
    fn set_busy_wait(_conn: &mut PgConnection, _wait: Option<Duration>) -> QueryResult<()> {
        Ok(())
    }

    /// Serialization failures by kind (SQLSTATE 40001). Lock timeouts
    /// (55P03) and deadlocks (40P01) have no kind in diesel 2.3, which does
    /// not expose the SQLSTATE, so they are matched by `PG_LOCK_CONFLICTS`,
    /// the server's English messages: a server whose `lc_messages` is
    /// another language reports them translated, and tandem then treats
    /// them as errors (the phase fails, is journaled, and a rerun retries),
    /// not as conflicts to retry at once. Set `lc_messages` to `C` or an
    /// English locale for tandem's role (`ALTER ROLE … SET lc_messages =
    /// 'C'`, which needs a superuser or the SET privilege on it).
    fn is_transient(error: &diesel::result::Error) -> bool {
        is_lock_conflict(error, PG_LOCK_CONFLICTS)
    }
}

impl Backend for Postgres {
    type Connection = PgConnection;
    const NAME: &'static str = "postgres";
    type Writers = Direct;
    type Listener = PgListener;

    /// A connection of its own, outside the pool (a pooled one would be
    /// handed to calls, and `LISTEN` is session state), that has run
    /// `LISTEN <channel>`.
    fn listen(url: &str, channel: &str) -> QueryResult<Option<PgListener>> {
        let mut conn = PgConnection::establish(&with_keepalives(url)).map_err(|e| {
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UnableToSendCommand,
                Box::new(e.to_string()),
            )
        })?;
        // The channel is the validated prefix and `state`: an identifier.
        diesel::sql_query(format!("LISTEN {channel}")).execute(&mut conn)?;
        Ok(Some(PgListener(conn)))
    }

    fn execute(conn: &mut PgConnection, sql: &str, binds: &[Bind<'_>]) -> QueryResult<usize> {
        bound_query!(diesel::pg::Pg, &*Self::placeholders(sql), binds).execute(conn)
    }

    fn load<T: MetaRow>(
        conn: &mut PgConnection,
        sql: &str,
        binds: &[Bind<'_>],
    ) -> QueryResult<Vec<T>> {
        bound_query!(diesel::pg::Pg, &*Self::placeholders(sql), binds).load::<T>(conn)
    }

    fn write_transaction<T, E, F>(conn: &mut PgConnection, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        conn.transaction(f)
    }

    /// The statement alone: PostgreSQL commits a statement outside a
    /// transaction block by itself.
    fn write_statement<T, E, F>(conn: &mut PgConnection, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        f(conn)
    }

    fn configure_pool(
        url: &str,
        _settings: &mut PoolSettings,
    ) -> (
        ConnectionManager<PgConnection>,
        Option<Box<dyn CustomizeConnection<PgConnection, diesel::r2d2::Error>>>,
    ) {
        (ConnectionManager::new(url), None)
    }
}

#[cfg(test)]
mod tests {
    use super::with_keepalives;

    #[test]
    fn the_listening_session_asks_for_keepalives_in_every_url_form() {
        assert_eq!(
            with_keepalives("postgres://u:p@h:5432/db"),
            "postgres://u:p@h:5432/db?keepalives=1&keepalives_idle=5&keepalives_interval=2&keepalives_count=3"
        );
        assert_eq!(
            with_keepalives("postgresql://h/db?sslmode=disable"),
            "postgresql://h/db?sslmode=disable&keepalives=1&keepalives_idle=5&keepalives_interval=2&keepalives_count=3"
        );
        assert_eq!(
            with_keepalives("host=h dbname=db "),
            "host=h dbname=db keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=3"
        );
        // The application's own settings stay.
        assert_eq!(
            with_keepalives("postgres://h/db?keepalives_idle=60"),
            "postgres://h/db?keepalives_idle=60"
        );
    }
}
