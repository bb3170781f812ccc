//! Phase transactions (short lock timeout, retried on lock conflicts) and
//! the history rows they write.

use super::*;

impl<B: Backend> Upgrader<B> {
    /// A phase transaction: under a short `lock_timeout` where the backend
    /// has one, and retried with backoff and jitter while it hits lock
    /// conflicts. A phase thus gives way to application calls instead of
    /// making them queue behind it, and gives up its locks long before
    /// PostgreSQL's deadlock detector could pick a call as the victim.
    /// Returns the attempts it took.
    pub(super) fn phase_tx(
        &self,
        conn: &mut B::Connection,
        body: impl Fn(&mut B::Connection) -> Result<()>,
    ) -> Result<u32> {
        let attempts = self.shared.writer.attempts.max(1);
        let mut backoff = Backoff::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.shared.write_transaction(conn, |c| {
                self.shared.ddl_preamble(c)?;
                body(c)
            });
            match result {
                Ok(()) => return Ok(attempt),
                Err(e) => match lock_conflict::<B>(e, attempt, attempts) {
                    Retry::Again => backoff.wait(),
                    Retry::Stop(e) => return Err(e),
                },
            }
        }
    }

    /// Appends the history row of a phase that is `applied` (finished now)
    /// or `running`, inside the phase's transaction.
    pub(super) fn journal(
        &self,
        c: &mut B::Connection,
        version: Version,
        phase: Phase,
        checksum: &str,
        started: i64,
        outcome: &str,
    ) -> Result<()> {
        let finished = (outcome != store::RUNNING).then(store::now_ms);
        self.shared.store.record::<B>(
            c,
            version,
            phase.as_str(),
            checksum,
            started,
            finished,
            outcome,
            &self.owner,
            None,
        )
    }

    /// Journals a failed phase in its own transaction (the phase's own rolled back).
    pub(super) fn journal_failure(
        &self,
        conn: &mut B::Connection,
        version: Version,
        phase: Phase,
        checksum: &str,
        started: i64,
        error: &Error,
    ) {
        let detail = error.to_string();
        let result = self.shared.write_transaction(conn, |c| {
            self.shared.store.record::<B>(
                c,
                version,
                phase.as_str(),
                checksum,
                started,
                Some(store::now_ms()),
                store::FAILED,
                &self.owner,
                Some(&detail),
            )
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not journal the failed phase");
        }
    }
}

/// Runs a phase's SQL; a database error becomes [`Error::PhaseFailed`].
pub(super) fn run_sql<C: SimpleConnection>(
    conn: &mut C,
    sql: &str,
    version: Version,
    phase: Phase,
) -> Result<()> {
    // (A `--` comment ends at either line break.)
    let statements = sql
        .split(['\n', '\r'])
        .map(str::trim)
        .any(|line| !line.is_empty() && !line.starts_with("--"));
    if !statements {
        // A phase without SQL (a rename-only change has no expand), or only
        // comments (an index a change file builds after the transaction).
        return Ok(());
    }
    conn.batch_execute(sql)
        .map_err(|source| Error::PhaseFailed {
            version,
            phase,
            source,
        })
}
