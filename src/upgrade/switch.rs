//! Switch and switch back: the version bump under the exclusive schema lock,
//! within `switch_timeout`.

use super::*;
use crate::backend::exclusive_within;

impl<B: Backend> Upgrader<B> {
    /// The switch (or switch back) within `switch_timeout`: every wait
    /// before the commit is bounded by what is left of it; a lock conflict
    /// past it is [`Error::LockTimeout`].
    pub(super) fn switch_leased(
        &self,
        conn: &mut B::Connection,
        phase: Phase,
    ) -> Result<PhaseReport> {
        let started = Instant::now();
        let deadline = started + self.shared.switch_timeout;
        self.switch_deadline.set(Some(deadline));
        // Every write from here on (this process's write turn, SQLite's
        // write lock) waits within what is left of the budget.
        let result = {
            let _bound = crate::shared::WritesBounded::until(deadline);
            self.switch_within(conn, phase)
        };
        self.switch_deadline.set(None);
        // Set until the switch commits: a lock conflict after that is not
        // the switch giving up.
        let versions = self.switch_versions.take();
        match (result, versions) {
            (Err(Error::Query(e)), Some((version, live)))
                if B::is_transient(&e) && started.elapsed() >= self.shared.switch_timeout =>
            {
                Err(Error::LockTimeout {
                    version,
                    live,
                    attempts: 1,
                    waited: started.elapsed(),
                })
            }
            (result, _) => result,
        }
    }

    pub(super) fn switch_within(
        &self,
        conn: &mut B::Connection,
        phase: Phase,
    ) -> Result<PhaseReport> {
        let started = Instant::now();
        let state = self.read_state(conn)?;
        let (owner_version, to) = match self.switch_plan(conn, phase, &state)? {
            Plan::Done(report) => return Ok(report),
            Plan::Run { files, to } => (files, to),
        };
        self.switch_versions.set(Some((to.0, state.version)));
        let others = self.fleet_ready(conn, &state, to.0)?;
        let job = SwitchJob {
            sql: self
                .shared
                .catalog
                .phase(owner_version, phase, B::NAME)
                .map(|s| s.text.to_owned()),
            checksum: self.shared.phase_checksum(owner_version, phase),
            me: self.shared.instance.clone(),
            grace: crate::limits::millis(self.shared.lease),
            state,
            owner_version,
            phase,
            to,
            started,
        };
        let mut report = PhaseReport::new(owner_version, phase);
        // With other live instances, the fleet moves to the locking path first.
        // Rows in the renewal grace get notice too (deploying mode, then a
        // wait): their instances may be alive with their renewals held back.
        let mut deploying = job.state.mode == Mode::Deploying;
        if deploying {
            // Resuming deploying mode a crashed upgrader set: this instance
            // may still be steady (its poller has not adopted it yet).
            self.leave_steady_path(conn, job.state.epoch, owner_version, phase)?;
            let notice_until = Instant::now() + fleet::notice(&self.shared);
            self.await_acknowledged(
                conn,
                job.state.epoch,
                owner_version,
                phase,
                Some(notice_until),
            )?;
        } else if others {
            report.fleet_ack = Some(self.enter_deploying(conn, owner_version, phase)?);
            deploying = true;
        }
        let mut backoff = Backoff::default();
        loop {
            if report.attempts > 0 && self.budget() == Some(Duration::ZERO) {
                return Err(job.timed_out(report.attempts));
            }
            report.attempts += 1;
            match self.switch_attempt(conn, &job, deploying, &mut report)? {
                Attempt::Committed => {
                    self.switch_versions.set(None);
                    break;
                }
                Attempt::NeedsDeploying => {
                    report.fleet_ack = Some(self.enter_deploying(conn, owner_version, phase)?);
                    deploying = true;
                }
                Attempt::Retry => backoff.wait_at_most(self.budget()),
            }
        }
        self.step("switch: committed")?;
        // What follows (the fleet seeing the new version, steady mode back)
        // gets a budget of its own: the one before the commit may be spent.
        let after_commit = Instant::now() + self.shared.switch_timeout;
        self.switch_deadline.set(Some(after_commit));
        let _bound = crate::shared::WritesBounded::anew(after_commit);
        if deploying {
            // Committed: what is left (the fleet seeing the new version,
            // steady mode back) cannot undo it. If it fails, the cleanup
            // after this command (or the next command) returns the fleet to
            // steady mode; deploying mode is safe meanwhile.
            match self.after_deploying_commit(conn) {
                Err(e) if is_injected_crash(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "the switch committed; the fleet returns to steady mode after this command or with the next one")
                }
                Ok(()) => {}
            }
        }
        report.duration = started.elapsed();
        tracing::info!(
            from = %job.state.version, to = %to.0, writer_wait = ?report.writer_wait, held = ?report.held,
            escalated = report.escalated, deploying, "{phase} done"
        );
        Ok(report)
    }

    /// One attempt of a switch: the in-process write lock when alone (this
    /// process's steady calls drained), then the transaction. A lock
    /// conflict with attempts left (and, for SQLite busy, budget left; the
    /// loop checks the budget before each attempt) is [`Attempt::Retry`]; any
    /// other failure is final, and (unless the switch gave up waiting) the
    /// state is adopted again under the write lock and a failed phase
    /// journaled before it returns.
    fn switch_attempt(
        &self,
        conn: &mut B::Connection,
        job: &SwitchJob,
        deploying: bool,
        report: &mut PhaseReport,
    ) -> Result<Attempt> {
        self.renew_lease(conn)?;
        self.step("switch: before write lock")?;
        let policy = self.shared.writer;
        let attempts = policy.attempts.max(1);
        // Alone, this process's steady calls are the only readers: drain
        // them in-process. In deploying mode every call takes the database
        // lock instead. (Calls take the in-process lock before the
        // database's, and so does this: no lock-order inversion.)
        let guard = if deploying {
            None
        } else {
            let guard = self
                .shared
                .lock
                .write(&policy)
                .map_err(|g| Error::LockTimeout {
                    version: job.to.0,
                    live: job.state.version,
                    attempts: g.attempts,
                    waited: g.waited,
                })?;
            report.writer_wait += guard.waited;
            report.escalated |= guard.escalated;
            Some(guard)
        };
        let held_from = Instant::now();
        let now = store::now_ms();
        let result = self.shared.write_transaction(conn, |c| {
            self.switch_transaction(c, job, deploying, now, report.attempts)
        });
        let e = match result {
            Ok((Some(epoch), db_wait, db_escalated)) => {
                // Alone, still under the write lock: calls after this see
                // the new version. (In deploying mode calls read it from
                // the database.) Tagged with the new row's epoch, so a
                // poller tick that read the row before the switch cannot
                // put the old version back.
                // Forced: the row this switch just wrote is the truth,
                // even if the epoch went backwards (a restore) since
                // this process cached one.
                self.shared.cache_state(epoch, job.to.0, None, true);
                report.writer_wait += db_wait;
                report.escalated |= db_escalated;
                report.held = held_from.elapsed().saturating_sub(db_wait);
                return Ok(Attempt::Committed);
            }
            Ok((None, _, _)) => return Ok(Attempt::NeedsDeploying),
            Err(Error::LockTimeout { .. }) if report.attempts < attempts => {
                return Ok(Attempt::Retry)
            }
            Err(Error::LockTimeout { .. }) => return Err(job.timed_out(report.attempts)),
            // SQLite's write lock, busy past the wait the budget allowed.
            Err(Error::Query(e)) if B::is_transient(&e) => {
                if report.attempts >= attempts || self.budget() == Some(Duration::ZERO) {
                    return Err(job.timed_out(report.attempts));
                }
                return Ok(Attempt::Retry);
            }
            Err(e) => match lock_conflict::<B>(e, report.attempts, attempts) {
                Retry::Again => return Ok(Attempt::Retry),
                Retry::Stop(e) => e,
            },
        };
        if !is_injected_crash(&e) {
            self.adopt_after_failure(conn);
        }
        drop(guard);
        if matches!(e, Error::PhaseFailed { .. } | Error::PhaseContended { .. }) {
            let (version, phase) = (job.owner_version, job.phase);
            self.journal_failure(conn, version, phase, &job.checksum, now, &e);
        }
        Err(e)
    }

    /// The switch's transaction: the exclusive schema lock, the state and
    /// the fleet checked again under it, the SQL, the state row moved and
    /// journaled. `(None, …)`: it needs deploying mode first (again).
    fn switch_transaction(
        &self,
        c: &mut B::Connection,
        job: &SwitchJob,
        deploying: bool,
        now: i64,
        attempt: u32,
    ) -> Result<(Option<i64>, Duration, bool)> {
        let (from, to) = (job.state.version, job.to.0);
        let (db_wait, db_escalated) =
            self.enter_exclusive(c, &self.shared.writer, attempt, to, from)?;
        self.shared.ddl_preamble(c)?;
        let now_state = self.recheck(c, &job.state)?;
        if !self.fleet_still_ready(c, job, deploying, now_state.epoch)? {
            return Ok((None, db_wait, db_escalated));
        }
        if let Some(sql) = &job.sql {
            run_sql(c, sql, job.owner_version, job.phase)?;
        }
        self.step("switch: SQL run, before commit")?;
        let epoch = self.transition(c, (job.state.version, job.state.phase), job.to)?;
        self.journal(
            c,
            job.owner_version,
            job.phase,
            &job.checksum,
            now,
            store::APPLIED,
        )?;
        Ok((Some(epoch), db_wait, db_escalated))
    }

    /// The fleet again, under the exclusive lock (instances register and
    /// renew under the shared one): one that joined since we looked may lack
    /// the new version (refused); alone before, we now need deploying mode;
    /// in deploying mode, a live instance that has not acknowledged `epoch`
    /// (it renewed again after its row had expired, or registered again)
    /// must first. `false`: deploying mode (again) first. Checked grouped
    /// ([`Store::live_groups`]), so the lock is held as briefly for 500
    /// instances as for 5; the rows are fetched only to name those at fault.
    fn fleet_still_ready(
        &self,
        c: &mut B::Connection,
        job: &SwitchJob,
        deploying: bool,
        epoch: i64,
    ) -> Result<bool> {
        let store = &self.shared.store;
        let (from, to) = (job.state.version, job.to.0);
        let groups = store.live_groups::<B>(c, &job.me, job.grace)?;
        if !self.fleet_agrees(&groups, from, to, deploying.then_some(epoch)) {
            let live = store.live_instances::<B>(c, job.grace)?;
            let lacking = self.lacking(&live, to);
            if !lacking.is_empty() {
                return Err(Error::SwitchRefused {
                    version: to,
                    instances: lacking,
                });
            }
            self.check_catalogs(&live, from, to)?;
            let unacknowledged: Vec<&str> = live
                .iter()
                .filter(|i| i.id != job.me && i.observed_epoch != epoch)
                .map(|i| i.id.as_str())
                .collect();
            if deploying && !unacknowledged.is_empty() {
                tracing::info!(
                    ?unacknowledged,
                    epoch,
                    "live instances have not acknowledged deploying mode: asking again"
                );
                return Ok(false);
            }
        }
        let noticed = |c: &mut B::Connection| -> Result<bool> {
            let rows = store.noticed_instances::<B>(c, job.grace)?;
            Ok(rows.iter().any(|i| i.id != job.me))
        };
        Ok(deploying || (groups.is_empty() && !noticed(c)?))
    }

    /// What a switch (or switch back) from `state` does: nothing (done
    /// already), or run `files`' SQL and move the state row `to`.
    fn switch_plan(&self, conn: &mut B::Connection, phase: Phase, state: &State) -> Result<Plan> {
        // The version whose files run, and the state after.
        let (owner_version, to) = match self.next_step(state, phase)? {
            plan::Next::Run { files, to } => (files, to),
            plan::Next::Done(version) => return Ok(Plan::Done(PhaseReport::done(version, phase))),
            plan::Next::DoneIfSwitchedBack { version, refusal } => {
                if self.already_switched_back(conn, version)? {
                    return Ok(Plan::Done(PhaseReport::done(version, phase)));
                }
                let at = plan::At {
                    version: state.version,
                    phase: state.phase,
                };
                let latest = self.shared.catalog.latest();
                return Err(refusal.into_error(at, latest, self.shared.store.state_table()));
            }
        };
        let catalog = &self.shared.catalog;
        if phase == Phase::SwitchBack
            && catalog
                .phase(owner_version, Phase::Switch, B::NAME)
                .is_some()
            && catalog
                .phase(owner_version, Phase::SwitchBack, B::NAME)
                .is_none()
        {
            return Err(Error::NoSwitchBack {
                version: owner_version,
            });
        }
        Ok(Plan::Run {
            files: owner_version,
            to,
        })
    }

    /// After a failed switch transaction: if the commit reached the
    /// database before the error (a lost connection), adopt what the
    /// database says, still under the in-process lock. On this command's
    /// connection first (a one-connection pool, SQLite `:memory:`, has no
    /// other to give); if it is the broken part, on a fresh one, briefly.
    fn adopt_after_failure(&self, conn: &mut B::Connection) {
        let store = &self.shared.store;
        let actual = store.read_state::<B>(conn).or_else(|_| {
            let mut fresh = self
                .shared
                .pool
                .get_timeout(Duration::from_secs(2))
                .map_err(|e| crate::shared::pool_error(&e, &self.shared.secrets))?;
            store.read_state::<B>(&mut fresh)
        });
        if let Ok(actual) = actual {
            self.shared
                .cache_state(actual.epoch, actual.version, None, true);
        }
    }

    /// After a switch committed in deploying mode: let the fleet see the
    /// new version (they are on the locking path, so lagging is safe), then
    /// return everyone to the steady path.
    fn after_deploying_commit(&self, conn: &mut B::Connection) -> Result<()> {
        let epoch = self.read_state(conn)?.epoch;
        let behind = fleet::await_fleet(
            &self.shared,
            conn,
            epoch,
            self.fleet_timeout(),
            None,
            &mut |c| self.renew_lease(c),
        )?;
        if !behind.is_empty() {
            tracing::warn!(behind = behind.len(), "some instances have not seen the switch yet; they stay on the locking path until they do");
        }
        self.leave_deploying(conn)
    }

    /// Inside the switch's transaction: the database's exclusive schema lock.
    /// Polls without queueing for `patience` (queued exclusive requests
    /// would stall new readers), then queues for at most the escalation of
    /// attempt `attempt` ([`queue_window`]). Returns the wait and whether
    /// it escalated.
    pub(super) fn enter_exclusive(
        &self,
        c: &mut B::Connection,
        policy: &WriterPolicy,
        attempt: u32,
        version: Version,
        live: Version,
    ) -> Result<(Duration, bool)> {
        let start = Instant::now();
        let window = queue_window(policy, attempt);
        match exclusive_within::<_, B>(c, self.shared.lock_key, policy.patience, window)? {
            Some(escalated) => Ok((start.elapsed(), escalated)),
            None => Err(Error::LockTimeout {
                version,
                live,
                attempts: 1,
                waited: start.elapsed(),
            }),
        }
    }

    pub(super) fn already_switched_back(
        &self,
        conn: &mut B::Connection,
        version: Version,
    ) -> Result<bool> {
        let history = self.shared.store.history::<B>(conn)?;
        let last = history.iter().rev().find(|h| {
            h.version == version
                && h.outcome == store::APPLIED
                && (h.phase == "switch" || h.phase == "switch_back")
        });
        Ok(last.is_some_and(|h| h.phase == "switch_back"))
    }
}

/// What a switch (or switch back) does from the state it found.
enum Plan {
    /// Nothing: it was done already.
    Done(PhaseReport),
    /// Run `files`' SQL and move the state row to `to`.
    Run {
        files: Version,
        to: (Version, StatePhase),
    },
}

/// What one switch (or switch back) runs, fixed before its attempts.
struct SwitchJob {
    /// The state row the switch was planned on.
    state: State,
    /// The version whose files the phase runs (the new one for a switch,
    /// the one switched back from for a switch back).
    owner_version: Version,
    phase: Phase,
    /// Where the state row goes.
    to: (Version, StatePhase),
    sql: Option<String>,
    checksum: String,
    /// This instance's id.
    me: String,
    /// The fleet lease in milliseconds.
    grace: i64,
    started: Instant,
}

impl SwitchJob {
    /// The switch gave up: its budget is spent or its attempts are.
    fn timed_out(&self, attempts: u32) -> Error {
        Error::LockTimeout {
            version: self.to.0,
            live: self.state.version,
            attempts,
            waited: self.started.elapsed(),
        }
    }
}

/// How an attempt of the switch ended, when it did not fail.
enum Attempt {
    Committed,
    /// Alone when it started, it found other instances; or, in deploying
    /// mode, a live instance that has not acknowledged it: deploying mode
    /// (again) first.
    NeedsDeploying,
    /// A lock conflict, nothing changed: back off and try again.
    Retry,
}

/// How long attempt `attempt` (1-based) of a switch queues for the
/// database's exclusive lock: the policy's escalation, doubled after each
/// failed attempt up to [`MAX_ESCALATION_FACTOR`] times it. Under load the
/// calls in flight (each holding the shared lock until it commits) can
/// outlast the first window every time, as through a busy pooler; a call
/// then waits behind the switch at most that much longer.
pub(crate) fn queue_window(policy: &WriterPolicy, attempt: u32) -> Duration {
    let doublings = attempt
        .saturating_sub(1)
        .min(MAX_ESCALATION_FACTOR.trailing_zeros());
    policy.escalation.saturating_mul(1 << doublings)
}

/// The most a retried switch multiplies the policy's escalation by.
pub(crate) const MAX_ESCALATION_FACTOR: u32 = 8;

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn the_queue_window_doubles_per_attempt_up_to_eight_times() {
        let policy = WriterPolicy::default();
        let windows: Vec<u128> = (1..=6)
            .map(|a| queue_window(&policy, a).as_millis())
            .collect();
        assert_eq!(windows, [5, 10, 20, 40, 40, 40]);
        let huge = WriterPolicy {
            escalation: Duration::MAX,
            ..policy
        };
        assert_eq!(
            queue_window(&huge, 4),
            Duration::MAX,
            "saturates, never overflows"
        );
    }
}
