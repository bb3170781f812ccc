//! Index builds that run outside the phase's transaction (PostgreSQL's
//! `CREATE INDEX CONCURRENTLY`), resumable after a crash.

/// An index a change file builds with `CREATE [UNIQUE] INDEX CONCURRENTLY`
/// on PostgreSQL, after expand's transaction has committed (such a build
/// cannot run inside a transaction, and it takes no lock that blocks
/// writes: the table keeps serving both versions while it builds).
///
/// A build that was interrupted (a crash, a cancel, a duplicate for a
/// unique index) leaves an `INVALID` index behind, which PostgreSQL keeps
/// maintaining but never uses, and which `IF NOT EXISTS` would take for
/// done. So each build first asks the catalog what is there
/// ([`state_sql`](ConcurrentIndex::state_sql)): a valid index of the table
/// is done; an invalid one is waited for while a build of it is still
/// running ([`building_sql`](ConcurrentIndex::building_sql): a crashed
/// upgrader's server process may go on building), then dropped
/// ([`drop_sql`](ConcurrentIndex::drop_sql), also concurrently) and built
/// again ([`create_sql`](ConcurrentIndex::create_sql)); any other relation
/// of that name is an error. Expand's transaction checks first that the
/// table and its columns are there and that the table is not partitioned
/// (which `CONCURRENTLY` cannot build on), so a mistake in the change file
/// rolls expand back instead of failing after it committed. Every
/// statement is plain SQL text, so a tool can run the same steps.
///
/// ```
/// # fn main() -> Result<(), tandem_catalog::CatalogError> {
/// use tandem_catalog::{change::Change, Version};
/// let change = Change::parse(
///     r#"[[operations]]
///        create_index = { table = "orders", name = "orders_by_customer", columns = ["customer"] }"#,
///     "change.toml".as_ref(),
/// )?;
/// let generated = change.generate("postgres", "change.toml".as_ref(), Version::new(2).unwrap())?;
/// let index = &generated.indexes[0];
/// assert_eq!(
///     index.create_sql,
///     r#"CREATE INDEX CONCURRENTLY IF NOT EXISTS "orders_by_customer" ON "orders" ("customer")"#
/// );
/// // On SQLite the index is built in expand's transaction instead.
/// let sqlite = change.generate("sqlite", "change.toml".as_ref(), Version::new(2).unwrap())?;
/// assert!(sqlite.indexes.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConcurrentIndex {
    /// The index's name, for logs and errors (unquoted).
    pub name: String,
    /// The statement whose one row (`n`, a BIGINT) says what is there in
    /// the table's schema under the index's name: `1` a valid index of the
    /// table, `0` an invalid one (a build interrupted, or still running),
    /// `2` another relation, `-1` none.
    pub state_sql: String,
    /// The statement whose one row (`n`, a BIGINT) counts the builds of
    /// the index running now (`pg_stat_progress_create_index`).
    pub building_sql: String,
    /// Drops an invalid index left by an interrupted build
    /// (`DROP INDEX CONCURRENTLY IF EXISTS`).
    pub drop_sql: String,
    /// Builds the index (`CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS`).
    pub create_sql: String,
}

impl ConcurrentIndex {
    /// The build of index `name` (quoted as `quoted`) on `table` (quoted)
    /// from its `CREATE [UNIQUE] INDEX` head and the rest of its statement.
    pub(super) fn new(
        name: &str,
        quoted: &str,
        table: &str,
        head: &str,
        rest: &str,
    ) -> ConcurrentIndex {
        // `name` and `table` are validated names: no quote of either kind
        // inside (but `table`'s own double quotes).
        let named = format!(
            "c.relname = '{name}' AND c.relnamespace = \
             (SELECT relnamespace FROM pg_class WHERE oid = '{table}'::regclass)"
        );
        ConcurrentIndex {
            name: name.to_owned(),
            state_sql: format!(
                "SELECT CAST(COALESCE(max(CASE \
                 WHEN c.relkind <> 'i' OR i.indrelid IS DISTINCT FROM '{table}'::regclass THEN 2 \
                 WHEN i.indisvalid THEN 1 ELSE 0 END), -1) AS BIGINT) AS n \
                 FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid WHERE {named}"
            ),
            building_sql: format!(
                "SELECT CAST(count(*) AS BIGINT) AS n FROM pg_stat_progress_create_index p \
                 JOIN pg_class c ON c.oid = p.index_relid WHERE {named}"
            ),
            drop_sql: format!("DROP INDEX CONCURRENTLY IF EXISTS {quoted}"),
            create_sql: format!("{head} CONCURRENTLY IF NOT EXISTS {quoted} {rest}"),
        }
    }

    /// The build as a comment for the expand phase's text (so that the
    /// checksum covers it and a plan shows it).
    pub(super) fn comment(&self) -> String {
        format!(
            "-- then built outside the transaction, an invalid index left by an interrupted build dropped first: {}",
            self.create_sql
        )
    }
}
