//! The fleet table: one row per instance, with its lease and acknowledgement.

use super::*;

impl Store {
    /// Inserts or replaces this instance's fleet row, its lease running
    /// `lease_ms` from the database's clock (`me.lease_until_ms` is ignored).
    pub(crate) fn register<B: Backend>(
        &self,
        conn: &mut B::Connection,
        me: &Instance,
        lease_ms: i64,
    ) -> Result<()> {
        B::execute(
            conn,
            &format!("DELETE FROM {} WHERE id = ?", self.fleet),
            &[Bind::Text(&me.id)],
        )?;
        B::execute(
            conn,
            &format!(
                "INSERT INTO {} (id, host, pid, label, min_version, max_version, observed_epoch, lease_until, started_at, catalog) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, {now} + ?, {now}, ?)",
                self.fleet,
                now = B::now_ms_sql()
            ),
            &[
                Bind::Text(&me.id),
                Bind::Text(&me.host),
                Bind::I64(me.pid),
                Bind::Text(&me.label),
                Bind::I64(me.first.as_i64()),
                Bind::I64(me.last.as_i64()),
                Bind::I64(me.observed_epoch),
                Bind::I64(lease_ms),
                Bind::OptText(me.catalog.as_deref()),
            ],
        )?;
        Ok(())
    }

    /// A renewal that also reads the state row (inside the caller's
    /// transaction, after the shared schema lock): the row's state and
    /// whether this instance's row was still there to renew. The epoch
    /// `adopted` is restated as observed only while the state row is still
    /// at it (as [`renew`](Self::renew)'s `observed`). Where the dialect
    /// can, one statement (PostgreSQL: `UPDATE … FROM` the state row
    /// `RETURNING` it, one round trip fewer per renewal); otherwise, and
    /// when the row is gone, the read and then the renewal.
    pub(crate) fn renew_reading_state<B: Backend>(
        &self,
        conn: &mut B::Connection,
        id: &str,
        lease_ms: i64,
        adopted: i64,
    ) -> Result<(State, bool)> {
        if B::RENEW_RETURNS_STATE {
            let rows: Vec<StateRow> = B::load(
                conn,
                &format!(
                    "UPDATE {fleet} SET lease_until = {now} + ?, \
                     observed_epoch = CASE WHEN s.epoch = ? THEN s.epoch ELSE {fleet}.observed_epoch END \
                     FROM {state} s WHERE s.id = 1 AND {fleet}.id = ? \
                     RETURNING s.version, s.phase, s.mode, s.epoch, s.owner, s.owner_until - {now} AS owner_left",
                    fleet = self.fleet,
                    state = self.state,
                    now = B::now_ms_sql()
                ),
                &[Bind::I64(lease_ms), Bind::I64(adopted), Bind::Text(id)],
            )?;
            if let Some(row) = rows.into_iter().next() {
                return Ok((self.parse_state(row)?, true));
            }
            // Our row is gone (or the state row: the read says which).
            return Ok((self.read_state::<B>(conn)?, false));
        }
        let state = self.read_state::<B>(conn)?;
        let renewed = self.renew::<B>(conn, id, lease_ms, restated(adopted, &state))?;
        Ok((state, renewed))
    }

    /// Renews this instance's lease for `lease_ms` of the database's clock,
    /// and restates `observed`, the epoch it has adopted (so that a row
    /// changed behind its back, a restore say, is right again within a
    /// renewal). Returns false if the row is gone (expired and removed).
    pub(crate) fn renew<B: Backend>(
        &self,
        conn: &mut B::Connection,
        id: &str,
        lease_ms: i64,
        observed: Option<i64>,
    ) -> Result<bool> {
        let n = match observed {
            Some(epoch) => B::execute(
                conn,
                &format!(
                    "UPDATE {} SET lease_until = {} + ?, observed_epoch = ? WHERE id = ?",
                    self.fleet,
                    B::now_ms_sql()
                ),
                &[Bind::I64(lease_ms), Bind::I64(epoch), Bind::Text(id)],
            )?,
            None => B::execute(
                conn,
                &format!(
                    "UPDATE {} SET lease_until = {} + ? WHERE id = ?",
                    self.fleet,
                    B::now_ms_sql()
                ),
                &[Bind::I64(lease_ms), Bind::Text(id)],
            )?,
        };
        Ok(n == 1)
    }

    /// Acknowledges the state epoch this instance has acted on. Ticks are
    /// serialized, so acknowledgements only go back when the state row's
    /// epoch did (a restore): then the lower one is the truth.
    pub(crate) fn acknowledge<B: Backend>(
        &self,
        conn: &mut B::Connection,
        id: &str,
        epoch: i64,
    ) -> Result<()> {
        B::execute(
            conn,
            &format!(
                "UPDATE {} SET observed_epoch = ? WHERE id = ? AND observed_epoch <> ?",
                self.fleet
            ),
            &[Bind::I64(epoch), Bind::Text(id), Bind::I64(epoch)],
        )?;
        Ok(())
    }

    /// Renews the leases of several instances of this process in one
    /// statement (a shared poller's tick: see `fleet::group`), each
    /// restating its own adopted epoch where it has one to restate (as
    /// [`renew`](Self::renew)'s `observed`). Returns the ids whose rows
    /// were there to renew.
    pub(crate) fn renew_many<B: Backend>(
        &self,
        conn: &mut B::Connection,
        members: &[(&str, Option<i64>)],
        lease_ms: i64,
    ) -> Result<Vec<String>> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut binds = vec![Bind::I64(lease_ms)];
        let restating: Vec<_> = members
            .iter()
            .filter_map(|(id, observed)| observed.map(|e| (*id, e)))
            .collect();
        let observed = if restating.is_empty() {
            String::new()
        } else {
            for (id, epoch) in &restating {
                binds.push(Bind::Text(id));
                binds.push(Bind::I64(*epoch));
            }
            format!(
                ", observed_epoch = CASE id {} ELSE observed_epoch END",
                " WHEN ? THEN ?".repeat(restating.len()).trim_start()
            )
        };
        binds.extend(members.iter().map(|(id, _)| Bind::Text(id)));
        let rows: Vec<NameRow> = B::load(
            conn,
            &format!(
                "UPDATE {fleet} SET lease_until = {now} + ?{observed} WHERE id IN ({ids}) RETURNING id AS name",
                fleet = self.fleet,
                now = B::now_ms_sql(),
                ids = vec!["?"; members.len()].join(", "),
            ),
            &binds,
        )?;
        Ok(rows.into_iter().map(|r| r.name).collect())
    }

    /// Acknowledges `epoch` for several instances of this process in one
    /// statement (as [`acknowledge`](Self::acknowledge) for each).
    pub(crate) fn acknowledge_many<B: Backend>(
        &self,
        conn: &mut B::Connection,
        ids: &[&str],
        epoch: i64,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut binds = vec![Bind::I64(epoch)];
        binds.extend(ids.iter().map(|id| Bind::Text(id)));
        binds.push(Bind::I64(epoch));
        B::execute(
            conn,
            &format!(
                "UPDATE {} SET observed_epoch = ? WHERE id IN ({}) AND observed_epoch <> ?",
                self.fleet,
                vec!["?"; ids.len()].join(", ")
            ),
            &binds,
        )?;
        Ok(())
    }

    /// Removes this instance's fleet row (clean shutdown).
    pub(crate) fn deregister<B: Backend>(&self, conn: &mut B::Connection, id: &str) -> Result<()> {
        B::execute(
            conn,
            &format!("DELETE FROM {} WHERE id = ?", self.fleet),
            &[Bind::Text(id)],
        )?;
        Ok(())
    }

    /// Instances whose lease had not expired `grace` ms before `now`. Rows
    /// expired before that are removed on the way: a dead instance leaves
    /// with its lease. Callers pass one lease as the grace: an instance left
    /// the steady path by itself at three quarters of its lease, and the rest
    /// gives calls it had in flight (which may be waiting on the database)
    /// time to finish. All instances of a fleet should use the same lease. A lease that reaches further than the longest any
    /// instance can take (`MAX_LEASE` from `now`: a row no live instance
    /// wrote, a ghost) is cut to that first, so it expires in time.
    pub(crate) fn live_instances<B: Backend>(
        &self,
        conn: &mut B::Connection,
        grace: i64,
    ) -> Result<Vec<Instance>> {
        self.tidy_fleet::<B>(conn, grace)?;
        let now = B::now_ms_sql();
        let rows: Vec<FleetRow> = B::load(
            conn,
            &format!(
                "SELECT id, host, pid, label, min_version, max_version, observed_epoch, lease_until, catalog \
                 FROM {} WHERE lease_until > {now} - ? ORDER BY id",
                self.fleet
            ),
            &[Bind::I64(grace)],
        )?;
        rows.into_iter().map(|r| self.to_instance(r)).collect()
    }

    /// What [`live_instances`](Self::live_instances) does first: leases
    /// longer than any instance takes cut, rows expired past the renewal
    /// grace removed.
    fn tidy_fleet<B: Backend>(&self, conn: &mut B::Connection, grace: i64) -> Result<()> {
        let now = B::now_ms_sql();
        let max_lease = crate::limits::millis(crate::limits::MAX_LEASE);
        let capped = B::execute(
            conn,
            &format!(
                "UPDATE {} SET lease_until = {now} + ? WHERE lease_until > {now} + ?",
                self.fleet
            ),
            &[Bind::I64(max_lease), Bind::I64(max_lease)],
        )?;
        if capped > 0 {
            tracing::warn!(
                rows = capped,
                "fleet rows with leases longer than any instance takes: cut to two hours"
            );
        }
        // Rows stay for the renewal grace past that: an instance whose
        // renewals a long write holds back may still be alive (see
        // `noticed_instances`).
        B::execute(
            conn,
            &format!("DELETE FROM {} WHERE lease_until <= {now} - ?", self.fleet),
            &[Bind::I64(grace.saturating_add(crate::limits::millis(
                crate::limits::RENEWAL_GRACE,
            )))],
        )?;
        Ok(())
    }

    /// The live instances other than `me` (as
    /// [`live_instances`](Self::live_instances) counts them, tidying the
    /// same way), grouped by what a switch checks of them: the versions
    /// they serve, their catalog digests and the epoch they acknowledged.
    /// A fleet of one release in one epoch is one row whatever its size, so
    /// a switch checks it without fetching every instance's row.
    pub(crate) fn live_groups<B: Backend>(
        &self,
        conn: &mut B::Connection,
        me: &str,
        grace: i64,
    ) -> Result<Vec<LiveGroup>> {
        self.tidy_fleet::<B>(conn, grace)?;
        let rows: Vec<GroupRow> = B::load(
            conn,
            &format!(
                "SELECT min_version, max_version, observed_epoch, catalog, COUNT(*) AS instances \
                 FROM {} WHERE id <> ? AND lease_until > {now} - ? \
                 GROUP BY min_version, max_version, observed_epoch, catalog",
                self.fleet,
                now = B::now_ms_sql()
            ),
            &[Bind::Text(me), Bind::I64(grace)],
        )?;
        let groups: Option<Vec<LiveGroup>> = rows
            .into_iter()
            .map(|r| {
                Some(LiveGroup {
                    first: Version::from_i64(r.min_version)?,
                    last: Version::from_i64(r.max_version)?,
                    observed_epoch: r.observed_epoch,
                    catalog: r.catalog,
                    instances: r.instances,
                })
            })
            .collect();
        match groups {
            Some(groups) => Ok(groups),
            // A row with impossible versions: the rows, for the error that
            // names it (the id `evict` takes).
            None => match self.live_instances::<B>(conn, grace) {
                Err(e) => Err(e),
                Ok(_) => Err(self.corrupt(
                    &self.fleet,
                    "a row's versions are not positive version numbers".to_owned(),
                )),
            },
        }
    }

    /// How many instances other than `me` are live (as
    /// [`live_instances`](Self::live_instances) counts them; with `noticing`,
    /// rows in the renewal grace too) and have not acknowledged an epoch
    /// from `epoch` to the state row's: one read, no transaction, nothing
    /// written, whatever the fleet's size. The upgrader's wait polls this,
    /// and fetches the rows only when its time is up (to name them).
    pub(crate) fn count_behind<B: Backend>(
        &self,
        conn: &mut B::Connection,
        me: &str,
        epoch: i64,
        grace: i64,
        noticing: bool,
    ) -> Result<i64> {
        let window = if noticing {
            grace.saturating_add(crate::limits::millis(crate::limits::RENEWAL_GRACE))
        } else {
            grace
        };
        Store::count::<B>(
            conn,
            &format!(
                "SELECT COUNT(*) AS n FROM {fleet} WHERE id <> ? AND lease_until > {now} - ? \
                 AND (observed_epoch < ? OR observed_epoch > (SELECT epoch FROM {state} WHERE id = 1))",
                fleet = self.fleet,
                state = self.state,
                now = B::now_ms_sql()
            ),
            &[Bind::Text(me), Bind::I64(window), Bind::I64(epoch)],
        )
    }

    /// Instances past `grace` but within the renewal grace after it: dead,
    /// or alive with their renewals held back by a long write (SQLite's
    /// write lock during a phase). Such an instance may still be on the
    /// steady path by confirmation reads, so a switch gives it notice
    /// (deploying mode, then `Tandem::notice`) before it goes on without it.
    pub(crate) fn noticed_instances<B: Backend>(
        &self,
        conn: &mut B::Connection,
        grace: i64,
    ) -> Result<Vec<Instance>> {
        let now = B::now_ms_sql();
        let rows: Vec<FleetRow> = B::load(
            conn,
            &format!(
                "SELECT id, host, pid, label, min_version, max_version, observed_epoch, lease_until, catalog \
                 FROM {} WHERE lease_until <= {now} - ? AND lease_until > {now} - ? ORDER BY id",
                self.fleet
            ),
            &[
                Bind::I64(grace),
                Bind::I64(grace.saturating_add(crate::limits::millis(crate::limits::RENEWAL_GRACE))),
            ],
        )?;
        rows.into_iter().map(|r| self.to_instance(r)).collect()
    }

    /// One statement, one snapshot, no write: the state row's epoch and
    /// mode, and whether `id`'s fleet row is there. `None` without a state row.
    pub(crate) fn confirm<B: Backend>(
        &self,
        conn: &mut B::Connection,
        id: &str,
    ) -> Result<Option<ConfirmRow>> {
        let rows: Vec<ConfirmRow> = B::load(
            conn,
            &format!(
                "SELECT s.epoch AS epoch, s.mode AS mode, \
                 (SELECT count(*) FROM {} f WHERE f.id = ?) AS mine \
                 FROM {} s WHERE s.id = 1",
                self.fleet, self.state
            ),
            &[Bind::Text(id)],
        )?;
        Ok(rows.into_iter().next())
    }

    fn to_instance(&self, r: FleetRow) -> Result<Instance> {
        let bad = |v: i64| {
            self.corrupt(
                &self.fleet,
                format!(
                    "instance {}: version {v} is not a positive version number",
                    r.id
                ),
            )
        };
        let first = Version::from_i64(r.min_version).ok_or_else(|| bad(r.min_version))?;
        let last = Version::from_i64(r.max_version).ok_or_else(|| bad(r.max_version))?;
        Ok(Instance {
            id: r.id,
            host: r.host,
            pid: r.pid,
            label: r.label,
            first,
            last,
            observed_epoch: r.observed_epoch,
            lease_until_ms: r.lease_until,
            catalog: r.catalog,
        })
    }

    /// Removes instance `id`'s fleet row, whatever its lease says, and
    /// returns what it said (`None` if there is no such row). A row with
    /// impossible versions is exactly what one evicts: it is described as
    /// stored, not refused.
    pub(crate) fn evict<B: Backend>(
        &self,
        conn: &mut B::Connection,
        id: &str,
    ) -> Result<Option<String>> {
        let rows: Vec<FleetRow> = B::load(
            conn,
            &format!(
                "SELECT id, host, pid, label, min_version, max_version, observed_epoch, lease_until, catalog \
                 FROM {} WHERE id = ?",
                self.fleet
            ),
            &[Bind::Text(id)],
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let described = format!(
            "{} ({}, pid {}, serves {}..={}, id {}, acknowledged epoch {}, lease until {} ms)",
            row.label,
            row.host,
            row.pid,
            row.min_version,
            row.max_version,
            row.id,
            row.observed_epoch,
            row.lease_until
        );
        self.deregister::<B>(conn, id)?;
        Ok(Some(described))
    }
}

/// The epoch a renewal restates as observed: the one adopted last, only
/// while the state row is still at it (so adopting it again is a no-op);
/// `None` before any adoption (`i64::MIN`) or once the row moved on.
pub(crate) fn restated(adopted: i64, state: &State) -> Option<i64> {
    (adopted != i64::MIN && state.epoch == adopted).then_some(adopted)
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
