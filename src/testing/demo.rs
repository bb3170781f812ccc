//! The demo schema of the README, the examples and the docs: `accounts`
//! whose `email` column moves into its own `account_emails` table in
//! version 2 (the catalog in tandem's `schema_versions/`).

use diesel::query_dsl::methods::{ExecuteDsl, LoadQuery};
use diesel::{Connection, QueryResult, RunQueryDsl};

use crate::catalog::Catalog;
use crate::error::CatalogError;

/// The demo catalog, embedded at compile time with
/// [`embed_catalog!`](crate::embed_catalog) (tandem's own
/// `schema_versions/`).
///
/// # Errors
///
/// Never: `embed_catalog!` validated it as it expanded; the signature is
/// that of [`Catalog::from_embedded`].
pub fn catalog() -> Result<Catalog, CatalogError> {
    static CATALOG: once_cell::sync::OnceCell<Catalog> = once_cell::sync::OnceCell::new();
    CATALOG
        .get_or_try_init(|| Catalog::from_embedded(crate::embed_catalog!("schema_versions")))
        .cloned()
}

/// Version 2's batched backfill: copies up to 1000 emails that old code
/// wrote before the sync triggers existed. Returns the rows copied, or 1 if
/// none were copied but some are still missing; 0 means done.
///
/// Idempotent, and safe beside live writers: a row the sync trigger inserts
/// concurrently (after this statement's snapshot) is skipped with `ON
/// CONFLICT DO NOTHING` instead of failing the batch. Works on every backend.
///
/// # Errors
///
/// The database error.
pub fn backfill_emails<C>(conn: &mut C) -> QueryResult<usize>
where
    C: Connection,
    diesel::query_builder::SqlQuery: ExecuteDsl<C> + for<'a> LoadQuery<'a, C, Missing>,
{
    const MISSING: &str = "FROM accounts a WHERE a.email <> '' \
         AND NOT EXISTS (SELECT 1 FROM account_emails e WHERE e.account_id = a.id)";
    let copy = diesel::sql_query(format!(
        "INSERT INTO account_emails (account_id, email) SELECT a.id, a.email {MISSING} \
         ORDER BY a.id LIMIT 1000 ON CONFLICT (account_id) DO NOTHING"
    ));
    let copied = ExecuteDsl::execute(copy, conn)?;
    if copied > 0 {
        return Ok(copied);
    }
    // Every row of the batch was filled concurrently: anything left?
    let left: Vec<Missing> =
        diesel::sql_query(format!("SELECT a.id {MISSING} LIMIT 1")).load(conn)?;
    Ok(left.len())
}

/// A row of the backfill's "anything left?" check.
#[derive(diesel::QueryableByName, Debug)]
pub struct Missing {
    /// An account still without an `account_emails` row.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
}
