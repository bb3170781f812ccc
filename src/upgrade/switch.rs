//! Switch and switch back: the version bump under the exclusive schema lock,
//! within `switch_timeout`.

use super::*;

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
        self.switch_deadline
            .set(Some(started + self.shared.switch_timeout));
        let result = self.switch_within(conn, phase);
        self.switch_deadline.set(None);
        if let Err(e) = B::set_busy_wait(conn, None) {
            tracing::debug!(error = %e, "could not restore the connection's busy timeout");
        }
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
        let catalog = &self.shared.catalog;
        let me = self.shared.instance.as_str().to_owned();
        let grace = crate::limits::millis(self.shared.lease);
        let (instances, noticed) = self.fleet_ready(conn, &state, to.0)?;

        self.switch_versions.set(Some((to.0, state.version)));
        let checksum = self.shared.phase_checksum(owner_version, phase);
        let sql = catalog
            .phase(owner_version, phase, B::NAME)
            .map(|s| s.text.to_owned());
        let store = &self.shared.store;
        let policy = self.shared.writer;
        let mut report = PhaseReport::new(owner_version, phase);
        // With other live instances, the fleet moves to the locking path first.
        // Rows in the renewal grace get notice too (deploying mode, then a
        // wait): their instances may be alive with their renewals held back.
        let mut deploying = state.mode == Mode::Deploying;
        if deploying {
            // Resuming deploying mode a crashed upgrader set: this instance
            // may still be steady (its poller has not adopted it yet).
            self.leave_steady_path(conn, state.epoch, owner_version, phase)?;
            let notice_until = Instant::now() + fleet::notice(&self.shared);
            self.await_acknowledged(conn, state.epoch, owner_version, phase, Some(notice_until))?;
        } else if instances.iter().chain(noticed.iter()).any(|i| i.id != me) {
            report.fleet_ack = Some(self.enter_deploying(conn, owner_version, phase)?);
            deploying = true;
        }
        let mut backoff = Backoff::default();
        loop {
            if report.attempts > 0 && self.budget() == Some(Duration::ZERO) {
                return Err(Error::LockTimeout {
                    version: to.0,
                    live: state.version,
                    attempts: report.attempts,
                    waited: started.elapsed(),
                });
            }
            report.attempts += 1;
            self.renew_lease(conn)?;
            self.step("switch: before write lock")?;
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
                        version: to.0,
                        live: state.version,
                        attempts: g.attempts,
                        waited: g.waited,
                    })?;
                report.writer_wait += guard.waited;
                report.escalated |= guard.escalated;
                Some(guard)
            };
            let held_from = Instant::now();
            let now = store::now_ms();
            let result =
                self.shared
                    .write_transaction(conn, |c| -> Result<(Option<i64>, Duration, bool)> {
                        let (db_wait, db_escalated) =
                            self.enter_exclusive(c, &policy, to.0, state.version)?;
                        self.shared.ddl_preamble(c)?;
                        self.recheck(c, &state)?;
                        // The fleet again, under the exclusive lock (instances
                        // register under the shared one): one that joined since
                        // we looked may lack the new version, or, alone before,
                        // we now need deploying mode.
                        let live = store.live_instances::<B>(c, grace)?;
                        let lacking = self.lacking(&live, to.0);
                        if !lacking.is_empty() {
                            return Err(Error::SwitchRefused {
                                version: to.0,
                                instances: lacking,
                            });
                        }
                        self.check_catalogs(&live, state.version, to.0)?;
                        if !deploying
                            && (live.iter().any(|i| i.id != me)
                                || store
                                    .noticed_instances::<B>(c, grace)?
                                    .iter()
                                    .any(|i| i.id != me))
                        {
                            return Ok((None, db_wait, db_escalated));
                        }
                        if let Some(sql) = &sql {
                            run_sql(c, sql, owner_version, phase)?;
                        }
                        self.step("switch: SQL run, before commit")?;
                        let epoch = self.transition(c, (state.version, state.phase), to)?;
                        self.journal(c, owner_version, phase, &checksum, now, store::APPLIED)?;
                        Ok((Some(epoch), db_wait, db_escalated))
                    });
            match result {
                Ok((Some(epoch), db_wait, db_escalated)) => {
                    // Alone, still under the write lock: calls after this see
                    // the new version. (In deploying mode calls read it from
                    // the database.) Tagged with the new row's epoch, so a
                    // poller tick that read the row before the switch cannot
                    // put the old version back.
                    // Forced: the row this switch just wrote is the truth,
                    // even if the epoch went backwards (a restore) since
                    // this process cached one.
                    self.shared.cache_state(epoch, to.0, None, true);
                    report.writer_wait += db_wait;
                    report.escalated |= db_escalated;
                    report.held = held_from.elapsed().saturating_sub(db_wait);
                    drop(guard);
                    break;
                }
                Ok((None, _, _)) => {
                    drop(guard);
                    report.fleet_ack = Some(self.enter_deploying(conn, owner_version, phase)?);
                    deploying = true;
                }
                Err(Error::LockTimeout { .. }) if report.attempts < policy.attempts.max(1) => {
                    drop(guard);
                    backoff.wait_at_most(self.budget());
                }
                Err(Error::LockTimeout { version, live, .. }) => {
                    drop(guard);
                    return Err(Error::LockTimeout {
                        version,
                        live,
                        attempts: report.attempts,
                        waited: started.elapsed(),
                    });
                }
                // SQLite's write lock, busy past the wait the budget allowed.
                Err(Error::Query(e)) if B::is_transient(&e) => {
                    drop(guard);
                    if report.attempts >= policy.attempts.max(1)
                        || self.budget() == Some(Duration::ZERO)
                    {
                        return Err(Error::LockTimeout {
                            version: to.0,
                            live: state.version,
                            attempts: report.attempts,
                            waited: started.elapsed(),
                        });
                    }
                    backoff.wait_at_most(self.budget());
                }
                Err(e) => match lock_conflict::<B>(e, report.attempts, policy.attempts.max(1)) {
                    Retry::Again => {
                        drop(guard);
                        backoff.wait_at_most(self.budget());
                    }
                    Retry::Stop(e) => {
                        if !e.is_injected_crash() {
                            self.adopt_after_failure(conn);
                        }
                        drop(guard);
                        if matches!(e, Error::PhaseFailed { .. } | Error::PhaseContended { .. }) {
                            self.journal_failure(conn, owner_version, phase, &checksum, now, &e);
                        }
                        return Err(e);
                    }
                },
            }
        }
        self.step("switch: committed")?;
        if deploying {
            self.after_deploying_commit(conn)?;
        }
        report.duration = started.elapsed();
        tracing::info!(
            from = %state.version, to = %to.0, writer_wait = ?report.writer_wait, held = ?report.held,
            escalated = report.escalated, deploying, "{phase} done"
        );
        Ok(report)
    }

    /// What a switch (or switch back) from `state` does: nothing (done
    /// already), or run `files`' SQL and move the state row `to`.
    fn switch_plan(&self, conn: &mut B::Connection, phase: Phase, state: &State) -> Result<Plan> {
        // (from, to): the state before and after, and the version whose files run.
        let (owner_version, to) = match (phase, state.phase) {
            (Phase::Switch, StatePhase::Switched) => {
                return Ok(Plan::Done(PhaseReport::done(state.version, phase)))
            }
            (Phase::Switch, StatePhase::Expanded) => {
                let Some(target) = state.version.next() else {
                    return unreachable_state();
                };
                (target, (target, StatePhase::Switched))
            }
            (Phase::Switch, _) => {
                return Err(Self::out_of_order(
                    phase,
                    state.version.next().unwrap_or(state.version),
                    state,
                    "run expand first",
                ))
            }
            (_, StatePhase::Switched) => {
                let Some(previous) = state.version.previous() else {
                    return unreachable_state();
                };
                (state.version, (previous, StatePhase::Expanded))
            }
            (_, StatePhase::Expanded) => {
                let version = state.version.next().unwrap_or(state.version);
                if self.already_switched_back(conn, version)? {
                    return Ok(Plan::Done(PhaseReport::done(version, phase)));
                }
                return Err(Self::out_of_order(
                    phase,
                    version,
                    state,
                    "switch back is possible only between switch and contract",
                ));
            }
            (_, _) => {
                return Err(Self::out_of_order(
                    phase,
                    state.version,
                    state,
                    "switch back is possible only between switch and contract",
                ))
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

    /// Invariant 3: every live instance must be able to serve the version
    /// switched to (this one included), and agree on its SQL (invariant
    /// 10). Returns the live instances and those in the renewal grace.
    fn fleet_ready(
        &self,
        conn: &mut B::Connection,
        state: &State,
        to: Version,
    ) -> Result<(Vec<Instance>, Vec<Instance>)> {
        let me = self.shared.instance.as_str();
        let grace = crate::limits::millis(self.shared.lease);
        let (instances, noticed) = self.shared.write_transaction(conn, |c| -> Result<_> {
            let store = &self.shared.store;
            Ok((
                store.live_instances::<B>(c, grace)?,
                store.noticed_instances::<B>(c, grace)?,
            ))
        })?;
        let served = self.shared.served();
        let mut lacking = self.lacking(&instances, to);
        if served.contains(&state.version) && !served.contains(&to) {
            lacking.insert(
                0,
                format!(
                    "{me} (this instance, serves {}..={})",
                    served.start(),
                    served.end()
                ),
            );
        }
        if !lacking.is_empty() {
            return Err(Error::SwitchRefused {
                version: to,
                instances: lacking,
            });
        }
        self.check_catalogs(&instances, state.version, to)?;
        Ok((instances, noticed))
    }

    /// The other instances among `instances` whose binaries lack `version`.
    fn lacking(&self, instances: &[Instance], version: Version) -> Vec<String> {
        let me = self.shared.instance.as_str();
        instances
            .iter()
            .filter(|i| i.id != me && !i.serves(version))
            .map(Instance::describe)
            .collect()
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

    /// Invariant 10: no switch while a live instance's SQL for the version
    /// switched from or to differs from this binary's (which matches what
    /// the database applied: checked as every command starts). Rows from
    /// releases that did not record their catalog are not compared.
    pub(super) fn check_catalogs(
        &self,
        instances: &[Instance],
        from: Version,
        to: Version,
    ) -> Result<()> {
        let me = self.shared.instance.as_str();
        let catalog = &self.shared.catalog;
        let disagreeing: Vec<String> = instances
            .iter()
            .filter(|i| i.id != me)
            .filter(|i| {
                [from, to].into_iter().any(|v| {
                    i.digest(v)
                        .is_some_and(|theirs| theirs != catalog.digest(v, B::NAME))
                })
            })
            .map(Instance::describe)
            .collect();
        if disagreeing.is_empty() {
            return Ok(());
        }
        Err(Error::CatalogDisagrees {
            from,
            to,
            instances: disagreeing,
        })
    }

    /// Inside the switch's transaction: the database's exclusive schema lock.
    /// Polls without queueing for `patience` (queued exclusive requests
    /// would stall new readers), then queues for at most `escalation`.
    /// Returns the wait and whether it escalated.
    pub(super) fn enter_exclusive(
        &self,
        c: &mut B::Connection,
        policy: &WriterPolicy,
        version: Version,
        live: Version,
    ) -> Result<(Duration, bool)> {
        let key = self.shared.lock_key;
        let start = Instant::now();
        let polite_until = start + policy.patience;
        let mut backoff = Duration::from_micros(50);
        loop {
            if B::try_enter_exclusive(c, key)? {
                return Ok((start.elapsed(), false));
            }
            let now = Instant::now();
            if now >= polite_until {
                break;
            }
            thread::sleep(backoff.min(polite_until - now));
            backoff = (backoff * 2).min(Duration::from_millis(2));
        }
        match B::enter_exclusive_within(c, key, policy.escalation) {
            Ok(()) => Ok((start.elapsed(), true)),
            Err(e) if B::is_transient(&e) => Err(Error::LockTimeout {
                version,
                live,
                attempts: 1,
                waited: start.elapsed(),
            }),
            Err(e) => Err(Error::Query(e)),
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
