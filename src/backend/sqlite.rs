//! SQLite: dialect and primitives. Writers are serialised by the database
//! (`BEGIN IMMEDIATE` takes the write lock up front, `busy_timeout` queues
//! the rest); WAL lets readers run beside the one writer.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection};
use diesel::result::QueryResult;
use diesel::{RunQueryDsl, SqliteConnection};

use crate::backoff::Backoff;

use super::locks::is_lock_conflict;
use super::{bound_query, Backend, Bind, Dialect, Locks, MetaRow, PoolSettings, Queued};

/// The embedded SQLite backend (bundled; nothing to install).
///
/// Every pooled connection gets `busy_timeout` 5 s, WAL journaling (for
/// files), `synchronous = NORMAL` and foreign keys on. An in-memory database
/// (`:memory:`, `file::memory:`, `mode=memory`, or the empty name) lives on
/// a single connection that the pool never closes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sqlite;

impl super::sealed::Sealed for Sqlite {}

/// How long a connection waits for SQLite's write lock before `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {};",
            BUSY_TIMEOUT.as_millis()
        ))
        .map_err(diesel::r2d2::Error::QueryError)?;
        // Switching a new file to WAL can report SQLITE_BUSY at once, without
        // the busy handler, while another process does the same (several
        // instances starting together): retry it within the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut backoff = Backoff::polling(Duration::from_millis(1), Duration::from_millis(50));
        loop {
            match conn.batch_execute(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            ) {
                Ok(()) => return Ok(()),
                Err(e) if Sqlite::is_transient(&e) && std::time::Instant::now() < deadline => {
                    backoff.wait_at_most(Some(
                        deadline.saturating_duration_since(std::time::Instant::now()),
                    ));
                }
                Err(e) => return Err(diesel::r2d2::Error::QueryError(e)),
            }
        }
    }
}

/// Whether every connection to `url` opens a database of its own that
/// lives only as long as that connection: `:memory:`, any `file::memory:`
/// URI, any URI with `mode=memory`, and the empty name (a private temporary
/// database). tandem keeps such a database on exactly one connection, so
/// that every call sees the same one.
fn is_in_memory(url: &str) -> bool {
    let url = url.trim();
    url.is_empty()
        || url == ":memory:"
        || url.starts_with("file::memory:")
        || url.starts_with("file:?")
        || url.contains("mode=memory")
}

impl Dialect for Sqlite {
    fn metadata_extras(_prefix: &str, _state_table: &str) -> Vec<String> {
        Vec::new()
    }

    fn lock_timeout_sql(_timeout: Duration) -> Option<String> {
        None
    }

    fn table_exists_sql() -> &'static str {
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?"
    }

    fn user_tables_sql() -> &'static str {
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    }

    fn serial_primary_key() -> &'static str {
        "INTEGER PRIMARY KEY"
    }

    fn greatest_sql() -> &'static str {
        "MAX"
    }

    /// SQLite's clock: the clock of the host the database file is on, as
    /// every process using the file runs there.
    fn now_ms_sql() -> &'static str {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    }

    fn column_names_sql() -> &'static str {
        "SELECT name FROM pragma_table_info(?)"
    }
}

impl Locks<SqliteConnection> for Sqlite {
    /// The call's transaction began with `BEGIN IMMEDIATE`: holding SQLite's
    /// write lock excludes the switch, and the version read now stays true
    /// until commit.
    fn enter_shared(
        conn: &mut SqliteConnection,
        _prefix: &str,
        state_table: &str,
        _key: i64,
    ) -> QueryResult<i64> {
        let rows: Vec<super::CountRow> = Self::load(
            conn,
            &format!("SELECT version AS n FROM {state_table} WHERE id = 1"),
            &[],
        )?;
        rows.first()
            .map(|r| r.n)
            .ok_or(diesel::result::Error::NotFound)
    }

    /// The switch's transaction began with `BEGIN IMMEDIATE`: it already
    /// holds SQLite's only write lock.
    fn try_enter_exclusive(_conn: &mut SqliteConnection, _key: i64) -> QueryResult<bool> {
        Ok(true)
    }

    fn enter_exclusive_within(
        _conn: &mut SqliteConnection,
        _key: i64,
        _timeout: Duration,
    ) -> QueryResult<()> {
        Ok(())
    }

    /// The transaction began with `BEGIN IMMEDIATE`: SQLite's write lock.
    fn serialize_initialization(_conn: &mut SqliteConnection, _key: i64) -> QueryResult<()> {
        Ok(())
    }

    fn set_busy_wait(conn: &mut SqliteConnection, wait: Option<Duration>) -> QueryResult<()> {
        // Rounded up: a wait that gives up does so at its deadline, not
        // up to a millisecond before it. (A deadline may be later than the
        // pool's wait: a switch's budget, up to an hour.)
        let ms = wait
            .unwrap_or(BUSY_TIMEOUT)
            .as_micros()
            .div_ceil(1000)
            .min(i32::MAX as u128);
        conn.batch_execute(&format!("PRAGMA busy_timeout = {ms};"))
    }

    /// `SQLITE_BUSY` and `SQLITE_LOCKED`, by their messages: diesel gives
    /// them no kind, and SQLite's messages are compiled into the library in
    /// English (`sqlite3ErrStr`), whatever the locale.
    fn is_transient(error: &diesel::result::Error) -> bool {
        is_lock_conflict(error, &["database is locked", "database table is locked"])
    }
}

impl Backend for Sqlite {
    type Connection = SqliteConnection;
    const NAME: &'static str = "sqlite";
    type Writers = Queued;
    type Listener = super::NoPush;

    /// SQLite has no notices: every instance on the file polls.
    fn listen(_url: &str, _channel: &str) -> QueryResult<Option<super::NoPush>> {
        Ok(None)
    }

    fn execute(conn: &mut SqliteConnection, sql: &str, binds: &[Bind<'_>]) -> QueryResult<usize> {
        bound_query!(diesel::sqlite::Sqlite, sql, binds).execute(conn)
    }

    fn load<T: MetaRow>(
        conn: &mut SqliteConnection,
        sql: &str,
        binds: &[Bind<'_>],
    ) -> QueryResult<Vec<T>> {
        bound_query!(diesel::sqlite::Sqlite, sql, binds).load::<T>(conn)
    }

    fn write_transaction<T, E, F>(conn: &mut SqliteConnection, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut SqliteConnection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        conn.immediate_transaction(f)
    }

    fn configure_pool(
        url: &str,
        settings: &mut PoolSettings,
    ) -> (
        ConnectionManager<SqliteConnection>,
        Option<Box<dyn CustomizeConnection<SqliteConnection, diesel::r2d2::Error>>>,
    ) {
        if is_in_memory(url) {
            // Each connection to `:memory:` is its own database: keep exactly one, forever.
            settings.max_size = 1;
            settings.idle_timeout = None;
            settings.max_lifetime = None;
        }
        (ConnectionManager::new(url), Some(Box::new(Pragmas)))
    }
}
