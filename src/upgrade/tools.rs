//! The upgrader's commands for deploy scripts and tools: what an upgrade
//! would run, and a switch that waits for the fleet to be ready.

use super::*;

impl<B: Backend> Upgrader<B> {
    /// [`switch`](Upgrader::switch), tried again (every poll interval) while
    /// it is refused because an instance that cannot serve the new version
    /// still lives ([`Error::SwitchRefused`]: a rolling deploy is still
    /// replacing old binaries) or fails in a way that is worth retrying
    /// ([`Error::is_retryable`]: the fleet did not acknowledge in time, a
    /// lock was busy), until `timeout` has passed; the database is
    /// unchanged by each failed try.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// # fn main() -> Result<(), tandem::Error> {
    /// let db = tandem::Tandem::<tandem::Sqlite>::builder(":memory:", tandem::testing::demo::catalog()?)
    ///     .pool_size(1)
    ///     .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
    ///     .open()?;
    /// let up = db.upgrader();
    /// up.expand()?;
    /// let report = up.switch_when_ready(std::time::Duration::from_secs(60))?;
    /// assert_eq!(report.version.get(), 2);
    /// # Ok(()) }
    /// # main().unwrap();
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The last try's error once `timeout` has passed; at once, any error
    /// that waiting does not cure (as [`switch`](Upgrader::switch)).
    pub fn switch_when_ready(&self, timeout: Duration) -> Result<PhaseReport> {
        let deadline = Instant::now() + timeout.min(crate::limits::FOREVER);
        loop {
            let result = self.switch();
            // Refused because this binary cannot serve the new version:
            // no other instance leaving cures that.
            if matches!(&result, Err(Error::SwitchRefused { version, .. })
                if !self.shared.served().contains(version))
            {
                return result;
            }
            match result {
                Err(e)
                    if (matches!(e, Error::SwitchRefused { .. }) || e.is_retryable())
                        && Instant::now() < deadline =>
                {
                    tracing::info!(error = %e, "switch not ready; trying again");
                    let left = deadline.saturating_duration_since(Instant::now());
                    thread::sleep(self.shared.poll_interval.min(left));
                }
                other => return other,
            }
        }
    }

    /// What [`upgrade_to(target)`](Upgrader::upgrade_to) would run from
    /// where the database stands now: each remaining phase of each version
    /// with the SQL it runs on this backend (a `change.toml`'s generated
    /// text included) and the backfills after expand. Reads the state row;
    /// runs nothing, takes no lease. (A phase a crash interrupted is listed
    /// whole: it resumes where its journal says.)
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// # fn main() -> Result<(), tandem::Error> {
    /// let db = tandem::Tandem::<tandem::Sqlite>::builder(":memory:", tandem::testing::demo::catalog()?)
    ///     .pool_size(1)
    ///     .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
    ///     .open()?;
    /// let plan = db.upgrader().plan(2)?;
    /// let phases: Vec<String> = plan.iter().map(|p| format!("{} {}", p.version, p.phase)).collect();
    /// assert_eq!(phases, ["2 expand", "2 switch", "2 contract"]);
    /// assert_eq!(plan[0].backfills, ["copy emails"]);
    /// assert!(plan[0].sql.as_deref().unwrap_or_default().contains("CREATE TABLE account_emails"));
    /// assert_eq!(plan[1].sql, None); // the demo's switch only bumps the version
    /// # Ok(()) }
    /// # main().unwrap();
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidVersion`], [`Error::UnknownVersion`] (target not in
    /// the catalog), [`Error::NotRollForward`] (target behind the live
    /// version), or a database error reading the state row.
    pub fn plan(&self, target: u32) -> Result<Vec<PlannedPhase>> {
        let target = self.target_version(target, "plan")?;
        let state = {
            let mut conn = self.shared.connection()?;
            self.read_state(&mut conn)?
        };
        let backfills: Vec<(u32, &str)> = self
            .shared
            .backfills
            .iter()
            .map(|b| (b.version, b.name.as_str()))
            .collect();
        let at = plan::At {
            version: state.version,
            phase: state.phase,
        };
        plan::phases(&self.shared.catalog, at, target, B::NAME, &backfills)
            .map_err(|live| Error::NotRollForward { live, target })
    }
}
