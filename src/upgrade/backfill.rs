//! The keyset backfills a `change.toml` generates: a table walked in key
//! order, one batch per transaction under the kept lease.

use diesel::sql_types::{BigInt, Nullable};

use super::*;
use crate::change::Backfill;

/// One nullable BIGINT, `n`: a batch's end, a row estimate.
#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = Nullable<BigInt>)]
    n: Option<i64>,
}

/// A PostgreSQL batch in one statement (`Backfill::step_sql`): its end and
/// the rows it changed.
#[derive(diesel::QueryableByName)]
struct Stepped {
    #[diesel(sql_type = Nullable<BigInt>)]
    n: Option<i64>,
    #[diesel(sql_type = BigInt)]
    changed: i64,
}

/// What a walk did.
pub(super) struct Walked {
    pub(super) batches: u64,
    pub(super) rows: u64,
}

impl<B: Backend> Upgrader<B> {
    /// Walks `backfill` from the table's first key to its last, a batch of
    /// [`backfill_batches`](Upgrader::backfill_batches) rows at a time
    /// (`before`: batches of earlier backfills of the same expand, for
    /// errors). A resumed expand walks again from the start: the rows done
    /// already are read, not written (see [`Backfill`]).
    pub(super) fn walk(
        &self,
        conn: &mut B::Connection,
        kept: (&Keeper, &State),
        target: Version,
        backfill: &Backfill,
        before: u64,
    ) -> Result<Walked> {
        // Progress only: a failed estimate (no statistics yet) is no error.
        let estimated = B::load::<Number>(conn, &backfill.estimate_sql, &[])
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r.n))
            .filter(|n| *n >= 0);
        let mut walked = Walked {
            batches: 0,
            rows: 0,
        };
        let mut after = None;
        loop {
            self.renew_lease(conn)?;
            self.step("expand: before backfill batch")?;
            let batches = before.saturating_add(walked.batches);
            let at = (target, backfill.name.as_str(), batches);
            let stepped = if B::WRITING_WITH {
                // One statement: the end found and the rows filled.
                let sql = backfill.step_sql(after, self.batch_rows);
                let rows = self.batch(conn, kept, at, |c| B::load::<Stepped>(c, &sql, &[]))?;
                rows.first().and_then(|r| Some((r.n?, r.changed)))
            } else {
                let end =
                    B::load::<Number>(conn, &backfill.batch_end_sql(after, self.batch_rows), &[])
                        .map_err(|source| Error::StepFailed {
                        version: target,
                        step: backfill.name.clone(),
                        batches,
                        source,
                    })?;
                match end.first().and_then(|r| r.n) {
                    Some(upto) => {
                        let sql = backfill.batch_sql(after, upto);
                        let changed = self.batch(conn, kept, at, |c| B::execute(c, &sql, &[]))?;
                        Some((upto, i64::try_from(changed).unwrap_or(i64::MAX)))
                    }
                    None => None,
                }
            };
            let Some((upto, changed)) = stepped else {
                tracing::info!(version = %target, backfill = %backfill.name, rows = walked.rows, "backfill done");
                return Ok(walked);
            };
            walked.batches = walked.batches.saturating_add(1);
            walked.rows = walked
                .rows
                .saturating_add(u64::try_from(changed).unwrap_or(u64::MAX));
            after = Some(upto);
            tracing::info!(
                version = %target,
                backfill = %backfill.name,
                through_key = upto,
                rows_written = walked.rows,
                rows_estimated = estimated,
                "backfill batch"
            );
            if !self.batch_pause.is_zero() {
                std::thread::sleep(self.batch_pause);
            }
        }
    }
}
