//! Contract: removes what only the previous version used, once every live
//! instance has acknowledged the switch.

use super::*;

impl<B: Backend> Upgrader<B> {
    pub(super) fn contract_leased(&self, conn: &mut B::Connection) -> Result<PhaseReport> {
        let started = Instant::now();
        let state = self.read_state(conn)?;
        match self.next_step(&state, Phase::Contract)? {
            plan::Next::Run { .. } => {}
            plan::Next::Done(version) => return Ok(PhaseReport::done(version, Phase::Contract)),
            plan::Next::DoneIfSwitchedBack { .. } => {
                return unreachable_state(self.shared.store.state_table())
            }
        }
        let version = state.version;
        let checksum = self.shared.phase_checksum(version, Phase::Contract);
        let sql = self
            .shared
            .catalog
            .phase(version, Phase::Contract, B::NAME)
            .map(|s| s.text.to_owned());
        // Invariant 3: no live instance may still use the previous version:
        // each must have acknowledged the switched state.
        self.await_acknowledged(conn, state.epoch, version, Phase::Contract, None)?;
        self.step("contract: before SQL")?;
        let now = store::now_ms();
        let result = self.kept(|| {
            self.phase_tx(conn, |c| {
                self.recheck(c, &state)?;
                if let Some(sql) = &sql {
                    run_sql(c, sql, version, Phase::Contract)?;
                }
                self.claim(c)?;
                self.step("contract: SQL run, before commit")?;
                self.transition(
                    c,
                    (version, StatePhase::Switched),
                    (version, StatePhase::Stable),
                )?;
                self.journal(c, version, Phase::Contract, &checksum, now, store::APPLIED)
            })
        });
        if let Err(e @ (Error::PhaseFailed { .. } | Error::PhaseContended { .. })) = &result {
            self.journal_failure(conn, version, Phase::Contract, &checksum, now, e);
        }
        let attempts = result?;
        self.step("contract: committed")?;
        let mut report = PhaseReport::new(version, Phase::Contract);
        report.attempts = attempts;
        report.duration = started.elapsed();
        tracing::info!(%version, duration = ?report.duration, "contract done");
        Ok(report)
    }
}
