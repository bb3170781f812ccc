//! The indexes a `change.toml` builds after expand's transaction
//! (PostgreSQL's `CREATE INDEX CONCURRENTLY`), resumable: an invalid index
//! an interrupted build left is dropped and built again.

use diesel::sql_types::{BigInt, Nullable};

use super::*;
use crate::change::ConcurrentIndex;

/// One BIGINT, `n` (`ConcurrentIndex::state_sql`, `building_sql`).
#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = Nullable<BigInt>)]
    n: Option<i64>,
}

/// What `state_sql` found.
enum Found {
    None,
    Invalid,
    Valid,
    Other,
}

impl<B: Backend> Upgrader<B> {
    /// Builds `index` unless a valid index of the table is there under its
    /// name, outside any transaction, with the lease kept meanwhile (a
    /// build takes as long as the table is large). An invalid one (a build
    /// a crash, a cancel or a duplicate interrupted) is waited for while a
    /// build of it still runs (a crashed upgrader's server process may go
    /// on), then dropped and built again. Returns whether it built.
    /// `batches`: the backfill batches committed before, for errors.
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
        let count = |conn: &mut B::Connection, sql: &str| -> Result<Option<i64>> {
            Ok(B::load::<Number>(conn, sql, &[])
                .map_err(failed)?
                .first()
                .and_then(|r| r.n))
        };
        self.renew_lease(conn)?;
        self.step("expand: before index build")?;
        let mut built = false;
        // Two builds at most (one after a drop, one more if a concurrent
        // one left an invalid index after ours found it there), each
        // looked at again in the round after it.
        for round in 0..3 {
            let found = match count(conn, &index.state_sql)? {
                Some(1) => Found::Valid,
                Some(0) => Found::Invalid,
                Some(-1) | None => Found::None,
                Some(_) => Found::Other,
            };
            match found {
                Found::Valid => {
                    if !built {
                        tracing::info!(version = %target, index = %index.name, "index already built");
                    }
                    return Ok(built);
                }
                Found::Other => {
                    return Err(failed(diesel::result::Error::QueryBuilderError(
                        format!(
                            "a relation other than this table's index is named {}: give the index \
                             another name in change.toml, or drop that relation",
                            index.name
                        )
                        .into(),
                    )))
                }
                Found::Invalid if count(conn, &index.building_sql)?.unwrap_or(0) > 0 => {
                    tracing::info!(version = %target, index = %index.name, "a build of this index is running (a crashed upgrader's?): waiting for it");
                    while count(conn, &index.building_sql)?.unwrap_or(0) > 0 {
                        self.renew_lease(conn)?;
                        std::thread::sleep(BUILD_POLL);
                    }
                    continue;
                }
                _ if round == 2 => break,
                Found::Invalid => {
                    tracing::warn!(
                        version = %target,
                        index = %index.name,
                        "an invalid index of this name (an interrupted build) is there: dropping it to build it again"
                    );
                    self.kept(|| B::execute(conn, &index.drop_sql, &[]))
                        .map_err(failed)?;
                    self.step("expand: invalid index dropped")?;
                }
                Found::None => {}
            }
            let started = Instant::now();
            self.kept(|| B::execute(conn, &index.create_sql, &[]))
                .map_err(failed)?;
            tracing::info!(version = %target, index = %index.name, duration = ?started.elapsed(), "index built");
            built = true;
            self.step("expand: index built")?;
        }
        Err(failed(diesel::result::Error::QueryBuilderError(
            format!(
                "index {} is still invalid after it was built again",
                index.name
            )
            .into(),
        )))
    }
}

/// How often a wait for another session's build of an index looks again.
const BUILD_POLL: Duration = Duration::from_millis(500);
