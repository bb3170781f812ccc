//! The backend boundary, in three traits: [`Dialect`] (pure SQL text),
//! [`Locks`] (the database's side of the schema lock, and which errors are
//! passing lock conflicts) and [`Backend`] (statements, transactions,
//! pooling, and whether writers queue in-process). Ordering, validation and
//! journaling live once, in the layers above; a backend is one file that
//! implements the three (see `fake.rs`, the unit tests' backend).

use std::time::Duration;

use diesel::r2d2::{ConnectionManager, R2D2Connection};
use diesel::result::QueryResult;

mod dialect;
#[cfg(test)]
pub(crate) mod fake;
mod locks;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use dialect::Dialect;
pub(crate) use locks::exclusive_within;
#[cfg(feature = "postgres")]
pub use locks::Direct;
#[cfg(feature = "sqlite")]
pub use locks::Queued;
pub use locks::{Locks, WriteGate};

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

/// A database tandem can drive: its [`Dialect`] (SQL text), its [`Locks`]
/// (the database's side of the schema lock, on its connection type), and
/// the I/O, transactions and pooling here. Implemented by [`Sqlite`] and
/// [`Postgres`]; sealed.
///
/// Applications name it in bounds (`B: Backend`) and use its `Connection`
/// type; its other items are the primitives tandem's own layers run on
/// (hidden, and their argument types unreachable outside the crate). A new
/// backend is one file implementing the three traits; nothing in the
/// store, fleet or upgrade code names a backend.
pub trait Backend:
    Dialect + Locks<<Self as Backend>::Connection> + Send + Sync + Sized + 'static
{
    /// The diesel connection type bindings receive.
    type Connection: diesel::Connection + R2D2Connection + Send + 'static;

    /// Backend name, as used in catalog overrides (`expand.sqlite.sql`);
    /// one of `tandem_catalog`'s known backend names.
    const NAME: &'static str;

    /// How this process's write transactions reach the database: through a
    /// fair in-process queue ([`Queued`], SQLite: one writer at a time, and
    /// its busy handler sleeps 1 to 100 ms between retries, unfairly; the
    /// queue hands the write lock over in microseconds) or straight
    /// ([`Direct`], PostgreSQL: row locks queue writers fairly).
    #[doc(hidden)]
    type Writers: WriteGate;

    /// A session of its own on which this process hears of state-row
    /// changes as they commit ([`Listener`]; PostgreSQL `LISTEN`), or
    /// `NoPush` where the backend has no such notices (SQLite).
    #[doc(hidden)]
    type Listener: Listener;

    /// Opens a session to `url` that hears `channel` (a name made from the
    /// validated prefix), or `None` if this backend has no notices.
    ///
    /// # Errors
    ///
    /// The connection's or `LISTEN`'s error.
    #[doc(hidden)]
    fn listen(url: &str, channel: &str) -> QueryResult<Option<Self::Listener>>;

    /// Runs one statement of tandem's metadata SQL with `binds`, one per
    /// `?` placeholder in order (see [`Dialect::placeholders`]).
    ///
    /// # Errors
    ///
    /// The database error.
    #[doc(hidden)]
    fn execute(conn: &mut Self::Connection, sql: &str, binds: &[Bind<'_>]) -> QueryResult<usize>;

    /// Loads rows of tandem's metadata SQL (placeholders as in `execute`).
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

    /// Runs `f`, a single write statement, as a transaction of its own: on
    /// SQLite inside [`write_transaction`](Backend::write_transaction)
    /// (`BEGIN IMMEDIATE` takes the write lock up front); on PostgreSQL
    /// the statement alone (autocommit: one round trip instead of three).
    ///
    /// # Errors
    ///
    /// `f`'s error, or the database error of `BEGIN` or `COMMIT`.
    #[doc(hidden)]
    fn write_statement<T, E, F>(conn: &mut Self::Connection, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self::Connection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        Self::write_transaction(conn, f)
    }

    /// Adjusts pool settings for `url` and returns the connection manager
    /// and a customizer applied to every new connection.
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

/// A session hearing the state row's change notices (see
/// [`Backend::listen`]). Never blocks: it reads what already arrived.
#[doc(hidden)]
pub trait Listener: Send + 'static {
    /// Whether any notice arrived since the last call (all are consumed).
    ///
    /// # Errors
    ///
    /// The session's error (the connection was lost): open another.
    fn heard(&mut self) -> QueryResult<bool>;
}

/// The listener of a backend without notices: never made.
#[doc(hidden)]
#[derive(Debug)]
#[cfg(feature = "sqlite")]
pub enum NoPush {}

#[cfg(feature = "sqlite")]
impl Listener for NoPush {
    fn heard(&mut self) -> QueryResult<bool> {
        match *self {}
    }
}

pub(crate) mod sealed {
    /// Implemented only inside tandem.
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

/// Whether `error` is a passing lock conflict on any enabled backend (the
/// error does not say which backend raised it; the lists do not overlap in
/// what they accept).
pub(crate) fn is_any_lock_conflict(error: &diesel::result::Error) -> bool {
    #[cfg(feature = "sqlite")]
    if <Sqlite as Locks<diesel::SqliteConnection>>::is_transient(error) {
        return true;
    }
    #[cfg(feature = "postgres")]
    if <Postgres as Locks<diesel::PgConnection>>::is_transient(error) {
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::Backend;

    /// A backend's catalog override files (`expand.<name>.sql`) parse only
    /// if the catalog knows its name.
    #[test]
    fn every_backend_name_is_one_the_catalog_knows() {
        let names = [
            #[cfg(feature = "sqlite")]
            <super::Sqlite as Backend>::NAME,
            #[cfg(feature = "postgres")]
            <super::Postgres as Backend>::NAME,
        ];
        for name in names {
            assert!(tandem_catalog::BACKEND_NAMES.contains(&name), "{name}");
        }
    }
}
