//! Generated backfills: a table walked in key order, in batches.

/// A backfill a change file generates (see
/// [`Operation::ChangeType`](super::Operation::ChangeType)): rows of one
/// table walked in the order of an integer key, a batch at a time, each
/// batch one `UPDATE` of the rows in a key range that still need it (or,
/// for `move_column`, one `INSERT … SELECT` of them into another table).
///
/// Every statement is SQL text with no placeholder, so any tool can run it:
/// [`batch_end_sql`](Backfill::batch_end_sql) finds where the batch after a
/// key ends (NULL once no row is left), [`batch_sql`](Backfill::batch_sql)
/// fills that range. A batch writes only rows that still differ from what
/// they should hold, so a walk started again from the beginning rewrites
/// nothing it already did, and the sync trigger keeps the rows written
/// meanwhile right. (tandem resumes a crashed walk after its last committed
/// batch, and once a walk ends checks the whole table for a row still
/// pending, one whose key changed behind the walk, and walks again from
/// it.)
///
/// ```
/// # fn main() -> Result<(), tandem_catalog::CatalogError> {
/// use tandem_catalog::{change::Change, Version};
/// let change = Change::parse(
///     r#"[[operations]]
///        change_type = { table = "orders", column = "qty", type = "bigint", up = "qty", down = "qty" }"#,
///     "change.toml".as_ref(),
/// )?;
/// let generated = change.generate("sqlite", "change.toml".as_ref(), Version::new(2).unwrap())?;
/// let backfill = &generated.backfills[0];
/// assert_eq!(
///     backfill.batch_sql(Some(1000), 2000),
///     r#"UPDATE "orders" SET "_tandem_new_qty" = ("qty") WHERE rowid > 1000 AND rowid <= 2000 AND "_tandem_new_qty" IS NOT ("qty")"#
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backfill {
    /// What it fills, for logs and errors (`orders.qty`).
    pub name: String,
    /// The table, quoted.
    pub table: String,
    /// The integer key it walks, quoted (`rowid` on SQLite).
    pub key: String,
    /// What a batch sets (`"_tandem_new_qty" = "qty"`); empty for a
    /// backfill that inserts.
    pub set: String,
    /// For a backfill that inserts rows into another table
    /// (`move_column`): the `INSERT INTO … SELECT … FROM` the table's rows
    /// in a batch's range that are `pending` (conflicts skipped: a row a
    /// sync trigger inserted meanwhile is right). `None`: the batch is an
    /// `UPDATE` of the table by `set`.
    pub insert: Option<String>,
    /// The locking clause of an inserting backfill's `SELECT` (PostgreSQL:
    /// `FOR SHARE OF` the table, so that a row changed meanwhile is read
    /// as it is now); empty otherwise.
    pub insert_lock: String,
    /// Which rows of a batch's range still need it.
    pub pending: String,
    /// A statement estimating the table's rows (`AS n`): from the
    /// planner's statistics on PostgreSQL (−1 before the table was ever
    /// analyzed), a count on SQLite.
    pub estimate_sql: String,
}

impl Backfill {
    /// The statement whose one row (`n`, a BIGINT) is the largest key of
    /// the `rows` rows after key `after` (from the first if `None`): the
    /// end of the next batch, NULL once none is left.
    pub fn batch_end_sql(&self, after: Option<i64>, rows: u32) -> String {
        let k = &self.key;
        format!(
            "SELECT CAST(max(k) AS BIGINT) AS n FROM (SELECT {k} AS k FROM {}{} ORDER BY {k} LIMIT {rows}) AS batch",
            self.table,
            after.map_or_else(String::new, |a| format!(" WHERE {k} > {a}"))
        )
    }

    /// The statement whose one row (`n`, a BIGINT) is the table's largest
    /// key, NULL if it has no row: where a walk by key ranges
    /// ([`batch_sql`](Backfill::batch_sql) of `(after, after + rows]`,
    /// which holds at most `rows` rows) may stop, rows written later being
    /// the sync trigger's.
    pub fn last_key_sql(&self) -> String {
        format!(
            "SELECT CAST(max({}) AS BIGINT) AS n FROM {}",
            self.key, self.table
        )
    }

    /// The statement filling the rows with keys after `after` (from the
    /// first if `None`) up to `upto`: a range
    /// [`batch_end_sql`](Backfill::batch_end_sql) found, or any other (a
    /// range of `rows` keys holds at most `rows` rows).
    pub fn batch_sql(&self, after: Option<i64>, upto: i64) -> String {
        self.update(after.map(|a| a.to_string()).as_deref(), &upto.to_string())
    }

    /// One statement for the whole of the batch after key `after` (from
    /// the first if `None`) of `rows` rows, for PostgreSQL (a `WITH` that
    /// holds the `UPDATE` or `INSERT`): it finds the batch's end and fills its rows, and
    /// its one row is that end (`n`, NULL once no row is left) and the
    /// rows it changed (`changed`).
    pub fn step_sql(&self, after: Option<i64>, rows: u32) -> String {
        let k = &self.key;
        let from = after.map_or_else(String::new, |a| format!("{k} > {a} AND "));
        format!(
            "WITH batch AS (SELECT {k} AS k FROM {t} WHERE {from}TRUE ORDER BY {k} LIMIT {rows}), \
             done AS ({fill} RETURNING 1) \
             SELECT CAST((SELECT max(k) FROM batch) AS BIGINT) AS n, CAST((SELECT count(*) FROM done) AS BIGINT) AS changed",
            t = self.table,
            fill = self.fill(&format!("{from}{k} <= (SELECT max(k) FROM batch)")),
        )
    }

    fn update(&self, after: Option<&str>, upto: &str) -> String {
        let k = &self.key;
        let after = after.map_or_else(String::new, |a| format!("{k} > {a} AND "));
        self.fill(&format!("{after}{k} <= {upto}"))
    }

    /// The statement filling the rows of `range` that are pending.
    fn fill(&self, range: &str) -> String {
        match &self.insert {
            None => format!(
                "UPDATE {} SET {} WHERE {range} AND {}",
                self.table, self.set, self.pending
            ),
            Some(insert) => format!(
                "{insert} WHERE {range} AND {}{} ON CONFLICT DO NOTHING",
                self.pending, self.insert_lock
            ),
        }
    }

    /// The walk as a comment for the expand phase's text (so that the
    /// checksum covers it and a plan shows it).
    pub(super) fn comment(&self) -> String {
        format!(
            "-- then backfilled in batches, in {} order: {}",
            self.key,
            self.update(Some("<previous batch end>"), "<batch end>")
        )
    }
}
