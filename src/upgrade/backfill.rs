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

/// How far an expand's generated backfills got: per backfill, the last key
/// of its last batch committed. Kept in the running expand's history row
/// (`backfilled through: orders.qty=2000, orders.total=150`), written in each
/// batch's transaction, so a resumed expand goes on after the last batch
/// that committed instead of walking the rows done again. (Rows written
/// since the expand's SQL are kept in step by its sync triggers: only the
/// rows from before it need the walk. A row whose key changes is not: once
/// a walk ends, one read looks for rows still pending, anywhere, and the
/// walk goes again from the first of them.)
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Progress(Vec<(String, i64)>);

impl Progress {
    const PREFIX: &'static str = "backfilled through: ";

    /// The progress a running expand row's detail records (none if it
    /// records none, or something else).
    pub(super) fn parse(detail: Option<&str>) -> Self {
        let Some(list) = detail.and_then(|d| d.strip_prefix(Self::PREFIX)) else {
            return Self::default();
        };
        Self(
            list.split(", ")
                .filter_map(|entry| {
                    let (name, key) = entry.rsplit_once('=')?;
                    Some((name.to_owned(), key.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The key `backfill` got through, if it began.
    fn through(&self, backfill: &str) -> Option<i64> {
        self.0.iter().find(|(n, _)| n == backfill).map(|(_, k)| *k)
    }

    /// The detail with `backfill` through `key` (names are what a change
    /// file may use: lowercase letters, digits, `_` and the `.` between
    /// table and column).
    fn with(&self, backfill: &str, key: i64) -> String {
        let mut next = self.clone();
        next.set(backfill, key);
        let list: Vec<String> = next.0.iter().map(|(n, k)| format!("{n}={k}")).collect();
        format!("{}{}", Self::PREFIX, list.join(", "))
    }

    fn set(&mut self, backfill: &str, key: i64) {
        match self.0.iter_mut().find(|(n, _)| n == backfill) {
            Some(entry) => entry.1 = key,
            None => self.0.push((backfill.to_owned(), key)),
        }
    }
}

impl<B: Backend> Upgrader<B> {
    /// The smallest key of a row that still needs `backfill`, if one does
    /// (one read), with the lease kept meanwhile (on a large table the
    /// read can take longer than the lease).
    fn first_pending(
        &self,
        conn: &mut B::Connection,
        keeper: &Keeper,
        backfill: &Backfill,
        (target, batches): (Version, u64),
    ) -> Result<Option<i64>> {
        let sql = format!(
            "SELECT CAST(MIN({}) AS BIGINT) AS n FROM {} WHERE {}",
            backfill.key, backfill.table, backfill.pending
        );
        let rows = keeper.armed(|| B::load::<Number>(conn, &sql, &[]));
        let rows = rows.map_err(|source| Error::StepFailed {
            version: target,
            step: backfill.name.clone(),
            batches,
            source,
        })?;
        Ok(rows.first().and_then(|r| r.n))
    }
}

/// The most walks of one backfill in one expand: a row still pending after
/// this many is [`Error::BackfillUnsettled`].
const WALKS: u32 = 4;

/// What a walk did.
pub(super) struct Walked {
    pub(super) batches: u64,
    pub(super) rows: u64,
    /// The closing checks' time ([`PhaseReport::backfill_checks`]).
    pub(super) checked: Duration,
}

impl<B: Backend> Upgrader<B> {
    /// Walks `backfill` from the table's first key (or, resumed, from
    /// after the last key `progress` records) to its last, a batch of
    /// [`backfill_batches`](Upgrader::backfill_batches) rows at a time,
    /// each batch recording its end in `progress` and, in its transaction,
    /// the history row (`before`: batches of earlier backfills of the same
    /// expand, for errors). Rows a sync trigger filled already are read, not
    /// written (see [`Backfill`]).
    pub(super) fn walk(
        &self,
        conn: &mut B::Connection,
        kept: (&Keeper, &State),
        (target, progress): (Version, &mut Progress),
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
            checked: Duration::ZERO,
        };
        let mut after = progress.through(&backfill.name);
        let mut walks: u32 = 1;
        if let Some(key) = after {
            tracing::info!(version = %target, backfill = %backfill.name, after_key = key, "resuming backfill");
        }
        let store = &self.shared.store;
        // Where the keys are dense, batches are key ranges of `batch_rows`
        // keys (at most that many rows), and no statement looks for where a
        // batch ends; `ranged` once a batch found so spanned at most twice
        // its rows, until a range changes fewer than half of them (a gap, or
        // rows done already: the next batch finds its end again).
        let last = B::load::<Number>(conn, &backfill.last_key_sql(), &[])
            .map_err(|source| Error::StepFailed {
                version: target,
                step: backfill.name.clone(),
                batches: before,
                source,
            })?
            .first()
            .and_then(|r| r.n);
        let rows = i64::from(self.batch_rows);
        let mut ranged = false;
        loop {
            self.renew_lease(conn)?;
            self.step("expand: before backfill batch")?;
            let batches = before.saturating_add(walked.batches);
            let at = (target, backfill.name.as_str(), batches);
            let range = after
                .filter(|_| ranged)
                .map(|from| (from, from.saturating_add(rows)));
            let stepped = if let Some((from, upto)) = range {
                if last.is_none_or(|last| from >= last) {
                    None
                } else {
                    let sql = backfill.batch_sql(Some(from), upto);
                    let detail = progress.with(&backfill.name, upto);
                    let changed = self.batch(conn, kept, at, |c| {
                        let changed = B::execute(c, &sql, &[])?;
                        store.set_expand_progress::<B>(c, target, &detail)?;
                        Ok(changed)
                    })?;
                    Some((upto, i64::try_from(changed).unwrap_or(i64::MAX)))
                }
            } else if B::WRITING_WITH {
                // One statement: the end found and the rows filled.
                let sql = backfill.step_sql(after, self.batch_rows);
                self.batch(conn, kept, at, |c| {
                    let rows = B::load::<Stepped>(c, &sql, &[])?;
                    let stepped = rows.first().and_then(|r| Some((r.n?, r.changed)));
                    if let Some((upto, _)) = stepped {
                        let detail = progress.with(&backfill.name, upto);
                        store.set_expand_progress::<B>(c, target, &detail)?;
                    }
                    Ok(stepped)
                })?
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
                        let detail = progress.with(&backfill.name, upto);
                        let changed = self.batch(conn, kept, at, |c| {
                            let changed = B::execute(c, &sql, &[])?;
                            store.set_expand_progress::<B>(c, target, &detail)?;
                            Ok(changed)
                        })?;
                        Some((upto, i64::try_from(changed).unwrap_or(i64::MAX)))
                    }
                    None => None,
                }
            };
            let Some((upto, changed)) = stepped else {
                // The walk follows the key: a row whose key moved behind it
                // (an update of the key fires no sync trigger; a `VACUUM`
                // renumbers SQLite rowids), during this walk or while a
                // resumed expand was down, was passed over. One read looks.
                let checking = Instant::now();
                let pending = self.first_pending(conn, kept.0, backfill, (target, batches))?;
                walked.checked = walked.checked.saturating_add(checking.elapsed());
                let Some(first) = pending else {
                    tracing::info!(version = %target, backfill = %backfill.name, rows = walked.rows, walks, "backfill done");
                    return Ok(walked);
                };
                if walks >= WALKS {
                    return Err(Error::BackfillUnsettled {
                        version: target,
                        step: backfill.name.clone(),
                        walks,
                    });
                }
                walks = walks.saturating_add(1);
                tracing::warn!(version = %target, backfill = %backfill.name, walks, from_key = first,
                    "rows the walk passed still need the backfill (a key changed?): walking again from the first of them");
                after = first.checked_sub(1);
                ranged = false;
                continue;
            };
            ranged = match range {
                Some(_) => changed.saturating_mul(2) >= rows,
                None => {
                    after.is_some_and(|from| upto.saturating_sub(from) <= rows.saturating_mul(2))
                }
            };
            walked.batches = walked.batches.saturating_add(1);
            walked.rows = walked
                .rows
                .saturating_add(u64::try_from(changed).unwrap_or(u64::MAX));
            after = Some(upto);
            progress.set(&backfill.name, upto);
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

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn progress_reads_back_what_it_wrote_and_ignores_other_details() {
        let none = Progress::default();
        let one = none.with("orders.qty", 2000);
        assert_eq!(one, "backfilled through: orders.qty=2000");
        let parsed = Progress::parse(Some(&one));
        assert_eq!(parsed.through("orders.qty"), Some(2000));
        let two = parsed.with("orders.total", -5);
        let parsed = Progress::parse(Some(&two));
        assert_eq!(
            (parsed.through("orders.qty"), parsed.through("orders.total")),
            (Some(2000), Some(-5))
        );
        let moved = Progress::parse(Some(&parsed.with("orders.qty", 3000)));
        assert_eq!(moved.through("orders.qty"), Some(3000));
        assert_eq!(moved.through("orders.total"), Some(-5));
        for other in [
            None,
            Some("deadlock detected"),
            Some("backfilled through: x=y"),
        ] {
            assert_eq!(Progress::parse(other).through("x"), None, "{other:?}");
        }
    }
}
