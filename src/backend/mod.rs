//! The backend boundary: SQL dialect and lock primitives, nothing else.
//! Ordering, validation and journaling live once, in the shared modules.

use std::time::Duration;

use diesel::r2d2::{ConnectionManager, R2D2Connection};
use diesel::result::QueryResult;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::Postgres;
#[cfg(feature = "sqlite")]
pub use sqlite::Sqlite;

/// A bind parameter for tandem's own metadata queries.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Bind<'a> {
    /// `BIGINT`.
    I64(i64),
    /// `TEXT`.
    Text(&'a str),
    /// Nullable `BIGINT`.
    OptI64(Option<i64>),
    /// Nullable `TEXT`.
    OptText(Option<&'a str>),
}

/// A row type of tandem's metadata queries, loadable on every enabled backend.
#[cfg(all(feature = "sqlite", feature = "postgres"))]
pub trait MetaRow:
    diesel::QueryableByName<diesel::sqlite::Sqlite> + diesel::QueryableByName<diesel::pg::Pg> + 'static
{
}
#[cfg(all(feature = "sqlite", feature = "postgres"))]
impl<T> MetaRow for T where
    T: diesel::QueryableByName<diesel::sqlite::Sqlite>
        + diesel::QueryableByName<diesel::pg::Pg>
        + 'static
{
}

/// A row type of tandem's metadata queries, loadable on every enabled backend.
#[cfg(all(feature = "sqlite", not(feature = "postgres")))]
pub trait MetaRow: diesel::QueryableByName<diesel::sqlite::Sqlite> + 'static {}
#[cfg(all(feature = "sqlite", not(feature = "postgres")))]
impl<T> MetaRow for T where T: diesel::QueryableByName<diesel::sqlite::Sqlite> + 'static {}

/// A row type of tandem's metadata queries, loadable on every enabled backend.
#[cfg(all(not(feature = "sqlite"), feature = "postgres"))]
pub trait MetaRow: diesel::QueryableByName<diesel::pg::Pg> + 'static {}
#[cfg(all(not(feature = "sqlite"), feature = "postgres"))]
impl<T> MetaRow for T where T: diesel::QueryableByName<diesel::pg::Pg> + 'static {}

/// The row of a `SELECT … AS n` count, for the backends' own probes and
/// the store.
#[derive(diesel::QueryableByName)]
pub(crate) struct CountRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(crate) n: i64,
}

/// Pool settings a backend may adjust (an in-memory SQLite database must
/// live on exactly one connection that is never closed).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Maximum connections.
    pub max_size: u32,
    /// How long a checkout may wait.
    pub connection_timeout: Duration,
    /// Whether r2d2 pings a connection on every checkout.
    pub test_on_check_out: bool,
    /// Close connections idle for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Close connections this old (`None`: never).
    pub max_lifetime: Option<Duration>,
}

/// A database tandem can drive. Implemented by [`Sqlite`] and [`Postgres`];
/// sealed.
///
/// Applications name it in bounds (`B: Backend`) and use its `Connection`
/// type; its other items are the primitives tandem's own layers run on
/// (hidden, and their argument types unreachable outside the crate).
pub trait Backend: Send + Sync + Sized + 'static + sealed::Sealed {
    /// The diesel connection type bindings receive.
    type Connection: diesel::Connection + R2D2Connection + Send + 'static;

    /// Backend name, as used in catalog overrides (`expand.sqlite.sql`).
    const NAME: &'static str;

    /// Whether write transactions of one process queue on an in-process
    /// gate before reaching the database. SQLite allows one writer at a time
    /// and its busy handler sleeps 1 to 100 ms between retries, unfairly; a
    /// fair in-process queue hands the write lock over in microseconds.
    #[doc(hidden)]
    const QUEUE_WRITERS: bool;

    /// Runs one statement of tandem's metadata SQL with `binds` (`$1`, `$2`, …).
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn execute(conn: &mut Self::Connection, sql: &str, binds: &[Bind<'_>]) -> QueryResult<usize>;

    /// Loads rows of tandem's metadata SQL.
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn load<T: MetaRow>(
        conn: &mut Self::Connection,
        sql: &str,
        binds: &[Bind<'_>],
    ) -> QueryResult<Vec<T>>;

    /// Runs `f` in a transaction that holds the database's write side from
    /// its first statement (SQLite `BEGIN IMMEDIATE`), so read-then-write
    /// metadata updates are compare-and-set.
    ///
    /// # Errors
    ///
    /// `f`'s error, or the database error of `BEGIN` or `COMMIT`.
    #[doc(hidden)]
    fn write_transaction<T, E, F>(conn: &mut Self::Connection, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self::Connection) -> Result<T, E>,
        E: From<diesel::result::Error>;

    /// Statements run once when the metadata tables are created, after them
    /// (PostgreSQL: the function that takes the shared schema lock and reads
    /// the version in one round trip).
    #[doc(hidden)]
    fn metadata_extras(prefix: &str, state_table: &str) -> Vec<String>;

    /// Inside a call's transaction on the locking path: takes the shared
    /// side of the database schema lock `key` and returns the live version as
    /// stored, read after the lock was granted. One round trip.
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn enter_shared(
        conn: &mut Self::Connection,
        prefix: &str,
        state_table: &str,
        key: i64,
    ) -> QueryResult<i64>;

    /// Inside the switch's transaction: takes the exclusive side of the
    /// database schema lock `key` if it is free, without queueing (queued
    /// exclusive requests would stall every new reader behind them).
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn try_enter_exclusive(conn: &mut Self::Connection, key: i64) -> QueryResult<bool>;

    /// Inside the switch's transaction: queues for the exclusive side for at
    /// most `timeout` (the bounded escalation); on timeout the transaction
    /// is aborted with a lock-timeout error and the readers behind it run.
    ///
    /// # Errors
    ///
    /// A lock-timeout error, or another database error.
    #[doc(hidden)]
    fn enter_exclusive_within(
        conn: &mut Self::Connection,
        key: i64,
        timeout: Duration,
    ) -> QueryResult<()>;

    /// Inside the transaction that creates or checks the metadata at open:
    /// waits until no other process is doing the same (PostgreSQL: the
    /// transaction-scoped advisory lock `key`); until commit, this one is
    /// alone. SQLite's `BEGIN IMMEDIATE` already holds its only write lock.
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn serialize_initialization(conn: &mut Self::Connection, key: i64) -> QueryResult<()>;

    /// SQL that bounds, for the rest of the current transaction, how long a
    /// statement waits for a lock; `None` where waits are bounded otherwise
    /// (SQLite's `busy_timeout`).
    #[doc(hidden)]
    fn lock_timeout_sql(timeout: Duration) -> Option<String>;

    /// Bounds how long this connection's statements wait for the database's
    /// write lock from now on (`None`: the default again). SQLite: its
    /// `busy_timeout`; a no-op where waits are bounded per statement
    /// (PostgreSQL: `lock_timeout` and the switch's escalation bound).
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn set_busy_wait(conn: &mut Self::Connection, wait: Option<Duration>) -> QueryResult<()>;

    /// Whether an error is a passing lock conflict worth retrying
    /// (SQLite busy, PostgreSQL lock timeout or deadlock).
    #[doc(hidden)]
    fn is_transient(error: &diesel::result::Error) -> bool;

    /// SQL returning one row with a `BIGINT` column `n`: whether table `$1`
    /// exists (1) or not (0).
    #[doc(hidden)]
    fn table_exists_sql() -> &'static str;

    /// SQL returning one row with a `BIGINT` column `n`: how many
    /// application tables the database holds.
    #[doc(hidden)]
    fn user_tables_sql() -> &'static str;

    /// Column type of an auto-increment primary key.
    #[doc(hidden)]
    fn serial_primary_key() -> &'static str;

    /// The SQL function that returns the larger of two values (`MAX` with
    /// two arguments on SQLite, `GREATEST` on PostgreSQL).
    #[doc(hidden)]
    fn greatest_sql() -> &'static str;

    /// An SQL expression for the database's clock, in milliseconds since
    /// the Unix epoch (`BIGINT`). Every lease, expiry and cutoff that
    /// crosses processes is computed with it, never with a host's clock.
    #[doc(hidden)]
    fn now_ms_sql() -> &'static str;

    /// SQL returning one row with a `TEXT` column `name` per column of
    /// table `$1` (none if the table does not exist).
    #[doc(hidden)]
    fn column_names_sql() -> &'static str;

    /// Adjusts pool settings for `url` and returns the connection manager
    /// and a customizer applied to every new connection.
    ///
    /// # Errors
    ///
    /// None for the built-in backends; reserved for URL validation.
    #[allow(clippy::type_complexity)]
    #[doc(hidden)]
    fn configure_pool(
        url: &str,
        settings: &mut PoolSettings,
    ) -> (
        ConnectionManager<Self::Connection>,
        Option<Box<dyn diesel::r2d2::CustomizeConnection<Self::Connection, diesel::r2d2::Error>>>,
    );
}

mod sealed {
    pub trait Sealed {}
}

/// Shared body of `Backend::execute`/`load`: a boxed `sql_query` with binds.
macro_rules! bound_query {
    ($db:ty, $sql:expr, $binds:expr) => {{
        use diesel::sql_types::{BigInt, Nullable, Text};
        let mut query = diesel::sql_query($sql).into_boxed::<$db>();
        for bind in $binds {
            query = match *bind {
                $crate::backend::Bind::I64(v) => query.bind::<BigInt, _>(v),
                $crate::backend::Bind::Text(v) => query.bind::<Text, _>(v),
                $crate::backend::Bind::OptI64(v) => query.bind::<Nullable<BigInt>, _>(v),
                $crate::backend::Bind::OptText(v) => query.bind::<Nullable<Text>, _>(v),
            };
        }
        query
    }};
}
pub(crate) use bound_query;

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
