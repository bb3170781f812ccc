//! The demo schema of the README, the examples and the docs: `accounts`
//! whose `email` column moves into its own `account_emails` table in
//! version 2 (the catalog in tandem's `schema_versions/`).

use diesel::query_dsl::methods::ExecuteDsl;
use diesel::{Connection, QueryResult};

use crate::catalog::Catalog;
use crate::error::CatalogError;

/// The demo catalog, embedded at compile time.
///
/// # Errors
///
/// Never in a released build (the build script validated it); the
/// [`CatalogError`] otherwise.
pub fn catalog() -> Result<Catalog, CatalogError> {
    static CATALOG: once_cell::sync::OnceCell<Catalog> = once_cell::sync::OnceCell::new();
    CATALOG
        .get_or_try_init(|| Catalog::from_embedded(crate::include_catalog!()))
        .cloned()
}

/// Version 2's batched backfill: copies up to 1000 emails that old code
/// wrote before the sync triggers existed. Idempotent; returns rows copied.
///
/// # Errors
///
/// The database error.
/// Works on every backend (the SQL is portable).
pub fn backfill_emails<C>(conn: &mut C) -> QueryResult<usize>
where
    C: Connection,
    diesel::query_builder::SqlQuery: ExecuteDsl<C>,
{
    let query = diesel::sql_query(
        "INSERT INTO account_emails (account_id, email) \
         SELECT a.id, a.email FROM accounts a \
         WHERE a.email <> '' AND NOT EXISTS (SELECT 1 FROM account_emails e WHERE e.account_id = a.id) \
         ORDER BY a.id LIMIT 1000",
    );
    ExecuteDsl::execute(query, conn)
}
