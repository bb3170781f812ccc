//! The builder's backfill steps (Rust or one SQL statement) and the checks
//! of the catalog against this backend and those steps at open.

use super::*;

impl<B: Backend> Builder<B> {
    /// Registers a Rust step that runs in `version`'s expand phase after its
    /// SQL, in batches: `batch` is called repeatedly, each call in its own
    /// transaction, until it returns 0 (rows changed). It must be idempotent
    /// (a rerun after a crash calls it again), for example
    /// `INSERT … SELECT … WHERE NOT EXISTS (…) LIMIT 1000`.
    pub fn backfill<F>(mut self, version: u32, name: &str, batch: F) -> Self
    where
        F: Fn(&mut B::Connection) -> diesel::QueryResult<usize> + Send + Sync + 'static,
    {
        self.backfills.push(Backfill {
            version,
            name: name.to_owned(),
            batch: Box::new(batch),
            sql: None,
        });
        self
    }

    /// Registers a backfill that is one SQL statement, run in `version`'s
    /// expand phase after its SQL until it changes no row, each run in its
    /// own transaction (as [`backfill`](Builder::backfill), with no Rust
    /// code or diesel bounds to write). Write it to change one batch and to
    /// converge, changing no row only once nothing is left:
    /// `UPDATE t SET b = a WHERE id IN (SELECT id FROM t WHERE b IS NULL
    /// LIMIT 500)`, or `INSERT … SELECT … WHERE NOT EXISTS (…) LIMIT 500`
    /// (on PostgreSQL with `ON CONFLICT DO NOTHING` too, for rows a trigger
    /// inserts meanwhile). The statement is checked when the handle opens:
    /// one statement, no transaction control, an `UPDATE` or `DELETE` with a
    /// `WHERE`.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// # fn main() -> Result<(), tandem::Error> {
    /// let db = tandem::Tandem::<tandem::Sqlite>::builder(":memory:", tandem::testing::demo::catalog()?)
    ///     .pool_size(1)
    ///     .backfill_sql(
    ///         2,
    ///         "copy emails",
    ///         "INSERT INTO account_emails (account_id, email) \
    ///          SELECT id, email FROM accounts a WHERE email <> '' AND NOT EXISTS \
    ///          (SELECT 1 FROM account_emails e WHERE e.account_id = a.id) LIMIT 500",
    ///     )
    ///     .open()?;
    /// db.upgrader().upgrade_to(2)?;
    /// # Ok(()) }
    /// # main().unwrap();
    /// # }
    /// ```
    pub fn backfill_sql(mut self, version: u32, name: &str, sql: &str) -> Self {
        let statement = sql.to_owned();
        self.backfills.push(Backfill {
            version,
            name: name.to_owned(),
            batch: Box::new(move |conn: &mut B::Connection| B::execute(conn, &statement, &[])),
            sql: Some(sql.to_owned()),
        });
        self
    }

    /// Every version of the catalog is written for this backend.
    pub(super) fn check_backend(&self) -> Result<()> {
        if let Some(v) = self.catalog.versions().find(|v| !v.supports(B::NAME)) {
            let supported: Vec<&str> = crate::catalog::BACKEND_NAMES
                .iter()
                .copied()
                .filter(|b| v.supports(b))
                .collect();
            return Err(Error::BackendNotSupported {
                version: v.version(),
                backend: B::NAME,
                supported: supported.join(", "),
            });
        }
        Ok(())
    }

    /// Every backfill is for a version of the catalog, and a SQL one is
    /// one batch.
    pub(super) fn check_backfills(&self, latest: Version) -> Result<()> {
        for step in &self.backfills {
            let v = Version::new(step.version).ok_or(Error::InvalidVersion {
                value: i64::from(step.version),
                context: "backfill",
            })?;
            if v > latest {
                return Err(Error::BackfillBeyondCatalog {
                    step: step.name.clone(),
                    version: v,
                    latest,
                });
            }
            if let Some(sql) = &step.sql {
                tandem_catalog::lint::one_statement(sql, B::NAME).map_err(|problem| {
                    Error::BadBackfill {
                        step: step.name.clone(),
                        version: v,
                        problem,
                    }
                })?;
            }
        }
        Ok(())
    }
}
