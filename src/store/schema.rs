//! Creating and checking the metadata tables.

use super::*;

/// The columns each of tandem's tables must have (more are allowed: a
/// newer release may add some).
const STATE_COLUMNS: &[&str] = &[
    "id",
    "version",
    "phase",
    "mode",
    "epoch",
    "owner",
    "owner_until",
    "updated_at",
];
const HISTORY_COLUMNS: &[&str] = &[
    "id",
    "version",
    "phase",
    "checksum",
    "started_at",
    "finished_at",
    "outcome",
    "by_instance",
    "detail",
];
const FLEET_COLUMNS: &[&str] = &[
    "id",
    "host",
    "pid",
    "label",
    "min_version",
    "max_version",
    "observed_epoch",
    "lease_until",
    "started_at",
];

impl Store {
    pub(crate) fn count<B: Backend>(
        conn: &mut B::Connection,
        sql: &str,
        binds: &[Bind<'_>],
    ) -> Result<i64> {
        let rows: Vec<CountRow> = B::load(conn, sql, binds)?;
        Ok(rows.first().map_or(0, |r| r.n))
    }

    pub(crate) fn table_exists<B: Backend>(conn: &mut B::Connection, table: &str) -> Result<bool> {
        Ok(Store::count::<B>(conn, B::table_exists_sql(), &[Bind::Text(table)])? > 0)
    }

    /// Checks that the tables under this prefix are tandem's: with the state
    /// table present, all three exist with tandem's columns; without it,
    /// neither of the other two exists (they would belong to the
    /// application, and `CREATE TABLE IF NOT EXISTS` would adopt them).
    pub(crate) fn check_tables<B: Backend>(
        &self,
        conn: &mut B::Connection,
        state_exists: bool,
    ) -> Result<()> {
        for (table, expected) in [
            (&self.state, STATE_COLUMNS),
            (&self.history, HISTORY_COLUMNS),
            (&self.fleet, FLEET_COLUMNS),
        ] {
            self.check_table::<B>(conn, table, expected, state_exists)?;
        }
        Ok(())
    }

    /// One table of [`check_tables`](Store::check_tables).
    fn check_table<B: Backend>(
        &self,
        conn: &mut B::Connection,
        table: &str,
        expected: &[&str],
        state_exists: bool,
    ) -> Result<()> {
        let rows: Vec<NameRow> = B::load(conn, B::column_names_sql(), &[Bind::Text(table)])?;
        let present: Vec<String> = rows.into_iter().map(|r| r.name.to_lowercase()).collect();
        if !state_exists {
            if !present.is_empty() {
                return Err(Error::PrefixTaken {
                    table: table.to_owned(),
                    detail: format!(
                        "it exists although {} does not, so it is not tandem's (or its state \
                         table was dropped: then restore {} from a backup)",
                        self.state, self.state
                    ),
                });
            }
            return Ok(());
        }
        if present.is_empty() {
            return Err(self.corrupt(table, format!("the table is missing beside {}", self.state)));
        }
        if table == self.fleet && !present.iter().any(|p| p == "catalog") {
            // Metadata of a release before fleet rows carried their
            // catalog: add the column (nullable; such rows are unknown).
            B::execute(
                conn,
                &format!("ALTER TABLE {} ADD COLUMN catalog TEXT", self.fleet),
                &[],
            )?;
            tracing::info!(table = %self.fleet, "added the catalog column to the fleet table");
        }
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|c| !present.iter().any(|p| p == c))
            .collect();
        if !missing.is_empty() {
            return Err(Error::PrefixTaken {
                table: table.to_owned(),
                detail: format!(
                    "it lacks tandem's columns {}, so it is not one of tandem's tables",
                    missing.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// The statements that create the three tables, in `D`'s dialect.
    pub(crate) fn create_statements<D: Dialect>(&self) -> Vec<String> {
        let mut statements = vec![
            format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL, \
                 phase TEXT NOT NULL, mode TEXT NOT NULL, epoch BIGINT NOT NULL, owner TEXT, \
                 owner_until BIGINT, updated_at BIGINT NOT NULL)",
                self.state
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (id {}, version BIGINT NOT NULL, phase TEXT NOT NULL, \
                 checksum TEXT NOT NULL, started_at BIGINT NOT NULL, finished_at BIGINT, \
                 outcome TEXT NOT NULL, by_instance TEXT NOT NULL, detail TEXT)",
                self.history,
                D::serial_primary_key()
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (id {} PRIMARY KEY, host TEXT NOT NULL, pid BIGINT NOT NULL, \
                 label TEXT NOT NULL, min_version BIGINT NOT NULL, max_version BIGINT NOT NULL, \
                 observed_epoch BIGINT NOT NULL, lease_until BIGINT NOT NULL, started_at BIGINT NOT NULL, \
                 catalog TEXT)",
                self.fleet,
                D::key_text()
            ),
        ];
        statements.extend(D::metadata_extras(&self.prefix, &self.state));
        statements
    }

    /// Creates the three tables and the state row. Runs inside the caller's
    /// write transaction.
    pub(crate) fn create<B: Backend>(
        &self,
        conn: &mut B::Connection,
        version: Version,
    ) -> Result<()> {
        for sql in self.create_statements::<B>() {
            B::execute(conn, &sql, &[])?;
        }
        B::execute(
            conn,
            &format!(
                "INSERT INTO {} (id, version, phase, mode, epoch, updated_at) VALUES (1, ?, 'stable', 'steady', 1, {})",
                self.state,
                B::now_ms_sql()
            ),
            &[Bind::I64(version.as_i64())],
        )?;
        Ok(())
    }
}
