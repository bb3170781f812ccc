//! The indexes a `change.toml` builds after expand's transaction
//! (PostgreSQL's `CREATE INDEX CONCURRENTLY`), resumable: an invalid index
//! an interrupted build left is dropped and built again.

use diesel::sql_types::{BigInt, Nullable};

use super::*;
use crate::change::ConcurrentIndex;

/// What the catalog holds under an index's name (`ConcurrentIndex::state_sql`).
#[derive(diesel::QueryableByName)]
struct IndexState {
    #[diesel(sql_type = Nullable<BigInt>)]
    n: Option<i64>,
}

impl<B: Backend> Upgrader<B> {
    /// Builds `index` unless a valid index of its name is there, outside
    /// any transaction, with the lease kept meanwhile (a build takes as
    /// long as the table is large); an invalid one (a build a crash, a
    /// cancel or a duplicate interrupted) is dropped first. Returns
    /// whether it built. `batches`: the backfill batches committed before,
    /// for errors.
    pub(super) fn build_index(
        &self,
        conn: &mut B::Connection,
        target: Version,
        index: &ConcurrentIndex,
        batches: u64,
    ) -> Result<bool> {
        let failed = |source| Error::StepFailed {
            version: target,
            step: format!("build index {}", index.name),
            batches,
            source,
        };
        self.renew_lease(conn)?;
        self.step("expand: before index build")?;
        let there = B::load::<IndexState>(conn, &index.state_sql, &[])
            .map_err(failed)?
            .first()
            .and_then(|s| s.n);
        match there {
            Some(1) => {
                tracing::info!(version = %target, index = %index.name, "index already built");
                return Ok(false);
            }
            Some(0) => {
                tracing::warn!(
                    version = %target,
                    index = %index.name,
                    "an invalid index of this name (an interrupted build) is there: dropping it to build it again"
                );
                self.kept(|| B::execute(conn, &index.drop_sql, &[]))
                    .map_err(failed)?;
                self.step("expand: invalid index dropped")?;
            }
            _ => {}
        }
        let started = Instant::now();
        self.kept(|| B::execute(conn, &index.create_sql, &[]))
            .map_err(failed)?;
        tracing::info!(version = %target, index = %index.name, duration = ?started.elapsed(), "index built");
        self.step("expand: index built")?;
        Ok(true)
    }
}
