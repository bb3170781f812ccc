//! The demo schema of the README, the examples and the docs: `accounts`
//! whose `email` column moves into its own `account_emails` table in
//! version 2 (the catalog in tandem's `schema_versions/`).

use diesel::{QueryResult, RunQueryDsl, SqliteConnection};

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
pub fn backfill_emails(conn: &mut SqliteConnection) -> QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO account_emails (account_id, email) \
         SELECT a.id, a.email FROM accounts a \
         WHERE a.email <> '' AND NOT EXISTS (SELECT 1 FROM account_emails e WHERE e.account_id = a.id) \
         ORDER BY a.id LIMIT 1000",
    )
    .execute(conn)
}
