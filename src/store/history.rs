//! The history table: one row per phase applied, running or failed.

use super::*;

impl Store {
    /// Appends a history row.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record<B: Backend>(
        &self,
        conn: &mut B::Connection,
        version: Version,
        phase: &str,
        checksum: &str,
        started: i64,
        finished: Option<i64>,
        outcome: &str,
        by: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        B::execute(
            conn,
            &format!(
                "INSERT INTO {} (version, phase, checksum, started_at, finished_at, outcome, by_instance, detail) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                self.history
            ),
            &[
                Bind::I64(version.as_i64()),
                Bind::Text(phase),
                Bind::Text(checksum),
                Bind::I64(started),
                Bind::OptI64(finished),
                Bind::Text(outcome),
                Bind::Text(by),
                Bind::OptText(detail),
            ],
        )?;
        Ok(())
    }

    /// Marks the `running` row of (version, phase) applied.
    pub(crate) fn finish_running<B: Backend>(
        &self,
        conn: &mut B::Connection,
        version: Version,
        phase: Phase,
        now: i64,
    ) -> Result<()> {
        B::execute(
            conn,
            &format!(
                "UPDATE {} SET outcome = ?, finished_at = ?, detail = NULL WHERE version = ? AND phase = ? AND outcome = ?",
                self.history
            ),
            &[
                Bind::Text(APPLIED),
                Bind::I64(now),
                Bind::I64(version.as_i64()),
                Bind::Text(phase.as_str()),
                Bind::Text(RUNNING),
            ],
        )?;
        Ok(())
    }

    /// Sets the detail of `version`'s running expand row: how far its
    /// generated backfills got (see `upgrade::backfill::Progress`). Inside a
    /// backfill batch's transaction, so the two commit together.
    pub(crate) fn set_expand_progress<B: Backend>(
        &self,
        conn: &mut B::Connection,
        version: Version,
        detail: &str,
    ) -> diesel::QueryResult<usize> {
        B::execute(
            conn,
            &format!(
                "UPDATE {} SET detail = ? WHERE version = ? AND phase = ? AND outcome = ?",
                self.history
            ),
            &[
                Bind::Text(detail),
                Bind::I64(version.as_i64()),
                Bind::Text(Phase::Expand.as_str()),
                Bind::Text(RUNNING),
            ],
        )
    }

    /// Every history row, oldest first.
    pub(crate) fn history<B: Backend>(
        &self,
        conn: &mut B::Connection,
    ) -> Result<Vec<HistoryEntry>> {
        let rows: Vec<HistoryRow> = B::load(
            conn,
            &format!(
                "SELECT version, phase, checksum, started_at, finished_at, outcome, by_instance, detail \
                 FROM {} ORDER BY id",
                self.history
            ),
            &[],
        )?;
        rows.into_iter()
            .map(|r| {
                let version = Version::from_i64(r.version).ok_or_else(|| {
                    self.corrupt(
                        &self.history,
                        format!("version {} is not a positive version number", r.version),
                    )
                })?;
                Ok(HistoryEntry {
                    version,
                    phase: HistoryPhase::parse(r.phase),
                    checksum: r.checksum,
                    started_at_ms: r.started_at,
                    finished_at_ms: r.finished_at,
                    outcome: Outcome::parse(r.outcome),
                    by: r.by_instance,
                    detail: r.detail,
                })
            })
            .collect()
    }
}
