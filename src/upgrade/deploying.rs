//! Deploying mode: the switch's coordination with the fleet (moving every
//! instance to the locking path, waiting for acknowledgements, giving notice),
//! and the fleet checks before and under the exclusive lock (every live
//! instance serves the new version and agrees on its SQL).

use super::*;

impl<B: Backend> Upgrader<B> {
    /// How long the upgrader waits for the fleet to acknowledge a change: a
    /// live instance acknowledges within a poll interval or two once its
    /// steady calls have drained (which may take the writer policy's whole
    /// budget under load), and a dead one drops out a lease after its lease
    /// expired (see `Store::live_instances`).
    pub(super) fn fleet_timeout(&self) -> Duration {
        let w = &self.shared.writer;
        let drain = w
            .patience
            .saturating_add(w.escalation)
            .saturating_mul(w.attempts.max(1));
        (self.shared.lease.saturating_mul(2))
            .max(drain)
            .saturating_add(self.shared.poll_interval.saturating_mul(4))
            .min(crate::limits::FOREVER)
            .min(self.budget().unwrap_or(crate::limits::FOREVER))
    }

    /// Sets deploying mode, moves this instance to the locking path, and waits
    /// for every other live instance to acknowledge (having drained its steady
    /// calls). If they do not, returns to steady mode and fails.
    pub(super) fn enter_deploying(
        &self,
        conn: &mut B::Connection,
        version: Version,
        phase: Phase,
    ) -> Result<Duration> {
        let epoch = self.shared.write_transaction(conn, |c| {
            self.shared
                .store
                .set_mode::<B>(c, Mode::Deploying, &self.owner)
        })?;
        tracing::info!(
            epoch,
            "deploying mode: waiting for the fleet to move to the locking path"
        );
        let asked = Instant::now();
        self.leave_steady_path(conn, epoch, version, phase)?;
        self.step("switch: deploying, before fleet acknowledgement")?;
        // Notice runs from the commit of deploying mode (it is over by now).
        let notice_until = asked + fleet::notice(&self.shared);
        self.await_acknowledged(conn, epoch, version, phase, Some(notice_until))?;
        Ok(asked.elapsed())
    }

    /// In deploying mode: moves this instance to the locking path, its
    /// steady calls in flight drained (not just flagged). The fleet's
    /// acknowledgements cover the *other* instances only, so an upgrader
    /// must do this itself before it switches — also when it resumes
    /// deploying mode that a crashed upgrader set, which its own poller may
    /// not have adopted yet. If the calls do not drain in time, returns the
    /// fleet to steady mode and fails.
    pub(super) fn leave_steady_path(
        &self,
        conn: &mut B::Connection,
        epoch: i64,
        version: Version,
        phase: Phase,
    ) -> Result<()> {
        let asked = Instant::now();
        let deadline = asked + self.fleet_timeout();
        loop {
            // The wait can outlast a short upgrade lease: keep it.
            self.renew_lease(conn)?;
            // A successful refresh adopted deploying mode (draining) or a
            // later state; either way the path it left is the one to check.
            match fleet::poll_via(&self.shared, fleet::Via::Held(conn)) {
                Ok(_) if fleet::on_drained_locking_path(&self.shared) => return Ok(()),
                Ok(_) | Err(Error::LockTimeout { .. }) if Instant::now() < deadline => {}
                // Past the deadline a drain that timed out is this
                // instance not acknowledging, not a lock of the old version.
                Ok(_) | Err(Error::LockTimeout { .. }) => {
                    let e = Error::FleetNotAcknowledged {
                        phase,
                        version,
                        epoch,
                        waited: asked.elapsed(),
                        instances: vec![format!(
                            "{} (this instance: its calls did not drain)",
                            self.shared.instance.as_str()
                        )],
                    };
                    return Err(self.giving_up(conn, e));
                }
                Err(e) => return Err(self.giving_up(conn, e)),
            }
        }
    }

    /// Waits for every live instance to acknowledge `epoch` (and, until
    /// `notice_until`, those in the renewal grace); if they do not, returns
    /// the fleet to steady mode and fails.
    pub(super) fn await_acknowledged(
        &self,
        conn: &mut B::Connection,
        epoch: i64,
        version: Version,
        phase: Phase,
        notice_until: Option<Instant>,
    ) -> Result<()> {
        let waited = Instant::now();
        let behind = fleet::await_fleet(
            &self.shared,
            conn,
            epoch,
            self.fleet_timeout(),
            notice_until,
            &mut |c| self.renew_lease(c),
        )?;
        if behind.is_empty() {
            return Ok(());
        }
        let e = Error::FleetNotAcknowledged {
            phase,
            version,
            epoch,
            waited: waited.elapsed(),
            instances: behind.iter().map(Instance::describe).collect(),
        };
        Err(self.giving_up(conn, e))
    }

    /// Returns the fleet to steady mode after the switch gave up with `e`,
    /// and `e`: if steady mode cannot be set now (the budget is spent, a
    /// writer holds SQLite's lock), the cleanup after the command tries
    /// again, and the error that says why the switch gave up is kept.
    fn giving_up(&self, conn: &mut B::Connection, e: Error) -> Error {
        if let Err(left) = self.leave_deploying(conn) {
            tracing::debug!(error = %left, "steady mode not set yet; the cleanup after the command sets it");
        }
        e
    }

    /// Returns to steady mode and adopts it locally.
    pub(super) fn leave_deploying(&self, conn: &mut B::Connection) -> Result<()> {
        self.shared.write_transaction(conn, |c| {
            self.shared
                .store
                .set_mode::<B>(c, Mode::Steady, &self.owner)
        })?;
        // If calls are slow to drain the poller adopts steady mode later; the
        // locking path is safe meanwhile.
        if let Err(e) = fleet::poll_via(&self.shared, fleet::Via::Held(conn)) {
            tracing::debug!(error = %e, "steady mode set; this instance adopts it on its next poll");
        }
        Ok(())
    }

    /// Invariant 3: every live instance must be able to serve the version
    /// switched to (this one included), and agree on its SQL (invariant
    /// 10). Returns whether other instances are live or in the renewal
    /// grace. The fleet is checked grouped ([`Store::live_groups`]: one row
    /// per release, whatever the fleet's size); only if a group fails are
    /// the rows fetched, to name the instances.
    pub(super) fn fleet_ready(
        &self,
        conn: &mut B::Connection,
        state: &State,
        to: Version,
    ) -> Result<bool> {
        let me = self.shared.instance.as_str();
        let grace = crate::limits::millis(self.shared.lease);
        let store = &self.shared.store;
        let served = self.shared.served();
        let self_lacks = served.contains(&state.version) && !served.contains(&to);
        let (groups, noticed) = self.shared.write_transaction(conn, |c| -> Result<_> {
            Ok((
                store.live_groups::<B>(c, me, grace)?,
                store.noticed_instances::<B>(c, grace)?,
            ))
        })?;
        let noticed_others = noticed.iter().any(|i| i.id != me);
        if !self_lacks && self.fleet_agrees(&groups, state.version, to, None) {
            return Ok(!groups.is_empty() || noticed_others);
        }
        // Something to refuse: the rows, to say which instances.
        let instances = self
            .shared
            .write_transaction(conn, |c| store.live_instances::<B>(c, grace))?;
        let mut lacking = self.lacking(&instances, to);
        if self_lacks {
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
        Ok(instances.iter().any(|i| i.id != me) || noticed_others)
    }

    /// Whether every group of live instances serves `to`, agrees with this
    /// binary on the SQL of `from` and `to` (groups whose release did not
    /// record its catalog are not compared) and, with `epoch`, has
    /// acknowledged it: the checks of [`lacking`](Self::lacking),
    /// [`check_catalogs`](Self::check_catalogs) and the switch's
    /// acknowledgement check, on [`Store::live_groups`]' rows.
    pub(super) fn fleet_agrees(
        &self,
        groups: &[LiveGroup],
        from: Version,
        to: Version,
        epoch: Option<i64>,
    ) -> bool {
        let catalog = &self.shared.catalog;
        let ours = [from, to].map(|v| (v, catalog.digest(v, B::NAME)));
        groups.iter().all(|g| {
            g.serves(to)
                && ours
                    .iter()
                    .all(|(v, ours)| g.digest(*v).is_none_or(|theirs| theirs == ours.as_str()))
                && epoch.is_none_or(|e| g.observed_epoch == e)
        })
    }

    /// The other instances among `instances` whose binaries lack `version`.
    pub(super) fn lacking(&self, instances: &[Instance], version: Version) -> Vec<String> {
        let me = self.shared.instance.as_str();
        instances
            .iter()
            .filter(|i| i.id != me && !i.serves(version))
            .map(Instance::describe)
            .collect()
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
        // Ours once, not once per instance (a hash each).
        let ours = [from, to].map(|v| (v, catalog.digest(v, B::NAME)));
        let disagreeing: Vec<String> = instances
            .iter()
            .filter(|i| i.id != me)
            .filter(|i| {
                ours.iter()
                    .any(|(v, ours)| i.digest(*v).is_some_and(|theirs| theirs != ours.as_str()))
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
}
