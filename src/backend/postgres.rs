//! PostgreSQL: dialect and primitives.

use std::time::Duration;

use diesel::r2d2::{ConnectionManager, CustomizeConnection};
use diesel::result::QueryResult;
use diesel::{Connection, PgConnection, RunQueryDsl};

use super::{bound_query, message_is_transient, Backend, Bind, MetaRow, PoolSettings};

/// The PostgreSQL backend (libpq), for fleets of instances on one database.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postgres;

impl super::sealed::Sealed for Postgres {}

impl Backend for Postgres {
    type Connection = PgConnection;
    const NAME: &'static str = "postgres";
    const QUEUE_WRITERS: bool = false;

    fn execute(conn: &mut PgConnection, sql: &str, binds: &[Bind<'_>]) -> QueryResult<usize> {
        bound_query!(diesel::pg::Pg, sql, binds).execute(conn)
    }

    fn load<T: MetaRow>(
        conn: &mut PgConnection,
        sql: &str,
        binds: &[Bind<'_>],
    ) -> QueryResult<Vec<T>> {
        bound_query!(diesel::pg::Pg, sql, binds).load::<T>(conn)
    }

    fn write_transaction<T, E, F>(conn: &mut PgConnection, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        conn.transaction(f)
    }

    fn lock_timeout_sql(timeout: Duration) -> Option<String> {
        Some(format!(
            "SET LOCAL lock_timeout = '{}ms'",
            timeout.as_millis().max(1)
        ))
    }

    fn is_transient(error: &diesel::result::Error) -> bool {
        message_is_transient(
            error,
            &[
                "lock timeout",
                "deadlock detected",
                "could not obtain lock",
                "could not serialize",
            ],
        )
    }

    fn table_exists_sql() -> &'static str {
        "SELECT count(*) AS n FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = $1"
    }

    fn user_tables_sql() -> &'static str {
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = current_schema()"
    }

    fn serial_primary_key() -> &'static str {
        "BIGSERIAL PRIMARY KEY"
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
