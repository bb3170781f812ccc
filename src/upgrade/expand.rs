//! Expand: the next version's additive SQL in one transaction, then the
//! indexes its change file builds concurrently, then its backfills
//! (generated, then the builder's) in batches; each resumable.

use super::backfill::Progress;
use super::*;
use crate::shared::Backfill;

impl<B: Backend> Upgrader<B> {
    pub(super) fn expand_leased(&self, conn: &mut B::Connection) -> Result<PhaseReport> {
        let started = Instant::now();
        let state = self.read_state(conn)?;
        let target = match self.next_step(&state, Phase::Expand)? {
            plan::Next::Run { files, .. } => files,
            plan::Next::Done(target) => return Ok(PhaseReport::done(target, Phase::Expand)),
            plan::Next::DoneIfSwitchedBack { .. } => {
                return unreachable_state(self.shared.store.state_table())
            }
        };
        let mut report = PhaseReport::new(target, Phase::Expand);
        self.longest_batch.set(Duration::ZERO);
        let checksum = self.shared.phase_checksum(target, Phase::Expand);
        let sql = self
            .shared
            .catalog
            .phase(target, Phase::Expand, B::NAME)
            .map(|s| s.text.to_owned())
            .unwrap_or_default();
        let store = &self.shared.store;

        let running = store.history::<B>(conn)?.into_iter().find(|h| {
            h.version == target && h.phase == Phase::Expand.as_str() && h.outcome == store::RUNNING
        });
        let mut progress = Progress::parse(running.as_ref().and_then(|h| h.detail.as_deref()));
        if running.is_none() {
            self.step("expand: before SQL")?;
            let now = store::now_ms();
            let applied = self.kept(|| {
                self.phase_tx(conn, |c| {
                    self.recheck(c, &state)?;
                    run_sql(c, &sql, target, Phase::Expand)?;
                    self.claim(c)?;
                    self.step("expand: SQL run, before commit")?;
                    self.journal(c, target, Phase::Expand, &checksum, now, store::RUNNING)
                })
            });
            if let Err(e @ (Error::PhaseFailed { .. } | Error::PhaseContended { .. })) = &applied {
                self.journal_failure(conn, target, Phase::Expand, &checksum, now, e);
            }
            report.attempts = applied?;
            tracing::info!(version = %target, "expand SQL applied");
            self.step("expand: SQL committed")?;
        } else {
            tracing::info!(version = %target, "resuming expand: SQL already applied");
        }

        // The change file's indexes, first: a backfill's batches may use
        // them, as they could when the index was built in the transaction.
        // Then its generated backfills, then the builder's.
        if let Some(version) = self.shared.catalog.get(target) {
            for index in version.indexes(B::NAME) {
                if self.build_index(conn, target, index, report.batches)? {
                    report.indexes_built = report.indexes_built.saturating_add(1);
                }
            }
        }
        // One lease keeper for every batch of every backfill.
        self.keeping(|keeper| -> Result<()> {
            if let Some(version) = self.shared.catalog.get(target) {
                for backfill in version.backfills(B::NAME) {
                    let walked = self.walk(
                        conn,
                        (keeper, &state),
                        (target, &mut progress),
                        backfill,
                        report.batches,
                    )?;
                    report.batches = report.batches.saturating_add(walked.batches);
                    report.backfilled_rows = report.backfilled_rows.saturating_add(walked.rows);
                    report.backfill_checks = report.backfill_checks.saturating_add(walked.checked);
                }
            }
            for backfill in self
                .shared
                .backfills
                .iter()
                .filter(|s| s.version == target.get())
            {
                report.batches +=
                    self.run_backfill(conn, (keeper, &state), target, backfill, report.batches)?;
            }
            Ok(())
        })?;

        report.longest_batch = self.longest_batch.get();
        self.step("expand: before finishing")?;
        self.shared.write_transaction(conn, |c| -> Result<()> {
            let now = store::now_ms();
            self.recheck(c, &state)?;
            self.transition(
                c,
                (state.version, StatePhase::Stable),
                (state.version, StatePhase::Expanded),
            )?;
            store.finish_running::<B>(c, target, Phase::Expand, now)?;
            self.step("expand: finished, before commit")
        })?;
        report.duration = started.elapsed();
        tracing::info!(version = %target, batches = report.batches, duration = ?report.duration, "expand done");
        Ok(report)
    }

    /// Runs `backfill`'s batches, each in a transaction of its own under the
    /// kept lease, until one changes nothing; returns the batches committed
    /// (`before`: those of earlier backfills of the same expand, for errors).
    fn run_backfill(
        &self,
        conn: &mut B::Connection,
        kept: (&Keeper, &State),
        target: Version,
        backfill: &Backfill<B>,
        before: u64,
    ) -> Result<u64> {
        let mut done = 0;
        loop {
            self.renew_lease(conn)?;
            self.step("expand: before backfill batch")?;
            let batches = before + done;
            let changed = self.batch(conn, kept, (target, &backfill.name, batches), |c| {
                (backfill.batch)(c)
            })?;
            if changed == 0 {
                return Ok(done);
            }
            done += 1;
        }
    }

    /// Runs one backfill batch in a transaction of its own with the keeper
    /// armed; inside it, after the batch, reads and holds the state row
    /// ([`fence`](Self::fence)): the batch commits only while the lease is
    /// still this upgrader's and nobody moved the upgrade on (a batch that
    /// an upgrader which lost its lease committed late could write a column
    /// of the same name that a later version reuses), and nobody takes the
    /// lease before it commits. It writes nothing to the state row: the
    /// lease is renewed between batches and by the keeper. Returns what
    /// `run` returned. A database error of the batch or its transaction is
    /// [`Error::StepFailed`] naming the version, the step and the batches
    /// committed.
    pub(super) fn batch<T>(
        &self,
        conn: &mut B::Connection,
        (keeper, planned): (&Keeper, &State),
        (target, step, batches): (Version, &str, u64),
        run: impl FnOnce(&mut B::Connection) -> diesel::QueryResult<T>,
    ) -> Result<T> {
        let failed = |source| Error::StepFailed {
            version: target,
            step: step.to_owned(),
            batches,
            source,
        };
        let started = Instant::now();
        let changed = keeper.armed(|| {
            self.shared.write_transaction(conn, |c| -> Result<T> {
                let changed = run(c).map_err(failed)?;
                self.fence(c, planned)?;
                Ok(changed)
            })
        });
        self.longest_batch
            .set(self.longest_batch.get().max(started.elapsed()));
        changed.map_err(|e| match e {
            // The transaction around the batch (its claim, commit).
            Error::Query(source) => failed(source),
            e => e,
        })
    }
}
